//! Writes to the bucket. Only workers write (bundles, pointers, the
//! account record, pruning); every other part of certfleet reads through
//! [`Store`]'s typed reads. The trait keeps the writes beside the worker
//! while they use the same client, bucket and error mapping as the reads.

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use certfleet_common::storage::{ETag, StorageError, Store};
use serde::Serialize;

/// A write condition.
#[derive(Debug, Clone, Copy)]
pub enum Condition<'a> {
    /// Unconditional.
    None,
    /// Only if the key does not exist (`If-None-Match: *`).
    Absent,
    /// Only if the object still has this ETag (`If-Match`).
    Matches(&'a ETag),
}

/// The bucket is not usable by a worker: named with its endpoint.
#[derive(Debug, thiserror::Error)]
#[error("object storage: bucket {bucket} at {endpoint}: {what}")]
pub struct StorageCheckError {
    /// The bucket.
    pub bucket: String,
    /// The endpoint.
    pub endpoint: String,
    /// What is wrong.
    pub what: String,
}

/// The writes a worker makes on a [`Store`].
pub trait ObjectWrites {
    /// Writes a JSON object. `Condition::Absent` refuses to overwrite,
    /// `Condition::Matches` only replaces the version that was read.
    ///
    /// # Errors
    /// [`StorageError::Conflict`] when the condition fails, or unavailable.
    fn put_json<T: Serialize + Sync>(
        &self,
        key: &str,
        value: &T,
        condition: Condition<'_>,
    ) -> impl Future<Output = Result<ETag, StorageError>> + Send;

    /// Deletes an object (a missing one is fine).
    ///
    /// # Errors
    /// Unavailable.
    fn delete(&self, key: &str) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Checks, before the worker takes any job, that the bucket exists, is
    /// writable with these credentials, and that the endpoint honours
    /// `If-None-Match: *` and `If-Match` (the pointer's fencing relies on
    /// both): writes, rewrites and deletes one probe object under `key`.
    ///
    /// # Errors
    /// [`StorageCheckError`], naming bucket and endpoint.
    fn check(&self, key: &str) -> impl Future<Output = Result<(), StorageCheckError>> + Send;

    /// Creates the bucket if it does not exist (local stacks and tests).
    ///
    /// # Errors
    /// The service refused for another reason than "already exists".
    fn ensure_bucket(&self) -> impl Future<Output = Result<(), StorageError>> + Send;
}

impl ObjectWrites for Store {
    async fn put_json<T: Serialize + Sync>(
        &self,
        key: &str,
        value: &T,
        condition: Condition<'_>,
    ) -> Result<ETag, StorageError> {
        let body = serde_json::to_vec_pretty(value).map_err(|e| StorageError::Corrupt {
            key: key.to_string(),
            what: "JSON value",
            detail: e.to_string(),
        })?;
        let mut req = self
            .client()
            .put_object()
            .bucket(self.bucket())
            .key(key)
            .content_type("application/json")
            .body(ByteStream::from(body));
        req = match condition {
            Condition::None => req,
            Condition::Absent => req.if_none_match("*"),
            Condition::Matches(etag) => req.if_match(etag.0.clone()),
        };
        let out = req
            .send()
            .await
            .map_err(|e| self.sdk_error("put", key, e))?;
        match out.e_tag() {
            Some(tag) if !tag.trim_matches('"').is_empty() => Ok(ETag(tag.to_string())),
            _ => Err(StorageError::Unavailable {
                op: "put",
                key: key.to_string(),
                detail: "the answer carries no ETag (conditional writes cannot work)".into(),
            }),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.client()
            .delete_object()
            .bucket(self.bucket())
            .key(key)
            .send()
            .await
            .map_err(|e| self.sdk_error("delete", key, e))?;
        Ok(())
    }

    async fn check(&self, key: &str) -> Result<(), StorageCheckError> {
        let fail = |what: String| StorageCheckError {
            bucket: self.bucket().to_string(),
            endpoint: self.endpoint().to_string(),
            what,
        };
        let probe = serde_json::json!({ "probe": "certfleet-worker start-up check" });
        let first = self
            .put_json(key, &probe, Condition::Absent)
            .await
            .map_err(|e| fail(format!("cannot write {key}: {e}")))?;
        let result = async {
            match self.put_json(key, &probe, Condition::Absent).await {
                Err(StorageError::Conflict(_)) => {}
                Ok(_) => {
                    return Err(fail(
                        "the endpoint ignores If-None-Match: * (a second create of one key succeeded)".into(),
                    ));
                }
                Err(e) => return Err(fail(format!("conditional create: {e}"))),
            }
            let stale = ETag("\"00000000000000000000000000000000\"".into());
            match self.put_json(key, &probe, Condition::Matches(&stale)).await {
                Err(StorageError::Conflict(_)) => {}
                Ok(_) => {
                    return Err(fail(
                        "the endpoint ignores If-Match (a write with a stale ETag succeeded)".into(),
                    ));
                }
                Err(e) => return Err(fail(format!("conditional replace: {e}"))),
            }
            self.put_json(key, &probe, Condition::Matches(&first))
                .await
                .map_err(|e| fail(format!("replace with the current ETag: {e}")))?;
            Ok(())
        }
        .await;
        if let Err(e) = self.delete(key).await {
            tracing::warn!(key, error = %e, "cannot delete the start-up probe");
        }
        result
    }

    async fn ensure_bucket(&self) -> Result<(), StorageError> {
        match self
            .client()
            .create_bucket()
            .bucket(self.bucket())
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match e.code() {
                Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists") => Ok(()),
                _ => Err(self.sdk_error("create bucket", self.bucket(), e)),
            },
        }
    }
}
