//! Idempotency records shared by the fleet: one Redis hash per (caller, key), so a duplicate
//! on any instance waits for the executing one, a completed answer is replayed by every
//! instance, and a mismatch is refused by every instance.
//!
//! A record is created by [`SharedAnswers::begin`] as a *lease* (`s = r`, the request's
//! fingerprint and the executing owner, expiring after `lease`, which the owner renews every
//! third of it while its call runs, so a lease outlives a slow call but not a dead owner by
//! more than one lease); the owner either
//! [`finish`](SharedAnswers::finish)es it with the sealed answer (`s = d`, kept for the
//! idempotency TTL) or [`abandon`](SharedAnswers::abandon)s it (a 5xx, a 429 or a transport
//! error is no final answer: the next attempt executes again, as at Ratepay). If the owner dies
//! the lease expires and a later duplicate executes again with the same upstream
//! Idempotency-Key, which Ratepay deduplicates. Answers are sealed ([`super::sealed`]);
//! the record's key is the SHA-256 the upstream key already is, never the caller's key.

use std::time::Duration;

use redis::Script;

use super::{gcra::Bucket, sealed::Sealer, Cluster, Unavailable};
use crate::body::StoredAnswer;

/// Creates the lease, or reports what the record holds. With `ARGV[4]` = 1, `KEYS[2]` is the
/// caller's bucket (its rate in `ARGV[5..6]`), spent first whatever the record holds (a
/// replay or a conflict counts against the caller as it does without a cluster); refused, the
/// script returns `{5, '', 0, wait_us}` and touches nothing else. The remaining keys are the
/// request's budgets toward Ratepay (their rates in the remaining arguments): spent with the
/// lease when they admit it, so a call that will leave pays one round trip for all; when they
/// do not, the lease is taken anyway and the upstream layer decides (refusal, queue) as
/// without a cluster. The reply's fourth field is the caller bucket's headroom.
const BEGIN: &str = r#"
local k = KEYS[1]
local nc = tonumber(ARGV[4])
local room = 0
if nc == 1 then
  local v = spend({KEYS[2]}, {ARGV[5], ARGV[6]})
  if v[1] == 0 then return {5, '', 0, v[3]} end
  room = v[4]
end
if redis.call('EXISTS', k) == 0 then
  local spent = 0
  if #KEYS > 1 + nc then
    local keys, args = {}, {}
    for i = 2 + nc, #KEYS do keys[#keys + 1] = KEYS[i] end
    for i = 5 + 2 * nc, #ARGV do args[#args + 1] = ARGV[i] end
    if spend(keys, args)[1] == 1 then spent = 1 end
  end
  redis.call('HSET', k, 's', 'r', 'fp', ARGV[1], 'o', ARGV[2])
  redis.call('PEXPIRE', k, ARGV[3])
  return {1, '', spent, room}
end
if redis.call('HGET', k, 'fp') ~= ARGV[1] then return {2, '', 0, room} end
if redis.call('HGET', k, 's') == 'r' then return {3, '', 0, room} end
return {4, redis.call('HGET', k, 'a') or '', 0, room}
"#;

/// Stores the answer, if the lease is still this owner's.
const FINISH: &str = r#"
local k = KEYS[1]
if redis.call('HGET', k, 'o') ~= ARGV[1] then return 0 end
redis.call('HSET', k, 's', 'd', 'a', ARGV[2])
redis.call('HDEL', k, 'o')
redis.call('PEXPIRE', k, ARGV[3])
return 1
"#;

/// Drops the lease, if it is still this owner's.
const ABANDON: &str = r#"
if redis.call('HGET', KEYS[1], 'o') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// Extends the lease, if it is still this owner's.
const RENEW: &str = r#"
if redis.call('HGET', KEYS[1], 'o') == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

/// Drops a completed record whose answer cannot be opened (so the call can execute again).
const DISCARD: &str = r#"
if redis.call('HGET', KEYS[1], 's') == 'd' then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// Largest sealed answer accepted from Redis: the stored body's limit and room for headers.
const MAX_SEALED: usize = 1024 * 1024;

/// What a record says to a request.
#[derive(Debug)]
pub enum Begin {
    /// The lease is this request's: execute. `upstream_spent`: the budgets given were spent.
    Run {
        /// The upstream buckets admitted the call and were spent.
        upstream_spent: bool,
    },
    /// The key was used for another request.
    Conflict,
    /// Another instance is executing it.
    Pending,
    /// Completed: replay this.
    Done(StoredAnswer),
    /// Completed, but the answer cannot be opened here (unknown key, damaged).
    Unreadable,
    /// The caller's bucket refused the request (it admits again after the wait); nothing was
    /// spent and the record was not read.
    CallerRefused(Duration),
}

/// What [`SharedAnswers::begin`] found, and the caller bucket's headroom when one was spent.
#[derive(Debug)]
pub struct Began {
    /// What the record says.
    pub record: Begin,
    /// Requests the caller's bucket admits at once now, when it was given and admitted.
    pub caller_room: Option<u32>,
}

/// The fleet's idempotency records.
pub struct SharedAnswers {
    cluster: std::sync::Arc<Cluster>,
    sealer: Sealer,
    lease: Duration,
    ttl: Duration,
    begin: Script,
    finish: Script,
    abandon: Script,
    renew: Script,
    discard: Script,
}

impl std::fmt::Debug for SharedAnswers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedAnswers").finish_non_exhaustive()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl SharedAnswers {
    /// Records in `cluster`'s Redis: leases of `lease`, answers kept for `ttl`.
    pub fn new(
        cluster: std::sync::Arc<Cluster>,
        lease: Duration,
        ttl: Duration,
    ) -> Result<SharedAnswers, String> {
        use secrecy::ExposeSecret;
        let s = cluster.settings();
        let sealer = Sealer::new(
            s.answer_key.expose_secret(),
            s.previous_answer_key.as_ref().map(|k| k.expose_secret()),
        )
        .ok_or("cluster.answer_key: not a usable AES-256 key")?;
        Ok(SharedAnswers {
            cluster,
            sealer,
            lease,
            ttl,
            begin: Script::new(&format!("{}{BEGIN}", super::gcra::SPEND_FN)),
            finish: Script::new(FINISH),
            abandon: Script::new(ABANDON),
            renew: Script::new(RENEW),
            discard: Script::new(DISCARD),
        })
    }

    /// Loads the scripts into Redis with the connection (see [`Cluster::preload`]).
    pub async fn preload(&self) {
        for s in [
            &self.begin,
            &self.finish,
            &self.abandon,
            &self.renew,
            &self.discard,
        ] {
            self.cluster.preload(s).await;
        }
    }

    /// The cluster these records live in.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The Redis key of the record whose upstream key is `upstream_key` (hex SHA-256).
    pub fn record(&self, upstream_key: &str) -> String {
        self.cluster.key(&format!("idem:{upstream_key}"))
    }

    fn aad(record: &str, fingerprint: &[u8; 32]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(record.len() + 32);
        aad.extend_from_slice(record.as_bytes());
        aad.extend_from_slice(fingerprint);
        aad
    }

    /// Spends from `caller`'s bucket first when one is given (refused: nothing else happens),
    /// then takes the lease for `owner` (spending `upstream` with it when they admit the
    /// call), or says what the record holds.
    pub async fn begin(
        &self,
        record: &str,
        fingerprint: &[u8; 32],
        owner: &str,
        caller: Option<&Bucket>,
        upstream: &[Bucket],
    ) -> Result<Began, Unavailable> {
        let mut inv = self.begin.prepare_invoke();
        inv.key(record);
        for b in caller.into_iter().chain(upstream) {
            inv.key(&b.key);
        }
        inv.arg(hex::encode(fingerprint))
            .arg(owner)
            .arg(millis(self.lease))
            .arg(u8::from(caller.is_some()));
        let caller_slice = caller.map_or(&[][..], std::slice::from_ref);
        for a in super::gcra::args(caller_slice)
            .into_iter()
            .chain(super::gcra::args(upstream))
        {
            inv.arg(a);
        }
        let (code, sealed, spent, room): (i64, Vec<u8>, i64, i64) = self
            .cluster
            .guarded(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        let count = |v: i64| u32::try_from(v.max(0)).unwrap_or(u32::MAX);
        if code == 5 {
            // A day at most: no configurable rate waits longer for one request.
            let wait = Duration::from_micros(u64::try_from(room).unwrap_or(0))
                .min(Duration::from_secs(86_400));
            return Ok(Began {
                record: Begin::CallerRefused(wait),
                caller_room: None,
            });
        }
        let record = match code {
            1 => Begin::Run {
                upstream_spent: spent == 1,
            },
            2 => Begin::Conflict,
            3 => Begin::Pending,
            // An answer is at most 256 KiB of body plus its headers; more is not ours.
            _ if sealed.len() > MAX_SEALED => Begin::Unreadable,
            _ => match self.sealer.open(&Self::aad(record, fingerprint), &sealed) {
                Ok(plain) => {
                    StoredAnswer::from_bytes(&plain).map_or(Begin::Unreadable, Begin::Done)
                }
                Err(_) => Begin::Unreadable,
            },
        };
        Ok(Began {
            record,
            caller_room: caller.map(|_| count(room)),
        })
    }

    /// Stores `answer` under `owner`'s lease; `false` when the lease was lost (expired and
    /// taken by another execution, whose answer stands).
    pub async fn finish(
        &self,
        record: &str,
        fingerprint: &[u8; 32],
        owner: &str,
        answer: &StoredAnswer,
    ) -> Result<bool, Unavailable> {
        let sealed = self
            .sealer
            .seal(&Self::aad(record, fingerprint), &answer.to_bytes())
            .ok_or(Unavailable::Failed)?;
        let mut inv = self.finish.prepare_invoke();
        inv.key(record).arg(owner).arg(sealed).arg(millis(self.ttl));
        let stored: i64 = self
            .cluster
            .background(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        Ok(stored == 1)
    }

    /// [`SharedAnswers::begin`] until the record is this request's, completed or conflicting:
    /// while another instance executes, it asks again (every 10 ms, backing off to 100 ms) for
    /// as long as that instance keeps renewing its lease (the request's own deadline bounds the
    /// wait, as it bounds every request); an answer that cannot be opened
    /// is dropped and the call executes again (same upstream key: Ratepay deduplicates); if
    /// that happens twice the caller decides locally. `caller`'s bucket is spent by the first
    /// attempt only; its headroom is returned with the outcome.
    pub async fn acquire(
        &self,
        record: &str,
        fingerprint: &[u8; 32],
        owner: &str,
        mut caller: Option<&Bucket>,
        upstream: &[Bucket],
    ) -> Result<Began, Unavailable> {
        let mut pause = Duration::from_millis(10);
        let mut discarded = false;
        let mut caller_room = None;
        loop {
            let began = self
                .begin(record, fingerprint, owner, caller, upstream)
                .await?;
            if matches!(began.record, Begin::CallerRefused(_)) {
                return Ok(began);
            }
            if caller.take().is_some() {
                caller_room = began.caller_room;
            }
            match began.record {
                Begin::Pending => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                // Once: a Redis that keeps answering what cannot be opened is not trusted.
                Begin::Unreadable if !discarded => {
                    discarded = true;
                    tracing::warn!(
                        "a stored answer in redis cannot be opened with the configured answer                          keys; it is dropped and the call executes again (Ratepay deduplicates                          it by its Idempotency-Key)"
                    );
                    self.discard(record).await?;
                }
                record => {
                    return Ok(Began {
                        record,
                        caller_room,
                    })
                }
            }
        }
    }

    /// Gives `owner`'s lease up: no final answer, the next attempt executes again.
    pub async fn abandon(&self, record: &str, owner: &str) -> Result<(), Unavailable> {
        let mut inv = self.abandon.prepare_invoke();
        inv.key(record).arg(owner);
        self.cluster
            .background(|mut c| async move { inv.invoke_async::<i64>(&mut c).await })
            .await
            .map(|_| ())
    }

    /// How often the owner of a lease renews it while its call runs.
    pub fn renew_every(&self) -> Duration {
        self.lease / 3
    }

    /// Extends `owner`'s lease by a whole lease; `false` when it is no longer this owner's.
    pub async fn renew(&self, record: &str, owner: &str) -> Result<bool, Unavailable> {
        let mut inv = self.renew.prepare_invoke();
        inv.key(record).arg(owner).arg(millis(self.lease));
        self.cluster
            .background(|mut c| async move { inv.invoke_async::<i64>(&mut c).await })
            .await
            .map(|n| n == 1)
    }

    /// Drops a completed record that cannot be opened here.
    pub async fn discard(&self, record: &str) -> Result<(), Unavailable> {
        let mut inv = self.discard.prepare_invoke();
        inv.key(record);
        self.cluster
            .guarded(|mut c| async move { inv.invoke_async::<i64>(&mut c).await })
            .await
            .map(|_| ())
    }
}
