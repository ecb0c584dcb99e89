//! Per-request facts that layers hand inward through request extensions.
//!
//! The edge inserts a [`RequestContext`] after routing; the caller layer adds an
//! [`Authenticated`]. Inner layers only read them, so the order of facts follows the flow.

use std::{
    net::SocketAddr,
    sync::{atomic::AtomicU32, Arc},
    time::Instant,
};

use crate::{callers::Caller, routes::RouteMatch};

/// Set by the edge for every routed request.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The request id (incoming valid `X-Request-Id`, or generated).
    pub request_id: Arc<str>,
    /// The matched operation and path ids.
    pub route: RouteMatch,
    /// Peer address of the connection.
    pub source: SocketAddr,
    /// When the gateway received the request.
    pub received: Instant,
    /// Upstream attempts made so far (the proxy counts; audit and access log read).
    pub attempts: Arc<AtomicU32>,
}

/// Set by the caller layer once the caller is known and allowed.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The caller.
    pub caller: Arc<Caller>,
    /// The X-Partner to send, if any.
    pub partner: Option<Arc<str>>,
}
