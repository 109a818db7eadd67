//! The certificate names of a run.
//!
//! Every run of a step gets names of its own (`n<i>.<label>.<zone>`; the
//! zone is `bench.test`, or in dns-01 mode a zone of the bench's BIND such
//! as `dns01.test`),
//! because Pebble reuses an account's valid authorizations
//! (`PEBBLE_AUTHZREUSE`): issuing a name twice with one account would skip
//! the validation the second time. certfleet's main run and lego use the
//! same label, hence the same names (each with its own account).

/// The parent domain of the bench's names, but for dns-01 mode's.
pub const SUFFIX: &str = "bench.test";

/// `n` names under `label` in `zone`: `n0000.<label>.<zone>`, ….
pub fn list(label: &str, n: usize, zone: &str) -> Vec<String> {
    (0..n).map(|i| format!("n{i:04}.{label}.{zone}")).collect()
}

/// A name outside the measured set (account creation, warm-up).
pub fn warmup(label: &str, who: &str, zone: &str) -> String {
    format!("warmup-{who}.{label}.{zone}")
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
        for zone in [SUFFIX, "dns01.test"] {
            for n in list(&l, 3, zone).iter().chain([&warmup(&l, "cf", zone)]) {
                certfleet_common::CertName::parse(n).expect("valid");
            }
        }
        assert_eq!(
            list(&l, 2, SUFFIX)[1],
            "n0001.instant-c64-20251125t101500z.bench.test"
        );
        assert_eq!(
            list(
                &label(&["dns01", "c64", "n200", "20261203T101500Z"]),
                1,
                "dns01.test"
            )[0],
            "n0000.dns01-c64-n200-20261203t101500z.dns01.test"
        );
    }
}
