//! One DNS request/response exchange with one server: UDP first, TCP when the UDP answer is
//! truncated (TC) or UDP fails or times out.
//!
//! This module owns the sockets. It sends already-encoded (and, for updates, already
//! TSIG-signed) messages, screens answers (source, id, QR bit, question section) so a stray
//! or spoofed datagram is ignored rather than believed, and turns socket failures into
//! retryable [`DnsError`]s naming the server. It never panics on what the network sends.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tracing::debug;

use super::provider::{DnsError, RetryKind};

/// Largest UDP answer we accept (the biggest datagram there is).
const MAX_UDP: usize = 65_535;

/// An answer and the bytes it was decoded from (TSIG verification needs the bytes).
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) message: Message,
    pub(crate) bytes: Vec<u8>,
    /// Whether the answer came over TCP (after truncation or a UDP failure).
    pub(crate) via_tcp: bool,
}

/// A standard query for `name`/`rtype`. `recursion_desired` is on for recursive resolvers
/// and off for authoritative checks; `edns_payload` advertises a UDP size (None: plain
/// 512-byte DNS, so large answers come back truncated and are fetched over TCP).
pub(crate) fn build_query(
    name: &Name,
    rtype: RecordType,
    recursion_desired: bool,
    edns_payload: Option<u16>,
) -> Message {
    let mut message = Message::query();
    message.metadata.recursion_desired = recursion_desired;
    message.add_query(Query::query(name.clone(), rtype));
    if let Some(payload) = edns_payload {
        let mut edns = Edns::new();
        edns.set_max_payload(payload.max(512)).set_version(0);
        message.set_edns(edns);
    }
    message
}

/// Encode and send `request` to `server` (see [`exchange_bytes`]).
pub(crate) async fn exchange(
    server: SocketAddr,
    request: &Message,
    timeout: Duration,
) -> Result<Answer, DnsError> {
    let bytes = request
        .to_vec()
        .map_err(|e| DnsError::Config(format!("cannot encode DNS message: {e}")))?;
    exchange_bytes(server, request, &bytes, timeout).await
}

/// Send the encoded `bytes` of `request` to `server`; UDP first, then TCP when the answer is
/// truncated or UDP fails. Each transport gets `timeout`.
pub(crate) async fn exchange_bytes(
    server: SocketAddr,
    request: &Message,
    bytes: &[u8],
    timeout: Duration,
) -> Result<Answer, DnsError> {
    let udp_problem =
        match tokio::time::timeout(timeout, udp_exchange(server, request, bytes)).await {
            Ok(Ok(answer)) if !answer.message.metadata.truncation => return Ok(answer),
            Ok(Ok(_)) => {
                debug!(%server, "UDP answer truncated; retrying over TCP");
                "answer truncated".to_owned()
            }
            Ok(Err(e)) => {
                debug!(%server, error = %e, "UDP exchange failed; retrying over TCP");
                e.to_string()
            }
            Err(_) => {
                debug!(%server, ?timeout, "UDP exchange timed out; retrying over TCP");
                format!("no answer within {timeout:?}")
            }
        };
    match tokio::time::timeout(timeout, tcp_exchange(server, request, bytes)).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(ExchangeError::Io(e))) => Err(DnsError::retryable(
            RetryKind::Network,
            format!("DNS server {server} unreachable: UDP: {udp_problem}; TCP: {e}"),
        )),
        Ok(Err(ExchangeError::Bad(why))) => Err(DnsError::retryable(
            RetryKind::BadResponse,
            format!("DNS server {server} sent an unusable answer over TCP: {why}"),
        )),
        Err(_) => Err(DnsError::retryable(
            RetryKind::Timeout,
            format!(
                "DNS server {server}: no answer within {timeout:?} over TCP (UDP: {udp_problem})"
            ),
        )),
    }
}

/// Failures inside one transport attempt.
#[derive(Debug)]
enum ExchangeError {
    Io(io::Error),
    Bad(String),
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "{e}"),
            Self::Bad(why) => f.write_str(why),
        }
    }
}

impl From<io::Error> for ExchangeError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

async fn udp_exchange(
    server: SocketAddr,
    request: &Message,
    bytes: &[u8],
) -> Result<Answer, ExchangeError> {
    let local: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    // A connected socket only receives datagrams from `server` (and reports ICMP errors).
    socket.connect(server).await?;
    socket.send(bytes).await?;
    let mut buf = vec![0u8; MAX_UDP];
    loop {
        let len = socket.recv(&mut buf).await?;
        let datagram = buf.get(..len).unwrap_or_default();
        match screen(request, datagram) {
            Ok(message) => {
                return Ok(Answer {
                    message,
                    bytes: datagram.to_vec(),
                    via_tcp: false,
                });
            }
            // Keep waiting: the real answer may still come (spoofing or a late datagram).
            Err(why) => debug!(%server, %why, "ignoring UDP datagram"),
        }
    }
}

async fn tcp_exchange(
    server: SocketAddr,
    request: &Message,
    bytes: &[u8],
) -> Result<Answer, ExchangeError> {
    let len = u16::try_from(bytes.len())
        .map_err(|_| ExchangeError::Bad("request longer than 65535 bytes".to_owned()))?;
    let mut stream = TcpStream::connect(server).await?;
    let mut framed = Vec::with_capacity(bytes.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await?;
    let mut len_buf = [0u8; 2];
    stream.read_exact(&mut len_buf).await?;
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len_buf))];
    stream.read_exact(&mut answer).await?;
    let message = screen(request, &answer).map_err(ExchangeError::Bad)?;
    Ok(Answer {
        message,
        bytes: answer,
        via_tcp: true,
    })
}

/// Decode `raw` and check it answers `request`: same id, QR set, and (when the server echoed
/// one) the same question section.
fn screen(request: &Message, raw: &[u8]) -> Result<Message, String> {
    let id = raw
        .first_chunk::<2>()
        .map(|b| u16::from_be_bytes(*b))
        .ok_or_else(|| format!("short message ({} bytes)", raw.len()))?;
    if id != request.metadata.id {
        return Err(format!(
            "id {id} does not match request id {}",
            request.metadata.id
        ));
    }
    let message = Message::from_vec(raw).map_err(|e| format!("malformed answer: {e}"))?;
    if message.metadata.message_type != MessageType::Response {
        return Err("QR bit not set".to_owned());
    }
    // Error answers (FORMERR, NOTAUTH with BADKEY, …) may carry no question section.
    if !message.queries.is_empty() && !same_questions(&request.queries, &message.queries) {
        return Err("question section does not match the request".to_owned());
    }
    Ok(message)
}

fn same_questions(asked: &[Query], echoed: &[Query]) -> bool {
    asked.len() == echoed.len() && echoed.iter().all(|q| asked.contains(q))
}

/// The RFC mnemonic of a response code ("NOERROR", "NOTAUTH", …) for messages and logs.
pub(crate) fn rcode_name(code: ResponseCode) -> String {
    let name = match code {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::YXDomain => "YXDOMAIN",
        ResponseCode::YXRRSet => "YXRRSET",
        ResponseCode::NXRRSet => "NXRRSET",
        ResponseCode::NotAuth => "NOTAUTH",
        ResponseCode::NotZone => "NOTZONE",
        other => return format!("RCODE {}", u16::from(other)),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::TXT;
    use hickory_proto::rr::{RData, Record};
    use tokio::net::TcpListener;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    /// A TXT answer to `req` with `n` values of 60 bytes (too big for 512 bytes when n ≥ 9).
    fn big_answer(req: &Message, n: usize) -> Message {
        let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
        resp.add_queries(req.queries.clone());
        for i in 0..n {
            let value = format!("{i:02}{}", "x".repeat(58));
            resp.add_answer(Record::from_rdata(
                name("t.example."),
                60,
                RData::TXT(TXT::new(vec![value])),
            ));
        }
        resp
    }

    #[test]
    fn query_flags_and_edns() {
        let q = build_query(&name("a.example."), RecordType::SOA, false, Some(1232));
        assert!(!q.metadata.recursion_desired);
        assert_eq!(q.queries.len(), 1);
        assert_eq!(q.edns.as_ref().map(Edns::max_payload), Some(1232));
        let q = build_query(&name("a.example."), RecordType::TXT, true, None);
        assert!(q.metadata.recursion_desired);
        assert!(q.edns.is_none());
    }

    #[test]
    fn screening() {
        let req = build_query(&name("t.example."), RecordType::TXT, false, None);
        let good = big_answer(&req, 1).to_vec().unwrap();
        assert!(screen(&req, &good).is_ok());
        assert!(screen(&req, &good[..1]).is_err());
        let mut other = big_answer(&req, 1);
        other.metadata.id = req.metadata.id.wrapping_add(1);
        assert!(screen(&req, &other.to_vec().unwrap()).is_err());
        let mut wrong_q = big_answer(&req, 1);
        wrong_q.queries = vec![Query::query(name("u.example."), RecordType::TXT)];
        assert!(screen(&req, &wrong_q.to_vec().unwrap()).is_err());
        // A truncated garbage tail must be an error, not a panic.
        assert!(screen(&req, &good[..good.len() - 3]).is_err());
    }

    /// UDP answers with TC set and no records; TCP on the same port has the full answer.
    #[tokio::test]
    async fn truncated_udp_falls_back_to_tcp() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let udp = UdpSocket::bind(addr).await.unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let (n, peer) = udp.recv_from(&mut buf).await.unwrap();
            let req = Message::from_vec(&buf[..n]).unwrap();
            let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
            resp.add_queries(req.queries.clone());
            resp.metadata.truncation = true;
            udp.send_to(&resp.to_vec().unwrap(), peer).await.unwrap();
        });
        tokio::spawn(async move {
            let (mut s, _) = tcp.accept().await.unwrap();
            let mut len = [0u8; 2];
            s.read_exact(&mut len).await.unwrap();
            let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
            s.read_exact(&mut buf).await.unwrap();
            let req = Message::from_vec(&buf).unwrap();
            let resp = big_answer(&req, 20).to_vec().unwrap();
            let mut out = (resp.len() as u16).to_be_bytes().to_vec();
            out.extend_from_slice(&resp);
            s.write_all(&out).await.unwrap();
        });
        let req = build_query(&name("t.example."), RecordType::TXT, false, None);
        let answer = exchange(addr, &req, Duration::from_secs(5)).await.unwrap();
        assert!(answer.via_tcp);
        assert_eq!(answer.message.answers.len(), 20);
    }

    /// Nothing listens: UDP gets ICMP-refused, TCP is refused: a retryable network error.
    #[tokio::test]
    async fn unreachable_server_is_retryable() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        drop(tcp);
        let req = build_query(&name("t.example."), RecordType::TXT, false, None);
        let err = exchange(addr, &req, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }

    /// A UDP server that never answers and no TCP: a retryable error within ~2×timeout.
    #[tokio::test]
    async fn silent_server_times_out() {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        let req = build_query(&name("t.example."), RecordType::TXT, false, None);
        let err = exchange(addr, &req, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
        drop(udp);
    }
}
