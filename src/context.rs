//! Per-request facts, handed inward as an argument of every layer's call, never looked up.
//!
//! Two phases, each with its own type, so a layer cannot run before the facts it needs exist:
//!
//! - The edge builds a [`RequestContext`] once the request is routed (request id, route, the
//!   connection's [`Peer`], arrival time, stats) and calls the outer layers with
//!   `&RequestContext`: the ones that authenticate ([`crate::middleware::caller`], and the token
//!   endpoint's [`crate::middleware::token_endpoint`]).
//! - An authenticating layer that accepts the caller builds a [`Call`] (the context plus the
//!   [`Authenticated`] caller and its X-Partner) and calls every inner layer with `&Call`.
//!
//! Both are shared handles (`Arc`s): a layer that spawns a task (idempotency, the cache's shared
//! fetch) moves a clone into it.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU32, AtomicU64},
        Arc,
    },
    time::Instant,
};

use crate::{callers::Caller, routes::RouteMatch, tls::PeerIdentity};

/// What a request's connection says about it: known when the connection is accepted (and its
/// TLS handshake done), handed by the server to the edge with every request on it.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The connection's remote address.
    pub addr: SocketAddr,
    /// The verified client certificate's identities (mTLS); `None` on plain TCP and on TLS
    /// connections without a client certificate.
    pub identity: Option<Arc<PeerIdentity>>,
    /// The connection's clock for this request's deadlines (HTTP/1 through the server; see
    /// `conn_clock`); `None`: tokio timers.
    pub clock: Option<Arc<crate::conn_clock::ConnClock>>,
}

impl Peer {
    /// A peer that sent no client certificate.
    pub fn plain(addr: SocketAddr) -> Peer {
        Peer {
            addr,
            identity: None,
            clock: None,
        }
    }
}

/// Built by the edge for every routed request. A shared handle: layers that copy a request (the
/// token layer's replay, the retry layer's spare) or move the call into a task copy a pointer,
/// not the facts.
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
    /// The connection the request came on: its address and client-certificate identities.
    pub peer: Peer,
    /// When the gateway received the request.
    pub received: Instant,
    /// When the request's whole deadline (`limits.request_timeout_ms`) passes: what a layer
    /// that goes on where the edge no longer waits (a task of its own) bounds its work by.
    pub deadline: Instant,
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
    /// The budgets toward Ratepay were already spent, with the caller's, in one call to the
    /// fleet's Redis (a request that neither the cache nor idempotency can answer).
    pub upstream_admitted: std::sync::atomic::AtomicBool,
    /// The caller layer left the caller's spend to the idempotency lease (shared limits, a
    /// keyed call): whoever clears this flag first spends it (the lease in its round trip, the
    /// upstream layer as a net, or the caller layer after a request answered before a lease).
    pub caller_deferred: std::sync::atomic::AtomicBool,
    /// The caller's headroom from a spend made for the caller layer (see `caller_deferred`).
    pub caller_headroom: std::sync::OnceLock<crate::limits::Headroom>,
}

/// Decided by an authenticating layer once the caller is known and allowed.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The caller.
    pub caller: Arc<Caller>,
    /// The X-Partner to send, if any.
    pub partner: Option<Arc<str>>,
}

/// What every layer after authentication is called with: the request's context and its
/// authenticated caller. The authenticating layers build it, so no inner layer can be reached
/// without both.
#[derive(Debug, Clone)]
pub struct Call {
    /// What the edge knows about the request.
    pub ctx: RequestContext,
    /// The caller, allowed to call this operation, and its X-Partner.
    pub auth: Authenticated,
}

impl AsRef<Call> for Call {
    fn as_ref(&self) -> &Call {
        self
    }
}
