//! The worker's maintenance of the bucket: deletes (pruning), the start-up
//! check of conditional writes, creating a missing bucket. Object writes
//! themselves are [`Store::put_json`] (common: `keys reseal` rewrites
//! bundles too).

use aws_sdk_s3::error::ProvideErrorMetadata;
use certfleet_common::storage::{ETag, StorageError, Store};

pub use certfleet_common::storage::Condition;

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
