//! Where the worker's CPU goes: `perf script` output (dwarf call graphs)
//! folded into activities.
//!
//! A sample counts for the first activity, in [`ACTIVITIES`] order, that
//! any frame of its stack belongs to — so a `malloc` under the S3 client
//! counts as S3, and the scheduler only gets what no job activity claims.

use std::collections::BTreeMap;

/// Activities and the symbol fragments that identify them, in priority
/// order.
pub const ACTIVITIES: &[(&str, &[&str])] = &[
    (
        "S3 client (aws-sdk-s3, smithy, SigV4)",
        &[
            "aws_smithy",
            "aws_sdk_s3",
            "aws_sigv4",
            "aws_runtime",
            "aws_config",
        ],
    ),
    ("Redis (redis-rs, deadpool)", &["redis::", "deadpool"]),
    ("AMQP (lapin)", &["lapin::", "amq_protocol"]),
    ("logging (tracing-subscriber)", &["tracing_subscriber"]),
    (
        "ACME (instant-acme, its HTTP/TLS)",
        &["instant_acme", "certfleet_worker::acme"],
    ),
    (
        "keys, CSR, certificate parsing",
        &["rcgen", "x509_parser", "certfleet_worker::keys"],
    ),
    (
        "http-01 responder, metrics",
        &[
            "certfleet_worker::serve",
            "certfleet_worker::http01",
            "prometheus::",
        ],
    ),
    ("other hyper / rustls", &["hyper", "rustls"]),
    ("other certfleet code", &["certfleet"]),
    ("tokio scheduler (idle, wake-ups)", &["tokio::runtime"]),
];

/// Samples per activity (plus `kernel, libc, other`), and the total.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Breakdown {
    /// Activity → samples.
    pub samples: BTreeMap<String, usize>,
    /// All samples.
    pub total: usize,
}

impl Breakdown {
    /// Activities by share, largest first: (name, fraction).
    pub fn shares(&self) -> Vec<(String, f64)> {
        let mut v: Vec<(String, f64)> = self
            .samples
            .iter()
            .map(|(k, n)| (k.clone(), *n as f64 / self.total.max(1) as f64))
            .collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    }
}

/// Folds `perf script` text.
pub fn fold(text: &str) -> Breakdown {
    let mut out = Breakdown::default();
    let mut stack: Vec<String> = Vec::new();
    let flush = |stack: &mut Vec<String>, out: &mut Breakdown| {
        if stack.is_empty() {
            return;
        }
        let name = ACTIVITIES
            .iter()
            .find(|(_, keys)| stack.iter().any(|f| keys.iter().any(|k| f.contains(k))))
            .map(|(n, _)| *n)
            .unwrap_or("kernel, libc, other");
        *out.samples.entry(name.to_string()).or_insert(0) += 1;
        out.total += 1;
        stack.clear();
    };
    for line in text.lines() {
        if line.trim().is_empty() {
            flush(&mut stack, &mut out);
        } else if line.starts_with(char::is_whitespace) {
            // "\t    7f3a… symbol+0x12 (/path/to/dso)": drop address and dso.
            let f = line.trim();
            let f = f.split_once(' ').map(|(_, s)| s).unwrap_or(f);
            let f = match f.rfind(" (") {
                Some(i) => &f[..i],
                None => f,
            };
            stack.push(f.to_string());
        } else {
            flush(&mut stack, &mut out);
        }
    }
    flush(&mut stack, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "certfleet-worke 1 1.0: 1 cpu-clock:
\t    7f01 malloc (/usr/lib/libc.so.6)
\t    5501 aws_smithy_runtime::client::orchestrator::invoke (/usr/local/bin/certfleet-worker)
\t    5502 tokio::runtime::task::harness::poll (/usr/local/bin/certfleet-worker)

certfleet-worke 1 1.1: 1 cpu-clock:
\t    5503 tokio::runtime::scheduler::park (/usr/local/bin/certfleet-worker)

certfleet-worke 1 1.2: 1 cpu-clock:
\t    ffff finish_task_switch ([kernel.kallsyms])
";

    #[test]
    fn folds_by_activity_not_by_dso() {
        let b = fold(TEXT);
        assert_eq!(b.total, 3);
        assert_eq!(
            b.samples.get("S3 client (aws-sdk-s3, smithy, SigV4)"),
            Some(&1)
        );
        assert_eq!(b.samples.get("tokio scheduler (idle, wake-ups)"), Some(&1));
        assert_eq!(b.samples.get("kernel, libc, other"), Some(&1));
        assert_eq!(b.shares().len(), 3);
    }
}
