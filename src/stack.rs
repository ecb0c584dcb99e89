//! The only place where layer order is decided. Read top to bottom: each layer's why-comment
//! says why it sits where it does.
//!
//! [`crate::gateway`] builds what the layers share and calls [`layers`]; [`crate::edge`] turns
//! a hyper request into the routed, bounded, buffered request this stack serves, with its
//! [`crate::context::RequestContext`]; the outermost layer of each stack authenticates and
//! calls the layers inside it with the resulting [`crate::context::Call`].

use std::{collections::BTreeMap, sync::Arc};

use tower::ServiceBuilder;

use crate::{
    audit::AuditLog,
    callers::Callers,
    client::HttpClient,
    cluster::Cluster,
    config::Config,
    metrics::Metrics,
    middleware::{
        audit::AuditLayer,
        cache::{InvalidateOnCancellationLayer, SessionRecordCache, SessionRecordCacheLayer},
        caller::CallerPolicyLayer,
        headers::HeadersLayer,
        idempotency::{IdempotencyLayer, IdempotencyStore},
        json_body::JsonBodyLayer,
        rate_limit::{CallerRateLimitLayer, RateLimits, SharedRateLimits, UpstreamRateLimitLayer},
        retry::RetryLayer,
        token::InjectTokenLayer,
        token_endpoint::{ClientCredentialsLayer, IssueToken},
        BoxHandler,
    },
    proxy::Proxy,
    routes::Api,
    token::TokenSource,
};

/// The request path below the edge, boxed once.
pub type Stack = Box<dyn BoxHandler>;

/// What the layers are built around: one gateway's configuration and shared state.
pub struct Parts<'a> {
    /// The configuration the layers read their settings from.
    pub config: &'a Config,
    /// The pooled client toward Ratepay.
    pub client: HttpClient,
    /// Internal callers and their policies.
    pub callers: Arc<Callers>,
    /// Ratepay token source per API.
    pub tokens: Arc<BTreeMap<Api, TokenSource>>,
    /// The audit log.
    pub audit: AuditLog,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Rate-limit state.
    pub rate_limits: Arc<RateLimits>,
    /// The session-record cache, when enabled.
    pub cache: Option<SessionRecordCache>,
    /// The idempotency store.
    pub idempotency: IdempotencyStore,
    /// The fleet's shared Redis, with `[cluster]`.
    pub cluster: Option<Arc<Cluster>>,
    /// The rate limits kept in it.
    pub shared_limits: Option<Arc<SharedRateLimits>>,
}

/// The layer stack, outermost first, around the proxy to Ratepay.
pub fn layers(p: Parts<'_>) -> Stack {
    let audiences = p
        .config
        .upstreams
        .iter()
        .map(|(api, u)| (*api, u.audience.clone()))
        .collect();
    let origins = p
        .config
        .upstreams
        .iter()
        .map(|(api, u)| (*api, u.url.clone()))
        .collect();
    let audited: &[&'static str] = if p.config.audit.enabled {
        &p.config.audit.operations
    } else {
        tracing::warn!(
            "audit.enabled = false: cancellations are forwarded WITHOUT audit records \
             (meant only for the load benchmark's baseline)"
        );
        &[]
    };
    let stack = ServiceBuilder::new()
        // Who is calling and may it: before any work is spent on the request.
        .layer(CallerPolicyLayer::new(p.callers, audiences))
        // The caller's own budget, spent before any shared work: cache hits count too. With
        // shared limits a keyed call's is spent in its idempotency lease's round trip instead.
        .layer(
            CallerRateLimitLayer::new(p.rate_limits.clone())
                .shared(p.shared_limits.clone())
                .combining_upstream(),
        )
        // Money calls must be one JSON object with unique keys before any layer reads
        // fields from them (cache key, idempotency fingerprint, audit) or sends them.
        .layer(JsonBodyLayer)
        // Session-record reads: after the policy (a caller only gets what it may call),
        // before the budget toward Ratepay (hits spend none, and are served during a pause).
        .layer(p.cache.clone().map_or_else(
            SessionRecordCacheLayer::disabled,
            SessionRecordCacheLayer::new,
        ))
        // Once Ratepay confirmed a cancellation, the transaction's cached records go.
        .layer(InvalidateOnCancellationLayer::new(p.cache.clone()).shared(p.cluster.clone()))
        // Keys are scoped per caller, so this follows the caller layer; replays, waiting
        // duplicates and 409s answer here without spending the budget toward Ratepay.
        .layer(
            IdempotencyLayer::new(p.idempotency.clone(), p.metrics.clone())
                .spending_upstream(p.shared_limits.clone()),
        )
        // The budget toward Ratepay and Ratepay's own 429 pause: only calls about to leave.
        // Its refusals are errors, never stored as idempotent answers.
        .layer(
            UpstreamRateLimitLayer::new(p.rate_limits.clone())
                .shared(p.shared_limits.clone().zip(p.cluster.clone())),
        )
        // Intent durable before anything leaves; outcome after every retry is done. After
        // the limits, so a refused cancellation (it never left) writes no intent.
        .layer(AuditLayer::new(p.audit.clone(), audited))
        // Strip caller credentials and hop-by-hop headers; set the decided X-Partner.
        .layer(HeadersLayer)
        // Ratepay's token last, so no layer above ever sees it; 401 → refresh + one replay.
        .layer(InjectTokenLayer::new(p.tokens.clone()))
        // Retries reuse the token and Idempotency-Key decided above.
        .layer(RetryLayer::new(p.config.retry.clone(), p.metrics.clone()))
        .service(Proxy::new(
            p.client,
            origins,
            p.config.upstream_client.request_timeout,
            p.config.upstream_client.body_idle_timeout,
            p.config.limits.max_response_body_bytes,
            p.metrics.clone(),
        ));
    Box::new(stack)
}

/// The gateway's own `POST /oauth/token`: never forwarded, but rate-limited like every other
/// request of the caller whose client asks.
pub fn token_endpoint(
    callers: Arc<Callers>,
    rate_limits: Arc<RateLimits>,
    shared_limits: Option<Arc<SharedRateLimits>>,
) -> Stack {
    let stack = ServiceBuilder::new()
        // The body names the internal OAuth client; its caller is known from here on.
        .layer(ClientCredentialsLayer::new(callers.clone()))
        // The caller's own budget: asking for tokens spends it too.
        .layer(CallerRateLimitLayer::new(rate_limits).shared(shared_limits))
        .service(IssueToken::new(callers));
    Box::new(stack)
}
