//! The certificate names of a run.
//!
//! Every run of a step gets names of its own (`<i>.<label>.bench.test`),
//! because Pebble reuses an account's valid authorizations
//! (`PEBBLE_AUTHZREUSE`): issuing a name twice with one account would skip
//! the validation the second time. certfleet's main run and lego use the
//! same label, hence the same names (each with its own account).

/// The parent domain of every bench name.
pub const SUFFIX: &str = "bench.test";

/// `n` names under `label`: `n0000.<label>.bench.test`, ….
pub fn list(label: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("n{i:04}.{label}.{SUFFIX}"))
        .collect()
}

/// A name outside the measured set (account creation, warm-up).
pub fn warmup(label: &str, who: &str) -> String {
    format!("warmup-{who}.{label}.{SUFFIX}")
}

/// A label safe in a domain and in a vhost: lower-case letters, digits and
/// dashes.
pub fn label(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|p| {
            p.to_ascii_lowercase()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_cert_names() {
        let l = label(&["instant", "c64", "20251125T101500Z"]);
        assert_eq!(l, "instant-c64-20251125t101500z");
        for n in list(&l, 3).iter().chain([&warmup(&l, "cf")]) {
            certfleet_common::CertName::parse(n).expect("valid");
        }
        assert_eq!(
            list(&l, 2)[1],
            "n0001.instant-c64-20251125t101500z.bench.test"
        );
    }
}
