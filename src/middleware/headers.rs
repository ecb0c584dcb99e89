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
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Request headers that are not hop-by-hop but must not reach Ratepay: the caller's
/// credentials, internal addressing, and what the gateway sets itself.
static CALLER_ONLY: [HeaderName; 10] = [
    header::AUTHORIZATION,
    header::COOKIE,
    header::HOST,
    header::CONTENT_LENGTH,
    HeaderName::from_static("x-partner"),
    header::FORWARDED,
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-real-ip"),
];

/// Removes hop-by-hop headers, including those named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip(headers, &[]);
}

/// Removes hop-by-hop headers, those named in `Connection`, and `also`. One pass over the
/// names present (a handful) instead of a hashed lookup per listed name; nothing is removed,
/// and nothing allocated, when none is there.
fn strip(headers: &mut HeaderMap, also: &[HeaderName]) {
    let mut doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| HOP_BY_HOP.contains(k) || also.contains(k))
        .cloned()
        .collect();
    if doomed.contains(&header::CONNECTION) {
        doomed.extend(
            headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok()),
        );
    }
    for n in doomed {
        headers.remove(n);
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
        strip(headers, &CALLER_ONLY);
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

    #[test]
    fn caller_credentials_and_addressing_are_removed_the_rest_kept() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer caller-key"),
            ("cookie", "a=b"),
            ("host", "gateway.internal"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-partner", "spoofed"),
            ("te", "trailers"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("content-type", "application/json"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip(&mut h, &CALLER_ONLY);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "traceparent"]);
    }
}
