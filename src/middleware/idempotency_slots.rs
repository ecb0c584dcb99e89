//! The idempotency layer's store of slots: one per (caller, key), kept for a fixed time to live
//! and within a byte budget, the oldest dropped first.
//!
//! Written by hand instead of a moka cache (which held the slots until session 15) because the
//! store's needs are narrower than a cache's and moka's generality cost the money path:
//!
//! - Every keyed POST brings a key never seen before, so the map only grows and churns. moka's
//!   lock-free map rehashes as it grows and again to clear what eviction removed: in a profile
//!   of POST cancellations (each with a fresh key) that rehashing was 6.5 % of the gateway's
//!   CPU, its `get_with` (which claims a slot through a second, per-key waiter map) 2.2 %, and
//!   its policy bookkeeping about 1 % more.
//! - The order a store must forget in is by age: all keys live the same `ttl`, and a full store
//!   must drop its oldest keys, never refuse a new one. A queue in insertion order is both the
//!   expiry order and the eviction order, so neither needs a timer wheel nor a frequency sketch.
//!
//! So: one `HashMap` and one queue behind one mutex, held for a hash-map operation at a time and
//! never across an `.await`. A slot is claimed atomically ([`Slots::claim`]), weighed again once
//! its answer is known ([`Slots::reweigh`]), and dropped early only if it is still the same slot
//! ([`Slots::remove`]). A slot a request still holds (its call in flight) is never evicted for
//! room, so a flood of new keys cannot make a retry of a call in flight execute beside it.

use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use tokio::time::Instant;

/// Slots by key, each with its weight, within `max_bytes` and for `ttl` after insertion.
pub(crate) struct Slots<K, V> {
    inner: Mutex<Inner<K, V>>,
    ttl: Duration,
    max_bytes: u64,
}

struct Inner<K, V> {
    map: HashMap<K, Entry<V>>,
    /// Every insertion in order, with the generation it made: the oldest is at the front. An
    /// element whose key now maps to another generation (removed, or replaced after expiry)
    /// is stale and skipped.
    order: VecDeque<(Instant, K, u64)>,
    /// Sum of the weights in `map`.
    bytes: u64,
    /// Generation of the next insertion.
    next_gen: u64,
}

struct Entry<V> {
    value: Arc<V>,
    weight: u64,
    generation: u64,
    expires: Instant,
}

impl<K: Hash + Eq + Clone, V> Slots<K, V> {
    pub(crate) fn new(ttl: Duration, max_bytes: u64) -> Self {
        Slots {
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                order: VecDeque::new(),
                bytes: 0,
                next_gen: 0,
            }),
            ttl,
            max_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<K, V>> {
        // Nothing in here panics between two consistent states.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The live slot of `key`, or a new one from `make` weighing `weight` (the oldest slots are
    /// dropped to make room). Two callers of one key get the same slot.
    pub(crate) fn claim(&self, key: &K, weight: u64, make: impl FnOnce() -> V) -> Arc<V> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.expire(now);
        if let Some(e) = inner.map.get(key) {
            if e.expires > now {
                return e.value.clone();
            }
        }
        let value = Arc::new(make());
        let generation = inner.next_gen;
        inner.next_gen += 1;
        let expires = now + self.ttl;
        let old = inner.map.insert(
            key.clone(),
            Entry {
                value: value.clone(),
                weight,
                generation,
                expires,
            },
        );
        if let Some(old) = old {
            inner.bytes -= old.weight;
        }
        inner.bytes += weight;
        inner.order.push_back((expires, key.clone(), generation));
        inner.evict(self.max_bytes);
        inner.compact();
        value
    }

    /// Weighs `key`'s slot again (its answer is known), if it still is `slot`; the oldest slots
    /// are dropped if that takes the store over its budget.
    pub(crate) fn reweigh(&self, key: &K, slot: &Arc<V>, weight: u64) {
        let mut inner = self.lock();
        let Some(e) = inner.map.get_mut(key) else {
            return;
        };
        if !Arc::ptr_eq(&e.value, slot) {
            return;
        }
        let old = std::mem::replace(&mut e.weight, weight);
        inner.bytes = inner.bytes - old + weight;
        inner.evict(self.max_bytes);
    }

    /// Drops `key`'s slot if it still is `slot`.
    pub(crate) fn remove(&self, key: &K, slot: &Arc<V>) {
        let mut inner = self.lock();
        if inner
            .map
            .get(key)
            .is_some_and(|e| Arc::ptr_eq(&e.value, slot))
        {
            if let Some(e) = inner.map.remove(key) {
                inner.bytes -= e.weight;
            }
            inner.compact();
        }
    }

    /// Whether `key` has a live slot.
    #[cfg(test)]
    pub(crate) fn contains_key(&self, key: &K) -> bool {
        let now = Instant::now();
        self.lock().map.get(key).is_some_and(|e| e.expires > now)
    }

    /// Slots held (expired ones included until the next claim drops them).
    pub(crate) fn len(&self) -> u64 {
        self.lock().map.len() as u64
    }

    /// Sum of the weights held.
    #[cfg(test)]
    pub(crate) fn weighted_size(&self) -> u64 {
        self.lock().bytes
    }
}

impl<K: Hash + Eq + Clone, V> Inner<K, V> {
    /// Takes `key`'s slot out of the map in one lookup; `None` when it is gone. A slot of
    /// another generation than `generation` (a newer one for the same key, which a stale queue
    /// element must not drop) goes straight back, and is `None` too. A look first and a removal
    /// after were two lookups, each a SipHash of the key and, in a store of tens of thousands
    /// of slots, a cache miss or two. At a full store (perf, session 18, audit-off
    /// cancellations) `HashMap::get` fell from 4.6 % of user samples to 1.0 %, and the CPU per
    /// cancellation by 1.5 to 1.8 % in paired slices both ways round.
    fn take(&mut self, key: K, generation: u64) -> Option<(K, Entry<V>)> {
        let (key, e) = self.map.remove_entry(&key)?;
        if e.generation == generation {
            return Some((key, e));
        }
        self.map.insert(key, e);
        None
    }

    /// Drops every slot whose time is up: they are at the front, in insertion order.
    fn expire(&mut self, now: Instant) {
        while self.order.front().is_some_and(|(at, _, _)| *at <= now) {
            let Some((_, key, generation)) = self.order.pop_front() else {
                return;
            };
            if let Some((_, e)) = self.take(key, generation) {
                self.bytes -= e.weight;
            }
        }
    }

    /// Drops the oldest slots until the weights fit `max_bytes`. A slot a request still holds
    /// (its call in flight, a duplicate waiting on it, a replay being written) is not dropped
    /// but goes to the back of the queue: dropping it would let a retry of that key execute
    /// again beside the call in flight. So the store can exceed `max_bytes` by the slots in use,
    /// which the connection limit bounds; the slot just claimed is one of them.
    fn evict(&mut self, max_bytes: u64) {
        // Each element is looked at once at most per call.
        let mut turns = self.order.len();
        while self.bytes > max_bytes && turns > 0 {
            turns -= 1;
            let Some((at, key, generation)) = self.order.pop_front() else {
                break;
            };
            let Some((key, e)) = self.take(key, generation) else {
                continue;
            };
            if Arc::strong_count(&e.value) > 1 {
                // In use: back in the map, and in the queue. Its expiry is then checked late
                // (at the front again); lookups check it anyway.
                self.map.insert(key.clone(), e);
                self.order.push_back((at, key, generation));
            } else {
                self.bytes -= e.weight;
            }
        }
    }

    /// Rebuilds the queue without its stale elements once they outnumber the live ones, so
    /// removals cannot grow it without bound.
    fn compact(&mut self) {
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order.retain(|(_, key, generation)| {
                map.get(key).is_some_and(|e| e.generation == *generation)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max_bytes: u64) -> Slots<String, u32> {
        Slots::new(Duration::from_secs(60), max_bytes)
    }

    fn held(s: &Slots<String, u32>, n: u32) -> Vec<u32> {
        (0..n)
            .filter(|i| s.contains_key(&format!("k{i}")))
            .collect()
    }

    #[tokio::test]
    async fn one_key_one_slot_until_it_is_removed() {
        let s = store(1000);
        let k = "k".to_owned();
        let a = s.claim(&k, 10, || 1);
        let b = s.claim(&k, 10, || 2);
        assert!(Arc::ptr_eq(&a, &b), "the second claim gets the first slot");
        assert_eq!((s.len(), s.weighted_size()), (1, 10));
        // Removing or reweighing a slot that is no longer the key's does nothing.
        s.remove(&k, &Arc::new(9));
        s.reweigh(&k, &Arc::new(9), 500);
        assert_eq!((s.len(), s.weighted_size()), (1, 10));
        s.remove(&k, &a);
        assert_eq!((s.len(), s.weighted_size()), (0, 0));
        let c = s.claim(&k, 10, || 3);
        assert_eq!(*c, 3, "a removed key gets a new slot");
    }

    #[tokio::test]
    async fn a_full_store_drops_its_oldest_slots_and_takes_the_new_one() {
        let s = store(100);
        for i in 0..25 {
            s.claim(&format!("k{i}"), 10, || i);
            assert!(s.weighted_size() <= 100);
        }
        assert_eq!(held(&s, 25), (15..25).collect::<Vec<_>>());
        // A slot weighed again after its answer makes room the same way.
        let k24 = "k24".to_owned();
        let last = s.claim(&k24, 10, || 0);
        s.reweigh(&k24, &last, 50);
        assert_eq!(held(&s, 25), (19..25).collect::<Vec<_>>());
        assert_eq!(s.weighted_size(), 100);
        drop(last);
        // One slot heavier than the whole budget is still held, alone.
        let big = s.claim(&"big".to_owned(), 1000, || 0);
        assert_eq!((s.len(), s.weighted_size()), (1, 1000));
        drop(big);
        s.claim(&"next".to_owned(), 10, || 0);
        assert_eq!((s.len(), s.weighted_size()), (1, 10));
    }

    #[tokio::test]
    async fn a_slot_a_request_still_holds_is_not_evicted() {
        let s = store(100);
        let in_flight = s.claim(&"k0".to_owned(), 10, || 0);
        for i in 1..30 {
            s.claim(&format!("k{i}"), 10, || i);
        }
        // Still there: a retry of k0 finds the call in flight, not a fresh slot.
        let retry = s.claim(&"k0".to_owned(), 10, || 99);
        assert!(Arc::ptr_eq(&retry, &in_flight));
        assert!(s.weighted_size() <= 100, "{}", s.weighted_size());
        drop((retry, in_flight));
        // Once nothing holds it, it goes like any old slot.
        for i in 30..45 {
            s.claim(&format!("k{i}"), 10, || i);
        }
        assert!(!s.contains_key(&"k0".to_owned()));
        assert_eq!(held(&s, 45), (35..45).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn slots_expire_after_the_ttl_in_insertion_order() {
        let s = store(1000);
        s.claim(&"k0".to_owned(), 10, || 0);
        tokio::time::advance(Duration::from_secs(30)).await;
        s.claim(&"k1".to_owned(), 10, || 1);
        tokio::time::advance(Duration::from_secs(30)).await;
        // k0 is 60 s old: gone for lookups at once, and from the store at the next claim.
        assert_eq!(held(&s, 2), [1]);
        let again = s.claim(&"k0".to_owned(), 10, || 7);
        assert_eq!(*again, 7, "an expired key gets a new slot");
        assert_eq!((s.len(), s.weighted_size()), (2, 20));
        tokio::time::advance(Duration::from_secs(30)).await;
        s.claim(&"k2".to_owned(), 10, || 2);
        assert_eq!(held(&s, 3), [0, 2]);
        assert_eq!((s.len(), s.weighted_size()), (2, 20));
    }

    #[tokio::test]
    async fn a_stale_queue_element_leaves_the_keys_newer_slot_alone() {
        // k0's first slot is removed and claimed again: the queue's front is then a stale
        // element for k0, and its newer slot must survive the eviction that passes over it.
        let s = store(20);
        let k0 = "k0".to_owned();
        let first = s.claim(&k0, 10, || 0);
        s.remove(&k0, &first);
        let newer = s.claim(&k0, 10, || 1);
        drop(newer);
        s.claim(&"k1".to_owned(), 10, || 2);
        s.claim(&"k2".to_owned(), 10, || 3);
        // 30 bytes against 20: one slot goes, the oldest live one (k0's newer), not two.
        assert_eq!((s.len(), s.weighted_size()), (2, 20));
        assert_eq!(held(&s, 3), [1, 2]);
        // And a stale element for a key whose newer slot is the oldest live one, with room
        // to spare: nothing goes.
        let s = store(1000);
        let first = s.claim(&k0, 10, || 0);
        s.remove(&k0, &first);
        let newer = s.claim(&k0, 10, || 1);
        s.claim(&"k1".to_owned(), 10, || 2);
        assert!(s.contains_key(&k0));
        assert_eq!(
            *s.claim(&k0, 10, || 9),
            *newer,
            "the newer slot, found again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_expiring_stale_element_leaves_the_keys_newer_slot_alone() {
        let s = store(1000);
        let k0 = "k0".to_owned();
        let first = s.claim(&k0, 10, || 0);
        s.remove(&k0, &first);
        tokio::time::advance(Duration::from_secs(30)).await;
        let newer = s.claim(&k0, 10, || 1);
        // The stale element's time is up; the newer slot's is not.
        tokio::time::advance(Duration::from_secs(45)).await;
        s.claim(&"k1".to_owned(), 10, || 2);
        assert_eq!((s.len(), s.weighted_size()), (2, 20));
        assert!(Arc::ptr_eq(&s.claim(&k0, 10, || 9), &newer));
    }

    #[tokio::test]
    async fn removals_do_not_grow_the_queue_without_bound() {
        let s = store(1 << 30);
        for i in 0..10_000u32 {
            let k = format!("k{i}");
            let slot = s.claim(&k, 1, || i);
            s.remove(&k, &slot);
        }
        let queued = s.lock().order.len();
        assert!(queued <= 64 + 1, "{queued} stale elements kept");
        assert_eq!((s.len(), s.weighted_size()), (0, 0));
    }
}
