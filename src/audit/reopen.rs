//! Opening an existing log: the files are scanned and verified, a torn last record (a crash
//! mid-write) is cut away, the chain's head and the intents still open are found, and the
//! active file is locked; also the file-length helpers the writer uses after a failed write.

use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    io,
    path::{Path, PathBuf},
    sync::{atomic::Ordering, Arc},
};

use time::UtcOffset;

use super::{
    chain::{scan_file, Chain, Tail},
    checkpoint::{Anchor, Due},
    files::{log_files, parent_dir, rotated_path},
    record::{parse_ts, AuditRecord, RecordKind, GENESIS},
    AuditConfig, AuditError, Clock, Latest,
};

use super::{stats::*, writer::*};

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

pub(super) fn open_err(path: &Path) -> impl FnOnce(io::Error) -> AuditError + '_ {
    move |source| AuditError::Open {
        path: path.to_owned(),
        source: Arc::new(source),
    }
}

/// Makes directory entries (a created or renamed file) durable.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The writer, what open found, and the last checkpoint in the files (if any).
pub(crate) type Opened = (Writer, Recovery, Option<Anchor>);

/// Scans the existing log, cuts a torn tail, opens (or creates) the active file and locks it.
/// `latest` is where the writer publishes each durable checkpoint.
pub(crate) fn open_blocking(
    config: &AuditConfig,
    clock: Clock,
    stats: Arc<StatsCells>,
    latest: Latest,
) -> Result<Opened, AuditError> {
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
    if config
        .checkpoints
        .as_ref()
        .is_some_and(|c| c.every_records == 0 || c.every.is_zero())
    {
        return Err(AuditError::Config(
            "checkpoints need every_records > 0 and a non-zero interval".into(),
        ));
    }
    let dir = parent_dir(&path);
    // Listing the directory fails clearly when it is missing or not a directory.
    let files = log_files(&path).map_err(open_err(&path))?;

    let mut chain = Chain::default();
    let mut intents: BTreeMap<u64, AuditRecord> = BTreeMap::new();
    let mut records = 0u64;
    let mut truncated = None;
    let mut active_first: Option<AuditRecord> = None;
    let mut last_checkpoint: Option<Anchor> = None;
    let mut last_ts: Option<String> = None;
    let mut first_seq: Option<u64> = None;
    let mut previous: Option<&Path> = None;
    for (i, file) in files.iter().enumerate() {
        // Only the last file can hold a torn write: every earlier one was synced before
        // rotation. A partial line anywhere else is damage, and open refuses to go on.
        let last = i + 1 == files.len();
        let tail = if last { Tail::Tolerant } else { Tail::Strict };
        let scan = scan_file(file, &mut chain, previous, tail, &mut |r, hash, _| {
            match r.kind {
                RecordKind::Intent => {
                    intents.insert(r.seq, r.clone());
                }
                RecordKind::Outcome => {
                    if let Some(seq) = r.intent_seq {
                        intents.remove(&seq);
                    }
                }
                RecordKind::Checkpoint => last_checkpoint = Some(Anchor::of(r, hash)),
                RecordKind::Start | RecordKind::Stop => {}
            }
            last_ts = Some(r.ts.clone());
            Ok(())
        })?;
        records += scan.records;
        if first_seq.is_none() {
            first_seq = scan.first.as_ref().map(|r| r.seq);
        }
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
    // Records not yet covered by a checkpoint: since the last one, or since the first record
    // of the files (older ones archived) when there is none.
    let covered = match (&last_checkpoint, first_seq) {
        (Some(c), _) => c.seq,
        (None, Some(first)) => first - 1,
        (None, None) => last_seq,
    };
    let now = (clock)();
    // Timestamps never go back in the chain, even if the clock does.
    let last_at = last_ts.as_deref().and_then(parse_ts).unwrap_or(now);
    // A first record whose ts cannot be read gets today's date: daily rotation then waits for
    // the next day change rather than rotating a file it cannot date.
    let file_first = active_first.map(|r| {
        let day = parse_ts(&r.ts)
            .unwrap_or_else(|| (clock)())
            .to_offset(UtcOffset::UTC)
            .date();
        (r.seq, day)
    });
    if let Some(c) = &last_checkpoint {
        stats.last_checkpoint_seq.store(c.seq, Ordering::Relaxed);
    }
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
        unsynced_records: 0,
        file_first,
        last_seq,
        last_hash: last_hash.clone(),
        rotate_bytes: config.rotate_bytes,
        rotate_daily: config.rotate_daily,
        clock,
        stats,
        written_head: WrittenHead {
            seq: last_seq,
            hash: last_hash.clone(),
            file_first,
            pending: last_seq - covered,
        },
        write_failed: None,
        probing: false,
        poisoned: None,
        instance: config.instance.clone(),
        checkpoint_reserve: config
            .checkpoints
            .as_ref()
            .map_or(0, |_| max_checkpoint_line(&config.instance)),
        checkpoints: config.checkpoints.clone(),
        due: Due {
            pending: last_seq - covered,
            since: now,
        },
        last_at,
        unpublished: None,
        latest,
        flusher: None,
    };
    Ok((writer, recovery, last_checkpoint))
}

/// Why cutting the active file back failed.
pub(super) enum CutError {
    /// The truncate itself: nothing is known to have changed, so it may be retried.
    Truncate(io::Error),
    /// The sync after it: what the file holds is unknown.
    Sync(io::Error),
}

/// Cuts the open active file to `len` bytes and syncs the new length.
pub(super) fn cut_to(file: &File, len: u64) -> Result<(), CutError> {
    file.set_len(len).map_err(CutError::Truncate)?;
    file.sync_all().map_err(CutError::Sync)
}

/// Cuts `path` to `len` bytes and syncs, so the chain continues after the last whole record.
pub(super) fn cut_tail(path: &Path, len: u64) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(len)?;
    file.sync_all()
}

/// Takes an exclusive advisory lock so that a second process cannot fork the chain.
pub(super) fn lock(file: &File, path: &Path) -> Result<(), AuditError> {
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
