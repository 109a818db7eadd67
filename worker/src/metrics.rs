//! Prometheus metrics of a worker (the `prometheus` crate).
//!
//! One struct per component, each with `register(&Registry)` and the
//! label names it uses. `main` creates the registry and passes it to
//! [`crate::start`]; nothing is registered in the crate's
//! global default registry. Labels are outcome, kind, status, op and
//! result — never a certificate name, which would make one series per
//! certificate.

pub use prometheus::Registry;
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, exponential_buckets,
};

/// Registering failed: a name registered twice (a bug in this module).
pub type RegisterError = prometheus::Error;

/// How a job ended for this delivery.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Outcome {
    /// A new certificate was stored.
    Stored,
    /// Nothing to do: an earlier delivery or job already stored it.
    AlreadyDone,
    /// Sent to a delay queue, attempt counted.
    Retried,
    /// Sent to a delay queue, attempt not counted (busy, rate limit).
    Deferred,
    /// Failed for good: failure event and dead-letter queue.
    Failed,
    /// Undecodable message dead-lettered.
    Undecodable,
    /// Left unacknowledged for redelivery (shutdown, broker lost).
    Abandoned,
    /// Handling panicked: dead-lettered with the panic message.
    Panicked,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stored => "stored",
            Self::AlreadyDone => "already_done",
            Self::Retried => "retried",
            Self::Deferred => "deferred",
            Self::Failed => "failed",
            Self::Undecodable => "undecodable",
            Self::Abandoned => "abandoned",
            Self::Panicked => "panicked",
        }
    }
}

/// Job labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct JobLabels {
    /// `issue`, `renew`, `revoke` or `unknown`.
    pub kind: &'static str,
    /// `http-01`, `dns-01` or `unknown` (from the routing key).
    pub challenge: &'static str,
    /// Outcome.
    pub outcome: Outcome,
}

impl JobLabels {
    fn values(&self) -> [&'static str; 3] {
        [self.kind, self.challenge, self.outcome.as_str()]
    }

    /// The challenge label of a delivery's routing key
    /// (`job.<kind>.<challenge>`): only the known spellings, so network
    /// input cannot grow the label's values.
    pub fn challenge_of(routing_key: &str) -> &'static str {
        match routing_key.rsplit('.').next() {
            Some("http-01") => "http-01",
            Some("dns-01") => "dns-01",
            _ => "unknown",
        }
    }
}

fn counter(reg: &Registry, name: &str, help: &str) -> Result<IntCounter, RegisterError> {
    let c = IntCounter::with_opts(Opts::new(name, help))?;
    reg.register(Box::new(c.clone()))?;
    Ok(c)
}

fn histogram_vec(
    reg: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
    labels: &[&str],
) -> Result<HistogramVec, RegisterError> {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)?;
    reg.register(Box::new(h.clone()))?;
    Ok(h)
}

fn counter_vec(
    reg: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, RegisterError> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    reg.register(Box::new(c.clone()))?;
    Ok(c)
}

/// Job metrics.
#[derive(Debug, Clone)]
pub struct JobMetrics {
    handled: IntCounterVec,
    duration: HistogramVec,
    phase: HistogramVec,
    /// Jobs being worked on now.
    pub in_flight: IntGauge,
    /// Deliveries whose handling panicked (each one dead-lettered; the
    /// worker carried on). Anything but 0 is a bug to report.
    pub panicked: IntCounter,
    /// Jobs that lost their name's lease (expired or taken over, or a
    /// newer fence found at the write) and were deferred.
    pub leases_lost: IntCounter,
    /// Orders created at the CA.
    pub orders_created: IntCounter,
    /// Renewal times moved because the CA moved its ARI window.
    pub ari_moved: IntCounter,
    /// Orders taken to the next CA because one failed in a way another may cure.
    pub ca_fallbacks: IntCounter,
    /// Orders resumed from a stored order URL.
    pub orders_resumed: IntCounter,
    /// Orders found in the account's orders list after a new-order request
    /// got no answer (adopted instead of creating another).
    pub orders_found: IntCounter,
}

impl JobMetrics {
    /// Registers `certfleet_jobs_*` and `certfleet_acme_orders_*`.
    ///
    /// # Errors
    /// A name registered twice.
    pub fn register(reg: &Registry) -> Result<Self, RegisterError> {
        let duration = histogram_vec(
            reg,
            "certfleet_jobs_duration_seconds",
            "Time from delivery to outcome",
            exponential_buckets(0.05, 2.0, 14)?,
            &["kind", "challenge", "outcome"],
        )?;
        let phase = histogram_vec(
            reg,
            "certfleet_job_phase_duration_seconds",
            "Time an issue or renew job spends in each phase: queued (published to delivered, first attempts), lease, read (the pointer), order (the CA), store (bundle and pointer), announce (the event, confirmed), complete (Redis bookkeeping)",
            exponential_buckets(0.001, 2.0, 16)?,
            &["phase"],
        )?;
        let in_flight = IntGauge::with_opts(Opts::new(
            "certfleet_jobs_in_flight",
            "Jobs being worked on",
        ))?;
        reg.register(Box::new(in_flight.clone()))?;
        Ok(Self {
            handled: counter_vec(
                reg,
                "certfleet_jobs_handled_total",
                "Job deliveries handled, by kind, challenge and outcome",
                &["kind", "challenge", "outcome"],
            )?,
            duration,
            phase,
            in_flight,
            panicked: counter(
                reg,
                "certfleet_jobs_panicked_total",
                "Job deliveries whose handling panicked (dead-lettered)",
            )?,
            leases_lost: counter(
                reg,
                "certfleet_leases_lost_total",
                "Jobs that lost their certificate's lease and were deferred",
            )?,
            orders_created: counter(
                reg,
                "certfleet_acme_orders_created_total",
                "ACME orders created",
            )?,
            ca_fallbacks: counter(
                reg,
                "certfleet_acme_fallbacks_total",
                "Orders taken to the next issuer after a CA failed in a way another may cure",
            )?,
            ari_moved: counter(
                reg,
                "certfleet_ari_windows_moved_total",
                "Renewal times rescheduled because the CA moved its ARI window",
            )?,
            orders_resumed: counter(
                reg,
                "certfleet_acme_orders_resumed_total",
                "ACME orders resumed after a redelivery",
            )?,
            orders_found: counter(
                reg,
                "certfleet_acme_orders_found_total",
                "ACME orders found in the account's orders list after a new-order request got no answer",
            )?,
        })
    }

    /// Records how long a job spent in `phase` (see
    /// `certfleet_job_phase_duration_seconds`).
    pub fn phase(&self, phase: &'static str, took: std::time::Duration) {
        self.phase
            .with_label_values(&[phase])
            .observe(took.as_secs_f64());
    }

    /// Counts one handled delivery and its duration.
    pub fn handled(&self, labels: &JobLabels, seconds: f64) {
        let values = labels.values();
        self.handled.with_label_values(&values).inc();
        self.duration.with_label_values(&values).observe(seconds);
    }
}

/// ACME client metrics, like cert-manager's ACME client metrics: every
/// request by CA host, ACME action and HTTP status, with its duration.
#[derive(Debug)]
pub struct AcmeMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    propagation: HistogramVec,
}

impl AcmeMetrics {
    /// Registers `certfleet_acme_client_requests_total`,
    /// `certfleet_acme_client_request_duration_seconds` and
    /// `certfleet_dns01_propagation_seconds`.
    ///
    /// # Errors
    /// A name registered twice.
    pub fn register(reg: &Registry) -> Result<Self, RegisterError> {
        let duration = histogram_vec(
            reg,
            "certfleet_acme_client_request_duration_seconds",
            "Duration of HTTP requests to the ACME server",
            exponential_buckets(0.005, 2.0, 14)?,
            &["host", "action", "status"],
        )?;
        let propagation = histogram_vec(
            reg,
            "certfleet_dns01_propagation_seconds",
            "Time from presenting an order's dns-01 TXT values until every authoritative server answers them",
            exponential_buckets(0.25, 2.0, 12)?,
            &["provider"],
        )?;
        Ok(Self {
            propagation,
            requests: counter_vec(
                reg,
                "certfleet_acme_client_requests_total",
                "HTTP requests to the ACME server by host, action and status (error: no answer)",
                &["host", "action", "status"],
            )?,
            duration,
        })
    }

    /// Counts one request to `host` for `action` ([`acme_action`]) that
    /// ended with `status` (`None`: no answer) after `seconds`.
    pub fn request(&self, host: &str, action: &str, status: Option<u16>, seconds: f64) {
        let status = status.map_or_else(|| "error".to_string(), |s| s.to_string());
        let values = [host, action, status.as_str()];
        self.requests.with_label_values(&values).inc();
        self.duration.with_label_values(&values).observe(seconds);
    }
}

impl AcmeMetrics {
    /// Records an order's dns-01 propagation wait through `provider` (a
    /// configured provider's name).
    pub fn propagated(&self, provider: &str, seconds: f64) {
        self.propagation
            .with_label_values(&[provider])
            .observe(seconds);
    }
}

/// The ACME action of a request, from its method and URL path: a handful
/// of values whatever the CA names its resources (Let's Encrypt's
/// `/acme/new-order`, Pebble's `/order-plz`, ...), so the label stays
/// small.
pub fn acme_action(method: &http::Method, path: &str) -> &'static str {
    let p = path.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| p.contains(w));
    if method == http::Method::HEAD || has(&["nonce"]) {
        "new_nonce"
    } else if has(&["renewal-info", "renewalinfo"]) {
        "renewal_info"
    } else if has(&["new-order", "neworder", "order-plz"]) {
        "new_order"
    } else if has(&["new-acct", "new-account", "newaccount", "sign-me-up"]) {
        "new_account"
    } else if has(&["revoke"]) {
        "revoke"
    } else if has(&["key-change", "keychange", "rollover"]) {
        "key_change"
    } else if has(&["finalize"]) {
        "finalize"
    } else if has(&["list-order", "orders"]) {
        "list_orders"
    } else if has(&["authz"]) {
        "authorization"
    } else if has(&["chal"]) {
        "challenge"
    } else if has(&["cert"]) {
        "certificate"
    } else if has(&["order"]) {
        "order"
    } else if has(&["acct", "account"]) {
        "account"
    } else if has(&["dir"]) {
        "directory"
    } else {
        "other"
    }
}

/// Responder, storage and broker metrics.
#[derive(Debug, Clone)]
pub struct ServiceMetrics {
    http01: IntCounterVec,
    tlsalpn01: IntCounterVec,
    s3: IntCounterVec,
    /// Broker (re)connections.
    pub broker_connects: IntCounter,
    /// 1 while the worker consumes from the broker (what `/readyz` needs
    /// of the broker), else 0.
    pub ready: IntGauge,
}

impl ServiceMetrics {
    /// Registers `certfleet_http01_*`, `certfleet_tlsalpn01_*`, `certfleet_s3_*`,
    /// `certfleet_broker_*`.
    ///
    /// # Errors
    /// A name registered twice.
    pub fn register(reg: &Registry) -> Result<Self, RegisterError> {
        Ok(Self {
            http01: counter_vec(
                reg,
                "certfleet_http01_requests_total",
                "http-01 challenge requests answered",
                &["result"],
            )?,
            tlsalpn01: counter_vec(
                reg,
                "certfleet_tlsalpn01_handshakes_total",
                "tls-alpn-01 challenge handshakes: hit (answered), miss (no answer for the name), refused (not acme-tls/1 or no SNI), error",
                &["result"],
            )?,
            s3: counter_vec(
                reg,
                "certfleet_s3_requests_total",
                "Object storage requests made by jobs",
                &["op"],
            )?,
            broker_connects: counter(
                reg,
                "certfleet_broker_connects_total",
                "Connections opened to the broker",
            )?,
            ready: {
                let g = IntGauge::with_opts(Opts::new(
                    "certfleet_worker_ready",
                    "1 while the worker consumes jobs from the broker",
                ))?;
                reg.register(Box::new(g.clone()))?;
                g
            },
        })
    }

    /// Counts an http-01 request: `hit`, `miss` or `error`.
    pub fn http01(&self, result: &'static str) {
        self.http01.with_label_values(&[result]).inc();
    }

    /// Counts a tls-alpn-01 handshake: `hit`, `miss`, `refused`, `error`.
    pub fn tlsalpn01(&self, result: &'static str) {
        self.tlsalpn01.with_label_values(&[result]).inc();
    }

    /// Counts an S3 request: `get`, `put`, `delete`.
    pub fn s3(&self, op: &'static str) {
        self.s3.with_label_values(&[op]).inc();
    }
}

/// Every metric of a worker.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Jobs.
    pub jobs: JobMetrics,
    /// ACME client.
    pub acme: std::sync::Arc<AcmeMetrics>,
    /// Responder, storage, broker.
    pub service: ServiceMetrics,
}

impl Metrics {
    /// Registers everything (names start with `certfleet_`).
    ///
    /// # Errors
    /// A name registered twice.
    pub fn register(reg: &Registry) -> Result<Self, RegisterError> {
        Ok(Self {
            jobs: JobMetrics::register(reg)?,
            acme: std::sync::Arc::new(AcmeMetrics::register(reg)?),
            service: ServiceMetrics::register(reg)?,
        })
    }
}

/// The registry in the text exposition format (`text/plain; version=0.0.4`).
///
/// # Errors
/// A metric that cannot be encoded.
pub fn encode(reg: &Registry) -> Result<String, prometheus::Error> {
    prometheus::TextEncoder::new().encode_to_string(&reg.gather())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acme_actions_of_two_cas() {
        use http::Method;
        for (method, path, want) in [
            (Method::GET, "/directory", "directory"),
            (Method::GET, "/dir", "directory"),
            (Method::HEAD, "/acme/new-nonce", "new_nonce"),
            (Method::HEAD, "/nonce-plz", "new_nonce"),
            (Method::POST, "/acme/new-acct", "new_account"),
            (Method::POST, "/sign-me-up", "new_account"),
            (Method::POST, "/acme/new-order", "new_order"),
            (Method::POST, "/order-plz", "new_order"),
            (Method::POST, "/acme/authz/1/2", "authorization"),
            (Method::POST, "/authZ/abc", "authorization"),
            (Method::POST, "/acme/chall/1/2/x", "challenge"),
            (Method::POST, "/chalZ/abc", "challenge"),
            (Method::POST, "/acme/finalize/1/2", "finalize"),
            (Method::POST, "/finalize-order/abc", "finalize"),
            (Method::POST, "/acme/order/1/2", "order"),
            (Method::POST, "/my-order/abc", "order"),
            (Method::POST, "/acme/cert/abc", "certificate"),
            (Method::POST, "/certZ/abc", "certificate"),
            (Method::POST, "/list-orderz/1", "list_orders"),
            (Method::POST, "/acme/acct/1/orders", "list_orders"),
            (Method::POST, "/acme/acct/1", "account"),
            (Method::POST, "/my-account/1", "account"),
            (Method::GET, "/acme/renewal-info/abc", "renewal_info"),
            (Method::POST, "/acme/revoke-cert", "revoke"),
            (Method::POST, "/rollover-account-key", "key_change"),
            (Method::GET, "/", "other"),
        ] {
            assert_eq!(acme_action(&method, path), want, "{method} {path}");
        }
    }

    #[test]
    fn encodes_names_and_labels() -> Result<(), prometheus::Error> {
        let reg = Registry::new();
        let m = Metrics::register(&reg)?;
        m.jobs.handled(
            &JobLabels {
                kind: "issue",
                challenge: JobLabels::challenge_of("job.issue.dns-01"),
                outcome: Outcome::Stored,
            },
            0.3,
        );
        m.acme.request("ca.example", "new_order", Some(201), 0.02);
        m.acme.request("ca.example", "new_nonce", None, 10.0);
        m.service.s3("put");
        m.service.http01("hit");
        m.jobs.panicked.inc();
        m.jobs.in_flight.set(3);
        let out = encode(&reg)?;
        for line in [
            "certfleet_jobs_handled_total{challenge=\"dns-01\",kind=\"issue\",outcome=\"stored\"} 1",
            "certfleet_jobs_duration_seconds_count{challenge=\"dns-01\",kind=\"issue\",outcome=\"stored\"} 1",
            "certfleet_acme_client_requests_total{action=\"new_order\",host=\"ca.example\",status=\"201\"} 1",
            "certfleet_acme_client_requests_total{action=\"new_nonce\",host=\"ca.example\",status=\"error\"} 1",
            "certfleet_acme_client_request_duration_seconds_count{action=\"new_order\",host=\"ca.example\",status=\"201\"} 1",
            "certfleet_worker_ready 0",
            "certfleet_s3_requests_total{op=\"put\"} 1",
            "certfleet_http01_requests_total{result=\"hit\"} 1",
            "certfleet_jobs_panicked_total 1",
            "certfleet_jobs_in_flight 3",
            "certfleet_acme_orders_found_total 0",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing in:\n{out}");
        }
        // A second registration of the same names is refused, not doubled.
        assert!(Metrics::register(&reg).is_err());
        Ok(())
    }
}
