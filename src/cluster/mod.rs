//! State shared by several gateway instances through Redis (`[cluster]`): the rate-limit
//! buckets ([`gcra`]), Ratepay's 429 pauses and cache invalidations ([`events`], over pub/sub).
//!
//! Nothing secret goes to Redis: bucket keys carry caller, operation and API names, pause keys
//! the API's name, and messages an API name, a duration or a transaction id. Ratepay tokens,
//! credentials and bodies stay in process memory.
//!
//! Every call on the request path is bounded by `redis_timeout` (5 ms by default) and goes
//! through a [`breaker::Breaker`]: once a call fails, calls skip Redis for
//! `retry_after_failure` and the caller takes its fallback at once, so a slow or dead Redis
//! costs a request at most one timeout. The connection is made in the background and
//! re-made by redis-rs's connection manager; the subscription by a task of its own that
//! PINGs it every few seconds (a Redis that hangs with its connections open is noticed too),
//! resubscribes and reads the pauses in force whenever it reconnects.

pub mod breaker;
pub mod events;
pub mod gcra;
pub mod idempotency;
pub mod sealed;

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, RwLock, Weak,
    },
    time::Duration,
};

use arc_swap::ArcSwapOption;
use futures_util::StreamExt;
use redis::{aio::ConnectionManager, aio::ConnectionManagerConfig, IntoConnectionInfo, Script};
use secrecy::ExposeSecret;

use crate::{config::ClusterSettings, routes::Api};
use breaker::Breaker;
use events::{Event, EventSink};
use gcra::{Bucket, Verdict};

/// Bound of background calls (connecting, subscribing, announcing): off the request path.
const BACKGROUND_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the subscription is checked with a PING (a hung Redis is noticed within this
/// plus [`BACKGROUND_TIMEOUT`]).
const SUBSCRIPTION_PING_EVERY: Duration = Duration::from_secs(3);

/// Sets the pause key unless a longer pause is in force, and tells the other instances.
const PAUSE_LUA: &str = r#"
local left = redis.call('PTTL', KEYS[1])
if left < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return redis.call('PUBLISH', KEYS[2], ARGV[2])
"#;

/// Why Redis was not used for a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// Not connected yet, or the breaker is open after a failure.
    Down,
    /// The call failed or took longer than `redis_timeout`.
    Failed,
}

/// Counters read by the metrics.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Calls on the request path that failed or timed out.
    pub failures: AtomicU64,
    /// Rate-limit decisions taken by the fallback.
    pub rate_limit_fallbacks: AtomicU64,
    /// Keyed calls handled by the local idempotency store because Redis was unreachable.
    pub idempotency_fallbacks: AtomicU64,
    /// Completed answers that could not be stored in Redis (a later duplicate re-executes
    /// with the same upstream Idempotency-Key, which Ratepay deduplicates).
    pub answers_not_shared: AtomicU64,
    /// Messages received from the instances (this one's own included).
    pub events_received: AtomicU64,
    /// Messages that could not be sent.
    pub events_lost: AtomicU64,
}

/// One instance's link to the shared Redis.
pub struct Cluster {
    settings: ClusterSettings,
    client: redis::Client,
    conn: ArcSwapOption<ConnectionManager>,
    breaker: Breaker,
    gcra: Script,
    pause: Script,
    subscribed: AtomicBool,
    /// Scripts loaded (`SCRIPT LOAD`) when the connection is made, so that the first calls on
    /// the request path are one `EVALSHA` each, not a refused one and an `EVAL` of the source.
    preload: tokio::sync::Mutex<Vec<Script>>,
    sink: RwLock<Option<Arc<dyn EventSink>>>,
    /// Signalled once the first sink is set: the subscription starts then, so the pauses read
    /// when it starts have somewhere to go.
    sink_set: tokio::sync::Notify,
    /// Set (and signalled) once the first subscription read the pauses in force.
    synced: AtomicBool,
    /// Signalled when `synced` is set and when the request path's connection is made.
    synced_notify: tokio::sync::Notify,
    /// Counters for the metrics.
    pub stats: ClusterStats,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("instance", &self.settings.instance)
            .field("connected", &self.connected())
            .finish_non_exhaustive()
    }
}

/// What `/readyz` says about Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Connected, calls succeeding, subscribed.
    Up,
    /// Unreachable or failing: the fallbacks are in use.
    Degraded,
}

impl Cluster {
    /// Builds the client and starts connecting and subscribing in the background (a Redis
    /// that is down at start leaves the instance degraded, not failed). Needs a runtime.
    pub fn start(settings: &ClusterSettings) -> Result<Arc<Cluster>, String> {
        let client = client(settings)?;
        let cluster = Arc::new(Cluster {
            settings: settings.clone(),
            client,
            conn: ArcSwapOption::empty(),
            breaker: Breaker::new(settings.retry_after_failure),
            gcra: gcra::script(),
            pause: Script::new(PAUSE_LUA),
            subscribed: AtomicBool::new(false),
            preload: tokio::sync::Mutex::new(vec![gcra::script(), Script::new(PAUSE_LUA)]),
            sink: RwLock::new(None),
            sink_set: tokio::sync::Notify::new(),
            synced: AtomicBool::new(false),
            synced_notify: tokio::sync::Notify::new(),
            stats: ClusterStats::default(),
        });
        tokio::spawn(connect(Arc::downgrade(&cluster)));
        tokio::spawn(subscribe(Arc::downgrade(&cluster)));
        Ok(cluster)
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    /// The full name of a key or channel.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.settings.key_prefix)
    }

    fn channel(&self) -> String {
        self.key("events")
    }

    /// The key holding a pause of `api` (its expiry is the pause).
    fn pause_key(&self, api: Api) -> String {
        self.key(&format!("pause:{}", api.name()))
    }

    /// Whether the connection is up and the last call succeeded.
    pub fn connected(&self) -> bool {
        self.conn.load().is_some() && !self.breaker.is_open()
    }

    /// Redis's state for `/readyz` and the metrics.
    pub fn health(&self) -> Health {
        if self.connected() && self.subscribed.load(Ordering::Relaxed) {
            Health::Up
        } else {
            Health::Degraded
        }
    }

    /// Has `script` loaded into Redis with the connection (now, if it is already made).
    pub async fn preload(&self, script: &Script) {
        let mut scripts = self.preload.lock().await;
        scripts.push(script.clone());
        if let Some(conn) = self.conn.load_full() {
            let mut conn = (*conn).clone();
            let _ = tokio::time::timeout(BACKGROUND_TIMEOUT, script.load_async(&mut conn)).await;
        }
    }

    /// Where peers' messages go from now on (the gateway's current rate limits and cache).
    pub fn set_sink(&self, sink: Arc<dyn EventSink>) {
        *self.sink.write().unwrap_or_else(|e| e.into_inner()) = Some(sink);
        self.sink_set.notify_one();
    }

    /// Waits (at most `limit`) until the first subscription has read the pauses in force and the
    /// request path's connection is made, so that a starting instance neither calls an API the
    /// fleet holds nor answers its first keyed calls from local state alone (which would let a
    /// duplicate sent to another instance execute again). A Redis that does not answer in time
    /// leaves the instance starting degraded.
    pub async fn wait_synced(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.synced_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.synced.load(Ordering::Acquire) && self.conn.load().is_some() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    fn sink(&self) -> Option<Arc<dyn EventSink>> {
        self.sink.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Spends one request from every bucket, or from none (one round trip, bounded by
    /// `redis_timeout`).
    pub async fn spend(&self, buckets: &[Bucket]) -> Result<Verdict, Unavailable> {
        let mut invocation = self.gcra.prepare_invoke();
        for b in buckets {
            invocation.key(&b.key);
        }
        for a in gcra::args(buckets) {
            invocation.arg(a);
        }
        let reply: Vec<i64> = self
            .guarded(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await?;
        match gcra::verdict(&reply, buckets.len()) {
            Some(v) => Ok(v),
            None => {
                self.failed("an unexpected reply");
                Err(Unavailable::Failed)
            }
        }
    }

    /// One call on the request path: skipped while the breaker is open, bounded by
    /// `redis_timeout`; a failure opens the breaker (logged once per outage).
    pub(crate) async fn guarded<T, F, Fut>(&self, call: F) -> Result<T, Unavailable>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if !self.breaker.allows() {
            return Err(Unavailable::Down);
        }
        let Some(conn) = self.conn.load_full() else {
            return Err(Unavailable::Down);
        };
        match tokio::time::timeout(self.settings.redis_timeout, call((*conn).clone())).await {
            Ok(Ok(v)) => {
                if self.breaker.is_open() {
                    tracing::info!(
                        instance = %self.settings.instance,
                        "redis answers again; shared limits and idempotency are back"
                    );
                }
                self.breaker.succeeded();
                Ok(v)
            }
            Ok(Err(_)) => {
                self.failed("an error");
                Err(Unavailable::Failed)
            }
            Err(_) => {
                self.failed("no answer within redis_timeout_ms");
                Err(Unavailable::Failed)
            }
        }
    }

    /// One call off the request path (completing or renewing a lease): bounded by a second,
    /// not by `redis_timeout`, and not subject to the breaker, whose state it leaves alone.
    pub(crate) async fn background<T, F, Fut>(&self, call: F) -> Result<T, Unavailable>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let Some(conn) = self.conn.load_full() else {
            return Err(Unavailable::Down);
        };
        match tokio::time::timeout(BACKGROUND_TIMEOUT, call((*conn).clone())).await {
            Ok(Ok(v)) => Ok(v),
            _ => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                Err(Unavailable::Failed)
            }
        }
    }

    fn failed(&self, why: &'static str) {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        if !self.breaker.is_open() {
            tracing::warn!(
                instance = %self.settings.instance,
                problem = why,
                retry_ms = self.settings.retry_after_failure.as_millis() as u64,
                "redis call failed; rate limits and idempotency use their fallbacks until redis answers"
            );
        }
        self.breaker.failed();
    }

    /// Tells every instance (this one included) about `event`, in the background; a pause is
    /// also kept in a key with its expiry, so an instance that reconnects later learns it.
    pub fn announce(self: &Arc<Self>, event: Event) {
        let this = self.clone();
        tokio::spawn(async move {
            let Some(conn) = this.conn.load_full() else {
                this.stats.events_lost.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let mut conn = (*conn).clone();
            let text = event.encode();
            let sent = match &event {
                Event::Pause(api, pause) => {
                    let mut inv = this.pause.prepare_invoke();
                    inv.key(this.pause_key(*api))
                        .key(this.channel())
                        .arg(pause.as_millis().max(1) as u64)
                        .arg(&text);
                    tokio::time::timeout(BACKGROUND_TIMEOUT, inv.invoke_async::<i64>(&mut conn))
                        .await
                }
                Event::Invalidate(_) => {
                    tokio::time::timeout(
                        BACKGROUND_TIMEOUT,
                        redis::cmd("PUBLISH")
                            .arg(this.channel())
                            .arg(&text)
                            .query_async::<i64>(&mut conn),
                    )
                    .await
                }
            };
            if !matches!(sent, Ok(Ok(_))) {
                this.stats.events_lost.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    instance = %this.settings.instance,
                    event = %text,
                    "could not tell the other instances through redis"
                );
            }
        });
    }

    fn receive(&self, text: &str) {
        self.stats.events_received.fetch_add(1, Ordering::Relaxed);
        let Some(event) = Event::parse(text) else {
            tracing::warn!(
                instance = %self.settings.instance,
                len = text.len(),
                "ignored a malformed message on the cluster channel"
            );
            return;
        };
        let Some(sink) = self.sink() else { return };
        match event {
            Event::Pause(api, d) => sink.pause(api, d),
            Event::Invalidate(tx) => sink.invalidate(&tx),
        }
    }

    /// After (re)subscribing: the pauses set while this instance was not listening.
    async fn read_pauses(&self, conn: &mut impl redis::aio::ConnectionLike) {
        for api in Api::ALL {
            let key = self.pause_key(api);
            let left = tokio::time::timeout(
                BACKGROUND_TIMEOUT,
                redis::cmd("PTTL").arg(&key).query_async::<i64>(conn),
            )
            .await;
            if let (Ok(Ok(ms)), Some(sink)) = (left, self.sink()) {
                if ms > 0 {
                    sink.pause(api, Duration::from_millis(ms.unsigned_abs()));
                }
            }
        }
    }
}

/// The client for `settings`: URL, ACL user and password, and for `rediss://` the extra CA.
fn client(settings: &ClusterSettings) -> Result<redis::Client, String> {
    let url = settings.redis_url.expose_secret();
    let mut info = url
        .into_connection_info()
        .map_err(|_| "cluster.redis_url: not a usable redis:// or rediss:// URL".to_owned())?;
    let mut redis = info.redis_settings().clone();
    if let Some(user) = &settings.redis_username {
        redis = redis.set_username(user);
    }
    if let Some(pw) = &settings.redis_password {
        redis = redis.set_password(pw.expose_secret());
    }
    info = info.set_redis_settings(redis);
    match &settings.redis_ca_file {
        Some(ca) => {
            let pem = std::fs::read(ca)
                .map_err(|e| format!("cluster.redis_ca_file {}: {e}", ca.display()))?;
            redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
            .map_err(|_| "cluster.redis_ca_file: cannot build a TLS client with it".to_owned())
        }
        None => redis::Client::open(info)
            .map_err(|_| "cluster.redis_url: cannot build a client for it".to_owned()),
    }
}

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(BACKGROUND_TIMEOUT))
        .set_response_timeout(Some(BACKGROUND_TIMEOUT))
        .set_max_delay(MAX_BACKOFF)
}

/// Connects until it succeeds; redis-rs's manager reconnects by itself from then on.
async fn connect(cluster: Weak<Cluster>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(c) = cluster.upgrade() else { return };
        let client = c.client.clone();
        drop(c);
        let made = tokio::time::timeout(
            BACKGROUND_TIMEOUT,
            ConnectionManager::new_with_config(client, manager_config()),
        )
        .await;
        if let (Ok(Ok(mut m)), Some(c)) = (made, cluster.upgrade()) {
            let scripts = c.preload.lock().await;
            for script in scripts.iter() {
                let _ = tokio::time::timeout(BACKGROUND_TIMEOUT, script.load_async(&mut m)).await;
            }
            c.conn.store(Some(Arc::new(m)));
            drop(scripts);
            c.synced_notify.notify_waiters();
            tracing::info!(instance = %c.settings.instance, "connected to redis");
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Keeps a subscription to the events channel, resubscribing after every loss.
async fn subscribe(cluster: Weak<Cluster>) {
    let Some(c) = cluster.upgrade() else { return };
    if c.sink().is_none() {
        c.sink_set.notified().await;
    }
    drop(c);
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(c) = cluster.upgrade() else { return };
        let (client, channel) = (c.client.clone(), c.channel());
        drop(c);
        let subscribed = tokio::time::timeout(BACKGROUND_TIMEOUT, async {
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(ps)
        })
        .await;
        if let Ok(Ok(ps)) = subscribed {
            backoff = Duration::from_millis(50);
            if let Some(c) = cluster.upgrade() {
                c.subscribed.store(true, Ordering::Relaxed);
                if let Some(conn) = c.conn.load_full() {
                    c.read_pauses(&mut (*conn).clone()).await;
                } else if let Ok(Ok(mut conn)) = tokio::time::timeout(
                    BACKGROUND_TIMEOUT,
                    c.client.get_multiplexed_async_connection(),
                )
                .await
                {
                    c.read_pauses(&mut conn).await;
                }
                c.synced.store(true, Ordering::Release);
                c.synced_notify.notify_waiters();
            }
            let (mut sink, mut messages) = ps.split();
            // A Redis that hangs without closing the connection sends no message and no
            // error: a PING on the subscription every few seconds notices it.
            let mut health = tokio::time::interval(SUBSCRIPTION_PING_EVERY);
            health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            health.tick().await;
            loop {
                tokio::select! {
                    msg = messages.next() => {
                        let Some(msg) = msg else { break };
                        let Some(c) = cluster.upgrade() else { return };
                        match msg.get_payload::<String>() {
                            Ok(text) => c.receive(&text),
                            Err(_) => c.receive(""),
                        }
                    }
                    _ = health.tick() => {
                        let pong = tokio::time::timeout(
                            BACKGROUND_TIMEOUT,
                            sink.ping::<redis::Value>(),
                        )
                        .await;
                        if !matches!(pong, Ok(Ok(_))) {
                            break;
                        }
                    }
                }
            }
            if let Some(c) = cluster.upgrade() {
                c.subscribed.store(false, Ordering::Relaxed);
                tracing::warn!(
                    instance = %c.settings.instance,
                    "lost the redis subscription; pauses and invalidations from other instances \
                     resume when it is back"
                );
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
