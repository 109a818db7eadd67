//! Driving one order from creation (or resumption) to a certificate.
//!
//! The order URL and the certificate key are stored in Redis
//! (`order:<name>`) the moment the order exists, so a redelivered job —
//! after a crash, a kill -9, a lost broker connection — resumes the same
//! order with `Account::order(url)` instead of opening another one against
//! the CA's limits. An order that turned invalid or that the CA no longer
//! knows is dropped and replaced by a new one.
//!
//! The record is written before the new-order request too, without a URL:
//! a request the CA may have acted on without its answer reaching us (a
//! timeout, a connection cut) leaves it behind, and the next try looks in
//! the account's orders list (RFC 8555 §7.1.2.1) for an order for exactly
//! these domains, pending or ready, before it asks for another. A CA that
//! lists no orders (Let's Encrypt's Boulder has no list, but reuses a
//! pending order for the same account and names by itself) gets a new
//! order as before.
//!
//! RFC 8555 §7.1.3 (order objects) and §7.4 (applying for issuance).

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use certfleet_common::KeyType;
use certfleet_common::csr::Csr;
use certfleet_common::domain::CertName;
use certfleet_common::redis_keys::tlsalpn01_answer;
use certfleet_common::seal::SealedKey;
use certfleet_common::secret::Secret;
use certfleet_common::storage::KeyScope;
use deadpool_redis::redis::AsyncCommands;

use instant_acme::{
    Account, AuthorizationStatus, CertificateIdentifier, ChallengeStatus, ChallengeType,
    Identifier, NewOrder, Order, OrderStatus, RetryPolicy,
};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::{Acme, acme_error, client};
use crate::error::{AcmeProblem, JobError};
use crate::keys;

/// How long an order record lives in Redis: ACME orders expire after about
/// a week (Let's Encrypt: 7 days), after which resuming is pointless.
const ORDER_TTL: Duration = Duration::from_secs(7 * 86_400);
/// How long a key authorization is served: longer than any validation.
const HTTP01_TTL: Duration = Duration::from_secs(3600);

/// Polling an order until it is ready or the certificate is issued. Starts
/// fast because a CA that validates at once (Pebble without delays, or a
/// cached authorization) answers within a few hundred ms; grows by half
/// each time so a slow CA (Let's Encrypt under load, Pebble's random
/// 0–15 s validation delay) costs few requests; gives up after two minutes
/// with a retryable error — the order record survives, and the next attempt
/// resumes the same order.
pub(crate) const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(100))
    .backoff(1.5)
    .timeout(Duration::from_secs(120));

/// Pages of the account's orders list read when looking for the order a
/// new-order request without an answer may have created.
const LIST_PAGES: usize = 20;
/// Orders (the newest listed within [`LIST_PAGES`]) fetched in that search.
const LIST_CHECK: usize = 16;

/// The order record in Redis.
#[derive(Debug, Serialize, Deserialize)]
struct OrderRecord {
    /// The order's URL; `None` while the new-order request is out, and left
    /// so when its answer never came.
    #[serde(default)]
    url: Option<String>,
    job_id: Uuid,
    domains: Vec<String>,
    key_type: KeyType,
    /// The key made for the order; none when the operator's CSR is ordered.
    #[serde(default)]
    key: Option<SealedKey>,
    created_at_ms: i64,
    /// The issuer whose order it is (empty in records of earlier builds:
    /// the first issuer's).
    #[serde(default)]
    issuer: String,
}

/// A page of an account's orders list.
#[derive(Deserialize)]
struct OrdersPage {
    orders: Vec<String>,
}

/// What the search needs of a listed order.
#[derive(Deserialize)]
struct ListedOrder {
    status: String,
    identifiers: Vec<ListedIdentifier>,
}

#[derive(Deserialize)]
struct ListedIdentifier {
    #[serde(rename = "type")]
    kind: String,
    value: String,
}

/// What [`Acme::obtain`] needs to know about the job.
pub(crate) struct Request<'a> {
    pub(crate) name: &'a CertName,
    pub(crate) job_id: Uuid,
    pub(crate) domains: &'a [String],
    pub(crate) key_type: KeyType,
    /// ARI identifier of the certificate being replaced (renewals).
    pub(crate) replaces: Option<&'a str>,
    /// How control of the names is proven.
    pub(crate) challenge: certfleet_common::ChallengeType,
    /// The ACME profile to order.
    pub(crate) profile: Option<&'a str>,
    /// The operator's CSR (`issue --csr`, `--key-file`): ordered as is,
    /// no key made.
    pub(crate) csr: Option<&'a Csr>,
    /// With it, the operator's key sealed for the name (`--key-file`).
    pub(crate) sealed_key: Option<&'a SealedKey>,
}

/// The private key of an obtained certificate, as it goes into the bundle.
pub(crate) enum ObtainedKey {
    /// Made for the order: sealed into the bundle for its version.
    Made(Secret<String>),
    /// Stored as it is: the operator's key sealed for the name or none (the
    /// operator's CSR), or a key sealed where it came from (a staged
    /// import, the bundle an earlier attempt stored). Workers never open it.
    Sealed(Option<SealedKey>, KeyScope),
}

/// A certificate and its key, straight from the CA.
pub(crate) struct Obtained {
    pub(crate) chain_pem: String,
    pub(crate) key: ObtainedKey,
    /// The ids of the key authorizations we published (http-01 tokens,
    /// tls-alpn-01 answers: [`certfleet_common::redis_keys::RedisKeys::answer`]).
    pub(crate) tokens: Vec<String>,
    /// Whether the order was resumed rather than created.
    pub(crate) resumed: bool,
    /// Whether the order carried `replaces` (ARI).
    pub(crate) replaced: bool,
}

fn seal_context(name: &CertName) -> String {
    format!("order:{name}")
}

fn is_gone(e: &JobError) -> bool {
    // The CA no longer has the order (expired, or a test CA restarted).
    matches!(e, JobError::Acme(p) if matches!(p.kind.as_str(), "malformed" | "unauthorized" | "accountDoesNotExist")
        || p.document["status"] == 404)
}

impl Acme {
    async fn load_record(&self, name: &CertName) -> Result<Option<OrderRecord>, JobError> {
        let mut c = self.state().conn().await?;
        let raw: Option<String> = c
            .get(self.state().keys().order(name))
            .await
            .map_err(certfleet_common::state::StateError::from)?;
        Ok(raw.and_then(|s| match serde_json::from_str(&s) {
            Ok(r) => Some(r),
            Err(e) => {
                warn!(%name, error = %e, "ignoring an unreadable order record");
                None
            }
        }))
    }

    async fn save_record(&self, name: &CertName, record: &OrderRecord) -> Result<(), JobError> {
        let json = serde_json::to_string(record)
            .map_err(|e| JobError::Crypto(format!("order record: {e}")))?;
        let mut c = self.state().conn().await?;
        let _: () = c
            .set_ex(self.state().keys().order(name), json, ORDER_TTL.as_secs())
            .await
            .map_err(certfleet_common::state::StateError::from)?;
        Ok(())
    }

    /// Forgets a name's order in flight.
    pub(crate) async fn drop_record(&self, name: &CertName) -> Result<(), JobError> {
        let mut c = self.state().conn().await?;
        let _: () = c
            .del(self.state().keys().order(name))
            .await
            .map_err(certfleet_common::state::StateError::from)?;
        Ok(())
    }

    /// Removes published key authorizations.
    pub(crate) async fn clear_tokens(&self, tokens: &[String]) -> Result<(), JobError> {
        if tokens.is_empty() {
            return Ok(());
        }
        self.local_answers().remove(tokens);
        let keys: Vec<String> = tokens
            .iter()
            .map(|t| self.state().keys().answer(t))
            .collect();
        let mut c = self.state().conn().await?;
        let _: () = c
            .del(keys)
            .await
            .map_err(certfleet_common::state::StateError::from)?;
        Ok(())
    }

    /// Resumes the stored order for this request, if there is a usable one.
    async fn resume(
        &self,
        req: &Request<'_>,
    ) -> Result<Option<(Order, Option<Secret<String>>)>, JobError> {
        let Some(record) = self.load_record(req.name).await? else {
            return Ok(None);
        };
        if !record.issuer.is_empty() && record.issuer != self.name() {
            // Another CA's order (this job fell back from it, or back to
            // it): a new order here replaces the record.
            return Ok(None);
        }
        if record.domains != req.domains
            || record.key_type != req.key_type
            || record.key.is_some() == req.csr.is_some()
        {
            info!(name = %req.name, "stored order is for other domains or another key; replacing it");
            self.drop_record(req.name).await?;
            return Ok(None);
        }
        let key = match &record.key {
            Some(sealed) => Some(
                self.store()
                    .sealer()
                    .open(sealed, &seal_context(req.name))?,
            ),
            None => None,
        };
        let account = self.account().await?;
        let Some(url) = record.url.clone() else {
            // An earlier try's new-order request got no answer.
            return match self.find_order(&account, req.domains).await? {
                Some(order) => {
                    self.metrics().jobs.orders_found.inc();
                    info!(name = %req.name, url = %order.url(), "found the order an unanswered new-order request created; resuming it");
                    let record = OrderRecord {
                        url: Some(order.url().to_string()),
                        ..record
                    };
                    self.save_record(req.name, &record).await?;
                    Ok(Some((order, key)))
                }
                None => {
                    info!(name = %req.name, "no order from an unanswered new-order request; creating a new one");
                    self.drop_record(req.name).await?;
                    Ok(None)
                }
            };
        };
        match account.order(url.clone()).await.map_err(acme_error) {
            Ok(order) => {
                self.metrics().jobs.orders_resumed.inc();
                info!(name = %req.name, %url, "resuming stored order");
                Ok(Some((order, key)))
            }
            Err(e) if is_gone(&e) => {
                info!(name = %req.name, error = %e, "stored order is gone; creating a new one");
                self.drop_record(req.name).await?;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    async fn create(
        &self,
        req: &Request<'_>,
    ) -> Result<(Order, Option<Secret<String>>, bool), JobError> {
        let account = self.account().await?;
        if let Some(profile) = req.profile {
            // The CA lists its profiles in its directory: a name it does not
            // offer would be refused by it, for every retry alike.
            let mut offered: Vec<String> = account.profiles().map(|p| p.name.to_string()).collect();
            offered.sort();
            if !offered.iter().any(|o| o == profile) {
                return Err(JobError::Invalid(if offered.is_empty() {
                    format!("profile {profile:?}: this CA offers no profiles")
                } else {
                    format!("profile {profile:?}: this CA offers {}", offered.join(", "))
                }));
            }
        }
        self.limiter()
            .before_new_order(req.domains, req.replaces.is_some())
            .await?;
        let key = match req.csr {
            Some(_) => None,
            None => Some(keys::generate(req.key_type)?),
        };
        let identifiers: Vec<Identifier> = req
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        // Recorded before the request: if its answer never comes, the next
        // try looks for the order the CA may have created (see the top).
        let mut record = OrderRecord {
            url: None,
            job_id: req.job_id,
            domains: req.domains.to_vec(),
            key_type: req.key_type,
            key: match &key {
                Some(key) => Some(
                    self.store()
                        .sealer()
                        .seal(key.expose(), &seal_context(req.name))?,
                ),
                None => None,
            },
            created_at_ms: certfleet_common::now_ms(),
            issuer: self.name().to_string(),
        };
        self.save_record(req.name, &record).await?;
        let replaces = req.replaces.and_then(ari_identifier);
        let plain = || {
            let order = NewOrder::new(&identifiers);
            match req.profile {
                Some(p) => order.profile(p),
                None => order,
            }
        };
        let created = match replaces {
            Some(id) => match account.new_order(&plain().replaces(id)).await {
                Ok(o) => Ok((o, true)),
                // No ARI at this CA: an ordinary order.
                Err(instant_acme::Error::Unsupported(_)) => {
                    account.new_order(&plain()).await.map(|o| (o, false))
                }
                Err(e) => Err(e),
            },
            None => account.new_order(&plain()).await.map(|o| (o, false)),
        };
        let (order, replaced) = match created.map_err(acme_error) {
            Ok(created) => created,
            Err(e) => {
                // The CA answered no: it created nothing to look for later.
                if matches!(e, JobError::Acme(_) | JobError::Invalid(_)) {
                    self.drop_record(req.name).await?;
                }
                return Err(e);
            }
        };
        self.metrics().jobs.orders_created.inc();
        record.url = Some(order.url().to_string());
        self.save_record(req.name, &record).await?;
        debug!(name = %req.name, url = %order.url(), "order created");
        Ok((order, key, replaced))
    }

    /// The account's orders list URL (RFC 8555 §7.1.2.1), read once from
    /// the account object; `None` when the CA offers none.
    async fn orders_url(&self, account: &Account) -> Result<Option<String>, JobError> {
        if let Some(url) = self.orders_url.get() {
            return Ok(url.clone());
        }
        let raw = client::post_as_get(account, account.id())
            .await
            .map_err(acme_error)?;
        let url = serde_json::from_slice::<serde_json::Value>(&raw.body)
            .ok()
            .and_then(|v| v.get("orders")?.as_str().map(str::to_owned));
        let _ = self.orders_url.set(url.clone());
        Ok(url)
    }

    /// An order of this account for exactly `domains`, pending or ready,
    /// among the newest [`LIST_CHECK`] listed in the first [`LIST_PAGES`]
    /// pages of its orders list. `None` when there is none, or the CA lists
    /// no orders or refuses the list; a transport error is an error (the
    /// try is retried with the record kept).
    async fn find_order(
        &self,
        account: &Account,
        domains: &[String],
    ) -> Result<Option<Order>, JobError> {
        let Some(mut page_url) = self.orders_url(account).await? else {
            return Ok(None);
        };
        let mut newest: VecDeque<String> = VecDeque::with_capacity(LIST_CHECK);
        for _ in 0..LIST_PAGES {
            let raw = match client::post_as_get(account, &page_url).await {
                Ok(raw) => raw,
                Err(instant_acme::Error::Api(p)) => {
                    debug!(problem = ?p.detail, "the CA refused its orders list");
                    return Ok(None);
                }
                Err(e) => return Err(acme_error(e)),
            };
            let Ok(page) = serde_json::from_slice::<OrdersPage>(&raw.body) else {
                warn!("the CA's orders list is not a list of orders; not searching it");
                return Ok(None);
            };
            for url in page.orders {
                if newest.len() == LIST_CHECK {
                    newest.pop_front();
                }
                newest.push_back(url);
            }
            match client::link(&raw.headers, "next") {
                Some(next) => page_url = next,
                None => break,
            }
        }
        let wanted: BTreeSet<String> = domains.iter().map(|d| d.to_ascii_lowercase()).collect();
        for url in newest.into_iter().rev() {
            let Ok(raw) = client::post_as_get(account, &url).await else {
                continue;
            };
            let Ok(listed) = serde_json::from_slice::<ListedOrder>(&raw.body) else {
                continue;
            };
            let names: BTreeSet<String> = listed
                .identifiers
                .iter()
                .filter(|i| i.kind == "dns")
                .map(|i| i.value.to_ascii_lowercase())
                .collect();
            if names == wanted
                && names.len() == listed.identifiers.len()
                && matches!(listed.status.as_str(), "pending" | "ready")
            {
                return account.order(url).await.map(Some).map_err(acme_error);
            }
        }
        Ok(None)
    }

    /// Publishes key authorizations where every worker serves them (http-01
    /// by token, tls-alpn-01 by domain: Redis, and this worker's memory) and
    /// tells the CA to validate. Returns the answers' ids, to clear them.
    async fn solve_served(
        &self,
        order: &mut Order,
        kind: certfleet_common::ChallengeType,
    ) -> Result<Vec<String>, JobError> {
        let acme_kind = match kind {
            certfleet_common::ChallengeType::TlsAlpn01 => ChallengeType::TlsAlpn01,
            _ => ChallengeType::Http01,
        };
        let mut ids = Vec::new();
        let mut authzs = order.authorizations();
        while let Some(authz) = authzs.next().await {
            let mut authz = authz.map_err(acme_error)?;
            if !to_solve(authz.status, authz.identifier().identifier)? {
                continue;
            }
            let name = identifier_name(authz.identifier().identifier);
            let mut challenge = authz.challenge(acme_kind.clone()).ok_or_else(|| {
                JobError::Invalid(format!("the CA offers no {kind} challenge for {name}"))
            })?;
            let key_auth = challenge.key_authorization();
            let id = match kind {
                certfleet_common::ChallengeType::TlsAlpn01 => tlsalpn01_answer(&name),
                _ => challenge.token.clone(),
            };
            self.local_answers()
                .insert(&id, key_auth.as_str(), HTTP01_TTL);
            {
                let mut c = self.state().conn().await?;
                let _: () = c
                    .set_ex(
                        self.state().keys().answer(&id),
                        key_auth.as_str(),
                        HTTP01_TTL.as_secs(),
                    )
                    .await
                    .map_err(certfleet_common::state::StateError::from)?;
            }
            ids.push(id);
            // A resumed order may have told the CA already (a worker died
            // after `set_ready`): the answer is back in Redis, that is enough.
            if challenge.status == ChallengeStatus::Pending {
                challenge.set_ready().await.map_err(acme_error)?;
            }
        }
        Ok(ids)
    }

    /// Presents every pending authorization's dns-01 value (recorded in
    /// Redis first), waits until every authoritative nameserver serves
    /// them all, then tells the CA to validate.
    async fn solve_dns01(&self, order: &mut Order, req: &Request<'_>) -> Result<(), JobError> {
        let solver = self.dns01().ok_or_else(|| {
            JobError::Invalid(
                "this worker has no dns-01 provider (set CERTFLEET_DNS01_PROVIDER, or bind only http-01 jobs with CERTFLEET_WORKER_BINDINGS)".into(),
            )
        })?;
        let mut pending = Vec::new();
        let mut placements = Vec::new();
        let mut authzs = order.authorizations();
        while let Some(authz) = authzs.next().await {
            let mut authz = authz.map_err(acme_error)?;
            if !to_solve(authz.status, authz.identifier().identifier)? {
                continue;
            }
            let domain = identifier_name(authz.identifier().identifier);
            let challenge = authz.challenge(ChallengeType::Dns01).ok_or_else(|| {
                JobError::Invalid(format!("the CA offers no dns-01 challenge for {domain}"))
            })?;
            let value = challenge.key_authorization().dns_value();
            let placement = solver.place(&domain, &value).await?;
            solver
                .present(self.state(), req.name, &placement)
                .await
                .map_err(JobError::from)?;
            placements.push(placement);
            // A resumed order may have told the CA already (a worker died
            // after `set_ready`): presenting again is enough.
            if challenge.status == ChallengeStatus::Pending {
                pending.push(challenge.url.clone());
            }
        }
        let waiting = tokio::time::Instant::now();
        solver.wait(&placements).await?;
        if let Some(p) = placements.first() {
            self.metrics()
                .acme
                .propagated(&p.provider, waiting.elapsed().as_secs_f64());
        }
        let mut authzs = order.authorizations();
        while let Some(authz) = authzs.next().await {
            let mut authz = authz.map_err(acme_error)?;
            if let Some(mut challenge) = authz.challenge(ChallengeType::Dns01)
                && pending.contains(&challenge.url)
            {
                challenge.set_ready().await.map_err(acme_error)?;
            }
        }
        Ok(())
    }

    /// Removes the dns-01 values recorded for the request's name, once the
    /// CA has decided (valid or invalid) or the order is gone.
    async fn clean_dns01(&self, req: &Request<'_>) {
        if let Some(solver) = self.dns01() {
            solver.cleanup(self.state(), req.name).await;
        }
    }

    /// Finds out why an order went invalid, and counts failed validations.
    async fn why_invalid(&self, order: &mut Order) -> JobError {
        let order_problem = order.state().error.clone();
        let mut authzs = order.authorizations();
        while let Some(Ok(mut authz)) = authzs.next().await {
            let _ = authz.refresh().await;
            if authz.status != AuthorizationStatus::Invalid {
                continue;
            }
            let name = identifier_name(authz.identifier().identifier);
            if let Err(e) = self.limiter().failed_validation(&name).await {
                warn!(error = %e, "could not record a failed validation");
            }
            if let Some(problem) = authz.challenges.iter().find_map(|c| c.error.clone()) {
                return JobError::Validation {
                    identifier: name,
                    problem: AcmeProblem::from_problem(&problem, None),
                };
            }
        }
        // No authorization said why (one could not be read): the order's
        // own problem. An order goes invalid when an authorization fails
        // (or finalization is refused), so a wrong or missing answer there
        // is a failed validation, which a new order may pass, not a
        // permanent refusal (the soak saw 50 jobs dead-lettered as
        // `unauthorized` after Redis lost their http-01 answers).
        match order_problem {
            Some(p) => JobError::Validation {
                identifier: "an authorization of the order".into(),
                problem: AcmeProblem::from_problem(&p, None),
            },
            None => JobError::OrderInvalid("no reason given by the CA".into()),
        }
    }

    /// Gets a certificate for the request: resumes the stored order or
    /// creates one, answers its challenges, finalizes, downloads the chain.
    pub(crate) async fn obtain(&self, req: &Request<'_>) -> Result<Obtained, JobError> {
        if req.challenge == certfleet_common::ChallengeType::TlsAlpn01 && !self.tlsalpn01() {
            return Err(JobError::Invalid(
                "this worker answers no tls-alpn-01 (set CERTFLEET_TLSALPN01_LISTEN, or bind only other challenges with CERTFLEET_WORKER_BINDINGS)".into(),
            ));
        }
        let (mut order, key, resumed, replaced) = match self.resume(req).await? {
            Some((order, key)) => (order, key, true, false),
            None => {
                let (order, key, replaced) = self.create(req).await?;
                (order, key, false, replaced)
            }
        };
        let mut tokens = Vec::new();
        let dns01 = req.challenge == certfleet_common::ChallengeType::Dns01;
        loop {
            let status = order.state().status;
            match status {
                OrderStatus::Pending => {
                    if dns01 {
                        if let Err(e) = self.solve_dns01(&mut order, req).await {
                            // A value the CA will never look at again goes
                            // now; a retry presents it anew.
                            self.clean_dns01(req).await;
                            return Err(e);
                        }
                    } else {
                        tokens.extend(self.solve_served(&mut order, req.challenge).await?);
                    }
                    // instant-acme returns the order's problem as an error
                    // when the order went invalid: that is a failed
                    // validation (`why_invalid` tells which), not a refusal
                    // of the request (the soak saw jobs dead-lettered as
                    // `unauthorized` after Redis lost their http-01 answers).
                    let polled = match order.poll_ready(&POLL).await {
                        Err(instant_acme::Error::Api(_))
                            if order.state().status == OrderStatus::Invalid =>
                        {
                            Ok(OrderStatus::Invalid)
                        }
                        other => other.map_err(acme_error),
                    };
                    // Once the CA has decided; not while it may still be
                    // validating (a poll that timed out is retried).
                    if dns01 && matches!(&polled, Ok(s) if *s != OrderStatus::Pending) {
                        self.clean_dns01(req).await;
                    }
                    match polled? {
                        OrderStatus::Invalid => {
                            let e = self.why_invalid(&mut order).await;
                            self.drop_record(req.name).await?;
                            let _ = self.clear_tokens(&tokens).await;
                            return Err(e);
                        }
                        _ => continue,
                    }
                }
                OrderStatus::Ready => {
                    if dns01 {
                        // Validated (maybe by an attempt that died since):
                        // whatever any attempt presented can go.
                        self.clean_dns01(req).await;
                    }
                    let csr = match (&key, req.csr) {
                        (_, Some(csr)) => csr.der.clone(),
                        (Some(key), None) => keys::csr(key, req.domains)?,
                        (None, None) => {
                            return Err(JobError::Crypto(
                                "the order has neither a key nor a CSR".into(),
                            ));
                        }
                    };
                    order.finalize_csr(&csr).await.map_err(acme_error)?;
                }
                OrderStatus::Processing | OrderStatus::Valid => {
                    let chain_pem = order.poll_certificate(&POLL).await.map_err(acme_error)?;
                    if let Err(e) = self.limiter().issued(req.domains, replaced).await {
                        warn!(error = %e, "could not count the certificate against the CA's limits");
                    }
                    let key = match key {
                        Some(key) => ObtainedKey::Made(key),
                        None => ObtainedKey::Sealed(req.sealed_key.cloned(), KeyScope::Name),
                    };
                    return Ok(Obtained {
                        chain_pem,
                        key,
                        tokens,
                        resumed,
                        replaced,
                    });
                }
                OrderStatus::Invalid => {
                    if dns01 {
                        self.clean_dns01(req).await;
                    }
                    let e = self.why_invalid(&mut order).await;
                    self.drop_record(req.name).await?;
                    return Err(e);
                }
            }
        }
    }

    /// The CA's suggested renewal window for a certificate, when it offers
    /// ARI; `None` otherwise (or when asking fails: the fallback is safe).
    /// With it, how long the CA asks to wait before asking again.
    pub(crate) async fn renewal_window(
        &self,
        ari_id: &str,
    ) -> Option<(crate::renewal::Window, Duration)> {
        let id = ari_identifier(ari_id)?;
        let account = self.account().await.ok()?;
        match account.renewal_info(&id).await {
            Ok((info, retry_after)) => Some((
                crate::renewal::Window {
                    start: info.suggested_window.start,
                    end: info.suggested_window.end,
                },
                retry_after,
            )),
            Err(instant_acme::Error::Unsupported(_)) => None,
            Err(e) => {
                debug!(error = %e, "renewal info unavailable; using the lifetime rule");
                None
            }
        }
    }
}

/// Parses a stored ARI identifier (`AKI.serial`, base64url).
fn ari_identifier(id: &str) -> Option<CertificateIdentifier<'static>> {
    let quoted = serde_json::to_string(id).ok()?;
    let parsed: CertificateIdentifier<'_> = serde_json::from_str(&quoted).ok()?;
    Some(parsed.into_owned())
}

/// Whether an authorization still needs its challenge solved: no when it
/// is valid already (a resumed order, a reused authorization), yes when
/// pending, and an error for any other state.
fn to_solve(status: AuthorizationStatus, id: &Identifier) -> Result<bool, JobError> {
    match status {
        AuthorizationStatus::Valid => Ok(false),
        AuthorizationStatus::Pending => Ok(true),
        other => Err(JobError::OrderInvalid(format!(
            "authorization for {} is {other:?}",
            identifier_name(id)
        ))),
    }
}

fn identifier_name(id: &Identifier) -> String {
    match id {
        Identifier::Dns(d) => d.clone(),
        other => format!("{other:?}"),
    }
}
