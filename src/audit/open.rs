//! Intents whose outcome is still to come: every one gets an outcome record, whatever happens
//! to the call that wrote it.
//!
//! [`AuditLog::begin`] appends the intent and registers it; [`OpenIntent::finish`] writes the
//! real outcome. If the call never gets there (a panic unwinds through it, its task is dropped,
//! the gateway shuts down first), the outcome is still written, as `unknown` with the reason:
//! from the guard's `Drop` (queued without waiting, as `Drop` cannot wait), or by
//! [`AuditLog::close`], which settles every intent still open before the writer stops. Whoever
//! takes the registry entry writes the outcome, so none is written twice.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use super::{Appended, AuditEntry, AuditError, AuditLog, Intent, Outcome, OutcomeKind};

/// Reads how many upstream attempts the call made so far (for an outcome written on its behalf).
pub type AttemptCounter = Arc<dyn Fn() -> u32 + Send + Sync>;

/// An open intent's prepared outcome, when it began, and its attempt counter.
pub(super) struct Pending {
    outcome: Outcome,
    started: Instant,
    attempts: AttemptCounter,
}

impl Pending {
    /// The `unknown` outcome written on the call's behalf, with `reason`.
    fn unknown(mut self, reason: &str) -> Outcome {
        self.outcome.outcome = OutcomeKind::Unknown;
        self.outcome.attempts = (self.attempts)();
        self.outcome.latency_ms = self.started.elapsed().as_millis() as u64;
        self.outcome.error = Some(reason.to_owned());
        self.outcome
    }
}

/// Intents appended whose outcome is not written yet, by intent `seq`.
#[derive(Default)]
pub(super) struct Registry(Mutex<HashMap<u64, Pending>>);

impl Registry {
    fn take(&self, seq: u64) -> Option<Pending> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&seq)
    }

    /// Every open intent's outcome, `unknown` with `reason`; the registry is left empty.
    pub(super) fn settle_all(&self, reason: &str) -> Vec<Outcome> {
        let drained: Vec<Pending> = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, p)| p)
            .collect();
        drained.into_iter().map(|p| p.unknown(reason)).collect()
    }
}

/// Why an outcome was written by the guard rather than by the call.
pub const CUT_OFF: &str =
    "the call ended before its outcome was known (a panic or a cancelled task); Ratepay may have executed it";
/// Why an outcome was written at shutdown.
pub const SHUT_DOWN: &str =
    "the gateway shut down before the call's outcome was known; Ratepay may have executed it";

/// A durable intent whose outcome must follow; see the module docs.
#[must_use = "an open intent is settled as unknown when dropped"]
pub struct OpenIntent {
    log: AuditLog,
    seq: u64,
}

impl std::fmt::Debug for OpenIntent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenIntent")
            .field("seq", &self.seq)
            .finish()
    }
}

impl AuditLog {
    /// Appends `intent` (durable when this returns `Ok`) and registers it as open. `attempts`
    /// reads the call's upstream attempts, for an outcome written on its behalf.
    pub async fn begin(
        &self,
        intent: Intent,
        attempts: AttemptCounter,
    ) -> Result<(OpenIntent, Appended), AuditError> {
        let outcome = intent.outcome(0, OutcomeKind::Unknown);
        let appended = self.append(AuditEntry::Intent(intent)).await?;
        let pending = Pending {
            outcome: Outcome {
                intent_seq: appended.seq,
                ..outcome
            },
            started: Instant::now(),
            attempts,
        };
        self.inner
            .open
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(appended.seq, pending);
        let open = OpenIntent {
            log: self.clone(),
            seq: appended.seq,
        };
        Ok((open, appended))
    }

    /// Intents appended through [`begin`](AuditLog::begin) whose outcome is not written yet.
    pub fn open_intents(&self) -> usize {
        self.inner
            .open
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

impl OpenIntent {
    /// `seq` of the intent record.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Writes the outcome, filled in by `fill` from the prepared one (identifying fields,
    /// attempts and latency set), and returns once it is synced, or only written when the log
    /// has an [`outcome_sync_delay`](super::AuditConfig::outcome_sync_delay). `Ok(None)` when
    /// the outcome was already written on the call's behalf (the gateway shut down first).
    pub async fn finish(
        self,
        fill: impl FnOnce(&mut Outcome),
    ) -> Result<Option<Appended>, AuditError> {
        let Some(pending) = self.log.inner.open.take(self.seq) else {
            return Ok(None);
        };
        let mut outcome = pending.outcome;
        outcome.attempts = (pending.attempts)();
        outcome.latency_ms = pending.started.elapsed().as_millis() as u64;
        fill(&mut outcome);
        self.log.append_outcome(outcome).await.map(Some)
    }
}

impl Drop for OpenIntent {
    fn drop(&mut self) {
        // After `finish` the entry is gone and this does nothing.
        if let Some(pending) = self.log.inner.open.take(self.seq) {
            tracing::error!(
                intent_seq = self.seq,
                "audited call ended without an outcome; writing it as unknown"
            );
            self.log.append_detached(pending.unknown(CUT_OFF));
        }
    }
}
