//! Reports to the fleet: which version this server loaded and how its hook
//! went ([`certfleet_common::report`]). A task with a broker connection of
//! its own publishes them, with confirms, to `certfleet.reports`;
//! while the broker is away they wait (the newest per name) and go out
//! after the reconnect: at least once, and recording them is idempotent.

use std::collections::BTreeMap;

use certfleet_common::amqp::{self, Outgoing, Publisher, RECONNECT};
use certfleet_common::report::{HookState, REPORT_SCHEMA, Report, ReportKind};
use certfleet_common::{CertName, Config, topology};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long the reports still waiting may take to go out at shutdown.
const FLUSH_AT_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(3);

/// Sends reports of one server (cheap to clone).
#[derive(Debug, Clone)]
pub(crate) struct Reporter {
    server: String,
    tx: mpsc::UnboundedSender<Report>,
}

impl Reporter {
    /// Starts the publishing task for `server`; it ends on `shutdown`
    /// (after trying to send what waits).
    pub(crate) fn start(
        config: &Config,
        server: &str,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(publish_all(
            config.clone(),
            server.to_string(),
            rx,
            shutdown,
        ));
        (
            Self {
                server: server.to_string(),
                tx,
            },
            task,
        )
    }

    /// Reports `kind` for a version of `name`.
    pub(crate) fn send(
        &self,
        kind: ReportKind,
        name: &CertName,
        version: &str,
        serial: &str,
        hook: HookState,
    ) {
        let report = Report {
            schema: REPORT_SCHEMA.into(),
            kind,
            server: self.server.clone(),
            name: name.clone(),
            version: version.to_string(),
            serial: certfleet_common::serial_display(serial),
            hook,
            at: OffsetDateTime::now_utc(),
        };
        // The task is gone only at shutdown.
        let _ = self.tx.send(report);
    }
}

async fn publish_all(
    config: Config,
    server: String,
    mut rx: mpsc::UnboundedReceiver<Report>,
    shutdown: CancellationToken,
) {
    // Waiting, the newest per name.
    let mut waiting: BTreeMap<CertName, Report> = BTreeMap::new();
    let name = amqp::connection_name(&format!("certfleet-watch-{server}-reports"));
    let mut closed = false;
    while !closed {
        let open = || async {
            let conn = amqp::connect(&config.amqp_url, &name).await?;
            topology::ensure_exchange(&conn, topology::REPORTS_EXCHANGE).await?;
            let publisher = Publisher::new(&conn).await?;
            Ok::<_, amqp::BrokerError>((conn, publisher))
        };
        let Some((conn, publisher)) = RECONNECT.session(&shutdown, "reports", open).await else {
            // Stopped before a connection (a short `pull`): one last try,
            // bounded, for what waits.
            while let Ok(r) = rx.try_recv() {
                waiting.insert(r.name.clone(), r);
            }
            if !waiting.is_empty() {
                let last = async {
                    let (conn, publisher) = open().await?;
                    for r in waiting.values() {
                        publish(&publisher, r).await?;
                    }
                    amqp::close(&conn, 200, "bye").await;
                    Ok::<_, amqp::BrokerError>(())
                };
                match tokio::time::timeout(FLUSH_AT_SHUTDOWN, last).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, reports = waiting.len(), "reports not sent")
                    }
                    Err(_) => tracing::warn!(reports = waiting.len(), "reports not sent in time"),
                }
            }
            break;
        };
        'session: loop {
            while let Some((_, r)) = waiting.pop_first() {
                if let Err(e) = publish(&publisher, &r).await {
                    tracing::warn!(error = %e, cert_name = %r.name, "cannot send a report; it waits for the broker");
                    waiting.entry(r.name.clone()).or_insert(r);
                    break 'session;
                }
            }
            tokio::select! {
                r = rx.recv() => match r {
                    Some(r) => { waiting.insert(r.name.clone(), r); }
                    None => { closed = true; break 'session; }
                },
                () = shutdown.cancelled() => {
                    while let Ok(r) = rx.try_recv() {
                        waiting.insert(r.name.clone(), r);
                    }
                    let flush = async {
                        for r in waiting.values() {
                            if publish(&publisher, r).await.is_err() {
                                break;
                            }
                        }
                    };
                    let _ = tokio::time::timeout(FLUSH_AT_SHUTDOWN, flush).await;
                    closed = true;
                    break 'session;
                }
            }
        }
        amqp::close(&conn, 200, "bye").await;
    }
}

async fn publish(publisher: &Publisher, r: &Report) -> Result<(), amqp::BrokerError> {
    let body = serde_json::to_vec(r).unwrap_or_default();
    let key = r.routing_key();
    publisher
        .publish(Outgoing::json(
            topology::REPORTS_EXCHANGE,
            &key,
            &body,
            None,
        ))
        .await
}
