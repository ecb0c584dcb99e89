//! One file per layer of the request path; [`crate::stack`] decides their order.
//!
//! Every layer is a `tower::Layer` whose service is a [`Handler`] of `Request<Bytes>`, answering
//! `Response<Body>` or a typed [`GatewayError`]: request bodies are buffered at the edge (bounded
//! by `limits`), so layers can hash, audit and replay them; response bodies stream.
//!
//! A layer is called with the request and, beside it, what is known about the request so far
//! ([`crate::context`]), in two typed phases (as Pingora hands every phase its `CTX`):
//!
//! ```text
//! edge ── &RequestContext ──▶ CallerPolicy / ClientCredentials   Handler<RequestContext>
//!                                 │ authenticate, build the Call
//!                                 ▼
//!                   &Call ──▶ every inner layer … Proxy           Handler (= Handler<Call>)
//! ```
//!
//! No layer looks its facts up in the request's extensions: a layer that needs the caller is a
//! `Handler<Call>`, and only a layer holding a `Call` can call it, so a missing context or a
//! missing authentication does not compile. The token endpoint's inner layers get a
//! [`token_endpoint::Granted`] (the `Call` and the client's grant); a layer that serves both
//! stacks (the caller rate limit) takes any context that is `AsRef<Call>`.
//!
//! What the edge can hold is a stack whose outermost layer authenticates:
//!
//! ```
//! use ratepay_gateway::middleware::{
//!     caller::CallerPolicy, json_body::JsonBody, rate_limit::CallerRateLimit,
//!     token_endpoint::{ClientCredentials, IssueToken}, BoxHandler, Handler,
//! };
//! fn edge_holds<H: BoxHandler>() {}
//! fn stacks<S: Handler>() {
//!     edge_holds::<CallerPolicy<JsonBody<S>>>();
//!     edge_holds::<ClientCredentials<CallerRateLimit<IssueToken>>>();
//! }
//! ```
//!
//! and a stack without the authenticating layer does not compile:
//!
//! ```compile_fail
//! # use ratepay_gateway::middleware::{json_body::JsonBody, BoxHandler, Handler};
//! fn edge_holds<H: BoxHandler>() {}
//! fn stacks<S: Handler>() {
//!     edge_holds::<JsonBody<S>>();
//! }
//! ```
//!
//! ```compile_fail
//! # use ratepay_gateway::middleware::{token_endpoint::IssueToken, BoxHandler};
//! fn edge_holds<H: BoxHandler>() {}
//! edge_holds::<IssueToken>();
//! ```

pub mod audit;
pub mod cache;
pub mod caller;
pub mod headers;
pub mod idempotency;
mod idempotency_slots;
pub mod json_body;
pub mod rate_limit;
pub mod retry;
#[cfg(test)]
pub(crate) mod testing;
pub mod token;
pub mod token_endpoint;

use std::{future::Future, pin::Pin};

use bytes::Bytes;
use http::{Request, Response};

use crate::{
    body::Body,
    context::{Call, RequestContext},
    error::GatewayError,
};

/// The request type inside the stack.
pub type GwRequest = Request<Bytes>;
/// The response type inside the stack.
pub type GwResponse = Response<Body>;
/// Boxed future (the one box per request, at the edge; see [`BoxHandler`]).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One layer of the request path, called through `&self` with the request's context `cx`:
/// a [`Call`] (the default) after authentication, a [`crate::context::RequestContext`] before.
///
/// Why not `tower::Service`: its `call(&mut self)` makes every layer clone the rest of the
/// stack into its own `'static` boxed future (tower's readiness contract), which the load
/// benchmark measured as dozens of service clones, reference-count round trips and a heap
/// allocation per layer on every request. Every layer here is always ready and keeps its state
/// behind `Arc`s, so a shared reference is all a call needs: the layers still compose with
/// `tower::Layer` and `ServiceBuilder`, and the whole stack's future is one value, boxed once.
/// A layer that must outlive its caller (a fetch shared by waiters, a call that completes after
/// the caller hung up) keeps its inner handler in an `Arc` and moves a clone of it, and of the
/// context, into its task.
pub trait Handler<Cx = Call>: Send + Sync + 'static {
    /// Answers `req`, or says why not.
    fn handle(
        &self,
        cx: &Cx,
        req: GwRequest,
    ) -> impl Future<Output = Result<GwResponse, GatewayError>> + Send;
}

/// A [`Handler`] of the edge's phase behind a pointer: what the edge holds.
pub trait BoxHandler: Send + Sync + 'static {
    /// [`Handler::handle`] with its future boxed.
    fn handle_boxed<'a>(
        &'a self,
        ctx: &'a RequestContext,
        req: GwRequest,
    ) -> BoxFuture<'a, Result<GwResponse, GatewayError>>;
}

impl<H: Handler<RequestContext>> BoxHandler for H {
    fn handle_boxed<'a>(
        &'a self,
        ctx: &'a RequestContext,
        req: GwRequest,
    ) -> BoxFuture<'a, Result<GwResponse, GatewayError>> {
        in_place(|| self.handle(ctx, req))
    }
}

/// `Box::pin(make())` with the allocation first, so that the value is built in the box.
///
/// A future's unresumed state is its captures, but its type is as large as its largest state
/// (the whole stack's: 11 KB). `Box::pin(fut)` builds it on the stack and copies all of it into
/// the box; allocating first lets the compiler write the captures straight into the box. The
/// copy was 11k of a cache hit's 54.8k instructions under callgrind, but as `rep movsb`, which
/// it counts per byte: without copies and SHA-256 the cache hit went 37.3k → 36.6k
/// (benches/instructions.sh), a fraction of a microsecond.
#[inline(always)]
pub(crate) fn in_place<F>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    let slot = Box::new_uninit();
    Box::into_pin(Box::write(slot, make()))
}

/// A copy of a buffered request, for a replay or a retry. Extensions are not copied: nothing in
/// the stack reads them (the facts travel as the handler's context) and none is forwarded.
pub fn clone_request(req: &GwRequest) -> GwRequest {
    let mut out = Request::new(req.body().clone());
    *out.method_mut() = req.method().clone();
    *out.uri_mut() = req.uri().clone();
    *out.version_mut() = req.version();
    *out.headers_mut() = req.headers().clone();
    out
}
