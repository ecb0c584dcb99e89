//! One stored answer ([`Entry`]), its weight, and when moka may reclaim it.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use governor::clock::{Clock, Reference};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use moka::Expiry;

use crate::body;
use crate::middleware::GwResponse;

use super::named::TransactionIds;
use super::*;

/// Ratepay's answer, buffered.
#[derive(Debug, Clone)]
pub(super) struct Buffered {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
}

impl Buffered {
    pub(super) fn response(&self, cache: CacheStatus) -> GwResponse {
        let mut resp = GwResponse::new(body::full(self.body.clone()));
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers.clone();
        resp.headers_mut().insert(X_CACHE.clone(), cache.header());
        resp
    }
}

/// What an entry costs beyond its answer's bytes (key, entry, moka's bookkeeping), as measured
/// by the load benchmark's memory case: about 1 KiB per session record in all.
pub(super) const ENTRY_OVERHEAD: usize = 768;

/// One stored answer and the times that govern it (on the cache's clock).
pub struct Entry<I> {
    pub(super) answer: body::StoredAnswer,
    pub(super) stored_at: I,
    pub(super) fresh_until: I,
    pub(super) keep_until: I,
    /// Ratepay's own `Age`, when it sent one (at most [`MAX_AGE_SECS`]).
    pub(super) base_age: u64,
    pub(super) transaction_ids: TransactionIds,
    pub(super) weight: u32,
}

impl<I: Reference> Entry<I> {
    pub(super) fn response(&self, now: I, cache: CacheStatus) -> GwResponse {
        let mut resp = self.answer.response();
        resp.headers_mut().insert(X_CACHE.clone(), cache.header());
        let age = reported_age(now.duration_since(self.stored_at).into(), self.base_age);
        resp.headers_mut()
            .insert(header::AGE, HeaderValue::from(age));
        resp
    }

    pub(super) fn fresh(&self, now: I) -> bool {
        now < self.fresh_until
    }

    pub(super) fn kept(&self, now: I) -> bool {
        now < self.keep_until
    }
}

/// moka's per-entry expiry: reclaim memory once freshness and the stale window have passed.
pub(super) struct KeepUntil<C> {
    pub(super) clock: C,
}

impl<C: Clock> KeepUntil<C> {
    pub(super) fn left(&self, e: &Entry<C::Instant>) -> Duration {
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
