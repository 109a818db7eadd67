//! `--wait`: a subscription to the events of the certificates being
//! submitted, opened before their jobs are published, and the wait for the
//! events whose `job_id` is one of ours.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use certfleet_common::config::parse::format_duration;
use certfleet_common::event::{Event, EventKind};
use certfleet_common::{CertName, amqp, topology};
use futures_util::stream::StreamExt;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::error::SubmitError;

/// Default of `issue --timeout` (and of the other `--wait` commands).
pub(super) const DEFAULT_WAIT_TIMEOUT: &str = "10m";

/// Above this many names, `--wait` binds its queue to every certificate
/// event (`cert.#`) and filters by job id, instead of one binding per name.
const MAX_WAIT_BINDINGS: usize = 200;

/// A subscription to the events of some certificate names, opened before
/// their jobs are published.
pub(super) struct EventWaiter {
    consumer: lapin::Consumer,
    channel: lapin::Channel,
}

impl EventWaiter {
    pub(super) async fn open(
        conn: &lapin::Connection,
        names: &[&CertName],
    ) -> Result<Self, SubmitError> {
        Self::subscribe(conn, names)
            .await
            .map_err(SubmitError::Subscribe)
    }

    /// A subscription to every certificate event (filtered by job id in
    /// [`EventWaiter::wait`]), for jobs whose names are not known yet.
    pub(super) async fn open_all(conn: &lapin::Connection) -> Result<Self, SubmitError> {
        Self::bind(conn, vec!["cert.#".to_string()])
            .await
            .map_err(SubmitError::Subscribe)
    }

    async fn subscribe(conn: &lapin::Connection, names: &[&CertName]) -> lapin::Result<Self> {
        let unique: HashSet<&CertName> = names.iter().copied().collect();
        let patterns: Vec<String> = if unique.len() > MAX_WAIT_BINDINGS {
            vec!["cert.#".to_string()]
        } else {
            unique.iter().map(|n| format!("cert.*.{n}")).collect()
        };
        Self::bind(conn, patterns).await
    }

    async fn bind(conn: &lapin::Connection, patterns: Vec<String>) -> lapin::Result<Self> {
        let channel = conn.create_channel().await?;
        let consumer = topology::subscribe_events(&channel, &patterns).await?;
        Ok(Self { consumer, channel })
    }

    /// Waits for an outcome of every job in `jobs`. With one job, its
    /// stored summary goes to stderr and its failure is the returned error.
    /// With several, a progress bar (count, rate, ETA) runs on stderr when
    /// it is a terminal, each failure is printed on stderr as it arrives,
    /// and one summary line ends on stdout: nothing else, so a pipe gets
    /// just the summary.
    pub(super) async fn wait(
        mut self,
        jobs: HashMap<Uuid, CertName>,
        timeout: Duration,
        shutdown: CancellationToken,
    ) -> Result<(), SubmitError> {
        let result = self.wait_for(jobs, timeout, shutdown).await;
        // Closed (and confirmed) here, before the caller closes the
        // connection: a channel still closing then makes lapin log an
        // error on stderr, which a script reading the output would see.
        amqp::close_channel(&self.channel, 200, "done").await;
        result
    }

    async fn wait_for(
        &mut self,
        mut jobs: HashMap<Uuid, CertName>,
        timeout: Duration,
        shutdown: CancellationToken,
    ) -> Result<(), SubmitError> {
        let single = jobs.len() == 1;
        let total = jobs.len();
        let started = tokio::time::Instant::now();
        let bar = progress_bar(total, single);
        let mut failures: Vec<SubmitError> = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        let pending = |jobs: &HashMap<Uuid, CertName>| jobs.keys().copied().collect::<Vec<_>>();
        while !jobs.is_empty() {
            let delivery = tokio::select! {
                () = shutdown.cancelled() => {
                    bar.abandon();
                    return Err(SubmitError::Interrupted { pending: pending(&jobs) });
                }
                () = tokio::time::sleep_until(deadline) => {
                    bar.abandon();
                    return Err(SubmitError::TimedOut {
                        after: format_duration(timeout),
                        pending: pending(&jobs),
                    });
                }
                d = self.consumer.next() => d,
            };
            let delivery = match delivery {
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    bar.abandon();
                    return Err(SubmitError::WaitLost {
                        pending: pending(&jobs),
                        source: Some(e),
                    });
                }
                None => {
                    bar.abandon();
                    return Err(SubmitError::WaitLost {
                        pending: pending(&jobs),
                        source: None,
                    });
                }
            };
            let event = match Event::from_json(&delivery.data) {
                Ok(e) => e,
                Err(e) => {
                    tracing::debug!(error = %e, routing_key = %delivery.routing_key, "ignoring an event that does not parse");
                    continue;
                }
            };
            let Some(name) = jobs.get(&event.job_id).cloned() else {
                continue;
            };
            match event.kind {
                EventKind::Issued | EventKind::Renewed | EventKind::Revoked => {
                    jobs.remove(&event.job_id);
                    if single {
                        eprintln!("{}", stored_summary(&event));
                    }
                    bar.inc(1);
                }
                // Not a job's outcome (`keys reseal` publishes it).
                EventKind::Resealed => {}
                EventKind::Failed => {
                    jobs.remove(&event.job_id);
                    let failure = SubmitError::JobFailed {
                        job_id: event.job_id,
                        name,
                        reason: failure_reason(&event),
                    };
                    if !single {
                        bar.suspend(|| eprintln!("{failure}"));
                    }
                    failures.push(failure);
                    bar.inc(1);
                    bar.set_message(format!("{} failed", failures.len()));
                }
            }
        }
        bar.finish_and_clear();
        if !single {
            crate::output::out(format_args!(
                "{} stored, {} failed of {total} in {:.1}s",
                total - failures.len(),
                failures.len(),
                started.elapsed().as_secs_f64()
            ));
        }
        match failures.len() {
            0 => Ok(()),
            1 if single => Err(failures.remove(0)),
            n => Err(SubmitError::Incomplete {
                failed: n,
                total,
                what: "jobs failed",
            }),
        }
    }
}

/// The progress bar of a wait for `total` jobs: drawn on stderr only when
/// both stdout and stderr are a terminal and there is more than one job;
/// hidden otherwise (a script reading stdout gets the summary alone).
fn progress_bar(total: usize, single: bool) -> indicatif::ProgressBar {
    use std::io::IsTerminal as _;
    if single || !std::io::stdout().is_terminal() || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let len = u64::try_from(total).unwrap_or(u64::MAX);
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(len),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{elapsed_precise} [{wide_bar}] {pos}/{len} done, {per_sec}, ETA {eta} {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

/// `issued www.example.com: serial 0a1b, not after 2026-02-23T08:00:00Z`.
fn stored_summary(event: &Event) -> String {
    let mut line = format!("{} {}", event.kind.as_str(), event.name);
    if let Some(cert) = &event.certificate {
        let not_after = cert
            .not_after
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| cert.not_after.to_string());
        line.push_str(&format!(": serial {}, not after {not_after}", cert.serial));
    }
    line
}

/// The CA's reason (`error.detail`) and problem type, if any.
fn failure_reason(event: &Event) -> String {
    let Some(error) = &event.error else {
        return "no reason given".into();
    };
    let problem_type = error
        .problem
        .as_ref()
        .and_then(|p| p.get("type"))
        .and_then(|t| t.as_str());
    match problem_type {
        Some(t) => format!("{} ({t})", error.detail),
        None => format!("{} ({})", error.detail, error.kind),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_reason_has_detail_and_type() -> Result<(), serde_json::Error> {
        let mut event: Event = serde_json::from_str(include_str!(
            "../../../common/tests/fixtures/event-issued-v1.json"
        ))?;
        event.kind = EventKind::Failed;
        event.certificate = None;
        event.error = Some(certfleet_common::event::Failure {
            kind: "acme".into(),
            detail: "CAA record forbids issuance".into(),
            problem: Some(serde_json::json!({"type": "urn:ietf:params:acme:error:caa"})),
        });
        assert_eq!(
            failure_reason(&event),
            "CAA record forbids issuance (urn:ietf:params:acme:error:caa)"
        );
        Ok(())
    }
}
