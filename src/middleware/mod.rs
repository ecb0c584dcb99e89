//! One file per layer of the request path; [`crate::stack`] decides their order.
//!
//! Every layer is a `tower::Service<Request<Bytes>>` answering `Response<Body>` or a typed
//! [`GatewayError`]: request bodies are buffered at the edge (bounded by `limits`), so layers
//! can hash, audit and replay them; response bodies stream.

pub mod audit;
pub mod cache;
pub mod headers;
pub mod idempotency;
pub mod rate_limit;
pub mod retry;
pub mod token;

use std::{future::Future, pin::Pin};

use bytes::Bytes;
use http::{Request, Response};

use crate::{body::Body, error::GatewayError};

/// The request type inside the stack.
pub type GwRequest = Request<Bytes>;
/// The response type inside the stack.
pub type GwResponse = Response<Body>;
/// Boxed future used by the layers.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Bound shared by every inner service.
pub trait Inner:
    tower::Service<
        GwRequest,
        Response = GwResponse,
        Error = GatewayError,
        Future = BoxFuture<Result<GwResponse, GatewayError>>,
    > + Clone
    + Send
    + 'static
{
}

impl<S> Inner for S where
    S: tower::Service<
            GwRequest,
            Response = GwResponse,
            Error = GatewayError,
            Future = BoxFuture<Result<GwResponse, GatewayError>>,
        > + Clone
        + Send
        + 'static
{
}

/// Takes the ready service out of `slot`, leaving a fresh clone (tower's readiness contract).
pub fn take_ready<S: Clone>(slot: &mut S) -> S {
    let clone = slot.clone();
    std::mem::replace(slot, clone)
}

/// A copy of a buffered request, for a replay or a retry.
pub fn clone_request(req: &GwRequest) -> GwRequest {
    let mut out = Request::new(req.body().clone());
    *out.method_mut() = req.method().clone();
    *out.uri_mut() = req.uri().clone();
    *out.version_mut() = req.version();
    *out.headers_mut() = req.headers().clone();
    *out.extensions_mut() = req.extensions().clone();
    out
}
