//! The two rate-limit layers ([`CallerRateLimitLayer`] before the cache,
//! [`UpstreamRateLimitLayer`] after it) and the queue-mode wait they share.

use std::{
    future::{ready, Future},
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use governor::clock::{Clock, DefaultClock};
use http::{header, StatusCode};
use time::OffsetDateTime;

use super::{
    decision::{parse_retry_after, Decision, RateLimits},
    shared::SharedRateLimits,
};
use crate::{
    cluster::{events::Event, Cluster},
    context::{Call, RequestContext},
    error::GatewayError,
    middleware::cache::{RECORD_GET, RECORD_LIST},
    middleware::{GwRequest, GwResponse, Handler},
};

/// Runs `check` until it admits or refuses, sleeping through its waits (queue mode).
///
/// Waiting counts from `received` (the edge's arrival time), so the caller and upstream layers
/// together never hold a request longer than `max_wait`.
/// Time spent queued is added to the request's stats (access log, metrics). What an admission
/// carries (`T`: the headroom, or the result of the Redis call that checked) is returned.
pub async fn admit<T, F: Future<Output = Decision<T>>>(
    ctx: &RequestContext,
    mut check: impl FnMut(Duration) -> F,
) -> Result<T, GatewayError> {
    let received = ctx.received;
    let mut queued = Duration::ZERO;
    let result = loop {
        match check(received.elapsed()).await {
            Decision::Allow(h) => break Ok(h),
            Decision::Refuse(r) => break Err(GatewayError::RateLimited(r)),
            Decision::Unavailable => break Err(GatewayError::SharedLimitsUnavailable),
            Decision::Wait(d) => {
                let d = d.max(Duration::from_millis(1));
                tokio::time::sleep(d).await;
                queued += d;
            }
        }
    };
    if !queued.is_zero() {
        ctx.stats
            .queued_us
            .fetch_add(queued.as_micros() as u64, Ordering::Relaxed);
    }
    result
}

/// Layer for [`CallerRateLimit`].
pub struct CallerRateLimitLayer<C: Clock = DefaultClock> {
    limits: Arc<RateLimits<C>>,
    shared: Option<Arc<SharedRateLimits>>,
    combine: bool,
}

impl<C: Clock> Clone for CallerRateLimitLayer<C> {
    fn clone(&self) -> Self {
        CallerRateLimitLayer {
            limits: self.limits.clone(),
            shared: self.shared.clone(),
            combine: self.combine,
        }
    }
}

impl<C: Clock> CallerRateLimitLayer<C> {
    /// Enforces the caller limits of `limits`.
    pub fn new(limits: Arc<RateLimits<C>>) -> Self {
        CallerRateLimitLayer {
            limits,
            shared: None,
            combine: false,
        }
    }

    /// With shared limits, spends a request's budgets toward Ratepay here too, in the same
    /// round trip, when nothing between this layer and [`UpstreamRateLimitLayer`] can answer
    /// it (not a session-record read, not a keyed call); that layer then skips them. Only for
    /// the proxied stack, whose requests do go to Ratepay.
    pub fn combining_upstream(mut self) -> Self {
        self.combine = true;
        self
    }

    /// Keeps the budgets in the fleet's Redis instead (`None`: in-process, as [`Self::new`]).
    pub fn shared(mut self, shared: Option<Arc<SharedRateLimits>>) -> Self {
        self.shared = shared;
        self
    }
}

impl<S, C: Clock> tower::Layer<S> for CallerRateLimitLayer<C> {
    type Service = CallerRateLimit<S, C>;
    fn layer(&self, inner: S) -> CallerRateLimit<S, C> {
        CallerRateLimit {
            inner,
            limits: self.limits.clone(),
            shared: self.shared.clone(),
            combine: self.combine,
        }
    }
}

/// Spends from the caller's budget; 429 (or a wait in queue mode) when it is used up.
pub struct CallerRateLimit<S, C: Clock = DefaultClock> {
    inner: S,
    limits: Arc<RateLimits<C>>,
    shared: Option<Arc<SharedRateLimits>>,
    combine: bool,
}

impl<S: Clone, C: Clock> Clone for CallerRateLimit<S, C> {
    fn clone(&self) -> Self {
        CallerRateLimit {
            inner: self.inner.clone(),
            limits: self.limits.clone(),
            shared: self.shared.clone(),
            combine: self.combine,
        }
    }
}

/// In both stacks (the proxied calls' and the token endpoint's), so it takes any context that
/// holds the caller's [`Call`].
impl<S, C, Cx> Handler<Cx> for CallerRateLimit<S, C>
where
    S: Handler<Cx>,
    C: Clock + Clone + Send + Sync + 'static,
    Cx: AsRef<Call> + Sync,
{
    async fn handle(&self, cx: &Cx, req: GwRequest) -> Result<GwResponse, GatewayError> {
        let call = cx.as_ref();
        let op = call.ctx.route.operation;
        let caller = &call.auth.caller.name;
        let limits = &*self.limits;
        let keyed = op.keys.keyed(req.headers());
        if let Some(shared) = &self.shared {
            if self.combine && keyed && shared.caller_rate(caller).is_some() {
                return self.deferred(cx, shared, req).await;
            }
        }
        let combined = match &self.shared {
            Some(shared)
                if self.combine && !keyed && !matches!(op.name, RECORD_GET | RECORD_LIST) =>
            {
                Some(shared)
            }
            _ => None,
        };
        if combined.is_none() && !self.limits.limits_callers() {
            return self.inner.handle(cx, req).await;
        }
        let headroom = match (&self.shared, combined) {
            (_, Some(shared)) => {
                let h = admit(&call.ctx, |waited| {
                    shared.check_caller_and_upstream(limits, caller, op.api, op.name, waited)
                })
                .await?;
                call.ctx
                    .stats
                    .upstream_admitted
                    .store(true, Ordering::Relaxed);
                h
            }
            (Some(shared), None) => {
                admit(&call.ctx, |waited| {
                    shared.check_caller(limits, caller, waited)
                })
                .await?
            }
            (None, None) => {
                admit(&call.ctx, |waited| {
                    ready(limits.check_caller(caller, waited))
                })
                .await?
            }
        };
        let mut resp = self.inner.handle(cx, req).await?;
        // The caller paces itself by its own budget, not by whatever Ratepay reports.
        if let Some(h) = headroom {
            h.write_headers(resp.headers_mut());
        }
        Ok(resp)
    }
}

impl<S, C: Clock + Clone + Send + Sync + 'static> CallerRateLimit<S, C> {
    /// A keyed call with shared limits: the caller's budget is spent with the idempotency
    /// lease, in its round trip, so that a cancellation pays one Redis round trip before it
    /// leaves instead of two. A request answered before any lease (a 400, this instance's
    /// replay or 409) spends it here afterwards, and a refusal then replaces its answer, as if
    /// it had been spent first; the upstream layer spends it if nothing did (the net).
    async fn deferred<Cx>(
        &self,
        cx: &Cx,
        shared: &SharedRateLimits,
        req: GwRequest,
    ) -> Result<GwResponse, GatewayError>
    where
        S: Handler<Cx>,
        Cx: AsRef<Call> + Sync,
    {
        let call = cx.as_ref();
        let stats = &call.ctx.stats;
        stats.caller_deferred.store(true, Ordering::Relaxed);
        let answer = self.inner.handle(cx, req).await;
        let headroom = if stats.caller_deferred.swap(false, Ordering::Relaxed) {
            let (limits, caller) = (&*self.limits, &call.auth.caller.name);
            admit(&call.ctx, |waited| {
                shared.check_caller(limits, caller, waited)
            })
            .await?
        } else {
            stats.caller_headroom.get().cloned()
        };
        let mut resp = answer?;
        if let Some(h) = headroom {
            h.write_headers(resp.headers_mut());
        }
        Ok(resp)
    }
}

/// Layer for [`UpstreamRateLimit`].
pub struct UpstreamRateLimitLayer<C: Clock = DefaultClock> {
    limits: Arc<RateLimits<C>>,
    cluster: Option<(Arc<SharedRateLimits>, Arc<Cluster>)>,
}

impl<C: Clock> Clone for UpstreamRateLimitLayer<C> {
    fn clone(&self) -> Self {
        UpstreamRateLimitLayer {
            limits: self.limits.clone(),
            cluster: self.cluster.clone(),
        }
    }
}

impl<C: Clock> UpstreamRateLimitLayer<C> {
    /// Enforces the upstream and operation limits of `limits` and Ratepay's 429 pauses.
    pub fn new(limits: Arc<RateLimits<C>>) -> Self {
        UpstreamRateLimitLayer {
            limits,
            cluster: None,
        }
    }

    /// Keeps the budgets in the fleet's Redis and tells every instance of a Ratepay 429.
    pub fn shared(mut self, cluster: Option<(Arc<SharedRateLimits>, Arc<Cluster>)>) -> Self {
        self.cluster = cluster;
        self
    }
}

impl<S, C: Clock> tower::Layer<S> for UpstreamRateLimitLayer<C> {
    type Service = UpstreamRateLimit<S, C>;
    fn layer(&self, inner: S) -> UpstreamRateLimit<S, C> {
        UpstreamRateLimit {
            inner,
            limits: self.limits.clone(),
            cluster: self.cluster.clone(),
        }
    }
}

/// Spends from the budgets toward Ratepay; holds an API paused after Ratepay's 429.
pub struct UpstreamRateLimit<S, C: Clock = DefaultClock> {
    inner: S,
    limits: Arc<RateLimits<C>>,
    cluster: Option<(Arc<SharedRateLimits>, Arc<Cluster>)>,
}

impl<S: Clone, C: Clock> Clone for UpstreamRateLimit<S, C> {
    fn clone(&self) -> Self {
        UpstreamRateLimit {
            inner: self.inner.clone(),
            limits: self.limits.clone(),
            cluster: self.cluster.clone(),
        }
    }
}

impl<S, C> Handler for UpstreamRateLimit<S, C>
where
    S: Handler,
    C: Clock + Clone + Send + Sync + 'static,
{
    async fn handle(&self, call: &Call, req: GwRequest) -> Result<GwResponse, GatewayError> {
        let limits = &*self.limits;
        let op = call.ctx.route.operation;
        // The net under the caller layer's deferral: a keyed call that reached this layer
        // without a lease having spent its caller's budget spends it now.
        if let Some((shared, _)) = &self.cluster {
            if call
                .ctx
                .stats
                .caller_deferred
                .swap(false, Ordering::Relaxed)
            {
                let caller = &call.auth.caller.name;
                let headroom = admit(&call.ctx, |waited| {
                    shared.check_caller(limits, caller, waited)
                })
                .await?;
                if let Some(h) = headroom {
                    let _ = call.ctx.stats.caller_headroom.set(h);
                }
            }
        }
        let spent = call.ctx.stats.upstream_admitted.load(Ordering::Relaxed);
        match &self.cluster {
            // Spent already, with the caller's budget (see `combining_upstream`) or with the
            // idempotency lease; Ratepay's pause still holds the call.
            Some(_) if spent => {
                admit(&call.ctx, |waited| {
                    ready(limits.check_pause(op.api, waited))
                })
                .await?
            }
            Some((shared, _)) => {
                admit(&call.ctx, |waited| {
                    shared.check_upstream(limits, op.api, op.name, waited)
                })
                .await?
            }
            None => {
                admit(&call.ctx, |waited| {
                    ready(limits.check_upstream(op.api, op.name, waited))
                })
                .await?
            }
        };
        let resp = self.inner.handle(call, req).await?;
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            let asked = resp
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| parse_retry_after(v, OffsetDateTime::now_utc()));
            let pause = limits.pause_upstream(op.api, asked);
            if let Some((_, cluster)) = &self.cluster {
                cluster.announce(Event::Pause(op.api, pause));
            }
            tracing::warn!(
                upstream = op.api.name(),
                operation = op.name,
                pause_ms = pause.as_millis() as u64,
                "ratepay answered 429; holding calls to this API"
            );
        }
        Ok(resp)
    }
}
