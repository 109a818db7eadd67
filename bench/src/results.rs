//! The JSON every step writes into the results directory, and the report
//! reads back. One file per record, tagged by `step`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::stack::Mode;
use crate::stats::Summary;

/// Who issued the certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tool {
    /// One `certfleet-worker` process, jobs through RabbitMQ, bundles to S3,
    /// events out.
    Certfleet,
    /// instant-acme alone in a loop: no queue, no storage.
    Ceiling,
    /// One `lego run` process per certificate.
    Lego,
}

impl Tool {
    /// Name in the report.
    pub fn as_str(self) -> &'static str {
        match self {
            Tool::Certfleet => "certfleet",
            Tool::Ceiling => "instant-acme ceiling",
            Tool::Lego => "lego",
        }
    }
}

/// N certificates through one client at one concurrency.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Throughput {
    /// Client.
    pub tool: Tool,
    /// certfleet worker processes (1 for the other clients).
    #[serde(default = "one")]
    pub workers: u32,
    /// The S3 server certfleet stored into (`SeaweedFS`, `moto`; empty for
    /// the other clients).
    #[serde(default)]
    pub s3: String,
    /// Validation mode.
    pub mode: Mode,
    /// Certificates in flight at once (worker concurrency, tasks, or
    /// parallel lego processes).
    pub concurrency: u32,
    /// Certificates asked for.
    pub n: usize,
    /// Issued.
    pub ok: usize,
    /// Failed or never finished.
    pub failed: usize,
    /// From the first request to the last certificate, seconds.
    pub elapsed_s: f64,
    /// `ok / elapsed_s`.
    pub certs_per_s: f64,
    /// Seconds per certificate: job published → event received (certfleet),
    /// order created → chain downloaded (ceiling), process start → exit
    /// (lego).
    pub latency_s: Summary,
    /// CPU seconds of the client (worker process, ceiling process, or all
    /// lego processes), whole run.
    pub client_cpu_s: f64,
    /// CPU seconds of every measured process over the run (`pebble`,
    /// `rabbitmq`, `redis`, `s3`, `worker`, …, `machine_busy` = all CPUs).
    pub cpu_s: BTreeMap<String, f64>,
    /// Peak resident memory of the worker (`VmHWM`), MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_mib: Option<f64>,
    /// Highest `VmRSS` sampled while the most orders were in flight, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_at_max_in_flight_mib: Option<f64>,
    /// Most jobs in flight seen (`certfleet_jobs_in_flight`, sampled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// S3 requests by operation over the run (worker metric).
    #[serde(default)]
    pub s3_requests: BTreeMap<String, f64>,
    /// Mean time from delivery to outcome inside the worker
    /// (`certfleet_jobs_duration_seconds` sum / count over the run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_job_mean_s: Option<f64>,
    /// Mean milliseconds of an issue job in each phase of the worker
    /// (`certfleet_job_phase_duration_seconds` sum / count per phase).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub phase_mean_ms: BTreeMap<String, f64>,
    /// ACME requests over the run (worker metric).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme_requests: Option<f64>,
    /// Anything the reader must know (sample size, extrapolation).
    #[serde(default)]
    pub note: String,
}

impl Throughput {
    /// One line for the bench log: counts, rate, latency, client CPU.
    pub fn summary_line(&self) -> String {
        let (who, par, cpu) = match self.tool {
            Tool::Certfleet => ("certfleet", format!("c={}", self.concurrency), "worker"),
            Tool::Ceiling => ("ceiling", format!("c={}", self.concurrency), "client"),
            Tool::Lego => ("lego", format!("x{}", self.concurrency), "lego"),
        };
        let note = if self.note.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.note)
        };
        format!(
            "{who} {} {par} n={}: {} ok, {} failed, {:.2} certs/s, p50 {:.3} s, p99 {:.3} s, {cpu} CPU {:.2} ms/cert{note}",
            self.mode.as_str(),
            self.n,
            self.ok,
            self.failed,
            self.certs_per_s,
            self.latency_s.p50,
            self.latency_s.p99,
            self.client_cpu_ms_per_cert(),
        )
    }

    /// Client CPU milliseconds per issued certificate.
    pub fn client_cpu_ms_per_cert(&self) -> f64 {
        per_cert(self.client_cpu_s * 1000.0, self.ok)
    }

    /// Pebble CPU milliseconds per issued certificate.
    pub fn pebble_cpu_ms_per_cert(&self) -> f64 {
        per_cert(
            self.cpu_s.get("pebble").copied().unwrap_or(0.0) * 1000.0,
            self.ok,
        )
    }

    /// Seconds for 1,000 certificates at the measured rate.
    pub fn seconds_for_1000(&self) -> f64 {
        if self.certs_per_s > 0.0 {
            1000.0 / self.certs_per_s
        } else {
            f64::INFINITY
        }
    }
}

fn per_cert(total: f64, n: usize) -> f64 {
    if n == 0 { 0.0 } else { total / n as f64 }
}

/// M subscribers following one worker's events.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fanout {
    /// `certfleet watch` subscribers, each with its own queue and directory.
    pub subscribers: usize,
    /// Certificates issued one after another.
    pub certificates: usize,
    /// Seconds from the pointer's `updated_at` to the files being on one
    /// subscriber's disk, one value per (certificate, subscriber).
    pub from_stored_s: Summary,
    /// The same from the event's `at`.
    pub from_event_s: Summary,
    /// Seconds from the pointer's `updated_at` until the last subscriber had
    /// the files, one value per certificate.
    pub all_subscribers_s: Summary,
    /// (certificate, subscriber) pairs that never got the files in time.
    pub missing: usize,
    /// CPU seconds over the measured part (`bench` = the subscribers).
    pub cpu_s: BTreeMap<String, f64>,
}

/// One timed due-scan variant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scan {
    /// What was scanned.
    pub label: String,
    /// Names due in it.
    pub due: usize,
    /// Milliseconds per run.
    pub runs_ms: Vec<f64>,
    /// Median of `runs_ms`.
    pub median_ms: f64,
}

/// Renewal bookkeeping at scale.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bookkeeping {
    /// Certificates in the expiry index.
    pub indexed: usize,
    /// Seconds to fill it (`State::index_replace`).
    pub fill_s: f64,
    /// Due-scans (`schedule::due_scan`, dry run).
    pub scans: Vec<Scan>,
    /// Jobs per bulk publish.
    pub publish_jobs: usize,
    /// Seconds per bulk submit (`Submitter::submit`: encode, publish, confirms).
    pub publish_runs_s: Vec<f64>,
    /// Jobs per second, median run.
    pub publish_jobs_per_s: f64,
    /// `certfleet exporter`'s refresh over the same index (with validity
    /// records): `due` holds the series it then exposes.
    #[serde(default)]
    pub exporter: Vec<Scan>,
}

/// The S3 server alone with the worker's requests for new certificates.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StorageCeiling {
    /// The S3 server (`SeaweedFS`, `moto`).
    #[serde(default)]
    pub server: String,
    /// Certificates' worth of requests at once.
    pub concurrency: u32,
    /// Certificates whose requests all succeeded.
    pub certificates: usize,
    /// Certificates with a failed request.
    pub failed: usize,
    /// Requests per certificate (pointer read, bundle write, pointer write).
    pub requests_per_certificate: u32,
    /// Seconds.
    pub elapsed_s: f64,
    /// Certificates per second the S3 server took.
    pub certs_per_s: f64,
    /// CPU seconds per process (`s3` = the S3 server).
    pub cpu_s: BTreeMap<String, f64>,
}

fn one() -> u32 {
    1
}

/// `certfleet dashboard`'s first view in a browser.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DashboardView {
    /// Certificates in the fleet shown.
    pub certificates: usize,
    /// Servers reporting on each.
    pub servers: usize,
    /// Navigation start → every row rendered, per timed run (ms).
    pub runs_ms: Vec<f64>,
    /// Their median.
    pub median_ms: f64,
}

/// One result file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "lowercase")]
pub enum Record {
    /// A throughput run.
    Throughput(Throughput),
    /// A fan-out run.
    Fanout(Fanout),
    /// The bookkeeping step.
    Bookkeeping(Bookkeeping),
    /// The storage ceiling.
    Storage(StorageCeiling),
    /// The dashboard's first view.
    Dashboard(DashboardView),
}

/// Every record in `dir` (files ending in `.json`), in file-name order.
/// Files that are not records are skipped with a warning.
///
/// # Errors
/// `dir` cannot be listed.
pub fn load_dir(dir: &Path) -> anyhow::Result<Vec<Record>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        match std::fs::read_to_string(&f)
            .map_err(anyhow::Error::from)
            .and_then(|t| Ok(serde_json::from_str::<Record>(&t)?))
        {
            Ok(r) => out.push(r),
            Err(e) => tracing::warn!(file = %f.display(), error = %e, "not a result record"),
        }
    }
    Ok(out)
}
