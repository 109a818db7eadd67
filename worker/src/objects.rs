//! Writes to the bucket. Only workers write (bundles, pointers, the
//! account record, pruning); every other part of certfleet reads through
//! [`Store`]'s typed reads. The trait keeps the writes beside the worker
//! while they use the same client, bucket and error mapping as the reads.

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use certfleet_common::storage::{ETag, StorageError, Store, sdk_error};
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
        let out = req.send().await.map_err(|e| sdk_error("put", key, e))?;
        Ok(ETag(out.e_tag().unwrap_or_default().to_string()))
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.client()
            .delete_object()
            .bucket(self.bucket())
            .key(key)
            .send()
            .await
            .map_err(|e| sdk_error("delete", key, e))?;
        Ok(())
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
                _ => Err(sdk_error("create bucket", self.bucket(), e)),
            },
        }
    }
}
