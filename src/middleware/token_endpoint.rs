//! The gateway's own `POST /oauth/token` for internal callers (Ratepay's protocol), as a small
//! stack of its own ([`crate::stack::token_endpoint`]): [`ClientCredentialsLayer`]
//! authenticates the internal OAuth client from the body, the caller's rate limit applies as
//! to every other request of that caller, and [`IssueToken`] signs the JWT. Nothing here is
//! forwarded to Ratepay.

use std::sync::Arc;

use http::{header, HeaderValue, Response};

use super::{GwRequest, GwResponse, Handler};
use crate::{
    body,
    callers::{Callers, ClientGrant},
    context::{Authenticated, RequestContext},
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

impl<S: Handler> Handler for ClientCredentials<S> {
    async fn handle(&self, mut req: GwRequest) -> Result<GwResponse, GatewayError> {
        let grant = self.callers.authenticate_client(req.body())?;
        if let Some(ctx) = req.extensions().get::<RequestContext>() {
            let _ = ctx.stats.caller.set(grant.caller.name.clone());
        }
        req.extensions_mut().insert(Authenticated {
            caller: grant.caller.clone(),
            partner: None,
        });
        req.extensions_mut().insert(grant);
        self.inner.handle(req).await
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

impl Handler for IssueToken {
    async fn handle(&self, req: GwRequest) -> Result<GwResponse, GatewayError> {
        let grant = req
            .extensions()
            .get::<ClientGrant>()
            .ok_or_else(|| GatewayError::Internal("token grant missing".into()))?;
        let json = self.callers.issue_token(grant)?;
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
