//! The ceiling: instant-acme alone against the same Pebble — no queue, no
//! Redis, no S3, no events — with the worker's concurrency, key type and
//! polling policy, so the report can say what fraction of the CA's own
//! capacity certfleet reaches end to end.
//!
//! C tasks each take the next name and run one order: new order,
//! authorizations (http-01 key authorization into an in-memory map served
//! by a minimal responder on the bench address, port 5002), `set_ready`,
//! `poll_ready`, ECDSA P-256 key and CSR (rcgen), finalize,
//! `poll_certificate`. The HTTP client is the worker's: hyper + rustls
//! (aws-lc-rs), HTTP/1.1 and HTTP/2, web roots plus Pebble's CA.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use rcgen::{CertificateParams, DistinguishedName, KeyPair};
use tokio_util::sync::CancellationToken;

use crate::pool::{self, Attempt};
use crate::procfs::{self, CpuMeter};
use crate::results::{Throughput, Tool};
use crate::stack::{Ca, Stack};
use crate::stall::{self, Probe};
use crate::stats;
use certfleet_tests::http::Http;

/// The worker's order polling policy, copied from `POLL` in
/// `worker/src/acme/order.rs` (crate-private there): 100 ms, × 1.5, up to
/// 120 s.
pub const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(100))
    .backoff(1.5)
    .timeout(Duration::from_secs(120));

/// What to run (the command line of `bench-step ceiling`).
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// The private CA.
    #[command(flatten)]
    pub ca: Ca,
    /// Orders in flight.
    #[arg(long, default_value_t = 64)]
    pub concurrency: u32,
    /// Certificates.
    #[arg(long, default_value_t = 200)]
    pub n: usize,
    /// Name label (its own names: an account of its own anyway).
    #[arg(long)]
    pub label: String,
}

type Tokens = Arc<Mutex<HashMap<String, String>>>;

/// Runs it.
///
/// # Errors
/// The account cannot be created or the responder cannot listen. Orders
/// that fail are counted.
pub async fn run(stack: &Stack, opts: &Options) -> anyhow::Result<Throughput> {
    let http = Http::new(None)?;
    anyhow::ensure!(
        opts.ca.mode.challenge() == certfleet_common::ChallengeType::Http01,
        "the ceiling answers http-01 only (no {} mode)",
        opts.ca.mode.as_str()
    );
    let names = opts.ca.names(&opts.label, opts.n);
    let warmup = opts.ca.warmup_name(&opts.label, "ceiling");
    opts.ca
        .point_dns(&http, &[names.clone(), vec![warmup.clone()]].concat())
        .await?;
    let tokens: Tokens = Arc::default();
    let stop = CancellationToken::new();
    let responder = serve_http01(opts.ca.http01_addr(), tokens.clone(), stop.clone()).await?;
    let result = drive(stack, opts, &names, &warmup, &tokens).await;
    stop.cancel();
    let _ = responder.await;
    result
}

async fn drive(
    stack: &Stack,
    opts: &Options,
    names: &[String],
    warmup: &str,
    tokens: &Tokens,
) -> anyhow::Result<Throughput> {
    let (account, _) = tokio::time::timeout(
        ORDER_TIMEOUT,
        Account::builder_with_http(stall::acme_client(&opts.ca.ca_certs)?).create(
            &NewAccount {
                contact: &["mailto:bench@example.test"],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            opts.ca.directory.clone(),
            None,
        ),
    )
    .await
    .context("the CA did not answer (deadlocked?)")?
    .context("creating the ceiling's ACME account")?;
    issue(&account, warmup, tokens)
        .await
        .context("warm-up order")?;

    let cpu = CpuMeter::start(
        &opts.ca.pid_files(stack),
        &[("ceiling", std::process::id())],
    );
    let tokens = tokens.clone();
    let probe = Probe::with_account(&opts.ca, account.clone());
    let done = Arc::new(AtomicUsize::new(0));
    let counted = done.clone();
    let run = pool::run(names, opts.concurrency, move |name| {
        let (account, tokens, counted) = (account.clone(), tokens.clone(), counted.clone());
        async move {
            match issue(&account, &name, &tokens).await {
                Ok(()) => {
                    counted.fetch_add(1, Ordering::Relaxed);
                    Attempt::Done
                }
                Err(e) => {
                    tracing::warn!(%name, error = %format!("{e:#}"), "ceiling order failed");
                    // An order that times out means the CA is stuck: stop
                    // taking names.
                    if e.is::<tokio::time::error::Elapsed>() {
                        Attempt::Stuck
                    } else {
                        Attempt::Failed
                    }
                }
            }
        }
    });
    let timed = tokio::select! {
        timed = run => timed?,
        () = watch_progress(&probe, &done, stall::quiet_for(opts.ca.mode)) => {
            let n = done.load(Ordering::Relaxed);
            return Err(probe.stalled_ca(&opts.ca.pebble_pid_file, n).await.into());
        }
    };
    let (latencies, elapsed) = (timed.latencies, timed.elapsed_s);
    let cpu_s = cpu.stop();
    let ok = latencies.len();
    // Names never tried because the CA got stuck count as failed.
    let failed = names.len() - ok;
    let mem = procfs::memory(std::process::id()).unwrap_or_default();
    Ok(Throughput {
        workers: 1,
        s3: String::new(),
        tool: Tool::Ceiling,
        mode: opts.ca.mode,
        concurrency: opts.concurrency,
        n: names.len(),
        ok,
        failed,
        elapsed_s: elapsed,
        certs_per_s: if elapsed > 0.0 {
            ok as f64 / elapsed
        } else {
            0.0
        },
        latency_s: stats::summary(&latencies),
        client_cpu_s: cpu_s.get("ceiling").copied().unwrap_or(0.0),
        cpu_s,
        peak_rss_mib: Some(mem.hwm_kib as f64 / 1024.0),
        rss_at_max_in_flight_mib: None,
        max_in_flight: None,
        s3_requests: Default::default(),
        acme_requests: None,
        worker_job_mean_s: None,
        phase_mean_ms: Default::default(),
        note: String::new(),
    })
}

/// Returns once `done` has not moved for `quiet` and the probe finds the
/// CA stalled (never, while it answers).
async fn watch_progress(probe: &Probe, done: &AtomicUsize, quiet: Duration) {
    let mut seen = done.load(Ordering::Relaxed);
    let mut since = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = done.load(Ordering::Relaxed);
        if now != seen {
            (seen, since) = (now, tokio::time::Instant::now());
        } else if since.elapsed() >= quiet {
            if probe.stalled().await {
                return;
            }
            since = tokio::time::Instant::now();
        }
    }
}

/// Longest time one order may take before it counts as failed (the
/// worker's POLL gives up after 120 s).
const ORDER_TIMEOUT: Duration = Duration::from_secs(150);

/// One certificate, the worker's way, within [`ORDER_TIMEOUT`].
async fn issue(account: &Account, name: &str, tokens: &Tokens) -> anyhow::Result<()> {
    tokio::time::timeout(ORDER_TIMEOUT, issue_inner(account, name, tokens))
        .await
        .context("order timed out")?
}

async fn issue_inner(account: &Account, name: &str, tokens: &Tokens) -> anyhow::Result<()> {
    let ids = [Identifier::Dns(name.to_string())];
    let mut order = account.new_order(&NewOrder::new(&ids)).await?;
    let mut mine = Vec::new();
    {
        let mut authzs = order.authorizations();
        while let Some(authz) = authzs.next().await {
            let mut authz = authz?;
            match authz.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => bail!("authorization is {other:?}"),
            }
            let mut challenge = authz
                .challenge(ChallengeType::Http01)
                .context("no http-01 challenge")?;
            let key_auth = challenge.key_authorization().as_str().to_string();
            if let Ok(mut t) = tokens.lock() {
                t.insert(challenge.token.clone(), key_auth);
            }
            mine.push(challenge.token.clone());
            challenge.set_ready().await?;
        }
    }
    let result = async {
        match order.poll_ready(&POLL).await? {
            OrderStatus::Ready => {}
            other => bail!("order is {other:?}"),
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(vec![name.to_string()])?;
        params.distinguished_name = DistinguishedName::new();
        let csr = params.serialize_request(&key)?;
        order.finalize_csr(csr.der()).await?;
        let chain = order.poll_certificate(&POLL).await?;
        anyhow::ensure!(chain.contains("BEGIN CERTIFICATE"), "no certificate");
        Ok(())
    }
    .await;
    if let Ok(mut t) = tokens.lock() {
        for tok in &mine {
            t.remove(tok);
        }
    }
    result
}

/// A minimal http-01 responder: `/.well-known/acme-challenge/<token>` from
/// the map, 404 otherwise.
async fn serve_http01(
    addr: std::net::SocketAddr,
    tokens: Tokens,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the http-01 responder on {addr}"))?;
    Ok(tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = stop.cancelled() => return,
                r = listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(_) => continue,
                },
            };
            let tokens = tokens.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let answer = req
                        .uri()
                        .path()
                        .strip_prefix("/.well-known/acme-challenge/")
                        .and_then(|t| tokens.lock().ok().and_then(|m| m.get(t).cloned()));
                    async move {
                        let rsp = match answer {
                            Some(body) => hyper::Response::new(Full::new(Bytes::from(body))),
                            None => {
                                let mut r = hyper::Response::new(Full::new(Bytes::new()));
                                *r.status_mut() = hyper::StatusCode::NOT_FOUND;
                                r
                            }
                        };
                        Ok::<_, std::convert::Infallible>(rsp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    }))
}
