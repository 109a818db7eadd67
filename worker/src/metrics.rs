//! Prometheus metrics of a worker.
//!
//! One struct per component, each with `register(&mut Registry)`, typed label
//! sets and its own sub-registry prefix (linkerd2-proxy's habit). `main`
//! owns the registry; nothing is global. Labels are outcome, kind, CA and
//! challenge type — never a certificate name, which would make one series
//! per certificate.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// How a job ended for this delivery.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
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

/// Job labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    /// `issue`, `renew`, `revoke` or `unknown`.
    pub kind: &'static str,
    /// Outcome.
    pub outcome: Outcome,
}

/// Job metrics.
#[derive(Debug, Clone)]
pub struct JobMetrics {
    /// Deliveries handled, by outcome.
    pub handled: Family<JobLabels, Counter>,
    /// Time from delivery to outcome.
    pub duration: Family<JobLabels, Histogram>,
    /// Jobs being worked on now.
    pub in_flight: Gauge,
    /// Deliveries whose handling panicked (each one dead-lettered; the
    /// worker carried on). Anything but 0 is a bug to report.
    pub panicked: Counter,
    /// Orders created at the CA.
    pub orders_created: Counter,
    /// Orders resumed from a stored order URL.
    pub orders_resumed: Counter,
    /// Orders found in the account's orders list after a new-order request
    /// got no answer (adopted instead of creating another).
    pub orders_found: Counter,
}

impl JobMetrics {
    /// Registers under `jobs_`.
    pub fn register(reg: &mut Registry) -> Self {
        let m = Self {
            handled: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.05, 2.0, 14))
            }),
            in_flight: Gauge::default(),
            panicked: Counter::default(),
            orders_created: Counter::default(),
            orders_resumed: Counter::default(),
            orders_found: Counter::default(),
        };
        let r = reg.sub_registry_with_prefix("jobs");
        r.register(
            "handled",
            "Job deliveries handled, by outcome",
            m.handled.clone(),
        );
        r.register(
            "duration_seconds",
            "Time from delivery to outcome",
            m.duration.clone(),
        );
        r.register("in_flight", "Jobs being worked on", m.in_flight.clone());
        r.register(
            "panicked",
            "Job deliveries whose handling panicked (dead-lettered)",
            m.panicked.clone(),
        );
        let r = reg.sub_registry_with_prefix("acme_orders");
        r.register("created", "ACME orders created", m.orders_created.clone());
        r.register(
            "resumed",
            "ACME orders resumed after a redelivery",
            m.orders_resumed.clone(),
        );
        r.register(
            "found",
            "ACME orders found in the account's orders list after a new-order request got no answer",
            m.orders_found.clone(),
        );
        m
    }
}

/// ACME request labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    /// HTTP status class (`2xx`, `4xx`, …) or `error`.
    pub status: &'static str,
}

/// ACME client metrics.
#[derive(Debug, Default)]
pub struct AcmeMetrics {
    requests: Family<StatusLabels, Counter>,
}

impl AcmeMetrics {
    /// Registers under `acme_`.
    pub fn register(reg: &mut Registry) -> Self {
        let m = Self::default();
        reg.sub_registry_with_prefix("acme").register(
            "requests",
            "HTTP requests to the ACME server by status class",
            m.requests.clone(),
        );
        m
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
        self.requests.get_or_create(&StatusLabels { status }).inc();
    }
}

/// http-01 responder labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Http01Labels {
    /// `hit`, `miss` or `error`.
    pub result: &'static str,
}

/// Storage labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// `get`, `put`, `delete`.
    pub op: &'static str,
}

/// Responder, storage and broker metrics.
#[derive(Debug, Clone, Default)]
pub struct ServiceMetrics {
    /// http-01 requests answered.
    pub http01: Family<Http01Labels, Counter>,
    /// S3 requests made by job processing.
    pub s3: Family<OpLabels, Counter>,
    /// Broker (re)connections.
    pub broker_connects: Counter<u64, AtomicU64>,
}

impl ServiceMetrics {
    /// Registers under `http01_`, `s3_`, `broker_`.
    pub fn register(reg: &mut Registry) -> Self {
        let m = Self::default();
        reg.sub_registry_with_prefix("http01").register(
            "requests",
            "http-01 challenge requests answered",
            m.http01.clone(),
        );
        reg.sub_registry_with_prefix("s3").register(
            "requests",
            "Object storage requests made by jobs",
            m.s3.clone(),
        );
        reg.sub_registry_with_prefix("broker").register(
            "connects",
            "Connections opened to the broker",
            m.broker_connects.clone(),
        );
        m
    }

    /// Counts an S3 request.
    pub fn s3(&self, op: &'static str) {
        self.s3.get_or_create(&OpLabels { op }).inc();
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
    /// Registers everything under `certfleet_`.
    pub fn register(reg: &mut Registry) -> Self {
        let reg = reg.sub_registry_with_prefix("certfleet");
        Self {
            jobs: JobMetrics::register(reg),
            acme: std::sync::Arc::new(AcmeMetrics::register(reg)),
            service: ServiceMetrics::register(reg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_with_prefix_and_labels() -> Result<(), std::fmt::Error> {
        let mut reg = Registry::default();
        let m = Metrics::register(&mut reg);
        m.jobs
            .handled
            .get_or_create(&JobLabels {
                kind: "issue",
                outcome: Outcome::Stored,
            })
            .inc();
        m.acme.request(201);
        m.service.s3("put");
        m.jobs.panicked.inc();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg)?;
        assert!(
            out.contains("certfleet_jobs_handled_total{kind=\"issue\",outcome=\"Stored\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("certfleet_acme_requests_total{status=\"2xx\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("certfleet_s3_requests_total{op=\"put\"} 1"),
            "{out}"
        );
        assert!(out.contains("certfleet_jobs_panicked_total 1"), "{out}");
        Ok(())
    }
}
