//! The gateway's own `POST /oauth/token` for internal callers (Ratepay's protocol), as a small
//! stack of its own ([`crate::stack::token_endpoint`]): [`ClientCredentialsLayer`]
//! authenticates the internal OAuth client from the body, the caller's rate limit applies as
//! to every other request of that caller, and [`IssueToken`] signs the JWT. Nothing here is
//! forwarded to Ratepay.
//!
//! [`ClientCredentials`] is called by the edge with the [`RequestContext`]; it calls the layers
//! inside it with a [`Granted`]: the caller's [`Call`] (what the caller rate limit reads) and the
//! [`ClientGrant`] that [`IssueToken`] signs.

use std::sync::Arc;

use http::{header, HeaderValue, Response};

use super::{GwRequest, GwResponse, Handler};
use crate::{
    body,
    callers::{Callers, ClientGrant},
    context::{Authenticated, Call, RequestContext},
    error::GatewayError,
};

/// Layer for [`ClientCredentials`].
#[derive(Clone, Debug)]
pub struct ClientCredentialsLayer {
    callers: Arc<Callers>,
}

impl ClientCredentialsLayer {
    /// Authenticates against these callers' internal OAuth clients.
    pub fn new(callers: Arc<Callers>) -> Self {
        ClientCredentialsLayer { callers }
    }
}

impl<S> tower::Layer<S> for ClientCredentialsLayer {
    type Service = ClientCredentials<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ClientCredentials {
            inner,
            callers: self.callers.clone(),
        }
    }
}

/// Authenticates the client of a token request; the caller it belongs to is known from here
/// on (rate limit, access log, metrics).
#[derive(Clone, Debug)]
pub struct ClientCredentials<S> {
    inner: S,
    callers: Arc<Callers>,
}

/// What the token endpoint's inner layers are called with: the call of the client's caller and
/// the grant it proved.
#[derive(Debug, Clone)]
pub struct Granted {
    /// The request's context and the client's caller (no X-Partner: nothing is forwarded).
    pub call: Call,
    /// The authenticated client and the audience it asked for.
    pub grant: ClientGrant,
}

impl AsRef<Call> for Granted {
    fn as_ref(&self) -> &Call {
        &self.call
    }
}

impl<S: Handler<Granted>> Handler<RequestContext> for ClientCredentials<S> {
    async fn handle(
        &self,
        ctx: &RequestContext,
        req: GwRequest,
    ) -> Result<GwResponse, GatewayError> {
        let grant = self.callers.authenticate_client(req.body())?;
        let _ = ctx.stats.caller.set(grant.caller.name.clone());
        let granted = Granted {
            call: Call {
                ctx: ctx.clone(),
                auth: Authenticated {
                    caller: grant.caller.clone(),
                    partner: None,
                },
            },
            grant,
        };
        self.inner.handle(&granted, req).await
    }
}

/// Signs the token of an authenticated grant: `{access_token, expires_in, token_type}`,
/// never cached.
#[derive(Clone, Debug)]
pub struct IssueToken {
    callers: Arc<Callers>,
}

impl IssueToken {
    /// Issues with these callers' issuer.
    pub fn new(callers: Arc<Callers>) -> Self {
        IssueToken { callers }
    }
}

impl Handler<Granted> for IssueToken {
    async fn handle(&self, granted: &Granted, _req: GwRequest) -> Result<GwResponse, GatewayError> {
        let json = self.callers.issue_token(&granted.grant)?;
        let mut resp = Response::new(body::full(serde_json::to_vec(&json).unwrap_or_default()));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(resp)
    }
}
