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
    /// Outcome.
    pub outcome: Outcome,
}

impl JobLabels {
    fn values(&self) -> [&'static str; 2] {
        [self.kind, self.outcome.as_str()]
    }
}

fn counter(reg: &Registry, name: &str, help: &str) -> Result<IntCounter, RegisterError> {
    let c = IntCounter::with_opts(Opts::new(name, help))?;
    reg.register(Box::new(c.clone()))?;
    Ok(c)
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
    /// Jobs being worked on now.
    pub in_flight: IntGauge,
    /// Deliveries whose handling panicked (each one dead-lettered; the
    /// worker carried on). Anything but 0 is a bug to report.
    pub panicked: IntCounter,
    /// Orders created at the CA.
    pub orders_created: IntCounter,
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
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "certfleet_jobs_duration_seconds",
                "Time from delivery to outcome",
            )
            .buckets(exponential_buckets(0.05, 2.0, 14)?),
            &["kind", "outcome"],
        )?;
        reg.register(Box::new(duration.clone()))?;
        let in_flight = IntGauge::with_opts(Opts::new(
            "certfleet_jobs_in_flight",
            "Jobs being worked on",
        ))?;
        reg.register(Box::new(in_flight.clone()))?;
        Ok(Self {
            handled: counter_vec(
                reg,
                "certfleet_jobs_handled_total",
                "Job deliveries handled, by outcome",
                &["kind", "outcome"],
            )?,
            duration,
            in_flight,
            panicked: counter(
                reg,
                "certfleet_jobs_panicked_total",
                "Job deliveries whose handling panicked (dead-lettered)",
            )?,
            orders_created: counter(
                reg,
                "certfleet_acme_orders_created_total",
                "ACME orders created",
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

    /// Counts one handled delivery and its duration.
    pub fn handled(&self, labels: &JobLabels, seconds: f64) {
        let values = labels.values();
        self.handled.with_label_values(&values).inc();
        self.duration.with_label_values(&values).observe(seconds);
    }
}

/// ACME client metrics.
#[derive(Debug)]
pub struct AcmeMetrics {
    requests: IntCounterVec,
}

impl AcmeMetrics {
    /// Registers `certfleet_acme_requests_total`.
    ///
    /// # Errors
    /// A name registered twice.
    pub fn register(reg: &Registry) -> Result<Self, RegisterError> {
        Ok(Self {
            requests: counter_vec(
                reg,
                "certfleet_acme_requests_total",
                "HTTP requests to the ACME server by status class",
                &["status"],
            )?,
        })
    }

    /// Counts one request (status 0: no response).
    pub fn request(&self, status: u16) {
        let status = match status {
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            500..=599 => "5xx",
            _ => "error",
        };
        self.requests.with_label_values(&[status]).inc();
    }
}

/// Responder, storage and broker metrics.
#[derive(Debug, Clone)]
pub struct ServiceMetrics {
    http01: IntCounterVec,
    s3: IntCounterVec,
    /// Broker (re)connections.
    pub broker_connects: IntCounter,
}

impl ServiceMetrics {
    /// Registers `certfleet_http01_*`, `certfleet_s3_*`, `certfleet_broker_*`.
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
        })
    }

    /// Counts an http-01 request: `hit`, `miss` or `error`.
    pub fn http01(&self, result: &'static str) {
        self.http01.with_label_values(&[result]).inc();
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
    fn encodes_names_and_labels() -> Result<(), prometheus::Error> {
        let reg = Registry::new();
        let m = Metrics::register(&reg)?;
        m.jobs.handled(
            &JobLabels {
                kind: "issue",
                outcome: Outcome::Stored,
            },
            0.3,
        );
        m.acme.request(201);
        m.service.s3("put");
        m.service.http01("hit");
        m.jobs.panicked.inc();
        m.jobs.in_flight.set(3);
        let out = encode(&reg)?;
        for line in [
            "certfleet_jobs_handled_total{kind=\"issue\",outcome=\"stored\"} 1",
            "certfleet_jobs_duration_seconds_count{kind=\"issue\",outcome=\"stored\"} 1",
            "certfleet_acme_requests_total{status=\"2xx\"} 1",
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
