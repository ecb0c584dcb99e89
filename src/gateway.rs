//! A gateway built from one configuration, and rebuilt from the next one on reload: the
//! upstream client, the token sources, the audit log (with recovery of what a previous run
//! left open), the rate-limit, cache and idempotency state, and the layer stack around them
//! ([`crate::stack`]). What a reload keeps, rebuilds or refuses is decided here.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use secrecy::ExposeSecret;

use crate::{
    audit::{AuditEntry, AuditLog, AuditRecord, Start},
    callers::Callers,
    client::{self, HttpClient},
    cluster::{events::EventSink, idempotency::SharedAnswers, Cluster},
    config::{Config, Limits},
    error::BuildError,
    metrics::Metrics,
    middleware::{
        cache::SessionRecordCache,
        idempotency::IdempotencyStore,
        rate_limit::{RateLimits, SharedRateLimits},
    },
    recovery,
    routes::Api,
    stack::{self, Stack},
    token::{http_fetch::HttpFetcher, TokenSource},
};

/// A ready-to-serve gateway built from one configuration. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    pub(crate) inner: Arc<GatewayInner>,
}

/// What the edge and a reload read.
pub(crate) struct GatewayInner {
    pub(crate) stack: Stack,
    pub(crate) token_stack: Stack,
    pub(crate) limits: Limits,
    tokens: Arc<BTreeMap<Api, TokenSource>>,
    audit: AuditLog,
    pub(crate) metrics: Arc<Metrics>,
    cache: Option<SessionRecordCache>,
    // What a reload compares against and takes over.
    /// The configuration this gateway runs (restart-only parts as first started).
    config: Config,
    token_keys: BTreeMap<TokenKey, TokenSource>,
    rate_limits: Arc<RateLimits>,
    idempotency: IdempotencyStore,
    cluster: Option<Arc<Cluster>>,
    shared_limits: Option<Arc<SharedRateLimits>>,
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
    cluster: Option<Arc<Cluster>>,
    shared_limits: Option<Arc<SharedRateLimits>>,
}

/// Applies the fleet's messages to the rate limits and cache a gateway runs.
struct Sink {
    rate_limits: Arc<RateLimits>,
    cache: Option<SessionRecordCache>,
}

impl EventSink for Sink {
    fn pause(&self, api: Api, pause: Duration) {
        let applied = self.rate_limits.pause_upstream(api, Some(pause));
        tracing::debug!(
            upstream = api.name(),
            pause_ms = applied.as_millis() as u64,
            "another instance saw Ratepay's 429; holding calls to this API"
        );
    }

    fn invalidate(&self, transaction: &str) {
        if let Some(cache) = &self.cache {
            cache.invalidate_transaction(transaction);
        }
    }
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
        let client = client::build(&config.upstream_client);
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
        let cluster = match &config.cluster {
            Some(c) => Some(Cluster::start(c).map_err(BuildError)?),
            None => None,
        };
        let metrics = Metrics::new(tokens.clone(), audit.clone(), cluster.clone());
        let rate_limits = new_rate_limits(config);
        let gateway = Gateway::assemble(
            config.clone(),
            Parts {
                client,
                tokens,
                token_keys,
                audit,
                metrics,
                shared_limits: shared_limits(&cluster, config),
                rate_limits,
                cache: config.cache.as_ref().map(SessionRecordCache::new),
                idempotency: IdempotencyStore::new(&config.idempotency)
                    .shared(shared_answers(&cluster, config).await?),
                cluster,
            },
        )?;
        if let Some(c) = &gateway.inner.cluster {
            // Learn the pauses the fleet holds and connect before serving (bounded: Redis may
            // be away).
            if !c.wait_synced(CLUSTER_SYNC_WAIT).await {
                tracing::warn!(
                    wait_ms = CLUSTER_SYNC_WAIT.as_millis() as u64,
                    "redis did not answer at start; serving degraded (fallbacks) until it does"
                );
            }
        }
        Ok(gateway)
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
        let client = client::build(&config.upstream_client);
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
        let (rate_limits, shared) = if config.rate_limits == old.config.rate_limits {
            (old.rate_limits.clone(), old.shared_limits.clone())
        } else {
            notes.push("rate_limits: changed; local budgets start full".into());
            (
                new_rate_limits(&config),
                shared_limits(&old.cluster, &config),
            )
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
                cluster: old.cluster.clone(),
                shared_limits: shared,
            },
        )?;
        old.metrics.set_token_sources(tokens);
        Ok(Reloaded { gateway, notes })
    }

    /// The layer stack ([`stack::layers`]) around `parts`.
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
            cluster,
            shared_limits,
        } = parts;
        if let Some(c) = &cluster {
            c.set_sink(Arc::new(Sink {
                rate_limits: rate_limits.clone(),
                cache: cache.clone(),
            }));
        }
        let callers =
            Arc::new(Callers::new(&config.callers).map_err(|e| BuildError(e.to_string()))?);
        let stack = stack::layers(stack::Parts {
            config: &config,
            client,
            callers: callers.clone(),
            tokens: tokens.clone(),
            audit: audit.clone(),
            metrics: metrics.clone(),
            rate_limits: rate_limits.clone(),
            cache: cache.clone(),
            idempotency: idempotency.clone(),
            cluster: cluster.clone(),
            shared_limits: shared_limits.clone(),
        });
        Ok(Gateway {
            inner: Arc::new(GatewayInner {
                stack,
                token_stack: stack::token_endpoint(
                    callers.clone(),
                    rate_limits.clone(),
                    shared_limits.clone(),
                ),
                limits: config.limits.clone(),
                tokens,
                audit,
                metrics,
                cache,
                config,
                token_keys,
                rate_limits,
                idempotency,
                cluster,
                shared_limits,
            }),
        })
    }

    /// Flushes and syncs pending audit records, ending the log with a `stop` record and a
    /// last checkpoint; call after the listeners have drained.
    pub async fn shutdown(&self) {
        self.inner.audit.close_cleanly(VERSION).await;
    }

    /// The latest durable audit checkpoint (admin `GET /audit/checkpoint`).
    pub fn audit_checkpoint(&self) -> Option<Arc<crate::audit::Anchor>> {
        self.inner.audit.latest_checkpoint()
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

    /// Redis's state with `[cluster]` (readiness).
    pub fn cluster_health(&self) -> Option<crate::cluster::Health> {
        self.inner.cluster.as_ref().map(|c| c.health())
    }

    /// Token sources per API (readiness and metrics).
    pub fn token_sources(&self) -> &BTreeMap<Api, TokenSource> {
        &self.inner.tokens
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

/// The idempotency records kept in the fleet's Redis, with `[cluster]`.
async fn shared_answers(
    cluster: &Option<Arc<Cluster>>,
    config: &Config,
) -> Result<Option<Arc<SharedAnswers>>, BuildError> {
    let Some(c) = cluster else { return Ok(None) };
    let answers = SharedAnswers::new(c.clone(), IDEMPOTENCY_LEASE, config.idempotency.ttl)
        .map_err(BuildError)?;
    answers.preload().await;
    Ok(Some(Arc::new(answers)))
}

/// The rate limits kept in the fleet's Redis, with `[cluster]`.
fn shared_limits(cluster: &Option<Arc<Cluster>>, config: &Config) -> Option<Arc<SharedRateLimits>> {
    cluster
        .as_ref()
        .map(|c| Arc::new(SharedRateLimits::new(c.clone(), &config.rate_limits)))
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
    keep("listen", running.listen != new.listen);
    keep("sandbox", running.sandbox != new.sandbox);
    keep("audit (file settings)", running.audit.log != new.audit.log);
    keep("idempotency", running.idempotency != new.idempotency);
    keep("cluster", running.cluster != new.cluster);
    new.cluster = running.cluster.clone();
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
    // Every run is on record, auditing off included, before anything else is written: a
    // verifier tells a crash (no stop before it) and a quiet stretch from a deleted one.
    let start = Start {
        instance: config.audit.log.instance.clone(),
        version: VERSION.to_owned(),
        config_sha256: crate::audit::record::sha256_hex(config.redacted().as_bytes()),
        auditing: config.audit.enabled,
    };
    // A log that cannot write refuses every audited call with 503 anyway; the gateway still
    // serves what is not audited.
    if let Err(e) = log.append(AuditEntry::Start(start)).await {
        tracing::error!(error = %e, file = %path.display(), "audit start record not written");
    }
    Ok((log, recovery.open_intents))
}

/// A fleet idempotency lease: renewed every third of it while its call runs, so a duplicate
/// waits at most this long past the death of the instance executing the call.
const IDEMPOTENCY_LEASE: Duration = Duration::from_secs(3);

/// How long a starting instance waits for Redis to tell it the pauses in force.
const CLUSTER_SYNC_WAIT: Duration = Duration::from_secs(1);

/// The version named in the audit log's start and stop records.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How long readiness waits for a token before calling an upstream not ready.
pub const READY_TOKEN_WAIT: Duration = Duration::from_secs(2);
