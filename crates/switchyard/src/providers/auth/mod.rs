//! Credentials obtained at run time: a cached value per provider, renewed before it
//! expires, shared by every request.
//!
//! [`TokenCache`] is the one mechanism behind every source (Google service accounts,
//! authorized users and the metadata server, Entra ID, the AWS chain):
//! - reading a valid cached credential is an atomic load and a clone, no lock, no I/O;
//! - once less than min(5 min, a quarter of its lifetime) remains, the first request
//!   to notice starts one renewal in the background and goes on with the cached value;
//!   the others see the renewal running and do the same (single flight);
//! - only a request that finds no valid value waits, and every waiter shares the one
//!   fetch in flight;
//! - a failed renewal keeps the old value while it is valid and tries again after a
//!   pause that shrinks with the time left;
//! - an upstream that refuses a credential (401, or Bedrock's expired-token 403) gets
//!   one forced renewal, unless another request already replaced that value.
//!
//! Fetches run in their own task, so a request that gives up (timeout, client gone)
//! never cancels a renewal others wait on.

mod aws;
mod azure;
mod google;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use futures_util::StreamExt;
use http::{HeaderMap, StatusCode};
// Tokio's clock (the system's outside tests), so that tests can pause it.
use tokio::time::Instant;

use crate::config::{Config, Deployment, Provider, ProviderCredentials, ProviderKind, Secret};

/// Most bytes read of a token endpoint's answer (a token answer is a few KiB).
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;
/// Longest a single fetch may take, whoever waits on it.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Renewal starts when less than this remains, or a quarter of the lifetime if less.
const RENEW_AHEAD: Duration = Duration::from_secs(300);
/// Pause after a failed fetch when no valid value is left to fall back on.
const RETRY_WITHOUT_VALUE: Duration = Duration::from_secs(1);
/// Bounds of the pause after a failed renewal while the old value is still valid.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// A credential ready to be sent.
#[derive(Clone)]
pub enum Credential {
    /// An OAuth2 access token, sent as `Authorization: Bearer`.
    Bearer(Secret),
    /// AWS credentials for SigV4.
    Aws(aws_credential_types::Credentials),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Bearer(_) => f.write_str("Bearer(***)"),
            Credential::Aws(_) => f.write_str("Aws(***)"),
        }
    }
}

/// Why a credential could not be obtained. Messages never carry a secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("the token endpoint could not be reached: {0}")]
    Unreachable(String),
    #[error("the token endpoint refused: status {status}: {detail}")]
    Refused { status: u16, detail: String },
    #[error("unreadable token answer: {0}")]
    Protocol(String),
    #[error("{0}")]
    Source(String),
    #[error("no credential within {0:?}")]
    Timeout(Duration),
}

/// A value from a source, and how long it may be used. `None`: it does not expire.
pub struct Fresh<V> {
    pub value: V,
    pub expires_in: Option<Duration>,
}

pub type FetchFuture<'a, V> =
    Pin<Box<dyn Future<Output = Result<Fresh<V>, AuthError>> + Send + 'a>>;

/// Where a credential comes from.
pub trait Source<V>: Send + Sync + 'static {
    fn fetch(&self) -> FetchFuture<'_, V>;
}

/// A value handed out, with its generation: a forced renewal names the generation the
/// upstream refused, so that concurrent refusals cause one renewal, not one each.
#[derive(Clone, Debug)]
pub struct Issued<V> {
    pub value: V,
    pub generation: u64,
}

struct Cached<V> {
    value: V,
    generation: u64,
    /// `None`: never expires.
    expires: Option<Instant>,
    renew_at: Option<Instant>,
}

impl<V> Cached<V> {
    fn valid_at(&self, now: Instant) -> bool {
        self.expires.is_none_or(|e| now < e)
    }

    fn due_at(&self, now: Instant) -> bool {
        self.renew_at.is_some_and(|r| now >= r)
    }
}

type Pending<V> = Shared<BoxFuture<'static, Result<Arc<Cached<V>>, AuthError>>>;

struct Refresh<V> {
    in_flight: Option<Pending<V>>,
    /// After a failure, no new fetch before this (unless the value is gone).
    not_before: Option<Instant>,
    last_error: Option<AuthError>,
    generation: u64,
}

/// A cached credential renewed before it expires (see the module docs).
pub struct TokenCache<V> {
    current: ArcSwapOption<Cached<V>>,
    refresh: Mutex<Refresh<V>>,
    source: Box<dyn Source<V>>,
    /// Which kind of source, for the log.
    label: &'static str,
    /// Fetches done (successful or not), for tests and diagnostics.
    fetches: std::sync::atomic::AtomicU64,
}

impl<V: Clone + Send + Sync + 'static> TokenCache<V> {
    pub fn new(label: &'static str, source: impl Source<V>) -> Arc<Self> {
        Arc::new(TokenCache {
            current: ArcSwapOption::empty(),
            refresh: Mutex::new(Refresh {
                in_flight: None,
                not_before: None,
                last_error: None,
                generation: 0,
            }),
            source: Box::new(source),
            label,
            fetches: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// How many fetches were started.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Refresh<V>> {
        // Nothing panics while holding it; a poisoned lock still holds consistent data.
        self.refresh.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The value to send now.
    pub async fn get(self: &Arc<Self>) -> Result<Issued<V>, AuthError> {
        let now = Instant::now();
        if let Some(c) = self.current.load().as_ref() {
            if c.valid_at(now) {
                if c.due_at(now) {
                    // Renew in the background; this request goes on with the old value.
                    drop(self.start(now, true, None));
                }
                return Ok(Issued {
                    value: c.value.clone(),
                    generation: c.generation,
                });
            }
        }
        self.wait(now, false, None).await
    }

    /// A value newer than generation `refused`, which the upstream turned down.
    pub async fn renew_after(self: &Arc<Self>, refused: u64) -> Result<Issued<V>, AuthError> {
        let now = Instant::now();
        if let Some(c) = self.current.load().as_ref() {
            if c.generation != refused && c.valid_at(now) {
                return Ok(Issued {
                    value: c.value.clone(),
                    generation: c.generation,
                });
            }
        }
        self.wait(now, true, Some(refused)).await
    }

    async fn wait(
        self: &Arc<Self>,
        now: Instant,
        honour_pause: bool,
        refused: Option<u64>,
    ) -> Result<Issued<V>, AuthError> {
        let pending = self.start(now, honour_pause, refused)?;
        let c = pending.await?;
        Ok(Issued {
            value: c.value.clone(),
            generation: c.generation,
        })
    }

    /// The fetch in flight, or a new one. Within the pause after a failure, the last
    /// error instead (always when `honour_pause`, else only while no value is valid
    /// would be pointless to distinguish: a caller without a value gets the error).
    fn start(
        self: &Arc<Self>,
        now: Instant,
        honour_pause: bool,
        refused: Option<u64>,
    ) -> Result<Pending<V>, AuthError> {
        let mut r = self.lock();
        if let Some(p) = &r.in_flight {
            return Ok(p.clone());
        }
        // A value newer than the refused one arrived while we were on our way here.
        if let (Some(seen), Some(c)) = (refused, self.current.load().as_ref()) {
            if c.generation != seen && c.valid_at(now) {
                let c = c.clone();
                return Ok(async move { Ok(c) }.boxed().shared());
            }
        }
        let paused = r.not_before.is_some_and(|t| now < t);
        let has_value = self
            .current
            .load()
            .as_ref()
            .is_some_and(|c| c.valid_at(now));
        if paused && (honour_pause || !has_value) {
            return Err(r
                .last_error
                .clone()
                .unwrap_or(AuthError::Source("credential renewal paused".into())));
        }
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let this = self.clone();
        let task = tokio::spawn(async move { this.run().await });
        let pending = async move {
            task.await
                .unwrap_or_else(|_| Err(AuthError::Source("the credential fetch failed".into())))
        }
        .boxed()
        .shared();
        r.in_flight = Some(pending.clone());
        Ok(pending)
    }

    async fn run(self: Arc<Self>) -> Result<Arc<Cached<V>>, AuthError> {
        let started = Instant::now();
        let result = match tokio::time::timeout(FETCH_TIMEOUT, self.source.fetch()).await {
            Ok(r) => r,
            Err(_) => Err(AuthError::Timeout(FETCH_TIMEOUT)),
        };
        let now = Instant::now();
        let mut r = self.lock();
        r.in_flight = None;
        match result {
            Ok(fresh) => {
                r.generation += 1;
                r.not_before = None;
                r.last_error = None;
                // Lifetimes count from when the fetch started: the endpoint's clock
                // started then at the latest.
                let expires = fresh.expires_in.map(|d| started + d);
                let renew_at = fresh
                    .expires_in
                    .map(|d| started + d.saturating_sub(RENEW_AHEAD.min(d / 4)));
                let cached = Arc::new(Cached {
                    value: fresh.value,
                    generation: r.generation,
                    expires,
                    renew_at,
                });
                self.current.store(Some(cached.clone()));
                tracing::debug!(source = self.label, lifetime = ?fresh.expires_in, "credential renewed");
                Ok(cached)
            }
            Err(e) => {
                let left = self
                    .current
                    .load()
                    .as_ref()
                    .filter(|c| c.valid_at(now))
                    .map(|c| {
                        c.expires
                            .map_or(RETRY_MAX, |x| x.saturating_duration_since(now))
                    });
                let pause = match left {
                    Some(left) => (left / 4).clamp(RETRY_MIN, RETRY_MAX),
                    None => RETRY_WITHOUT_VALUE,
                };
                r.not_before = Some(now + pause);
                r.last_error = Some(e.clone());
                tracing::warn!(
                    source = self.label,
                    error = %e,
                    still_valid = left.is_some(),
                    retry_in = ?pause,
                    "credential renewal failed"
                );
                Err(e)
            }
        }
    }
}

/// One provider's run-time credential.
#[derive(Clone)]
pub struct ProviderAuth {
    cache: Arc<TokenCache<Credential>>,
    aws: bool,
}

impl ProviderAuth {
    pub fn new(cache: Arc<TokenCache<Credential>>, aws: bool) -> Self {
        ProviderAuth { cache, aws }
    }

    pub async fn get(&self) -> Result<Issued<Credential>, AuthError> {
        self.cache.get().await
    }

    pub async fn renew_after(
        &self,
        refused: &Issued<Credential>,
    ) -> Result<Issued<Credential>, AuthError> {
        self.cache.renew_after(refused.generation).await
    }

    /// Fetches started so far.
    pub fn fetches(&self) -> u64 {
        self.cache.fetches()
    }

    /// Whether the upstream's answer says the credential itself was not accepted
    /// (expired, revoked), so that a new one may pass: 401 for bearer tokens; for
    /// AWS, the 403 whose error type names the security token.
    pub fn refused(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        if !self.aws {
            return status == StatusCode::UNAUTHORIZED;
        }
        if status != StatusCode::FORBIDDEN && status != StatusCode::UNAUTHORIZED {
            return false;
        }
        let kind = headers
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        kind.starts_with("ExpiredToken") || kind.starts_with("UnrecognizedClient")
    }
}

/// The run-time credentials of a configuration's deployments.
pub struct Credentials {
    /// By `Deployment::index`; deployments of one provider share its cache.
    by_deployment: Vec<Option<ProviderAuth>>,
}

impl Credentials {
    /// One cache per provider with a run-time credential. Nothing is fetched yet: the
    /// first request does it (a gateway must start while a token endpoint is down).
    pub fn new(config: &Config) -> Result<Self, reqwest::Error> {
        Credentials::next(config, None)
    }

    /// The credentials of `config`; with `previous` (the configuration it replaces and
    /// its credentials), a provider whose kind and credential settings are unchanged
    /// keeps its cache, so a reload does not fetch a token that is still valid.
    pub fn next(
        config: &Config,
        previous: Option<(&Config, &Credentials)>,
    ) -> Result<Self, reqwest::Error> {
        let client = token_client()?;
        let mut by_provider: Vec<(String, ProviderAuth)> = Vec::new();
        for p in &config.providers {
            let Some(creds) = &p.credentials else {
                continue;
            };
            if let Some(kept) = previous.and_then(|(old, c)| c.kept_for(old, p)) {
                by_provider.push((p.name.clone(), kept));
                continue;
            }
            let auth = match creds {
                ProviderCredentials::GoogleServiceAccount(sa) => ProviderAuth::new(
                    TokenCache::new(
                        creds.label(),
                        google::ServiceAccount::new(client.clone(), sa.clone()),
                    ),
                    false,
                ),
                ProviderCredentials::GoogleAuthorizedUser(u) => ProviderAuth::new(
                    TokenCache::new(
                        creds.label(),
                        google::AuthorizedUser::new(client.clone(), u.clone()),
                    ),
                    false,
                ),
                ProviderCredentials::GoogleMetadata { base_url } => ProviderAuth::new(
                    TokenCache::new(
                        creds.label(),
                        google::Metadata::new(client.clone(), base_url),
                    ),
                    false,
                ),
                ProviderCredentials::AzureEntra(e) => ProviderAuth::new(
                    TokenCache::new(
                        creds.label(),
                        azure::ClientCredentials::new(client.clone(), e.clone()),
                    ),
                    false,
                ),
                ProviderCredentials::AwsChain { profile } => {
                    let ProviderKind::Bedrock { region, .. } = &p.kind else {
                        continue;
                    };
                    ProviderAuth::new(
                        TokenCache::new(creds.label(), aws::Chain::new(region, profile.as_deref())),
                        true,
                    )
                }
            };
            by_provider.push((p.name.clone(), auth));
        }
        let by_deployment = config
            .deployments
            .iter()
            .map(|d| {
                by_provider
                    .iter()
                    .find(|(name, _)| *name == d.provider.name)
                    .map(|(_, auth)| auth.clone())
            })
            .collect();
        Ok(Credentials { by_deployment })
    }

    /// The cache of the provider that `p` replaces, if it has the same kind and
    /// credential settings.
    fn kept_for(&self, old: &Config, p: &Provider) -> Option<ProviderAuth> {
        let d = old.deployments.iter().find(|d| {
            d.provider.name == p.name
                && d.provider.kind == p.kind
                && d.provider.credentials == p.credentials
        })?;
        self.of(d).cloned()
    }

    /// The run-time credential of `d`'s provider; `None` when it uses a static one.
    pub fn of(&self, d: &Deployment) -> Option<&ProviderAuth> {
        self.by_deployment.get(d.index).and_then(Option::as_ref)
    }
}

/// The client token endpoints are called with: no redirects (a redirect would carry
/// the secret elsewhere), bounded connect and total times.
fn token_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(20))
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// The OAuth2 token answer (RFC 6749 §5.1), as Google and Entra ID send it.
#[derive(serde::Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    /// A number, or (older Entra ID endpoints) a string of digits.
    expires_in: Option<serde_json::Value>,
}

/// The OAuth2 error answer (RFC 6749 §5.2).
#[derive(serde::Deserialize)]
struct TokenErrorAnswer {
    error: Option<String>,
    error_description: Option<String>,
}

/// Sends a token request and reads an OAuth2 token answer, bounded.
async fn oauth_token(req: reqwest::RequestBuilder) -> Result<Fresh<Credential>, AuthError> {
    let response = req
        .send()
        .await
        .map_err(|e| AuthError::Unreachable(without_url(e)))?;
    let status = response.status();
    let body = read_bounded(response).await?;
    if !status.is_success() {
        let detail = serde_json::from_slice::<TokenErrorAnswer>(&body)
            .ok()
            .map(|e| {
                let mut d = e.error.unwrap_or_default();
                if let Some(text) = e.error_description {
                    d.push_str(": ");
                    d.push_str(&text);
                }
                d
            })
            .unwrap_or_default();
        return Err(AuthError::Refused {
            status: status.as_u16(),
            detail: clip(&detail, 300),
        });
    }
    let answer: TokenAnswer = serde_json::from_slice(&body)
        .map_err(|_| AuthError::Protocol("the token answer is not OAuth2 JSON".into()))?;
    let Some(token) = answer.access_token.filter(|t| !t.is_empty()) else {
        return Err(AuthError::Protocol(
            "the token answer has no access_token".into(),
        ));
    };
    let expires_in = match answer.expires_in {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    };
    let Some(secs) = expires_in else {
        return Err(AuthError::Protocol(
            "the token answer has no expires_in".into(),
        ));
    };
    Ok(Fresh {
        value: Credential::Bearer(Secret::new(token)),
        expires_in: Some(Duration::from_secs(secs)),
    })
}

/// The body of a token answer, refusing more than [`MAX_TOKEN_RESPONSE`] bytes.
async fn read_bounded(response: reqwest::Response) -> Result<Vec<u8>, AuthError> {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| AuthError::Unreachable(without_url(e)))?;
        if body.len() + chunk.len() > MAX_TOKEN_RESPONSE {
            return Err(AuthError::Protocol(format!(
                "the token answer is larger than {MAX_TOKEN_RESPONSE} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A reqwest error's message without its URL (which may carry a query string).
fn without_url(e: reqwest::Error) -> String {
    e.without_url().to_string()
}

/// At most `max` characters of `text`.
fn clip(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// A source that answers from a script (after a short pause, so that concurrent
    /// callers overlap) and counts its fetches.
    struct Scripted {
        answers: Mutex<VecDeque<Result<Option<Duration>, AuthError>>>,
        calls: Arc<AtomicU64>,
    }

    impl Source<u64> for Scripted {
        fn fetch(&self) -> FetchFuture<'_, u64> {
            Box::pin(async move {
                let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                let next = self
                    .answers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .pop_front()
                    .unwrap_or(Ok(Some(Duration::from_secs(3600))));
                next.map(|expires_in| Fresh {
                    value: n,
                    expires_in,
                })
            })
        }
    }

    fn cache(
        answers: Vec<Result<Option<Duration>, AuthError>>,
    ) -> (Arc<TokenCache<u64>>, Arc<AtomicU64>) {
        let calls = Arc::new(AtomicU64::new(0));
        let source = Scripted {
            answers: Mutex::new(answers.into()),
            calls: calls.clone(),
        };
        (TokenCache::new("test", source), calls)
    }

    #[tokio::test]
    async fn concurrent_first_requests_share_one_fetch() {
        let (cache, calls) = cache(vec![]);
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let c = cache.clone();
                tokio::spawn(async move { c.get().await })
            })
            .collect();
        for t in tasks {
            let issued = t.await.expect("task").expect("value");
            assert_eq!(issued.value, 1);
            assert_eq!(issued.generation, 1);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Valid: served from the cache.
        assert_eq!(cache.get().await.expect("cached").value, 1);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_expired_value_is_fetched_again() {
        let (cache, calls) = cache(vec![Ok(Some(Duration::ZERO))]);
        assert_eq!(cache.get().await.expect("first").value, 1);
        // Its lifetime was zero: the next request waits for a new one.
        let second = cache.get().await.expect("second");
        assert_eq!((second.value, second.generation), (2, 2));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failure_without_a_value_is_not_retried_at_request_rate() {
        let refused = AuthError::Refused {
            status: 401,
            detail: "invalid_client".into(),
        };
        let (cache, calls) = cache(vec![Err(refused)]);
        let e = cache.get().await.expect_err("refused");
        assert!(e.to_string().contains("invalid_client"), "{e}");
        // Within the pause, the last error comes back without another fetch.
        let again = cache.get().await.expect_err("paused");
        assert!(again.to_string().contains("invalid_client"), "{again}");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_refused_value_is_renewed_once_for_all_who_saw_it() {
        let (cache, calls) = cache(vec![]);
        let first = cache.get().await.expect("first");
        let renewals: Vec<_> = (0..10)
            .map(|_| {
                let c = cache.clone();
                let seen = first.generation;
                tokio::spawn(async move { c.renew_after(seen).await })
            })
            .collect();
        for t in renewals {
            assert_eq!(t.await.expect("task").expect("renewed").generation, 2);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // A refusal of an older generation is answered with the current value.
        assert_eq!(cache.renew_after(1).await.expect("current").generation, 2);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_forced_renewal_leaves_the_valid_value_in_place() {
        let (cache, calls) = cache(vec![
            Ok(Some(Duration::from_secs(3600))),
            Err(AuthError::Unreachable("connection refused".into())),
        ]);
        let first = cache.get().await.expect("first");
        cache
            .renew_after(first.generation)
            .await
            .expect_err("the endpoint is down");
        // Requests go on with the value that is still valid.
        let now = cache.get().await.expect("still valid");
        assert_eq!(now.generation, first.generation);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    /// Renewal happens ahead of expiry, in the background, while requests go on with
    /// the old value: no request ever holds an expired one, none waits.
    #[tokio::test(start_paused = true)]
    async fn a_value_is_renewed_ahead_of_its_expiry_without_anyone_waiting() {
        // 100 s: renewal is due a quarter of the lifetime ahead, at 75 s.
        let lifetime = Duration::from_secs(100);
        let (cache, calls) = cache(vec![Ok(Some(lifetime)), Ok(Some(lifetime))]);
        let t0 = Instant::now();
        assert_eq!(cache.get().await.expect("first").generation, 1);
        // The first fetch took 50 ms (paused clock, auto-advanced).
        tokio::time::sleep_until(t0 + Duration::from_secs(74)).await;
        assert_eq!(cache.get().await.expect("not due").generation, 1);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "nothing renewed before 75 s"
        );

        tokio::time::sleep_until(t0 + Duration::from_secs(76)).await;
        let asked = Instant::now();
        let due = cache.get().await.expect("due, still valid");
        assert_eq!(
            due.generation, 1,
            "the request goes on with the valid value"
        );
        assert_eq!(Instant::now(), asked, "and does not wait for the renewal");
        // The renewal runs in the background and lands well before the old value's
        // end at 100 s.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        let renewed = cache.get().await.expect("renewed");
        assert_eq!(renewed.generation, 2);
        assert!(Instant::now() < t0 + lifetime);
        // Until the new value is due in turn, nothing more is fetched.
        tokio::time::sleep_until(t0 + Duration::from_secs(99)).await;
        assert_eq!(cache.get().await.expect("new").generation, 2);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn credentials_never_print() {
        let c = Credential::Bearer(Secret::new("ya29.secret"));
        assert!(!format!("{c:?}").contains("ya29"));
    }
}
