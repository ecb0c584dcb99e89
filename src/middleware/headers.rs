//! Header hygiene toward Ratepay: strip the caller's credentials and hop-by-hop headers, set the
//! X-Partner the caller's policy decided.
//!
//! The caller's hop-by-hop headers (and those its `Connection` names) are removed once, at the
//! edge, by [`strip_caller_hop_by_hop`], before any layer reads or sets a header; this layer
//! removes only the fixed caller-only list, so nothing a layer set on the way can be stripped
//! by a name the caller chose.
//!
//! Sits after the caller layer (which decided the partner) and before the token layer (which
//! adds Ratepay's Authorization). Nothing the caller authenticated with, and nothing about the
//! internal network, leaves the gateway.

use http::{header, HeaderMap, HeaderName, HeaderValue};

use super::{GwRequest, GwResponse, Handler};
use crate::{context::Call, error::GatewayError};

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

/// End-to-end headers that carry meaning for the gateway or for Ratepay. A caller may not
/// turn one into a hop-by-hop header by naming it in `Connection`: stripping it would let the
/// caller delete what the gateway decided (an `Idempotency-Key`, the `X-Partner`) or change
/// what Ratepay executes, so such a request is refused instead.
static PROTECTED: [HeaderName; 9] = [
    header::AUTHORIZATION,
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::HOST,
    HeaderName::from_static("idempotency-key"),
    HeaderName::from_static("x-partner"),
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("prefer"),
    header::ACCEPT,
];

/// Removes hop-by-hop headers from an upstream answer, including those named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let doomed = hop_by_hop_present(headers, connection_options(headers));
    for n in doomed {
        headers.remove(n);
    }
}

/// The caller's hop-by-hop headers, removed once at the edge before any layer reads or adds a
/// header: the fixed list and every name the caller's `Connection` lists. A `Connection` that
/// names a [`PROTECTED`] end-to-end header is refused (400) rather than obeyed.
pub fn strip_caller_hop_by_hop(headers: &mut HeaderMap) -> Result<(), GatewayError> {
    let listed = connection_options(headers);
    if let Some(name) = listed.iter().find(|n| PROTECTED.contains(n)) {
        return Err(GatewayError::BadRequest(format!(
            "the Connection header names the end-to-end header '{name}'; the gateway does not \
             treat it as hop-by-hop. Send Connection: keep-alive (or close) only"
        )));
    }
    for n in hop_by_hop_present(headers, listed) {
        headers.remove(n);
    }
    Ok(())
}

/// The names listed in `Connection` (nothing allocated when there is no `Connection`).
fn connection_options(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect()
}

/// Hop-by-hop names present in `headers`, plus `listed`. One pass over the names present (a
/// handful) instead of a hashed lookup per listed name.
fn hop_by_hop_present(headers: &HeaderMap, mut listed: Vec<HeaderName>) -> Vec<HeaderName> {
    listed.extend(headers.keys().filter(|k| HOP_BY_HOP.contains(k)).cloned());
    listed
}

/// Removes the caller-only headers: nothing else (hop-by-hop headers went at the edge).
fn strip_caller_only(headers: &mut HeaderMap) {
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| CALLER_ONLY.contains(k))
        .cloned()
        .collect();
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
    async fn handle(&self, call: &Call, mut req: GwRequest) -> Result<GwResponse, GatewayError> {
        strip_caller_only(req.headers_mut());
        if let Some(p) = &call.auth.partner {
            match HeaderValue::from_str(p) {
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
        self.inner.handle(call, req).await
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
        strip_caller_hop_by_hop(&mut h).unwrap();
        strip_caller_only(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "traceparent"]);
    }

    #[test]
    fn a_connection_naming_a_protected_header_is_refused_and_nothing_is_removed() {
        for name in [
            "Idempotency-Key",
            "x-partner",
            "Authorization",
            "content-type",
            "Content-Length",
            "x-request-id",
            "prefer",
        ] {
            let mut h = HeaderMap::new();
            h.insert(
                "connection",
                HeaderValue::from_str(&format!("keep-alive, {name}")).unwrap(),
            );
            h.insert("idempotency-key", HeaderValue::from_static("k1"));
            let err = strip_caller_hop_by_hop(&mut h).unwrap_err();
            assert!(
                matches!(&err, GatewayError::BadRequest(m) if m.contains(&name.to_ascii_lowercase())),
                "{name}: {err:?}"
            );
            assert!(h.get("idempotency-key").is_some());
        }
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("keep-alive, x-hop"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("idempotency-key", HeaderValue::from_static("k1"));
        strip_caller_hop_by_hop(&mut h).unwrap();
        assert!(h.get("x-hop").is_none() && h.get("connection").is_none());
        assert!(h.get("idempotency-key").is_some());
    }
}
