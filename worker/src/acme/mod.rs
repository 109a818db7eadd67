//! The fleet's ACME account and the orders it places.
//!
//! One account per CA directory serves the whole fleet. Its credentials
//! live in S3 (`accounts/<hash>.json`, the private key sealed when an
//! encryption key is configured); the first worker that finds none creates
//! it under a Redis lock while the others wait for the record to appear, so
//! two workers starting together never register two accounts.

pub(crate) mod client;
pub(crate) mod order;

use std::time::Duration;

use crate::config::AcmeConfig;
use certfleet_common::seal::SealedKey;
use certfleet_common::state::{COMPARE_AND_DELETE, State};
use certfleet_common::storage::Store;

use crate::objects::{Condition, ObjectWrites as _};
use deadpool_redis::redis;
use instant_acme::{Account, AccountCredentials, ExternalAccountKey, NewAccount};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;
use tracing::{info, warn};

use crate::error::{AcmeProblem, JobError};
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use client::AcmeHttp;

/// How long a worker waits for another to finish creating the account.
const ACCOUNT_WAIT: Duration = Duration::from_secs(60);

/// The account record in S3.
#[derive(Debug, Serialize, Deserialize)]
struct AccountRecord {
    schema: String,
    directory: String,
    /// `AccountCredentials` JSON (contains the account key), sealed.
    credentials: SealedKey,
}

/// The account's short id (the hash in its S3 key), for Redis keys.
fn account_subject(account_key: &str) -> String {
    account_key
        .rsplit('/')
        .next()
        .unwrap_or("account")
        .trim_end_matches(".json")
        .to_string()
}

/// Maps an instant-acme error into a job error.
pub(crate) fn acme_error(e: instant_acme::Error) -> JobError {
    match e {
        instant_acme::Error::Api(p) => {
            JobError::Acme(AcmeProblem::from_problem(&p, client::retry_after()))
        }
        instant_acme::Error::Timeout(_) => {
            JobError::AcmeTransport("timed out waiting for the CA to update the order".into())
        }
        instant_acme::Error::Unsupported(what) => {
            JobError::Invalid(format!("the CA does not support {what}"))
        }
        other => JobError::AcmeTransport(certfleet_common::error::chain(&other)),
    }
}

/// ACME for one directory.
pub(crate) struct Acme {
    cfg: AcmeConfig,
    http: AcmeHttp,
    store: Store,
    state: State,
    account: RwLock<Option<Account>>,
    /// The account's orders list URL, once read (`None`: the CA has none).
    orders_url: tokio::sync::OnceCell<Option<String>>,
    account_key: String,
    limiter: RateLimiter,
    metrics: Metrics,
    local_answers: std::sync::Arc<crate::http01::LocalAnswers>,
    /// The dns-01 solver, when this worker has a DNS provider.
    dns01: Option<std::sync::Arc<crate::dns01::Solver>>,
    /// Whether this worker answers tls-alpn-01 (CERTFLEET_TLSALPN01_LISTEN).
    tlsalpn01: bool,
}

impl Acme {
    pub(crate) fn new(
        cfg: AcmeConfig,
        store: Store,
        state: State,
        metrics: Metrics,
        local_answers: std::sync::Arc<crate::http01::LocalAnswers>,
        dns01: Option<std::sync::Arc<crate::dns01::Solver>>,
    ) -> Result<Self, client::ClientError> {
        let http = AcmeHttp::new(
            cfg.ca_certs.as_deref(),
            cfg.directory.scheme() == "http",
            metrics.acme.clone(),
        )?;
        let account_key = store.keys().account(cfg.directory.as_str());
        let limiter = RateLimiter::new(
            state.clone(),
            account_subject(&account_key),
            crate::ratelimit::Limits {
                orders: cfg.rate_orders,
                failed_validations: cfg.rate_failed_validations,
                certs_per_domain: cfg.rate_certs_per_domain,
                duplicates: cfg.rate_duplicates,
            },
        );
        Ok(Self {
            cfg,
            http,
            store,
            state,
            account: RwLock::new(None),
            orders_url: tokio::sync::OnceCell::new(),
            account_key,
            limiter,
            metrics,
            local_answers,
            dns01,
            tlsalpn01: false,
        })
    }

    /// Marks tls-alpn-01 as answered by this worker.
    pub(crate) fn serving_tlsalpn01(mut self, on: bool) -> Self {
        self.tlsalpn01 = on;
        self
    }

    pub(crate) fn tlsalpn01(&self) -> bool {
        self.tlsalpn01
    }

    pub(crate) fn dns01(&self) -> Option<&crate::dns01::Solver> {
        self.dns01.as_deref()
    }

    pub(crate) fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    pub(crate) fn local_answers(&self) -> &crate::http01::LocalAnswers {
        &self.local_answers
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub(crate) fn state(&self) -> &State {
        &self.state
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// The issuer's name (`CERTFLEET_ACME_ISSUERS`).
    pub(crate) fn name(&self) -> &str {
        &self.cfg.name
    }

    /// The directory host, for logs and metrics.
    pub(crate) fn ca(&self) -> &str {
        self.cfg.directory.host_str().unwrap_or("ca")
    }

    fn seal_context(&self) -> String {
        format!("account:{}", self.cfg.directory)
    }

    /// The fleet's account, loaded or created on first use.
    pub(crate) async fn account(&self) -> Result<Account, JobError> {
        if let Some(a) = self.account.read().await.as_ref() {
            return Ok(a.clone());
        }
        let mut slot = self.account.write().await;
        if let Some(a) = slot.as_ref() {
            return Ok(a.clone());
        }
        let account = self.load_or_create().await?;
        *slot = Some(account.clone());
        Ok(account)
    }

    /// Revokes a certificate (DER) through the fleet's account. A
    /// certificate the CA reports revoked already counts as revoked.
    ///
    /// # Errors
    /// The CA's problem, or no answer.
    pub(crate) async fn revoke(
        &self,
        cert_der: &[u8],
        reason: instant_acme::RevocationReason,
    ) -> Result<(), JobError> {
        let account = self.account().await?;
        let der = rustls_pki_types::CertificateDer::from(cert_der.to_vec());
        let request = instant_acme::RevocationRequest {
            certificate: &der,
            reason: Some(reason),
        };
        match account.revoke(&request).await.map_err(acme_error) {
            Err(JobError::Acme(p)) if p.kind == "alreadyRevoked" => Ok(()),
            other => other,
        }
    }

    /// Forgets the cached account (the CA no longer knows it) and its record.
    pub(crate) async fn reset_account(&self) {
        *self.account.write().await = None;
        warn!(
            ca = self.ca(),
            "the CA does not know our account; a new one will be created"
        );
        if let Err(e) = self.store.delete(&self.account_key).await {
            warn!(error = %e, "could not delete the stale account record");
        }
    }

    async fn load(&self) -> Result<Option<Account>, JobError> {
        let Some((record, _)) = self
            .store
            .get_json::<AccountRecord>(&self.account_key, "ACME account record")
            .await?
        else {
            return Ok(None);
        };
        let json = self
            .store
            .sealer()
            .open(&record.credentials, &self.seal_context())?;
        let creds: AccountCredentials = serde_json::from_str(json.expose())
            .map_err(|e| JobError::Invalid(format!("stored ACME account does not parse: {e}")))?;
        let account = Account::builder_with_http(Box::new(self.http.clone()))
            .from_credentials(creds)
            .await
            .map_err(acme_error)?;
        Ok(Some(account))
    }

    async fn load_or_create(&self) -> Result<Account, JobError> {
        if let Some(a) = self.load().await? {
            return Ok(a);
        }
        let lock_key = self
            .state
            .keys()
            .account_lock(&account_subject(&self.account_key));
        let token = uuid::Uuid::new_v4().to_string();
        let deadline = tokio::time::Instant::now() + ACCOUNT_WAIT;
        loop {
            let mut c = self.state.conn().await?;
            let got: Option<String> = redis::cmd("SET")
                .arg(&lock_key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(ACCOUNT_WAIT.as_millis() as u64)
                .query_async(&mut *c)
                .await
                .map_err(certfleet_common::state::StateError::from)?;
            drop(c);
            if got.is_some() {
                let result = self.create_locked().await;
                if let Ok(mut c) = self.state.conn().await {
                    let _: Result<i64, _> = redis::Script::new(COMPARE_AND_DELETE)
                        .key(&lock_key)
                        .arg(&token)
                        .invoke_async(&mut *c)
                        .await;
                }
                return result;
            }
            // Someone else is creating it: wait for the record.
            tokio::time::sleep(Duration::from_millis(250)).await;
            if let Some(a) = self.load().await? {
                return Ok(a);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(JobError::AcmeTransport(
                    "timed out waiting for another worker to create the ACME account".into(),
                ));
            }
        }
    }

    /// Creates the account; the caller holds the lock.
    async fn create_locked(&self) -> Result<Account, JobError> {
        // Take the lock, then check again (certmagic's obtainCert).
        if let Some(a) = self.load().await? {
            return Ok(a);
        }
        let contact = self.cfg.email.as_ref().map(|e| format!("mailto:{e}"));
        let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
        let eab = match &self.cfg.eab {
            Some(eab) => {
                use base64::Engine as _;
                let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(eab.hmac_key.expose().trim_end_matches('='))
                    .map_err(|_| {
                        JobError::Invalid("CERTFLEET_ACME_EAB_HMAC_KEY is not base64url".into())
                    })?;
                Some(ExternalAccountKey::new(eab.kid.clone(), &key))
            }
            None => None,
        };
        let (account, creds) = Account::builder_with_http(Box::new(self.http.clone()))
            .create(
                &NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.cfg.directory.to_string(),
                eab.as_ref(),
            )
            .await
            .map_err(acme_error)?;
        let json = serde_json::to_string(&creds)
            .map_err(|e| JobError::Crypto(format!("serializing account credentials: {e}")))?;
        let record = AccountRecord {
            schema: "certfleet.account.v1".into(),
            directory: self.cfg.directory.to_string(),
            credentials: self.store.sealer().seal(&json, &self.seal_context())?,
        };
        self.store
            .put_json(&self.account_key, &record, Condition::Absent)
            .await?;
        info!(
            ca = self.ca(),
            account = account.id(),
            "created the fleet's ACME account"
        );
        Ok(account)
    }
}

/// The fleet's CAs in the order they are tried (`CERTFLEET_ACME_ISSUERS`),
/// each with its own account, HTTP client and limits.
pub(crate) struct Issuers {
    list: Vec<Acme>,
    fallback_after: std::time::Duration,
}

impl Issuers {
    /// `list` must not be empty (the configuration has at least one).
    pub(crate) fn new(list: Vec<Acme>, fallback_after: std::time::Duration) -> Self {
        Self {
            list,
            fallback_after,
        }
    }

    /// The first issuer.
    pub(crate) fn primary(&self) -> &Acme {
        &self.list[0]
    }

    /// Every issuer's name, in order.
    pub(crate) fn names(&self) -> Vec<&str> {
        self.list.iter().map(Acme::name).collect()
    }

    /// The issuer called `name`; the first one for `None` or a name no
    /// longer configured (a certificate from a CA since removed).
    pub(crate) fn by_name(&self, name: Option<&str>) -> &Acme {
        name.and_then(|n| self.list.iter().find(|a| a.name() == n))
            .unwrap_or_else(|| self.primary())
    }

    /// The issuers to try for a job preferring `preferred`: it first, then
    /// the others in order.
    ///
    /// # Errors
    /// A preferred name that is no issuer's (the job fails, naming them).
    pub(crate) fn order(&self, preferred: Option<&str>) -> Result<Vec<&Acme>, JobError> {
        let Some(name) = preferred else {
            return Ok(self.list.iter().collect());
        };
        let first = self.list.iter().find(|a| a.name() == name).ok_or_else(|| {
            JobError::Invalid(format!(
                "no issuer named {name:?} (this worker has {})",
                self.names().join(", ")
            ))
        })?;
        Ok(std::iter::once(first)
            .chain(self.list.iter().filter(|a| a.name() != name))
            .collect())
    }

    /// Obtains a certificate from the first issuer that gives one: on a
    /// failure another CA may cure ([`JobError::another_ca_may_cure`]) the
    /// next issuer is tried at once (certmagic's behaviour); any other
    /// failure, or the last issuer's, is the job's. Returns the issuer too.
    pub(crate) async fn obtain(
        &self,
        req: &order::Request<'_>,
        preferred: Option<&str>,
    ) -> Result<(order::Obtained, &Acme), JobError> {
        let candidates = self.order(preferred)?;
        let last = candidates.len() - 1;
        for (i, acme) in candidates.iter().enumerate() {
            match Box::pin(acme.obtain(req)).await {
                Ok(obtained) => return Ok((obtained, acme)),
                Err(JobError::Acme(p)) if p.kind == "accountDoesNotExist" => {
                    acme.reset_account().await;
                    return Err(JobError::Acme(p));
                }
                Err(e) if i < last && e.another_ca_may_cure(self.fallback_after) => {
                    warn!(
                        issuer = acme.name(),
                        next = candidates[i + 1].name(),
                        error = %certfleet_common::error::chain(&e),
                        "this CA failed in a way another may cure; falling back"
                    );
                    acme.metrics().jobs.ca_fallbacks.inc();
                }
                Err(e) => return Err(e),
            }
        }
        Err(JobError::Invalid("no issuer configured".into()))
    }
}
