//! What people run today: one `lego run` process per certificate, one at a
//! time or P at once, against the same Pebble and the same names.
//!
//! lego runs in webroot mode (`--http --http.webroot DIR`) with ONE shared
//! responder — `python3 -m http.server` serving DIR on the bench address,
//! port 5002 — because concurrent lego processes in standalone mode cannot
//! share the port. The account is registered once by an untimed warm-up
//! run; every timed process reuses it from `--path`. Each process's time is
//! start → exit; the CPU of all of them is this process's waited-for
//! children time.
//!
//! In dns-01 mode lego uses its `rfc2136` provider on the bench's BIND
//! (`--dns rfc2136`, TSIG from `RFC2136_*`, zones looked up through
//! `--dns.resolvers`). Its propagation check, though, looks the zone's NS
//! names up through the system resolver (`/etc/resolv.conf`), whatever
//! `--dns.resolvers` says; here that file names a resolver off loopback,
//! where the bench must send nothing. So every dns-01 lego process runs in
//! a mount namespace of its own whose `/etc/resolv.conf` is the BIND's
//! `resolv.conf` (`nameserver <BIND address>`):
//! `unshare -m --propagation private sh -c 'mount --bind F /etc/resolv.conf
//! && exec lego …'`. The bench refuses to start lego in dns-01 mode when
//! that file names anything but loopback addresses, or when the mount does
//! not take effect (checked once before the warm-up).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::pool::{self, Attempt};
use crate::procfs::{self, CpuMeter};
use crate::results::{Throughput, Tool};
use crate::stack::{Ca, HTTP01_PORT, Mode, Stack};
use crate::stats;
use certfleet_tests::http::Http;

/// Longest time one lego process may take (it is killed after that).
const LEGO_TIMEOUT: Duration = Duration::from_secs(180);

/// What to run (the command line of `bench-step lego`).
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// The private CA.
    #[command(flatten)]
    pub ca: Ca,
    /// lego processes at once.
    #[arg(long, default_value_t = 1)]
    pub parallel: u32,
    /// Certificates (the first `n` names of the label).
    #[arg(long, default_value_t = 200)]
    pub n: usize,
    /// Name label: the same as certfleet's run.
    #[arg(long)]
    pub label: String,
    /// Working directory (`--path`, webroot, logs).
    #[arg(long)]
    pub dir: PathBuf,
    /// The lego binary.
    #[arg(long, default_value = "lego")]
    pub lego: PathBuf,
    /// The certificates the report should show this run's rate for (when
    /// `n` is smaller, the time for them is extrapolated and labelled so;
    /// `n` without it).
    #[arg(long)]
    pub full_n: Option<usize>,
}

/// Runs it.
///
/// # Errors
/// lego or the responder cannot start, or the warm-up fails.
pub async fn run(stack: &Stack, opts: &Options) -> anyhow::Result<Throughput> {
    let http = Http::new(None)?;
    let names = opts.ca.names(&opts.label, opts.n);
    let warmup = opts
        .ca
        .warmup_name(&opts.label, &format!("lego{}", opts.parallel));
    if opts.ca.mode == Mode::Dns01 {
        opts.ca.dns.secret_file()?;
        check_namespace(resolv_conf(opts)?).await?;
    }
    opts.ca
        .point_dns(&http, &[names.clone(), vec![warmup.clone()]].concat())
        .await?;
    let webroot = opts.dir.join("webroot");
    std::fs::create_dir_all(webroot.join(".well-known/acme-challenge"))?;
    std::fs::create_dir_all(opts.dir.join("path"))?;
    let log = opts.dir.join("lego.log");
    let responder = match opts.ca.mode {
        Mode::Instant | Mode::Dns01 => None,
        Mode::Http01 | Mode::Delay => {
            Some(start_responder(&opts.ca, &webroot, &opts.dir.join("responder.log")).await?)
        }
    };
    let result = drive(stack, opts, &names, &warmup, &webroot, &log).await;
    if let Some(mut r) = responder {
        let _ = r.kill().await;
    }
    result
}

async fn drive(
    stack: &Stack,
    opts: &Options,
    names: &[String],
    warmup: &str,
    webroot: &Path,
    log: &Path,
) -> anyhow::Result<Throughput> {
    let status = lego_once(opts, warmup, webroot, log).await?;
    if status != Some(true) {
        bail!(
            "the lego warm-up run failed (log: {}); is Pebble trusted (LEGO_CA_CERTIFICATES)?",
            log.display()
        );
    }
    let cpu = CpuMeter::start(&opts.ca.pid_files(stack), &[]);
    let children_before = procfs::children_cpu_seconds()?;
    let (webroot, log) = (webroot.to_path_buf(), log.to_path_buf());
    let lego_opts = opts.clone();
    let timed = pool::run(names, opts.parallel, move |name| {
        let (opts, webroot, log) = (lego_opts.clone(), webroot.clone(), log.clone());
        async move {
            match lego_once(&opts, &name, &webroot, &log).await {
                Ok(Some(true)) => Attempt::Done,
                // A process that hits LEGO_TIMEOUT means the CA is stuck.
                Ok(None) => Attempt::Stuck,
                Ok(Some(false)) | Err(_) => Attempt::Failed,
            }
        }
    })
    .await?;
    let (latencies, elapsed) = (timed.latencies, timed.elapsed_s);
    let mut cpu_s = cpu.stop();
    let lego_cpu = procfs::children_cpu_seconds()? - children_before;
    cpu_s.insert("lego".into(), lego_cpu);
    let ok = latencies.len();
    // Names never tried because the CA got stuck count as failed.
    let failed = names.len() - ok;
    let certs_per_s = if elapsed > 0.0 {
        ok as f64 / elapsed
    } else {
        0.0
    };
    let full_n = opts.full_n.unwrap_or(opts.n);
    let note = if opts.n < full_n && certs_per_s > 0.0 {
        format!(
            "{} of {full_n} names; {full_n} would take {:.0} s at this rate (extrapolated)",
            opts.n,
            full_n as f64 / certs_per_s
        )
    } else {
        String::new()
    };
    Ok(Throughput {
        workers: 1,
        s3: String::new(),
        tool: Tool::Lego,
        mode: opts.ca.mode,
        concurrency: opts.parallel,
        n: opts.n,
        ok,
        failed,
        elapsed_s: elapsed,
        certs_per_s,
        latency_s: stats::summary(&latencies),
        client_cpu_s: lego_cpu,
        cpu_s,
        peak_rss_mib: None,
        rss_at_max_in_flight_mib: None,
        max_in_flight: None,
        s3_requests: Default::default(),
        acme_requests: None,
        worker_job_mean_s: None,
        phase_mean_ms: Default::default(),
        note,
    })
}

/// One `lego run` for `name`: whether it exited 0, or `None` if it was
/// killed after [`LEGO_TIMEOUT`].
async fn lego_once(
    opts: &Options,
    name: &str,
    webroot: &Path,
    log: &Path,
) -> anyhow::Result<Option<bool>> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut cmd = if opts.ca.mode == Mode::Dns01 {
        let dns = &opts.ca.dns;
        let mut c = in_namespace(resolv_conf(opts)?, &opts.lego);
        c.env("RFC2136_NAMESERVER", dns.rfc2136_nameserver.to_string())
            .env("RFC2136_TSIG_KEY", &dns.tsig_key)
            // miekg/dns spells algorithms as names: `hmac-sha256.`.
            .env(
                "RFC2136_TSIG_ALGORITHM",
                format!("{}.", dns.tsig_algorithm.trim_end_matches('.')),
            )
            .env("RFC2136_TSIG_SECRET_FILE", dns.secret_file()?)
            // lego's defaults wait 60 s between names and poll every 2 s.
            .env("RFC2136_SEQUENCE_INTERVAL", "1")
            .env("RFC2136_POLLING_INTERVAL", "1")
            .env("RFC2136_PROPAGATION_TIMEOUT", "30");
        c
    } else {
        Command::new(&opts.lego)
    };
    cmd.env("LEGO_CA_CERTIFICATES", &opts.ca.ca_certs)
        .arg("--server")
        .arg(&opts.ca.directory)
        .args([
            "--accept-tos",
            "--email",
            "bench@example.test",
            "--key-type",
            "ec256",
        ])
        .arg("--path")
        .arg(opts.dir.join("path"))
        .args(["--domains", name]);
    if opts.ca.mode == Mode::Dns01 {
        cmd.args(["--dns", "rfc2136", "--dns.resolvers"])
            .arg(opts.ca.dns.resolver().to_string());
    } else {
        cmd.args(["--http", "--http.webroot"]).arg(webroot);
    }
    let run = cmd
        .arg("run")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .kill_on_drop(true)
        .status();
    match tokio::time::timeout(LEGO_TIMEOUT, run).await {
        Ok(status) => Ok(Some(
            status
                .with_context(|| format!("running {}", opts.lego.display()))?
                .success(),
        )),
        Err(_) => Ok(None),
    }
}

/// The resolv.conf every dns-01 lego process gets, checked to name only
/// loopback resolvers.
///
/// # Errors
/// Not given, unreadable, or naming no resolver or one off loopback.
fn resolv_conf(opts: &Options) -> anyhow::Result<&Path> {
    let f = opts
        .ca
        .dns
        .resolv_conf
        .as_deref()
        .context("--mode dns01 needs --resolv-conf (lego must not use the system resolver)")?;
    let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
    let mut servers = 0;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("nameserver"), Some(ip)) => {
                let ip: std::net::IpAddr = ip
                    .parse()
                    .with_context(|| format!("{}: bad nameserver {ip}", f.display()))?;
                anyhow::ensure!(
                    ip.is_loopback(),
                    "{} names {ip}, not a loopback address",
                    f.display()
                );
                servers += 1;
            }
            _ => bail!("{}: unexpected line {line:?}", f.display()),
        }
    }
    anyhow::ensure!(servers > 0, "{} names no nameserver", f.display());
    Ok(f)
}

/// `program` in a mount namespace of its own whose `/etc/resolv.conf` is
/// `resolv_conf`: `unshare -m --propagation private sh -c 'mount --bind
/// "$0" /etc/resolv.conf && exec "$@"' RESOLV_CONF PROGRAM`, arguments
/// to be added. `unshare` and `sh` exec, so the process is the program's
/// (and its CPU the driver's waited-for children's).
fn in_namespace(resolv_conf: &Path, program: &Path) -> Command {
    let mut c = Command::new("unshare");
    c.args([
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        r#"mount --bind "$0" /etc/resolv.conf && exec "$@""#,
    ])
    .arg(resolv_conf)
    .arg(program);
    c
}

/// Runs `cat /etc/resolv.conf` the way lego will run, and checks that it
/// reads `resolv_conf`: no lego process starts with the system's resolver.
///
/// # Errors
/// unshare or mount failed, or the file read back differs.
async fn check_namespace(resolv_conf: &Path) -> anyhow::Result<()> {
    let want = std::fs::read_to_string(resolv_conf)?;
    let out = in_namespace(resolv_conf, Path::new("cat"))
        .arg("/etc/resolv.conf")
        .stdin(Stdio::null())
        .output()
        .await
        .context("running unshare (util-linux)")?;
    anyhow::ensure!(
        out.status.success(),
        "a private mount namespace with {} as /etc/resolv.conf could not be made ({}): {}",
        resolv_conf.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    anyhow::ensure!(
        String::from_utf8_lossy(&out.stdout) == want,
        "/etc/resolv.conf in the namespace is not {}",
        resolv_conf.display()
    );
    Ok(())
}

/// `python3 -m http.server` on the bench address, port 5002, serving the
/// webroot; returns once it accepts connections.
async fn start_responder(ca: &Ca, webroot: &Path, log: &Path) -> anyhow::Result<Child> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut child = Command::new("python3")
        .args(["-m", "http.server", "--bind", &ca.ip.to_string()])
        .arg("--directory")
        .arg(webroot)
        .arg(HTTP01_PORT.to_string())
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .context("starting python3 -m http.server")?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if tokio::net::TcpStream::connect(ca.http01_addr())
            .await
            .is_ok()
        {
            return Ok(child);
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "the webroot responder exited ({status}); log: {}",
                log.display()
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "the webroot responder did not listen on {}",
                ca.http01_addr()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
