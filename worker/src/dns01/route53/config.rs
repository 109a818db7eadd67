//! Settings of the Route 53 provider.

use std::time::Duration;

use crate::dns01::http::Secret;

/// Static AWS credentials.
#[derive(Debug, Clone)]
pub struct AwsStaticCredentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: Secret,
    /// Session token of temporary credentials.
    pub session_token: Option<Secret>,
}

/// Settings of a [`Route53Provider`](super::Route53Provider).
#[derive(Debug, Clone)]
pub struct Route53Config {
    /// Region for signing (Route 53 is global; `us-east-1`).
    pub region: String,
    /// The hosted zone to write to; `None` looks it up by the zone's name.
    pub hosted_zone_id: Option<String>,
    /// Static keys; `None` uses the standard chain (environment, profile, web identity,
    /// container and instance metadata).
    pub credentials: Option<AwsStaticCredentials>,
    /// Endpoint override (`http://127.0.0.1:9000` for moto); `None` is AWS.
    pub endpoint_url: Option<String>,
    /// TTL of a TXT set this provider creates (seconds).
    pub ttl: u32,
    /// Time allowed for one API call (the SDK's own retries included).
    pub timeout: Duration,
    /// Wait for the change to be `INSYNC` on Route 53's servers before present returns.
    pub wait_for_sync: bool,
    /// Longest such wait; then present fails as retryable (presenting again is cheap).
    pub sync_timeout: Duration,
    /// Propagation wait this backend wants, if not the caller's default.
    pub propagation_timeout: Option<Duration>,
}

impl Route53Config {
    /// Defaults: us-east-1, zone looked up, standard credentials, AWS endpoint, TTL 10,
    /// 30 s per call, wait up to 120 s for INSYNC.
    pub fn new() -> Self {
        Self {
            region: "us-east-1".to_owned(),
            hosted_zone_id: None,
            credentials: None,
            endpoint_url: None,
            ttl: 10,
            timeout: Duration::from_secs(30),
            wait_for_sync: true,
            sync_timeout: Duration::from_secs(120),
            propagation_timeout: None,
        }
    }
}

impl Default for Route53Config {
    fn default() -> Self {
        Self::new()
    }
}
