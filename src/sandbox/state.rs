//! The state of one sandbox instance, shared by all its connections through an `Arc`.
//!
//! Everything mutable sits behind one of two short-held `std` mutexes (never held across an
//! `.await`): `inner` for transactions, sessions, stats, faults, revocations and the seeded
//! random sources, `idempotency` for keys. There is no global state: two sandboxes in one
//! process are fully independent.

use std::{
    collections::HashSet,
    sync::{Mutex, MutexGuard},
};

use rand::{rngs::StdRng, Rng, SeedableRng};

use super::{
    config::SandboxConfig, faults::Faults, idempotency::IdempotencyStore, ledger::Ledger,
    sessions::Sessions, stats::Stats, tokens::TokenIssuer,
};

/// Ratepay's id alphabet: `[A-Za-z0-9_-]`, 64 symbols, so one random byte's low 6 bits pick one.
const ID_ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

/// Length of generated ids (Ratepay's transaction ids are 20 to 127 characters).
pub(crate) const ID_LEN: usize = 20;

/// Locks a mutex, recovering from poisoning: a panicked holder must not take the sandbox down.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Mutable state reset by `POST /_sandbox/reset`.
pub(crate) struct Inner {
    /// Payment API transactions.
    pub ledger: Ledger,
    /// HPP sessions.
    pub sessions: Sessions,
    /// Call counters.
    pub stats: Stats,
    /// Injected faults.
    pub faults: Faults,
    /// `jti`s of every token issued (so that revocation can cover "all issued so far").
    pub issued: Vec<String>,
    /// Revoked `jti`s.
    pub revoked: HashSet<String>,
    /// Source of resource ids (deterministic with a seed).
    pub ids: StdRng,
    /// Source of fault draws, separate so that faults do not shift the id sequence.
    pub fault_rng: StdRng,
}

impl Inner {
    fn new(seed: Option<u64>) -> Inner {
        let (ids, fault_rng) = match seed {
            Some(s) => (
                StdRng::seed_from_u64(s),
                StdRng::seed_from_u64(s ^ 0x5eed_fa17_0000_0001),
            ),
            None => (StdRng::from_os_rng(), StdRng::from_os_rng()),
        };
        Inner {
            ledger: Ledger::default(),
            sessions: Sessions::default(),
            stats: Stats::default(),
            faults: Faults::default(),
            issued: Vec::new(),
            revoked: HashSet::new(),
            ids,
            fault_rng,
        }
    }

    /// A fresh id in Ratepay's format, unique among transactions.
    pub(crate) fn new_id(&mut self) -> String {
        loop {
            let id = random_id(&mut self.ids);
            if !self.ledger.contains(&id) && !self.sessions.contains(&id) {
                return id;
            }
        }
    }
}

/// 20 characters of `[A-Za-z0-9_-]`.
pub(crate) fn random_id(rng: &mut impl Rng) -> String {
    (0..ID_LEN)
        .map(|_| char::from(ID_ALPHABET[usize::from(rng.random::<u8>() & 63)]))
        .collect()
}

/// One sandbox: configuration, signing key and state.
pub(crate) struct Sandbox {
    /// Configuration as given.
    pub config: SandboxConfig,
    /// Signs and checks access tokens.
    pub tokens: TokenIssuer,
    /// Everything else that changes.
    pub inner: Mutex<Inner>,
    /// Idempotency keys (separate lock: waiting duplicates touch only this).
    pub idempotency: Mutex<IdempotencyStore>,
}

impl Sandbox {
    /// A sandbox in its initial state.
    pub(crate) fn new(config: SandboxConfig) -> Sandbox {
        Sandbox {
            tokens: TokenIssuer::new(config.seed),
            inner: Mutex::new(Inner::new(config.seed)),
            idempotency: Mutex::new(IdempotencyStore::default()),
            config,
        }
    }

    /// Back to the initial state: no transactions, sessions, keys, stats, faults or revocations.
    /// The signing key stays, so tokens issued before a reset keep working.
    pub(crate) fn reset(&self) {
        *lock(&self.inner) = Inner::new(self.config.seed);
        *lock(&self.idempotency) = IdempotencyStore::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_ratepay_format_and_follow_the_seed() {
        let a: Vec<String> = {
            let mut r = StdRng::seed_from_u64(42);
            (0..5).map(|_| random_id(&mut r)).collect()
        };
        let b: Vec<String> = {
            let mut r = StdRng::seed_from_u64(42);
            (0..5).map(|_| random_id(&mut r)).collect()
        };
        assert_eq!(a, b);
        for id in &a {
            assert_eq!(id.len(), ID_LEN);
            assert!(id
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-'));
        }
        assert_ne!(a[0], a[1]);
    }
}
