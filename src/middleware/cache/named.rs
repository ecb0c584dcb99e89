//! Which Ratepay transactions the cache's entries name, so that a cancellation of a transaction
//! no entry names costs no invalidation.
//!
//! Invalidating by transaction is a moka predicate over every cached entry: each registered
//! predicate makes moka's maintenance walk the whole cache, and its predicate map sees an
//! insertion and a removal per cancellation. Most cancellations concern transactions whose
//! records nobody read through the gateway; a profile of the load benchmark's POST
//! cancellations put the predicate's registration and its map's rehashing at 2.5 % of the
//! gateway's CPU with an empty cache (session 14).
//!
//! The count is kept by the entries themselves: each [`Entry`](super::Entry) holds a
//! [`TransactionIds`] that counts its ids when it is made and gives them back when it is dropped,
//! whichever way it leaves (evicted, expired, replaced, invalidated, or a request's copy going
//! away). So a count is never below the entries that exist; it can only be above (entries moka
//! has not reclaimed yet, copies held by requests in flight), which costs a predicate, never a
//! missed invalidation.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

/// Entries per transaction id, for one cache.
#[derive(Debug, Default)]
pub(super) struct Named(Mutex<HashMap<String, usize>>);

impl Named {
    /// Whether an entry that names `transaction_id` may exist.
    pub(super) fn names(&self, transaction_id: &str) -> bool {
        self.lock().contains_key(transaction_id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        // Every critical section is one counter's change: a poisoned map is still consistent.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An entry's transaction ids, counted in its cache's [`Named`] while the entry exists.
pub struct TransactionIds {
    ids: Vec<String>,
    named: Arc<Named>,
}

impl TransactionIds {
    /// Counts `ids` (an entry is being made).
    pub(super) fn new(ids: Vec<String>, named: Arc<Named>) -> Self {
        if !ids.is_empty() {
            let mut counts = named.lock();
            for id in &ids {
                *counts.entry(id.clone()).or_default() += 1;
            }
        }
        TransactionIds { ids, named }
    }

    /// Whether the entry belongs to `transaction_id`.
    pub(super) fn contains(&self, transaction_id: &str) -> bool {
        self.ids.iter().any(|id| id == transaction_id)
    }

    /// Bytes the ids hold, twice: in the entry and in the count.
    pub(super) fn bytes(&self) -> usize {
        2 * self.ids.iter().map(String::len).sum::<usize>()
    }
}

impl Drop for TransactionIds {
    fn drop(&mut self) {
        if self.ids.is_empty() {
            return;
        }
        let mut counts = self.named.lock();
        for id in &self.ids {
            if let Some(n) = counts.get_mut(id.as_str()) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(id.as_str());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_named_while_any_entry_holding_it_exists() {
        let named = Arc::new(Named::default());
        let a = TransactionIds::new(vec!["tx-1".into(), "tx-2".into()], named.clone());
        let b = TransactionIds::new(vec!["tx-1".into()], named.clone());
        assert!(named.names("tx-1") && named.names("tx-2"));
        assert!(!named.names("tx-3"));
        assert!(a.contains("tx-2") && !b.contains("tx-2"));
        assert_eq!(a.bytes(), 16);
        drop(a);
        assert!(named.names("tx-1"), "b still names it");
        assert!(!named.names("tx-2"));
        drop(b);
        assert!(!named.names("tx-1"));
        assert!(named.0.lock().unwrap().is_empty(), "nothing left behind");
    }
}
