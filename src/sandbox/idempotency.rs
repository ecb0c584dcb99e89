//! Ratepay's idempotency rules for creating POSTs, as a plain store the HTTP layer consults.
//!
//! Sits after authentication in the sandbox's flow: a creating call with an `Idempotency-Key`
//! asks [`IdempotencyStore::begin`] what to do. The rules are Ratepay's (docs: "Idempotency",
//! Payment API v2): a key lives 24 h and is scoped per OAuth client; the same key with the
//! same request returns the exact first answer when that answer was 2xx or 4xx; a 5xx answer is
//! forgotten so a retry executes again; the same key with a different request is a 409; a
//! duplicate that arrives while the first call runs waits for it. Time is passed in, so the
//! rules are tested without sockets or sleeping.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::reply::Reply;

/// How long Ratepay honours a key.
pub(crate) const KEY_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// Longest key Ratepay accepts.
pub(crate) const MAX_KEY_LEN: usize = 64;

/// Why an `Idempotency-Key` header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum KeyError {
    /// Empty or longer than 64 bytes.
    #[error("the Idempotency-Key must be 1 to 64 characters long")]
    Length,
    /// Not printable single-byte (ASCII) characters.
    #[error("the Idempotency-Key must consist of printable single-byte (ASCII) characters")]
    Charset,
}

/// Checks a key against Ratepay's "at most 64 single-byte characters".
pub(crate) fn validate_key(raw: &[u8]) -> Result<String, KeyError> {
    if raw.is_empty() || raw.len() > MAX_KEY_LEN {
        return Err(KeyError::Length);
    }
    if !raw.iter().all(|b| (0x20..0x7f).contains(b)) {
        return Err(KeyError::Charset);
    }
    // Checked above: every byte is ASCII, so this cannot fail; map instead of unwrap anyway.
    String::from_utf8(raw.to_vec()).map_err(|_| KeyError::Charset)
}

/// A digest of everything that makes two calls "the same request" for Ratepay: method, path
/// (with query), body and `X-Partner`. Length prefixes keep field boundaries unambiguous.
pub(crate) fn fingerprint(
    method: &str,
    path: &str,
    partner: Option<&str>,
    body: &[u8],
) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [
        method.as_bytes(),
        path.as_bytes(),
        partner.unwrap_or("").as_bytes(),
        body,
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    // The partner presence bit: "no X-Partner" and "X-Partner: " differ.
    h.update([u8::from(partner.is_some())]);
    h.finalize().into()
}

enum Entry {
    InFlight {
        fingerprint: [u8; 32],
        generation: u64,
        done: watch::Receiver<()>,
    },
    Done {
        fingerprint: [u8; 32],
        reply: Reply,
        stored_at: Instant,
    },
}

/// What the caller should do with a keyed request.
pub(crate) enum Begin {
    /// First call (or retry after a 5xx): run it, then call [`IdempotencyStore::finish`].
    /// Dropping the sender (after finishing or abandoning) wakes the duplicates.
    Execute {
        /// Identifies this run, so a late finish cannot overwrite a newer run.
        generation: u64,
        /// Held while running; dropping it wakes waiting duplicates.
        done: watch::Sender<()>,
    },
    /// The same request already has an answer: send exactly this.
    Replay(Reply),
    /// The key was used for a different request.
    Conflict,
    /// The same request is running: wait until the receiver's sender is gone, then ask again.
    Wait(watch::Receiver<()>),
}

/// Keys and their answers, scoped per OAuth client (`sub`).
#[derive(Default)]
pub(crate) struct IdempotencyStore {
    entries: HashMap<(String, String), Entry>,
    next_generation: u64,
    /// The size past which expired keys are pruned next: twice what the last pruning kept (at
    /// least [`PRUNE_FLOOR`]), so the scan of every key runs once per doubling. Pruning whenever
    /// more than 10,000 keys were held scanned them all on every call once 10,000 live keys
    /// were stored: 20,000 cancellations through the gateway and the embedded sandbox cost
    /// 864k instructions each instead of 326k (`benches/instructions.sh`, session 14).
    prune_at: usize,
}

/// Keys held before expired ones are first pruned.
const PRUNE_FLOOR: usize = 10_000;

impl IdempotencyStore {
    /// Decides what to do with a request carrying `key` for client `scope`.
    pub(crate) fn begin(&mut self, scope: &str, key: &str, fp: [u8; 32], now: Instant) -> Begin {
        // Expired keys are as good as unknown; prune lazily so the map cannot grow forever.
        if self.entries.len() > self.prune_at.max(PRUNE_FLOOR) {
            self.entries.retain(|_, e| !expired(e, now));
            self.prune_at = 2 * self.entries.len();
        }
        let id = (scope.to_owned(), key.to_owned());
        match self.entries.get(&id) {
            Some(e) if expired(e, now) => {}
            Some(Entry::Done {
                fingerprint, reply, ..
            }) => {
                return if *fingerprint == fp {
                    Begin::Replay(reply.clone())
                } else {
                    Begin::Conflict
                };
            }
            Some(Entry::InFlight {
                fingerprint, done, ..
            }) => {
                return if *fingerprint == fp {
                    Begin::Wait(done.clone())
                } else {
                    Begin::Conflict
                };
            }
            None => {}
        }
        self.next_generation += 1;
        let generation = self.next_generation;
        let (tx, rx) = watch::channel(());
        self.entries.insert(
            id,
            Entry::InFlight {
                fingerprint: fp,
                generation,
                done: rx,
            },
        );
        Begin::Execute {
            generation,
            done: tx,
        }
    }

    /// Records the answer of run `generation`: 5xx answers are forgotten (a retry executes again).
    pub(crate) fn finish(
        &mut self,
        scope: &str,
        key: &str,
        generation: u64,
        reply: &Reply,
        now: Instant,
    ) {
        let id = (scope.to_owned(), key.to_owned());
        let Some(Entry::InFlight {
            fingerprint,
            generation: g,
            ..
        }) = self.entries.get(&id)
        else {
            return;
        };
        if *g != generation {
            return;
        }
        if reply.status.is_server_error() {
            self.entries.remove(&id);
        } else {
            let fingerprint = *fingerprint;
            self.entries.insert(
                id,
                Entry::Done {
                    fingerprint,
                    reply: reply.clone(),
                    stored_at: now,
                },
            );
        }
    }

    /// Forgets run `generation` that ended without an answer (the caller went away).
    pub(crate) fn abandon(&mut self, scope: &str, key: &str, generation: u64) {
        let id = (scope.to_owned(), key.to_owned());
        if matches!(self.entries.get(&id), Some(Entry::InFlight { generation: g, .. }) if *g == generation)
        {
            self.entries.remove(&id);
        }
    }

    /// Number of keys held (running or answered).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

fn expired(e: &Entry, now: Instant) -> bool {
    match e {
        Entry::Done { stored_at, .. } => now.saturating_duration_since(*stored_at) >= KEY_LIFETIME,
        Entry::InFlight { .. } => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn reply(status: u16, body: &str) -> Reply {
        Reply::raw(
            StatusCode::from_u16(status).unwrap(),
            "application/json",
            body.as_bytes().to_vec().into(),
        )
    }

    fn run(store: &mut IdempotencyStore, key: &str, fp: [u8; 32], now: Instant, r: &Reply) {
        match store.begin("client", key, fp, now) {
            Begin::Execute { generation, .. } => store.finish("client", key, generation, r, now),
            _ => panic!("expected Execute"),
        }
    }

    #[test]
    fn same_request_replays_the_stored_answer_including_4xx() {
        let mut s = IdempotencyStore::default();
        let now = Instant::now();
        let fp = fingerprint("POST", "/x", None, b"{}");
        run(&mut s, "k", fp, now, &reply(422, "{\"a\":1}"));
        match s.begin("client", "k", fp, now) {
            Begin::Replay(r) => {
                assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
                assert_eq!(&r.body[..], b"{\"a\":1}");
            }
            _ => panic!("expected Replay"),
        }
    }

    #[test]
    fn different_body_or_partner_is_a_conflict() {
        let mut s = IdempotencyStore::default();
        let now = Instant::now();
        run(
            &mut s,
            "k",
            fingerprint("POST", "/x", None, b"{}"),
            now,
            &reply(201, "{}"),
        );
        let other_body = fingerprint("POST", "/x", None, b"{\"b\":2}");
        assert!(matches!(
            s.begin("client", "k", other_body, now),
            Begin::Conflict
        ));
        let other_partner = fingerprint("POST", "/x", Some("p"), b"{}");
        assert!(matches!(
            s.begin("client", "k", other_partner, now),
            Begin::Conflict
        ));
        let empty_partner = fingerprint("POST", "/x", Some(""), b"{}");
        assert!(matches!(
            s.begin("client", "k", empty_partner, now),
            Begin::Conflict
        ));
    }

    #[test]
    fn server_errors_are_not_stored() {
        let mut s = IdempotencyStore::default();
        let now = Instant::now();
        let fp = fingerprint("POST", "/x", None, b"{}");
        run(&mut s, "k", fp, now, &reply(503, "{}"));
        assert_eq!(s.len(), 0);
        assert!(matches!(
            s.begin("client", "k", fp, now),
            Begin::Execute { .. }
        ));
    }

    #[test]
    fn keys_are_scoped_per_client_and_expire_after_24h() {
        let mut s = IdempotencyStore::default();
        let now = Instant::now();
        let fp = fingerprint("POST", "/x", None, b"{}");
        run(&mut s, "k", fp, now, &reply(201, "{}"));
        assert!(matches!(
            s.begin("other", "k", fp, now),
            Begin::Execute { .. }
        ));
        let later = now + KEY_LIFETIME - Duration::from_secs(1);
        assert!(matches!(
            s.begin("client", "k", fp, later),
            Begin::Replay(_)
        ));
        let expired = now + KEY_LIFETIME;
        assert!(matches!(
            s.begin("client", "k", fp, expired),
            Begin::Execute { .. }
        ));
    }

    #[test]
    fn expired_keys_are_pruned_once_the_map_outgrows_what_the_last_pruning_kept() {
        let mut s = IdempotencyStore::default();
        let now = Instant::now();
        let fp = fingerprint("POST", "/x", None, b"{}");
        let ok = reply(201, "{}");
        for n in 0..=PRUNE_FLOOR {
            run(&mut s, &format!("old-{n}"), fp, now, &ok);
        }
        // Past the floor, but nothing has expired yet: every key stays.
        run(&mut s, "live-0", fp, now, &ok);
        assert_eq!(s.len(), PRUNE_FLOOR + 2);
        // Live keys up to twice what that pruning kept are not scanned again ...
        let later = now + KEY_LIFETIME;
        for n in 1..=PRUNE_FLOOR {
            run(&mut s, &format!("live-{n}"), fp, now, &ok);
        }
        run(&mut s, "new-0", fp, later, &ok);
        assert_eq!(s.len(), 2 * PRUNE_FLOOR + 3);
        // ... and past that the expired ones go: only the keys stored at `later` remain.
        run(&mut s, "new-1", fp, later, &ok);
        assert_eq!(s.len(), 2, "only the keys within their lifetime");
    }

    #[test]
    fn duplicate_in_flight_waits_and_wakes_when_the_first_finishes() {
        let mut s = IdempotencyStore::default();
        let now = Instant::now();
        let fp = fingerprint("POST", "/x", None, b"{}");
        let Begin::Execute { generation, done } = s.begin("client", "k", fp, now) else {
            panic!("expected Execute");
        };
        let Begin::Wait(rx) = s.begin("client", "k", fp, now) else {
            panic!("expected Wait");
        };
        assert!(rx.has_changed().is_ok(), "sender still alive");
        s.finish("client", "k", generation, &reply(201, "{}"), now);
        drop(done);
        assert!(rx.has_changed().is_err(), "waiter sees the sender gone");
        assert!(matches!(s.begin("client", "k", fp, now), Begin::Replay(_)));
    }

    #[test]
    fn abandoned_run_frees_the_key_and_stale_finish_is_ignored() {
        let mut s = IdempotencyStore::default();
        let now = Instant::now();
        let fp = fingerprint("POST", "/x", None, b"{}");
        let Begin::Execute { generation: g1, .. } = s.begin("client", "k", fp, now) else {
            panic!("expected Execute");
        };
        s.abandon("client", "k", g1);
        let Begin::Execute { generation: g2, .. } = s.begin("client", "k", fp, now) else {
            panic!("expected Execute after abandon");
        };
        s.finish("client", "k", g1, &reply(201, "old"), now);
        assert!(matches!(s.begin("client", "k", fp, now), Begin::Wait(_)));
        s.finish("client", "k", g2, &reply(201, "new"), now);
        match s.begin("client", "k", fp, now) {
            Begin::Replay(r) => assert_eq!(&r.body[..], b"new"),
            _ => panic!("expected Replay"),
        }
    }

    #[test]
    fn key_validation_follows_ratepay_limits() {
        assert!(validate_key(b"a").is_ok());
        assert!(validate_key(&[b'a'; 64]).is_ok());
        assert_eq!(validate_key(&[b'a'; 65]), Err(KeyError::Length));
        assert_eq!(validate_key(b""), Err(KeyError::Length));
        assert_eq!(validate_key("ä".as_bytes()), Err(KeyError::Charset));
        assert_eq!(validate_key(b"a\x01"), Err(KeyError::Charset));
    }
}
