//! `certfleet server add|list|remove`: a broker user per webserver that
//! can follow its own names' events and nothing else.
//!
//! `server add ID --names PATTERN...` creates (RabbitMQ management API,
//! `CERTFLEET_RABBITMQ_MGMT_URL`) the user `certfleet-server-ID` with a
//! random password and, on the fleet's vhost:
//! - permissions: configure and write only its own queue
//!   `certfleet.watch.ID`, read that queue and the events exchange. It
//!   cannot publish anywhere (publishing needs write on the exchange),
//!   declare or delete exchanges, or touch another queue;
//! - topic permissions on `certfleet.events`: `write` nothing, `read` (the
//!   binding keys a queue may be bound with) exactly the keys of its names:
//!   `cert.*.NAME` for a name, `cert.*.*.#.ZONE` for `*.ZONE` (every name
//!   under ZONE), `cert.#` for `*`;
//! - write on `certfleet.reports`, with a topic permission allowing only
//!   reports on its own names (`server.<kind>.<name>`, what `rollout`
//!   shows).
//!
//! It prints the credentials once (text, or `--json`: `{"id", "user",
//! "password", "amqp_url", "filters", "s3_policy"}`; with `--out FILE` the
//! JSON goes to FILE, created 0600, and stdout shows it without the
//! password), the `watch` flags to use, and an S3 policy document limiting
//! reads to those names' objects. `watch` with such a user declares only
//! its queue (the events exchange passively).

use std::path::PathBuf;

use certfleet_common::seal::recipients::NamePattern;
use certfleet_common::{Config, topology};
use clap::Subcommand;

use crate::agent::check_queue_id;
use crate::output::out;

pub(crate) mod mgmt;

use mgmt::{Mgmt, MgmtError, segment};

/// Prefix of the broker users `server add` creates.
pub(crate) const USER_PREFIX: &str = "certfleet-server-";

/// `certfleet server ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum ServerCommand {
    /// Create a broker user for a webserver, allowed to follow only the
    /// events of its names; prints its credentials once.
    Add {
        /// The server's id: its watch queue is certfleet.watch.ID.
        #[arg(value_name = "ID")]
        id: String,
        /// Names it may follow: NAME, *.ZONE (every name under ZONE) or *.
        #[arg(long, value_name = "PATTERN", required = true, num_args = 1..)]
        names: Vec<String>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Write the credentials (JSON) into FILE, created 0600, instead of
        /// printing the password.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// List the servers created with `server add`.
    List {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Delete a server's broker user and its watch queue.
    Remove {
        /// The server's id.
        #[arg(value_name = "ID")]
        id: String,
    },
}

/// Why a `server` command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Bad arguments or settings (exit 64).
    #[error("{0}")]
    Usage(String),
    /// The management API.
    #[error(transparent)]
    Mgmt(#[from] MgmtError),
    /// Writing the credentials file.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

impl ServerError {
    /// Whether this is bad usage (exit 64).
    pub fn is_usage(&self) -> bool {
        matches!(self, ServerError::Usage(_))
    }
}

/// The AMQP binding key that follows `pattern`'s names.
fn binding_key(pattern: &NamePattern) -> String {
    match pattern {
        NamePattern::All => "cert.#".into(),
        NamePattern::Under(zone) => format!("cert.*.*.#.{zone}"),
        NamePattern::Exact(name) => format!("cert.*.{name}"),
    }
}

/// The name pattern a binding key of [`binding_key`] came from.
fn pattern_of(key: &str) -> Option<String> {
    if key == "cert.#" {
        return Some("*".into());
    }
    if let Some(zone) = key.strip_prefix("cert.*.*.#.") {
        return Some(format!("*.{zone}"));
    }
    key.strip_prefix("cert.*.").map(str::to_string)
}

/// The routing keys of the reports a server may publish: its own names'.
fn report_keys(patterns: &[NamePattern]) -> String {
    let names: Vec<String> = patterns
        .iter()
        .map(|p| match p {
            NamePattern::All => "[a-z0-9._-]+".to_string(),
            NamePattern::Under(zone) => {
                format!("[a-z0-9_-][a-z0-9._-]*\\.{}", zone.replace('.', "\\."))
            }
            NamePattern::Exact(name) => name.replace('.', "\\."),
        })
        .collect();
    format!(
        "^server\\.(loaded|hook_failed|holds)\\.({})$",
        names.join("|")
    )
}

/// A regular expression (Erlang `re`) matching exactly these strings.
fn exactly(strings: &[String]) -> String {
    let escaped: Vec<String> = strings
        .iter()
        .map(|s| {
            s.chars()
                .flat_map(|c| {
                    let special = matches!(
                        c,
                        '.' | '*'
                            | '+'
                            | '?'
                            | '('
                            | ')'
                            | '['
                            | ']'
                            | '{'
                            | '}'
                            | '|'
                            | '^'
                            | '$'
                            | '\\'
                    );
                    special
                        .then_some('\\')
                        .into_iter()
                        .chain(std::iter::once(c))
                })
                .collect()
        })
        .collect();
    format!("^({})$", escaped.join("|"))
}

/// The strings a regular expression of [`exactly`] matches.
fn unexactly(re: &str) -> Vec<String> {
    let inner = re
        .strip_prefix("^(")
        .and_then(|r| r.strip_suffix(")$"))
        .unwrap_or(re);
    inner
        .split('|')
        .map(|s| s.replace('\\', ""))
        .filter(|s| !s.is_empty())
        .collect()
}

/// The management API client and the fleet's vhost.
fn connect(config: &Config) -> Result<(Mgmt, String), ServerError> {
    let amqp = config
        .amqp_url
        .nodes()
        .first()
        .ok_or_else(|| ServerError::Usage("CERTFLEET_AMQP_URL names no broker".into()))?;
    let amqp_url = amqp.url();
    let decode = percent_decode;
    let vhost = match amqp_url.path().trim_start_matches('/') {
        "" => "/".to_string(),
        v => decode(v),
    };
    let (base, user, password) = match &config.rabbitmq_mgmt_url {
        Some(m) if !m.url().username().is_empty() => (
            m.url().clone(),
            decode(m.url().username()),
            decode(m.url().password().unwrap_or("")),
        ),
        Some(m) => (
            m.url().clone(),
            decode(amqp_url.username()),
            decode(amqp_url.password().unwrap_or("")),
        ),
        None => {
            let scheme = if amqp_url.scheme() == "amqps" {
                "https"
            } else {
                "http"
            };
            let host = amqp_url.host_str().unwrap_or("127.0.0.1");
            let base = url::Url::parse(&format!("{scheme}://{host}:15672/")).map_err(|e| {
                ServerError::Usage(format!(
                    "cannot derive the management URL from CERTFLEET_AMQP_URL ({e}); set CERTFLEET_RABBITMQ_MGMT_URL"
                ))
            })?;
            (
                base,
                decode(amqp_url.username()),
                decode(amqp_url.password().unwrap_or("")),
            )
        }
    };
    let mgmt = Mgmt::new(&base, &user, &password).map_err(ServerError::Usage)?;
    Ok((mgmt, vhost))
}

/// Decodes `%XX` escapes (a URL's user or password); anything else is
/// kept as it is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs a `server` command.
///
/// # Errors
/// See [`ServerError`].
pub(crate) async fn run(config: &Config, cmd: &ServerCommand) -> Result<(), ServerError> {
    match cmd {
        ServerCommand::Add {
            id,
            names,
            json,
            out: file,
        } => add(config, id, names, *json, file.as_deref()).await,
        ServerCommand::List { json } => list(config, *json).await,
        ServerCommand::Remove { id } => remove(config, id).await,
    }
}

async fn add(
    config: &Config,
    id: &str,
    names: &[String],
    json: bool,
    file: Option<&std::path::Path>,
) -> Result<(), ServerError> {
    check_queue_id(id).map_err(|e| ServerError::Usage(format!("server id {id:?}: {e}")))?;
    let patterns: Vec<NamePattern> = names
        .iter()
        .map(|n| {
            NamePattern::parse(n).map_err(|e| ServerError::Usage(format!("--names {n:?}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let mut filters: Vec<String> = patterns.iter().map(binding_key).collect();
    filters.dedup();
    let (mgmt, vhost) = connect(config)?;
    let user = format!("{USER_PREFIX}{id}");
    let users = mgmt.get(&format!("users/{}", segment(&user))).await;
    match users {
        Ok(_) => {
            return Err(ServerError::Usage(format!(
                "server {id} exists already (broker user {user}); `certfleet server remove {id}` first"
            )));
        }
        Err(e) if e.status() == Some(404) => {}
        Err(e) => return Err(e.into()),
    }
    let password = new_password()?;
    let queue = topology::watch_queue(id);
    let own = exactly(std::slice::from_ref(&queue));
    let write = exactly(&[queue.clone(), topology::REPORTS_EXCHANGE.to_string()]);
    mgmt.put(
        &format!("users/{}", segment(&user)),
        serde_json::json!({ "password": password, "tags": "" }),
    )
    .await?;
    let grant = async {
        mgmt.put(
            &format!("permissions/{}/{}", segment(&vhost), segment(&user)),
            serde_json::json!({
                "configure": own,
                "write": write,
                "read": exactly(&[queue.clone(), topology::EVENTS_EXCHANGE.to_string()]),
            }),
        )
        .await?;
        mgmt.put(
            &format!("topic-permissions/{}/{}", segment(&vhost), segment(&user)),
            serde_json::json!({
                "exchange": topology::EVENTS_EXCHANGE,
                "write": "^$",
                "read": exactly(&filters),
            }),
        )
        .await?;
        mgmt.put(
            &format!("topic-permissions/{}/{}", segment(&vhost), segment(&user)),
            serde_json::json!({
                "exchange": topology::REPORTS_EXCHANGE,
                "write": report_keys(&patterns),
                "read": "^$",
            }),
        )
        .await
    };
    if let Err(e) = grant.await {
        // No half-made user left behind.
        let _ = mgmt.delete(&format!("users/{}", segment(&user))).await;
        return Err(e.into());
    }
    let amqp_url = config
        .amqp_url
        .nodes()
        .iter()
        .map(|n| {
            let mut u = n.url().clone();
            let _ = u.set_username(&user);
            let _ = u.set_password(Some(&password));
            u.to_string()
        })
        .collect::<Vec<_>>()
        .join(",");
    let mut record = serde_json::json!({
        "id": id,
        "user": user,
        "password": password,
        "amqp_url": amqp_url,
        "filters": filters,
        "s3_policy": s3_policy(config, &patterns),
    });
    if let Some(path) = file {
        write_private(path, &format!("{record:#}\n"))?;
        record["password"] = serde_json::Value::String("(in the file)".into());
        record["amqp_url"] = serde_json::Value::String("(in the file)".into());
        eprintln!("credentials written to {}", path.display());
    }
    if json || file.is_some() {
        out(record);
        return Ok(());
    }
    out(format_args!("id:        {id}"));
    out(format_args!("user:      {user}"));
    out(format_args!("password:  {password}"));
    out(format_args!("amqp_url:  {amqp_url}"));
    let flags: Vec<String> = filters.iter().map(|f| format!("--filter '{f}'")).collect();
    out(format_args!(
        "watch:     CERTFLEET_AMQP_URL=<amqp_url> certfleet watch --queue {id} {} --dir DIR",
        flags.join(" ")
    ));
    out(format_args!("s3 policy: {}", record["s3_policy"]));
    eprintln!("the password is shown only this once");
    Ok(())
}

/// An IAM policy document: reads of these names' objects, and listing the
/// certificates' prefix (the names, not their content).
fn s3_policy(config: &Config, patterns: &[NamePattern]) -> serde_json::Value {
    let bucket = &config.s3.bucket;
    let prefix = format!("{}certs/", config.s3.prefix);
    let objects: Vec<String> = patterns
        .iter()
        .map(|p| format!("arn:aws:s3:::{bucket}/{prefix}{p}/*"))
        .collect();
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ReadItsCertificates",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": objects,
            },
            {
                "Sid": "ListCertificateNames",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": [format!("arn:aws:s3:::{bucket}")],
                "Condition": { "StringLike": { "s3:prefix": [format!("{prefix}*")] } },
            }
        ]
    })
}

fn new_password() -> Result<String, ServerError> {
    certfleet_common::secret::random_token(24)
        .ok_or_else(|| ServerError::Usage("the system random source failed".into()))
}

fn write_private(path: &std::path::Path, text: &str) -> Result<(), ServerError> {
    crate::output::write_private(path, text).map_err(|source| ServerError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// The servers that have a watch queue on the fleet's vhost (their ids),
/// from the management API: `certfleet servers` knows a server from its
/// queue even before it reports.
///
/// # Errors
/// The management API unreachable or refusing.
pub(crate) async fn watch_queue_ids(config: &Config) -> Result<Vec<String>, ServerError> {
    let (mgmt, vhost) = connect(config)?;
    let queues = mgmt
        .get(&format!("queues/{}?columns=name", segment(&vhost)))
        .await?;
    let mut ids: Vec<String> = queues
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|q| q["name"].as_str())
        .filter_map(|n| n.strip_prefix(topology::WATCH_QUEUE_PREFIX))
        .map(str::to_string)
        .collect();
    ids.sort();
    Ok(ids)
}

async fn list(config: &Config, json: bool) -> Result<(), ServerError> {
    let (mgmt, vhost) = connect(config)?;
    let users = mgmt.get("users").await?;
    let mut rows = Vec::new();
    for u in users.as_array().into_iter().flatten() {
        let Some(user) = u["name"].as_str() else {
            continue;
        };
        let Some(id) = user.strip_prefix(USER_PREFIX) else {
            continue;
        };
        let perms = mgmt
            .get(&format!(
                "topic-permissions/{}/{}",
                segment(&vhost),
                segment(user)
            ))
            .await
            .unwrap_or_default();
        let names: Vec<String> = perms
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["exchange"] == topology::EVENTS_EXCHANGE)
            .flat_map(|p| unexactly(p["read"].as_str().unwrap_or("")))
            .filter_map(|k| pattern_of(&k))
            .collect();
        rows.push(serde_json::json!({ "id": id, "user": user, "names": names }));
    }
    if json {
        out(serde_json::Value::Array(rows));
        return Ok(());
    }
    if rows.is_empty() {
        out("no servers (certfleet server add ID --names PATTERN...)");
    }
    for r in &rows {
        let names: Vec<&str> = r["names"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str())
            .collect();
        out(format_args!(
            "{}  {}",
            r["id"].as_str().unwrap_or(""),
            if names.is_empty() {
                "(no names on this vhost)".to_string()
            } else {
                names.join(" ")
            }
        ));
    }
    Ok(())
}

async fn remove(config: &Config, id: &str) -> Result<(), ServerError> {
    check_queue_id(id).map_err(|e| ServerError::Usage(format!("server id {id:?}: {e}")))?;
    let (mgmt, vhost) = connect(config)?;
    let user = format!("{USER_PREFIX}{id}");
    if !mgmt.delete(&format!("users/{}", segment(&user))).await? {
        return Err(ServerError::Usage(format!(
            "no server {id} (no broker user {user} at {})",
            mgmt.base()
        )));
    }
    let queue = topology::watch_queue(id);
    let dropped = mgmt
        .delete(&format!("queues/{}/{}", segment(&vhost), segment(&queue)))
        .await?;
    out(format_args!(
        "server {id} removed: broker user {user}{}",
        if dropped {
            format!(", queue {queue}")
        } else {
            String::new()
        }
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_keys_round_trip_through_the_permission_regex() -> Result<(), String> {
        let patterns: Vec<NamePattern> = ["www.example.com", "*.shop.example.com", "*"]
            .iter()
            .map(|p| NamePattern::parse(p))
            .collect::<Result<_, _>>()?;
        let keys: Vec<String> = patterns.iter().map(binding_key).collect();
        assert_eq!(
            keys,
            [
                "cert.*.www.example.com",
                "cert.*.*.#.shop.example.com",
                "cert.#"
            ]
        );
        let re = exactly(&keys);
        assert_eq!(
            re,
            r"^(cert\.\*\.www\.example\.com|cert\.\*\.\*\.#\.shop\.example\.com|cert\.#)$"
        );
        let back: Vec<String> = unexactly(&re)
            .iter()
            .filter_map(|k| pattern_of(k))
            .collect();
        assert_eq!(back, ["www.example.com", "*.shop.example.com", "*"]);
        Ok(())
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("cf-a%2Fb"), "cf-a/b");
        assert_eq!(percent_decode("p%40ss+x%"), "p@ss+x%");
    }
}
