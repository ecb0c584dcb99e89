//! Ratepay token injection: the upstream's audience token as `Authorization: Bearer`, and on a
//! 401 from Ratepay one refresh and one replay.
//!
//! Sits just outside the retry layer and the upstream client. The buffered request body makes
//! the replay possible; the token source's single-flight makes a burst of 401s cost one fetch.

use std::{collections::BTreeMap, sync::Arc};

use http::{header, StatusCode};

use super::{clone_request, GwRequest, GwResponse, Handler};
use crate::{context::Call, error::GatewayError, routes::Api, token::TokenSource};

/// Layer for [`InjectToken`].
#[derive(Clone, Debug)]
pub struct InjectTokenLayer {
    sources: Arc<BTreeMap<Api, TokenSource>>,
}

impl InjectTokenLayer {
    /// One token source per upstream API.
    pub fn new(sources: Arc<BTreeMap<Api, TokenSource>>) -> Self {
        InjectTokenLayer { sources }
    }
}

impl<S> tower::Layer<S> for InjectTokenLayer {
    type Service = InjectToken<S>;
    fn layer(&self, inner: S) -> InjectToken<S> {
        InjectToken {
            inner,
            sources: self.sources.clone(),
        }
    }
}

/// Injects the Ratepay bearer token; refreshes and replays once after a 401.
#[derive(Clone, Debug)]
pub struct InjectToken<S> {
    inner: S,
    sources: Arc<BTreeMap<Api, TokenSource>>,
}

impl<S: Handler> Handler for InjectToken<S> {
    async fn handle(&self, call: &Call, mut req: GwRequest) -> Result<GwResponse, GatewayError> {
        let api = call.ctx.route.operation.api;
        let source = self
            .sources
            .get(&api)
            .ok_or(GatewayError::NoUpstream(api.name()))?;
        let unavailable = |e: crate::token::FetchError| GatewayError::TokenUnavailable {
            upstream: api.name(),
            reason: e.to_string(),
        };
        let bearer = source.bearer().await.map_err(unavailable)?;
        let replay = clone_request(&req);
        req.headers_mut()
            .insert(header::AUTHORIZATION, bearer.header);
        let resp = self.inner.handle(call, req).await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        // Ratepay refused the token (revoked, rotated keys): one fresh token, one replay.
        drop(resp);
        tracing::info!(
            upstream = api.name(),
            "ratepay answered 401; refreshing the token and replaying once"
        );
        let fresh = source
            .refresh_after_401(bearer.generation)
            .await
            .map_err(unavailable)?;
        let mut again = replay;
        again
            .headers_mut()
            .insert(header::AUTHORIZATION, fresh.header);
        self.inner.handle(call, again).await
    }
}
