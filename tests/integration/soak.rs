//! Issue 12: the soak (`make soak`, not part of `make test`). Jobs keep
//! flowing through three worker processes for `CERTFLEET_SOAK_MINUTES`
//! (default 10) while a driver kills -9 and restarts random workers and,
//! one at a time, the broker, Redis or the S3 server, with Pebble's default
//! validation delay. At the end it counts jobs accepted, certificates
//! stored, duplicate versions, duplicate ACME orders (new-order requests
//! per name, seen by a proxy in front of Pebble), lost jobs and dead
//! letters, writes `bench/results/soak-<UTC time>.md`, and fails unless
//! nothing was lost and no name has two versions.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use certfleet_common::CertName;
use certfleet_tests::acme_proxy::AcmeProxy;
use certfleet_tests::private::{self, PEBBLE_WITH_SLEEP, Private, Service};
use certfleet_tests::{TestEnv, init_logging, repo_root, var};
use rand::Rng as _;
use tokio::process::Child;
use tokio::time::Instant;

use crate::issue::issue_job;

/// Jobs accepted (confirmed by the broker) and not yet stored, at most.
const IN_FLIGHT: usize = 120;
/// Orders in flight per worker.
const CONCURRENCY: &str = "8";
const WORKERS: usize = 3;

struct Workers {
    env: TestEnv,
    proxy_vars: Vec<(String, String)>,
    children: Vec<Option<Child>>,
}

impl Workers {
    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let child = self
            .env
            .command("certfleet-worker")?
            .envs(
                self.proxy_vars
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .env("CERTFLEET_CONCURRENCY", CONCURRENCY)
            .env("CERTFLEET_LEASE_TTL", "10s")
            .env("CERTFLEET_WORKER_ID", format!("soak-{i}"))
            .spawn()?;
        self.children[i] = Some(child);
        Ok(())
    }

    async fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut c) = self.children[i].take() {
            c.start_kill()?;
            let _ = c.wait().await;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Tally {
    accepted: Vec<CertName>,
    refused: usize,
}

async fn stored(env: &TestEnv, names: &[CertName]) -> anyhow::Result<(usize, usize, usize)> {
    let store = env.store().await;
    let (mut stored, mut dup_versions, mut versions_total) = (0, 0, 0);
    for n in names {
        if store.pointer(n).await?.is_some() {
            stored += 1;
        }
        let v = store.list(&store.keys().versions(n)).await?.len();
        versions_total += v;
        if v > 1 {
            dup_versions += 1;
        }
    }
    Ok((stored, dup_versions, versions_total))
}

#[tokio::test]
#[ignore = "minutes long: run by `make soak`"]
async fn soak() -> anyhow::Result<()> {
    init_logging();
    let minutes: u64 = var("CERTFLEET_SOAK_MINUTES", "10").parse()?;
    // Which faults to inject (comma separated): worker, redis, rabbitmq, s3.
    let kinds: Vec<String> = var("CERTFLEET_SOAK_FAULTS", "worker,redis,rabbitmq,s3")
        .split(',')
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect();
    anyhow::ensure!(!kinds.is_empty(), "CERTFLEET_SOAK_FAULTS names no fault");
    let run_for = Duration::from_secs(minutes * 60);
    let base = TestEnv::new("soak").await?;
    let broker = Private::start(Service::RabbitMq, &[]).await?;
    let redis = Private::start(Service::Redis, &[]).await?;
    let s3 = Private::start(Service::S3, &[]).await?;
    let pebble = Private::start(Service::Pebble, PEBBLE_WITH_SLEEP).await?;
    let env = private::env_for(&base, &[&broker, &redis, &s3, &pebble]).await?;
    let ca = pebble.ca_path().ok_or_else(|| anyhow::anyhow!("no CA"))?;
    let proxy = AcmeProxy::start_upstream(&pebble.url(), &ca, pebble.mgmt_url().as_deref()).await?;
    let mut workers = Workers {
        env: env.clone(),
        proxy_vars: proxy.vars(),
        children: (0..WORKERS).map(|_| None).collect(),
    };
    for i in 0..WORKERS {
        workers.spawn(i)?;
    }
    env.wait_for_work_queue().await?;

    // The feeder: keeps up to IN_FLIGHT accepted jobs not yet stored.
    let tally = Arc::new(Mutex::new(Tally::default()));
    let feeding = tokio_util::sync::CancellationToken::new();
    let feeder = {
        let (env, tally, feeding) = (env.clone(), tally.clone(), feeding.clone());
        tokio::spawn(async move {
            let mut next = 0usize;
            let mut stored_seen = 0usize;
            while !feeding.is_cancelled() {
                let accepted: Vec<CertName> = tally
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .accepted
                    .clone();
                if let Ok((s, _, _)) = stored(&env, &accepted).await {
                    stored_seen = s;
                }
                let want =
                    IN_FLIGHT.saturating_sub(accepted.len() - stored_seen.min(accepted.len()));
                for _ in 0..want.min(20) {
                    let Ok(domain) = env.domain(&format!("k{next}")).await else {
                        break;
                    };
                    next += 1;
                    let Ok(job) = issue_job(&[domain]) else {
                        continue;
                    };
                    let ok = tokio::time::timeout(Duration::from_secs(40), env.publish_job(&job))
                        .await
                        .is_ok_and(|r| r.is_ok());
                    let mut t = tally.lock().unwrap_or_else(PoisonError::into_inner);
                    if ok {
                        t.accepted.push(job.job.name.clone());
                    } else {
                        t.refused += 1;
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };

    // The fault driver.
    let started = Instant::now();
    let mut faults: BTreeMap<&str, usize> = BTreeMap::new();
    let mut log = String::new();
    while started.elapsed() < run_for {
        let pause = rand::rng().random_range(10..20);
        tokio::time::sleep(Duration::from_secs(pause)).await;
        // Half of the faults hit a worker (when workers are named), the
        // rest one of the named services.
        let services: Vec<&str> = kinds
            .iter()
            .map(String::as_str)
            .filter(|k| *k != "worker")
            .collect();
        let worker_fault = kinds.iter().any(|k| k == "worker")
            && (services.is_empty() || rand::rng().random_bool(0.5));
        let pick = if worker_fault {
            "worker"
        } else {
            services[rand::rng().random_range(0..services.len())]
        };
        let down = Duration::from_millis(rand::rng().random_range(2000..6000));
        let at = started.elapsed().as_secs();
        let what = match pick {
            "worker" => {
                let i = rand::rng().random_range(0..WORKERS);
                workers.kill(i).await?;
                tokio::time::sleep(down / 2).await;
                workers.spawn(i)?;
                "worker kill -9"
            }
            "redis" => {
                redis.kill().await?;
                tokio::time::sleep(down).await;
                redis.start_again().await?;
                "redis kill -9"
            }
            "rabbitmq" => {
                broker.kill().await?;
                tokio::time::sleep(down).await;
                broker.start_again().await?;
                "rabbitmq kill -9"
            }
            "s3" => {
                s3.kill().await?;
                tokio::time::sleep(down).await;
                s3.start_again().await?;
                "s3 kill -9"
            }
            other => anyhow::bail!("CERTFLEET_SOAK_FAULTS: unknown fault {other:?}"),
        };
        *faults.entry(what).or_default() += 1;
        let _ = writeln!(log, "- {at} s: {what}, down {:.1} s", down.as_secs_f64());
        println!("soak {at} s: {what}");
    }
    feeding.cancel();
    let _ = feeder.await;

    // Drain: every accepted job must be stored.
    let accepted = tally
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .accepted
        .clone();
    let refused = tally.lock().unwrap_or_else(PoisonError::into_inner).refused;
    let deadline = Instant::now() + Duration::from_secs(300);
    let (mut n_stored, mut dup_versions, mut versions_total);
    loop {
        (n_stored, dup_versions, versions_total) = stored(&env, &accepted).await?;
        if n_stored == accepted.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let drained = started.elapsed().saturating_sub(run_for);
    let mut per_name: HashMap<String, usize> = HashMap::new();
    for o in proxy.new_orders() {
        if let Some(first) = o.identifiers.first() {
            *per_name.entry(first.clone()).or_default() += 1;
        }
    }
    let orders: usize = per_name.values().sum();
    let dup_orders: usize = per_name.values().map(|n| n.saturating_sub(1)).sum();
    let dead = env
        .queue_len(certfleet_common::topology::DEAD_QUEUE)
        .await
        .unwrap_or(0);
    let lost = accepted.len() - n_stored;
    // Messages left in the queues: a healthy run ends with none in the work
    // queue (jobs in long retry tiers may remain).
    let mut queues = Vec::new();
    for q in std::iter::once(certfleet_common::topology::WORK_QUEUE.to_string()).chain(
        certfleet_common::topology::RETRY_DELAYS
            .iter()
            .map(|(l, _)| certfleet_common::topology::retry_queue(l)),
    ) {
        let n = env.queue_len(&q).await.unwrap_or(u64::MAX);
        queues.push(format!("{q}: {n}"));
    }
    for i in 0..WORKERS {
        workers.kill(i).await?;
    }

    let now = time::OffsetDateTime::now_utc();
    let stamp = now
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .unwrap_or_default();
    let total_faults: usize = faults.values().sum();
    let mut report = String::new();
    let _ = writeln!(report, "# Soak {stamp}\n");
    let _ = writeln!(
        report,
        "{minutes} min of faults, {WORKERS} worker processes (concurrency {CONCURRENCY} each, lease 10 s), up to {IN_FLIGHT} jobs in flight, Pebble with its default validation delay (0-4 s per validation); private RabbitMQ, Redis (no persistence: a kill loses its data), S3 server, Pebble. Drained {:.0} s after the faults stopped.\n",
        drained.as_secs_f64()
    );
    let _ = writeln!(report, "| measure | count |\n|---|---|");
    for (k, v) in [
        ("jobs accepted (confirmed by the broker)", accepted.len()),
        (
            "jobs refused while the broker was down (not accepted)",
            refused,
        ),
        ("certificates stored", n_stored),
        ("versions stored", versions_total),
        ("names with duplicate versions", dup_versions),
        ("ACME new-order requests", orders),
        (
            "duplicate ACME orders (new-order requests beyond one per name)",
            dup_orders,
        ),
        ("lost jobs (accepted, never stored)", lost),
        ("dead letters", usize::try_from(dead).unwrap_or(usize::MAX)),
        ("faults injected", total_faults),
    ] {
        let _ = writeln!(report, "| {k} | {v} |");
    }
    let _ = writeln!(
        report,
        "\nMessages left in the queues: {}\n",
        queues.join(", ")
    );
    let _ = writeln!(report, "\nFaults by kind ({}):\n", kinds.join(", "));
    for (k, v) in &faults {
        let _ = writeln!(report, "- {k}: {v}");
    }
    let _ = writeln!(report, "\nTimeline:\n\n{log}");
    let dir = repo_root().join("bench/results");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("soak-{stamp}.md")), &report)?;
    println!("{report}");
    assert_eq!(lost, 0, "lost jobs");
    assert_eq!(dup_versions, 0, "duplicate versions");
    proxy.shutdown();
    base.cleanup().await;
    Ok(())
}
