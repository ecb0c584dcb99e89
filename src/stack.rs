//! The only place where layer order is decided, and the edge that turns a hyper request into a
//! routed, bounded, buffered request and every error into a problem response.
//!
//! Read top to bottom: each layer's why-comment says why it sits where it does.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::FutureExt;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use secrecy::ExposeSecret;
use tower::ServiceBuilder;

use crate::{
    audit::{AuditLog, AuditRecord},
    body::{self, Body},
    callers::Callers,
    client::{self, HttpClient},
    config::{Config, Limits},
    context::{RequestContext, RequestFacts, RequestStats},
    error::{BuildError, GatewayError},
    metrics::{
        status_class, Metrics, Name, OperationLabels, RequestLabels, ResultLabels, ScopeLabels,
    },
    middleware::{
        audit::AuditLayer,
        cache::{
            CacheStatus, InvalidateOnCancellationLayer, SessionRecordCache,
            SessionRecordCacheLayer, X_CACHE,
        },
        caller::CallerPolicyLayer,
        headers::{strip_caller_hop_by_hop, HeadersLayer},
        idempotency::{validate_key, IdempotencyLayer, IdempotencyStore, IDEMPOTENCY_KEY},
        json_body::JsonBodyLayer,
        rate_limit::{CallerRateLimitLayer, RateLimits, UpstreamRateLimitLayer},
        retry::RetryLayer,
        token::InjectTokenLayer,
        BoxHandler, GwResponse,
    },
    proxy::Proxy,
    recovery,
    request_id::{request_id, X_REQUEST_ID},
    routes::{self, Api, Keys, Operation},
    token::{http_fetch::HttpFetcher, TokenSource},
};

type Stack = Box<dyn BoxHandler>;

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
    // What a reload compares against and takes over.
    /// The configuration this gateway runs (restart-only parts as first started).
    config: Config,
    token_keys: BTreeMap<TokenKey, TokenSource>,
    rate_limits: Arc<RateLimits>,
    idempotency: IdempotencyStore,
}
impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

/// The parts of a gateway that are not rebuilt from scratch on every configuration.
struct Parts {
    client: HttpClient,
    tokens: Arc<BTreeMap<Api, TokenSource>>,
    token_keys: BTreeMap<TokenKey, TokenSource>,
    audit: AuditLog,
    metrics: Arc<Metrics>,
    rate_limits: Arc<RateLimits>,
    cache: Option<SessionRecordCache>,
    idempotency: IdempotencyStore,
}

/// A reloaded gateway and what the operator should know about the reload.
#[derive(Debug)]
pub struct Reloaded {
    /// The gateway built from the new configuration.
    pub gateway: Gateway,
    /// Settings that were kept, caches that were emptied, and similar notes.
    pub notes: Vec<String>,
}

impl Gateway {
    /// Builds the client, token sources, audit log and layer stack. Needs a tokio runtime.
    ///
    /// Opening the audit log closes intents a previous run left open (see [`recover`]).
    pub async fn build(config: &Config) -> Result<Gateway, BuildError> {
        let client = client::build(&config.upstream_client).map_err(BuildError)?;
        let (tokens, token_keys, _) = token_sources(config, &client, &BTreeMap::new());
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
        let tokens = Arc::new(tokens);
        let metrics = Metrics::new(tokens.clone(), audit.clone());
        Gateway::assemble(
            config.clone(),
            Parts {
                client,
                tokens,
                token_keys,
                audit,
                metrics,
                rate_limits: new_rate_limits(config),
                cache: config.cache.as_ref().map(SessionRecordCache::new),
                idempotency: IdempotencyStore::new(&config.idempotency),
            },
        )
    }

    /// Builds a gateway from `config` that takes over this one's audit log, metrics and
    /// idempotency store, and its token sources, rate-limit state and cache where their
    /// settings did not change. New Ratepay credentials must yield a token before they are
    /// accepted. Settings that need a restart (listeners, sandbox, audit file, idempotency
    /// store) keep their running values; `notes` names them.
    pub async fn reload(&self, config: &Config) -> Result<Reloaded, BuildError> {
        let old = &self.inner;
        let mut config = config.clone();
        let mut notes = Vec::new();
        keep_restart_only(&old.config, &mut config, &mut notes);
        let client = client::build(&config.upstream_client).map_err(BuildError)?;
        let reusable = if config.tokens == old.config.tokens {
            old.token_keys.clone()
        } else {
            notes.push("tokens: settings changed; Ratepay tokens are fetched anew".into());
            BTreeMap::new()
        };
        let (tokens, token_keys, fresh) = token_sources(&config, &client, &reusable);
        // New credentials replace working ones only once Ratepay issued a token for them.
        for key in &fresh {
            let Some(source) = token_keys.get(key) else {
                continue;
            };
            let outcome = tokio::time::timeout(READY_TOKEN_WAIT, source.bearer()).await;
            let problem = match outcome {
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {} ms", READY_TOKEN_WAIT.as_millis()),
            };
            return Err(BuildError(format!(
                "credentials.{}: the token endpoint gave no token for audience {} with the \
                 new settings ({problem})",
                key.credentials, key.audience
            )));
        }
        if !fresh.is_empty() {
            notes.push(format!(
                "credentials: {} token source(s) with new settings, each issued a token",
                fresh.len()
            ));
        }
        let rate_limits = if config.rate_limits == old.config.rate_limits {
            old.rate_limits.clone()
        } else {
            notes.push("rate_limits: changed; budgets start full".into());
            new_rate_limits(&config)
        };
        let cache = if config.cache == old.config.cache {
            old.cache.clone()
        } else {
            notes.push("cache: settings changed; the session-record cache starts empty".into());
            config.cache.as_ref().map(SessionRecordCache::new)
        };
        let tokens = Arc::new(tokens);
        let gateway = Gateway::assemble(
            config,
            Parts {
                client,
                tokens: tokens.clone(),
                token_keys,
                audit: old.audit.clone(),
                metrics: old.metrics.clone(),
                rate_limits,
                cache,
                idempotency: old.idempotency.clone(),
            },
        )?;
        old.metrics.set_token_sources(tokens);
        Ok(Reloaded { gateway, notes })
    }

    /// The layer stack around `parts`.
    fn assemble(config: Config, parts: Parts) -> Result<Gateway, BuildError> {
        let Parts {
            client,
            tokens,
            token_keys,
            audit,
            metrics,
            rate_limits,
            cache,
            idempotency,
        } = parts;
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
            // Money calls must be one JSON object with unique keys before any layer reads
            // fields from them (cache key, idempotency fingerprint, audit) or sends them.
            .layer(JsonBodyLayer)
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
            .layer(IdempotencyLayer::new(idempotency.clone(), metrics.clone()))
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
                config.limits.max_response_body_bytes,
                metrics.clone(),
            ));
        Ok(Gateway {
            inner: Arc::new(GatewayInner {
                stack: Box::new(stack),
                callers,
                limits: config.limits.clone(),
                tokens,
                audit,
                metrics,
                cache,
                config,
                token_keys,
                rate_limits,
                idempotency,
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

    /// The metrics registry, shared (the listeners count connections into it).
    pub fn metrics_handle(&self) -> Arc<Metrics> {
        self.inner.metrics.clone()
    }

    /// How client connections are bounded (`[listen]`; restart-only).
    pub fn connection_limits(&self) -> crate::config::ConnectionLimits {
        self.inner.config.listen.connections
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
        let stats: Arc<RequestStats> = Arc::default();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let deadline = self.inner.limits.request_timeout;
        // A panic anywhere below still answers the caller (500) and is counted; the connection
        // and every other request on it carry on.
        let call = std::panic::AssertUnwindSafe(self.route_and_call(
            req,
            source,
            &request_id,
            received,
            stats.clone(),
        ))
        .catch_unwind();
        let result = match tokio::time::timeout(deadline, call).await {
            Ok(Ok(r)) => r,
            Ok(Err(panic)) => {
                metrics.panics.inc();
                Err((
                    GatewayError::Internal(format!("panic: {}", panic_message(&*panic))),
                    stats.operation.get().copied(),
                ))
            }
            Err(_) => Err((
                GatewayError::Deadline(deadline.as_millis()),
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
                .get_or_create(&ResultLabels { result })
                .inc();
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
                .get_or_create(&OperationLabels { operation })
                .observe(latency.as_secs_f64());
        }
        // Bytes of the response body when known before it is streamed (buffered answers,
        // problems, cache hits, upstreams that sent Content-Length).
        let bytes = http_body::Body::size_hint(resp.body()).exact();
        tracing::info!(
            target: crate::logging::ACCESS_TARGET,
            request_id = &*request_id,
            method = method.as_str(),
            path = path.as_str(),
            operation = operation.unwrap_or("-"),
            caller = caller.as_deref().unwrap_or("-"),
            status = resp.status().as_u16(),
            latency_us = latency.as_micros() as u64,
            upstream_attempts = stats.attempts.load(Ordering::Relaxed),
            cache = cache.unwrap_or("-"),
            bytes,
            queued_us,
            "request"
        );
        resp
    }

    async fn route_and_call<B>(
        &self,
        req: Request<B>,
        source: SocketAddr,
        request_id: &Arc<str>,
        received: Instant,
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
            return Ok((resp, Some(&routes::GATEWAY_OAUTH_TOKEN)));
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
        let op = Some(route.operation);
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
        let bytes = self.read_body(body).await.map_err(|e| (e, op))?;
        let mut req = Request::from_parts(parts, bytes);
        req.extensions_mut()
            .insert(RequestContext::new(RequestFacts {
                request_id: request_id.clone(),
                route,
                source,
                received,
                stats,
            }));
        self.inner
            .stack
            .handle_boxed(req)
            .await
            .map(|r| (r, op))
            .map_err(|e| (e, op))
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

/// What makes two token sources interchangeable: same credentials, endpoint and audience.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct TokenKey {
    credentials: String,
    audience: String,
    token_url: String,
    client_id: String,
    secret_sha256: [u8; 32],
}

/// One source per (credential set, audience): APIs sharing both share one token. Sources in
/// `reuse` with the same key are taken over (their token stays); the keys of new ones are
/// returned last.
fn token_sources(
    config: &Config,
    client: &HttpClient,
    reuse: &BTreeMap<TokenKey, TokenSource>,
) -> (
    BTreeMap<Api, TokenSource>,
    BTreeMap<TokenKey, TokenSource>,
    Vec<TokenKey>,
) {
    let mut by_key: BTreeMap<TokenKey, TokenSource> = BTreeMap::new();
    let mut fresh = Vec::new();
    let mut out = BTreeMap::new();
    for (api, u) in &config.upstreams {
        let Some(cred) = config.credentials.get(&u.credentials) else {
            continue;
        };
        let key = TokenKey {
            credentials: u.credentials.clone(),
            audience: u.audience.clone(),
            token_url: cred.token_url.to_string(),
            client_id: cred.client_id.clone(),
            secret_sha256: crate::config::sha256(cred.client_secret.expose_secret().as_bytes()),
        };
        let source = match (by_key.get(&key), reuse.get(&key)) {
            (Some(s), _) => s.clone(),
            (None, Some(s)) => s.clone(),
            (None, None) => {
                fresh.push(key.clone());
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
            }
        };
        by_key.insert(key, source.clone());
        out.insert(*api, source);
    }
    (out, by_key, fresh)
}

fn new_rate_limits(config: &Config) -> Arc<RateLimits> {
    let limits = Arc::new(RateLimits::new(&config.rate_limits));
    limits.spawn_housekeeping(Duration::from_secs(60));
    limits
}

/// Settings that only a restart changes keep their running values in `new`; each differing
/// one is named in `notes`.
fn keep_restart_only(running: &Config, new: &mut Config, notes: &mut Vec<String>) {
    let mut keep = |name: &str, differs: bool| {
        if differs {
            notes.push(format!(
                "{name}: changed in the file, but takes effect only after a restart; kept"
            ));
        }
    };
    keep(
        "listen",
        format!("{:?}", running.listen) != format!("{:?}", new.listen),
    );
    keep(
        "sandbox",
        format!("{:?}", running.sandbox) != format!("{:?}", new.sandbox),
    );
    keep("audit (file settings)", running.audit.log != new.audit.log);
    keep("idempotency", running.idempotency != new.idempotency);
    new.listen = running.listen.clone();
    new.sandbox = running.sandbox.clone();
    new.audit.log = running.audit.log.clone();
    new.idempotency = running.idempotency.clone();
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
