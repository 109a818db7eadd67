//! A panic in one job costs that job only.
//!
//! Tokio already keeps a panicking task from taking the process down, but
//! the task's delivery would then never be settled: it stays unacknowledged
//! until the connection closes, holding one of the `CERTFLEET_CONCURRENCY`
//! prefetch slots the whole time, and is redelivered to the next worker to
//! panic there too. So each delivery runs inside [`catch`], and `process`
//! turns a panic into a dead letter with the panic message (error kind
//! `panic`), acknowledged once the broker confirmed it, like any other job
//! that failed for good.
//!
//! Unwinding out of a job is safe for the rest of the worker: what jobs
//! share (the Redis pool, the S3 and ACME clients, the outbox, metrics) is
//! behind locks that do not poison or whose poisoning is handled, and a
//! lease dropped by the unwind stops refreshing and expires on its own.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;

/// Runs `f` to completion; a panic inside it becomes `Err(message)`
/// instead of unwinding into the caller.
pub(crate) async fn catch<F: Future>(f: F) -> Result<F::Output, String> {
    AssertUnwindSafe(f)
        .catch_unwind()
        .await
        .map_err(|payload| message(payload.as_ref()))
}

/// The text of a panic payload: the message of `panic!("...")`, `expect`
/// and friends, or a placeholder for other payloads.
fn message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_its_message() {
        assert_eq!(catch(async { 7 }).await, Ok(7));
        let boom = catch(async {
            tokio::task::yield_now().await;
            panic!("boom at {}", 42);
        })
        .await;
        assert_eq!(boom, Err::<(), _>("boom at 42".to_string()));
        let literal = catch(async { panic!("literal") }).await;
        assert_eq!(literal, Err::<(), _>("literal".to_string()));
        let other = catch(async { std::panic::panic_any(5u8) }).await;
        assert_eq!(
            other,
            Err::<(), _>("(a panic without a message)".to_string())
        );
    }
}
