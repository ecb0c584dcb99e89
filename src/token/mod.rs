//! Ratepay access tokens: one per (credential set, audience), fetched with Ratepay's JSON
//! client-credentials request, refreshed ahead of expiry, one fetch at a time.
//!
//! Sits just before the upstream client in the flow. A request asks [`TokenSource::bearer`]:
//! in steady state the current token is returned at once (a background task refreshes at
//! `refresh_at_fraction` of the lifetime and never later than `exp - refresh_margin`). Only
//! when there is no valid token does a request wait, and then all waiters share one fetch
//! (single-flight under `fetch_lock`). A failing token endpoint does not fail requests while
//! the current token is valid; a token known to be expired is never handed out. Tokens are
//! kept as [`secrecy::SecretString`] and leave only as a sensitive header value.
//!
//! A lifetime comes from the token endpoint, so it is capped at [`MAX_TOKEN_LIFETIME`] before it
//! is added to an instant: a token announced for longer is refreshed as if it lived 24 h.

pub mod http_fetch;

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use crate::config::TokenSettings;

/// Why a token could not be fetched. Never contains a token or secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// The token endpoint refused the credentials (401/403).
    #[error("the token endpoint refused the client credentials (HTTP {0})")]
    Refused(u16),
    /// The token endpoint answered another unexpected status.
    #[error("the token endpoint answered HTTP {0}")]
    Status(u16),
    /// Transport failure or timeout.
    #[error("the token endpoint could not be reached: {0}")]
    Transport(String),
    /// The answer was not Ratepay's token JSON.
    #[error("the token endpoint's answer was not a token response: {0}")]
    Malformed(String),
}

/// A freshly fetched token.
pub struct Fetched {
    /// The access token.
    pub access_token: SecretString,
    /// Its lifetime as announced (`expires_in`).
    pub expires_in: Duration,
}

impl fmt::Debug for Fetched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fetched")
            .field("access_token", &"[REDACTED]")
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// Boxed future of a fetch.
pub type FetchFuture = Pin<Box<dyn Future<Output = Result<Fetched, FetchError>> + Send>>;

/// Something that can fetch a token (the HTTP client in production, a fake in tests).
pub trait FetchToken: Send + Sync + 'static {
    /// Performs one token request.
    fn fetch(&self) -> FetchFuture;
}

/// A token handed to a request: the header value to send and its generation, to invalidate it
/// precisely after a 401.
#[derive(Clone)]
pub struct Bearer {
    /// `Bearer <token>`, marked sensitive.
    pub header: HeaderValue,
    /// Which fetch produced it.
    pub generation: u64,
}

impl fmt::Debug for Bearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bearer")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

struct Current {
    bearer: Bearer,
    expires_at: Instant,
    refresh_at: Instant,
}

#[derive(Default)]
struct State {
    current: Option<Current>,
    generation: u64,
    last_error: Option<FetchError>,
}

struct Inner {
    audience: String,
    fetcher: Box<dyn FetchToken>,
    settings: TokenSettings,
    state: Mutex<State>,
    fetch_lock: tokio::sync::Mutex<()>,
    /// Wakes the refresher when the token changes or is invalidated.
    changed: tokio::sync::Notify,
    stats: TokenStats,
}

/// Counters for metrics and tests.
#[derive(Default)]
pub struct TokenStats {
    /// Successful fetches.
    pub fetches: std::sync::atomic::AtomicU64,
    /// Failed fetches.
    pub failures: std::sync::atomic::AtomicU64,
}

/// A token source for one audience. Cheap to clone.
#[derive(Clone)]
pub struct TokenSource {
    inner: Arc<Inner>,
    _refresher: Arc<AbortOnDrop>,
}

/// Stops the background refresher when the last clone of the source is dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSource")
            .field("audience", &self.inner.audience)
            .finish_non_exhaustive()
    }
}

/// Never treat a token as valid this close to its expiry: it could expire in flight.
const EXPIRY_SKEW: Duration = Duration::from_secs(1);

/// The longest lifetime the gateway believes of a token (24 h), whatever `expires_in` (or a
/// JWT `exp`) says. Ratepay's tokens live 1800 s; a longer one is refreshed early, never kept
/// past what the gateway can add to a clock reading.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// `start + d`; `start` itself if the clock cannot represent that (with `d` bounded by the
/// settings and [`MAX_TOKEN_LIFETIME`], only a broken clock gets there, and then "due now" is
/// the safe reading).
fn instant_after(start: Instant, d: Duration) -> Instant {
    start.checked_add(d).unwrap_or(start)
}

impl TokenSource {
    /// Creates the source and starts its background refresher (needs a tokio runtime).
    pub fn new(
        audience: String,
        fetcher: Box<dyn FetchToken>,
        settings: TokenSettings,
    ) -> TokenSource {
        let inner = Arc::new(Inner {
            audience,
            fetcher,
            settings,
            state: Mutex::new(State::default()),
            fetch_lock: tokio::sync::Mutex::new(()),
            changed: tokio::sync::Notify::new(),
            stats: TokenStats::default(),
        });
        let task = tokio::spawn(refresher(inner.clone()));
        TokenSource {
            inner,
            _refresher: Arc::new(AbortOnDrop(task.abort_handle())),
        }
    }

    /// Counters.
    pub fn stats(&self) -> &TokenStats {
        &self.inner.stats
    }

    /// Seconds until the current token expires (`None` without a valid token).
    pub fn expires_in(&self) -> Option<Duration> {
        let st = self.inner.lock_state();
        st.current
            .as_ref()
            .and_then(|c| c.expires_at.checked_duration_since(Instant::now()))
    }

    /// The last fetch error, if the last fetch failed.
    pub fn last_error(&self) -> Option<FetchError> {
        self.inner.lock_state().last_error.clone()
    }

    /// A valid token, fetching one (shared with concurrent callers) when there is none.
    pub async fn bearer(&self) -> Result<Bearer, FetchError> {
        if let Some(b) = self.inner.valid() {
            return Ok(b);
        }
        self.inner.fetch_if_needed(None).await
    }

    /// Marks the token of `generation` as refused by Ratepay and returns a fresh one. Concurrent
    /// 401s for the same generation share one fetch.
    pub async fn refresh_after_401(&self, generation: u64) -> Result<Bearer, FetchError> {
        {
            let mut st = self.inner.lock_state();
            if st
                .current
                .as_ref()
                .is_some_and(|c| c.bearer.generation == generation)
            {
                st.current = None;
            }
        }
        self.inner.fetch_if_needed(Some(generation)).await
    }
}

impl Inner {
    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere while holding it; the state is still
        // consistent (all writes are single assignments), so keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn valid(&self) -> Option<Bearer> {
        let st = self.lock_state();
        st.current
            .as_ref()
            .filter(|c| Instant::now() + EXPIRY_SKEW < c.expires_at)
            .map(|c| c.bearer.clone())
    }

    /// Fetches under the single-flight lock unless another task already did.
    async fn fetch_if_needed(&self, refused: Option<u64>) -> Result<Bearer, FetchError> {
        let _guard = self.fetch_lock.lock().await;
        if let Some(b) = self.valid() {
            if Some(b.generation) != refused {
                return Ok(b);
            }
        }
        self.fetch_locked().await
    }

    /// One fetch; the caller holds `fetch_lock`.
    async fn fetch_locked(&self) -> Result<Bearer, FetchError> {
        use std::sync::atomic::Ordering::Relaxed;
        let started = Instant::now();
        let result =
            match tokio::time::timeout(self.settings.fetch_timeout, self.fetcher.fetch()).await {
                Ok(r) => r,
                Err(_) => Err(FetchError::Transport(format!(
                    "no answer within {} ms",
                    self.settings.fetch_timeout.as_millis()
                ))),
            };
        let mut st = self.lock_state();
        match result {
            Ok(f) => {
                let header =
                    HeaderValue::try_from(format!("Bearer {}", f.access_token.expose_secret()))
                        .map(|mut h| {
                            h.set_sensitive(true);
                            h
                        })
                        .map_err(|_| {
                            FetchError::Malformed(
                                "the access token is not a valid header value".into(),
                            )
                        });
                let header = match header {
                    Ok(h) => h,
                    Err(e) => {
                        self.stats.failures.fetch_add(1, Relaxed);
                        st.last_error = Some(e.clone());
                        return Err(e);
                    }
                };
                st.generation += 1;
                let bearer = Bearer {
                    header,
                    generation: st.generation,
                };
                let lifetime = f.expires_in.min(MAX_TOKEN_LIFETIME);
                st.current = Some(Current {
                    bearer: bearer.clone(),
                    expires_at: instant_after(started, lifetime),
                    refresh_at: instant_after(started, refresh_after(lifetime, &self.settings)),
                });
                st.last_error = None;
                self.stats.fetches.fetch_add(1, Relaxed);
                drop(st);
                self.changed.notify_one();
                tracing::debug!(audience = %self.audience, lifetime_s = lifetime.as_secs(), announced_s = f.expires_in.as_secs(), "ratepay token fetched");
                Ok(bearer)
            }
            Err(e) => {
                self.stats.failures.fetch_add(1, Relaxed);
                st.last_error = Some(e.clone());
                drop(st);
                tracing::warn!(audience = %self.audience, error = %e, "ratepay token fetch failed");
                Err(e)
            }
        }
    }
}

/// When to refresh a token of `lifetime`: at `refresh_at_fraction` of it, and never later than
/// `refresh_margin` before expiry (for lifetimes shorter than the margin, the fraction alone).
/// The lifetime counts at most [`MAX_TOKEN_LIFETIME`]; a fraction outside 0..=1 (config
/// validation allows 0.5..=0.95) counts as its nearest bound, NaN as 0.5.
pub fn refresh_after(lifetime: Duration, s: &TokenSettings) -> Duration {
    let lifetime = lifetime.min(MAX_TOKEN_LIFETIME);
    let fraction = if s.refresh_at_fraction.is_nan() {
        0.5
    } else {
        s.refresh_at_fraction.clamp(0.0, 1.0)
    };
    let by_fraction = lifetime.mul_f64(fraction);
    match lifetime.checked_sub(s.refresh_margin) {
        Some(by_margin) if !by_margin.is_zero() => by_fraction.min(by_margin),
        _ => by_fraction,
    }
}

/// Background task: refreshes ahead of expiry; after failures, retries with capped exponential
/// backoff and full jitter while the current token (if any) stays in use. Aborted when the
/// source is dropped.
async fn refresher(inner: Arc<Inner>) {
    let mut backoff: Option<Duration> = None;
    loop {
        let wake_at = {
            let st = inner.lock_state();

            match (&st.current, backoff) {
                (_, Some(b)) => Some(instant_after(Instant::now(), jitter(b))),
                (Some(c), None) => Some(c.refresh_at),
                // No token yet: the first request fetches; nothing to refresh.
                (None, None) => None,
            }
        };
        // A change (new token, invalidation) stores a permit if nobody waits, so none is missed.
        let notified = inner.changed.notified();
        match wake_at {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = notified => { continue; }
                }
            }
            None => {
                notified.await;
                continue;
            }
        }
        let _guard = inner.fetch_lock.lock().await;
        let due = {
            let st = inner.lock_state();
            st.current
                .as_ref()
                .is_none_or(|c| Instant::now() >= c.refresh_at)
        };
        if !due && backoff.is_none() {
            continue;
        }
        match inner.fetch_locked().await {
            Ok(_) => backoff = None,
            Err(_) => {
                let s = &inner.settings;
                backoff = Some(match backoff {
                    None => s.retry_initial,
                    Some(b) => b.saturating_mul(2).min(s.retry_max),
                });
                // With no token and none being used, requests fetch on demand; stop retrying.
                if inner.lock_state().current.is_none() {
                    backoff = None;
                }
            }
        }
    }
}

/// Full jitter in [d/2, d]: spreads retries of many gateways without ever retrying at once.
fn jitter(d: Duration) -> Duration {
    let f: f64 = rand::random_range(0.5..=1.0);
    d.mul_f64(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    /// A fake token endpoint: counts calls, can fail, answers after `delay`.
    struct Fake {
        calls: Arc<AtomicUsize>,
        fail: Arc<std::sync::atomic::AtomicBool>,
        lifetime: Duration,
        delay: Duration,
        seq: AtomicU64,
    }

    impl FetchToken for Fake {
        fn fetch(&self) -> FetchFuture {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let fail = self.fail.load(Ordering::SeqCst);
            let n = self.seq.fetch_add(1, Ordering::SeqCst);
            let (lifetime, delay) = (self.lifetime, self.delay);
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                if fail {
                    Err(FetchError::Status(503))
                } else {
                    Ok(Fetched {
                        access_token: SecretString::from(format!("tok{n}")),
                        expires_in: lifetime,
                    })
                }
            })
        }
    }

    fn source(
        lifetime: Duration,
    ) -> (
        TokenSource,
        Arc<AtomicUsize>,
        Arc<std::sync::atomic::AtomicBool>,
    ) {
        let calls = Arc::new(AtomicUsize::new(0));
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let fake = Fake {
            calls: calls.clone(),
            fail: fail.clone(),
            lifetime,
            delay: Duration::from_millis(50),
            seq: AtomicU64::new(0),
        };
        (
            TokenSource::new("aud".into(), Box::new(fake), TokenSettings::default()),
            calls,
            fail,
        )
    }

    #[test]
    fn refresh_point_respects_fraction_and_margin() {
        let s = TokenSettings::default();
        assert_eq!(
            refresh_after(Duration::from_secs(1800), &s),
            Duration::from_secs(1440)
        );
        // 0.8 * 200 = 160 is later than 200 - 60 = 140: the margin wins.
        assert_eq!(
            refresh_after(Duration::from_secs(200), &s),
            Duration::from_secs(140)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(10), &s),
            Duration::from_secs(8)
        );
    }

    #[test]
    fn refresh_point_survives_extreme_lifetimes_and_fractions() {
        let day = MAX_TOKEN_LIFETIME;
        let s = TokenSettings::default();
        // 0.8 * 24 h, earlier than 24 h - 60 s.
        assert_eq!(
            refresh_after(Duration::MAX, &s),
            Duration::from_secs(69_120)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(u64::MAX), &s),
            refresh_after(day, &s)
        );
        for (fraction, expect) in [
            (f64::NAN, 43_200),
            (f64::INFINITY, 86_340),
            (f64::NEG_INFINITY, 0),
            (1.0, 86_340),
            (0.0, 0),
        ] {
            let s = TokenSettings {
                refresh_at_fraction: fraction,
                ..TokenSettings::default()
            };
            assert_eq!(
                refresh_after(Duration::MAX, &s),
                Duration::from_secs(expect),
                "{fraction}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_huge_announced_lifetime_counts_as_a_day_and_is_refreshed_in_time() {
        let (src, calls, _) = source(Duration::MAX);
        assert_eq!(src.bearer().await.unwrap().generation, 1);
        // The lifetime counts from the start of the fetch, which took the fake 50 ms.
        let left = src.expires_in().unwrap();
        assert_eq!(left, MAX_TOKEN_LIFETIME - Duration::from_millis(50));
        // The background refresher wakes at 0.8 * 24 h.
        tokio::time::sleep(Duration::from_secs(69_119)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "background refresh at 19.2 h"
        );
        assert_eq!(src.bearer().await.unwrap().generation, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_first_requests_share_one_fetch() {
        let (src, calls, _) = source(Duration::from_secs(1800));
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let s = src.clone();
                tokio::spawn(async move { s.bearer().await })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().generation, 1);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn refreshes_in_background_before_expiry() {
        let (src, calls, _) = source(Duration::from_secs(100));
        assert_eq!(src.bearer().await.unwrap().generation, 1);
        // Refresh point: 0.8 * 100 = 80 s (the 60 s margin would be 40 s: earlier wins).
        tokio::time::sleep(Duration::from_secs(39)).await;
        assert_eq!(src.bearer().await.unwrap().generation, 1);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "background refresh at 40 s"
        );
        assert_eq!(src.bearer().await.unwrap().generation, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn endpoint_failure_keeps_valid_token_and_never_serves_expired() {
        let (src, calls, fail) = source(Duration::from_secs(100));
        src.bearer().await.unwrap();
        fail.store(true, Ordering::SeqCst);
        // Past the refresh point the background refresh fails and retries, but requests keep
        // getting the still-valid token.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(src.bearer().await.unwrap().generation, 1);
        assert!(calls.load(Ordering::SeqCst) >= 3, "retried with backoff");
        assert!(src.last_error().is_some());
        // After expiry the token is never handed out; the request's own fetch fails.
        tokio::time::sleep(Duration::from_secs(45)).await;
        assert!(src.bearer().await.is_err());
        fail.store(false, Ordering::SeqCst);
        assert!(src.bearer().await.unwrap().generation > 1);
    }

    #[tokio::test(start_paused = true)]
    async fn refresh_after_401_fetches_once_for_concurrent_refusals() {
        let (src, calls, _) = source(Duration::from_secs(1800));
        let g = src.bearer().await.unwrap().generation;
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let s = src.clone();
                tokio::spawn(async move { s.refresh_after_401(g).await })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().generation, g + 1);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn debug_output_hides_tokens() {
        let f = Fetched {
            access_token: SecretString::from("supersecret"),
            expires_in: Duration::from_secs(1),
        };
        assert!(!format!("{f:?}").contains("supersecret"));
        let mut h = HeaderValue::from_static("Bearer supersecret");
        h.set_sensitive(true);
        let b = Bearer {
            header: h,
            generation: 1,
        };
        assert!(!format!("{b:?}").contains("supersecret"));
    }
}
