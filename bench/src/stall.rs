//! A stalled CA, told apart from a slow client.
//!
//! Pebble 2.4 (and Pebble's main branch as of this writing) can deadlock
//! under concurrent load: a lock-order inversion in its in-memory store.
//! The authorization handler (`POST /authZ/`, a POST-as-GET of an
//! authorization) takes the authorization's write lock and then the
//! store's read lock (`validPOSTAsGET` → `getAcctByKey`); a new order's
//! `makeAuthorizations` → `MemoryStore.FindValidAuthorization` holds the
//! store's read lock and read-locks every authorization in turn. Once any
//! store writer (`AddOrder`, `AddAuthorization`, `AddChallenge` of a third
//! request) waits between them, Go's `RWMutex` admits no new reader: the
//! authorization handler waits for the store, the scan waits for the
//! authorization, the writer waits for the scan, and every later request
//! that touches the store hangs while `/dir` still answers. The scan
//! covers all authorizations, so the window grows with every order: a
//! stall gets likelier the longer a Pebble runs. A bare instant-acme loop
//! (`bench-step ceiling`) stalls the same way; nothing certfleet does
//! differently triggers it.
//!
//! A run watches its own progress: after [`quiet_for`] without a finished
//! certificate it asks the CA for its account object with a short deadline
//! (a request that needs the store's read lock). No answer means a stalled
//! CA: Pebble gets SIGQUIT, which makes it print every goroutine's stack
//! to its log and exit, the dump is checked for the deadlock above, and the
//! step fails with [`Stalled`] (exit status [`EXIT_STALLED`]) so
//! `bench/run.sh` restarts Pebble and runs the step again, instead of
//! reporting a slow certfleet.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use instant_acme::{Account, BodyWrapper, NewAccount};

use crate::stack::{Ca, Mode};

/// Exit status of a step whose CA stalled.
pub const EXIT_STALLED: i32 = 3;

/// Deadline of the probe request.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a run may go without a finished certificate before the CA is
/// probed: a few times the slowest order of the mode.
pub fn quiet_for(mode: Mode) -> Duration {
    match mode {
        // Pebble's validation delay: up to 15 s per order.
        Mode::Delay => Duration::from_secs(45),
        _ => Duration::from_secs(15),
    }
}

/// The CA stopped answering.
#[derive(Debug, thiserror::Error)]
#[error(
    "the CA stalled after {done} certificates: its directory {dir}, an account fetch got no answer within {}s; {diagnosis}",
    PROBE_TIMEOUT.as_secs()
)]
pub struct Stalled {
    /// Certificates finished before the stall.
    pub done: usize,
    /// Whether `/dir` still answered.
    pub dir: &'static str,
    /// What Pebble's goroutine dump shows.
    pub diagnosis: String,
}

/// Asks the CA something that needs its store.
pub struct Probe {
    account: Account,
    directory: String,
    ca_certs: PathBuf,
}

impl Probe {
    /// A probe with an account of its own (created now, while the CA answers).
    ///
    /// # Errors
    /// The account cannot be created.
    pub async fn new(ca: &Ca) -> anyhow::Result<Self> {
        let account = tokio::time::timeout(
            Duration::from_secs(30),
            Account::builder_with_http(acme_client(&ca.ca_certs)?).create(
                &NewAccount {
                    contact: &[],
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                ca.directory.clone(),
                None,
            ),
        )
        .await
        .map_err(|_| anyhow::anyhow!("the CA did not answer (stalled?)"))??
        .0;
        Ok(Self::with_account(ca, account))
    }

    /// A probe using an existing account.
    pub fn with_account(ca: &Ca, account: Account) -> Self {
        Self {
            account,
            directory: ca.directory.clone(),
            ca_certs: ca.ca_certs.clone(),
        }
    }

    /// Whether the CA left an account fetch unanswered for
    /// [`PROBE_TIMEOUT`]. Any answer, even an error, means it is alive.
    pub async fn stalled(&self) -> bool {
        let fetch = self.account.order(self.account.id().to_owned());
        tokio::time::timeout(PROBE_TIMEOUT, fetch).await.is_err()
    }

    /// What the stall looks like from outside, and Pebble's own account of
    /// it: SIGQUIT to the process of `pid_file` (its goroutine stacks go to
    /// the `pebble.log` beside the pid file; Pebble exits), then the dump
    /// read back.
    pub async fn stalled_ca(&self, pid_file: &Path, done: usize) -> Stalled {
        let dir = match certfleet_tests::http::Http::new(Some(&self.ca_certs)) {
            Ok(http) => {
                match tokio::time::timeout(PROBE_TIMEOUT, http.get_ok(&self.directory)).await {
                    Ok(Ok(_)) => "still answers",
                    _ => "does not answer either",
                }
            }
            Err(_) => "was not asked",
        };
        let diagnosis = match dump_goroutines(pid_file).await {
            Ok(log) => diagnose(&log),
            Err(e) => format!("no goroutine dump: {e:#}"),
        };
        Stalled {
            done,
            dir,
            diagnosis,
        }
    }
}

/// The bench's ACME HTTP client (the worker's stack: hyper + rustls,
/// HTTP/1.1 and HTTP/2, web roots plus `ca_certs`), for the ceiling's
/// account and the probe's.
///
/// # Errors
/// `ca_certs` cannot be read.
pub fn acme_client(ca_certs: &Path) -> anyhow::Result<Box<dyn instant_acme::HttpClient>> {
    let client: HyperClient<_, BodyWrapper<Bytes>> = HyperClient::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(certfleet_tests::http::connector(Some(ca_certs), true)?);
    Ok(Box::new(client))
}

/// SIGQUIT to the process in `pid_file`; waits up to 10 s for it to exit
/// and returns what it wrote to its log (`pebble.log` in the same
/// directory) from then on: the dump. The log is appended to across
/// restarts, so reading it whole counted every earlier dump's goroutines.
async fn dump_goroutines(pid_file: &Path) -> anyhow::Result<String> {
    let pid: u32 = std::fs::read_to_string(pid_file)?.trim().parse()?;
    let log = pid_file.with_file_name("pebble.log");
    let before = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let sent = tokio::process::Command::new("kill")
        .args(["-QUIT", &pid.to_string()])
        .status()
        .await?;
    anyhow::ensure!(sent.success(), "kill -QUIT {pid} failed");
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if !Path::new(&format!("/proc/{pid}")).exists() || zombie(pid) {
            break;
        }
    }
    let text = std::fs::read(&log)?;
    let start = usize::try_from(before).unwrap_or(0).min(text.len());
    Ok(String::from_utf8_lossy(&text[start..]).into_owned())
}

/// Whether `pid` has exited and waits to be reaped (Pebble's parent is
/// the stack script, which does not wait for it).
fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| Some(s.rsplit_once(')')?.1.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// Reads a Go goroutine dump: how many goroutines wait where, and whether
/// it is the lock-order deadlock described at the top.
pub fn diagnose(log: &str) -> String {
    let Some(start) = log.find("SIGQUIT") else {
        return "no goroutine dump in Pebble's log".into();
    };
    let mut scanning = 0; // in FindValidAuthorization, waiting for a lock
    let mut authz = 0; // the authorization handler, waiting for the store
    let mut blocked = 0; // any goroutine waiting for a lock
    for g in log[start..].split("\ngoroutine ").skip(1) {
        if !g.contains("semacquire") {
            continue;
        }
        blocked += 1;
        if g.contains("FindValidAuthorization") {
            scanning += 1;
        } else if g.contains("(*WebFrontEndImpl).Authz(") && g.contains("getAcctByKey") {
            authz += 1;
        }
    }
    if scanning > 0 && authz > 0 {
        format!(
            "Pebble's goroutine dump shows its lock-order deadlock: {scanning} new-order scan(s) in FindValidAuthorization wait for an authorization's lock that {authz} authorization request(s) hold while they wait for the store; {blocked} goroutines wait for a lock"
        )
    } else {
        format!(
            "Pebble's goroutine dump: {blocked} goroutines wait for a lock ({scanning} in FindValidAuthorization, {authz} authorization requests waiting for the store)"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnose_finds_the_deadlock() {
        let dump = "Pebble 2026/12/03 POST /authZ/ -> calling handler()\nSIGQUIT: quit\nPC=0x0\n\ngoroutine 1 [IO wait, 2 minutes]:\nmain.main()\n\ngoroutine 270 [semacquire, 2 minutes]:\nsync.(*RWMutex).RLock(...)\ngithub.com/letsencrypt/pebble/db.(*MemoryStore).FindValidAuthorization(0xc0)\ngithub.com/letsencrypt/pebble/wfe.(*WebFrontEndImpl).makeAuthorizations(0xc0)\n\ngoroutine 300 [semacquire, 2 minutes]:\nsync.(*RWMutex).RLock(...)\ngithub.com/letsencrypt/pebble/db.(*MemoryStore).GetAccountByKey(0xc0)\ngithub.com/letsencrypt/pebble/wfe.(*WebFrontEndImpl).getAcctByKey(0xc0)\ngithub.com/letsencrypt/pebble/wfe.(*WebFrontEndImpl).validPOSTAsGET(0xc0)\ngithub.com/letsencrypt/pebble/wfe.(*WebFrontEndImpl).Authz(0xc0)\n\ngoroutine 284 [semacquire, 2 minutes]:\nsync.(*RWMutex).Lock(0x0)\ngithub.com/letsencrypt/pebble/db.(*MemoryStore).AddChallenge(0xc0)\n";
        let d = diagnose(dump);
        assert!(d.contains("lock-order deadlock"), "{d}");
        assert!(d.contains("1 new-order scan(s)"), "{d}");
        assert!(d.contains("3 goroutines wait"), "{d}");
        let other = dump.replace("FindValidAuthorization", "GetOrderByID");
        assert!(!diagnose(&other).contains("lock-order deadlock"));
        assert_eq!(diagnose("no dump"), "no goroutine dump in Pebble's log");
    }

    #[test]
    fn delay_mode_waits_longer() {
        assert!(quiet_for(Mode::Delay) > quiet_for(Mode::Instant));
    }
}
