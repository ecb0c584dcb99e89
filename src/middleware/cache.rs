//! The session-record cache: `hpp.session_records.get` and `hpp.session_records.list` answered
//! from memory while their content cannot have changed, one upstream call for many callers.
//!
//! Sits after the caller policy and the caller's rate limit (a caller only gets a cached answer
//! for an operation it may call, and hits count against its budget) and before the budget
//! toward Ratepay, idempotency and the token. Entries are keyed by upstream, X-Partner and path
//! with sorted query, so partners never share one.
//!
//! - Lifetime by content ([`freshness`]): terminal records long, changing ones briefly, a list
//!   for a past day whose records are all terminal long, other lists briefly, 404s briefly; only
//!   200 and 404 are stored, never an answer with `Cache-Control: no-store`.
//! - Concurrent misses share one upstream call: moka's `try_get_with`, itself run in
//!   `tokio::spawn` so a caller hanging up never cancels the call others wait for.
//! - `Cache-Control: no-cache` from the caller fetches fresh and refreshes the entry,
//!   `no-store` fetches fresh and stores nothing (`X-Cache: BYPASS`).
//! - Stale-if-error: an entry stays in memory `stale_if_error` past its freshness; when Ratepay
//!   fails (5xx, unreachable, timeout, paused) it is served with `X-Cache: STALE`.
//! - Freshness is decided on an injectable governor clock; moka's own expiry only reclaims
//!   memory once an entry is past freshness and the stale window, and the weigher bounds bytes.
//! - [`SessionRecordCache::invalidate_transaction`] drops the records of a cancelled
//!   transaction; [`InvalidateOnCancellationLayer`] calls it after a 2xx cancellation.

use std::{fmt, sync::Arc, time::Duration};

use bytes::Bytes;
use governor::clock::{Clock, DefaultClock, Reference};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;
use moka::{future::Cache, ops::compute::Op, Expiry};
use serde_json::Value;
use time::{macros::format_description, Date, OffsetDateTime};

use super::{GwRequest, GwResponse, Handler};
use crate::{
    body,
    config::CacheSettings,
    context::{Authenticated, RequestContext},
    error::GatewayError,
    routes::Api,
};

/// `X-Cache`: `HIT`, `MISS`, `BYPASS` or `STALE`.
pub static X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// The one-record read.
pub const RECORD_GET: &str = "hpp.session_records.get";
/// The records-of-a-day read.
pub const RECORD_LIST: &str = "hpp.session_records.list";
/// The operation whose success invalidates a transaction's records.
pub const CANCELLATION: &str = "payment.cancellations.create";

/// Statuses after which a session record no longer changes.
pub const TERMINAL: [&str; 4] = ["COMPLETED", "ERROR", "EXPIRED", "CANCELED"];

/// Whether a `session_status` is terminal.
pub fn is_terminal(status: &str) -> bool {
    TERMINAL.contains(&status)
}

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// A fresh entry.
    Hit,
    /// Fetched from Ratepay (possibly by a concurrent request this one waited for).
    Miss,
    /// Fetched from Ratepay because the caller asked for `no-cache` or `no-store`.
    Bypass,
    /// Ratepay failed; an expired entry within the stale-if-error window.
    Stale,
}

impl CacheStatus {
    const ALL: [CacheStatus; 4] = [
        CacheStatus::Hit,
        CacheStatus::Miss,
        CacheStatus::Bypass,
        CacheStatus::Stale,
    ];

    fn header_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Bypass => "BYPASS",
            CacheStatus::Stale => "STALE",
        }
    }

    fn header(self) -> HeaderValue {
        HeaderValue::from_static(self.header_str())
    }

    /// The status an `X-Cache` value this layer wrote stands for.
    pub fn from_header(value: &HeaderValue) -> Option<CacheStatus> {
        Self::ALL
            .into_iter()
            .find(|s| s.header_str().as_bytes() == value.as_bytes())
    }

    /// The name in metrics and access records.
    pub fn label(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Bypass => "bypass",
            CacheStatus::Stale => "stale",
        }
    }
}

/// What identifies an entry: never shared across upstreams or partners.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// The upstream API.
    pub upstream: Api,
    /// The X-Partner sent to Ratepay (`None`: no X-Partner).
    pub partner: Option<Arc<str>>,
    /// Path, plus `?` and the sorted query when there is one.
    pub target: String,
}

impl CacheKey {
    /// A key for `path` and `query` (normalised) as seen by `partner` on `upstream`.
    pub fn new(
        upstream: Api,
        partner: Option<Arc<str>>,
        path: &str,
        query: Option<&str>,
    ) -> CacheKey {
        let query = query.map(normalise_query).unwrap_or_default();
        let target = if query.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{query}")
        };
        CacheKey {
            upstream,
            partner,
            target,
        }
    }

    fn bytes(&self) -> usize {
        self.target.len() + self.partner.as_ref().map_or(0, |p| p.len())
    }
}

/// The query's parameters in sorted order, empty pieces dropped: `b=2&a=1` and `a=1&b=2&`
/// name the same entry. Values are kept byte for byte (no decoding).
pub fn normalise_query(query: &str) -> String {
    let mut pairs: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    pairs.sort_unstable_by(|a, b| {
        let (ka, va) = a.split_once('=').unwrap_or((a, ""));
        let (kb, vb) = b.split_once('=').unwrap_or((b, ""));
        (ka, va).cmp(&(kb, vb))
    });
    pairs.join("&")
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// How long an answer may be served, and the transactions its records belong to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Freshness {
    /// Time to live.
    pub ttl: Duration,
    /// `transaction_id`s of the records (for invalidation on cancellation).
    pub transaction_ids: Vec<String>,
}

fn transaction_id(record: &Value) -> Option<String> {
    record
        .get("transaction_id")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn terminal_record(record: &Value) -> bool {
    record
        .get("session_status")
        .and_then(Value::as_str)
        .is_some_and(is_terminal)
}

/// Freshness of one Ratepay answer by its content; `None`: do not store it.
///
/// A record: terminal status → `terminal_ttl`, any other or unknown status → `changing_ttl`.
/// A list: a past day (before `today`, UTC) whose records are all terminal → `list_past_ttl`;
/// today, a future day, or a past day still holding a changing record (a session created just
/// before midnight) → `list_today_ttl`. A 404 → `not_found_ttl`. Anything else, a body that is
/// not the expected JSON, or a zero lifetime → not stored.
pub fn freshness(
    settings: &CacheSettings,
    operation: &str,
    status: StatusCode,
    body: &[u8],
    query: Option<&str>,
    today: Date,
) -> Option<Freshness> {
    let fresh = match status {
        StatusCode::NOT_FOUND => Freshness {
            ttl: settings.not_found_ttl,
            transaction_ids: Vec::new(),
        },
        StatusCode::OK if operation == RECORD_GET => {
            let record: Value = serde_json::from_slice(body).ok()?;
            record.get("session_id")?;
            Freshness {
                ttl: if terminal_record(&record) {
                    settings.terminal_ttl
                } else {
                    settings.changing_ttl
                },
                transaction_ids: transaction_id(&record).into_iter().collect(),
            }
        }
        StatusCode::OK if operation == RECORD_LIST => {
            let day = query_param(query, "createdDate")
                .and_then(|d| Date::parse(d, format_description!("[year]-[month]-[day]")).ok())?;
            let records: Vec<Value> = serde_json::from_slice(body).ok()?;
            let settled = day < today && records.iter().all(terminal_record);
            Freshness {
                ttl: if settled {
                    settings.list_past_ttl
                } else {
                    settings.list_today_ttl
                },
                transaction_ids: records.iter().filter_map(transaction_id).collect(),
            }
        }
        _ => return None,
    };
    (!fresh.ttl.is_zero()).then_some(fresh)
}

/// What the caller's request asks of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Directive {
    Normal,
    /// Fetch fresh, refresh the entry.
    NoCache,
    /// Fetch fresh, store nothing.
    NoStore,
}

fn cache_control_has(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case(token))
}

fn directive(headers: &HeaderMap) -> Directive {
    if cache_control_has(headers, &header::CACHE_CONTROL, "no-store") {
        Directive::NoStore
    } else if cache_control_has(headers, &header::CACHE_CONTROL, "no-cache")
        || cache_control_has(headers, &header::CACHE_CONTROL, "max-age=0")
        || cache_control_has(headers, &header::PRAGMA, "no-cache")
    {
        Directive::NoCache
    } else {
        Directive::Normal
    }
}

/// Headers never stored: computed per answer, or not for a shared cache.
const UNSTORED: [&str; 5] = [
    "age",
    "x-cache",
    "set-cookie",
    "ratelimit",
    "ratelimit-policy",
];

/// The largest `Age` the cache reads or reports: RFC 9111 section 1.2.2 has a cache send
/// 2^31 for any delta-seconds it cannot hold or that is larger.
pub const MAX_AGE_SECS: u64 = 1 << 31;

/// Ratepay's `Age` (delta-seconds), capped at [`MAX_AGE_SECS`]; not digits → absent.
pub fn parse_age(value: &HeaderValue) -> Option<u64> {
    let digits = value.to_str().ok()?.trim();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(digits.parse::<u64>().unwrap_or(u64::MAX).min(MAX_AGE_SECS))
}

/// The `Age` to send for an entry stored `stored_for` ago that arrived `base_age` old.
fn reported_age(stored_for: Duration, base_age: u64) -> u64 {
    stored_for
        .as_secs()
        .saturating_add(base_age)
        .min(MAX_AGE_SECS)
}

/// Ratepay's answer, buffered.
#[derive(Debug, Clone)]
struct Buffered {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Buffered {
    fn response(&self, cache: CacheStatus) -> GwResponse {
        let mut resp = GwResponse::new(body::full(self.body.clone()));
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers.clone();
        resp.headers_mut().insert(X_CACHE.clone(), cache.header());
        resp
    }
}

/// What an entry costs beyond its answer's bytes (key, entry, moka's bookkeeping), as measured
/// by the load benchmark's memory case: about 1 KiB per session record in all.
const ENTRY_OVERHEAD: usize = 768;

/// One stored answer and the times that govern it (on the cache's clock).
pub struct Entry<I> {
    answer: body::StoredAnswer,
    stored_at: I,
    fresh_until: I,
    keep_until: I,
    /// Ratepay's own `Age`, when it sent one (at most [`MAX_AGE_SECS`]).
    base_age: u64,
    transaction_ids: Vec<String>,
    weight: u32,
}

impl<I: Reference> Entry<I> {
    fn response(&self, now: I, cache: CacheStatus) -> GwResponse {
        let mut resp = self.answer.response();
        resp.headers_mut().insert(X_CACHE.clone(), cache.header());
        let age = reported_age(now.duration_since(self.stored_at).into(), self.base_age);
        resp.headers_mut()
            .insert(header::AGE, HeaderValue::from(age));
        resp
    }

    fn fresh(&self, now: I) -> bool {
        now < self.fresh_until
    }

    fn kept(&self, now: I) -> bool {
        now < self.keep_until
    }
}

/// moka's per-entry expiry: reclaim memory once freshness and the stale window have passed.
struct KeepUntil<C> {
    clock: C,
}

impl<C: Clock> KeepUntil<C> {
    fn left(&self, e: &Entry<C::Instant>) -> Duration {
        e.keep_until.duration_since(self.clock.now()).into()
    }
}

impl<C: Clock> Expiry<CacheKey, Arc<Entry<C::Instant>>> for KeepUntil<C> {
    fn expire_after_create(
        &self,
        _: &CacheKey,
        v: &Arc<Entry<C::Instant>>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(self.left(v))
    }

    fn expire_after_update(
        &self,
        _: &CacheKey,
        v: &Arc<Entry<C::Instant>>,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        // A refresh replaces the entry: its own deadline counts, not the old one's.
        Some(self.left(v))
    }
}

/// Why an answer was not stored.
#[derive(Debug, Clone)]
enum Uncached {
    /// Ratepay answered something not to store (4xx other than 404, `no-store`, ...).
    Pass(Buffered),
    /// Ratepay failed with a 5xx.
    Failed5xx(Buffered),
    /// The call failed; `stale_ok` when a stale entry may stand in for it.
    Error { error: GatewayError, stale_ok: bool },
}

impl Uncached {
    fn stale_ok(&self) -> bool {
        match self {
            Uncached::Pass(_) => false,
            Uncached::Failed5xx(_) => true,
            Uncached::Error { stale_ok, .. } => *stale_ok,
        }
    }

    fn into_result(self, cache: CacheStatus) -> Result<GwResponse, GatewayError> {
        match self {
            Uncached::Pass(b) | Uncached::Failed5xx(b) => Ok(b.response(cache)),
            Uncached::Error { error, .. } => Err(error),
        }
    }
}

/// The session-record cache of one gateway. Cheap to clone.
pub struct SessionRecordCache<C: Clock = DefaultClock> {
    inner: Arc<CacheInner<C>>,
}

struct CacheInner<C: Clock> {
    entries: Cache<CacheKey, Arc<Entry<C::Instant>>>,
    settings: CacheSettings,
    clock: C,
}

impl<C: Clock> Clone for SessionRecordCache<C> {
    fn clone(&self) -> Self {
        SessionRecordCache {
            inner: self.inner.clone(),
        }
    }
}

impl<C: Clock> fmt::Debug for SessionRecordCache<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionRecordCache")
            .field("settings", &self.inner.settings)
            .field("entries", &self.inner.entries.entry_count())
            .finish_non_exhaustive()
    }
}

impl SessionRecordCache<DefaultClock> {
    /// A cache on the monotonic clock.
    pub fn new(settings: &CacheSettings) -> Self {
        SessionRecordCache::with_clock(settings, DefaultClock::default())
    }
}

impl<C> SessionRecordCache<C>
where
    C: Clock + Clone + Send + Sync + 'static,
{
    /// A cache whose freshness decisions use `clock` (tests pass a `FakeRelativeClock`).
    pub fn with_clock(settings: &CacheSettings, clock: C) -> Self {
        let entries = Cache::builder()
            .max_capacity(settings.max_bytes)
            .weigher(|k: &CacheKey, v: &Arc<Entry<C::Instant>>| {
                v.weight
                    .saturating_add(u32::try_from(k.bytes()).unwrap_or(u32::MAX))
            })
            .expire_after(KeepUntil {
                clock: clock.clone(),
            })
            .support_invalidation_closures()
            .build();
        SessionRecordCache {
            inner: Arc::new(CacheInner {
                entries,
                settings: settings.clone(),
                clock,
            }),
        }
    }

    /// Drops every cached record (and list) that belongs to `ratepay_transaction_id`.
    ///
    /// Takes effect for reads at once; the memory is reclaimed by moka's maintenance. An answer
    /// fetched while the cancellation was in flight can still be stored afterwards; it lives
    /// only its short lifetime unless its record is terminal.
    pub fn invalidate_transaction(&self, ratepay_transaction_id: &str) {
        let id = ratepay_transaction_id.to_owned();
        if let Err(e) = self
            .inner
            .entries
            .invalidate_entries_if(move |_k, v| v.transaction_ids.contains(&id))
        {
            tracing::error!(error = %e, "session-record cache invalidation failed");
        }
    }

    /// Runs moka's pending maintenance (eviction to the byte capacity, expiry, invalidation).
    pub async fn run_pending_tasks(&self) {
        self.inner.entries.run_pending_tasks().await;
    }

    /// Bytes held (approximate until maintenance ran).
    pub fn weighted_size(&self) -> u64 {
        self.inner.entries.weighted_size()
    }

    /// Entries held (approximate until maintenance ran).
    pub fn entry_count(&self) -> u64 {
        self.inner.entries.entry_count()
    }

    /// The configured settings.
    pub fn settings(&self) -> &CacheSettings {
        &self.inner.settings
    }

    /// Removes `key` only if it still holds `stale` (a concurrent refresh must survive).
    async fn remove_if_same(&self, key: &CacheKey, stale: &Arc<Entry<C::Instant>>) {
        self.inner
            .entries
            .entry(key.clone())
            .and_compute_with(|current| {
                let op = match current {
                    Some(e) if Arc::ptr_eq(e.value(), stale) => Op::Remove,
                    _ => Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
    }

    /// Calls Ratepay and decides what to keep.
    async fn fetch<S: Handler>(
        &self,
        inner: &S,
        req: GwRequest,
        operation: &'static str,
        upstream: Api,
    ) -> Result<Arc<Entry<C::Instant>>, Uncached> {
        let query = req.uri().query().map(str::to_owned);
        let resp = match inner.handle(req).await {
            Ok(r) => r,
            Err(error) => {
                let stale_ok = matches!(
                    error,
                    GatewayError::UpstreamUnreachable { .. }
                        | GatewayError::UpstreamTimeout { .. }
                        | GatewayError::TokenUnavailable { .. }
                        | GatewayError::RateLimited(_)
                );
                return Err(Uncached::Error { error, stale_ok });
            }
        };
        let (mut parts, incoming) = resp.into_parts();
        let body = match incoming.collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                return Err(Uncached::Error {
                    error: GatewayError::UpstreamUnreachable {
                        upstream: upstream.name(),
                        reason: format!("the response body broke off: {e}"),
                    },
                    stale_ok: true,
                })
            }
        };
        // Read before `Age` goes with the unstored headers (it is recomputed per answer).
        let base_age = parts
            .headers
            .get(header::AGE)
            .and_then(parse_age)
            .unwrap_or(0);
        for h in UNSTORED {
            parts.headers.remove(h);
        }
        let no_store = cache_control_has(&parts.headers, &header::CACHE_CONTROL, "no-store");
        let answer = Buffered {
            status: parts.status,
            headers: parts.headers,
            body,
        };
        if answer.status.is_server_error() {
            return Err(Uncached::Failed5xx(answer));
        }
        let today = OffsetDateTime::now_utc().date();
        let fresh = match freshness(
            &self.inner.settings,
            operation,
            answer.status,
            &answer.body,
            query.as_deref(),
            today,
        ) {
            Some(f) if !no_store => f,
            _ => return Err(Uncached::Pass(answer)),
        };
        let answer = body::StoredAnswer::new(answer.status, &answer.headers, &answer.body);
        let now = self.inner.clock.now();
        let fresh_until = now + fresh.ttl.into();
        let weight = answer.bytes()
            + fresh.transaction_ids.iter().map(String::len).sum::<usize>()
            + ENTRY_OVERHEAD;
        Ok(Arc::new(Entry {
            answer,
            stored_at: now,
            fresh_until,
            keep_until: fresh_until + self.inner.settings.stale_if_error.into(),
            base_age,
            transaction_ids: fresh.transaction_ids,
            weight: u32::try_from(weight).unwrap_or(u32::MAX),
        }))
    }

    async fn serve<S: Handler>(
        &self,
        inner: &Arc<S>,
        req: GwRequest,
        key: CacheKey,
        operation: &'static str,
    ) -> Result<GwResponse, GatewayError> {
        let clock = &self.inner.clock;
        let upstream = key.upstream;
        match directive(req.headers()) {
            Directive::Normal => {}
            d => {
                let fetched = self.fetch(&**inner, req, operation, upstream).await;
                return match fetched {
                    Ok(entry) => {
                        if d == Directive::NoCache {
                            self.inner.entries.insert(key, entry.clone()).await;
                        }
                        Ok(entry.response(clock.now(), CacheStatus::Bypass))
                    }
                    Err(Uncached::Pass(b)) => {
                        // Ratepay now says not to store this: neither may the old entry be served.
                        if d == Directive::NoCache {
                            self.inner.entries.invalidate(&key).await;
                        }
                        Ok(b.response(CacheStatus::Bypass))
                    }
                    Err(other) => other.into_result(CacheStatus::Bypass),
                };
            }
        }

        let now = clock.now();
        let present = self.inner.entries.get(&key).await;
        if let Some(e) = &present {
            if e.fresh(now) {
                return Ok(e.response(now, CacheStatus::Hit));
            }
            // No longer fresh (moka only reclaims memory later): take it out so that exactly
            // one refresh runs, and keep it at hand in case that refresh fails.
            self.remove_if_same(&key, e).await;
        }
        let cached = present.filter(|e| e.kept(now));

        let this = self.clone();
        let stale = cached.clone();
        let inner = inner.clone();
        let shared = tokio::spawn(async move {
            let entries = this.inner.entries.clone();
            entries
                .try_get_with(key, async move {
                    match this.fetch(&*inner, req, operation, upstream).await {
                        // Put the stale entry back for every waiter (and later readers).
                        Err(u) if u.stale_ok() => {
                            match stale.filter(|e| e.kept(this.inner.clock.now())) {
                                Some(e) => Ok(e),
                                None => Err(u),
                            }
                        }
                        other => other,
                    }
                })
                .await
        });
        let outcome = shared.await.map_err(|e| {
            GatewayError::Internal(format!("session-record fetch task failed: {e}"))
        })?;
        let now = clock.now();
        match outcome {
            Ok(entry) if entry.fresh(now) => Ok(entry.response(now, CacheStatus::Miss)),
            Ok(entry) => Ok(entry.response(now, CacheStatus::Stale)),
            Err(shared) => {
                let uncached = Arc::unwrap_or_clone(shared);
                match cached.filter(|e| uncached.stale_ok() && e.kept(now)) {
                    Some(e) => Ok(e.response(now, CacheStatus::Stale)),
                    None => uncached.into_result(CacheStatus::Miss),
                }
            }
        }
    }
}

/// Layer for [`SessionRecordCacheService`].
pub struct SessionRecordCacheLayer<C: Clock = DefaultClock> {
    cache: Option<SessionRecordCache<C>>,
}

impl<C: Clock> Clone for SessionRecordCacheLayer<C> {
    fn clone(&self) -> Self {
        SessionRecordCacheLayer {
            cache: self.cache.clone(),
        }
    }
}

impl<C: Clock> SessionRecordCacheLayer<C> {
    /// Serves session-record reads from `cache`.
    pub fn new(cache: SessionRecordCache<C>) -> Self {
        SessionRecordCacheLayer { cache: Some(cache) }
    }

    /// Passes every request through (cache switched off).
    pub fn disabled() -> Self {
        SessionRecordCacheLayer { cache: None }
    }
}

impl<S, C: Clock> tower::Layer<S> for SessionRecordCacheLayer<C> {
    type Service = SessionRecordCacheService<S, C>;
    fn layer(&self, inner: S) -> Self::Service {
        SessionRecordCacheService {
            inner: Arc::new(inner),
            cache: self.cache.clone(),
        }
    }
}

/// Answers session-record reads from the cache; everything else passes through.
pub struct SessionRecordCacheService<S, C: Clock = DefaultClock> {
    /// Shared with the fetch task that concurrent misses wait on together.
    inner: Arc<S>,
    cache: Option<SessionRecordCache<C>>,
}

impl<S, C: Clock> Clone for SessionRecordCacheService<S, C> {
    fn clone(&self) -> Self {
        SessionRecordCacheService {
            inner: self.inner.clone(),
            cache: self.cache.clone(),
        }
    }
}

impl<S, C> Handler for SessionRecordCacheService<S, C>
where
    S: Handler,
    C: Clock + Clone + Send + Sync + 'static,
{
    async fn handle(&self, req: GwRequest) -> Result<GwResponse, GatewayError> {
        let Some(cache) = &self.cache else {
            return self.inner.handle(req).await;
        };
        let operation = match req.extensions().get::<RequestContext>() {
            Some(ctx)
                if req.method() == Method::GET
                    && matches!(ctx.route.operation.name, RECORD_GET | RECORD_LIST) =>
            {
                ctx.route.operation
            }
            _ => return self.inner.handle(req).await,
        };
        let partner = req
            .extensions()
            .get::<Authenticated>()
            .and_then(|a| a.partner.clone());
        let key = CacheKey::new(operation.api, partner, req.uri().path(), req.uri().query());
        cache.serve(&self.inner, req, key, operation.name).await
    }
}

/// Layer for [`InvalidateOnCancellation`].
pub struct InvalidateOnCancellationLayer<C: Clock = DefaultClock> {
    cache: Option<SessionRecordCache<C>>,
}

impl<C: Clock> Clone for InvalidateOnCancellationLayer<C> {
    fn clone(&self) -> Self {
        InvalidateOnCancellationLayer {
            cache: self.cache.clone(),
        }
    }
}

impl<C: Clock> InvalidateOnCancellationLayer<C> {
    /// Invalidates in `cache` (a disabled cache: `None`, the layer passes through).
    pub fn new(cache: Option<SessionRecordCache<C>>) -> Self {
        InvalidateOnCancellationLayer { cache }
    }
}

impl<S, C: Clock> tower::Layer<S> for InvalidateOnCancellationLayer<C> {
    type Service = InvalidateOnCancellation<S, C>;
    fn layer(&self, inner: S) -> Self::Service {
        InvalidateOnCancellation {
            inner,
            cache: self.cache.clone(),
        }
    }
}

/// After a 2xx `payment.cancellations.create`, drops the transaction's cached session records.
pub struct InvalidateOnCancellation<S, C: Clock = DefaultClock> {
    inner: S,
    cache: Option<SessionRecordCache<C>>,
}

impl<S: Clone, C: Clock> Clone for InvalidateOnCancellation<S, C> {
    fn clone(&self) -> Self {
        InvalidateOnCancellation {
            inner: self.inner.clone(),
            cache: self.cache.clone(),
        }
    }
}

impl<S, C> Handler for InvalidateOnCancellation<S, C>
where
    S: Handler,
    C: Clock + Clone + Send + Sync + 'static,
{
    async fn handle(&self, req: GwRequest) -> Result<GwResponse, GatewayError> {
        let transaction = req
            .extensions()
            .get::<RequestContext>()
            .filter(|c| c.route.operation.name == CANCELLATION)
            .and_then(|c| c.route.params.transaction_id.clone());
        let (Some(cache), Some(transaction)) = (&self.cache, transaction) else {
            return self.inner.handle(req).await;
        };
        let resp = self.inner.handle(req).await?;
        if resp.status().is_success() {
            cache.invalidate_transaction(&transaction);
        }
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::VecDeque,
        sync::{
            atomic::{AtomicUsize, Ordering},
            Mutex,
        },
    };

    use governor::clock::FakeRelativeClock;
    use time::macros::date;

    use super::*;
    use crate::middleware::testing::request;

    const SID: &str = "sessionAAAAAAAAAAAAA";
    const TODAY: Date = date!(2024 - 05 - 10);

    fn settings() -> CacheSettings {
        CacheSettings {
            max_bytes: 1 << 20,
            terminal_ttl: Duration::from_secs(600),
            changing_ttl: Duration::from_secs(2),
            list_past_ttl: Duration::from_secs(300),
            list_today_ttl: Duration::from_secs(3),
            not_found_ttl: Duration::from_secs(1),
            stale_if_error: Duration::from_secs(60),
        }
    }

    fn record(status: &str, tx: Option<&str>) -> String {
        let mut v = serde_json::json!({"session_id": SID, "session_status": status});
        if let Some(t) = tx {
            v["transaction_id"] = t.into();
        }
        v.to_string()
    }

    #[test]
    fn query_normalisation_sorts_and_drops_empty_pieces() {
        assert_eq!(normalise_query("b=2&a=1"), "a=1&b=2");
        assert_eq!(normalise_query("a=1&b=2&"), "a=1&b=2");
        assert_eq!(
            normalise_query("&&createdDate=2024-01-01"),
            "createdDate=2024-01-01"
        );
        assert_eq!(normalise_query("a=2&a=1&flag"), "a=1&a=2&flag");
        let p = "/pps/api/v1/session-record";
        assert_eq!(
            CacheKey::new(Api::Hpp, None, p, Some("x=1&createdDate=2024-01-01")),
            CacheKey::new(Api::Hpp, None, p, Some("createdDate=2024-01-01&x=1&"))
        );
        assert_eq!(CacheKey::new(Api::Hpp, None, p, Some("")).target, p);
    }

    #[test]
    fn keys_separate_partners_and_upstreams() {
        let p = "/pps/api/v1/session-record/abc";
        let a = CacheKey::new(Api::Hpp, Some(Arc::from("p-a")), p, None);
        let b = CacheKey::new(Api::Hpp, Some(Arc::from("p-b")), p, None);
        let none = CacheKey::new(Api::Hpp, None, p, None);
        let empty = CacheKey::new(Api::Hpp, Some(Arc::from("")), p, None);
        assert_ne!(a, b);
        assert_ne!(a, none);
        assert_ne!(none, empty);
        assert_ne!(
            CacheKey::new(Api::Payment, Some(Arc::from("p-a")), p, None),
            a
        );
    }

    #[test]
    fn record_lifetime_follows_its_status() {
        let s = settings();
        let ttl = |status: &str| {
            freshness(
                &s,
                RECORD_GET,
                StatusCode::OK,
                record(status, None).as_bytes(),
                None,
                TODAY,
            )
            .map(|f| f.ttl)
        };
        for t in ["COMPLETED", "ERROR", "EXPIRED", "CANCELED"] {
            assert_eq!(ttl(t), Some(Duration::from_secs(600)), "{t}");
        }
        for t in [
            "CREATED",
            "IN_PROGRESS",
            "OTP_PENDING",
            "FRAUD_CANCELLATION_REQUESTED",
            "SOMETHING_NEW",
        ] {
            assert_eq!(ttl(t), Some(Duration::from_secs(2)), "{t}");
        }
        let f = freshness(
            &s,
            RECORD_GET,
            StatusCode::OK,
            record("COMPLETED", Some("tx-1")).as_bytes(),
            None,
            TODAY,
        )
        .unwrap();
        assert_eq!(f.transaction_ids, ["tx-1"]);
        // Not a record, other statuses, and 5xx are never stored; 404 briefly.
        assert_eq!(
            freshness(&s, RECORD_GET, StatusCode::OK, b"<html>", None, TODAY),
            None
        );
        assert_eq!(
            freshness(&s, RECORD_GET, StatusCode::OK, b"{}", None, TODAY),
            None
        );
        assert_eq!(
            freshness(&s, RECORD_GET, StatusCode::BAD_REQUEST, b"{}", None, TODAY),
            None
        );
        assert_eq!(
            freshness(
                &s,
                RECORD_GET,
                StatusCode::SERVICE_UNAVAILABLE,
                b"{}",
                None,
                TODAY
            ),
            None
        );
        assert_eq!(
            freshness(&s, RECORD_GET, StatusCode::NOT_FOUND, b"{}", None, TODAY).map(|f| f.ttl),
            Some(Duration::from_secs(1))
        );
        // A zero lifetime switches that kind off.
        let off = CacheSettings {
            changing_ttl: Duration::ZERO,
            ..settings()
        };
        assert_eq!(
            freshness(
                &off,
                RECORD_GET,
                StatusCode::OK,
                record("CREATED", None).as_bytes(),
                None,
                TODAY
            ),
            None
        );
    }

    #[test]
    fn list_lifetime_follows_its_day_and_records() {
        let s = settings();
        let done = format!(
            "[{},{}]",
            record("COMPLETED", Some("t1")),
            record("EXPIRED", None)
        );
        let open = format!(
            "[{},{}]",
            record("COMPLETED", Some("t1")),
            record("IN_PROGRESS", None)
        );
        let ttl = |body: &str, q: &str| {
            freshness(
                &s,
                RECORD_LIST,
                StatusCode::OK,
                body.as_bytes(),
                Some(q),
                TODAY,
            )
            .map(|f| f.ttl)
        };
        assert_eq!(
            ttl(&done, "createdDate=2024-05-09"),
            Some(Duration::from_secs(300)),
            "past, settled"
        );
        assert_eq!(
            ttl("[]", "createdDate=2023-01-01"),
            Some(Duration::from_secs(300)),
            "past, empty"
        );
        assert_eq!(
            ttl(&open, "createdDate=2024-05-09"),
            Some(Duration::from_secs(3)),
            "past, still changing"
        );
        assert_eq!(
            ttl(&done, "createdDate=2024-05-10"),
            Some(Duration::from_secs(3)),
            "today"
        );
        assert_eq!(
            ttl(&done, "createdDate=2024-05-11"),
            Some(Duration::from_secs(3)),
            "future"
        );
        assert_eq!(ttl(&done, "createdDate=10.05.2024"), None, "bad date");
        assert_eq!(ttl(&done, "other=1"), None, "no date");
        assert_eq!(ttl("{}", "createdDate=2024-05-09"), None, "not a list");
        let f = freshness(
            &s,
            RECORD_LIST,
            StatusCode::OK,
            done.as_bytes(),
            Some("createdDate=2024-05-09"),
            TODAY,
        )
        .unwrap();
        assert_eq!(f.transaction_ids, ["t1"]);
    }

    #[test]
    fn caller_directives() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(*k, HeaderValue::from_static(v));
            }
            directive(&m)
        };
        assert_eq!(h(&[]), Directive::Normal);
        assert_eq!(h(&[("cache-control", "No-Cache")]), Directive::NoCache);
        assert_eq!(h(&[("cache-control", "max-age=0")]), Directive::NoCache);
        assert_eq!(h(&[("pragma", "no-cache")]), Directive::NoCache);
        assert_eq!(
            h(&[("cache-control", "no-cache, no-store")]),
            Directive::NoStore
        );
        assert_eq!(h(&[("cache-control", "max-age=60")]), Directive::Normal);
    }

    type Scripted = Result<(u16, String), GatewayError>;

    /// A scripted Ratepay: each call takes the next answer (the last one repeats).
    #[derive(Clone)]
    struct Script {
        answers: Arc<Mutex<VecDeque<Scripted>>>,
        calls: Arc<AtomicUsize>,
        gate: Option<Arc<tokio::sync::Semaphore>>,
    }

    impl Script {
        fn new(answers: Vec<Scripted>) -> Script {
            Script {
                answers: Arc::new(Mutex::new(answers.into())),
                calls: Arc::new(AtomicUsize::new(0)),
                gate: None,
            }
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    impl Handler for Script {
        async fn handle(&self, _req: GwRequest) -> Result<GwResponse, GatewayError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let answer = {
                let mut a = self.answers.lock().unwrap();
                if a.len() > 1 {
                    a.pop_front().unwrap()
                } else {
                    a.front().cloned().unwrap()
                }
            };
            if let Some(g) = &self.gate {
                let _permit = g.acquire().await.unwrap();
            }
            let (status, body) = answer?;
            let mut resp = GwResponse::new(body::full(body));
            *resp.status_mut() = StatusCode::from_u16(status).unwrap();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Ok(resp)
        }
    }

    fn get(partner: Option<&str>) -> GwRequest {
        request(
            Method::GET,
            &format!("/pps/api/v1/session-record/{SID}"),
            partner,
            &[],
        )
    }

    struct Answer {
        status: u16,
        x_cache: String,
        age: Option<u64>,
        body: String,
    }

    async fn call<S: Handler>(
        svc: &mut SessionRecordCacheService<S, FakeRelativeClock>,
        req: GwRequest,
    ) -> Result<Answer, GatewayError> {
        let resp = svc.handle(req).await?;
        let x_cache = resp
            .headers()
            .get(&X_CACHE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let age = resp
            .headers()
            .get(header::AGE)
            .map(|v| v.to_str().unwrap().parse().unwrap());
        let status = resp.status().as_u16();
        let body = String::from_utf8(
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap();
        Ok(Answer {
            status,
            x_cache,
            age,
            body,
        })
    }

    fn service(
        script: &Script,
        settings: CacheSettings,
    ) -> (
        SessionRecordCacheService<Script, FakeRelativeClock>,
        SessionRecordCache<FakeRelativeClock>,
        FakeRelativeClock,
    ) {
        let clock = FakeRelativeClock::default();
        let cache = SessionRecordCache::with_clock(&settings, clock.clone());
        let svc = tower::Layer::layer(&SessionRecordCacheLayer::new(cache.clone()), script.clone());
        (svc, cache, clock)
    }

    #[tokio::test]
    async fn changing_record_expires_after_its_short_lifetime_and_terminal_one_stays() {
        let script = Script::new(vec![
            Ok((200, record("CREATED", None))),
            Ok((200, record("COMPLETED", Some("tx")))),
        ]);
        let (mut svc, _cache, clock) = service(&script, settings());
        let a = call(&mut svc, get(None)).await.unwrap();
        assert_eq!(
            (a.status, a.x_cache.as_str(), a.age),
            (200, "MISS", Some(0))
        );
        clock.advance(Duration::from_millis(1999));
        let a = call(&mut svc, get(None)).await.unwrap();
        assert_eq!((a.x_cache.as_str(), a.age), ("HIT", Some(1)));
        assert!(a.body.contains("CREATED"));
        assert_eq!(script.calls(), 1);
        // At exactly 2 s the CREATED record is no longer fresh: refetched, now COMPLETED.
        clock.advance(Duration::from_millis(1));
        let a = call(&mut svc, get(None)).await.unwrap();
        assert_eq!(a.x_cache, "MISS");
        assert!(a.body.contains("COMPLETED"));
        assert_eq!(script.calls(), 2);
        clock.advance(Duration::from_secs(599));
        let a = call(&mut svc, get(None)).await.unwrap();
        assert_eq!((a.x_cache.as_str(), a.age), ("HIT", Some(599)));
        clock.advance(Duration::from_secs(1));
        assert_eq!(call(&mut svc, get(None)).await.unwrap().x_cache, "MISS");
        assert_eq!(script.calls(), 3);
    }

    #[test]
    fn age_is_read_and_reported_capped_at_2_pow_31() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(parse_age(&v("42")), Some(42));
        assert_eq!(parse_age(&v("2147483648")), Some(MAX_AGE_SECS));
        assert_eq!(parse_age(&v("18446744073709551615")), Some(MAX_AGE_SECS));
        assert_eq!(parse_age(&v("99999999999999999999999")), Some(MAX_AGE_SECS));
        for bad in ["", "-1", "+1", "1.5", "soon"] {
            assert_eq!(parse_age(&v(bad)), None, "{bad:?}");
        }
        assert_eq!(reported_age(Duration::from_secs(5), 10), 15);
        assert_eq!(reported_age(Duration::from_secs(5), u64::MAX), MAX_AGE_SECS);
        assert_eq!(reported_age(Duration::MAX, u64::MAX), MAX_AGE_SECS);
        assert_eq!(reported_age(Duration::MAX, 0), MAX_AGE_SECS);
    }

    #[tokio::test]
    async fn partners_never_share_entries() {
        let script = Script::new(vec![Ok((200, record("COMPLETED", None)))]);
        let (mut svc, _cache, _clock) = service(&script, settings());
        assert_eq!(
            call(&mut svc, get(Some("p-a"))).await.unwrap().x_cache,
            "MISS"
        );
        assert_eq!(
            call(&mut svc, get(Some("p-b"))).await.unwrap().x_cache,
            "MISS"
        );
        assert_eq!(call(&mut svc, get(None)).await.unwrap().x_cache, "MISS");
        assert_eq!(
            call(&mut svc, get(Some("p-a"))).await.unwrap().x_cache,
            "HIT"
        );
        assert_eq!(script.calls(), 3);
    }

    #[tokio::test]
    async fn not_found_is_kept_briefly_and_other_answers_not_at_all() {
        let script = Script::new(vec![
            Ok((404, "{}".into())),
            Ok((400, "{}".into())),
            Ok((400, "{}".into())),
            Ok((200, record("COMPLETED", None))),
        ]);
        let (mut svc, _cache, clock) = service(&script, settings());
        assert_eq!(call(&mut svc, get(None)).await.unwrap().status, 404);
        let a = call(&mut svc, get(None)).await.unwrap();
        assert_eq!((a.status, a.x_cache.as_str()), (404, "HIT"));
        clock.advance(Duration::from_secs(1));
        assert_eq!(call(&mut svc, get(None)).await.unwrap().status, 400);
        assert_eq!(call(&mut svc, get(None)).await.unwrap().status, 400);
        assert_eq!(script.calls(), 3);
    }

    #[tokio::test]
    async fn stale_if_error_within_the_window_only() {
        let script = Script::new(vec![
            Ok((200, record("CREATED", None))),
            Ok((503, "{\"error\":\"down\"}".into())),
            Err(GatewayError::UpstreamTimeout {
                upstream: "hpp",
                timeout_ms: 10,
            }),
            Ok((503, "{\"error\":\"down\"}".into())),
        ]);
        let (mut svc, _cache, clock) = service(&script, settings());
        assert_eq!(call(&mut svc, get(None)).await.unwrap().x_cache, "MISS");
        clock.advance(Duration::from_secs(5));
        let a = call(&mut svc, get(None)).await.unwrap();
        assert_eq!(
            (a.status, a.x_cache.as_str(), a.age),
            (200, "STALE", Some(5))
        );
        // Each later request tries Ratepay again; a timeout also falls back to the stale entry.
        let a = call(&mut svc, get(None)).await.unwrap();
        assert_eq!((a.status, a.x_cache.as_str()), (200, "STALE"));
        assert_eq!(script.calls(), 3);
        // 2 s fresh + 60 s stale window: at 62 s the entry can no longer stand in.
        clock.advance(Duration::from_secs(57));
        let a = call(&mut svc, get(None)).await.unwrap();
        assert_eq!((a.status, a.x_cache.as_str()), (503, "MISS"));
    }

    #[tokio::test]
    async fn a_4xx_is_not_an_error_to_hide_behind_a_stale_entry() {
        let script = Script::new(vec![
            Ok((200, record("CREATED", None))),
            Ok((403, "{}".into())),
        ]);
        let (mut svc, _cache, clock) = service(&script, settings());
        call(&mut svc, get(None)).await.unwrap();
        clock.advance(Duration::from_secs(3));
        assert_eq!(call(&mut svc, get(None)).await.unwrap().status, 403);
    }

    #[tokio::test]
    async fn no_cache_refreshes_and_no_store_leaves_the_entry_alone() {
        let script = Script::new(vec![
            Ok((200, record("CREATED", None))),
            Ok((200, record("IN_PROGRESS", None))),
            Ok((200, record("OTP_PENDING", None))),
        ]);
        let (mut svc, _cache, _clock) = service(&script, settings());
        call(&mut svc, get(None)).await.unwrap();
        let no_cache = |v| {
            request(
                Method::GET,
                &format!("/pps/api/v1/session-record/{SID}"),
                None,
                &[("cache-control", v)],
            )
        };
        let a = call(&mut svc, no_cache("no-cache")).await.unwrap();
        assert_eq!(a.x_cache, "BYPASS");
        assert!(a.body.contains("IN_PROGRESS"));
        let a = call(&mut svc, get(None)).await.unwrap();
        assert_eq!(a.x_cache, "HIT");
        assert!(
            a.body.contains("IN_PROGRESS"),
            "no-cache refreshed the entry"
        );
        let a = call(&mut svc, no_cache("no-store")).await.unwrap();
        assert!(a.body.contains("OTP_PENDING"));
        assert!(
            call(&mut svc, get(None))
                .await
                .unwrap()
                .body
                .contains("IN_PROGRESS"),
            "no-store stored nothing"
        );
        assert_eq!(script.calls(), 3);
    }

    #[tokio::test]
    async fn ratepay_no_store_is_obeyed() {
        #[derive(Clone)]
        struct NoStore(Arc<AtomicUsize>);
        impl Handler for NoStore {
            async fn handle(&self, _: GwRequest) -> Result<GwResponse, GatewayError> {
                self.0.fetch_add(1, Ordering::SeqCst);
                let mut resp = GwResponse::new(body::full(record("COMPLETED", None)));
                resp.headers_mut().insert(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("private, no-store"),
                );
                Ok(resp)
            }
        }
        let calls = Arc::new(AtomicUsize::new(0));
        let cache = SessionRecordCache::with_clock(&settings(), FakeRelativeClock::default());
        let mut svc =
            tower::Layer::layer(&SessionRecordCacheLayer::new(cache), NoStore(calls.clone()));
        for _ in 0..3 {
            assert_eq!(call(&mut svc, get(None)).await.unwrap().x_cache, "MISS");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_call_even_when_the_leader_hangs_up() {
        let mut script = Script::new(vec![Ok((200, record("COMPLETED", None)))]);
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        script.gate = Some(gate.clone());
        let (svc, _cache, _clock) = service(&script, settings());
        // The first request leads, then hangs up while Ratepay is still answering.
        let mut leader_svc = svc.clone();
        let leader =
            tokio::spawn(async move { call(&mut leader_svc, get(None)).await.map(|a| a.x_cache) });
        while script.calls() == 0 {
            tokio::task::yield_now().await;
        }
        leader.abort();
        let mut waiters = Vec::new();
        for _ in 0..100 {
            let mut s = svc.clone();
            waiters.push(tokio::spawn(async move {
                call(&mut s, get(None)).await.map(|a| (a.status, a.x_cache))
            }));
        }
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        gate.add_permits(1000);
        for w in waiters {
            let (status, x_cache) = w.await.unwrap().unwrap();
            assert_eq!(status, 200);
            assert!(x_cache == "MISS" || x_cache == "HIT", "{x_cache}");
        }
        assert_eq!(script.calls(), 1);
    }

    #[tokio::test]
    async fn bytes_stay_within_capacity() {
        let body = record("COMPLETED", None) + &" ".repeat(900);
        let script = Script::new(vec![Ok((200, body))]);
        let (mut svc, cache, _clock) = service(
            &script,
            CacheSettings {
                max_bytes: 8 * 1024,
                ..settings()
            },
        );
        for i in 0..40 {
            let path = format!("/pps/api/v1/session-record/session{i:0>15}");
            let a = call(&mut svc, request(Method::GET, &path, None, &[]))
                .await
                .unwrap();
            assert_eq!(a.status, 200);
        }
        cache.run_pending_tasks().await;
        assert!(
            cache.weighted_size() <= 8 * 1024,
            "{} bytes",
            cache.weighted_size()
        );
        assert!(
            cache.entry_count() >= 4 && cache.entry_count() < 40,
            "{} entries",
            cache.entry_count()
        );
    }

    #[tokio::test]
    async fn cancellation_invalidates_the_transactions_records_only() {
        let script = Script::new(vec![Ok((
            200,
            record("COMPLETED", Some("txAAAAAAAAAAAAAAAAAAA")),
        ))]);
        let (mut svc, cache, _clock) = service(&script, settings());
        call(&mut svc, get(None)).await.unwrap();
        assert_eq!(call(&mut svc, get(None)).await.unwrap().x_cache, "HIT");
        cache.invalidate_transaction("another-transaction-id");
        assert_eq!(call(&mut svc, get(None)).await.unwrap().x_cache, "HIT");

        // Through the layer: a failed cancellation keeps the entry, a 2xx one drops it.
        let cancel_path =
            "/transaction/management/v2/transactions/txAAAAAAAAAAAAAAAAAAA/cancellations";
        let outcome = Script::new(vec![Ok((422, "{}".into())), Ok((201, "{}".into()))]);
        let cancel = tower::Layer::layer(
            &InvalidateOnCancellationLayer::new(Some(cache.clone())),
            outcome,
        );
        let resp = cancel
            .handle(request(Method::POST, cancel_path, None, &[]))
            .await
            .unwrap();
        assert_eq!(resp.status(), 422);
        assert_eq!(call(&mut svc, get(None)).await.unwrap().x_cache, "HIT");
        let resp = cancel
            .handle(request(Method::POST, cancel_path, None, &[]))
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        assert_eq!(call(&mut svc, get(None)).await.unwrap().x_cache, "MISS");
        assert_eq!(script.calls(), 2);
    }

    #[tokio::test]
    async fn other_operations_pass_through_untouched() {
        let script = Script::new(vec![Ok((200, "{}".into()))]);
        let (svc, _cache, _clock) = service(&script, settings());
        let path = "/transaction/management/v2/transactions/txAAAAAAAAAAAAAAAAAAA";
        for _ in 0..2 {
            let resp = svc
                .handle(request(Method::GET, path, None, &[]))
                .await
                .unwrap();
            assert!(resp.headers().get(&X_CACHE).is_none());
        }
        assert_eq!(script.calls(), 2);
    }
}
