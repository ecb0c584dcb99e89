//! Test support for the layers' unit tests: a request as the edge and the caller layer leave it
//! (routed, with the [`Call`] the inner layers are called with), without sockets.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request};

use super::GwRequest;
use crate::{
    callers::Callers,
    config::{sha256, CallerConfig, CallersConfig, OperationMatcher, PartnerPolicy},
    context::{Authenticated, Call, Peer, RequestContext, RequestFacts},
    routes,
};

/// The caller every [`request`] is authenticated as.
pub const CALLER: &str = "svc";

/// Caller [`CALLER`] (all operations), sending `partner`.
pub fn authenticated(partner: Option<&str>) -> Authenticated {
    let callers = Callers::new(&CallersConfig {
        callers: vec![CallerConfig {
            name: CALLER.into(),
            api_key_sha256: Some(sha256(b"k")),
            client: None,
            operations: OperationMatcher::all(),
            partner: PartnerPolicy::None,
            client_cert: vec![],
        }],
        issuer: None,
        audiences: vec![],
    })
    .unwrap();
    let mut h = HeaderMap::new();
    h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer k"));
    Authenticated {
        caller: callers.authenticate(&h, "aud").unwrap(),
        partner: partner.map(Arc::from),
    }
}

/// A routed request for `path_and_query` with `headers`, and its call from caller [`CALLER`].
pub fn request(
    method: Method,
    path_and_query: &str,
    partner: Option<&str>,
    headers: &[(&'static str, &'static str)],
) -> (Call, GwRequest) {
    let path = path_and_query.split('?').next().unwrap();
    let route = routes::match_route(&method, path).unwrap().unwrap();
    let mut req = Request::builder()
        .method(method)
        .uri(path_and_query)
        .body(Bytes::new())
        .unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(*k, HeaderValue::from_static(v));
    }
    let ctx = RequestContext::new(RequestFacts {
        request_id: Arc::from("t"),
        route,
        peer: Peer::plain("127.0.0.1:1".parse().unwrap()),
        received: std::time::Instant::now(),
        deadline: std::time::Instant::now() + std::time::Duration::from_secs(60),
        stats: Arc::default(),
    });
    let call = Call {
        ctx,
        auth: authenticated(partner),
    };
    (call, req)
}
