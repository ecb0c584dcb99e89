//! The writer: recovery of an existing log at open, and the one thread that appends records,
//! rotates files and syncs them (group commit).
//!
//! Only this thread touches the active file after open, so seq/prev assignment, rotation and
//! the durable length need no locks. Callers talk to it through a bounded channel and each
//! waits on a oneshot for its own answer.

use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use time::{Date, OffsetDateTime, UtcOffset};
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    chain::{scan_file, Chain, Tail},
    files::{log_files, parent_dir, rotated_path},
    record::{build_record, encode, parse_ts, AuditEntry, AuditRecord, RecordKind, GENESIS},
    Appended, AuditConfig, AuditError, Clock,
};

/// Most records taken into one batch; bounds the memory and latency of one write + sync.
const MAX_BATCH: usize = 1024;

/// One append waiting for the writer.
pub(crate) struct Job {
    pub entry: AuditEntry,
    pub reply: oneshot::Sender<Result<Appended, AuditError>>,
}

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
    /// True once a write or sync failed: every append fails until the log is reopened.
    pub poisoned: bool,
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
        }
    }
}

/// A partial last line that open cut away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruncatedTail {
    /// The file that had it.
    pub path: PathBuf,
    /// Length the file was cut to (end of its last complete record).
    pub kept_bytes: u64,
    /// Bytes removed.
    pub removed_bytes: u64,
}

/// What open found in the existing log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recovery {
    /// Intent records with no outcome record (by `intent_seq`), in seq order: the gateway
    /// should settle each with Ratepay and append an outcome.
    pub open_intents: Vec<AuditRecord>,
    /// A torn last line (crash during a write) that was cut away, if any.
    pub truncated: Option<TruncatedTail>,
    /// Records found in all files.
    pub records: u64,
    /// Seq of the last record (0 for a new log).
    pub last_seq: u64,
    /// Hash of the last record ([`GENESIS`] for a new log).
    pub head: String,
}

/// The writer's state: owned by the writer thread after open.
pub(crate) struct Writer {
    path: PathBuf,
    dir: PathBuf,
    file: File,
    /// Bytes in the active file, synced or not.
    written: u64,
    /// Bytes of the active file known to be on disk.
    durable: u64,
    /// Seq and UTC day of the active file's first record (`None` while it is empty).
    file_first: Option<(u64, Date)>,
    last_seq: u64,
    last_hash: String,
    rotate_bytes: Option<u64>,
    rotate_daily: bool,
    clock: Clock,
    stats: Arc<StatsCells>,
    /// Set by the first write/sync failure; see `poison`.
    poisoned: Option<String>,
}

fn open_err(path: &Path) -> impl FnOnce(io::Error) -> AuditError + '_ {
    move |source| AuditError::Open {
        path: path.to_owned(),
        source: Arc::new(source),
    }
}

/// Makes directory entries (a created or renamed file) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Scans the existing log, cuts a torn tail, opens (or creates) the active file and locks it.
pub(crate) fn open_blocking(
    config: &AuditConfig,
    clock: Clock,
    stats: Arc<StatsCells>,
) -> Result<(Writer, Recovery), AuditError> {
    let path = config.path.clone();
    if path.file_name().is_none() || rotated_path(&path, 1).is_none() {
        return Err(AuditError::Config(format!(
            "audit log path {} needs a UTF-8 file name",
            path.display()
        )));
    }
    if config.rotate_bytes == Some(0) {
        return Err(AuditError::Config("rotate_bytes must be > 0".into()));
    }
    let dir = parent_dir(&path);
    // Listing the directory fails clearly when it is missing or not a directory.
    let files = log_files(&path).map_err(open_err(&path))?;

    let mut chain = Chain::default();
    let mut intents: BTreeMap<u64, AuditRecord> = BTreeMap::new();
    let mut records = 0u64;
    let mut truncated = None;
    let mut active_first: Option<AuditRecord> = None;
    let mut previous: Option<&Path> = None;
    for (i, file) in files.iter().enumerate() {
        // Only the last file can hold a torn write: every earlier one was synced before
        // rotation. A partial line anywhere else is damage, and open refuses to go on.
        let last = i + 1 == files.len();
        let tail = if last { Tail::Tolerant } else { Tail::Strict };
        let scan = scan_file(file, &mut chain, previous, tail, &mut |r| match r.kind {
            RecordKind::Intent => {
                intents.insert(r.seq, r.clone());
            }
            RecordKind::Outcome => {
                if let Some(seq) = r.intent_seq {
                    intents.remove(&seq);
                }
            }
        })?;
        records += scan.records;
        if scan.torn_bytes > 0 {
            cut_tail(file, scan.good_len).map_err(open_err(file))?;
            tracing::warn!(
                file = %file.display(),
                kept_bytes = scan.good_len,
                removed_bytes = scan.torn_bytes,
                "audit log: cut a torn last line left by a crash"
            );
            truncated = Some(TruncatedTail {
                path: file.clone(),
                kept_bytes: scan.good_len,
                removed_bytes: scan.torn_bytes,
            });
        }
        if *file == path {
            active_first = scan.first;
        }
        previous = Some(file);
    }

    let existed = path.exists();
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(open_err(&path))?;
    lock(&file, &path)?;
    if !existed {
        sync_dir(&dir).map_err(open_err(&dir))?;
    }
    let written = file.metadata().map_err(open_err(&path))?.len();

    let (last_seq, last_hash) = match chain.last() {
        Some((seq, hash)) => (seq, hash.to_owned()),
        None => (0, GENESIS.to_owned()),
    };
    stats.last_seq.store(last_seq, Ordering::Relaxed);
    // A first record whose ts cannot be read gets today's date: daily rotation then waits for
    // the next day change rather than rotating a file it cannot date.
    let file_first = active_first.map(|r| {
        let day = parse_ts(&r.ts)
            .unwrap_or_else(|| (clock)())
            .to_offset(UtcOffset::UTC)
            .date();
        (r.seq, day)
    });
    let recovery = Recovery {
        open_intents: intents.into_values().collect(),
        truncated,
        records,
        last_seq,
        head: last_hash.clone(),
    };
    let writer = Writer {
        path,
        dir,
        file,
        written,
        durable: written,
        file_first,
        last_seq,
        last_hash,
        rotate_bytes: config.rotate_bytes,
        rotate_daily: config.rotate_daily,
        clock,
        stats,
        poisoned: None,
    };
    Ok((writer, recovery))
}

/// Cuts `path` to `len` bytes and syncs, so the chain continues after the last whole record.
fn cut_tail(path: &Path, len: u64) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(len)?;
    file.sync_all()
}

/// Takes an exclusive advisory lock so that a second process cannot fork the chain.
fn lock(file: &File, path: &Path) -> Result<(), AuditError> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(AuditError::Locked {
            path: path.to_owned(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(AuditError::Open {
            path: path.to_owned(),
            source: Arc::new(e),
        }),
    }
}

/// Appends waiting to be answered once their bytes are synced.
type Waiting = Vec<(oneshot::Sender<Result<Appended, AuditError>>, Appended)>;

impl Writer {
    /// The writer thread's loop: take everything queued, write it, sync once, answer everyone.
    /// Returns when every handle is gone (or closed) and the queue is drained.
    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Job>, done: watch::Sender<bool>) {
        let mut batch = Vec::new();
        while let Some(job) = rx.blocking_recv() {
            batch.push(job);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.process(&mut batch);
        }
        // Release the file (and its lock) before saying "done": `close` promises that the log
        // can be reopened right away.
        drop(self);
        let _ = done.send(true);
    }

    fn process(&mut self, batch: &mut Vec<Job>) {
        let mut buf = Vec::new();
        let mut waiting: Waiting = Vec::new();
        for job in batch.drain(..) {
            if let Some(cause) = &self.poisoned {
                self.fail(
                    job.reply,
                    AuditError::Poisoned {
                        cause: cause.clone(),
                    },
                );
                continue;
            }
            let now = (self.clock)().to_offset(UtcOffset::UTC);
            let record = build_record(job.entry, self.last_seq + 1, &self.last_hash, now);
            let encoded = match encode(&record) {
                Ok(e) => e,
                Err(e) => {
                    self.fail(job.reply, AuditError::Encode(e.to_string()));
                    continue;
                }
            };
            if self.should_rotate(buf.len() as u64, encoded.line.len() as u64, now.date()) {
                // The old file must be complete and durable before it gets its final name.
                self.commit(&mut buf, &mut waiting);
                if self.poisoned.is_none() {
                    if let Err(e) = self.rotate() {
                        self.poison(AuditError::Rotate {
                            path: self.path.clone(),
                            source: Arc::new(e),
                        });
                    }
                }
                if let Some(cause) = &self.poisoned {
                    self.fail(
                        job.reply,
                        AuditError::Poisoned {
                            cause: cause.clone(),
                        },
                    );
                    continue;
                }
            }
            if self.file_first.is_none() {
                self.file_first = Some((record.seq, now.date()));
            }
            buf.extend_from_slice(&encoded.line);
            self.last_seq = record.seq;
            self.last_hash = encoded.hash.clone();
            waiting.push((
                job.reply,
                Appended {
                    seq: record.seq,
                    hash: encoded.hash,
                },
            ));
        }
        self.commit(&mut buf, &mut waiting);
    }

    fn should_rotate(&self, buffered: u64, line: u64, today: Date) -> bool {
        let size = self.written + buffered;
        if size == 0 {
            // Never rotate an empty file: a record larger than `rotate_bytes` gets a file alone.
            return false;
        }
        let too_big = self.rotate_bytes.is_some_and(|max| size + line > max);
        let new_day = self.rotate_daily && self.file_first.is_some_and(|(_, day)| day != today);
        too_big || new_day
    }

    /// Writes `buf`, syncs once and answers everyone in `waiting`.
    fn commit(&mut self, buf: &mut Vec<u8>, waiting: &mut Waiting) {
        if waiting.is_empty() {
            return;
        }
        let result = self.write_and_sync(buf);
        buf.clear();
        match result {
            Ok(()) => {
                self.stats
                    .records
                    .fetch_add(waiting.len() as u64, Ordering::Relaxed);
                self.stats.last_seq.store(self.last_seq, Ordering::Relaxed);
                for (reply, appended) in waiting.drain(..) {
                    let _ = reply.send(Ok(appended));
                }
            }
            Err(e) => {
                self.poison(e.clone());
                for (reply, _) in waiting.drain(..) {
                    self.fail(reply, e.clone());
                }
            }
        }
    }

    fn write_and_sync(&mut self, buf: &[u8]) -> Result<(), AuditError> {
        let path = &self.path;
        self.file.write_all(buf).map_err(|e| AuditError::Write {
            path: path.clone(),
            source: Arc::new(e),
        })?;
        self.written += buf.len() as u64;
        let started = Instant::now();
        self.file.sync_data().map_err(|e| AuditError::Sync {
            path: path.clone(),
            source: Arc::new(e),
        })?;
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        self.stats.sync_nanos_last.store(nanos, Ordering::Relaxed);
        self.stats
            .sync_nanos_total
            .fetch_add(nanos, Ordering::Relaxed);
        self.durable = self.written;
        Ok(())
    }

    /// After a failed write or sync nothing past `durable` can be trusted: on Linux a failed
    /// fsync may drop the dirty pages and report the error only once, so a retry would
    /// "succeed" without the data ("fsyncgate"). The writer therefore fails those appends,
    /// cuts the file back to the last synced length (best effort, so a reopen does not
    /// continue from records whose appends failed) and refuses every later append until the
    /// log is reopened, when recovery re-reads what really is in the file.
    fn poison(&mut self, cause: AuditError) {
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

    fn fail(&self, reply: oneshot::Sender<Result<Appended, AuditError>>, error: AuditError) {
        self.stats.failed_appends.fetch_add(1, Ordering::Relaxed);
        let _ = reply.send(Err(error));
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
        self.stats.rotations.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// The system clock: the one place timestamps come from unless a test injects another.
pub(crate) fn system_clock() -> Clock {
    Arc::new(OffsetDateTime::now_utc)
}
