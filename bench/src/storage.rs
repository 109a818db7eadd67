//! The storage ceiling: the S3 server alone, with the worker's request
//! pattern for a new certificate (read the pointer, write the bundle, write
//! the pointer, both writes conditional) through the same client
//! (`certfleet_common::Store`), C certificates at a time. It tells how many
//! certificates per second the local S3 server (moto) can take at all.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use certfleet_common::{CertName, Store};
use certfleet_worker::objects::Condition;
use tokio::time::Instant;

use crate::procfs::CpuMeter;
use crate::results::StorageCeiling;
use crate::stack::{Slice, Stack};

/// Runs `n` certificates' worth of requests, `concurrency` at a time.
///
/// # Errors
/// The slice cannot be created; failed requests are counted.
pub async fn run(
    stack: &Stack,
    label: &str,
    concurrency: u32,
    n: usize,
) -> anyhow::Result<StorageCeiling> {
    let slice = Slice::create(stack, label, None).await?;
    let store = Arc::new(Store::from_config(&slice.config()?).await);
    // Bodies the size of a real bundle (chain + sealed key) and pointer.
    let bundle = serde_json::json!({"schema": "certfleet.bundle.v1", "cert_pem": "x".repeat(1400), "chain_pem": "y".repeat(1300), "key": "z".repeat(300)});
    let pointer = serde_json::json!({"schema": "certfleet.pointer.v1", "version": "v", "serial": "0123456789abcdef", "domains": ["a"], "history": [], "pad": "p".repeat(500)});
    let next = Arc::new(AtomicUsize::new(0));
    let cpu = CpuMeter::start(&stack.service_pid_files(), &[]);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (store, next, bundle, pointer) =
            (store.clone(), next.clone(), bundle.clone(), pointer.clone());
        let prefix = slice.id.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0usize, 0usize);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let Ok(name) = CertName::parse(&format!("s{i:05}.{prefix}")) else {
                    failed += 1;
                    continue;
                };
                let keys = store.keys();
                let r = async {
                    let _ = store.pointer(&name).await;
                    store
                        .put_json(&keys.bundle(&name, "v1"), &bundle, Condition::Absent)
                        .await?;
                    store
                        .put_json(&keys.pointer(&name), &pointer, Condition::Absent)
                        .await?;
                    anyhow::Ok(())
                }
                .await;
                if r.is_ok() { ok += 1 } else { failed += 1 }
            }
            (ok, failed)
        }));
    }
    let (mut ok, mut failed) = (0, 0);
    for t in tasks {
        let (o, f) = t.await?;
        ok += o;
        failed += f;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu_s = cpu.stop();
    slice.cleanup().await;
    Ok(StorageCeiling {
        server: stack.s3_server.clone(),
        concurrency,
        certificates: ok,
        failed,
        requests_per_certificate: 3,
        elapsed_s: elapsed,
        certs_per_s: if elapsed > 0.0 {
            ok as f64 / elapsed
        } else {
            0.0
        },
        cpu_s,
    })
}
