//! The names `watch` accepts from the command line and the topic patterns it
//! follows.
//!
//! A watch queue is bound to the events exchange with AMQP topic patterns
//! over `cert.<event>.<name>` (RabbitMQ's topic exchange semantics: words are
//! split on `.`, `*` matches exactly one word, `#` matches zero or more). The
//! broker applies the patterns to events; this module applies the same rules
//! locally, for the catch-up with storage on start (which names would the
//! queue receive events for?) and to ignore events that arrive through a
//! binding left from an earlier `--filter`.
//!
//! A certificate name keeps its dots, so each label of the name is a word:
//! `cert.*.#.example.com` matches `cert.renewed.www.example.com` and
//! `cert.issued.example.com`.

use certfleet_common::CertName;

/// The default filter: every event.
pub(crate) const DEFAULT_FILTER: &str = "cert.#";
/// Longest pattern: an AMQP routing key (binding key) is a short string.
pub(crate) const MAX_PATTERN_LEN: usize = 255;

pub(crate) use certfleet_common::topology::check_queue_id;

/// Checks a `--filter` pattern. Returns why it is refused.
///
/// Beyond AMQP's own rules, it must start with `cert.` (the events exchange
/// carries nothing else), words must not be empty, and `*`/`#` must be whole
/// words (RabbitMQ would take `web*` literally, which is never what was
/// meant). Certificate names are lower case, so upper case would never match.
pub(crate) fn check_filter(pattern: &str) -> Result<(), String> {
    if pattern.len() > MAX_PATTERN_LEN {
        return Err(format!("longer than {MAX_PATTERN_LEN} characters"));
    }
    let Some(rest) = pattern.strip_prefix("cert.") else {
        return Err(String::from(
            "must start with \"cert.\" (events are routed as cert.<issued|renewed|failed|revoked>.<name>), e.g. cert.*.www.example.com or cert.*.#.example.com",
        ));
    };
    for word in rest.split('.') {
        if word.is_empty() {
            return Err("empty word (two dots in a row, or a trailing dot)".into());
        }
        if word == "*" || word == "#" {
            continue;
        }
        if let Some(c) = word
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_')))
        {
            let hint = if matches!(c, '*' | '#') {
                "; '*' and '#' must be a whole word (between dots)".to_string()
            } else if c.is_ascii_uppercase() {
                "; certificate names are lower case".to_string()
            } else {
                String::new()
            };
            return Err(format!("word {word:?} contains {c:?}{hint}"));
        }
    }
    Ok(())
}

/// Whether an AMQP topic `pattern` matches `routing_key` (both split on `.`).
pub(crate) fn topic_matches(pattern: &str, routing_key: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = routing_key.split('.').collect();
    // reach[j]: the first i pattern words can match the first j key words.
    let mut reach = vec![false; k.len() + 1];
    reach[0] = true;
    for word in &p {
        let mut next = vec![false; k.len() + 1];
        match *word {
            "#" => {
                // Zero or more words: any j at or after a reachable one.
                let mut any = false;
                for j in 0..=k.len() {
                    any |= reach[j];
                    next[j] = any;
                }
            }
            "*" => {
                next[1..].copy_from_slice(&reach[..k.len()]);
            }
            literal => {
                for j in 1..=k.len() {
                    next[j] = reach[j - 1] && k[j - 1] == literal;
                }
            }
        }
        reach = next;
    }
    reach[k.len()]
}

/// The filters a watch follows, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Filters(Vec<String>);

impl Filters {
    /// Validates `--filter` values; none means [`DEFAULT_FILTER`]. Duplicates
    /// are dropped.
    pub(crate) fn parse(patterns: &[String]) -> Result<Self, (String, String)> {
        let mut out: Vec<String> = Vec::new();
        for p in patterns {
            check_filter(p).map_err(|reason| (p.clone(), reason))?;
            if !out.contains(p) {
                out.push(p.clone());
            }
        }
        if out.is_empty() {
            out.push(DEFAULT_FILTER.to_string());
        }
        Ok(Self(out))
    }

    /// The patterns, for binding.
    pub(crate) fn patterns(&self) -> &[String] {
        &self.0
    }

    /// Whether an event's routing key matches one of the filters.
    pub(crate) fn matches_key(&self, routing_key: &str) -> bool {
        self.0.iter().any(|p| topic_matches(p, routing_key))
    }

    /// Whether this watch follows a name's certificate: a new version of it
    /// (`cert.issued.<name>` or `cert.renewed.<name>`) would be delivered.
    pub(crate) fn follows(&self, name: &CertName) -> bool {
        ["issued", "renewed"]
            .iter()
            .any(|kind| self.matches_key(&format!("cert.{kind}.{name}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_is_one_word_hash_is_any() {
        let cases = [
            ("cert.#", "cert.issued.www.example.com", true),
            ("cert.#", "cert", true),
            ("#", "cert.issued.a.b", true),
            ("cert.*.#.example.com", "cert.renewed.www.example.com", true),
            ("cert.*.#.example.com", "cert.issued.example.com", true),
            ("cert.*.#.example.com", "cert.issued.a.b.example.com", true),
            ("cert.*.#.example.com", "cert.issued.example.org", false),
            ("cert.*.#.example.com", "cert.issued.notexample.com", false),
            (
                "cert.*.www.example.com",
                "cert.issued.www.example.com",
                true,
            ),
            (
                "cert.*.www.example.com",
                "cert.issued.a.www.example.com",
                false,
            ),
            ("cert.*.*.example.com", "cert.issued.www.example.com", true),
            ("cert.*.*.example.com", "cert.issued.example.com", false),
            ("cert.issued.#", "cert.renewed.x.com", false),
            ("cert.*", "cert.issued", true),
            ("cert.*", "cert.issued.x.com", false),
            ("cert.#.com", "cert.com", true),
            ("cert.#.#.com", "cert.issued.com", true),
            ("cert.issued.x.com", "cert.issued.x.com", true),
            ("cert.issued.x.com", "cert.issued.x.co", false),
            ("cert.issued.x.com", "cert.issued.x.com.evil", false),
        ];
        for (pattern, key, want) in cases {
            assert_eq!(topic_matches(pattern, key), want, "{pattern} vs {key}");
        }
    }

    #[test]
    fn filters_are_validated() {
        for good in [
            "cert.#",
            "cert.*.#.example.com",
            "cert.renewed.www.example.com",
            "cert.*._wildcard.example.com",
        ] {
            assert_eq!(check_filter(good), Ok(()), "{good}");
        }
        for bad in [
            "#",
            "job.#",
            "cert",
            "cert.",
            "cert..x",
            "cert.*.web*.example.com",
            "cert.*.WWW.example.com",
            "cert.*.a b",
            "cert.*.a/b",
        ] {
            assert!(check_filter(bad).is_err(), "{bad} accepted");
        }
        assert!(check_filter(&format!("cert.{}", "a".repeat(300))).is_err());
    }

    #[test]
    fn queue_ids() {
        for good in ["web-1", "web-1.example.com", "a_b", "0"] {
            assert_eq!(check_queue_id(good), Ok(()), "{good}");
        }
        let long = "a".repeat(101);
        for bad in ["", "Web1", "web/1", "web 1", "web#", long.as_str()] {
            assert!(check_queue_id(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(check_queue_id(&"a".repeat(100)), Ok(()));
    }

    #[test]
    fn filters_default_and_follow_names() {
        let name = |s: &str| CertName::parse(s).expect("name");
        let parse = |p: &[&str]| {
            Filters::parse(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("filters")
        };
        assert_eq!(parse(&[]).patterns(), &["cert.#".to_string()]);
        let zone = parse(&["cert.*.#.example.com", "cert.*.#.example.com"]);
        assert_eq!(zone.patterns().len(), 1, "duplicates dropped");
        assert!(zone.follows(&name("www.example.com")));
        assert!(zone.follows(&name("example.com")));
        assert!(!zone.follows(&name("example.org")));
        assert!(zone.matches_key("cert.failed.www.example.com"));
        assert!(parse(&["cert.renewed.#"]).follows(&name("a.example.org")));
        assert!(!parse(&["cert.failed.#"]).follows(&name("a.example.org")));
        assert!(matches!(Filters::parse(&["job.#".into()]), Err((p, _)) if p == "job.#"));
    }
}
