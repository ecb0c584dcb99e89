//! Money calls carry one JSON object with unique keys, or they go nowhere.
//!
//! Sits after the caller layer and its rate limit (an unauthenticated caller learns nothing
//! about bodies) and before the cache, idempotency and audit layers: the audit records fields
//! read from the body, and with a duplicated key the gateway and Ratepay could read different
//! amounts from the same bytes. Applies to the POSTs that carry an `Idempotency-Key`
//! ([`crate::routes::Keys`] other than `None`); every other request passes untouched.

use super::{GwRequest, GwResponse, Handler};
use crate::{context::Call, error::GatewayError, routes::Keys};

/// Layer for [`JsonBody`].
#[derive(Clone, Debug, Default)]
pub struct JsonBodyLayer;

impl<S> tower::Layer<S> for JsonBodyLayer {
    type Service = JsonBody<S>;
    fn layer(&self, inner: S) -> JsonBody<S> {
        JsonBody { inner }
    }
}

/// Refuses a keyed POST whose body is not one JSON object with unique keys (400 `invalid-json`).
#[derive(Clone, Debug)]
pub struct JsonBody<S> {
    inner: S,
}

impl<S: Handler> Handler for JsonBody<S> {
    async fn handle(&self, call: &Call, req: GwRequest) -> Result<GwResponse, GatewayError> {
        let op = call.ctx.route.operation;
        if op.keys != Keys::None {
            crate::json::check_object(req.body()).map_err(|reason| GatewayError::InvalidJson {
                operation: op.name,
                reason,
            })?;
        }
        self.inner.handle(call, req).await
    }
}
