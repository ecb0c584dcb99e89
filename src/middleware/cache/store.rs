//! The store: lookups by freshness and the stale window on the injected clock, the coalesced
//! fetch (one upstream call for concurrent misses, on its own task) and invalidation.

use std::{fmt, sync::Arc};

use governor::clock::{Clock, DefaultClock};
use http::header;
use http_body_util::BodyExt;
use moka::{future::Cache, ops::compute::Op};
use time::OffsetDateTime;

use crate::middleware::{GwRequest, GwResponse, Handler};
use crate::{body, config::CacheSettings, context::Call, error::GatewayError, routes::Api};

use super::named::{Named, TransactionIds};
use super::*;

/// Why an answer was not stored.
#[derive(Debug, Clone)]
pub(super) enum Uncached {
    /// Ratepay answered something not to store (4xx other than 404, `no-store`, ...).
    Pass(Buffered),
    /// Ratepay failed with a 5xx.
    Failed5xx(Buffered),
    /// The call failed; `stale_ok` when a stale entry may stand in for it.
    Error { error: GatewayError, stale_ok: bool },
}

impl Uncached {
    pub(super) fn stale_ok(&self) -> bool {
        match self {
            Uncached::Pass(_) => false,
            Uncached::Failed5xx(_) => true,
            Uncached::Error { stale_ok, .. } => *stale_ok,
        }
    }

    pub(super) fn into_result(self, cache: CacheStatus) -> Result<GwResponse, GatewayError> {
        match self {
            Uncached::Pass(b) | Uncached::Failed5xx(b) => Ok(b.response(cache)),
            Uncached::Error { error, .. } => Err(error),
        }
    }
}

/// The session-record cache of one gateway. Cheap to clone.
pub struct SessionRecordCache<C: Clock = DefaultClock> {
    pub(super) inner: Arc<CacheInner<C>>,
}

pub(super) struct CacheInner<C: Clock> {
    pub(super) entries: Cache<CacheKey, Arc<Entry<C::Instant>>>,
    pub(super) settings: CacheSettings,
    pub(super) clock: C,
    /// Which transactions the entries name (see `named.rs`).
    named: Arc<Named>,
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
                named: Arc::default(),
            }),
        }
    }

    /// Drops every cached record (and list) that belongs to `ratepay_transaction_id`.
    ///
    /// Takes effect for reads at once; the memory is reclaimed by moka's maintenance. An answer
    /// fetched while the cancellation was in flight can still be stored afterwards; it lives
    /// only its short lifetime unless its record is terminal.
    pub fn invalidate_transaction(&self, ratepay_transaction_id: &str) {
        // No entry names it, so none can be cached: no predicate for moka to run.
        if !self.inner.named.names(ratepay_transaction_id) {
            return;
        }
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
    pub(super) async fn remove_if_same(&self, key: &CacheKey, stale: &Arc<Entry<C::Instant>>) {
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
    pub(super) async fn fetch<S: Handler>(
        &self,
        inner: &S,
        call: &Call,
        req: GwRequest,
        operation: &'static str,
        upstream: Api,
    ) -> Result<Arc<Entry<C::Instant>>, Uncached> {
        let query = req.uri().query().map(str::to_owned);
        let resp = match inner.handle(call, req).await {
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
        // A shared fetch runs on a task of its own, which the edge's deadline does not reach,
        // and the body is bounded per gap only: a body trickled a byte per gap would hold the
        // fetch, and every caller that joins it, for good. So it ends at the deadline of the
        // request that started it.
        let (clock, deadline) = (call.ctx.peer.clock.as_deref(), call.ctx.deadline);
        let broke_off = |reason: String| Uncached::Error {
            error: GatewayError::UpstreamUnreachable {
                upstream: upstream.name(),
                reason,
            },
            stale_ok: true,
        };
        let body = match crate::conn_clock::within(clock, deadline, incoming.collect()).await {
            Ok(Ok(c)) => c.to_bytes(),
            Ok(Err(e)) => return Err(broke_off(format!("the response body broke off: {e}"))),
            Err(_) => {
                return Err(broke_off(
                    "the response body was still arriving at the request's deadline (limits.request_timeout_ms)".into(),
                ))
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
        let transaction_ids = TransactionIds::new(fresh.transaction_ids, self.inner.named.clone());
        let weight = answer.bytes() + transaction_ids.bytes() + ENTRY_OVERHEAD;
        Ok(Arc::new(Entry {
            answer,
            stored_at: now,
            fresh_until,
            keep_until: fresh_until + self.inner.settings.stale_if_error.into(),
            base_age,
            transaction_ids,
            weight: u32::try_from(weight).unwrap_or(u32::MAX),
        }))
    }

    pub(super) async fn serve<S: Handler>(
        &self,
        inner: &Arc<S>,
        call: &Call,
        req: GwRequest,
        key: CacheKey,
        operation: &'static str,
    ) -> Result<GwResponse, GatewayError> {
        let clock = &self.inner.clock;
        let upstream = key.upstream;
        match directive(req.headers()) {
            Directive::Normal => {}
            d => {
                let fetched = self.fetch(&**inner, call, req, operation, upstream).await;
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
        let (inner, call) = (inner.clone(), call.clone());
        let shared = tokio::spawn(async move {
            let entries = this.inner.entries.clone();
            entries
                .try_get_with(key, async move {
                    match this.fetch(&*inner, &call, req, operation, upstream).await {
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
