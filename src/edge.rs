//! The edge: turns a hyper request into a routed, bounded, buffered request and its
//! [`RequestContext`] for the stack, and every outcome (an answer, a gateway error, the
//! whole-request deadline, a panic) into one response with its request id, its
//! Idempotency-Key, metrics and one access record.

use std::{
    sync::{atomic::Ordering, Arc},
    time::Instant,
};

use bytes::Bytes;
use futures_util::FutureExt;
use http::{HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Limited};

use crate::{
    body::Body,
    conn_clock::within,
    context::{Peer, RequestContext, RequestFacts, RequestStats},
    error::GatewayError,
    gateway::Gateway,
    metrics::{status_class, Name, OperationLabels, RequestLabels, ResultLabels, ScopeLabels},
    middleware::{
        cache::{CacheStatus, X_CACHE},
        headers::strip_caller_hop_by_hop,
        idempotency::{validate_key, IDEMPOTENCY_KEY},
        GwResponse,
    },
    request_id::{request_id, X_REQUEST_ID},
    routes::{self, Keys, Operation},
};

impl Gateway {
    /// Serves one request that arrived from `peer`; never fails: every error becomes a problem
    /// response.
    pub async fn handle<B>(&self, req: Request<B>, peer: Peer) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<crate::body::BoxError>,
    {
        let received = Instant::now();
        let metrics = &self.inner.metrics;
        metrics.in_flight.inc();
        // Decremented on every path, including a caller hanging up mid-request.
        let _in_flight = InFlight(&metrics.in_flight);
        let request_id = request_id(req.headers());
        let stats: Arc<RequestStats> = Arc::default();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let timeout = self.inner.limits.request_timeout;
        // One deadline for the edge's wait and for the layers that go on without it.
        let deadline = received + timeout;
        let clock = peer.clock.clone();
        // A panic anywhere below still answers the caller (500) and is counted; the connection
        // and every other request on it carry on.
        let call = std::panic::AssertUnwindSafe(self.route_and_call(
            req,
            peer,
            &request_id,
            (received, deadline),
            stats.clone(),
        ))
        .catch_unwind();
        let result = match within(clock.as_deref(), deadline, call).await {
            Ok(Ok(r)) => r,
            Ok(Err(panic)) => {
                metrics.panics.inc();
                Err((
                    GatewayError::Internal(format!("panic: {}", panic_message(&*panic))),
                    stats.operation.get().copied(),
                ))
            }
            Err(_) => Err((
                GatewayError::Deadline(timeout.as_millis()),
                stats.operation.get().copied(),
            )),
        };
        let (mut resp, operation) = match result {
            Ok((resp, op)) => (resp, op),
            Err((e, op)) => {
                match &e {
                    GatewayError::Internal(detail) => {
                        tracing::error!(request_id = %request_id, detail = %detail, "internal error");
                    }
                    GatewayError::RateLimited(r) => {
                        metrics
                            .rate_limit_rejections
                            .get_or_create(&ScopeLabels {
                                scope: r.scope.policy_name(),
                            })
                            .inc();
                    }
                    _ => {}
                }
                (e.to_response(&request_id), op)
            }
        };
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            resp.headers_mut().insert(X_REQUEST_ID.clone(), v);
        }
        // Every answer to a keyed call names its key, so the caller can always retry safely.
        if let Some(key) = stats.idempotency_key.get() {
            if let Ok(v) = HeaderValue::from_str(key) {
                resp.headers_mut().insert(IDEMPOTENCY_KEY.clone(), v);
            }
        }
        let operation = operation.map(|o| o.name);
        let caller = stats.caller.get().cloned();
        let latency = received.elapsed();
        let queued_us = stats.queued_us.load(Ordering::Relaxed);
        if queued_us > 0 {
            metrics
                .rate_limit_queue_wait
                .observe(queued_us as f64 / 1_000_000.0);
        }
        let cache = resp
            .headers()
            .get(&X_CACHE)
            .and_then(CacheStatus::from_header)
            .map(CacheStatus::label);
        if let Some(result) = cache {
            metrics
                .cache_lookups
                .with(&ResultLabels { result }, |c| c.inc());
        }
        metrics
            .requests
            .get_or_create(&RequestLabels {
                operation: operation.unwrap_or("-"),
                caller: Name(caller.clone().unwrap_or_else(|| Arc::from("-"))),
                status: status_class(resp.status().as_u16()),
            })
            .inc();
        if let Some(operation) = operation {
            metrics
                .request_duration
                .with(&OperationLabels { operation }, |h| {
                    h.observe(latency.as_secs_f64())
                });
        }
        // Bytes of the response body when known before it is streamed (buffered answers,
        // problems, cache hits, upstreams that sent Content-Length).
        let bytes = http_body::Body::size_hint(resp.body()).exact();
        crate::logging::access(&crate::logging::AccessRecord {
            request_id: &request_id,
            method: method.as_str(),
            path: path.as_str(),
            operation: operation.unwrap_or("-"),
            caller: caller.as_deref().unwrap_or("-"),
            status: resp.status().as_u16(),
            latency_us: latency.as_micros() as u64,
            upstream_attempts: stats.attempts.load(Ordering::Relaxed),
            cache: cache.unwrap_or("-"),
            bytes,
            queued_us,
        });
        resp
    }

    async fn route_and_call<B>(
        &self,
        req: Request<B>,
        peer: Peer,
        request_id: &Arc<str>,
        (received, deadline): (Instant, Instant),
        stats: Arc<RequestStats>,
    ) -> Result<(GwResponse, Option<&'static Operation>), (GatewayError, Option<&'static Operation>)>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<crate::body::BoxError>,
    {
        let (mut parts, body) = req.into_parts();
        // Once, before anything reads or sets a header: the caller's hop-by-hop headers go,
        // and a Connection naming an end-to-end header is refused.
        strip_caller_hop_by_hop(&mut parts.headers).map_err(|e| (e, None))?;
        let path = parts.uri.path();
        // The gateway's own token endpoint for internal callers (Ratepay's protocol) has a
        // stack of its own; the caller's rate limit applies there too.
        let token_endpoint = path == "/oauth/token";
        if token_endpoint && parts.method != Method::POST {
            return Err((
                GatewayError::MethodNotAllowed {
                    method: parts.method.to_string(),
                    path: path.into(),
                },
                None,
            ));
        }
        let route = if token_endpoint {
            routes::RouteMatch {
                operation: &routes::GATEWAY_OAUTH_TOKEN,
                params: routes::PathParams::default(),
            }
        } else {
            Self::route(&parts.method, path)?
        };
        let op = Some(route.operation);
        // A refused token request is unauthenticated: no operation in the metrics.
        let err_op = if token_endpoint { None } else { op };
        let _ = stats.operation.set(route.operation);
        match route.operation.keys {
            // A key on an operation that takes none would leave the gateway unscoped: it goes.
            Keys::None => {
                parts.headers.remove(&IDEMPOTENCY_KEY);
            }
            // The caller's own valid key is known from here on, for every answer.
            Keys::Generated | Keys::CallerOptional => {
                if let Some(key) = parts.headers.get(&IDEMPOTENCY_KEY) {
                    if let Ok(key) = validate_key(key.as_bytes()) {
                        let _ = stats.idempotency_key.set(Arc::from(key));
                    }
                }
            }
        }
        let bytes = self.read_body(body).await.map_err(|e| (e, err_op))?;
        let req = Request::from_parts(parts, bytes);
        let ctx = RequestContext::new(RequestFacts {
            request_id: request_id.clone(),
            route,
            peer,
            received,
            deadline,
            stats,
        });
        let stack = if token_endpoint {
            &self.inner.token_stack
        } else {
            &self.inner.stack
        };
        stack
            .handle_boxed(&ctx, req)
            .await
            .map(|r| (r, op))
            .map_err(|e| (e, err_op))
    }

    /// The Ratepay operation at `method` + `path`: 405 for a known path with another method,
    /// 404 for an unknown one, 400 for path tricks.
    fn route(
        method: &Method,
        path: &str,
    ) -> Result<routes::RouteMatch, (GatewayError, Option<&'static Operation>)> {
        match routes::match_route(method, path) {
            Ok(Some(r)) => Ok(r),
            Ok(None) if routes::path_known(path) => Err((
                GatewayError::MethodNotAllowed {
                    method: method.to_string(),
                    path: path.into(),
                },
                None,
            )),
            Ok(None) => Err((GatewayError::UnknownRoute(path.into()), None)),
            Err(e) => Err((e.into(), None)),
        }
    }

    async fn read_body<B>(&self, body: B) -> Result<Bytes, GatewayError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<crate::body::BoxError>,
    {
        let limit = self.inner.limits.max_request_body_bytes;
        match Limited::new(body, limit).collect().await {
            Ok(c) => Ok(c.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                Err(GatewayError::BodyTooLarge(limit))
            }
            // A body error is the caller's connection failing; say so without internals.
            Err(e) => Err(GatewayError::BodyRead(e.to_string())),
        }
    }
}

/// The text of a caught panic's payload (`&str` or `String`), for the error log.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

struct InFlight<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
