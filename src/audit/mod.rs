//! The tamper-evident, durable audit log of money-moving operations (cancellations, and
//! captures or refunds when configured).
//!
//! In the flow it sits right before forwarding: the gateway appends an [`Intent`] and forwards
//! only once [`AuditLog::append`] has returned (the record is on disk), then appends an
//! [`Outcome`] with the final answer. Any append error means "refuse with 503" (fail closed).
//!
//! - [`record`]: the explicit fields, canonical bytes and hash of one record;
//! - [`chain`]: the link rule between records, [`verify`], and the errors naming file and line;
//! - [`checkpoint`]: signed checkpoints (keys, signature input, when one is due) and anchors;
//! - [`trust`]: [`verify_with`], which also checks signatures, the unsigned tail and anchors;
//! - [`files`]: active and rotated file names and their chain order ([`log_files`]);
//! - `writer`: recovery at open and the group-commit writer thread;
//! - [`body`]: pulling the audited fields out of request and response bodies.
//!
//! The format, the hash definition and the durability rules are written up in `docs/audit.md`.

pub mod body;
pub mod chain;
pub mod checkpoint;
pub mod files;
mod health;
mod open;
pub mod record;
mod reopen;
mod stats;
pub mod trust;
mod writer;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, watch};

pub use body::{ratepay_cancellation_id, CancellationFields};
pub use chain::{verify, Fault, VerifyError, VerifySummary};
pub use checkpoint::{Anchor, CheckpointConfig, PublicKey, SigningKey};
pub use files::{chains, log_files, rotated_path, DEFAULT_FILE_NAME};
pub use health::PROBE_INTERVAL;
pub use open::{AttemptCounter, OpenIntent, CUT_OFF, SHUT_DOWN};
pub use record::{
    AuditEntry, AuditRecord, Intent, LineFault, Outcome, OutcomeKind, RecordKind, Start, Stop,
    GENESIS,
};
pub use reopen::{Recovery, TruncatedTail};
pub use stats::AuditStats;
pub use trust::{verify_with, Report, Runs, Signatures, VerifyOptions};

use stats::StatsCells;
use writer::Job;

/// Appends that may wait for the writer before `append` itself waits (back-pressure).
const QUEUE_DEPTH: usize = 4096;

/// Where the UTC timestamps of records come from; see [`AuditLog::open_with_clock`].
pub type Clock = Arc<dyn Fn() -> OffsetDateTime + Send + Sync>;

/// The latest durable checkpoint, as the writer announces it.
pub(crate) type Latest = watch::Sender<Option<Arc<Anchor>>>;

/// The instance name without `[cluster]` (with it, `cluster.instance`).
pub const DEFAULT_INSTANCE: &str = "gateway";

/// Settings of one audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// The active file, e.g. `/var/lib/ratepay-gateway/audit.jsonl`. Its directory must exist;
    /// rotated files are written next to it.
    pub path: PathBuf,
    /// Rotate before a record would make the active file larger than this many bytes.
    pub rotate_bytes: Option<u64>,
    /// Rotate before the first record of a new UTC day.
    pub rotate_daily: bool,
    /// The writing gateway, named in checkpoints, starts and stops.
    pub instance: String,
    /// Signed checkpoints; `None`: none are written.
    pub checkpoints: Option<CheckpointConfig>,
    /// `Some(delay)`: an outcome ([`OpenIntent::finish`]) is answered once it is written to the
    /// file (so a crash of the process keeps it) and made durable by the next sync, which an
    /// intent's append brings, or at most `delay` later. `None`: every record is synced before
    /// its append returns. Intents and every other record are always synced first.
    pub outcome_sync_delay: Option<Duration>,
}

impl AuditConfig {
    /// A log at `path` that never rotates and writes no checkpoints.
    pub fn new(path: impl Into<PathBuf>) -> AuditConfig {
        AuditConfig {
            path: path.into(),
            rotate_bytes: None,
            rotate_daily: false,
            instance: DEFAULT_INSTANCE.to_owned(),
            checkpoints: None,
            outcome_sync_delay: None,
        }
    }
}

/// Where an appended record landed in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The record's seq (an outcome's `intent_seq` for an intent).
    pub seq: u64,
    /// The record's hash (the new head of the chain).
    pub hash: String,
}

/// Why the log could not be opened or a record could not be made durable. Every variant
/// means the same to the request path: do not forward, answer 503.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    /// The configuration cannot work (no file name, zero rotation size).
    #[error("invalid audit log configuration: {0}")]
    Config(String),
    /// The directory or active file cannot be listed, read, created or cut.
    #[error("cannot open audit log {}: {source}", path.display())]
    Open {
        /// The path that failed.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// Another process holds the log's lock.
    #[error("audit log {} is locked by another process", path.display())]
    Locked {
        /// The active file.
        path: PathBuf,
    },
    /// The existing chain is broken: open refuses to continue it.
    #[error("audit log is damaged, refusing to continue its chain: {0}")]
    Corrupt(Arc<VerifyError>),
    /// Writing the record failed (e.g. disk full); also the answer to every append refused
    /// after such a failure until a later write and sync succeed.
    #[error("cannot write audit log {}: {source}", path.display())]
    Write {
        /// The active file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// Syncing failed: the records of this batch are not durable.
    #[error("cannot sync audit log {}: {source}", path.display())]
    Sync {
        /// The active file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// Rotating to a new file failed.
    #[error("cannot rotate audit log {}: {source}", path.display())]
    Rotate {
        /// The active file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// An earlier sync or rotation failed; the log refuses appends until reopened.
    #[error("audit log is out of service after an earlier failure ({cause}); reopen it")]
    Poisoned {
        /// The first failure.
        cause: String,
    },
    /// A record could not be serialised.
    #[error("cannot encode audit record: {0}")]
    Encode(String),
    /// The log was closed (or its writer is gone).
    #[error("audit log is closed")]
    Closed,
}

impl From<VerifyError> for AuditError {
    fn from(e: VerifyError) -> Self {
        AuditError::Corrupt(Arc::new(e))
    }
}

/// A handle to an open audit log; cheap to clone, all clones share one writer.
///
/// Dropping the last handle lets the writer finish what is queued and stop; call
/// [`close`](AuditLog::close) to wait for that.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

struct Inner {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    done: watch::Receiver<bool>,
    stats: Arc<StatsCells>,
    /// Intents begun whose outcome is not written yet ([`AuditLog::begin`]).
    open: open::Registry,
    /// The latest durable checkpoint.
    latest: watch::Receiver<Option<Arc<Anchor>>>,
    /// Named in the stop record.
    instance: String,
    /// Outcomes are answered once written, not synced ([`AuditConfig::outcome_sync_delay`]).
    outcomes_written: bool,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("stats", &self.stats())
            .finish()
    }
}

impl AuditLog {
    /// Opens (or creates) the log, recovers its state and starts the writer.
    ///
    /// Verifies every file of the log (see [`log_files`]), cuts a torn last line left by a
    /// crash, and returns the intents that have no outcome. Fails if the directory is missing,
    /// the chain is broken, or another process has the log open.
    pub async fn open(config: AuditConfig) -> Result<(AuditLog, Recovery), AuditError> {
        AuditLog::open_with_clock(config, writer::system_clock()).await
    }

    /// [`open`](AuditLog::open) with timestamps (and day changes for rotation) from `clock`.
    pub async fn open_with_clock(
        config: AuditConfig,
        clock: Clock,
    ) -> Result<(AuditLog, Recovery), AuditError> {
        let stats = Arc::new(StatsCells::default());
        let stats_for_open = Arc::clone(&stats);
        let (latest_tx, latest) = watch::channel(None);
        let ticking = config.checkpoints.is_some();
        let instance = config.instance.clone();
        let outcome_sync_delay = config.outcome_sync_delay;
        // Scanning reads whole files: keep it off the async workers.
        let opened = tokio::task::spawn_blocking(move || {
            reopen::open_blocking(&config, clock, stats_for_open, latest_tx)
        })
        .await
        .map_err(|e| AuditError::Open {
            path: PathBuf::new(),
            source: Arc::new(std::io::Error::other(e.to_string())),
        })?;
        let (mut writer, recovery, last_checkpoint) = opened?;
        writer.latest.send_replace(last_checkpoint.map(Arc::new));
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        writer.flusher = outcome_sync_delay.map(|delay| writer::Flusher {
            runtime: tokio::runtime::Handle::current(),
            tx: tx.downgrade(),
            delay,
            armed: false,
        });
        if ticking {
            spawn_ticker(tx.downgrade());
        }
        let (done_tx, done_rx) = watch::channel(false);
        // Woken per append, so it must never preempt a request (see `crate::sched`).
        let (_thread, policy) =
            crate::sched::spawn_background("audit-writer", move || writer.run(rx, done_tx))
                .map_err(|e| AuditError::Open {
                    path: PathBuf::new(),
                    source: Arc::new(e),
                })?;
        if let Err(e) = policy {
            tracing::debug!(error = %e, "audit writer's scheduling not changed as asked");
        }
        let log = AuditLog {
            inner: Arc::new(Inner {
                tx: Mutex::new(Some(tx)),
                done: done_rx,
                stats,
                open: open::Registry::default(),
                latest,
                instance,
                outcomes_written: outcome_sync_delay.is_some(),
            }),
        };
        Ok((log, recovery))
    }

    /// Appends a record and returns once it is on disk (written and `fdatasync`ed, possibly in
    /// one sync with other appends). An error means the record is not durable.
    ///
    /// If this future is dropped after the record was queued, the record is still written.
    pub async fn append(&self, entry: AuditEntry) -> Result<Appended, AuditError> {
        self.send(entry, true).await
    }

    /// Appends an outcome: returns once it is synced, or once it is written if the log was
    /// opened with an [`AuditConfig::outcome_sync_delay`].
    async fn append_outcome(&self, outcome: Outcome) -> Result<Appended, AuditError> {
        let sync = !self.inner.outcomes_written;
        self.send(AuditEntry::Outcome(outcome), sync).await
    }

    async fn send(&self, entry: AuditEntry, sync: bool) -> Result<Appended, AuditError> {
        let tx = {
            let guard = self.inner.tx.lock().unwrap_or_else(|p| p.into_inner());
            guard.clone().ok_or(AuditError::Closed)?
        };
        let (reply, answer) = oneshot::channel();
        tx.send(Job::Append { entry, reply, sync })
            .await
            .map_err(|_| AuditError::Closed)?;
        drop(tx);
        answer.await.map_err(|_| AuditError::Closed)?
    }

    /// The log's counters; a few atomic loads.
    pub fn stats(&self) -> AuditStats {
        self.inner.stats.snapshot()
    }

    /// Queues `outcome` without waiting for it (from a `Drop`, which cannot wait): written like
    /// any append if the writer still runs; if the queue is full, sent from a task.
    fn append_detached(&self, outcome: Outcome) {
        let Some(tx) = self
            .inner
            .tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            tracing::error!("audit log closed; an outcome could not be written");
            return;
        };
        let (reply, _ignored) = oneshot::channel();
        let (entry, sync) = (AuditEntry::Outcome(outcome), !self.inner.outcomes_written);
        match tx.try_send(Job::Append { entry, reply, sync }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(job)) => {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        let _ = tx.send(job).await;
                    });
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!("audit writer stopped; an outcome could not be written");
            }
        }
    }

    /// The latest durable checkpoint (from this run, or the last one in the files at open).
    pub fn latest_checkpoint(&self) -> Option<Arc<Anchor>> {
        self.inner.latest.borrow().clone()
    }

    /// Changes of [`latest_checkpoint`](AuditLog::latest_checkpoint), to wait for one.
    pub fn checkpoints(&self) -> watch::Receiver<Option<Arc<Anchor>>> {
        self.inner.latest.clone()
    }

    /// Writes an `unknown` outcome for every intent still open (see [`AuditLog::begin`]), then
    /// stops accepting appends, waits until everything queued is written and synced (and, with
    /// checkpoints, signed by a last checkpoint), and stops the writer. Appends after this fail
    /// with [`AuditError::Closed`].
    pub async fn close(&self) {
        self.close_with(None).await;
    }

    /// [`close`](AuditLog::close) for a clean stop of the gateway: a `stop` record (this
    /// `version`) is the last record before the final checkpoint.
    pub async fn close_cleanly(&self, version: &str) {
        self.close_with(Some(Stop {
            instance: self.inner.instance.clone(),
            version: version.to_owned(),
        }))
        .await;
    }

    async fn close_with(&self, stop: Option<Stop>) {
        for outcome in self.inner.open.settle_all(SHUT_DOWN) {
            if let Err(e) = self.append(AuditEntry::Outcome(outcome)).await {
                tracing::error!(error = %e, "audit outcome at shutdown not written");
            }
        }
        if let Some(stop) = stop {
            if let Err(e) = self.append(AuditEntry::Stop(stop)).await {
                tracing::error!(error = %e, "audit stop record not written");
            }
        }
        drop(
            self.inner
                .tx
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        let mut done = self.inner.done.clone();
        // An error means the writer is gone already, which is what we wait for.
        let _ = done.wait_for(|finished| *finished).await;
    }
}

/// Asks the writer every [`writer::TICK`] whether a checkpoint is due, until the log closes.
/// Holds only a weak sender, so it never keeps the writer alive.
fn spawn_ticker(tx: mpsc::WeakSender<Job>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        let mut every = tokio::time::interval(writer::TICK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let Some(tx) = tx.upgrade() else {
                return;
            };
            // A full queue: skip this tick, the next one asks again.
            if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(Job::Tick) {
                return;
            }
        }
    });
}
