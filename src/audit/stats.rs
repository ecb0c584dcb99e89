//! What the audit log reports about itself: counters the writer thread updates and
//! [`super::AuditLog::stats`] reads ([`AuditStats`]).

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

/// Counters shared between the writer (which updates them) and [`super::AuditLog::stats`].
#[derive(Debug, Default)]
pub(crate) struct StatsCells {
    pub records: AtomicU64,
    pub syncs: AtomicU64,
    pub sync_nanos_total: AtomicU64,
    pub sync_nanos_last: AtomicU64,
    pub failed_appends: AtomicU64,
    pub rotations: AtomicU64,
    pub last_seq: AtomicU64,
    pub poisoned: AtomicBool,
    pub write_failed: AtomicBool,
    pub write_errors: AtomicU64,
    pub recoveries: AtomicU64,
    pub checkpoints: AtomicU64,
    pub last_checkpoint_seq: AtomicU64,
}

/// A snapshot of the log's counters, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuditStats {
    /// Records written and synced since open.
    pub records_written: u64,
    /// `fdatasync` calls that succeeded since open.
    pub syncs: u64,
    /// Duration of the last successful sync.
    pub last_sync: Duration,
    /// Mean duration of successful syncs.
    pub avg_sync: Duration,
    /// Appends answered with an error since open.
    pub failed_appends: u64,
    /// File rotations since open.
    pub rotations: u64,
    /// Seq of the last durable record (0 for an empty log).
    pub last_seq: u64,
    /// True once a sync or rotation failed: every append fails until the log is reopened.
    pub poisoned: bool,
    /// True while appends are refused after a failed write, until a later write and sync
    /// succeed.
    pub write_failed: bool,
    /// Times the log went from accepting appends to refusing them after a failed write.
    pub write_errors: u64,
    /// Times the log accepted appends again after a failed write.
    pub recoveries: u64,
    /// Checkpoints written (and synced) since open.
    pub checkpoints: u64,
    /// Seq of the latest durable checkpoint (0: none yet).
    pub last_checkpoint_seq: u64,
}

impl StatsCells {
    pub(crate) fn snapshot(&self) -> AuditStats {
        let syncs = self.syncs.load(Ordering::Relaxed);
        let total = self.sync_nanos_total.load(Ordering::Relaxed);
        AuditStats {
            records_written: self.records.load(Ordering::Relaxed),
            syncs,
            last_sync: Duration::from_nanos(self.sync_nanos_last.load(Ordering::Relaxed)),
            avg_sync: Duration::from_nanos(total.checked_div(syncs).unwrap_or(0)),
            failed_appends: self.failed_appends.load(Ordering::Relaxed),
            rotations: self.rotations.load(Ordering::Relaxed),
            last_seq: self.last_seq.load(Ordering::Relaxed),
            poisoned: self.poisoned.load(Ordering::Relaxed),
            write_failed: self.write_failed.load(Ordering::Relaxed),
            write_errors: self.write_errors.load(Ordering::Relaxed),
            recoveries: self.recoveries.load(Ordering::Relaxed),
            checkpoints: self.checkpoints.load(Ordering::Relaxed),
            last_checkpoint_seq: self.last_checkpoint_seq.load(Ordering::Relaxed),
        }
    }
}
