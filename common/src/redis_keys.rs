//! Every Redis key certfleet uses, built in one place.
//!
//! All keys start with the configured prefix (`certfleet:` by default), so
//! several fleets, or parallel tests, can share one Redis. Redis holds only
//! coordination state and caches: leases, orders in flight, challenge
//! responses, the expiry index, dedup markers, job status. Losing it delays
//! work; S3 stays the source of truth.

use crate::domain::CertName;

/// The id of a tls-alpn-01 answer is this and the domain (http-01 tokens
/// are base64url and never contain ':'), so one list of answer ids serves
/// both challenges.
pub const TLSALPN01_ANSWER: &str = "tls-alpn-01:";

/// The answer id of a domain's tls-alpn-01 key authorization.
pub fn tlsalpn01_answer(domain: &str) -> String {
    format!("{TLSALPN01_ANSWER}{}", domain.to_ascii_lowercase())
}

/// Key builder.
#[derive(Debug, Clone)]
pub struct RedisKeys {
    prefix: String,
}

impl RedisKeys {
    /// Keys under `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A name's lease: `<worker>:<fence>`, with a TTL.
    pub fn lease(&self, name: &CertName) -> String {
        format!("{}lease:{name}", self.prefix)
    }

    /// A name's fencing counter (only grows).
    pub fn fence(&self, name: &CertName) -> String {
        format!("{}fence:{name}", self.prefix)
    }

    /// A name's order in flight (URL and sealed key), so a redelivered job
    /// resumes the order instead of opening another.
    pub fn order(&self, name: &CertName) -> String {
        format!("{}order:{name}", self.prefix)
    }

    /// The dns-01 TXT values an order of a name presented (a set of JSON
    /// placements), recorded before each is presented so a later attempt
    /// removes what an interrupted one left.
    pub fn dns01(&self, name: &CertName) -> String {
        format!("{}dns01:{name}", self.prefix)
    }

    /// An http-01 key authorization by token.
    pub fn http01(&self, token: &str) -> String {
        format!("{}http01:{token}", self.prefix)
    }

    /// A tls-alpn-01 key authorization by domain (RFC 8737: the CA names
    /// only the domain, in SNI).
    pub fn tlsalpn01(&self, domain: &str) -> String {
        format!("{}tlsalpn01:{domain}", self.prefix)
    }

    /// The key of a challenge answer by its id: an http-01 token, or
    /// [`TLSALPN01_ANSWER`] and the domain.
    pub fn answer(&self, id: &str) -> String {
        match id.strip_prefix(TLSALPN01_ANSWER) {
            Some(domain) => self.tlsalpn01(domain),
            None => self.http01(id),
        }
    }

    /// A name's rollout: hash server id → its latest report (JSON).
    pub fn rollout(&self, name: &CertName) -> String {
        format!("{}rollout:{name}", self.prefix)
    }

    /// A server's reports: hash name → its latest report (JSON).
    pub fn server(&self, id: &str) -> String {
        format!("{}server:{id}", self.prefix)
    }

    /// The servers that reported: hash id → time of the last report (Unix s).
    pub fn servers(&self) -> String {
        format!("{}servers", self.prefix)
    }

    /// The expiry index: sorted set of names scored by renewal time (Unix s).
    pub fn expiry(&self) -> String {
        format!("{}expiry", self.prefix)
    }

    /// Hash of name → challenge type, beside the expiry index, so a due-scan
    /// routes renew jobs without reading every pointer.
    pub fn expiry_meta(&self) -> String {
        format!("{}expiry:meta", self.prefix)
    }

    /// Set once the expiry index has been built from storage; its absence
    /// next to an empty index means Redis lost its data.
    pub fn expiry_built(&self) -> String {
        format!("{}expiry:built", self.prefix)
    }

    /// Hash of name → `"<notBefore> <notAfter>"` (Unix s) of its current
    /// version, beside the expiry index, for the certificate metrics.
    pub fn validity(&self) -> String {
        format!("{}expiry:validity", self.prefix)
    }

    /// Sorted set of names scored by their current version's notAfter
    /// (Unix s): counts by days left are a few `ZCOUNT`s at any fleet size.
    pub fn not_after(&self) -> String {
        format!("{}expiry:notafter", self.prefix)
    }

    /// Hash of name → Unix s when its last job failed for good; cleared
    /// when a version is stored. Read as "not ready" by the metrics.
    pub fn failed(&self) -> String {
        format!("{}failed", self.prefix)
    }

    /// A name's dedup marker: the id of its queued or running job.
    pub fn pending(&self, name: &CertName) -> String {
        format!("{}pending:{name}", self.prefix)
    }

    /// A job's status record (JSON).
    pub fn job(&self, job_id: &uuid::Uuid) -> String {
        format!("{}job:{job_id}", self.prefix)
    }

    /// Set once a job's event was confirmed by the broker.
    pub fn done(&self, job_id: &uuid::Uuid) -> String {
        format!("{}done:{job_id}", self.prefix)
    }

    /// Lock taken while creating the fleet's ACME account for a directory.
    pub fn account_lock(&self, directory_hash: &str) -> String {
        format!("{}lock:account:{directory_hash}", self.prefix)
    }

    /// Lease of the renewal scheduler (one instance acts at a time).
    pub fn scheduler(&self) -> String {
        format!("{}lock:scheduler", self.prefix)
    }

    /// A sliding-window rate counter (sorted set of timestamps).
    pub fn rate(&self, what: &str, subject: &str) -> String {
        format!("{}rate:{what}:{subject}", self.prefix)
    }

    /// When to read each certificate's ARI window again: sorted set of
    /// names scored by Unix ms.
    pub fn ari_check(&self) -> String {
        format!("{}ari-check", self.prefix)
    }

    /// The limits the workers keep: hash kind → `COUNT/WINDOW_MS`.
    pub fn rate_limits(&self) -> String {
        format!("{}rate-limits", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed() -> Result<(), crate::domain::DomainError> {
        let k = RedisKeys::new("t1:");
        let n = CertName::parse("a.example.com")?;
        assert_eq!(k.lease(&n), "t1:lease:a.example.com");
        assert_eq!(k.http01("tok"), "t1:http01:tok");
        assert_eq!(k.answer("tok"), "t1:http01:tok");
        assert_eq!(
            k.answer(&tlsalpn01_answer("a.example.com")),
            "t1:tlsalpn01:a.example.com"
        );
        assert_eq!(k.dns01(&n), "t1:dns01:a.example.com");
        assert_eq!(k.expiry(), "t1:expiry");
        assert_eq!(k.rate("orders", "acct"), "t1:rate:orders:acct");
        Ok(())
    }
}
