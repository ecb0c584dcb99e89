//! The innermost service: rewrite the URI to the upstream's origin and forward with the pooled
//! client, streaming the response back.
//!
//! The path and query are Ratepay's own (the caller changed only the host), so the upstream URL
//! is the configured origin plus the request's path and query. A connect failure is 502 and a
//! missed response deadline 504, both naming the upstream; hop-by-hop response headers are
//! removed and everything else passes through unchanged.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use http::{header, HeaderMap, HeaderValue, Request, Uri};
use http_body_util::Full;

use crate::{
    body,
    client::{HttpClient, Origin},
    conn_clock::within,
    context::Call,
    error::GatewayError,
    metrics::{status_class, Metrics, UpstreamLabels, UpstreamOnly},
    middleware::{headers::strip_hop_by_hop, GwRequest, GwResponse, Handler},
    routes::Api,
};

/// Forwards requests to Ratepay.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<ProxyInner>,
}

struct ProxyInner {
    /// Each upstream's connection pool, resolved once.
    origins: BTreeMap<Api, Origin>,
    request_timeout: Duration,
    body_idle_timeout: Duration,
    max_response_bytes: u64,
    metrics: Arc<Metrics>,
}
impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("origins", &self.inner.origins)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// A proxy over `client` to the given origins (`http` or `https` URLs, as the configuration
    /// requires; any other is left out and its calls answer `no-upstream`).
    pub fn new(
        client: HttpClient,
        origins: BTreeMap<Api, Uri>,
        request_timeout: Duration,
        body_idle_timeout: Duration,
        max_response_bytes: u64,
        metrics: Arc<Metrics>,
    ) -> Proxy {
        let origins = origins
            .iter()
            .filter_map(|(api, uri)| Some((*api, client.origin(uri).ok()?)))
            .collect();
        Proxy {
            inner: Arc::new(ProxyInner {
                origins,
                request_timeout,
                body_idle_timeout,
                max_response_bytes,
                metrics,
            }),
        }
    }
}

/// Refuses an answer with conflicting or invalid framing: both `Transfer-Encoding` and
/// `Content-Length`, a `Transfer-Encoding` whose last coding is not `chunked`, or a
/// `Content-Length` that is not one decimal number (repeated values must agree).
pub fn check_framing(headers: &HeaderMap) -> Result<(), String> {
    let te: Vec<&HeaderValue> = headers.get_all(header::TRANSFER_ENCODING).iter().collect();
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    if !te.is_empty() && headers.contains_key(header::CONTENT_LENGTH) {
        return Err(
            "it answered with both Transfer-Encoding and Content-Length (conflicting \
                    framing, RFC 9112 section 6.3); the answer was discarded"
                .into(),
        );
    }
    if let Some(last) = te.last() {
        let chunked_last = last
            .to_str()
            .ok()
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
        if !chunked_last {
            return Err(
                "it answered with a Transfer-Encoding that does not end in chunked \
                        (invalid framing, RFC 9112 section 6.3); the answer was discarded"
                    .into(),
            );
        }
    }
    let mut first: Option<u64> = None;
    for value in lengths.by_ref() {
        let parsed = value
            .to_str()
            .ok()
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<u64>().ok());
        match (parsed, first) {
            (None, _) => {
                return Err(
                    "it answered with an invalid Content-Length (RFC 9112 section \
                            6.3); the answer was discarded"
                        .into(),
                )
            }
            (Some(n), Some(f)) if n != f => {
                return Err(
                    "it answered with disagreeing Content-Length values (RFC 9112 \
                            section 6.3); the answer was discarded"
                        .into(),
                )
            }
            (Some(n), _) => first = Some(n),
        }
    }
    Ok(())
}

impl Handler for Proxy {
    async fn handle(&self, call: &Call, req: GwRequest) -> Result<GwResponse, GatewayError> {
        let inner = &*self.inner;
        let ctx = &call.ctx;
        let api = ctx.route.operation.api;
        ctx.stats
            .attempts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let upstream = api.name();
        let origin = inner
            .origins
            .get(&api)
            .ok_or(GatewayError::NoUpstream(upstream))?;
        let (parts, bytes) = req.into_parts();
        // Origin-form: the pool adds the origin's scheme and authority (HTTP/2) or `Host`.
        let mut out = Request::new(Full::new(bytes));
        *out.method_mut() = parts.method;
        *out.uri_mut() = parts
            .uri
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
        *out.headers_mut() = parts.headers;
        let started = std::time::Instant::now();
        let result = within(
            ctx.peer.clock.as_deref(),
            started + inner.request_timeout,
            origin.send(out),
        )
        .await;
        let m = &inner.metrics;
        m.upstream_duration.with(&UpstreamOnly { upstream }, |h| {
            h.observe(started.elapsed().as_secs_f64())
        });
        let class = match &result {
            Ok(Ok(r)) => status_class(r.status().as_u16()),
            _ => "error",
        };
        m.upstream_responses.with(
            &UpstreamLabels {
                upstream,
                status: class,
            },
            |c| c.inc(),
        );
        let resp = match result {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                return Err(GatewayError::UpstreamUnreachable {
                    upstream,
                    reason: crate::client::describe_client_error(&e),
                })
            }
            Err(_) => {
                return Err(GatewayError::UpstreamTimeout {
                    upstream,
                    timeout_ms: inner.request_timeout.as_millis(),
                })
            }
        };
        let (mut parts, incoming) = resp.into_parts();
        // An answer that announces more than the limit is refused before any of it is read.
        let declared = http_body::Body::size_hint(&incoming).upper();
        if let Some(len) = declared.filter(|len| *len > inner.max_response_bytes) {
            return Err(GatewayError::UpstreamUnreachable {
                upstream,
                reason: format!(
                    "it answered with {len} bytes, more than the {} bytes allowed by \
                         limits.max_response_body_bytes",
                    inner.max_response_bytes
                ),
            });
        }
        // RFC 9112 6.3: an answer whose framing is ambiguous is not passed on in any form; the
        // bytes after a disagreeing Content-Length would become the caller's next response.
        if let Err(reason) = check_framing(&parts.headers) {
            return Err(GatewayError::UpstreamUnreachable { upstream, reason });
        }
        strip_hop_by_hop(&mut parts.headers);
        // The body the gateway sends decides its own framing (hyper derives Content-Length or
        // chunking from it); upstream framing headers never pass.
        parts.headers.remove(header::CONTENT_LENGTH);
        // Streamed through; an upstream that goes silent mid-body or sends more than the
        // limit ends it with an error.
        let incoming =
            body::IdleTimeout::limited(incoming, inner.body_idle_timeout, inner.max_response_bytes);
        Ok(GwResponse::from_parts(parts, body::boxed(incoming)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn framing_is_checked() {
        assert!(check_framing(&headers(&[("content-length", "5")])).is_ok());
        assert!(check_framing(&headers(&[("transfer-encoding", "chunked")])).is_ok());
        assert!(check_framing(&headers(&[("transfer-encoding", "gzip, chunked")])).is_ok());
        assert!(check_framing(&headers(&[
            ("content-length", "5"),
            ("content-length", "5")
        ]))
        .is_ok());
        assert!(check_framing(&HeaderMap::new()).is_ok());
        for bad in [
            &[("content-length", "5"), ("transfer-encoding", "chunked")][..],
            &[("transfer-encoding", "chunked, gzip")],
            &[("transfer-encoding", "identity")],
            &[("content-length", "5"), ("content-length", "6")],
            &[("content-length", "+5")],
            &[("content-length", "5, 5")],
            &[("content-length", "")],
            &[("content-length", "99999999999999999999999")],
        ] {
            assert!(check_framing(&headers(bad)).is_err(), "{bad:?}");
        }
    }
}
