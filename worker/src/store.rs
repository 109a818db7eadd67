//! Writing a new version: bundle first, then the fenced pointer flip.
//!
//! 1. The bundle goes under its own key with `If-None-Match: *`; it can
//!    never overwrite another object (a second attempt of the same job
//!    finds its own bundle and carries on).
//! 2. The pointer is replaced only if (a) our lease is still held, (b) the
//!    pointer's fencing token is older than ours, and (c) the pointer is
//!    still the object we read (`If-Match` on its ETag). A worker that
//!    stalled past its lease can therefore never put an older certificate
//!    back over a newer one.
//! 3. Versions beyond the configured history are deleted afterwards; a
//!    failure there costs storage, never correctness.
//!
//! Two object writes per certificate (bundle and pointer), plus the pointer
//! read.

use certfleet_common::Pointer;
use certfleet_common::storage::{
    BUNDLE_SCHEMA, Bundle, ETag, KeyScope, POINTER_SCHEMA, StorageError, Store, version_id,
};
use certfleet_common::{CertName, ChallengeType, KeyType};
use time::OffsetDateTime;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::acme::order::ObtainedKey;
use crate::error::JobError;
use crate::keys::Issued;
use crate::lease::Lease;
use crate::metrics::ServiceMetrics;
use crate::objects::{Condition, ObjectWrites as _};

/// Everything that goes into a new version.
pub(crate) struct NewVersion<'a> {
    pub(crate) name: &'a CertName,
    pub(crate) domains: &'a [String],
    pub(crate) key_type: KeyType,
    pub(crate) challenge: ChallengeType,
    pub(crate) job_id: Uuid,
    pub(crate) issued: &'a Issued,
    pub(crate) key: &'a ObtainedKey,
    pub(crate) renew_at: OffsetDateTime,
    pub(crate) history: u32,
    /// The ACME profile it was ordered with.
    pub(crate) profile: Option<&'a str>,
    /// The issuer that issued it.
    pub(crate) issuer: &'a str,
    /// The issuer asked for, kept for renewals.
    pub(crate) ca: Option<&'a str>,
    /// The operator's CSR (base64 DER), kept for renewals.
    pub(crate) csr: Option<&'a str>,
}

/// Reads a pointer, counting the request.
pub(crate) async fn read_pointer(
    store: &Store,
    metrics: &ServiceMetrics,
    name: &CertName,
) -> Result<Option<(Pointer, ETag)>, StorageError> {
    metrics.s3("get");
    store.pointer(name).await
}

/// Stores a new version and makes it current. Returns the new pointer and
/// the one it replaced.
///
/// `read` is the pointer as read when the lease was taken. Its ETag guards
/// the flip (`If-Match`): if anyone wrote the pointer since, the write is
/// refused and the pointer read again, fencing token checked; otherwise no
/// second read is needed.
pub(crate) async fn store_version(
    store: &Store,
    metrics: &ServiceMetrics,
    lease: &Lease,
    read: Option<(Pointer, ETag)>,
    v: NewVersion<'_>,
) -> Result<(Pointer, Option<Pointer>), JobError> {
    let now = OffsetDateTime::now_utc();
    // From the certificate alone, so a retry writes the same key.
    let version = version_id(v.issued.not_before, &v.issued.serial);
    let bundle_key = store.keys().bundle(v.name, &version);
    let bundle = Bundle {
        schema: BUNDLE_SCHEMA.into(),
        name: v.name.clone(),
        version: version.clone(),
        cert_pem: v.issued.cert_pem.clone(),
        chain_pem: v.issued.chain_pem.clone(),
        key: match v.key {
            ObtainedKey::Made(pem) => Some(store.sealer().seal_bundle(
                v.name.as_str(),
                pem.expose(),
                &Bundle::seal_context(v.name, &version),
            )?),
            ObtainedKey::Sealed(key, _) => key.clone(),
        },
        key_scope: match v.key {
            ObtainedKey::Made(_) => KeyScope::Version,
            ObtainedKey::Sealed(_, scope) => *scope,
        },
        job_id: Some(v.job_id),
        issuer: Some(v.issuer.to_string()),
        revoked: None,
    };
    metrics.s3("put");
    match store
        .put_json(&bundle_key, &bundle, Condition::Absent)
        .await
    {
        Ok(_) => {}
        // Our own earlier attempt wrote it (the serial is in the key).
        Err(StorageError::Conflict(_)) => debug!(%bundle_key, "bundle already stored"),
        Err(e) => return Err(e.into()),
    }

    // Flip the pointer; retry a lost If-Match race a few times.
    let mut known = Some(read);
    for _ in 0..3 {
        let previous = match known.take() {
            Some(read) => read,
            None => read_pointer(store, metrics, v.name).await?,
        };
        if !lease.still_held().await? {
            return Err(JobError::LostLease(v.name.to_string()));
        }
        if let Some((p, _)) = &previous {
            if p.fence > lease.fence() {
                return Err(JobError::LostLease(v.name.to_string()));
            }
            if p.version == version {
                // An earlier attempt of this job got this far.
                return Ok((p.clone(), None));
            }
        }
        let (history, pruned) = match &previous {
            Some((p, _)) => {
                let mut h = vec![p.version.clone()];
                h.extend(p.history.iter().cloned());
                let keep = (v.history as usize).min(h.len());
                let pruned = h.split_off(keep);
                (h, pruned)
            }
            None => (Vec::new(), Vec::new()),
        };
        let pointer = Pointer {
            schema: POINTER_SCHEMA.into(),
            name: v.name.clone(),
            version: version.clone(),
            bundle_key: bundle_key.clone(),
            serial: v.issued.serial.clone(),
            domains: v.domains.to_vec(),
            key_type: v.key_type,
            not_before: v.issued.not_before,
            not_after: v.issued.not_after,
            renew_at: v.renew_at,
            job_id: v.job_id,
            fence: lease.fence(),
            history,
            updated_at: now,
            challenge: v.challenge,
            ari_id: v.issued.ari_id.clone(),
            profile: v.profile.map(str::to_string),
            issuer: Some(v.issuer.to_string()),
            ca: v.ca.map(str::to_string),
            revoked: None,
            csr: v.csr.map(str::to_string),
        };
        // Never fail open: a pointer read without an ETag cannot be
        // replaced conditionally, and an unconditional write could undo a
        // newer version.
        let condition = match &previous {
            Some((_, etag)) if !etag.0.trim_matches('"').is_empty() => Condition::Matches(etag),
            Some(_) => {
                return Err(JobError::Storage(StorageError::Unavailable {
                    op: "put",
                    key: store.keys().pointer(v.name),
                    detail: "the pointer was read without an ETag; refusing an unconditional replace (does the endpoint support conditional writes?)".into(),
                }));
            }
            None => Condition::Absent,
        };
        metrics.s3("put");
        match store
            .put_json(&store.keys().pointer(v.name), &pointer, condition)
            .await
        {
            Ok(_) => {
                for old in pruned {
                    metrics.s3("delete");
                    if let Err(e) = store.delete(&store.keys().bundle(v.name, &old)).await {
                        warn!(name = %v.name, version = %old, error = %e, "could not prune an old version");
                    }
                }
                return Ok((pointer, previous.map(|(p, _)| p)));
            }
            Err(StorageError::Conflict(_)) => {
                debug!(name = %v.name, "pointer changed under us; re-reading");
                continue;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(StorageError::Conflict(store.keys().pointer(v.name)).into())
}

/// Replaces the current pointer with `new` (same version, another record:
/// a revocation) under the same guards as a version flip: our lease is
/// held, the pointer's fence is not newer than ours, and it is still the
/// object that was read (`If-Match`).
///
/// # Errors
/// [`JobError::LostLease`] if another writer got there first; storage
/// errors.
pub(crate) async fn rewrite_pointer(
    store: &Store,
    metrics: &ServiceMetrics,
    lease: &Lease,
    read: &(Pointer, ETag),
    mut new: Pointer,
) -> Result<Pointer, JobError> {
    let (current, etag) = read;
    if !lease.still_held().await? || current.fence > lease.fence() {
        return Err(JobError::LostLease(current.name.to_string()));
    }
    new.fence = lease.fence();
    new.updated_at = OffsetDateTime::now_utc();
    metrics.s3("put");
    match store
        .put_json(
            &store.keys().pointer(&current.name),
            &new,
            Condition::Matches(etag),
        )
        .await
    {
        Ok(_) => Ok(new),
        // Changed since it was read: the job runs again and reads it anew.
        Err(StorageError::Conflict(_)) => Err(JobError::LostLease(current.name.to_string())),
        Err(e) => Err(e.into()),
    }
}

/// A bundle this job stored in an earlier attempt that never became
/// current (the pointer flip failed: Redis or S3 went away in between). A
/// retry adopts it instead of ordering a second certificate, which matters
/// most when Redis lost the order record too.
/// How long a bundle that never became current is kept for the job that
/// wrote it to adopt (its retries run for about 2.6 hours; renewals a day
/// later find nothing left behind).
const ORPHAN_GRACE: time::Duration = time::Duration::days(1);

/// The time in a bundle key's version id (`...versions/20261125T083000Z-<serial>.json`).
fn version_time(key: &str) -> Option<OffsetDateTime> {
    let file = key.rsplit('/').next()?;
    let stamp = file.get(..16)?;
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::PrimitiveDateTime::parse(stamp, &format)
        .ok()
        .map(time::PrimitiveDateTime::assume_utc)
}

pub(crate) async fn orphan_of_job(
    store: &Store,
    metrics: &ServiceMetrics,
    name: &CertName,
    job_id: Uuid,
    current: Option<&Pointer>,
) -> Result<Option<(Issued, ObtainedKey)>, JobError> {
    metrics.s3("list");
    let mut keys = store.list(&store.keys().versions(name)).await?;
    keys.sort();
    let now = OffsetDateTime::now_utc();
    for key in keys.iter().rev() {
        let known = current.is_some_and(|p| {
            p.bundle_key == *key
                || p.history
                    .iter()
                    .any(|v| store.keys().bundle(name, v) == *key)
        });
        if known {
            continue;
        }
        // A bundle that never became current and is older than the grace
        // period belongs to no job that can still adopt it: pruned here,
        // where the versions are listed anyway.
        if version_time(key).is_some_and(|at| at + ORPHAN_GRACE < now) {
            metrics.s3("delete");
            match store.delete(key).await {
                Ok(()) => info!(%key, "pruned a bundle that never became current"),
                Err(e) => warn!(%key, error = %e, "cannot prune an orphaned bundle"),
            }
            continue;
        }
        metrics.s3("get");
        let bundle = match store.bundle(key).await {
            Ok(b) => b,
            Err(e) => {
                warn!(%key, error = %e, "skipping an unreadable bundle");
                continue;
            }
        };
        if bundle.job_id != Some(job_id) {
            continue;
        }
        let issued = crate::keys::parse_chain(&format!("{}{}", bundle.cert_pem, bundle.chain_pem))?;
        // Adopted as stored: a worker need not (and with keys encrypted to
        // the webservers cannot) open the key.
        debug!(%key, "adopting the bundle an earlier attempt stored");
        return Ok(Some((
            issued,
            ObtainedKey::Sealed(bundle.key, bundle.key_scope),
        )));
    }
    Ok(None)
}

#[cfg(test)]
mod orphan_tests {
    use super::*;

    #[test]
    fn version_times_parse_from_bundle_keys() {
        let at = version_time("t/certs/a.example.com/versions/20261125T083000Z-3f1a9c.json");
        assert_eq!(at, Some(time::macros::datetime!(2026-11-25 08:30:00 UTC)));
        assert_eq!(version_time("t/certs/a/versions/junk.json"), None);
        assert_eq!(version_time(""), None);
    }
}
