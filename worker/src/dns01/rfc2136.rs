//! RFC 2136 dynamic update provider, signed with TSIG (RFC 8945).
//!
//! This module owns the update messages and their authentication: `present` sends an UPDATE
//! adding one TXT RR (RFC 2136 §2.5.1), `cleanup` one deleting exactly that RR from its RRset
//! (§2.5.4, class NONE, TTL 0), so other values at the same name survive. Requests are signed
//! with hickory's [`TSigner`]; answers with NOERROR must carry a valid TSIG signature. Answer
//! codes map to [`DnsError`]: NOTAUTH/REFUSED/BADSIG/BADKEY/BADTIME refuse, NOTZONE is an
//! unknown zone, SERVFAIL is retryable. The zone is the caller's (see `propagation::find_zone`).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hickory_proto::op::{Message, OpCode, Query, ResponseCode, UpdateMessage as _};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::rdata::tsig::{TsigAlgorithm, TsigError};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigner};
use tracing::{debug, info};

use super::provider::{Dns01Provider, DnsError, DnsFuture, RetryKind};
use super::transport::{self, rcode_name};

/// A TSIG shared secret. Its `Debug` prints `***`; it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct TsigSecret(Vec<u8>);

impl TsigSecret {
    /// Decode the base64 form used by BIND's `key` statements and `tsig-keygen`.
    /// The error never quotes the input.
    pub fn from_base64(encoded: &str) -> Result<Self, DnsError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| DnsError::Config("TSIG secret is not valid base64".to_owned()))?;
        if bytes.is_empty() {
            return Err(DnsError::Config("TSIG secret is empty".to_owned()));
        }
        Ok(Self(bytes))
    }

    /// Use raw key bytes.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
}

impl fmt::Debug for TsigSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TsigSecret(***)")
    }
}

/// TSIG MAC algorithms hickory 0.26's `TSigner` implements (hmac-sha1 and hmac-md5 are not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TsigAlg {
    /// `hmac-sha256` (the usual choice, `tsig-keygen`'s default).
    #[default]
    HmacSha256,
    /// `hmac-sha384`.
    HmacSha384,
    /// `hmac-sha512`.
    HmacSha512,
}

impl TsigAlg {
    fn to_hickory(self) -> TsigAlgorithm {
        match self {
            Self::HmacSha256 => TsigAlgorithm::HmacSha256,
            Self::HmacSha384 => TsigAlgorithm::HmacSha384,
            Self::HmacSha512 => TsigAlgorithm::HmacSha512,
        }
    }
}

impl FromStr for TsigAlg {
    type Err = DnsError;

    /// Parse `hmac-sha256` etc. (case-insensitive, trailing dot allowed).
    fn from_str(s: &str) -> Result<Self, DnsError> {
        match s.trim().trim_end_matches('.').to_ascii_lowercase().as_str() {
            "hmac-sha256" => Ok(Self::HmacSha256),
            "hmac-sha384" => Ok(Self::HmacSha384),
            "hmac-sha512" => Ok(Self::HmacSha512),
            other => Err(DnsError::Config(format!(
                "unsupported TSIG algorithm {other:?} (supported: hmac-sha256, hmac-sha384, hmac-sha512)"
            ))),
        }
    }
}

/// Settings of an [`Rfc2136Provider`].
#[derive(Debug, Clone)]
pub struct Rfc2136Config {
    /// Primary server taking updates: `"192.0.2.1"`, `"192.0.2.1:5353"`, `"[2001:db8::1]:53"`
    /// or `"ns1.example.com:53"` (a host name is resolved by the system at each update).
    /// Port 53 when none is given.
    pub nameserver: String,
    /// TSIG key name as the server knows it (`"certfleet."`).
    pub key_name: String,
    /// TSIG shared secret.
    pub secret: TsigSecret,
    /// TSIG algorithm.
    pub algorithm: TsigAlg,
    /// TTL of the TXT records added (seconds).
    pub ttl: u32,
    /// Time allowed for one request, per transport (UDP, then TCP).
    pub timeout: Duration,
    /// TSIG fudge: allowed clock difference with the server (seconds).
    pub fudge: u16,
    /// Propagation wait this backend wants, if not the caller's default.
    pub propagation_timeout: Option<Duration>,
}

impl Rfc2136Config {
    /// Defaults: hmac-sha256, TTL 60, 10 s per request, fudge 300.
    pub fn new(
        nameserver: impl Into<String>,
        key_name: impl Into<String>,
        secret: TsigSecret,
    ) -> Self {
        Self {
            nameserver: nameserver.into(),
            key_name: key_name.into(),
            secret,
            algorithm: TsigAlg::default(),
            ttl: 60,
            timeout: Duration::from_secs(10),
            fudge: 300,
            propagation_timeout: None,
        }
    }
}

/// Where updates go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Nameserver {
    Addr(SocketAddr),
    Host(String, u16),
}

impl Nameserver {
    fn parse(s: &str) -> Result<Self, DnsError> {
        let s = s.trim();
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Self::Addr(addr));
        }
        if let Ok(ip) = s
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return Ok(Self::Addr(SocketAddr::new(ip, 53)));
        }
        let (host, port) = match s.rsplit_once(':') {
            Some((host, port)) => {
                let port = port.parse::<u16>().map_err(|_| {
                    DnsError::Config(format!("nameserver {s:?}: bad port {port:?}"))
                })?;
                (host, port)
            }
            None => (s, 53),
        };
        if host.is_empty() || host.contains(':') {
            return Err(DnsError::Config(format!(
                "nameserver {s:?} is not host[:port]"
            )));
        }
        Ok(Self::Host(host.to_owned(), port))
    }

    async fn resolve(&self) -> Result<SocketAddr, DnsError> {
        match self {
            Self::Addr(addr) => Ok(*addr),
            Self::Host(host, port) => tokio::net::lookup_host((host.as_str(), *port))
                .await
                .map_err(|e| {
                    DnsError::retryable(
                        RetryKind::Network,
                        format!("cannot resolve nameserver {host}: {e}"),
                    )
                })?
                .next()
                .ok_or_else(|| DnsError::Config(format!("nameserver {host} has no address"))),
        }
    }
}

/// Which change an UPDATE makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// Add one TXT RR (RFC 2136 §2.5.1).
    Add,
    /// Delete one TXT RR from its RRset (RFC 2136 §2.5.4).
    Delete,
}

/// RFC 2136 + TSIG dns-01 provider.
pub struct Rfc2136Provider {
    nameserver: Nameserver,
    signer: TSigner,
    ttl: u32,
    timeout: Duration,
    propagation_timeout: Option<Duration>,
}

impl fmt::Debug for Rfc2136Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rfc2136Provider")
            .field("nameserver", &self.nameserver)
            .field("key_name", &self.signer.signer_name().to_ascii())
            .field("algorithm", &self.signer.algorithm().to_string())
            .field("secret", &"***")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Rfc2136Provider {
    /// Check the configuration and build the signer.
    pub fn new(config: Rfc2136Config) -> Result<Self, DnsError> {
        let nameserver = Nameserver::parse(&config.nameserver)?;
        let key_name = parse_fqdn(&config.key_name, "TSIG key name")?;
        let signer = TSigner::new(
            config.secret.0.clone(),
            config.algorithm.to_hickory(),
            key_name,
            config.fudge,
        )
        .map_err(|e| DnsError::Config(format!("TSIG signer: {e}")))?;
        Ok(Self {
            nameserver,
            signer,
            ttl: config.ttl,
            timeout: config.timeout,
            propagation_timeout: config.propagation_timeout,
        })
    }

    async fn update(&self, op: Op, fqdn: &str, zone: &str, value: &str) -> Result<(), DnsError> {
        let fqdn = parse_fqdn(fqdn, "challenge name")?;
        let zone = parse_fqdn(zone, "zone")?;
        let mut request = build_update(op, &fqdn, &zone, value, self.ttl)?;
        let server = self.nameserver.resolve().await?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| DnsError::Config("system clock is before 1970".to_owned()))?
            .as_secs();
        let mut verifier = request
            .finalize(&self.signer, now)
            .map_err(|e| DnsError::Config(format!("cannot sign the update: {e}")))?
            .ok_or_else(|| DnsError::Config("TSIG signer gave no verifier".to_owned()))?;
        let bytes = request
            .to_vec()
            .map_err(|e| DnsError::Config(format!("cannot encode the update: {e}")))?;
        debug!(%server, %fqdn, %zone, ?op, "sending RFC 2136 update");
        let answer = transport::exchange_bytes(server, &request, &bytes, self.timeout).await?;
        classify_answer(server, &fqdn, &zone, &answer.message)?;
        verifier.verify(&answer.bytes).map_err(|e| {
            DnsError::retryable(
                RetryKind::BadResponse,
                format!("nameserver {server}: answer to the update for {fqdn} failed TSIG verification: {e}"),
            )
        })?;
        info!(%server, %fqdn, %zone, ?op, tcp = answer.via_tcp, "RFC 2136 update applied");
        Ok(())
    }
}

impl Dns01Provider for Rfc2136Provider {
    fn name(&self) -> &'static str {
        "rfc2136"
    }

    fn present<'a>(&'a self, fqdn: &'a str, zone: &'a str, value: &'a str) -> DnsFuture<'a, ()> {
        Box::pin(self.update(Op::Add, fqdn, zone, value))
    }

    fn cleanup<'a>(&'a self, fqdn: &'a str, zone: &'a str, value: &'a str) -> DnsFuture<'a, ()> {
        Box::pin(self.update(Op::Delete, fqdn, zone, value))
    }

    fn propagation_timeout(&self) -> Option<Duration> {
        self.propagation_timeout
    }
}

/// Parse an absolute DNS name (a missing final dot is added).
pub(crate) fn parse_fqdn(s: &str, what: &str) -> Result<Name, DnsError> {
    let mut name = Name::from_str_relaxed(s.trim())
        .map_err(|e| DnsError::Config(format!("{what} {s:?} is not a DNS name: {e}")))?;
    name.set_fqdn(true);
    Ok(name)
}

/// TXT RDATA for `value`, split into 255-byte character-strings when longer.
pub(crate) fn txt_rdata(value: &str) -> TXT {
    TXT::from_bytes(value.as_bytes().chunks(255).collect())
}

/// The UPDATE message (unsigned) for `op` of TXT `value` at `fqdn` in `zone`.
pub(crate) fn build_update(
    op: Op,
    fqdn: &Name,
    zone: &Name,
    value: &str,
    ttl: u32,
) -> Result<Message, DnsError> {
    if !zone.zone_of(fqdn) {
        return Err(DnsError::Config(format!(
            "{fqdn} is not inside zone {zone}"
        )));
    }
    if value.is_empty() {
        return Err(DnsError::Config("empty TXT value".to_owned()));
    }
    let mut message = Message::query();
    message.metadata.op_code = OpCode::Update;
    message.metadata.recursion_desired = false;
    let mut zone_section = Query::query(zone.clone(), RecordType::SOA);
    zone_section.set_query_class(DNSClass::IN);
    message.add_zone(zone_section);
    let mut record = Record::from_rdata(fqdn.clone(), ttl, RData::TXT(txt_rdata(value)));
    match op {
        Op::Add => record.dns_class = DNSClass::IN,
        Op::Delete => {
            record.dns_class = DNSClass::NONE;
            record.ttl = 0;
        }
    }
    message.add_update(record);
    Ok(message)
}

/// Map the server's answer code (and TSIG error, if any) to success or a [`DnsError`].
pub(crate) fn classify_answer(
    server: SocketAddr,
    fqdn: &Name,
    zone: &Name,
    answer: &Message,
) -> Result<(), DnsError> {
    let rcode = answer.metadata.response_code;
    let tsig_error = answer.signature().and_then(|sig| sig.data.error);
    if rcode == ResponseCode::NoError && tsig_error.is_none() {
        if answer.signature().is_none() {
            return Err(DnsError::retryable(
                RetryKind::BadResponse,
                format!("nameserver {server}: answer to the update for {fqdn} is not TSIG-signed"),
            ));
        }
        return Ok(());
    }
    let tsig_text = match tsig_error {
        None => String::new(),
        Some(TsigError::BadSig) => " (TSIG BADSIG)".to_owned(),
        Some(TsigError::BadKey) => " (TSIG BADKEY)".to_owned(),
        Some(TsigError::BadTime) => " (TSIG BADTIME)".to_owned(),
        Some(TsigError::BadTrunc) => " (TSIG BADTRUNC)".to_owned(),
        Some(TsigError::Unknown(code)) => format!(" (TSIG error {code})"),
    };
    let code = rcode_name(rcode);
    if tsig_error.is_none() && rcode == ResponseCode::NotAuth {
        // Without a TSIG error, NOTAUTH is RFC 2136's "not authoritative for the zone".
        return Err(DnsError::Refused(format!(
            "nameserver {server} refused the update for {fqdn}: {code} (not authoritative for zone {zone})"
        )));
    }
    if tsig_error.is_some() || rcode == ResponseCode::Refused {
        return Err(DnsError::Refused(format!(
            "nameserver {server} refused the update for {fqdn}: {code}{tsig_text}"
        )));
    }
    match rcode {
        ResponseCode::NotZone => Err(DnsError::UnknownZone(format!(
            "{fqdn}: nameserver {server} answered NOTZONE for zone {zone}"
        ))),
        ResponseCode::ServFail => Err(DnsError::retryable(
            RetryKind::ServerFailure,
            format!("nameserver {server} failed the update for {fqdn}: SERVFAIL"),
        )),
        _ => Err(DnsError::Rejected(format!(
            "nameserver {server} rejected the update for {fqdn}: {code}"
        ))),
    }
}

#[cfg(test)]
mod tests;
