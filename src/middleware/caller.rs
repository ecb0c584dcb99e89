//! The caller layer: authenticate, check the operation against the caller's policy, decide the
//! X-Partner. Runs right after routing; refusals never reach Ratepay.
//!
//! The boundary between the two phases ([`crate::context`]): called by the edge with the
//! request's [`RequestContext`], it calls the rest of the stack with the [`Call`] it built.

use std::{collections::BTreeMap, sync::Arc};

use crate::{
    callers::Callers,
    context::{Authenticated, Call, RequestContext},
    error::GatewayError,
    middleware::{headers::X_PARTNER, GwRequest, GwResponse, Handler},
    routes::Api,
};

/// Layer for [`CallerPolicy`].
#[derive(Clone, Debug)]
pub struct CallerPolicyLayer {
    callers: Arc<Callers>,
    audiences: Arc<BTreeMap<Api, String>>,
}

impl CallerPolicyLayer {
    /// Callers plus the audience of each API (gateway JWTs must be issued for it).
    pub fn new(callers: Arc<Callers>, audiences: BTreeMap<Api, String>) -> Self {
        CallerPolicyLayer {
            callers,
            audiences: Arc::new(audiences),
        }
    }
}

impl<S> tower::Layer<S> for CallerPolicyLayer {
    type Service = CallerPolicy<S>;
    fn layer(&self, inner: S) -> CallerPolicy<S> {
        CallerPolicy {
            inner,
            callers: self.callers.clone(),
            audiences: self.audiences.clone(),
        }
    }
}

/// Authenticates the caller and applies its policy.
#[derive(Clone, Debug)]
pub struct CallerPolicy<S> {
    inner: S,
    callers: Arc<Callers>,
    audiences: Arc<BTreeMap<Api, String>>,
}

impl<S> CallerPolicy<S> {
    fn decide(&self, ctx: &RequestContext, req: &GwRequest) -> Result<Authenticated, GatewayError> {
        let op = ctx.route.operation;
        let audience = self
            .audiences
            .get(&op.api)
            .ok_or(GatewayError::NoUpstream(op.api.name()))?;
        // Present only on TLS connections where the client sent a (verified) certificate.
        let peer = ctx.peer.identity.as_deref();
        let caller = self
            .callers
            .authenticate_with_peer(req.headers(), peer, audience)?;
        // Known from here on, for the access log and metrics even if refused below.
        let _ = ctx.stats.caller.set(caller.name.clone());
        if !caller.may_call(op) {
            return Err(GatewayError::Forbidden {
                caller: caller.name.to_string(),
                operation: op.name,
            });
        }
        // Ratepay's own example requests send `X-Partner:` empty when there is none: an empty
        // value means "no partner", exactly as an absent header, for every partner policy.
        let mut sent = req.headers().get_all(&X_PARTNER).iter();
        let requested =
            match (sent.next(), sent.next()) {
                (None, _) => None,
                (Some(_), Some(_)) => {
                    return Err(GatewayError::BadRequest(
                        "send at most one X-Partner header".into(),
                    ))
                }
                (Some(v), None) => Some(v.to_str().map_err(|_| {
                    GatewayError::BadRequest("X-Partner must be visible ASCII".into())
                })?),
            }
            .map(str::trim)
            .filter(|v| !v.is_empty());
        let partner = caller.partner_for(requested)?;
        Ok(Authenticated { caller, partner })
    }
}

impl<S: Handler> Handler<RequestContext> for CallerPolicy<S> {
    async fn handle(
        &self,
        ctx: &RequestContext,
        req: GwRequest,
    ) -> Result<GwResponse, GatewayError> {
        let auth = self.decide(ctx, &req)?;
        let call = Call {
            ctx: ctx.clone(),
            auth,
        };
        self.inner.handle(&call, req).await
    }
}
