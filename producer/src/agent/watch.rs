//! `certfleet watch`: its options, their validation, and the entry point
//! that runs the `--on-change` hooks and the broker sessions (`run`) until
//! shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use certfleet_common::{Config, Store};
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::error::WatchError;
use super::files::{self, CertDir};
use super::hook::{HookEnv, Hooks};
use super::metrics::AgentMetrics;
use super::report::Reporter;
use super::sync::Syncer;
use super::{pattern, run};

/// What `certfleet watch` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchOptions {
    /// Where certificates are written (`--dir`).
    pub dir: PathBuf,
    /// This server's queue id (`--queue`): the queue is
    /// `certfleet.watch.<id>`, durable, so events sent while the server is
    /// down wait for it. `a-z 0-9 . _ -`, at most 100 characters.
    pub queue_id: String,
    /// AMQP topic patterns over `cert.<event>.<name>` (`--filter`); none
    /// means `cert.#` (everything).
    pub filters: Vec<String>,
    /// Shell command run after each change (`--on-change`).
    pub on_change: Option<String>,
    /// Variables of certfleet's environment the hook also gets
    /// (`--hook-env`), besides `PATH`, `HOME`, `LANG` and its own
    /// `CERTFLEET_CERT_*` and `CERTFLEET_EVENT`. `CERTFLEET_*` and `AWS_*`
    /// names are refused.
    pub hook_env: Vec<String>,
    /// Where to serve `/metrics` and `/healthz` (`--metrics-listen`):
    /// per name, the expiry of the certificate on disk, the last install
    /// and the hook's last result. `None`: no server.
    pub metrics_listen: Option<SocketAddr>,
}

/// `certfleet watch`.
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// Directory receiving NAME/{cert,chain,fullchain,privkey}.pem.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// This webserver's id: its durable queue is certfleet.watch.ID.
    #[arg(long = "queue", value_name = "ID")]
    pub queue_id: String,
    /// Certificate name patterns to follow (AMQP topic syntax); default all.
    #[arg(long = "filter", value_name = "PATTERN")]
    pub filters: Vec<String>,
    /// Command run after certificates changed.
    #[arg(long, value_name = "CMD")]
    pub on_change: Option<String>,
    /// Pass this variable of certfleet's environment on to the hook
    /// (repeatable). The hook gets only PATH, HOME, LANG, its CERTFLEET_CERT_*
    /// and CERTFLEET_EVENT otherwise; CERTFLEET_* and AWS_* are refused.
    #[arg(long = "hook-env", value_name = "NAME")]
    pub hook_env: Vec<String>,
    /// Serve /metrics and /healthz here (e.g. 127.0.0.1:9404): per
    /// certificate, the expiry of the file on disk, the last install and
    /// the hook's last result.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
}

/// The command line's `--dir`, `--queue`, `--filter`, `--on-change`,
/// `--hook-env` and `--metrics-listen`, as given (they are checked by
/// [`watch`]).
impl From<WatchArgs> for WatchOptions {
    fn from(args: WatchArgs) -> Self {
        WatchOptions {
            dir: args.dir,
            queue_id: args.queue_id,
            filters: args.filters,
            on_change: args.on_change,
            hook_env: args.hook_env,
            metrics_listen: args.metrics_listen,
        }
    }
}

/// Keeps `opts.dir` up to date until `shutdown`: validates the options,
/// runs hooks left pending by an earlier run, then (again after every
/// reconnect) declares the queue, catches up with storage for the names the
/// filters follow, and consumes events. Returns `Ok` once shut down.
///
/// # Errors
/// Only usage errors ([`WatchError::is_usage`]) and a state directory that
/// cannot be read: broker and storage trouble is logged and retried.
pub async fn watch(
    config: &Config,
    opts: WatchOptions,
    shutdown: CancellationToken,
) -> Result<(), WatchError> {
    pattern::check_queue_id(&opts.queue_id).map_err(|reason| WatchError::QueueId {
        id: opts.queue_id.clone(),
        reason,
    })?;
    let filters = pattern::Filters::parse(&opts.filters)
        .map_err(|(pattern, reason)| WatchError::Filter { pattern, reason })?;
    for name in &opts.hook_env {
        HookEnv::check_name(name).map_err(|reason| WatchError::HookEnv {
            name: name.clone(),
            reason,
        })?;
    }
    let path = opts.dir.clone();
    let dir = files::blocking(move || CertDir::open(&path)).await?;
    let metrics = match opts.metrics_listen {
        Some(addr) => Some(serve_metrics(addr, &shutdown).await?),
        None => None,
    };
    let store = Store::from_config(config).await;
    // Reports to the fleet: the last ones (hooks ending at shutdown) still
    // go out, so its token is cancelled after the hooks are done.
    let reports_stop = CancellationToken::new();
    let (reporter, reports_task) = Reporter::start(config, &opts.queue_id, reports_stop.clone());
    // The hook tasks get their own token, cancelled once the watcher is done.
    let hooks_stop = shutdown.child_token();
    let hooks = opts.on_change.clone().map(|cmd| {
        let env = HookEnv::from_process(&opts.hook_env);
        let hooks =
            Hooks::new(cmd, env, dir.clone(), hooks_stop.clone()).with_reporter(reporter.clone());
        match &metrics {
            Some(m) => hooks.with_metrics(m.clone()),
            None => hooks,
        }
    });
    if let Some(h) = &hooks {
        h.resume().await?;
    }
    let syncer = Syncer {
        store,
        dir,
        hooks: hooks.clone(),
        metrics,
        reporter: Some(reporter),
    };
    let result = run::Watcher::new(syncer, filters, &opts.queue_id)
        .run(config, &shutdown)
        .await;
    hooks_stop.cancel();
    if let Some(h) = hooks {
        h.wait().await;
    }
    reports_stop.cancel();
    let _ = reports_task.await;
    result
}

/// Binds `addr` and serves the agent's metrics there until `shutdown`.
async fn serve_metrics(
    addr: SocketAddr,
    shutdown: &CancellationToken,
) -> Result<Arc<AgentMetrics>, WatchError> {
    use certfleet_common::serve::{self, StatusCode};
    let bind = |source: std::io::Error| WatchError::MetricsListen { addr, source };
    let registry = prometheus::Registry::new();
    let metrics = Arc::new(
        AgentMetrics::register(&registry)
            .map_err(|e| bind(std::io::Error::other(e.to_string())))?,
    );
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(bind)?;
    tokio::spawn(serve::serve(
        listener,
        "agent-metrics",
        16,
        move |req| {
            let reply = match req.uri().path() {
                "/metrics" => serve::metrics(
                    prometheus::TextEncoder::new().encode_to_string(&registry.gather()),
                ),
                "/healthz" => serve::text(StatusCode::OK, "ok\n"),
                _ => serve::text(StatusCode::NOT_FOUND, "not found\n"),
            };
            async move { reply }
        },
        shutdown.clone(),
    ));
    Ok(metrics)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::agent::pull::pull;

    #[tokio::test]
    async fn watch_refuses_bad_options_before_connecting() {
        let env = std::collections::HashMap::<String, String>::new();
        let config = Config::load(&certfleet_common::config::Sources::new(&env)).expect("config");
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(tmp.path().join("file"), b"not a directory").expect("file");
        let opts = |queue: &str, filters: &[&str], dir: &Path| WatchOptions {
            dir: dir.to_path_buf(),
            queue_id: queue.into(),
            filters: filters.iter().map(|s| s.to_string()).collect(),
            on_change: None,
            hook_env: vec![],
            metrics_listen: None,
        };
        let with_env = |name: &str| WatchOptions {
            hook_env: vec!["TZ".into(), name.into()],
            ..opts("web1", &[], tmp.path())
        };
        let cases = [
            opts("Web 1", &[], tmp.path()),
            opts("web1", &["job.#"], tmp.path()),
            // Not a directory, and cannot be made one.
            opts("web1", &["cert.#"], &tmp.path().join("file")),
            opts("web1", &["cert.#"], &tmp.path().join("file/below")),
            with_env("AWS_SECRET_ACCESS_KEY"),
            with_env("CERTFLEET_AMQP_URL"),
            with_env("certfleet_encryption_key"),
            with_env("BAD=NAME"),
            with_env(""),
        ];
        for o in cases {
            let err = watch(&config, o, CancellationToken::new())
                .await
                .expect_err("refused");
            assert!(err.is_usage(), "{err}");
        }
        let err = pull(&config, &tmp.path().join("file/below"), &[])
            .await
            .expect_err("refused");
        assert!(err.is_usage(), "{err}");
        assert!(
            err.to_string().to_lowercase().contains("not a directory"),
            "{err}"
        );
        // A missing directory is created, parents too.
        let made = tmp.path().join("new/certs");
        let _ = files::blocking({
            let made = made.clone();
            move || CertDir::open(&made)
        })
        .await
        .expect("created");
        assert!(made.is_dir());
    }
}
