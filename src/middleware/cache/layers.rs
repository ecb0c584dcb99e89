//! The two tower layers: [`SessionRecordCacheLayer`] answering reads, and
//! [`InvalidateOnCancellationLayer`] dropping a cancelled transaction's records.

use std::sync::Arc;

use governor::clock::{Clock, DefaultClock};
use http::Method;

use crate::middleware::{GwRequest, GwResponse, Handler};
use crate::{
    cluster::{events::Event, Cluster},
    context::Call,
    error::GatewayError,
};

use super::*;

/// Layer for [`SessionRecordCacheService`].
pub struct SessionRecordCacheLayer<C: Clock = DefaultClock> {
    pub(super) cache: Option<SessionRecordCache<C>>,
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
    pub(super) inner: Arc<S>,
    pub(super) cache: Option<SessionRecordCache<C>>,
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
    async fn handle(&self, call: &Call, req: GwRequest) -> Result<GwResponse, GatewayError> {
        let Some(cache) = &self.cache else {
            return self.inner.handle(call, req).await;
        };
        let operation = call.ctx.route.operation;
        if req.method() != Method::GET || !matches!(operation.name, RECORD_GET | RECORD_LIST) {
            return self.inner.handle(call, req).await;
        }
        let partner = call.auth.partner.clone();
        let key = CacheKey::new(operation.api, partner, req.uri().path(), req.uri().query());
        cache
            .serve(&self.inner, call, req, key, operation.name)
            .await
    }
}

/// Layer for [`InvalidateOnCancellation`].
pub struct InvalidateOnCancellationLayer<C: Clock = DefaultClock> {
    cache: Option<SessionRecordCache<C>>,
    cluster: Option<Arc<Cluster>>,
}

impl<C: Clock> Clone for InvalidateOnCancellationLayer<C> {
    fn clone(&self) -> Self {
        InvalidateOnCancellationLayer {
            cache: self.cache.clone(),
            cluster: self.cluster.clone(),
        }
    }
}

impl<C: Clock> InvalidateOnCancellationLayer<C> {
    /// Invalidates in `cache` (a disabled cache: `None`, the layer passes through).
    pub fn new(cache: Option<SessionRecordCache<C>>) -> Self {
        InvalidateOnCancellationLayer {
            cache,
            cluster: None,
        }
    }

    /// Also tells every instance of the fleet to drop the transaction's records.
    pub fn shared(mut self, cluster: Option<Arc<Cluster>>) -> Self {
        self.cluster = cluster;
        self
    }
}

impl<S, C: Clock> tower::Layer<S> for InvalidateOnCancellationLayer<C> {
    type Service = InvalidateOnCancellation<S, C>;
    fn layer(&self, inner: S) -> Self::Service {
        InvalidateOnCancellation {
            inner,
            cache: self.cache.clone(),
            cluster: self.cluster.clone(),
        }
    }
}

/// After a 2xx `payment.cancellations.create`, drops the transaction's cached session records
/// (in every instance of a fleet).
pub struct InvalidateOnCancellation<S, C: Clock = DefaultClock> {
    inner: S,
    cache: Option<SessionRecordCache<C>>,
    cluster: Option<Arc<Cluster>>,
}

impl<S: Clone, C: Clock> Clone for InvalidateOnCancellation<S, C> {
    fn clone(&self) -> Self {
        InvalidateOnCancellation {
            inner: self.inner.clone(),
            cache: self.cache.clone(),
            cluster: self.cluster.clone(),
        }
    }
}

impl<S, C> Handler for InvalidateOnCancellation<S, C>
where
    S: Handler,
    C: Clock + Clone + Send + Sync + 'static,
{
    async fn handle(&self, call: &Call, req: GwRequest) -> Result<GwResponse, GatewayError> {
        let route = &call.ctx.route;
        let transaction = match route.operation.name {
            CANCELLATION => route.params.transaction_id.clone(),
            _ => None,
        };
        let Some(transaction) =
            transaction.filter(|_| self.cache.is_some() || self.cluster.is_some())
        else {
            return self.inner.handle(call, req).await;
        };
        let resp = self.inner.handle(call, req).await?;
        if resp.status().is_success() {
            if let Some(cache) = &self.cache {
                cache.invalidate_transaction(&transaction);
            }
            if let Some(cluster) = &self.cluster {
                cluster.announce(Event::Invalidate(transaction.to_string()));
            }
        }
        Ok(resp)
    }
}
