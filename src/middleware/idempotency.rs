//! Idempotency keys on Ratepay's creating POSTs: validate or generate, scope per caller,
//! coalesce duplicates, replay completed answers, refuse mismatches.
//!
//! Sits after the caller layer (the key's scope is the caller) and before the audit layer (a
//! replay or a 409 moves no money and is not audited again). The caller's key (1 to 64 visible
//! ASCII characters, or a generated UUID v4) is echoed in the response's `Idempotency-Key`.
//! Ratepay receives `hex(SHA-256("<caller>:<key>"))` (64 characters, within Ratepay's limit),
//! so two callers using the same key never collide upstream.
//!
//! In the gateway, per (caller, key), for `ttl` (24 h) within `max_bytes`: the first request
//! executes, a duplicate arriving meanwhile waits for it and gets the same answer, a completed
//! 2xx/4xx is replayed without an upstream call (`Idempotent-Replayed: true`), a 5xx or a
//! transport error is not stored (the next attempt executes again, as at Ratepay), and the same
//! key with another method, path, partner or body is 409 without reaching Ratepay. The upstream
//! call runs on its own task so a caller hanging up cannot cut a money call off halfway.

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use http::{HeaderName, HeaderValue, StatusCode};
use sha2::{Digest, Sha256};

use super::{GwRequest, GwResponse, Handler};
pub use crate::routes::IDEMPOTENCY_KEY;
use crate::{
    body,
    cluster::{
        gcra::Bucket,
        idempotency::{Began, Begin, SharedAnswers},
    },
    config::IdempotencySettings,
    context::Call,
    error::GatewayError,
    limits::Headroom,
    metrics::Metrics,
    middleware::rate_limit::{admit, Decision, SharedRateLimits},
};
/// Marks an answer replayed from the gateway's store.
pub static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Ratepay's answers to creating POSTs are small JSON; a larger one is answered 502, unstored.
const MAX_STORED_BODY: usize = 256 * 1024;

/// Why a caller's key was refused.
pub fn validate_key(key: &[u8]) -> Result<&str, GatewayError> {
    if key.is_empty() || key.len() > 64 || !key.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(GatewayError::BadRequest(
            "Idempotency-Key must be 1 to 64 visible ASCII characters (a UUID v4 is recommended); omit it to let the gateway generate one".into(),
        ));
    }
    std::str::from_utf8(key)
        .map_err(|_| GatewayError::BadRequest("Idempotency-Key is not ASCII".into()))
}

/// The key sent to Ratepay for `caller`'s `key`: lowercase hex SHA-256 of `caller:key`
/// (unambiguous: caller names are `[A-Za-z0-9_-]`).
pub fn upstream_key(caller: &str, key: &str) -> String {
    let mut h = Sha256::new();
    h.update(caller.as_bytes());
    h.update(b":");
    h.update(key.as_bytes());
    crate::audit::record::digest_hex(&h.finalize().into())
}

/// What identifies "the same call": method, path and query, partner and body.
fn fingerprint(req: &GwRequest, partner: Option<&str>) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [
        req.method().as_str().as_bytes(),
        req.uri()
            .path_and_query()
            .map_or(b"" as &[u8], |p| p.as_str().as_bytes()),
        partner.unwrap_or("").as_bytes(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.update(req.body());
    h.finalize().into()
}

/// A completed answer kept for replays.
type Stored = body::StoredAnswer;

/// One (caller, key): its fingerprint and, once completed with a final answer, that answer.
struct Slot {
    fingerprint: [u8; 32],
    /// Held by the executing request; duplicates queue on it.
    done: Arc<tokio::sync::Mutex<Option<Stored>>>,
}

/// The store, shared by every clone of the layer.
#[derive(Clone)]
pub struct IdempotencyStore {
    // Behind one Arc: the layer is cloned per request.
    slots: Arc<Slots>,
    /// The fleet's records in Redis, with `[cluster]`; the local slots still coalesce this
    /// instance's own duplicates and hold its replays.
    shared: Option<Arc<SharedAnswers>>,
}

/// Bytes of stored answer every slot is weighed with from its creation. A completed slot whose
/// answer is larger is weighed again; one whose answer fits (a cancellation's 201, about 200
/// bytes of JSON and a few headers, and the gateway's own problems do) is not, which saved a
/// keyed POST a second insertion when the store was a moka cache (session 13). A small answer
/// is counted as this many bytes against `max_bytes`.
const ANSWER_ALLOWANCE: usize = 512;

/// What a slot and its bookkeeping take besides its key and answer: about 1 KiB per key as
/// measured by the load benchmark (94k stored answers took 122 MiB).
const SLOT_OVERHEAD: usize = 1024;

/// Slots by (caller, key); see `idempotency_slots` for why the store is written by hand.
type Slots = super::idempotency_slots::Slots<(Arc<str>, Arc<str>), Slot>;

/// What a slot of `key` weighs with an answer of `answer` bytes.
fn weight(key: &(Arc<str>, Arc<str>), answer: usize) -> u64 {
    (key.0.len() + key.1.len() + SLOT_OVERHEAD + answer.max(ANSWER_ALLOWANCE)) as u64
}

impl std::fmt::Debug for IdempotencyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyStore")
            .field("entries", &self.slots.len())
            .finish()
    }
}

impl IdempotencyStore {
    /// An empty store: each (caller, key) kept for `ttl`, the oldest dropped first when the
    /// slots and their stored answers weigh more than `max_bytes`.
    pub fn new(settings: &IdempotencySettings) -> Self {
        IdempotencyStore {
            slots: Arc::new(Slots::new(settings.ttl, settings.max_bytes)),
            shared: None,
        }
    }

    /// Keeps the records in the fleet's Redis too (`None`: this instance only).
    pub fn shared(mut self, shared: Option<Arc<SharedAnswers>>) -> Self {
        self.shared = shared;
        self
    }

    /// Number of keys held (expired ones until the next new key drops them; for metrics and
    /// tests).
    pub fn len(&self) -> u64 {
        self.slots.len()
    }

    /// Whether the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Layer for [`Idempotency`].
#[derive(Clone, Debug)]
pub struct IdempotencyLayer {
    store: IdempotencyStore,
    metrics: Arc<Metrics>,
    limits: Option<Arc<SharedRateLimits>>,
}
impl IdempotencyLayer {
    /// A layer over `store`.
    pub fn new(store: IdempotencyStore, metrics: Arc<Metrics>) -> Self {
        IdempotencyLayer {
            store,
            metrics,
            limits: None,
        }
    }

    /// With the fleet's rate limits: a call that takes its lease in Redis spends its budgets
    /// toward Ratepay in the same round trip (the upstream layer then does not spend them).
    pub fn spending_upstream(mut self, limits: Option<Arc<SharedRateLimits>>) -> Self {
        self.limits = limits;
        self
    }
}

impl<S> tower::Layer<S> for IdempotencyLayer {
    type Service = Idempotency<S>;
    fn layer(&self, inner: S) -> Idempotency<S> {
        Idempotency {
            inner: Arc::new(inner),
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            limits: self.limits.clone(),
        }
    }
}

/// See the module docs.
#[derive(Clone, Debug)]
pub struct Idempotency<S> {
    /// Shared with the task that completes a call after its caller hung up.
    inner: Arc<S>,
    store: IdempotencyStore,
    metrics: Arc<Metrics>,
    limits: Option<Arc<SharedRateLimits>>,
}
fn echo_key(resp: &mut GwResponse, key: &str) {
    if let Ok(v) = HeaderValue::from_str(key) {
        resp.headers_mut().insert(IDEMPOTENCY_KEY.clone(), v);
    }
}

fn replay(stored: &Stored, key: &str) -> GwResponse {
    let mut resp = stored.response();
    resp.headers_mut().insert(
        IDEMPOTENT_REPLAYED.clone(),
        HeaderValue::from_static("true"),
    );
    echo_key(&mut resp, key);
    resp
}

impl<S: Handler> Handler for Idempotency<S> {
    async fn handle(&self, call: &Call, mut req: GwRequest) -> Result<GwResponse, GatewayError> {
        // The edge removed any caller key from `Keys::None`; nothing to scope or store.
        if !call.ctx.route.operation.keys.keyed(req.headers()) {
            return self.inner.handle(call, req).await;
        }
        let metrics = &self.metrics;
        let auth = &call.auth;
        let key: Arc<str> = match req.headers().get(&IDEMPOTENCY_KEY) {
            Some(v) => Arc::from(validate_key(v.as_bytes())?),
            None => Arc::from(uuid::Uuid::new_v4().to_string()),
        };
        // From here every answer (a gateway problem included) names the key.
        let _ = call.ctx.stats.idempotency_key.set(key.clone());
        let up_hex = upstream_key(&auth.caller.name, &key);
        let up = HeaderValue::from_str(&up_hex)
            .map_err(|_| GatewayError::Internal("upstream key".into()))?;
        req.headers_mut().insert(IDEMPOTENCY_KEY.clone(), up);
        let fp = fingerprint(&req, auth.partner.as_deref());

        let slot_key = (auth.caller.name.clone(), key.clone());
        let slot = self
            .store
            .slots
            .claim(&slot_key, weight(&slot_key, 0), || Slot {
                fingerprint: fp,
                done: Arc::new(tokio::sync::Mutex::new(None)),
            });
        if slot.fingerprint != fp {
            metrics.idempotency_conflicts.inc();
            return Err(GatewayError::IdempotencyConflict);
        }
        // Duplicates in flight queue here until the first completes.
        let mut guard = slot.done.clone().lock_owned().await;
        if let Some(stored) = guard.as_ref() {
            tracing::debug!(caller = %auth.caller.name, "idempotent replay");
            metrics.idempotency_replays.inc();
            return Ok(replay(stored, &key));
        }
        // The fleet's record: a duplicate executing on another instance, a completed answer
        // or a mismatch there answer here too.
        let lease = match &self.store.shared {
            Some(shared) => {
                // The caller's budget, when the caller layer left it to this round trip.
                let deferred = match &self.limits {
                    Some(l)
                        if call
                            .ctx
                            .stats
                            .caller_deferred
                            .swap(false, Ordering::Relaxed) =>
                    {
                        l.caller_bucket(&auth.caller.name)
                            .map(|b| (&**l, &*auth.caller.name, b))
                    }
                    _ => None,
                };
                let deferred = deferred.as_ref().map(|(l, c, b)| (*l, *c, b));
                let upstream = self.upstream(call);
                let (fleet, headroom) = admit(&call.ctx, |waited| {
                    fleet_record(shared, &up_hex, &fp, &upstream, deferred, waited)
                })
                .await?;
                if let Some(h) = headroom {
                    let _ = call.ctx.stats.caller_headroom.set(h);
                }
                match fleet {
                    Fleet::Conflict => {
                        // The fleet saw this key with another request: so must this instance.
                        metrics.idempotency_conflicts.inc();
                        drop(guard);
                        self.store.slots.remove(&slot_key, &slot);
                        return Err(GatewayError::IdempotencyConflict);
                    }
                    Fleet::Execute {
                        lease,
                        upstream_spent,
                    } => {
                        if upstream_spent {
                            call.ctx
                                .stats
                                .upstream_admitted
                                .store(true, Ordering::Relaxed);
                        }
                        Some(lease)
                    }
                    Fleet::Replay(stored) => {
                        metrics.idempotency_replays.inc();
                        let resp = replay(&stored, &key);
                        let answer = stored.bytes();
                        *guard = Some(stored);
                        drop(guard);
                        if answer > ANSWER_ALLOWANCE {
                            let weight = weight(&slot_key, answer);
                            self.store.slots.reweigh(&slot_key, &slot, weight);
                        }
                        return Ok(resp);
                    }
                    Fleet::Local => None,
                }
            }
            None => None,
        };
        let (inner, store, call) = (self.inner.clone(), self.store.clone(), call.clone());
        // The upstream call and the storing run on their own task: if this caller hangs up,
        // the call still completes and its answer is stored for the retry. A lease that is not
        // completed with a final answer (an error, a 5xx, a 429, a panic) is given up when it
        // is dropped.
        //
        // The task's future holds the whole inner stack's (several KB). It is built in its box
        // (`in_place`), so neither the box nor tokio's spawn path copies it by value; callgrind
        // counted those copies at over 130k instructions per keyed POST, nearly all `rep movsb`
        // counted per byte, so the saving in time is far smaller (benches/instructions.sh).
        let task = tokio::spawn(super::in_place(move || async move {
            let resp = match &lease {
                Some(l) => l.while_renewing(inner.handle(&call, req)).await,
                None => inner.handle(&call, req).await,
            }?;
            // A 5xx is re-executed by Ratepay on retry; a 429 only asked to slow down. Neither
            // is a final answer to store.
            if resp.status().is_server_error() || resp.status() == StatusCode::TOO_MANY_REQUESTS {
                drop(guard);
                return Ok(resp);
            }
            let (parts, body) = resp.into_parts();
            let (clock, deadline) = (call.ctx.peer.clock.as_deref(), call.ctx.deadline);
            let bytes = match body::read_limited_by(clock, deadline, body, MAX_STORED_BODY).await {
                Ok(b) => b,
                Err(e) => {
                    return Err(GatewayError::UpstreamUnreachable {
                        upstream: "payment",
                        reason: format!("reading the answer failed: {e}"),
                    })
                }
            };
            // Per-request headers are not part of the stored answer.
            let mut headers = parts.headers.clone();
            headers.remove(crate::request_id::X_REQUEST_ID.clone());
            // Stored for a day, in its own compact copy.
            let stored = Stored::new(parts.status, &headers, &bytes);
            if let Some(l) = lease {
                l.complete(stored.clone());
            }
            let answer = stored.bytes();
            *guard = Some(stored);
            drop(guard);
            if answer > ANSWER_ALLOWANCE {
                // The stored answer counts against max_bytes.
                store
                    .slots
                    .reweigh(&slot_key, &slot, weight(&slot_key, answer));
            }
            Ok(GwResponse::from_parts(parts, body::full(bytes)))
        }));
        let mut resp = match task.await {
            Ok(r) => r?,
            // A panic in the call goes on to the edge, which answers 500 and counts it.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => return Err(GatewayError::Internal(format!("idempotent call task: {e}"))),
        };
        echo_key(&mut resp, &key);
        Ok(resp)
    }
}

/// What the fleet's record decided for a request this instance has not answered before.
enum Fleet {
    /// This request holds the fleet's lease: execute, then complete it (or drop it to give it
    /// up). `upstream_spent`: the lease spent the call's budgets toward Ratepay.
    Execute {
        /// The lease.
        lease: Lease,
        /// Whether the budgets toward Ratepay were spent with it.
        upstream_spent: bool,
    },
    /// Completed elsewhere: replay.
    Replay(Stored),
    /// The fleet saw this key with another request.
    Conflict,
    /// Redis is unreachable: this instance's store alone decides (Ratepay still deduplicates
    /// the upstream key).
    Local,
}

/// The fleet's lease on one record. Dropped without [`Lease::complete`], it is given up in the
/// background (with Redis unreachable it expires by itself), so the next attempt on any
/// instance executes again.
struct Lease {
    shared: Arc<SharedAnswers>,
    record: String,
    fingerprint: [u8; 32],
    owner: String,
    completed: bool,
}

/// Aborts its task when dropped (a panicking call must not leave its lease renewed forever).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Lease {
    /// Stores the final answer for the fleet, off the answer's path: a duplicate elsewhere
    /// meanwhile waits on the lease.
    fn complete(mut self, stored: Stored) {
        self.completed = true;
        let (shared, record, fingerprint, owner) = (
            self.shared.clone(),
            std::mem::take(&mut self.record),
            self.fingerprint,
            std::mem::take(&mut self.owner),
        );
        tokio::spawn(async move {
            match shared.finish(&record, &fingerprint, &owner, &stored).await {
                Ok(true) => {}
                Ok(false) => tracing::warn!(
                    "the idempotency lease expired before the call completed; another \
                     execution's answer stands in redis"
                ),
                Err(_) => {
                    shared
                        .cluster()
                        .stats
                        .answers_not_shared
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(
                        "could not store the answer in redis; a duplicate on another instance \
                         executes again once the lease expires (Ratepay deduplicates it)"
                    );
                }
            }
        });
    }

    /// Runs `call`, renewing the lease beside it until it is done (or dropped, or panics).
    async fn while_renewing<F: std::future::Future>(&self, call: F) -> F::Output {
        let (s, record, owner) = (self.shared.clone(), self.record.clone(), self.owner.clone());
        let _renewer = AbortOnDrop(tokio::spawn(async move {
            let mut tick = tokio::time::interval(s.renew_every());
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Ok(false) = s.renew(&record, &owner).await {
                    return;
                }
            }
        }));
        call.await
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.completed {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (shared, record, owner) = (
            self.shared.clone(),
            std::mem::take(&mut self.record),
            std::mem::take(&mut self.owner),
        );
        rt.spawn(async move {
            let _ = shared.abandon(&record, &owner).await;
        });
    }
}

impl<S> Idempotency<S> {
    /// The call's budgets toward Ratepay, for the lease to spend (with shared limits).
    fn upstream(&self, call: &Call) -> Vec<Bucket> {
        let op = call.ctx.route.operation;
        self.limits
            .as_ref()
            .map(|l| l.upstream_buckets(op.api, op.name))
            .unwrap_or_default()
    }
}

/// The caller's budget left to the lease by the caller layer: its limits, name and bucket.
type DeferredCaller<'a> = Option<(&'a SharedRateLimits, &'a str, &'a Bucket)>;

/// The fleet's record for a request this instance has not answered before, with the caller's
/// spend when it was deferred to this round trip (refused: 429, or a wait in queue mode), and
/// that spend's headroom. `waited`: time already queued.
async fn fleet_record(
    shared: &Arc<SharedAnswers>,
    upstream_key: &str,
    fingerprint: &[u8; 32],
    upstream: &[Bucket],
    caller: DeferredCaller<'_>,
    waited: Duration,
) -> Decision<(Fleet, Option<Headroom>)> {
    let record = shared.record(upstream_key);
    let owner = format!(
        "{}:{}",
        shared.cluster().settings().instance,
        uuid::Uuid::new_v4()
    );
    let bucket = caller.map(|(_, _, b)| b);
    let began = shared
        .acquire(&record, fingerprint, &owner, bucket, upstream)
        .await;
    let room = |r: Option<u32>| {
        caller
            .zip(r)
            .map(|((limits, _, bucket), room)| limits.caller_admitted(bucket, room))
    };
    let (fleet, caller_room) = match began {
        Ok(Began {
            record: Begin::CallerRefused(wait),
            ..
        }) => match caller {
            Some((limits, name, bucket)) => {
                return limits.caller_refused(name, bucket, wait, waited)
            }
            // Only a caller's bucket refuses here; without one this is not Redis's answer.
            None => (None, None),
        },
        Ok(Began {
            record: Begin::Run { upstream_spent },
            caller_room,
        }) => (
            Some(Fleet::Execute {
                lease: Lease {
                    shared: shared.clone(),
                    record,
                    fingerprint: *fingerprint,
                    owner,
                    completed: false,
                },
                upstream_spent,
            }),
            caller_room,
        ),
        Ok(Began {
            record: Begin::Conflict,
            caller_room,
        }) => (Some(Fleet::Conflict), caller_room),
        Ok(Began {
            record: Begin::Done(stored),
            caller_room,
        }) => (Some(Fleet::Replay(stored)), caller_room),
        // Twice an answer that cannot be opened (the caller's budget was spent in Redis).
        Ok(Began {
            record: Begin::Pending | Begin::Unreadable,
            caller_room,
        }) => (None, caller_room),
        // Redis unreachable: the caller's budget too falls back.
        Err(_) => (None, None),
    };
    if let Some(fleet) = fleet {
        return Decision::Allow((fleet, room(caller_room)));
    }
    shared
        .cluster()
        .stats
        .idempotency_fallbacks
        .fetch_add(1, Ordering::Relaxed);
    tracing::warn!(
        "the fleet's idempotency record is unavailable (redis unreachable, or its answer \
         unreadable); this instance's store decides (Ratepay still deduplicates by the \
         upstream Idempotency-Key)"
    );
    match (caller, caller_room) {
        (Some((limits, name, _)), None) => limits
            .caller_fallback(name, waited)
            .map(|h| (Fleet::Local, h)),
        (_, room_left) => Decision::Allow((Fleet::Local, room(room_left))),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::middleware::testing;

    /// A Ratepay that answers every call 201 with `body_len` bytes and remembers each call's
    /// `Idempotency-Key`.
    #[derive(Default)]
    struct Created {
        body_len: usize,
        keys: std::sync::Mutex<Vec<String>>,
    }

    impl Handler for Created {
        async fn handle(&self, _: &Call, req: GwRequest) -> Result<GwResponse, GatewayError> {
            let key = req
                .headers()
                .get(&IDEMPOTENCY_KEY)
                .map(|v| v.to_str().unwrap().to_owned());
            self.keys.lock().unwrap().extend(key);
            let mut resp = GwResponse::new(body::full(vec![b'x'; self.body_len]));
            *resp.status_mut() = StatusCode::CREATED;
            Ok(resp)
        }
    }

    /// The layer over `inner` with a store of `max_bytes`; the tempdir holds the audit log
    /// the metrics registry reads.
    async fn layer(
        max_bytes: u64,
        inner: Created,
    ) -> (Idempotency<Created>, IdempotencyStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::audit::AuditConfig::new(dir.path().join("audit.jsonl"));
        let (audit, _) = crate::audit::AuditLog::open(config).await.unwrap();
        let store = IdempotencyStore::new(&IdempotencySettings {
            ttl: Duration::from_secs(60),
            max_bytes,
        });
        let layer = IdempotencyLayer::new(store.clone(), Metrics::new(Arc::default(), audit, None));
        (tower::Layer::layer(&layer, inner), store, dir)
    }

    /// A cancellation through the layer with the caller's `key`.
    fn cancellation(key: &str) -> (Call, GwRequest) {
        let (call, mut req) = testing::request(
            http::Method::POST,
            "/transaction/management/v2/transactions/tx0123456789/cancellations",
            None,
            &[],
        );
        *req.body_mut() = bytes::Bytes::from_static(br#"{"gross_amount": 1}"#);
        req.headers_mut()
            .insert(IDEMPOTENCY_KEY.clone(), HeaderValue::from_str(key).unwrap());
        (call, req)
    }

    /// The layer over 10 KB answers with a 100 KB store: room for about eight of them.
    async fn ten_kb_answers_under_100_kb(
    ) -> (Idempotency<Created>, IdempotencyStore, tempfile::TempDir) {
        layer(
            100_000,
            Created {
                body_len: 10_000,
                ..Created::default()
            },
        )
        .await
    }

    /// `svc` answering the cancellation with `key`.
    async fn cancel(svc: &Idempotency<Created>, key: &str) -> GwResponse {
        let (call, req) = cancellation(key);
        svc.handle(&call, req).await.unwrap()
    }

    #[tokio::test]
    async fn stored_answers_count_against_max_bytes() {
        // 10 KB answers under a 100 KB bound, stored the way the layer stores them: executed,
        // answered, then kept for replay. A slot weighs only its key (~1 KiB) when created, so
        // the bound holds only if the stored answer is weighed after the call.
        let (svc, store, _dir) = ten_kb_answers_under_100_kb().await;
        for i in 0..50 {
            let resp = cancel(&svc, &format!("key-{i}")).await;
            assert_eq!(resp.status(), StatusCode::CREATED);
        }
        assert_eq!(
            svc.inner.keys.lock().unwrap().len(),
            50,
            "each key executed once"
        );
        let (weight, held) = (store.slots.weighted_size(), store.len());
        assert!(weight <= 100_000, "{weight} bytes held");
        assert!(
            (1..=10).contains(&held),
            "10 KB answers under a 100 KB bound: {held} held"
        );
        assert!(
            weight >= held * 10_000,
            "each held key weighs its stored answer: {weight} bytes for {held}"
        );
        // What is held is replayed, not executed again: the stored answers are real.
        let kept = (0..50)
            .map(|i| format!("key-{i}"))
            .find(|k| {
                store
                    .slots
                    .contains_key(&(Arc::from(testing::CALLER), Arc::from(k.as_str())))
            })
            .expect("some key is held");
        let resp = cancel(&svc, &kept).await;
        assert_eq!(resp.headers()[&IDEMPOTENT_REPLAYED], "true");
        assert_eq!(
            body::read_limited(resp.into_body(), 1 << 20)
                .await
                .unwrap()
                .len(),
            10_000
        );
        assert_eq!(svc.inner.keys.lock().unwrap().len(), 50);
    }

    #[tokio::test]
    async fn a_full_store_keeps_the_newest_keys() {
        // Room for about eight 10 KB answers: fifty calls, one key each.
        let (svc, store, _dir) = ten_kb_answers_under_100_kb().await;
        for i in 0..50 {
            cancel(&svc, &format!("key-{i}")).await;
        }
        let held: Vec<usize> = (0..50)
            .filter(|i| {
                let key = format!("key-{i}");
                store
                    .slots
                    .contains_key(&(Arc::from(testing::CALLER), Arc::from(key.as_str())))
            })
            .collect();
        assert!(held.len() >= 5, "{held:?}");
        assert_eq!(
            held,
            ((50 - held.len())..50).collect::<Vec<_>>(),
            "the newest keys are held, the oldest evicted"
        );
        // The last call is replayed, not executed again.
        let resp = cancel(&svc, "key-49").await;
        assert_eq!(resp.headers()[&IDEMPOTENT_REPLAYED], "true");
        assert_eq!(svc.inner.keys.lock().unwrap().len(), 50);
    }

    #[tokio::test]
    async fn a_small_answer_is_weighed_with_the_allowance_from_the_slots_creation() {
        // A 10-byte answer fits `ANSWER_ALLOWANCE`: each slot weighs its key, the slot's
        // overhead and the allowance, without being inserted again when it completes.
        let (svc, store, _dir) = layer(
            1 << 20,
            Created {
                body_len: 10,
                ..Created::default()
            },
        )
        .await;
        for i in 0..5 {
            let resp = cancel(&svc, &format!("key-{i}")).await;
            assert_eq!(resp.status(), StatusCode::CREATED);
        }
        let each = testing::CALLER.len() + "key-0".len() + 1024 + ANSWER_ALLOWANCE;
        assert_eq!(
            (store.len(), store.slots.weighted_size()),
            (5, 5 * each as u64)
        );
        // Stored all the same: the key is replayed, not executed again.
        let resp = cancel(&svc, "key-3").await;
        assert_eq!(resp.headers()[&IDEMPOTENT_REPLAYED], "true");
        assert_eq!(svc.inner.keys.lock().unwrap().len(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_ttl_the_same_key_executes_again() {
        // The store's TTL (60 s here) runs on tokio's clock, paused in this test.
        let (svc, store, _dir) = layer(1 << 20, Created::default()).await;
        let executed = || svc.inner.keys.lock().unwrap().len();
        assert_eq!(cancel(&svc, "k-ttl").await.status(), StatusCode::CREATED);
        tokio::time::advance(Duration::from_secs(59)).await;
        let resp = cancel(&svc, "k-ttl").await;
        assert_eq!(
            resp.headers()[&IDEMPOTENT_REPLAYED],
            "true",
            "within the TTL"
        );
        assert_eq!(executed(), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        let resp = cancel(&svc, "k-ttl").await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert!(
            !resp.headers().contains_key(&IDEMPOTENT_REPLAYED),
            "the store forgot the key"
        );
        assert_eq!(executed(), 2, "executed again");
        // Still the same upstream key: Ratepay, which keeps keys 24 h, deduplicates it.
        let keys = svc.inner.keys.lock().unwrap().clone();
        assert_eq!(keys[0], keys[1]);
        assert_eq!(
            store.len(),
            1,
            "the expired slot was replaced, not kept beside"
        );
    }

    #[tokio::test]
    async fn ratepay_receives_sha256_of_caller_colon_key() {
        let (svc, _store, _dir) = layer(1 << 20, Created::default()).await;
        cancel(&svc, "order-4711").await;
        // `printf 'svc:order-4711' | sha256sum`: the README's formula, computed outside.
        assert_eq!(
            *svc.inner.keys.lock().unwrap(),
            ["87160fe4e4624d4b06c2534e372cac50e14c7089291f9c9eec8964722cbfd4d1"]
        );
    }

    #[test]
    fn keys_are_validated() {
        assert!(validate_key(b"3f1c2e1a-7a6b-4c1d-9e0f-0123456789ab").is_ok());
        assert!(validate_key(&[b'a'; 64]).is_ok());
        assert!(validate_key(&[b'a'; 65]).is_err());
        assert!(validate_key(b"").is_err());
        assert!(validate_key(b"has space").is_err());
        assert!(validate_key("é".as_bytes()).is_err());
    }

    #[test]
    fn upstream_keys_are_scoped_per_caller_and_fit_ratepays_limit() {
        let a = upstream_key("orders", "k1");
        // `printf 'orders:k1' | sha256sum`
        assert_eq!(
            a,
            "0e2fb3f03e7d4b4bbd39af050fba8042be601633b8e2db6397b2e0a93a81fe3c"
        );
        assert_ne!(a, upstream_key("refunds", "k1"));
        assert_eq!(a, upstream_key("orders", "k1"));
        // Caller names cannot contain ':' (config validation), so `caller:key` is unambiguous.
        assert!(crate::config::valid_caller_name("orders-2_b"));
        assert!(!crate::config::valid_caller_name("a:b"));
    }
}
