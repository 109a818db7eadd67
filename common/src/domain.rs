//! Domain names and certificate names: the input every command starts with.
//!
//! Everything here runs before anything is published, so a bad name costs
//! the user an error message (exit 64), never a failed order at the CA.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The most names one certificate may carry (Let's Encrypt's limit).
pub const MAX_DOMAINS: usize = 100;
/// DNS limit on a whole name (RFC 1035 §2.3.4, without the root dot).
pub const MAX_NAME_LEN: usize = 253;
/// DNS limit on one label.
pub const MAX_LABEL_LEN: usize = 63;
/// Longest certificate name; it becomes a directory, an S3 key part, a Redis
/// key part and a routing-key suffix.
pub const MAX_CERT_NAME_LEN: usize = 200;

/// What is wrong with a domain or certificate name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DomainError {
    /// An empty argument.
    #[error("empty domain name")]
    Empty,
    /// IDNA conversion failed.
    #[error("{0:?} is not a valid internationalized domain name")]
    Idna(String),
    /// An IP address where a DNS name is expected.
    #[error("{0:?}: IP address certificates are not supported, give a DNS name")]
    IpLiteral(String),
    /// Too long.
    #[error("{0:?} is longer than {MAX_NAME_LEN} characters")]
    TooLong(String),
    /// Label problems.
    #[error("{name:?}: {reason}")]
    Label {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A single label such as `localhost`.
    #[error("{0:?} is not a fully qualified domain name (a CA only issues for names with a dot)")]
    NotQualified(String),
    /// `*` anywhere but the whole leftmost label.
    #[error("{0:?}: a wildcard must be the whole leftmost label, as in *.example.com")]
    BadWildcard(String),
    /// No names at all.
    #[error("no domain names given")]
    NoDomains,
    /// More than [`MAX_DOMAINS`].
    #[error("{0} names given; a certificate can carry at most {MAX_DOMAINS}")]
    TooMany(usize),
    /// A certificate name that cannot be used as a directory and key.
    #[error("certificate name {name:?}: {reason}")]
    CertName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
}

/// Normalizes one domain name: trims, drops a trailing dot, converts
/// internationalized names to their ASCII (punycode) form, lower-cases, and
/// checks label and length limits. `*.` is allowed as the leftmost label.
///
/// # Errors
/// The first rule the name breaks.
pub fn normalize_domain(input: &str) -> Result<String, DomainError> {
    let trimmed = input.trim();
    let trimmed = trimmed.strip_suffix('.').unwrap_or(trimmed);
    if trimmed.is_empty() {
        return Err(DomainError::Empty);
    }
    let unbracketed = trimmed.trim_start_matches('[').trim_end_matches(']');
    if unbracketed.parse::<std::net::IpAddr>().is_ok() {
        return Err(DomainError::IpLiteral(input.trim().to_string()));
    }
    let (wildcard, rest) = match trimmed.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, trimmed),
    };
    if rest.contains('*') {
        return Err(DomainError::BadWildcard(input.trim().to_string()));
    }
    if rest.is_empty() {
        return Err(DomainError::NotQualified(input.trim().to_string()));
    }
    let ascii = if rest.is_ascii() {
        rest.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii_strict(rest)
            .map_err(|_| DomainError::Idna(input.trim().to_string()))?
    };
    let labels: Vec<&str> = ascii.split('.').collect();
    for label in &labels {
        let reason = if label.is_empty() {
            Some("empty label (two dots in a row?)".to_string())
        } else if label.len() > MAX_LABEL_LEN {
            Some(format!(
                "label {label:?} is longer than {MAX_LABEL_LEN} characters"
            ))
        } else if label.starts_with('-') || label.ends_with('-') {
            Some(format!("label {label:?} starts or ends with '-'"))
        } else {
            label
                .chars()
                .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
                .map(|c| format!("label {label:?} contains {c:?}"))
        };
        if let Some(reason) = reason {
            return Err(DomainError::Label {
                name: input.trim().to_string(),
                reason,
            });
        }
    }
    if labels.len() < 2 {
        return Err(DomainError::NotQualified(input.trim().to_string()));
    }
    if labels
        .last()
        .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(DomainError::Label {
            name: input.trim().to_string(),
            reason: "the last label is all digits".into(),
        });
    }
    let full = if wildcard {
        format!("*.{ascii}")
    } else {
        ascii
    };
    if full.len() > MAX_NAME_LEN {
        return Err(DomainError::TooLong(input.trim().to_string()));
    }
    Ok(full)
}

/// Normalizes a list of names: each as [`normalize_domain`], duplicates
/// removed (first occurrence kept, so the first name stays first).
///
/// # Errors
/// No names, more than [`MAX_DOMAINS`] distinct names, or a bad name.
pub fn normalize_domains<S: AsRef<str>>(inputs: &[S]) -> Result<Vec<String>, DomainError> {
    let mut out: Vec<String> = Vec::with_capacity(inputs.len());
    for input in inputs {
        let d = normalize_domain(input.as_ref())?;
        if !out.contains(&d) {
            out.push(d);
        }
    }
    match out.len() {
        0 => Err(DomainError::NoDomains),
        n if n > MAX_DOMAINS => Err(DomainError::TooMany(n)),
        _ => Ok(out),
    }
}

/// Whether a normalized name is a wildcard.
pub fn is_wildcard(domain: &str) -> bool {
    domain.starts_with("*.")
}

/// A certificate's name: the key of everything certfleet stores about it.
///
/// It is safe as a directory name, an S3 key part, a Redis key part and a
/// routing-key suffix (`cert.issued.<name>`; its dots stay, so
/// `cert.*.#.example.com` follows a whole zone).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CertName(String);

impl CertName {
    /// Validates an explicit name (`--name`).
    ///
    /// # Errors
    /// Characters outside `a-z 0-9 . - _`, a leading or trailing dot, `..`,
    /// or more than [`MAX_CERT_NAME_LEN`] characters.
    pub fn parse(input: &str) -> Result<Self, DomainError> {
        let err = |reason: &str| DomainError::CertName {
            name: input.to_string(),
            reason: reason.to_string(),
        };
        if input.is_empty() {
            return Err(err("empty"));
        }
        if input.len() > MAX_CERT_NAME_LEN {
            return Err(err("longer than 200 characters"));
        }
        if let Some(c) = input.chars().find(|c| {
            !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'))
        }) {
            return Err(DomainError::CertName {
                name: input.to_string(),
                reason: format!("contains {c:?}; use a-z, 0-9, '.', '-' and '_'"),
            });
        }
        if input.starts_with('.') || input.ends_with('.') || input.contains("..") {
            return Err(err("empty part between dots"));
        }
        Ok(Self(input.to_string()))
    }

    /// The default name of a certificate: its first domain, with a leading
    /// wildcard written `_wildcard` (underscores never appear in hostnames,
    /// so this cannot collide with a real name).
    ///
    /// # Errors
    /// Only if the domain was not normalized.
    pub fn from_domain(first: &str) -> Result<Self, DomainError> {
        match first.strip_prefix("*.") {
            Some(rest) => Self::parse(&format!("_wildcard.{rest}")),
            None => Self::parse(first),
        }
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CertName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for CertName {
    type Error = DomainError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<CertName> for String {
    fn from(n: CertName) -> Self {
        n.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        assert_eq!(
            normalize_domain(" WWW.Example.COM. "),
            Ok("www.example.com".into())
        );
        assert_eq!(
            normalize_domain("bücher.example"),
            Ok("xn--bcher-kva.example".into())
        );
        assert_eq!(
            normalize_domain("*.example.com"),
            Ok("*.example.com".into())
        );
    }

    #[test]
    fn rejects() {
        let long_label = format!("{}.com", "a".repeat(64));
        let long_name = format!("{}com", "abcdefghi.".repeat(26));
        for bad in [
            "",
            ".",
            "a..b.com",
            "-a.com",
            "a-.com",
            "a_b.com",
            "localhost",
            "1.2.3.4",
            "[::1]",
            "::1",
            "a.*.com",
            "*",
            "*.",
            "w*.example.com",
            "example.123",
            long_label.as_str(),
            long_name.as_str(),
            "exa mple.com",
        ] {
            assert!(normalize_domain(bad).is_err(), "{bad:?} accepted");
        }
        assert!(matches!(
            normalize_domain("10.0.0.1"),
            Err(DomainError::IpLiteral(_))
        ));
    }

    #[test]
    fn lists() {
        assert_eq!(
            normalize_domains(&["b.example.com", "A.example.com", "b.example.com."]),
            Ok(vec!["b.example.com".into(), "a.example.com".into()])
        );
        assert_eq!(normalize_domains::<&str>(&[]), Err(DomainError::NoDomains));
        let many: Vec<String> = (0..101).map(|i| format!("h{i}.example.com")).collect();
        assert_eq!(normalize_domains(&many), Err(DomainError::TooMany(101)));
        let hundred: Vec<String> = (0..100).map(|i| format!("h{i}.example.com")).collect();
        assert!(normalize_domains(&hundred).is_ok());
    }

    #[test]
    fn cert_names() {
        assert_eq!(
            CertName::from_domain("*.example.com").map(|n| n.0),
            Ok("_wildcard.example.com".into())
        );
        assert!(CertName::parse("web-1.example.com").is_ok());
        for bad in [
            "", "a/b", "../x", ".a", "a.", "a..b", "A", "a b", "a*b", "a#b",
        ] {
            assert!(CertName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
