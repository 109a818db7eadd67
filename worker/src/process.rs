//! One job, from delivery to acknowledgement.
//!
//! ```text
//! decode ─┬─ garbage / unknown version / too large ─► dead-letter (reason) ─► ack
//!         ├─ invalid job (names, count, wildcard) ──► failed event + dead-letter ─► ack
//!         └─ lease the name (one order per name, fleet-wide)
//!              └─ re-read the pointer: done already? ─► (re)publish event ─► ack
//!              └─ resume or create the order, answer http-01, finalize
//!              └─ bundle → S3, fenced pointer flip, expiry index
//!              └─ event, confirmed ─► ack
//! error ─► Retry: delay queue, attempt + 1 │ Defer: delay queue, same attempt
//!          Fail / exhausted: failed event + dead-letter │ Stop: leave unacked
//! panic ─► failed event + dead-letter (`panic: <message>`) ─► ack
//! ```
//! The delivery is acknowledged only after everything it caused (event,
//! retry copy, dead letter) was confirmed by the broker.
//!
//! Everything here reads values from the network (the body, headers, the
//! CA's answers), so arithmetic on them saturates or is checked; what is
//! missed anyway is a panic, which costs that one job (see `unwind`).

use std::sync::Arc;
use std::time::Duration;

use certfleet_common::csr::Csr;
use certfleet_common::error::{Classify, Disposition};
use certfleet_common::event::{EVENT_SCHEMA, Event, EventKind, Failure};
use certfleet_common::seal::SealedKey;
use certfleet_common::state::{JobState, JobStatus, STATUS_TTL};
use certfleet_common::storage::KeyScope;
use certfleet_common::topology::{self, backoff, header_i64};
use certfleet_common::{Envelope, JobKind, Pointer, now_ms};
use deadpool_redis::redis::AsyncCommands;
use lapin::message::Delivery;
use time::OffsetDateTime;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::Ctx;
use crate::acme::client::capture_retry_after;
use crate::acme::order::{Obtained, ObtainedKey, Request};
use crate::error::JobError;
use crate::events::Outbox;
use crate::keys;
use crate::lease::Lease;
use crate::metrics::Outcome;
use crate::objects::ObjectWrites as _;
use crate::store::{NewVersion, orphan_of_job, read_pointer, store_version};
use crate::unwind;
use rustls_pki_types::pem::PemObject as _;

/// What to do with the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Everything it caused is confirmed: acknowledge.
    Ack,
    /// Hand it back to the broker for redelivery.
    Requeue,
}

/// The result of handling one delivery.
#[derive(Debug)]
pub(crate) struct Handled {
    pub(crate) action: Action,
    pub(crate) outcome: Outcome,
    pub(crate) kind: &'static str,
}

/// Handles one delivery; a panic while handling it becomes its dead letter
/// (see [`panicked`]) instead of an unsettled delivery.
pub(crate) async fn handle(
    ctx: &Arc<Ctx>,
    outbox: &Outbox,
    delivery: &Delivery,
    hard_stop: &CancellationToken,
) -> Handled {
    match unwind::catch(handle_delivery(ctx, outbox, delivery, hard_stop)).await {
        Ok(handled) => handled,
        Err(message) => panicked(ctx, outbox, delivery, message).await,
    }
}

/// After a panic: the job fails for good with [`JobError::Panicked`] (a
/// failed event, when the body decodes, and the dead letter with error kind
/// `panic`), and the delivery is acked once that is confirmed. Counted in
/// `certfleet_jobs_panicked_total`.
async fn panicked(
    ctx: &Arc<Ctx>,
    outbox: &Outbox,
    delivery: &Delivery,
    message: String,
) -> Handled {
    ctx.metrics.jobs.panicked.inc();
    let e = JobError::Panicked(message);
    error!(error = %e, routing_key = %delivery.routing_key, "handling the job panicked; dead-lettering it");
    let (kind, recorded) = match Envelope::decode(&delivery.data) {
        Ok(env) => {
            let recorded = fail(ctx, outbox, &env, &e, false, &e.to_string()).await;
            (env.kind.as_str(), recorded)
        }
        Err(_) => {
            let dead = outbox
                .dead(
                    &delivery.data,
                    delivery.routing_key.as_str(),
                    e.dead_letter_kind(),
                    &e.to_string(),
                    None,
                )
                .await;
            ("unknown", dead.map_err(JobError::from))
        }
    };
    match recorded {
        Ok(()) => Handled {
            action: Action::Ack,
            outcome: Outcome::Panicked,
            kind,
        },
        Err(pe) => {
            warn!(error = %pe, "could not dead-letter; leaving the message to the broker");
            Handled {
                action: Action::Requeue,
                outcome: Outcome::Abandoned,
                kind,
            }
        }
    }
}

/// Handles one delivery (inside [`handle`]'s panic guard).
async fn handle_delivery(
    ctx: &Arc<Ctx>,
    outbox: &Outbox,
    delivery: &Delivery,
    hard_stop: &CancellationToken,
) -> Handled {
    let headers = delivery.properties.headers().as_ref();
    let envelope = match Envelope::decode(&delivery.data) {
        Ok(e) => e,
        Err(e) => {
            warn!(error = %e, routing_key = %delivery.routing_key, "undecodable job; dead-lettering it");
            let dead = outbox
                .dead(
                    &delivery.data,
                    delivery.routing_key.as_str(),
                    "undecodable",
                    &e.to_string(),
                    None,
                )
                .await;
            return match dead {
                Ok(()) => Handled {
                    action: Action::Ack,
                    outcome: Outcome::Undecodable,
                    kind: "unknown",
                },
                Err(e) => {
                    warn!(error = %e, "could not dead-letter; leaving the message to the broker");
                    Handled {
                        action: Action::Requeue,
                        outcome: Outcome::Abandoned,
                        kind: "unknown",
                    }
                }
            };
        }
    };
    let kind = envelope.kind.as_str();
    let span = info_span!(
        "job",
        job_id = %envelope.job_id,
        cert_name = %envelope.job.name,
        attempt = envelope.attempt,
        kind
    );
    async {
        // Checked again here: the job may not come from our CLI. Nothing
        // (lease, order, rate-limit slot) is spent on an invalid one.
        if let Err(e) = envelope.validate() {
            let e = JobError::Invalid(format!("invalid job: {e}"));
            return dispose(ctx, outbox, &envelope, e).await;
        }
        // Back early from a delay queue (the wait was longer than the
        // longest delay): wait again, without counting an attempt. The
        // header is network input: any i64 must work (`Outbox::delay`
        // caps the wait at `topology::MAX_DELAY`).
        if let Some(not_before) = header_i64(headers, topology::HDR_NOT_BEFORE) {
            let early_ms = not_before.saturating_sub(now_ms());
            if early_ms > 1000 {
                let wait = Duration::from_millis(u64::try_from(early_ms).unwrap_or(u64::MAX));
                debug!(?wait, "not due yet; delaying again");
                return match outbox.delay(&envelope, wait).await {
                    Ok(()) => Handled {
                        action: Action::Ack,
                        outcome: Outcome::Deferred,
                        kind,
                    },
                    Err(_) => Handled {
                        action: Action::Requeue,
                        outcome: Outcome::Abandoned,
                        kind,
                    },
                };
            }
        }
        // Any earlier try of this job (a redelivery, a counted retry, or a
        // deferral after a lost lease or a closed rate-limit window: all come
        // back through a delay queue with a not-before header) may have
        // stored a bundle it never made current: the job looks for it.
        let tried_before = delivery.redelivered
            || envelope.attempt > 1
            || header_i64(headers, topology::HDR_NOT_BEFORE).is_some();
        let result = capture_retry_after(async {
            tokio::select! {
                r = run_job(ctx, outbox, &envelope, tried_before) => r,
                _ = hard_stop.cancelled() => Err(JobError::Shutdown),
            }
        })
        .await;
        match result {
            Ok(outcome) => Handled {
                action: Action::Ack,
                outcome,
                kind,
            },
            Err(e) => dispose(ctx, outbox, &envelope, e).await,
        }
    }
    .instrument(span)
    .await
}

/// Decides and carries out what an error means for the job.
async fn dispose(ctx: &Arc<Ctx>, outbox: &Outbox, env: &Envelope, e: JobError) -> Handled {
    if matches!(e, JobError::LostLease(_)) {
        ctx.metrics.jobs.leases_lost.inc();
    }
    if e.is_key_fault() {
        let mut fault = ctx
            .key_fault
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if fault.is_none() {
            tracing::error!(error = %e, "this worker's encryption key does not open what the fleet sealed: not ready, deferring jobs until it is fixed and the worker restarted");
            *fault = Some(e.to_string());
        }
    }
    let kind = env.kind.as_str();
    let disposition = e.disposition();
    let requeue = Handled {
        action: Action::Requeue,
        outcome: Outcome::Abandoned,
        kind,
    };
    let max = ctx.cfg.worker.max_attempts.get();
    match disposition {
        Disposition::Stop => {
            info!(error = %e, "leaving the job to the broker");
            requeue
        }
        Disposition::Defer { after } => {
            info!(error = %e, wait = ?after, "deferring the job");
            ctx.status(env, JobState::Retrying, &e.to_string()).await;
            match outbox.delay(env, after).await {
                Ok(()) => Handled {
                    action: Action::Ack,
                    outcome: Outcome::Deferred,
                    kind,
                },
                Err(pe) => {
                    warn!(error = %pe, "could not defer");
                    requeue
                }
            }
        }
        Disposition::Retry { after } if env.attempt < max => {
            let wait = after.unwrap_or_else(|| backoff(env.attempt));
            warn!(error = %certfleet_common::error::chain(&e), ?wait, "attempt {} of {max} failed; retrying", env.attempt);
            let mut next = env.clone();
            next.attempt = env.attempt.saturating_add(1);
            ctx.status(env, JobState::Retrying, &e.to_string()).await;
            match outbox.delay(&next, wait).await {
                Ok(()) => Handled {
                    action: Action::Ack,
                    outcome: Outcome::Retried,
                    kind,
                },
                Err(pe) => {
                    warn!(error = %pe, "could not schedule the retry");
                    requeue
                }
            }
        }
        Disposition::Retry { .. } | Disposition::Fail => {
            let exhausted = matches!(disposition, Disposition::Retry { .. });
            let reason = if exhausted {
                format!("gave up after {} attempts: {e}", env.attempt)
            } else {
                e.to_string()
            };
            warn!(error = %reason, "job failed");
            match fail(ctx, outbox, env, &e, exhausted, &reason).await {
                Ok(()) => Handled {
                    action: Action::Ack,
                    outcome: Outcome::Failed,
                    kind,
                },
                Err(pe) => {
                    warn!(error = %pe, "could not record the failure");
                    requeue
                }
            }
        }
    }
}

/// Publishes the failure event, parks the job in the dead-letter queue,
/// clears the name's marks.
async fn fail(
    ctx: &Arc<Ctx>,
    outbox: &Outbox,
    env: &Envelope,
    e: &JobError,
    exhausted: bool,
    reason: &str,
) -> Result<(), JobError> {
    let event = Event {
        schema: EVENT_SCHEMA.into(),
        kind: EventKind::Failed,
        name: env.job.name.clone(),
        domains: env.job.domains.clone(),
        job_id: env.job_id,
        attempt: env.attempt,
        at: OffsetDateTime::now_utc(),
        certificate: None,
        error: Some(Failure {
            kind: if exhausted {
                "exhausted".into()
            } else {
                e.failure_kind().into()
            },
            detail: reason.to_string(),
            problem: e.problem().map(|p| p.document.clone()),
        }),
    };
    outbox.event(&event).await?;
    let body = env
        .encode()
        .map_err(|err| JobError::Invalid(err.to_string()))?;
    outbox
        .dead(
            &body,
            &env.routing_key(),
            if exhausted {
                "exhausted"
            } else {
                e.dead_letter_kind()
            },
            reason,
            Some(&env.job_id.to_string()),
        )
        .await?;
    if e.abandons_order() {
        let _ = ctx.issuers.primary().drop_record(&env.job.name).await;
    }
    if let Err(e) = ctx
        .state
        .mark_failed(&env.job.name, OffsetDateTime::now_utc())
        .await
    {
        debug!(error = %e, "could not mark the name failed (its metrics keep the last state)");
    }
    ctx.finish(env, JobState::Failed, reason).await;
    Ok(())
}

/// Builds the future `make` returns in this function's own stack frame and
/// boxes it. Awaited inline, a future's value is first built on the
/// caller's stack, and a debug build keeps a separate slot for every one
/// in the caller's poll frame: the job's chain of large futures (the
/// order, the S3 client's requests) overflowed a 2 MiB thread stack with
/// two in-process workers. Here the caller's frame holds only a pointer.
#[inline(never)]
fn boxed<'a, T, F>(
    make: impl FnOnce() -> F,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>
where
    F: std::future::Future<Output = T> + Send + 'a,
{
    Box::pin(make())
}

/// Runs the job under the name's lease.
async fn run_job(
    ctx: &Arc<Ctx>,
    outbox: &Outbox,
    env: &Envelope,
    tried_before: bool,
) -> Result<Outcome, JobError> {
    let revoke = match env.kind {
        JobKind::Issue | JobKind::Renew | JobKind::Import => None,
        JobKind::Revoke => Some(RevokeRequest::parse(&env.job.reason)?),
    };
    let name = &env.job.name;
    let running = JobStatus::of(env, JobState::Running, "");
    if !tried_before {
        // Publisher and worker clocks may differ: a negative lag is none.
        let lag_ms = u64::try_from(now_ms().saturating_sub(env.created_at_ms)).unwrap_or(0);
        ctx.metrics
            .jobs
            .phase("queued", Duration::from_millis(lag_ms));
    }
    let leasing = Instant::now();
    let mut lease = Lease::acquire(
        &ctx.state,
        name,
        &ctx.worker_id,
        ctx.cfg.worker.lease_ttl,
        Some(&running),
    )
    .await?
    .ok_or_else(|| JobError::Busy(name.to_string()))?;
    ctx.metrics.jobs.phase("lease", leasing.elapsed());
    let lost = lease.lost().clone();
    // Boxed (see `boxed`): inline, these futures made every future above
    // them as large.
    let result = tokio::select! {
        r = async {
            match &revoke {
                Some(r) => boxed(|| revoke_leased(ctx, outbox, env, &lease, r)).await,
                None => boxed(|| run_leased(ctx, outbox, env, &mut lease, tried_before)).await,
            }
        } => r,
        _ = lost.cancelled() => Err(JobError::LostLease(name.to_string())),
    };
    lease.release().await;
    result
}

async fn run_leased(
    ctx: &Arc<Ctx>,
    outbox: &Outbox,
    env: &Envelope,
    lease: &mut Lease,
    tried_before: bool,
) -> Result<Outcome, JobError> {
    let name = &env.job.name;
    let metrics = &ctx.metrics.service;
    // Take the lease, then look again (certmagic's obtainCert).
    let phases = &ctx.metrics.jobs;
    let mut at = Instant::now();
    let mut phase = |name: &'static str| {
        let now = Instant::now();
        phases.phase(name, now - at);
        at = now;
    };
    let previous = boxed(|| read_pointer(&ctx.store, metrics, name)).await?;
    phase("read");
    if let Some((p, _)) = &previous {
        lease.raise_fence(p.fence).await?;
    }
    let (domains, key_type) = match (env.kind, &previous) {
        (JobKind::Renew, Some((p, _))) if env.job.domains.is_empty() => {
            (p.domains.clone(), p.key_type)
        }
        (JobKind::Renew, None) if env.job.domains.is_empty() => {
            return Err(JobError::Invalid(format!(
                "there is no certificate named {name} to renew"
            )));
        }
        _ => (env.job.domains.clone(), env.job.key_type),
    };
    if let Some((p, _)) = &previous {
        let by_this_job = p.job_id == env.job_id;
        let stored_since = p.updated_at.unix_timestamp_nanos() / 1_000_000
            > i128::from(env.created_at_ms)
            && p.domains == domains;
        if by_this_job || stored_since {
            info!(serial = %p.serial, "already stored; nothing to order");
            let mut pipe = deadpool_redis::redis::pipe();
            ctx.state
                .index_put_into(&mut pipe, name, p.renew_at, p.challenge);
            ctx.state
                .validity_put_into(&mut pipe, name, p.not_before, p.not_after);
            let mut c = ctx.state.conn().await?;
            let _: () = pipe
                .query_async(&mut *c)
                .await
                .map_err(certfleet_common::state::StateError::from)?;
            if !ctx.done(env).await? {
                let kind = event_kind(env.kind);
                outbox.event(&ctx.event(env, kind, p, None)).await?;
                ctx.mark_done(env).await?;
            }
            ctx.finish(env, JobState::Done, &format!("serial {}", p.serial))
                .await;
            return Ok(Outcome::AlreadyDone);
        }
    }

    let replaces = match (&previous, env.kind) {
        (Some((p, _)), JobKind::Renew) => p.ari_id.clone(),
        _ => None,
    };
    // The job's profile; a renewal orders the stored certificate's.
    let profile: Option<String> = match (env.job.profile(), &previous, env.kind) {
        (Some(p), _, _) => Some(p.to_string()),
        (None, Some((p, _)), JobKind::Renew) => p.profile.clone(),
        _ => None,
    };
    // The operator's CSR: ordered as is, with its key type.
    let (csr_text, sealed_key) =
        boxed(|| operator_csr(ctx, env, previous.as_ref().map(|(p, _)| p))).await?;
    let csr = match &csr_text {
        Some(text) => {
            let csr = Csr::decode(text)
                .map_err(|e| JobError::Invalid(format!("the CSR of {name}: {e}")))?;
            if !csr.names_are(&domains) {
                return Err(JobError::Invalid(format!(
                    "the CSR of {name} names {}, the certificate {}",
                    csr.domains.join(", "),
                    domains.join(", ")
                )));
            }
            Some(csr)
        }
        None => None,
    };
    let key_type = csr.as_ref().map_or(key_type, |c| c.key_type);
    let req = Request {
        name,
        job_id: env.job_id,
        domains: &domains,
        key_type,
        replaces: replaces.as_deref(),
        challenge: env.job.challenge,
        profile: profile.as_deref(),
        csr: csr.as_ref(),
        sealed_key: sealed_key.as_ref(),
    };
    // A retry or redelivery may find what an earlier attempt stored.
    // The large futures (the order, S3 reads and writes) are built boxed
    // (see `boxed`): inline, this function's poll frame held a slot for each
    // of them (378 KB in a debug build).
    let orphan = if tried_before {
        boxed(|| {
            orphan_of_job(
                &ctx.store,
                metrics,
                name,
                env.job_id,
                previous.as_ref().map(|(p, _)| p),
            )
        })
        .await?
    } else {
        None
    };
    // The issuer asked for: the job's, or for a renewal the certificate's.
    let preferred: Option<String> = match (env.job.ca(), &previous, env.kind) {
        (Some(ca), _, _) => Some(ca.to_string()),
        (None, Some((p, _)), JobKind::Renew) => p.ca.clone(),
        _ => None,
    };
    let (obtained, issuer) = match orphan {
        Some((issued, key)) => (
            Obtained {
                chain_pem: format!("{}{}", issued.cert_pem, issued.chain_pem),
                key,
                tokens: Vec::new(),
                resumed: true,
                replaced: false,
            },
            ctx.issuers.by_name(preferred.as_deref()),
        ),
        None if env.kind == JobKind::Import => (
            boxed(|| staged_import(ctx, env)).await?,
            ctx.issuers.primary(),
        ),
        None => boxed(|| ctx.issuers.obtain(&req, preferred.as_deref())).await?,
    };
    phase("order");
    let issued = keys::parse_chain(&obtained.chain_pem)?;
    if env.kind == JobKind::Import
        && let Some((p, _)) = &previous
        && (p.serial == issued.serial || p.not_after >= issued.not_after)
    {
        // Imported twice, or renewed since: storage already holds as good.
        info!(serial = %p.serial, "import superseded by the stored certificate");
        ctx.forget_import(env).await;
        ctx.finish(
            env,
            JobState::Done,
            &format!("superseded by serial {}", p.serial),
        )
        .await;
        return Ok(Outcome::AlreadyDone);
    }
    let key_matches = match (&csr, &obtained.key) {
        (Some(csr), _) => keys::csr_matches(csr, &issued.cert_pem),
        (None, ObtainedKey::Made(key)) => keys::key_matches(key, &issued.cert_pem),
        // A staged import (`import` checked the pair) or the bundle an
        // earlier attempt stored after this same check.
        (None, ObtainedKey::Sealed(..)) => true,
    };
    if !key_matches {
        issuer.drop_record(name).await?;
        return Err(JobError::Crypto(
            "the CA's certificate does not match the order's key".into(),
        ));
    }
    let ari = match &issued.ari_id {
        Some(id) => boxed(|| issuer.renewal_window(id)).await,
        None => None,
    };
    let renew_at = crate::renewal::renewal_time(
        issued.not_before,
        issued.not_after,
        ari.map(|(w, _)| w),
        rand::random::<f64>(),
    );
    let (pointer, replaced) = boxed(|| {
        store_version(
            &ctx.store,
            metrics,
            lease,
            previous.clone(),
            NewVersion {
                name,
                domains: &domains,
                key_type,
                challenge: env.job.challenge,
                job_id: env.job_id,
                issued: &issued,
                key: &obtained.key,
                renew_at,
                history: ctx.cfg.worker.history,
                profile: profile.as_deref(),
                issuer: issuer.name(),
                ca: preferred.as_deref(),
                csr: csr.as_ref().and(csr_text.as_deref()),
            },
        )
    })
    .await?;
    phase("store");
    let previous_serial = replaced
        .as_ref()
        .or(previous.as_ref().map(|(p, _)| p))
        .map(|p| certfleet_common::serial_display(&p.serial));
    if let Some((_, retry_after)) = ari {
        // The CA may move the window: ask again when it says to.
        let after = crate::ari::next_check(retry_after, ctx.cfg.worker.ari_recheck_min);
        if let Err(e) = crate::ari::schedule(&ctx.state, name, after).await {
            warn!(error = %e, "could not schedule the ARI re-check");
        }
    }
    let kind = event_kind(env.kind);
    outbox
        .event(&ctx.event(env, kind, &pointer, previous_serial))
        .await?;
    phase("announce");
    info!(
        serial = %pointer.serial,
        not_after = %pointer.not_after,
        resumed = obtained.resumed,
        ari_replaces = obtained.replaced,
        "certificate stored"
    );
    ctx.complete(env, &pointer, &obtained.tokens).await?;
    phase("complete");
    if env.kind == JobKind::Import {
        ctx.forget_import(env).await;
    }
    Ok(Outcome::Stored)
}

/// What a revoke job asks: its `reason` field is `<reason> <serial>` (an
/// RFC 5280 reason name, and the serial it was asked for, in either form).
struct RevokeRequest {
    reason: instant_acme::RevocationReason,
    reason_name: String,
    serial: String,
    /// `revoke --reissue`: the serial is a superseded version (the name
    /// was renewed first and stays scheduled).
    reissued: bool,
}

impl RevokeRequest {
    fn parse(text: &str) -> Result<Self, JobError> {
        use instant_acme::RevocationReason as R;
        let bad =
            || JobError::Invalid(format!("revoke job: {text:?} is not \"<reason> <serial>\""));
        let mut parts = text.split_whitespace();
        let (Some(name), Some(serial), flag, None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let reissued = match flag {
            None => false,
            Some("reissued") => true,
            Some(_) => return Err(bad()),
        };
        let reason = match name {
            "unspecified" => R::Unspecified,
            "keyCompromise" => R::KeyCompromise,
            "affiliationChanged" => R::AffiliationChanged,
            "superseded" => R::Superseded,
            "cessationOfOperation" => R::CessationOfOperation,
            "privilegeWithdrawn" => R::PrivilegeWithdrawn,
            _ => return Err(bad()),
        };
        if !serial.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad());
        }
        Ok(Self {
            reason,
            reason_name: name.to_string(),
            serial: serial.to_string(),
            reissued,
        })
    }
}

/// Revokes the name's current certificate at the CA if it is the one the
/// job names, records it in the pointer (fenced, like a version flip),
/// takes the name out of the renewal index and announces `revoked`.
async fn revoke_leased(
    ctx: &Arc<Ctx>,
    outbox: &Outbox,
    env: &Envelope,
    lease: &Lease,
    req: &RevokeRequest,
) -> Result<Outcome, JobError> {
    let name = &env.job.name;
    let metrics = &ctx.metrics.service;
    let read = read_pointer(&ctx.store, metrics, name)
        .await?
        .ok_or_else(|| {
            JobError::Invalid(format!("there is no certificate named {name} to revoke"))
        })?;
    let pointer = &read.0;
    let shown = certfleet_common::serial_display;
    if req.reissued {
        return revoke_superseded(ctx, outbox, env, pointer, req).await;
    }
    if shown(&pointer.serial) != shown(&req.serial) {
        return Err(JobError::Invalid(format!(
            "serial {} is no longer current for {name} (current: {})",
            shown(&req.serial),
            shown(&pointer.serial)
        )));
    }
    if pointer.revoked.is_none() {
        metrics.s3("get");
        let bundle = ctx.store.bundle(&pointer.bundle_key).await?;
        let der = rustls_pki_types::CertificateDer::from_pem_slice(bundle.cert_pem.as_bytes())
            .map_err(|e| JobError::Crypto(format!("the stored certificate of {name}: {e}")))?;
        ctx.issuers
            .by_name(pointer.issuer.as_deref())
            .revoke(der.as_ref(), req.reason.clone())
            .await?;
        let mut revoked = pointer.clone();
        revoked.revoked = Some(certfleet_common::storage::Revoked {
            at: OffsetDateTime::now_utc(),
            reason: req.reason_name.clone(),
            job_id: env.job_id,
        });
        crate::store::rewrite_pointer(&ctx.store, metrics, lease, &read, revoked).await?;
        info!(serial = %pointer.serial, reason = %req.reason_name, "certificate revoked");
    }
    // Not renewed any more: a revoked name comes back with `issue`.
    ctx.state.index_remove(name).await?;
    if !ctx.done(env).await? {
        outbox
            .event(&ctx.event(env, EventKind::Revoked, pointer, None))
            .await?;
        ctx.mark_done(env).await?;
    }
    ctx.finish(
        env,
        JobState::Done,
        &format!("revoked serial {}", pointer.serial),
    )
    .await;
    Ok(Outcome::Stored)
}

/// `revoke --reissue`: the name was renewed first; revokes the superseded
/// version with the job's serial (one of the pointer's history), marks its
/// bundle revoked (replaced under `If-Match`), keeps the name scheduled and
/// announces `revoked` with that version.
async fn revoke_superseded(
    ctx: &Arc<Ctx>,
    outbox: &Outbox,
    env: &Envelope,
    pointer: &Pointer,
    req: &RevokeRequest,
) -> Result<Outcome, JobError> {
    let name = &env.job.name;
    let shown = certfleet_common::serial_display;
    if shown(&pointer.serial) == shown(&req.serial) {
        return Err(JobError::Invalid(format!(
            "serial {} is still current for {name}: it was not reissued",
            shown(&req.serial)
        )));
    }
    let wanted = req.serial.to_ascii_lowercase();
    let version = pointer
        .history
        .iter()
        .find(|v| {
            v.rsplit_once('-')
                .is_some_and(|(_, s)| s.eq_ignore_ascii_case(&wanted))
        })
        .ok_or_else(|| {
            JobError::Invalid(format!(
                "serial {} is not a stored version of {name}",
                shown(&req.serial)
            ))
        })?
        .clone();
    let key = ctx.store.keys().bundle(name, &version);
    ctx.metrics.service.s3("get");
    let (mut bundle, etag) = ctx
        .store
        .get_json::<certfleet_common::Bundle>(&key, "bundle")
        .await?
        .ok_or_else(|| JobError::Invalid(format!("version {version} of {name} is gone")))?;
    let issued = crate::keys::parse_chain(&format!("{}{}", bundle.cert_pem, bundle.chain_pem))?;
    if bundle.revoked.is_none() {
        let der = rustls_pki_types::CertificateDer::from_pem_slice(bundle.cert_pem.as_bytes())
            .map_err(|e| JobError::Crypto(format!("version {version} of {name}: {e}")))?;
        // The CA that issued it (bundles of earlier builds do not say: the
        // current version's).
        ctx.issuers
            .by_name(bundle.issuer.as_deref().or(pointer.issuer.as_deref()))
            .revoke(der.as_ref(), req.reason.clone())
            .await?;
        bundle.revoked = Some(certfleet_common::storage::Revoked {
            at: OffsetDateTime::now_utc(),
            reason: req.reason_name.clone(),
            job_id: env.job_id,
        });
        ctx.metrics.service.s3("put");
        match ctx
            .store
            .put_json(&key, &bundle, crate::objects::Condition::Matches(&etag))
            .await
        {
            // Revoked at the CA either way; the mark waits for a retry.
            Ok(_) | Err(certfleet_common::storage::StorageError::Conflict(_)) => {}
            Err(e) => return Err(e.into()),
        }
        info!(serial = %shown(&req.serial), %version, reason = %req.reason_name, "superseded certificate revoked");
    }
    if !ctx.done(env).await? {
        let mut old = pointer.clone();
        old.version = version.clone();
        old.serial = issued.serial.clone();
        old.not_before = issued.not_before;
        old.not_after = issued.not_after;
        outbox
            .event(&ctx.event(env, EventKind::Revoked, &old, None))
            .await?;
        ctx.mark_done(env).await?;
    }
    ctx.finish(
        env,
        JobState::Done,
        &format!("revoked superseded serial {}", shown(&req.serial)),
    )
    .await;
    Ok(Outcome::Stored)
}

/// The operator's CSR the job orders with (`issue --csr`, `--key-file`),
/// base64 DER, and the operator's key sealed for the name if there is one:
/// the job's, or for a renewal the certificate's (the CSR from its pointer,
/// the key from its current bundle).
async fn operator_csr(
    ctx: &Ctx,
    env: &Envelope,
    previous: Option<&Pointer>,
) -> Result<(Option<String>, Option<SealedKey>), JobError> {
    if let Some(text) = env.job.csr() {
        let sealed =
            match env.job.sealed_key() {
                Some(json) => Some(serde_json::from_str::<SealedKey>(json).map_err(|e| {
                    JobError::Invalid(format!("the job's sealed key is not one: {e}"))
                })?),
                None => None,
            };
        return Ok((Some(text.to_string()), sealed));
    }
    let Some(p) = previous else {
        return Ok((None, None));
    };
    let same_names = env.job.domains.is_empty() || env.job.domains == p.domains;
    match &p.csr {
        Some(csr) if env.kind == JobKind::Renew && same_names => {
            ctx.metrics.service.s3("get");
            let bundle = ctx.store.bundle(&p.bundle_key).await?;
            let sealed = match bundle.key_scope {
                KeyScope::Name => bundle.key,
                KeyScope::Version => None,
            };
            Ok((Some(csr.clone()), sealed))
        }
        _ => Ok((None, None)),
    }
}

/// The certificate and key `certfleet import` staged for this job.
async fn staged_import(ctx: &Ctx, env: &Envelope) -> Result<Obtained, JobError> {
    let key = ctx.store.keys().import(&env.job_id);
    ctx.metrics.service.s3("get");
    let (bundle, _) = ctx
        .store
        .get_json::<certfleet_common::Bundle>(&key, "staged import")
        .await?
        .ok_or_else(|| {
            JobError::Invalid(format!(
                "the import's staged certificate {key} is gone (imported already, or never staged)"
            ))
        })?;
    if bundle.name != env.job.name {
        return Err(JobError::Invalid(format!(
            "the staged certificate {key} is for {}, the job for {}",
            bundle.name, env.job.name
        )));
    }
    // Stored as `import` sealed it, for this version: the worker need not
    // (and with keys encrypted to the webservers cannot) open it.
    Ok(Obtained {
        chain_pem: format!("{}{}", bundle.cert_pem, bundle.chain_pem),
        key: ObtainedKey::Sealed(bundle.key, bundle.key_scope),
        tokens: Vec::new(),
        resumed: false,
        replaced: false,
    })
}

/// Issue jobs announce `issued`, renew jobs `renewed`.
fn event_kind(kind: JobKind) -> EventKind {
    match kind {
        JobKind::Renew => EventKind::Renewed,
        _ => EventKind::Issued,
    }
}

impl Ctx {
    /// After the event is confirmed, in one round trip: index the new
    /// version, mark the job done, forget the order record and challenge
    /// answers, record the status, release the dedup marker. If this fails,
    /// the redelivered job finds the stored version and does it again.
    async fn complete(
        &self,
        env: &Envelope,
        p: &Pointer,
        tokens: &[String],
    ) -> Result<(), JobError> {
        self.issuers.primary().local_answers().remove(tokens);
        let keys = self.state.keys();
        let mut pipe = deadpool_redis::redis::pipe();
        self.state
            .index_put_into(&mut pipe, &p.name, p.renew_at, p.challenge);
        self.state
            .validity_put_into(&mut pipe, &p.name, p.not_before, p.not_after);
        pipe.set_ex(keys.done(&env.job_id), 1, STATUS_TTL.as_secs())
            .ignore()
            .del(keys.order(&p.name))
            .ignore();
        if !tokens.is_empty() {
            let answers: Vec<String> = tokens.iter().map(|t| keys.answer(t)).collect();
            pipe.del(answers).ignore();
        }
        self.state.set_status_into(
            &mut pipe,
            &JobStatus::of(env, JobState::Done, format!("serial {}", p.serial)),
        )?;
        self.state
            .pending_release_into(&mut pipe, &env.job.name, &env.job_id);
        let mut c = self.state.conn().await?;
        let _: () = pipe
            .query_async(&mut *c)
            .await
            .map_err(certfleet_common::state::StateError::from)?;
        Ok(())
    }

    /// Best-effort status record (a Redis hiccup must not fail the job).
    pub(crate) async fn status(&self, env: &Envelope, state: JobState, detail: &str) {
        let status = JobStatus::of(env, state, detail);
        if let Err(e) = self.state.set_status(&status).await {
            debug!(error = %e, "could not write the job status");
        }
    }

    /// Final status, and the name's dedup marker released.
    /// Deletes an import's staged certificate (best effort: a leftover
    /// costs storage, and a second delivery finds the version stored).
    async fn forget_import(&self, env: &Envelope) {
        self.metrics.service.s3("delete");
        if let Err(e) = self
            .store
            .delete(&self.store.keys().import(&env.job_id))
            .await
        {
            warn!(error = %e, "could not delete the staged import");
        }
    }

    pub(crate) async fn finish(&self, env: &Envelope, state: JobState, detail: &str) {
        self.status(env, state, detail).await;
        if let Err(e) = self.state.pending_release(&env.job.name, &env.job_id).await {
            debug!(error = %e, "could not release the dedup marker (it expires on its own)");
        }
    }

    async fn done(&self, env: &Envelope) -> Result<bool, JobError> {
        let mut c = self.state.conn().await?;
        let done: bool = c
            .exists(self.state.keys().done(&env.job_id))
            .await
            .map_err(certfleet_common::state::StateError::from)?;
        Ok(done)
    }

    async fn mark_done(&self, env: &Envelope) -> Result<(), JobError> {
        let mut c = self.state.conn().await?;
        let _: () = c
            .set_ex(self.state.keys().done(&env.job_id), 1, STATUS_TTL.as_secs())
            .await
            .map_err(certfleet_common::state::StateError::from)?;
        Ok(())
    }

    fn event(
        &self,
        env: &Envelope,
        kind: EventKind,
        p: &Pointer,
        previous_serial: Option<String>,
    ) -> Event {
        Event {
            schema: EVENT_SCHEMA.into(),
            kind,
            name: p.name.clone(),
            domains: p.domains.clone(),
            job_id: env.job_id,
            attempt: env.attempt,
            at: OffsetDateTime::now_utc(),
            certificate: Some(self.store.cert_info(p, previous_serial)),
            error: None,
        }
    }
}
