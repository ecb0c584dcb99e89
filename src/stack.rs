//! The only place where layer order is decided, and the edge that turns a hyper request into a
//! routed, bounded, buffered request and every error into a problem response.
//!
//! Read top to bottom: each layer's why-comment says why it sits where it does.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use tower::{util::BoxCloneSyncService, ServiceBuilder, ServiceExt};

use crate::{
    audit::{AuditLog, AuditRecord},
    body::{self, Body},
    callers::{layer::CallerPolicyLayer, Callers},
    client::{self, HttpClient},
    config::{Config, Limits},
    context::{Authenticated, RequestContext},
    error::GatewayError,
    metrics::{status_class, Metrics, OperationLabels, RequestLabels},
    middleware::{
        audit::AuditLayer,
        cache::{InvalidateOnCancellationLayer, SessionRecordCache, SessionRecordCacheLayer},
        headers::HeadersLayer,
        idempotency::{IdempotencyLayer, IdempotencyStore},
        rate_limit::{CallerRateLimitLayer, RateLimits, UpstreamRateLimitLayer},
        retry::RetryLayer,
        token::InjectTokenLayer,
        GwRequest, GwResponse,
    },
    proxy::Proxy,
    recovery,
    routes::{self, Api},
    token::{http_fetch::HttpFetcher, TokenSource},
};

/// `X-Request-Id`.
pub static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

type Stack = BoxCloneSyncService<GwRequest, GwResponse, GatewayError>;

/// A ready-to-serve gateway built from one configuration. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<GatewayInner>,
}

struct GatewayInner {
    stack: Stack,
    callers: Arc<Callers>,
    limits: Limits,
    tokens: Arc<BTreeMap<Api, TokenSource>>,
    audit: AuditLog,
    metrics: Arc<Metrics>,
    cache: Option<SessionRecordCache>,
}
impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

/// Why a gateway could not be built from a (valid) configuration.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BuildError(pub String);

impl Gateway {
    /// Builds the client, token sources, audit log and layer stack. Needs a tokio runtime.
    ///
    /// Opening the audit log closes intents a previous run left open (see [`recover`]).
    pub async fn build(config: &Config) -> Result<Gateway, BuildError> {
        let client = client::build(&config.upstream_client).map_err(BuildError)?;
        let tokens = Arc::new(token_sources(config, &client));
        let callers =
            Arc::new(Callers::new(&config.callers).map_err(|e| BuildError(e.to_string()))?);
        let audiences = config
            .upstreams
            .iter()
            .map(|(api, u)| (*api, u.audience.clone()))
            .collect();
        let origins = config
            .upstreams
            .iter()
            .map(|(api, u)| (*api, u.url.clone()))
            .collect();
        let (audit, open_intents) = open_audit(config).await?;
        // Close what a previous run left open, asking Ratepay before the listeners open.
        let ratepay = match (
            config.upstreams.get(&Api::Payment),
            tokens.get(&Api::Payment),
        ) {
            (Some(u), Some(token)) => Some(recovery::Ratepay {
                client: &client,
                origin: &u.url,
                token,
                timeout: config.upstream_client.request_timeout,
            }),
            _ => None,
        };
        recovery::recover(&audit, &open_intents, ratepay.as_ref()).await?;
        let metrics = Metrics::new(tokens.clone(), audit.clone());
        let rate_limits = Arc::new(RateLimits::new(&config.rate_limits));
        rate_limits.spawn_housekeeping(Duration::from_secs(60));
        let cache = config.cache.as_ref().map(SessionRecordCache::new);
        let audited: &[&'static str] = if config.audit.enabled {
            &config.audit.operations
        } else {
            tracing::warn!(
                "audit.enabled = false: cancellations are forwarded WITHOUT audit records \
                 (meant only for the load benchmark's baseline)"
            );
            &[]
        };

        let stack = ServiceBuilder::new()
            // Who is calling and may it: before any work is spent on the request.
            .layer(CallerPolicyLayer::new(callers.clone(), audiences))
            // The caller's own budget, spent before any shared work: cache hits count too.
            .layer(CallerRateLimitLayer::new(rate_limits.clone()))
            // Session-record reads: after the policy (a caller only gets what it may call),
            // before the budget toward Ratepay (hits spend none, and are served during a pause).
            .layer(cache.clone().map_or_else(
                SessionRecordCacheLayer::disabled,
                SessionRecordCacheLayer::new,
            ))
            // Once Ratepay confirmed a cancellation, the transaction's cached records go.
            .layer(InvalidateOnCancellationLayer::new(cache.clone()))
            // Keys are scoped per caller, so this follows the caller layer; replays, waiting
            // duplicates and 409s answer here without spending the budget toward Ratepay.
            .layer(IdempotencyLayer::new(
                IdempotencyStore::new(&config.idempotency),
                metrics.clone(),
            ))
            // The budget toward Ratepay and Ratepay's own 429 pause: only calls about to leave.
            // Its refusals are errors, never stored as idempotent answers.
            .layer(UpstreamRateLimitLayer::new(rate_limits.clone()))
            // Intent durable before anything leaves; outcome after every retry is done. After
            // the limits, so a refused cancellation (it never left) writes no intent.
            .layer(AuditLayer::new(audit.clone(), audited))
            // Strip caller credentials and hop-by-hop headers; set the decided X-Partner.
            .layer(HeadersLayer)
            // Ratepay's token last, so no layer above ever sees it; 401 → refresh + one replay.
            .layer(InjectTokenLayer::new(tokens.clone()))
            // Retries reuse the token and Idempotency-Key decided above.
            .layer(RetryLayer::new(config.retry.clone(), metrics.clone()))
            .service(Proxy::new(
                client,
                origins,
                config.upstream_client.request_timeout,
                config.upstream_client.body_idle_timeout,
                metrics.clone(),
            ));
        Ok(Gateway {
            inner: Arc::new(GatewayInner {
                stack: BoxCloneSyncService::new(stack),
                callers,
                limits: config.limits.clone(),
                tokens,
                audit,
                metrics,
                cache,
            }),
        })
    }

    /// Flushes and syncs pending audit records; call after the listeners have drained.
    pub async fn shutdown(&self) {
        self.inner.audit.close().await;
    }

    /// The metrics registry (admin `/metrics`).
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The session-record cache, when enabled.
    pub fn session_record_cache(&self) -> Option<&SessionRecordCache> {
        self.inner.cache.as_ref()
    }

    /// Token sources per API (readiness and metrics).
    pub fn token_sources(&self) -> &BTreeMap<Api, TokenSource> {
        &self.inner.tokens
    }

    /// Serves one request; never fails: every error becomes a problem response.
    pub async fn handle<B>(&self, req: Request<B>, source: SocketAddr) -> Response<Body>
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
        let attempts: Arc<std::sync::atomic::AtomicU32> = Arc::default();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let deadline = self.inner.limits.request_timeout;
        let result = match tokio::time::timeout(
            deadline,
            self.route_and_call(req, source, &request_id, received, attempts.clone()),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err((GatewayError::Deadline(deadline.as_millis()), None)),
        };
        let (mut resp, operation) = match result {
            Ok((resp, op)) => (resp, op),
            Err((e, op)) => {
                if let GatewayError::Internal(detail) = &e {
                    tracing::error!(request_id = %request_id, detail = %detail, "internal error");
                }
                (e.to_response(&request_id), op)
            }
        };
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            resp.headers_mut().insert(X_REQUEST_ID.clone(), v);
        }
        let caller = resp
            .extensions()
            .get::<Authenticated>()
            .map(|a| a.caller.name.clone());
        let latency = received.elapsed();
        metrics
            .requests
            .get_or_create(&RequestLabels {
                operation: operation.unwrap_or("-").to_owned(),
                caller: caller.clone().unwrap_or_else(|| "-".into()),
                status: status_class(resp.status().as_u16()),
            })
            .inc();
        if let Some(op) = operation {
            metrics
                .request_duration
                .get_or_create(&OperationLabels {
                    operation: op.to_owned(),
                })
                .observe(latency.as_secs_f64());
        }
        tracing::info!(
            target: "ratepay_gateway::access",
            request_id = %request_id,
            method = %method,
            path = %path,
            operation = operation.unwrap_or("-"),
            caller = caller.as_deref().unwrap_or("-"),
            status = resp.status().as_u16(),
                        latency_us = latency.as_micros() as u64,
            upstream_attempts = attempts.load(std::sync::atomic::Ordering::Relaxed),"request"
        );
        resp
    }

    async fn route_and_call<B>(
        &self,
        req: Request<B>,
        source: SocketAddr,
        request_id: &Arc<str>,
        received: Instant,
        attempts: Arc<std::sync::atomic::AtomicU32>,
    ) -> Result<(GwResponse, Option<&'static str>), (GatewayError, Option<&'static str>)>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<crate::body::BoxError>,
    {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path();
        // The gateway's own token endpoint for internal callers, Ratepay's protocol.
        if path == "/oauth/token" {
            if parts.method != Method::POST {
                return Err((
                    GatewayError::MethodNotAllowed {
                        method: parts.method.to_string(),
                        path: path.into(),
                    },
                    None,
                ));
            }
            let bytes = self.read_body(body).await.map_err(|e| (e, None))?;
            let json = self
                .inner
                .callers
                .issue_token(&bytes)
                .map_err(|e| (e, None))?;
            let mut resp = Response::new(body::full(serde_json::to_vec(&json).unwrap_or_default()));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            return Ok((resp, Some("gateway.oauth.token")));
        }
        let route = match routes::match_route(&parts.method, path) {
            Ok(Some(r)) => r,
            Ok(None) if routes::path_known(path) => {
                return Err((
                    GatewayError::MethodNotAllowed {
                        method: parts.method.to_string(),
                        path: path.into(),
                    },
                    None,
                ))
            }
            Ok(None) => return Err((GatewayError::UnknownRoute(path.into()), None)),
            Err(e) => return Err((e.into(), None)),
        };
        let op = Some(route.operation.name);
        let bytes = self.read_body(body).await.map_err(|e| (e, op))?;
        let mut req = Request::from_parts(parts, bytes);
        req.extensions_mut().insert(RequestContext {
            request_id: request_id.clone(),
            route,
            source,
            received,
            attempts,
        });
        let svc = self.inner.stack.clone();
        svc.oneshot(req).await.map(|r| (r, op)).map_err(|e| (e, op))
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

struct InFlight<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Keeps a well-formed incoming`X-Request-Id` (1 to 128 of `[A-Za-z0-9._:-]`), else makes one.
fn request_id(headers: &http::HeaderMap) -> Arc<str> {
    headers
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=128).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        })
        .map(Arc::from)
        .unwrap_or_else(|| Arc::from(uuid::Uuid::now_v7().to_string()))
}

fn token_sources(config: &Config, client: &HttpClient) -> BTreeMap<Api, TokenSource> {
    // One source per (credential set, audience): APIs sharing both share one token.
    let mut by_key: BTreeMap<(String, String), TokenSource> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (api, u) in &config.upstreams {
        let Some(cred) = config.credentials.get(&u.credentials) else {
            continue;
        };
        let source = by_key
            .entry((u.credentials.clone(), u.audience.clone()))
            .or_insert_with(|| {
                TokenSource::new(
                    u.audience.clone(),
                    Box::new(HttpFetcher {
                        client: client.clone(),
                        token_url: cred.token_url.clone(),
                        client_id: cred.client_id.clone(),
                        client_secret: cred.client_secret.clone(),
                        audience: u.audience.clone(),
                    }),
                    config.tokens.clone(),
                )
            })
            .clone();
        out.insert(*api, source);
    }
    out
}

/// Opens the audit log (creating its directory) and closes what a previous run left open.
async fn open_audit(config: &Config) -> Result<(AuditLog, Vec<AuditRecord>), BuildError> {
    let path = &config.audit.log.path;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| BuildError(format!("audit.path: cannot create {}: {e}", dir.display())))?;
    }
    let (log, recovery) = AuditLog::open(config.audit.log.clone())
        .await
        .map_err(|e| BuildError(format!("audit.path {}: {e}", path.display())))?;
    if let Some(t) = &recovery.truncated {
        tracing::warn!(
            ?t,
            "audit log had a torn last record (crash during a write); it was cut away"
        );
    }
    Ok((log, recovery.open_intents))
}

/// A plain-text or JSON response for the admin endpoints.
pub fn simple(
    status: StatusCode,
    content_type: &'static str,
    text: impl Into<Bytes>,
) -> Response<Body> {
    let mut resp = Response::new(body::full(text.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// How long readiness waits for a token before calling an upstream not ready.
pub const READY_TOKEN_WAIT: Duration = Duration::from_secs(2);
