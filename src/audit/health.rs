//! The writer's health: refusing appends after a failed write until a probe succeeds, and
//! poisoning the log after a failed sync or rotation (see the module docs of `writer.rs` and
//! docs/audit.md, "A failed write is recoverable").

use std::{io, sync::atomic::Ordering, sync::Arc, time::Duration};

use time::OffsetDateTime;
use tokio::sync::oneshot;

use super::{
    reopen::{cut_to, CutError},
    writer::Writer,
    Appended, AuditError,
};

/// Shortest time between two attempts to write again after a failed write. Appends arriving
/// sooner are refused at once, so a full disk costs a flood of cancellations no I/O.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// The refusing state after a failed write.
pub(super) struct WriteFailure {
    /// The write error, returned to every append refused meanwhile.
    pub(super) error: AuditError,
    /// When the failure happened or a probe was last tried (the writer's clock).
    pub(super) last_attempt: OffsetDateTime,
    /// The file is cut back to `written` (and that is synced): false if the cut failed.
    pub(super) cut: bool,
}

impl Writer {
    /// Why an append must be refused now, if it must. After a failed write this is also where
    /// the probe starts: once [`PROBE_INTERVAL`] has passed (or the clock went back), the cut
    /// is checked and the batch being built is tried as the probe.
    pub(super) fn refusal(&mut self, now: OffsetDateTime) -> Option<AuditError> {
        if let Some(cause) = &self.poisoned {
            return Some(AuditError::Poisoned {
                cause: cause.clone(),
            });
        }
        if self.probing {
            return None;
        }
        let failure = self.write_failed.as_mut()?;
        let since = now - failure.last_attempt;
        if since >= time::Duration::ZERO && since < PROBE_INTERVAL {
            return Some(failure.error.clone());
        }
        failure.last_attempt = now;
        let (cut, error) = (failure.cut, failure.error.clone());
        if !cut {
            match cut_to(&self.file, self.written) {
                Ok(()) => {
                    self.synced();
                    if let Some(f) = &mut self.write_failed {
                        f.cut = true;
                    }
                }
                Err(CutError::Truncate(e)) => {
                    tracing::warn!(error = %e, file = %self.path.display(), "audit log: still cannot cut unsynced bytes; appends stay refused");
                    return Some(error);
                }
                Err(CutError::Sync(e)) => {
                    let error = AuditError::Sync {
                        path: self.path.clone(),
                        source: Arc::new(e),
                    };
                    self.poison(error.clone());
                    return Some(error);
                }
            }
        }
        // Appending after anything but the last written byte would fork the chain.
        match self.file.metadata() {
            Ok(m) if m.len() == self.written => {}
            Ok(m) => {
                let error = AuditError::Write {
                    path: self.path.clone(),
                    source: Arc::new(io::Error::other(format!(
                        "file is {} bytes, {} expected after the cut",
                        m.len(),
                        self.written
                    ))),
                };
                self.poison(error.clone());
                return Some(error);
            }
            Err(_) => return Some(error),
        }
        self.probing = true;
        None
    }

    /// A write failed, so everything up to `written` (the end of the last complete write) is
    /// in the file and everything after it is a torn tail that no append was told about. The
    /// tail is cut (and the cut synced, which makes `written` durable too), the chain head goes
    /// back to the last written record, and appends are refused until a probe succeeds
    /// ([`Writer::refusal`]).
    pub(super) fn write_failed(&mut self, error: AuditError, now: OffsetDateTime) {
        let head = self.written_head.clone();
        self.last_seq = head.seq;
        self.last_hash = head.hash;
        self.file_first = head.file_first;
        self.due.pending = head.pending;
        let cut = match cut_to(&self.file, self.written) {
            Ok(()) => {
                self.synced();
                true
            }
            Err(CutError::Truncate(e)) => {
                tracing::warn!(error = %e, file = %self.path.display(), "audit log: could not cut unsynced bytes; retried before the next write");
                false
            }
            Err(CutError::Sync(e)) => {
                self.poison(AuditError::Sync {
                    path: self.path.clone(),
                    source: Arc::new(e),
                });
                return;
            }
        };
        if self.probing {
            self.probing = false;
            tracing::warn!(error = %error, file = %self.path.display(), "audit log: write still failing; appends stay refused");
        } else {
            tracing::error!(error = %error, file = %self.path.display(), durable_bytes = self.written, last_seq = self.last_seq, "audit log: write failed; appends refused until a write and sync succeed again");
            self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
            self.stats.write_failed.store(true, Ordering::Relaxed);
        }
        self.write_failed = Some(WriteFailure {
            error,
            last_attempt: now,
            cut,
        });
    }

    /// The probe batch is durable: the log accepts appends again.
    pub(super) fn recovered(&mut self) {
        self.probing = false;
        if let Some(failure) = self.write_failed.take() {
            tracing::info!(cause = %failure.error, file = %self.path.display(), last_seq = self.last_seq, "audit log: writing again after a failed write");
        }
        self.stats.recoveries.fetch_add(1, Ordering::Relaxed);
        self.stats.write_failed.store(false, Ordering::Relaxed);
    }

    /// After a failed sync nothing past `durable` can be trusted: on Linux a failed fsync may
    /// drop the dirty pages and report the error only once, so a retry would "succeed"
    /// without the data ("fsyncgate"). The writer therefore fails those appends, cuts the
    /// file back to the last synced length (best effort, so a reopen does not continue from
    /// records whose appends failed) and refuses every later append until the log is
    /// reopened, when recovery re-reads what really is in the file. A failed rotation poisons
    /// too: the active file may then be gone or renamed.
    pub(super) fn poison(&mut self, cause: AuditError) {
        self.probing = false;
        self.write_failed = None;
        self.stats.write_failed.store(false, Ordering::Relaxed);
        tracing::error!(error = %cause, file = %self.path.display(), "audit log poisoned: appends fail until reopened");
        if let Err(e) = self
            .file
            .set_len(self.durable)
            .and_then(|()| self.file.sync_data())
        {
            tracing::warn!(error = %e, file = %self.path.display(), "audit log: could not cut unsynced bytes");
        }
        self.poisoned = Some(cause.to_string());
        self.stats.poisoned.store(true, Ordering::Relaxed);
    }

    pub(super) fn fail(
        &self,
        reply: oneshot::Sender<Result<Appended, AuditError>>,
        error: AuditError,
    ) {
        self.stats.failed_appends.fetch_add(1, Ordering::Relaxed);
        let _ = reply.send(Err(error));
    }
}
