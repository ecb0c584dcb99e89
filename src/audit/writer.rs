//! The writer: the one thread that appends records, rotates files and syncs them (group
//! commit). Opening an existing log is in `reopen.rs`, the counters in `stats.rs`, refusing and
//! poisoning after failures in `health.rs`.
//!
//! Only this thread touches the active file after open, so seq/prev assignment, rotation and
//! the durable length need no locks. Callers talk to it through a bounded channel and each
//! waits on a oneshot for its own answer: after the sync of its batch, or, for an append that
//! asked only to be written (an outcome, see `AuditConfig::outcome_sync_delay`), after the
//! write, its sync coming with the next batch that syncs or from the flush timer.
//!
//! Health: a failed *write* (ENOSPC, EFBIG, EIO) cuts the file back to the end of the last
//! complete write (and syncs that) and refuses appends until a later batch, tried at most every
//! [`PROBE_INTERVAL`](super::PROBE_INTERVAL), is written and synced; a failed *sync* or rotation poisons the log
//! for good (see [`Writer::poison`]).

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    path::PathBuf,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use time::{Date, OffsetDateTime, UtcOffset};
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    checkpoint::{checkpoint_record, Anchor, CheckpointConfig, Due},
    files::rotated_path,
    record::{build_record, encode, format_ts, AuditEntry, RecordKind, GENESIS},
    Appended, AuditError, Clock, Latest,
};

use super::{health::WriteFailure, reopen::*, stats::*};

/// Appends of the batch being built, each answered once its bytes are written (and synced, if
/// it asked for that: the `bool`).
type Waiting = Vec<(
    oneshot::Sender<Result<Appended, AuditError>>,
    Appended,
    bool,
)>;

/// Most records taken into one batch; bounds the memory and latency of one write + sync.
const MAX_BATCH: usize = 1024;

/// What the writer is asked to do.
// Ticks are rare and tiny; boxing every append instead would cost an allocation per record.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Job {
    /// One append waiting for the writer.
    Append {
        entry: AuditEntry,
        reply: oneshot::Sender<Result<Appended, AuditError>>,
        /// Answer only once the record is synced; `false`: once it is written (in the page
        /// cache, so a crash of the process keeps it), synced by a later batch's sync or by the
        /// flush at most [`Flusher::delay`] later.
        sync: bool,
    },
    /// The checkpoint timer: write a checkpoint if one is due.
    Tick,
    /// The flush timer: sync whatever is written and not yet synced.
    Flush,
}

/// Arms the flush of written, unsynced records: after `delay` a [`Job::Flush`] is queued.
pub(crate) struct Flusher {
    pub(crate) runtime: tokio::runtime::Handle,
    /// Weak, so that a pending flush never keeps the writer alive after close.
    pub(crate) tx: mpsc::WeakSender<Job>,
    pub(crate) delay: Duration,
    /// A flush is queued or on its way (only the writer thread reads and writes it).
    pub(crate) armed: bool,
}

/// Takes what is queued into `batch`, up to [`MAX_BATCH`] jobs.
fn drain(rx: &mut mpsc::Receiver<Job>, batch: &mut Vec<Job>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
}

/// How often the checkpoint timer asks the writer whether a checkpoint is due.
pub(crate) const TICK: Duration = Duration::from_secs(1);

/// The writer's state: owned by the writer thread after open.
pub(crate) struct Writer {
    pub(super) path: PathBuf,
    pub(super) dir: PathBuf,
    pub(super) file: File,
    /// Bytes in the active file, synced or not.
    pub(super) written: u64,
    /// Bytes of the active file known to be on disk (synced); at most `written`.
    pub(super) durable: u64,
    /// Records written since the last sync (counted in the stats once synced).
    pub(super) unsynced_records: u64,
    /// Seq and UTC day of the active file's first record (`None` while it is empty).
    pub(super) file_first: Option<(u64, Date)>,
    pub(super) last_seq: u64,
    pub(super) last_hash: String,
    pub(super) rotate_bytes: Option<u64>,
    pub(super) rotate_daily: bool,
    pub(super) clock: Clock,
    pub(super) stats: Arc<StatsCells>,
    /// The chain head and first record of the active file as of `written` (the end of the last
    /// complete write): where the chain continues after a failed write.
    pub(super) written_head: WrittenHead,
    /// Set by a failed write; cleared when a later batch is written and synced.
    pub(super) write_failed: Option<WriteFailure>,
    /// The batch being built is the probe after a failed write.
    pub(super) probing: bool,
    /// Set by the first sync/rotation failure; see `poison`.
    pub(super) poisoned: Option<String>,
    /// Named in checkpoints.
    pub(super) instance: String,
    /// `None`: no checkpoints (a log opened without them, as the unit tests do).
    pub(super) checkpoints: Option<CheckpointConfig>,
    /// Records since the last checkpoint and its time.
    pub(super) due: Due,
    /// Bytes kept free in the active file for the checkpoint that rotation appends.
    pub(super) checkpoint_reserve: u64,
    /// The latest record time: no record gets an earlier `ts`, whatever the clock does.
    pub(super) last_at: OffsetDateTime,
    /// A checkpoint of the batch being written, announced once it is durable.
    pub(super) unpublished: Option<Anchor>,
    /// Where durable checkpoints are announced.
    pub(super) latest: Latest,
    /// Syncs records that were answered once written; `None`: every append waits for its sync.
    pub(super) flusher: Option<Flusher>,
}

/// What the chain looked like at the end of the last complete write.
#[derive(Clone)]
pub(super) struct WrittenHead {
    pub(super) seq: u64,
    pub(super) hash: String,
    pub(super) file_first: Option<(u64, Date)>,
    /// Records since the last checkpoint, as of that length.
    pub(super) pending: u64,
}

impl Writer {
    /// The writer thread's loop: take everything queued, write it, sync once, answer everyone.
    /// Returns when every handle is gone (or closed) and the queue is drained.
    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Job>, done: watch::Sender<bool>) {
        let mut batch = Vec::new();
        while let Some(job) = rx.blocking_recv() {
            batch.push(job);
            drain(&mut rx, &mut batch);
            // Give the CPU up once before writing: whatever the request threads are about to
            // append joins this batch and its sync. On an idle core this returns at once; on a
            // busy one (this thread is `SCHED_BATCH`, see `crate::sched`) the request thread runs
            // on until it waits. Load benchmark, pinned to one core, POST cancellations at
            // saturation: 17.7 → 32.4 records per `fdatasync`, CPU per request −8.5 % (paired
            // slices), the same p50 at 2000 req/s.
            std::thread::yield_now();
            drain(&mut rx, &mut batch);
            self.process(&mut batch);
        }
        // A clean close (or the last handle gone): sign what the last checkpoint does not cover,
        // and sync whatever was answered once written.
        if self.poisoned.is_none() && self.write_failed.is_none() {
            let now = (self.clock)().to_offset(UtcOffset::UTC);
            let mut buf = Vec::new();
            self.push_checkpoint(&mut buf, now);
            self.commit(&mut buf, &mut Vec::new(), now, true);
        }
        // Release the file (and its lock) before saying "done": `close` promises that the log
        // can be reopened right away.
        drop(self);
        let _ = done.send(true);
    }

    fn process(&mut self, batch: &mut Vec<Job>) {
        let mut buf = Vec::new();
        let mut waiting: Waiting = Vec::new();
        // A flush asked for a sync of this batch even if no append in it needs one.
        let mut flush = false;
        for job in batch.drain(..) {
            let now = (self.clock)().to_offset(UtcOffset::UTC);
            let (entry, reply, sync) = match job {
                Job::Append { entry, reply, sync } => (entry, reply, sync),
                Job::Flush => {
                    if let Some(f) = &mut self.flusher {
                        f.armed = false;
                    }
                    flush = true;
                    continue;
                }
                Job::Tick => {
                    // A failing log stays as it is until an append probes it.
                    let healthy = self.poisoned.is_none() && self.write_failed.is_none();
                    if healthy
                        && self
                            .checkpoints
                            .as_ref()
                            .is_some_and(|c| self.due.due(c, now))
                    {
                        self.push_checkpoint(&mut buf, now);
                    }
                    continue;
                }
            };
            if let Some(refusal) = self.refusal(now) {
                self.fail(reply, refusal);
                continue;
            }
            // Record time never goes back: a clock stepped back repeats the last time.
            let at = now.max(self.last_at);
            let mut record = build_record(entry, self.last_seq + 1, &self.last_hash, at);
            let mut encoded = match encode(&record) {
                Ok(e) => e,
                Err(e) => {
                    self.fail(reply, AuditError::Encode(e.to_string()));
                    continue;
                }
            };
            if self.should_rotate(buf.len() as u64, encoded.line.len() as u64, now.date()) {
                // The old file ends with a checkpoint of what it holds.
                self.push_checkpoint(&mut buf, at);
                // The old file must be complete and durable before it gets its final name.
                self.commit(&mut buf, &mut waiting, now, true);
                // A probe may rotate: the cut left the file at its durable length.
                if self.poisoned.is_none() && (self.write_failed.is_none() || self.probing) {
                    if let Err(e) = self.rotate() {
                        self.poison(AuditError::Rotate {
                            path: self.path.clone(),
                            source: Arc::new(e),
                        });
                    }
                }
                if let Some(refusal) = self.refusal(now) {
                    self.fail(reply, refusal);
                    continue;
                }
                if record.seq != self.last_seq + 1 || record.prev != self.last_hash {
                    // Link to where the chain is now: after the checkpoint just written, or back
                    // at the last durable record if the commit failed.
                    record.seq = self.last_seq + 1;
                    record.prev = self.last_hash.clone();
                    encoded = match encode(&record) {
                        Ok(e) => e,
                        Err(e) => {
                            self.fail(reply, AuditError::Encode(e.to_string()));
                            continue;
                        }
                    };
                }
            }
            if self.file_first.is_none() {
                self.file_first = Some((record.seq, now.date()));
            }
            buf.extend_from_slice(&encoded.line);
            self.last_seq = record.seq;
            self.last_hash = encoded.hash.clone();
            self.last_at = at;
            waiting.push((
                reply,
                Appended {
                    seq: record.seq,
                    hash: encoded.hash,
                },
                sync,
            ));
            if let Some(every) = self.checkpoints.as_ref().map(|c| c.every_records) {
                self.due.pending += 1;
                // A start is signed at once, so that even a run that audits nothing is on
                // record before the log goes quiet.
                if record.kind == RecordKind::Start || self.due.pending >= every {
                    self.push_checkpoint(&mut buf, at);
                }
            }
        }
        let now = (self.clock)().to_offset(UtcOffset::UTC);
        self.commit(&mut buf, &mut waiting, now, flush);
    }

    /// Appends a checkpoint of the records since the last one to `buf` (nothing if there are
    /// none or checkpoints are off). It is announced once `commit` made it durable.
    fn push_checkpoint(&mut self, buf: &mut Vec<u8>, now: OffsetDateTime) {
        let Some(config) = &self.checkpoints else {
            return;
        };
        if self.due.pending == 0 {
            return;
        }
        let at = now.max(self.last_at);
        let seq = self.last_seq + 1;
        let built = checkpoint_record(
            seq,
            &self.last_hash,
            format_ts(at),
            &self.instance,
            self.due.pending,
            config.every_records,
            config.signing_key.as_ref(),
        )
        .and_then(|r| encode(&r).map(|e| (r, e)));
        let (record, encoded) = match built {
            Ok(x) => x,
            Err(e) => {
                // Cannot happen with these field types; the records stay unsigned until the next.
                tracing::error!(error = %e, "audit checkpoint could not be encoded");
                return;
            }
        };
        if self.file_first.is_none() {
            self.file_first = Some((seq, now.date()));
        }
        buf.extend_from_slice(&encoded.line);
        self.last_seq = seq;
        self.last_hash = encoded.hash.clone();
        self.last_at = at;
        self.due = Due {
            pending: 0,
            since: now,
        };
        self.unpublished = Some(Anchor::of(&record, &encoded.hash));
    }

    /// Logs and publishes the checkpoint of a durable batch: the structured log line is the
    /// anchor the log shipper carries off the machine.
    fn publish_checkpoint(&mut self) {
        let Some(anchor) = self.unpublished.take() else {
            return;
        };
        tracing::info!(
            seq = anchor.seq,
            hash = %anchor.hash,
            prev = anchor.prev.as_deref(),
            ts = anchor.ts.as_deref(),
            instance = anchor.instance.as_deref(),
            key_id = anchor.key_id.as_deref(),
            sig = anchor.sig.as_deref(),
            "audit checkpoint"
        );
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.stats
            .last_checkpoint_seq
            .store(anchor.seq, Ordering::Relaxed);
        self.latest.send_replace(Some(Arc::new(anchor)));
    }

    fn should_rotate(&self, buffered: u64, line: u64, today: Date) -> bool {
        let size = self.written + buffered;
        if size == 0 {
            // Never rotate an empty file: a record larger than `rotate_bytes` gets a file alone.
            return false;
        }
        // Room is kept for the checkpoint that closes the file.
        let too_big = self
            .rotate_bytes
            .is_some_and(|max| size + line + self.checkpoint_reserve > max);
        let new_day = self.rotate_daily && self.file_first.is_some_and(|(_, day)| day != today);
        too_big || new_day
    }

    /// Writes `buf` and answers everyone in `waiting`: after one sync if any of them asked for
    /// it, a checkpoint is to be announced, the batch is a probe or `force` says so; otherwise
    /// once written, arming the flush that syncs it soon.
    fn commit(
        &mut self,
        buf: &mut Vec<u8>,
        waiting: &mut Waiting,
        now: OffsetDateTime,
        force: bool,
    ) {
        if waiting.is_empty() && buf.is_empty() {
            // Nothing new: at most a sync of what was answered once written, and not on a
            // failing log, which touches the disk only when an append probes it.
            let healthy = self.poisoned.is_none() && self.write_failed.is_none();
            if !(force && healthy && self.written > self.durable) {
                return;
            }
        }
        let sync = force
            || self.flusher.is_none()
            || self.probing
            || self.unpublished.is_some()
            || waiting.iter().any(|(_, _, sync)| *sync);
        let result = self.write(buf).and_then(|()| {
            // The batch is written: a failed write from here on cuts back to this point.
            self.unsynced_records += self.last_seq.saturating_sub(self.written_head.seq);
            self.written_head = WrittenHead {
                seq: self.last_seq,
                hash: self.last_hash.clone(),
                file_first: self.file_first,
                pending: self.due.pending,
            };
            if sync {
                self.sync()
            } else {
                Ok(())
            }
        });
        buf.clear();
        match result {
            Ok(()) if sync => {
                if self.probing {
                    self.recovered();
                }
                self.publish_checkpoint();
            }
            Ok(()) => self.arm_flush(),
            Err(e) => {
                self.unpublished = None;
                match e {
                    AuditError::Write { .. } => self.write_failed(e.clone(), now),
                    _ => self.poison(e.clone()),
                }
                for (reply, _, _) in waiting.drain(..) {
                    self.fail(reply, e.clone());
                }
                return;
            }
        }
        for (reply, appended, _) in waiting.drain(..) {
            let _ = reply.send(Ok(appended));
        }
    }

    /// Queues a [`Job::Flush`] after the flusher's delay, unless one is on its way already.
    fn arm_flush(&mut self) {
        let Some(f) = &mut self.flusher else {
            return;
        };
        if f.armed || self.written == self.durable {
            return;
        }
        f.armed = true;
        let (tx, delay) = (f.tx.clone(), f.delay);
        f.runtime.spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(tx) = tx.upgrade() {
                // Waits for room: a full queue must not lose the flush.
                let _ = tx.send(Job::Flush).await;
            }
        });
    }

    fn write(&mut self, buf: &[u8]) -> Result<(), AuditError> {
        self.file.write_all(buf).map_err(|e| AuditError::Write {
            path: self.path.clone(),
            source: Arc::new(e),
        })?;
        self.written += buf.len() as u64;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), AuditError> {
        let started = Instant::now();
        self.file.sync_data().map_err(|e| AuditError::Sync {
            path: self.path.clone(),
            source: Arc::new(e),
        })?;
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        self.stats.sync_nanos_last.store(nanos, Ordering::Relaxed);
        self.stats
            .sync_nanos_total
            .fetch_add(nanos, Ordering::Relaxed);
        self.synced();
        Ok(())
    }

    /// Everything written is on disk now: counted as records and as the durable head.
    pub(super) fn synced(&mut self) {
        self.durable = self.written;
        self.stats.records.fetch_add(
            std::mem::take(&mut self.unsynced_records),
            Ordering::Relaxed,
        );
        self.stats
            .last_seq
            .store(self.written_head.seq, Ordering::Relaxed);
    }

    /// Renames the (synced) active file to its rotated name and starts a new active file.
    /// A crash between the rename and the create leaves no active file; open then continues
    /// the chain from the last rotated file.
    fn rotate(&mut self) -> io::Result<()> {
        let Some((first_seq, _)) = self.file_first else {
            return Ok(());
        };
        let target = rotated_path(&self.path, first_seq)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
        // rename(2) would silently replace an existing file: refuse instead.
        if target.exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} already exists", target.display()),
            ));
        }
        std::fs::rename(&self.path, &target)?;
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&self.path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "new active file is locked",
                ))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        sync_dir(&self.dir)?;
        self.file = file;
        self.written = 0;
        self.durable = 0;
        self.file_first = None;
        self.written_head.file_first = None;
        self.stats.rotations.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// The longest line a checkpoint of `instance` can take: what rotation keeps free for it.
pub(super) fn max_checkpoint_line(instance: &str) -> u64 {
    let longest = checkpoint_record(
        u64::MAX,
        GENESIS,
        format_ts(OffsetDateTime::now_utc()),
        instance,
        u64::MAX,
        u64::MAX,
        None,
    )
    .map(|r| super::record::AuditRecord {
        // A key id and an Ed25519 signature in hex have fixed lengths.
        key_id: Some("0".repeat(16)),
        sig: Some("0".repeat(128)),
        ..r
    });
    longest
        .ok()
        .and_then(|r| encode(&r).ok())
        // Cannot fail; a generous bound if it ever did.
        .map_or(1024 + instance.len() as u64 * 6, |e| e.line.len() as u64)
}

/// The system clock: the one place timestamps come from unless a test injects another.
pub(crate) fn system_clock() -> Clock {
    Arc::new(OffsetDateTime::now_utc)
}
