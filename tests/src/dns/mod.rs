//! Shared fixture of the BIND integration tests: starts the test named once per test binary
//! (tests/dns/start-bind.sh, idempotent) and builds providers and checkers pointed at it.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

pub mod fake_acmedns;
pub mod fake_cloudflare;
pub mod fake_do;
pub mod fake_http;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use certfleet_worker::dns01::{
    Propagation, PropagationConfig, Rfc2136Config, Rfc2136Provider, TsigAlg, TsigSecret,
};

/// The test BIND (authoritative only, recursion off).
pub const BIND: &str = "127.0.0.155:53";
/// Test-only key known to the test BIND (tests/dns/start-bind.sh).
pub const KEY_NAME: &str = "certfleet-test.";
pub const SECRET_B64: &str = "aUBiEJSg6zBlpb3+W14aXW70Uq5p2vVd3ADHeLJhhR4=";
pub const KEY512_NAME: &str = "certfleet-test-512.";
pub const SECRET512_B64: &str =
    "QpMAbdol7Jpn9XthfQPa8YGiLIHW969g+UaYvxXWBvBGJ59o2ogfy8UrVCMstlhc3GsAwhFnMhgapSwe29QukA==";

pub fn bind_addr() -> SocketAddr {
    BIND.parse().unwrap()
}

/// Start the test named unless it already answers.
pub fn ensure_bind() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("dns/start-bind.sh");
        let out = Command::new("bash")
            .arg(script)
            .output()
            .expect("run start-bind.sh");
        assert!(
            out.status.success(),
            "start-bind.sh failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

pub fn config_with(key_name: &str, secret_b64: &str, alg: TsigAlg) -> Rfc2136Config {
    let mut c = Rfc2136Config::new(BIND, key_name, TsigSecret::from_base64(secret_b64).unwrap());
    c.algorithm = alg;
    c.timeout = Duration::from_secs(5);
    c
}

pub fn provider() -> Rfc2136Provider {
    ensure_bind();
    Rfc2136Provider::new(config_with(KEY_NAME, SECRET_B64, TsigAlg::HmacSha256)).unwrap()
}

pub fn propagation_config() -> PropagationConfig {
    let mut c = PropagationConfig::new(vec![bind_addr()]);
    c.query_timeout = Duration::from_secs(2);
    c
}

pub fn propagation() -> Propagation {
    ensure_bind();
    Propagation::new(propagation_config()).unwrap()
}

/// The TXT values at `fqdn`, asked of the test BIND directly (plain DNS, so a large set
/// is truncated over UDP and fetched over TCP by `dig`'s default +tc behaviour).
pub fn dig_txt(fqdn: &str) -> Vec<String> {
    let out = Command::new("dig")
        .args(["+short", "+norec", "@127.0.0.155", fqdn, "TXT"])
        .output()
        .expect("dig");
    let mut values: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        // TXT data is quoted; a CNAME on the way prints its unquoted target first.
        .filter(|l| l.trim().starts_with('"'))
        .map(|l| l.trim().trim_matches('"').to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    values.sort();
    values
}

pub const WAIT: Duration = Duration::from_secs(10);
pub const INTERVAL: Duration = Duration::from_millis(200);

/// A label unique to this test process (names differ between runs against one BIND).
pub fn run_id() -> String {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        format!("r{:x}{:x}", std::process::id(), nanos & 0xfffff)
    })
    .clone()
}

/// A 43-character base64url value (the size of a real dns-01 value, which acme-dns
/// requires), made from `tag`.
pub fn value43(tag: &str) -> String {
    let mut v: String = tag
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    while v.len() < 43 {
        v.push('x');
    }
    v.truncate(43);
    v
}

/// Run nsupdate against the test BIND with the test key (`commands` without `send`).
pub fn nsupdate(commands: &str) {
    use std::io::Write as _;
    let mut child = Command::new("nsupdate")
        .args(["-y", &format!("hmac-sha256:{KEY_NAME}:{SECRET_B64}")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("nsupdate");
    let script = format!("server 127.0.0.155 53\n{commands}\nsend\n");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nsupdate failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The test BIND's RFC 2136 provider, shared by the fake APIs.
pub fn bind_provider() -> std::sync::Arc<Rfc2136Provider> {
    std::sync::Arc::new(provider())
}

/// An RFC 2136 provider on the main stack's BIND (`scripts/stack.sh`), for
/// the fake DNS APIs of the end-to-end tests: what they are asked to
/// create, Pebble then finds there.
pub fn stack_bind_provider(
    stack: &crate::Stack,
) -> anyhow::Result<std::sync::Arc<Rfc2136Provider>> {
    let secret = std::fs::read_to_string(&stack.tsig_secret_file)?;
    let mut c = Rfc2136Config::new(
        stack.bind.as_str(),
        stack.tsig_key.as_str(),
        TsigSecret::from_base64(secret.trim())?,
    );
    c.timeout = Duration::from_secs(5);
    Ok(std::sync::Arc::new(Rfc2136Provider::new(c)?))
}

/// The exec test hook (`tests/dns/nsupdate-hook.sh`).
pub fn nsupdate_hook() -> String {
    format!("{}/dns/nsupdate-hook.sh", env!("CARGO_MANIFEST_DIR"))
}
