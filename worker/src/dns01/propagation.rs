//! Where a dns-01 TXT record must be written and when it is visible (after lego's
//! `challenge/dns01/nameserver.go` and `precheck.go`).
//!
//! This module owns the DNS look-ups around an update: the challenge name for a domain
//! ([`challenge_fqdn`]), CNAME delegation ([`Propagation::follow_cnames`]), the SOA walk to
//! the zone apex ([`Propagation::find_zone`]), the zone's authoritative servers
//! ([`Propagation::authoritative_servers`]), and the wait until every one of them serves the
//! value ([`Propagation::wait_for_txt`], asked directly with recursion off). Look-ups go to
//! configured recursive resolvers through the private `transport` module (UDP, TCP on truncation), never
//! through the system resolver. A resolver answering REFUSED (an authoritative-only server
//! asked about a name outside its zones) counts as "no answer", not as a failure.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::time::Instant;
use tracing::debug;

use super::provider::{DnsError, RetryKind};
use super::rfc2136::parse_fqdn;
use super::transport::{self, build_query, rcode_name};

/// The label the ACME server looks up (RFC 8555 §8.4).
pub const CHALLENGE_LABEL: &str = "_acme-challenge";

/// Most CNAME hops [`Propagation::follow_cnames`] follows.
pub const MAX_CNAME_HOPS: usize = 10;

/// `_acme-challenge.<domain>.` for an ACME identifier; a wildcard `*.example.com` is
/// validated at `_acme-challenge.example.com.` (RFC 8555 §8.4). Lower-cased, IDNA-encoded.
pub fn challenge_fqdn(domain: &str) -> Result<String, DnsError> {
    let trimmed = domain.trim().trim_end_matches('.');
    let base = trimmed.strip_prefix("*.").unwrap_or(trimmed);
    if base.is_empty() || base.contains('*') {
        return Err(DnsError::Config(format!(
            "{domain:?} is not a domain for dns-01"
        )));
    }
    let name = parse_fqdn(base, "domain")?;
    let fqdn = name
        .prepend_label(CHALLENGE_LABEL)
        .map_err(|e| DnsError::Config(format!("challenge name for {domain:?}: {e}")))?;
    Ok(fqdn.to_ascii().to_ascii_lowercase())
}

/// Nameservers listed in a resolv.conf text, on port 53 (a scoped IPv6 `%zone` is dropped).
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then_some(())?;
            let ip = words.next()?.split('%').next()?.parse::<IpAddr>().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .collect()
}

/// The system's resolvers from `/etc/resolv.conf` (read once, at configuration time).
pub fn system_resolvers() -> Result<Vec<SocketAddr>, DnsError> {
    let text = std::fs::read_to_string("/etc/resolv.conf")
        .map_err(|e| DnsError::Config(format!("cannot read /etc/resolv.conf: {e}")))?;
    Ok(parse_resolv_conf(&text))
}

/// Settings of a [`Propagation`] checker.
#[derive(Debug, Clone)]
pub struct PropagationConfig {
    /// Recursive resolvers for CNAME, SOA, NS and address look-ups, asked in order.
    pub resolvers: Vec<SocketAddr>,
    /// Port of the authoritative servers (53; tests may point elsewhere).
    pub nameserver_port: u16,
    /// Time allowed for one query, per transport.
    pub query_timeout: Duration,
    /// EDNS UDP payload size to advertise; `None` sends plain DNS (answers over 512 bytes
    /// then come back truncated and are fetched over TCP).
    pub edns_payload: Option<u16>,
}

impl PropagationConfig {
    /// Defaults: port 53, 5 s per query, EDNS 1232.
    pub fn new(resolvers: Vec<SocketAddr>) -> Self {
        Self {
            resolvers,
            nameserver_port: 53,
            query_timeout: Duration::from_secs(5),
            edns_payload: Some(1232),
        }
    }
}

/// One authoritative server of a zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthServer {
    /// Its NS name (`ns1.example.com.`).
    pub name: String,
    /// The address asked.
    pub addr: SocketAddr,
}

/// DNS look-ups for dns-01: see the module documentation.
#[derive(Debug, Clone)]
pub struct Propagation {
    config: PropagationConfig,
}

impl Propagation {
    /// A checker using `config`; at least one resolver is needed.
    pub fn new(config: PropagationConfig) -> Result<Self, DnsError> {
        if config.resolvers.is_empty() {
            return Err(DnsError::Config("no DNS resolvers configured".to_owned()));
        }
        Ok(Self { config })
    }

    /// Follow a CNAME chain starting at `fqdn` (e.g. a delegation to acme-dns) and return
    /// the name where the TXT record must be written; `fqdn` itself when it has no CNAME.
    pub async fn follow_cnames(&self, fqdn: &str) -> Result<String, DnsError> {
        let start = parse_fqdn(fqdn, "challenge name")?;
        let mut current = start.clone();
        let mut seen = vec![start.clone()];
        loop {
            let Some(msg) = self.ask_resolvers(&current, RecordType::CNAME).await? else {
                break;
            };
            let target = msg.answers.iter().find_map(|rr| match &rr.data {
                RData::CNAME(cname) if rr.name == current => Some(cname.0.clone()),
                _ => None,
            });
            let Some(target) = target else { break };
            if seen.contains(&target) {
                return Err(DnsError::Config(format!(
                    "CNAME loop from {start} at {target}"
                )));
            }
            if seen.len() > MAX_CNAME_HOPS {
                return Err(DnsError::Config(format!(
                    "CNAME chain from {start} is longer than {MAX_CNAME_HOPS} hops"
                )));
            }
            debug!(from = %current, to = %target, "following CNAME");
            seen.push(target.clone());
            current = target;
        }
        Ok(current.to_ascii())
    }

    /// The apex of the zone holding `fqdn`: ask SOA for `fqdn`, then each parent, until an
    /// answer names the zone (an SOA answer at the name, an SOA in the authority section of
    /// a negative answer, or a referral's NS owner).
    pub async fn find_zone(&self, fqdn: &str) -> Result<String, DnsError> {
        let name = parse_fqdn(fqdn, "name")?;
        let mut candidate = name.clone();
        while !candidate.is_root() {
            if let Some(msg) = self.ask_resolvers(&candidate, RecordType::SOA).await?
                && let Some(zone) = zone_from_soa_answer(&msg, &candidate)
            {
                return Ok(zone.to_ascii());
            }
            candidate = candidate.base_name();
        }
        Err(DnsError::UnknownZone(format!(
            "no SOA found for {name} or any parent"
        )))
    }

    /// The NS servers of `zone` with one address each (IPv4 when it has one, else IPv6),
    /// on the configured port. Glue from the NS answer is used when the resolvers give none.
    pub async fn authoritative_servers(&self, zone: &str) -> Result<Vec<AuthServer>, DnsError> {
        let zone = parse_fqdn(zone, "zone")?;
        let msg = self
            .ask_resolvers(&zone, RecordType::NS)
            .await?
            .ok_or_else(|| {
                DnsError::UnknownZone(format!("{zone}: no resolver answered for its NS"))
            })?;
        let mut ns_names: Vec<Name> = Vec::new();
        for rr in &msg.answers {
            if let RData::NS(ns) = &rr.data
                && rr.name == zone
                && !ns_names.contains(&ns.0)
            {
                ns_names.push(ns.0.clone());
            }
        }
        if ns_names.is_empty() {
            return Err(DnsError::UnknownZone(format!("{zone} has no NS records")));
        }
        let mut servers = Vec::new();
        for ns in &ns_names {
            match self.address_of(ns, &msg).await? {
                Some(ip) => servers.push(AuthServer {
                    name: ns.to_ascii(),
                    addr: SocketAddr::new(ip, self.config.nameserver_port),
                }),
                None => debug!(%ns, %zone, "nameserver has no address; skipped"),
            }
        }
        if servers.is_empty() {
            return Err(DnsError::Rejected(format!(
                "no nameserver of {zone} has an address: {}",
                names_list(&ns_names)
            )));
        }
        Ok(servers)
    }

    /// Wait until every authoritative server of `zone` (asked directly, recursion off)
    /// serves `value` among the TXT records at `fqdn`. Checks every `interval` until
    /// `timeout`, then fails with a retryable error naming the servers still lacking it.
    pub async fn wait_for_txt(
        &self,
        fqdn: &str,
        zone: &str,
        value: &str,
        timeout: Duration,
        interval: Duration,
    ) -> Result<(), DnsError> {
        let deadline = Instant::now() + timeout;
        let interval = interval.max(Duration::from_millis(50));
        let name = parse_fqdn(fqdn, "challenge name")?;
        let servers = tokio::time::timeout_at(deadline, self.authoritative_servers(zone))
            .await
            .map_err(|_| {
                DnsError::retryable(
                    RetryKind::Timeout,
                    format!("looking up the nameservers of {zone} took longer than {timeout:?}"),
                )
            })??;
        let mut pending: Vec<(AuthServer, String)> =
            servers.into_iter().map(|s| (s, String::new())).collect();
        loop {
            let mut still = Vec::new();
            for (server, _) in pending {
                let left = deadline.saturating_duration_since(Instant::now());
                let per_query = self
                    .config
                    .query_timeout
                    .min(left.max(Duration::from_millis(500)));
                if let Some(status) = self.txt_status(&server, &name, value, per_query).await {
                    still.push((server, status));
                }
            }
            pending = still;
            if pending.is_empty() {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                let lacking: Vec<String> = pending
                    .iter()
                    .map(|(s, status)| format!("{} ({}): {status}", s.name, s.addr))
                    .collect();
                return Err(DnsError::retryable(
                    RetryKind::NotPropagated,
                    format!(
                        "TXT value at {name} not on every nameserver of {zone} after {timeout:?}; lacking: {}",
                        lacking.join("; ")
                    ),
                ));
            }
            tokio::time::sleep_until((now + interval).min(deadline)).await;
        }
    }

    /// `None` when `server` serves `value` at `name`, else what it answered.
    async fn txt_status(
        &self,
        server: &AuthServer,
        name: &Name,
        value: &str,
        timeout: Duration,
    ) -> Option<String> {
        let query = build_query(name, RecordType::TXT, false, self.config.edns_payload);
        match transport::exchange(server.addr, &query, timeout).await {
            Ok(answer) => {
                let code = answer.message.metadata.response_code;
                if code != ResponseCode::NoError {
                    return Some(rcode_name(code));
                }
                let values = txt_values(&answer.message, name);
                if values.iter().any(|v| v == value) {
                    None
                } else {
                    Some(format!("{} other TXT value(s)", values.len()))
                }
            }
            Err(e) => Some(e.to_string()),
        }
    }

    /// Ask the resolvers in order. `Some` for the first NOERROR/NXDOMAIN answer; `None` when
    /// every resolver refused; a retryable error when none answered and some failed.
    async fn ask_resolvers(
        &self,
        name: &Name,
        rtype: RecordType,
    ) -> Result<Option<Message>, DnsError> {
        let mut failure: Option<DnsError> = None;
        for &resolver in &self.config.resolvers {
            let query = build_query(name, rtype, true, self.config.edns_payload);
            match transport::exchange(resolver, &query, self.config.query_timeout).await {
                Ok(answer) => match answer.message.metadata.response_code {
                    ResponseCode::NoError | ResponseCode::NXDomain => {
                        return Ok(Some(answer.message));
                    }
                    ResponseCode::Refused | ResponseCode::NotAuth => {
                        debug!(%resolver, %name, %rtype, "resolver refused; treated as no answer");
                    }
                    code => {
                        failure = Some(DnsError::retryable(
                            RetryKind::ServerFailure,
                            format!(
                                "resolver {resolver} answered {} for {name} {rtype}",
                                rcode_name(code)
                            ),
                        ));
                    }
                },
                Err(e) => failure = Some(e),
            }
        }
        failure.map_or(Ok(None), Err)
    }

    /// An address of `ns`: A via the resolvers, else AAAA, else glue in `ns_answer`.
    async fn address_of(&self, ns: &Name, ns_answer: &Message) -> Result<Option<IpAddr>, DnsError> {
        for rtype in [RecordType::A, RecordType::AAAA] {
            if let Some(msg) = self.ask_resolvers(ns, rtype).await?
                && let Some(ip) = msg.answers.iter().find_map(|rr| ip_of(&rr.data))
            {
                return Ok(Some(ip));
            }
        }
        Ok(ns_answer
            .additionals
            .iter()
            .filter(|rr| rr.name == *ns)
            .find_map(|rr| ip_of(&rr.data)))
    }
}

fn ip_of(data: &RData) -> Option<IpAddr> {
    match data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
        _ => None,
    }
}

fn names_list(names: &[Name]) -> String {
    names
        .iter()
        .map(Name::to_ascii)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The zone named by an answer to `SOA candidate?`, if any (see [`Propagation::find_zone`]).
/// An alias (CNAME at `candidate`) is never a zone apex.
pub(crate) fn zone_from_soa_answer(msg: &Message, candidate: &Name) -> Option<Name> {
    let is_alias = msg
        .answers
        .iter()
        .any(|rr| rr.name == *candidate && rr.record_type() == RecordType::CNAME);
    if is_alias {
        return None;
    }
    if let Some(rr) = msg
        .answers
        .iter()
        .find(|rr| rr.name == *candidate && rr.record_type() == RecordType::SOA)
    {
        return Some(rr.name.clone());
    }
    if !msg.answers.is_empty() {
        return None;
    }
    // Negative answer: the SOA of the enclosing zone; referral: the delegated zone's NS.
    // The root zone is never a dns-01 zone (a recursor's NXDOMAIN for an unknown TLD).
    for rtype in [RecordType::SOA, RecordType::NS] {
        if let Some(rr) = msg
            .authorities
            .iter()
            .find(|rr| rr.record_type() == rtype && rr.name.zone_of(candidate))
            .filter(|rr| !rr.name.is_root())
        {
            return Some(rr.name.clone());
        }
    }
    None
}

/// The TXT values at `name` in `msg`'s answers, each record's strings joined.
pub(crate) fn txt_values(msg: &Message, name: &Name) -> Vec<String> {
    msg.answers
        .iter()
        .filter(|rr| rr.name == *name)
        .filter_map(|rr| match &rr.data {
            RData::TXT(txt) => Some(
                txt.txt_data
                    .iter()
                    .map(|part| String::from_utf8_lossy(part))
                    .collect::<String>(),
            ),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests;
