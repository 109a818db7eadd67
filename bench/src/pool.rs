//! N names through W workers at a time, for the clients the bench drives
//! one certificate at a time (the instant-acme ceiling, lego processes).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::time::Instant;

/// What one attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Issued.
    Done,
    /// Failed; the next name is tried.
    Failed,
    /// The CA is stuck (an attempt timed out): no worker takes another name.
    Stuck,
}

/// The timed part of a run.
#[derive(Debug, Clone, Default)]
pub struct Timed {
    /// Seconds per issued certificate, one entry per success.
    pub latencies: Vec<f64>,
    /// From the start to the last success, seconds.
    pub elapsed_s: f64,
}

/// Runs `attempt` over `names`, `workers` at a time (at least one), until the
/// names run out or an attempt reports the CA stuck; the names never tried
/// then count as not issued.
///
/// # Errors
/// A worker task panicked.
pub async fn run<F, Fut>(names: &[String], workers: u32, attempt: F) -> anyhow::Result<Timed>
where
    F: Fn(String) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Attempt> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let names = Arc::new(names.to_vec());
    let stuck = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers.max(1) {
        let (next, names, stuck, attempt) =
            (next.clone(), names.clone(), stuck.clone(), attempt.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut last = t0;
            while !stuck.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(name) = names.get(i) else { break };
                let start = Instant::now();
                match attempt(name.clone()).await {
                    Attempt::Done => {
                        last = Instant::now();
                        lat.push(last.duration_since(start).as_secs_f64());
                    }
                    Attempt::Stuck => stuck.store(true, Ordering::Relaxed),
                    Attempt::Failed => {}
                }
            }
            (lat, last)
        }));
    }
    let mut latencies = Vec::new();
    let mut last = t0;
    for t in tasks {
        let (l, end) = t.await?;
        latencies.extend(l);
        last = last.max(end);
    }
    Ok(Timed {
        latencies,
        elapsed_s: last.duration_since(t0).as_secs_f64(),
    })
}
