//! Header hygiene toward Ratepay: strip the caller's credentials and hop-by-hop headers, set the
//! X-Partner the caller's policy decided.
//!
//! Sits after the caller layer (which decided the partner) and before the token layer (which
//! adds Ratepay's Authorization). Nothing the caller authenticated with, and nothing about the
//! internal network, leaves the gateway.

use http::{header, HeaderMap, HeaderName, HeaderValue};

use super::{GwRequest, GwResponse, Handler};
use crate::{context::Authenticated, error::GatewayError};

/// `X-Partner`.
pub static X_PARTNER: HeaderName = HeaderName::from_static("x-partner");

/// Headers that describe one connection, never forwarded in either direction (RFC 9110 7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Request headers that are not hop-by-hop but must not reach Ratepay: the caller's
/// credentials, internal addressing, and what the gateway sets itself.
const CALLER_ONLY: &[&str] = &[
    "authorization",
    "cookie",
    "host",
    "content-length",
    "x-partner",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
];

/// Removes hop-by-hop headers, including those named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(*n);
    }
}

/// Layer for [`Headers`].
#[derive(Clone, Debug, Default)]
pub struct HeadersLayer;

impl<S> tower::Layer<S> for HeadersLayer {
    type Service = Headers<S>;
    fn layer(&self, inner: S) -> Headers<S> {
        Headers { inner }
    }
}

/// Strips caller headers and sets X-Partner.
#[derive(Clone, Debug)]
pub struct Headers<S> {
    inner: S,
}

impl<S: Handler> Handler for Headers<S> {
    async fn handle(&self, mut req: GwRequest) -> Result<GwResponse, GatewayError> {
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        for n in CALLER_ONLY {
            headers.remove(*n);
        }
        let partner = req
            .extensions()
            .get::<Authenticated>()
            .and_then(|a| a.partner.clone());
        if let Some(p) = partner {
            match HeaderValue::from_str(&p) {
                Ok(v) => {
                    req.headers_mut().insert(X_PARTNER.clone(), v);
                }
                Err(_) => {
                    return Err(GatewayError::Internal(
                        "configured partner is not a header value".into(),
                    ))
                }
            }
        }
        self.inner.handle(req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("x-secret-hop, keep-alive"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("prefer", HeaderValue::from_static("return=representation"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-secret-hop").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get("connection").is_none());
        assert!(h.get("prefer").is_some());
    }
}
