//! Per-request facts that layers hand inward through request extensions.
//!
//! The edge inserts a [`RequestContext`] after routing; the caller layer adds an
//! [`Authenticated`]. Inner layers only read them, so the order of facts follows the flow.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU32, AtomicU64},
        Arc,
    },
    time::Instant,
};

use crate::{callers::Caller, routes::RouteMatch};

/// Set by the edge for every routed request. A shared handle: layers that copy a request (the
/// token layer's replay, the retry layer's spare) copy a pointer, not the facts.
#[derive(Debug, Clone)]
pub struct RequestContext(Arc<RequestFacts>);

impl RequestContext {
    /// The context of one request.
    pub fn new(facts: RequestFacts) -> RequestContext {
        RequestContext(Arc::new(facts))
    }
}

impl std::ops::Deref for RequestContext {
    type Target = RequestFacts;
    fn deref(&self) -> &RequestFacts {
        &self.0
    }
}

/// What the edge knows about a routed request.
#[derive(Debug)]
pub struct RequestFacts {
    /// The request id (incoming valid `X-Request-Id`, or generated).
    pub request_id: Arc<str>,
    /// The matched operation and path ids.
    pub route: RouteMatch,
    /// Peer address of the connection.
    pub source: SocketAddr,
    /// When the gateway received the request.
    pub received: Instant,
    /// Counters the inner layers fill in and the edge reads (access log, metrics).
    pub stats: Arc<RequestStats>,
}

/// What inner layers report back to the edge about one request.
#[derive(Debug, Default)]
pub struct RequestStats {
    /// Upstream attempts made so far (the proxy counts; audit and access log read).
    pub attempts: AtomicU32,
    /// Time spent queued by the rate limits (queue mode), in microseconds.
    pub queued_us: AtomicU64,
    /// The caller, once authenticated (also when its request is refused later).
    pub caller: std::sync::OnceLock<Arc<str>>,
    /// The caller's `Idempotency-Key` on a keyed call (its own or the one generated for it),
    /// so that every answer, a gateway problem included, tells the caller the key to retry with.
    pub idempotency_key: std::sync::OnceLock<Arc<str>>,
    /// The routed operation, once known (named in the access log even after a panic).
    pub operation: std::sync::OnceLock<&'static crate::routes::Operation>,
}

/// Set by the caller layer once the caller is known and allowed.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The caller.
    pub caller: Arc<Caller>,
    /// The X-Partner to send, if any.
    pub partner: Option<Arc<str>>,
}
