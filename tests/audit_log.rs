//! Integration tests of the audit log: real files in temporary directories, the writer thread,
//! recovery, rotation, verification and tampering; and through the gateway (sandbox + gateway
//! over loopback): which operations are audited, a failed fsync refusing cancellations, and the
//! Python verifier of docs/audit.md run against a log the gateway wrote.

mod common;

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc,
    },
    time::Duration,
};

use ratepay_gateway::audit::{
    log_files, verify, Appended, AuditConfig, AuditEntry, AuditError, AuditLog, Clock, Fault,
    Intent, LineFault, Outcome, OutcomeKind, VerifyError, GENESIS, PROBE_INTERVAL,
};
use time::OffsetDateTime;

fn active(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("audit.jsonl")
}

/// Writes `n` intent records to a fresh log and closes it.
async fn write_log(path: &Path, n: u64) {
    let (log, _) = AuditLog::open(AuditConfig::new(path)).await.unwrap();
    for i in 1..=n {
        log.append(AuditEntry::Intent(intent(i))).await.unwrap();
    }
    log.close().await;
}

use common::{intent, lines, write_lines};

/// Asserts that verifying `paths` fails at `file:line` and returns the fault.
fn broken_at(paths: &[PathBuf], file: &Path, line: u64) -> Fault {
    match verify(paths) {
        Err(VerifyError::Broken {
            path,
            line: at,
            fault,
        }) => {
            assert_eq!(
                (path.as_path(), at),
                (file, line),
                "wrong place for {fault}"
            );
            fault
        }
        other => panic!(
            "expected a broken chain at {}:{line}, got {other:?}",
            file.display()
        ),
    }
}

#[tokio::test]
async fn intents_and_outcomes_verify_clean_and_reopen_continues() {
    let dir = tempfile::tempdir().unwrap();
    let path = active(&dir);
    let (log, recovery) = AuditLog::open(AuditConfig::new(&path)).await.unwrap();
    assert_eq!(recovery.last_seq, 0);
    assert_eq!(recovery.head, GENESIS);

    let i = intent(1);
    let first = log.append(AuditEntry::Intent(i.clone())).await.unwrap();
    assert_eq!(first.seq, 1);
    let mut o = i.outcome(first.seq, OutcomeKind::Success);
    o.status = Some(201);
    o.ratepay_cancellation_id = Some("aa7rth5-__GG44rdsasf".into());
    o.attempts = 1;
    o.latency_ms = 87;
    let second = log.append(AuditEntry::Outcome(o)).await.unwrap();
    assert_eq!(second.seq, 2);
    let stats = log.stats();
    assert_eq!(
        (stats.records_written, stats.last_seq, stats.poisoned),
        (2, 2, false)
    );
    assert_eq!(stats.syncs, 2, "one group commit per awaited append");
    log.close().await;
    assert!(matches!(
        log.append(AuditEntry::Intent(intent(9))).await,
        Err(AuditError::Closed)
    ));

    let text = lines(&path);
    assert_eq!(text.len(), 2);
    assert!(text[0].starts_with(r#"{"seq":1,"ts":""#));
    assert!(text[0].contains(r#""prev":"0000000000000000000000000000000000000000000000000000000000000000","kind":"intent""#));
    assert!(text[0].contains(r#""source":"10.1.2.3""#));
    assert!(text[0].contains(r#""gross_amount":"1.50""#));
    assert!(text[1].contains(&format!(r#""prev":"{}""#, first.hash)));
    assert!(text[1].contains(r#""intent_seq":1,"outcome":"success","status":201"#));
    assert!(text[1].ends_with(&format!(r#""hash":"{}"}}"#, second.hash)));
    // ts: RFC 3339, UTC, milliseconds.
    let ts = &text[0][15..39];
    assert_eq!(ts.len(), 24, "{ts}");
    assert!(ts.ends_with('Z') && ts.as_bytes()[19] == b'.', "{ts}");

    let summary = verify(&log_files(&path).unwrap()).unwrap();
    assert_eq!(
        (summary.records, summary.first_seq, summary.last_seq),
        (2, Some(1), Some(2))
    );
    assert_eq!(summary.head, second.hash);
    assert!(summary
        .to_string()
        .starts_with("ok: 2 records in 1 file(s), seq 1..2, head "));

    let (log, recovery) = AuditLog::open(AuditConfig::new(&path)).await.unwrap();
    assert_eq!((recovery.records, recovery.last_seq), (2, 2));
    assert_eq!(recovery.head, second.hash);
    assert!(recovery.open_intents.is_empty());
    assert!(recovery.truncated.is_none());
    assert_eq!(
        log.append(AuditEntry::Intent(intent(3))).await.unwrap().seq,
        3
    );
    log.close().await;
    assert_eq!(verify(&[&path]).unwrap().records, 3);
}

#[tokio::test]
async fn tampering_is_detected_at_the_right_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = active(&dir);
    write_log(&path, 5).await;
    let original = lines(&path);
    let paths = vec![path.clone()];

    // A changed gross_amount.
    let mut changed = original.clone();
    changed[2] = changed[2].replace(r#""gross_amount":"3.50""#, r#""gross_amount":"300.50""#);
    assert_ne!(changed, original);
    write_lines(&path, &changed);
    assert!(matches!(
        broken_at(&paths, &path, 3),
        Fault::Line(LineFault::HashMismatch { .. })
    ));

    // A deleted line.
    let mut deleted = original.clone();
    deleted.remove(2);
    write_lines(&path, &deleted);
    assert_eq!(
        broken_at(&paths, &path, 3),
        Fault::SeqGap {
            expected: 3,
            found: 4
        }
    );

    // Two swapped lines.
    let mut swapped = original.clone();
    swapped.swap(1, 2);
    write_lines(&path, &swapped);
    assert_eq!(
        broken_at(&paths, &path, 2),
        Fault::SeqGap {
            expected: 2,
            found: 3
        }
    );

    // A truncated tail (partial last line).
    write_lines(&path, &original);
    let len = fs::metadata(&path).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 40)
        .unwrap();
    assert!(matches!(
        broken_at(&paths, &path, 5),
        Fault::TornTail { .. }
    ));

    // A garbage line.
    let mut garbage = original.clone();
    garbage[3] = "this is not json".into();
    write_lines(&path, &garbage);
    let err = verify(&paths).unwrap_err();
    assert!(matches!(
        broken_at(&paths, &path, 4),
        Fault::Line(LineFault::NotJson(_))
    ));
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("{}:4: not JSON", path.display())),
        "{message}"
    );
    assert!(!message.contains('\n'));

    // A record whose hash was recomputed after the change still breaks the next link.
    let mut rehashed = original.clone();
    let body = rehashed[2]
        .split(",\"hash\"")
        .next()
        .unwrap()
        .replace("\"3.50\"", "\"0.01\"")
        + "}";
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body.as_bytes()));
    rehashed[2] = format!("{},\"hash\":\"{hash}\"}}", &body[..body.len() - 1]);
    write_lines(&path, &rehashed);
    assert_eq!(broken_at(&paths, &path, 4), Fault::PrevMismatch);

    // And the untouched log is fine.
    write_lines(&path, &original);
    assert_eq!(verify(&paths).unwrap().records, 5);
}

#[tokio::test]
async fn damaged_log_is_not_continued() {
    let dir = tempfile::tempdir().unwrap();
    let path = active(&dir);
    write_log(&path, 3).await;
    let mut text = lines(&path);
    text.remove(1);
    write_lines(&path, &text);
    match AuditLog::open(AuditConfig::new(&path)).await {
        Err(AuditError::Corrupt(e)) => assert_eq!(e.line(), Some(2)),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[tokio::test]
async fn size_rotation_continues_the_chain_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = active(&dir);
    let config = AuditConfig {
        path: path.clone(),
        rotate_bytes: Some(1200),
        ..AuditConfig::new(&path)
    };
    let (log, _) = AuditLog::open(config.clone()).await.unwrap();
    let mut last = None;
    for i in 1..=20 {
        last = Some(log.append(AuditEntry::Intent(intent(i))).await.unwrap());
    }
    let rotations = log.stats().rotations;
    log.close().await;
    assert!(rotations >= 3, "rotations: {rotations}");

    let files = log_files(&path).unwrap();
    assert_eq!(files.len() as u64, rotations + 1);
    assert_eq!(files.last().unwrap(), &path);
    assert_eq!(
        files[0],
        dir.path().join("audit-00000000000000000001.jsonl")
    );
    let mut names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    assert_eq!(names, files, "sorted names are chain order");
    for f in &files {
        assert!(
            fs::metadata(f).unwrap().len() <= 1200,
            "{} too big",
            f.display()
        );
    }
    // Each rotated file's name carries its first seq; the next file's first prev is its last hash.
    let second = lines(&files[1]);
    let first_seq: u64 = files[1].file_name().unwrap().to_str().unwrap()[6..26]
        .parse()
        .unwrap();
    assert!(second[0].starts_with(&format!(r#"{{"seq":{first_seq},"#)));
    let prev_last = lines(&files[0]).pop().unwrap();
    let prev_hash = &prev_last[prev_last.len() - 66..prev_last.len() - 2];
    assert!(second[0].contains(&format!(r#""prev":"{prev_hash}""#)));

    let summary = verify(&files).unwrap();
    assert_eq!((summary.records, summary.last_seq), (20, Some(20)));
    assert_eq!(summary.head, last.unwrap().hash);

    // A reopened log continues the chain in the existing set.
    let (log, recovery) = AuditLog::open(config).await.unwrap();
    assert_eq!(recovery.records, 20);
    log.append(AuditEntry::Intent(intent(21))).await.unwrap();
    log.close().await;
    let files = log_files(&path).unwrap();
    assert_eq!(verify(&files).unwrap().records, 21);

    // Out of order: the second given file does not continue the first.
    let mut misordered = files.clone();
    misordered.swap(1, 2);
    let fault = broken_at(&misordered, &misordered[1], 1);
    assert!(
        matches!(fault, Fault::BrokenLink { ref previous, .. } if previous == &misordered[0]),
        "{fault}"
    );

    // A missing middle file.
    let mut missing = files.clone();
    let gone = missing.remove(1);
    fs::remove_file(&gone).unwrap();
    let fault = broken_at(&missing, &missing[1], 1);
    assert!(matches!(fault, Fault::BrokenLink { .. }));
    assert!(fault.to_string().contains("file missing or out of order"));
    // log_files lists what is there; verify over it reports the same break.
    assert_eq!(log_files(&path).unwrap(), missing);
}

#[tokio::test]
async fn daily_rotation_uses_the_utc_day() {
    let dir = tempfile::tempdir().unwrap();
    let path = active(&dir);
    // 2025-11-21 23:59:59 UTC, then a second later.
    let now = Arc::new(AtomicI64::new(1_763_769_599));
    let clock_now = Arc::clone(&now);
    let clock = Arc::new(move || {
        OffsetDateTime::from_unix_timestamp(clock_now.load(Ordering::SeqCst)).unwrap()
    });
    let config = AuditConfig {
        path: path.clone(),
        rotate_daily: true,
        ..AuditConfig::new(&path)
    };
    let (log, _) = AuditLog::open_with_clock(config, clock).await.unwrap();
    log.append(AuditEntry::Intent(intent(1))).await.unwrap();
    log.append(AuditEntry::Intent(intent(2))).await.unwrap();
    now.fetch_add(1, Ordering::SeqCst);
    log.append(AuditEntry::Intent(intent(3))).await.unwrap();
    log.close().await;

    let files = log_files(&path).unwrap();
    assert_eq!(
        files,
        vec![
            dir.path().join("audit-00000000000000000001.jsonl"),
            path.clone()
        ]
    );
    assert!(lines(&files[0])[1].contains(r#""ts":"2025-11-21T23:59:59.000Z""#));
    assert!(lines(&files[1])[0].contains(r#""ts":"2025-11-22T00:00:00.000Z""#));
    assert_eq!(verify(&files).unwrap().records, 3);
}

#[tokio::test]
async fn concurrent_appends_share_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let path = active(&dir);
    let (log, _) = AuditLog::open(AuditConfig::new(&path)).await.unwrap();
    let appends = (1..=200).map(|i| {
        let log = log.clone();
        async move { log.append(AuditEntry::Intent(intent(i))).await }
    });
    let results = futures_util::future::join_all(appends).await;
    let mut seqs: Vec<u64> = results.into_iter().map(|r| r.unwrap().seq).collect();
    seqs.sort();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    let stats = log.stats();
    eprintln!(
        "200 appends: {} syncs, avg {:?}",
        stats.syncs, stats.avg_sync
    );
    assert_eq!(stats.records_written, 200);
    assert!(stats.syncs < 50, "200 appends took {} syncs", stats.syncs);
    assert!(stats.avg_sync > std::time::Duration::ZERO);
    log.close().await;
    let summary = verify(&[&path]).unwrap();
    assert_eq!((summary.records, summary.last_seq), (200, Some(200)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tasks_share_syncs_and_close_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let path = active(&dir);
    let (log, _) = AuditLog::open(AuditConfig::new(&path)).await.unwrap();
    let tasks: Vec<_> = (1..=200)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.append(AuditEntry::Intent(intent(i))).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let stats = log.stats();
    eprintln!(
        "200 appends: {} syncs, avg {:?}",
        stats.syncs, stats.avg_sync
    );
    assert_eq!(stats.records_written, 200);
    assert!(stats.syncs < 200, "200 appends took {} syncs", stats.syncs);
    log.close().await;
    assert_eq!(verify(&[&path]).unwrap().records, 200);
}

/// A log whose outcomes are answered once written, synced within `delay`.
fn written_outcomes(path: &Path, delay: Duration) -> AuditConfig {
    AuditConfig {
        outcome_sync_delay: Some(delay),
        ..AuditConfig::new(path)
    }
}

fn no_attempts() -> ratepay_gateway::audit::AttemptCounter {
    Arc::new(|| 1)
}

#[tokio::test]
async fn an_outcome_is_answered_once_written_and_synced_later() {
    let dir = tempfile::tempdir().unwrap();
    let path = active(&dir);
    // A delay far longer than the test: only the close syncs the outcome.
    let (log, _) = AuditLog::open(written_outcomes(&path, Duration::from_secs(1)))
        .await
        .unwrap();
    let (open, intent_at) = log.begin(intent(1), no_attempts()).await.unwrap();
    let synced = log.stats().syncs;
    assert_eq!((synced, log.stats().records_written), (1, 1));
    let outcome = open
        .finish(|o| o.outcome = OutcomeKind::Success)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.seq, intent_at.seq + 1);
    // Answered before any sync, yet in the file (a crash of the process keeps it).
    let stats = log.stats();
    assert_eq!(
        (stats.syncs, stats.records_written),
        (synced, 1),
        "{stats:?}"
    );
    let written = lines(&path);
    assert_eq!(written.len(), 2);
    assert!(written[1].contains(r#""kind":"outcome""#), "{}", written[1]);
    assert_eq!(verify(&[&path]).unwrap().head, outcome.hash);
    // An intent is still synced before its append returns, and its sync carries the outcome.
    log.append(AuditEntry::Intent(intent(2))).await.unwrap();
    let stats = log.stats();
    assert_eq!((stats.syncs, stats.records_written), (synced + 1, 3));
    // Close syncs what was only written.
    let (open, _) = log.begin(intent(3), no_attempts()).await.unwrap();
    open.finish(|_| {}).await.unwrap();
    let before_close = log.stats().syncs;
    log.close().await;
    let stats = log.stats();
    assert_eq!((stats.syncs, stats.records_written), (before_close + 1, 5));
    assert_eq!(verify(&[&path]).unwrap().records, 5);
}

#[tokio::test(start_paused = true)]
async fn the_flush_timer_syncs_a_written_outcome_within_the_delay() {
    let dir = tempfile::tempdir().unwrap();
    let path = active(&dir);
    let delay = Duration::from_millis(10);
    let (log, _) = AuditLog::open(written_outcomes(&path, delay))
        .await
        .unwrap();
    let (first, _) = log.begin(intent(1), no_attempts()).await.unwrap();
    let (second, _) = log.begin(intent(2), no_attempts()).await.unwrap();
    let synced = log.stats().syncs;
    first.finish(|_| {}).await.unwrap();
    // The paused clock runs past the delay: the flush is queued to the writer.
    tokio::time::sleep(delay * 5).await;
    // The writer takes its queue in order, so once this outcome is answered the flush queued
    // before it has been done (nothing else here syncs: no intent, no checkpoints).
    second.finish(|_| {}).await.unwrap();
    let stats = log.stats();
    assert!(stats.syncs > synced, "no flush within the delay: {stats:?}");
    assert!(stats.records_written >= 3, "{stats:?}");
    log.close().await;
    assert_eq!(verify(&[&path]).unwrap().records, 4);
}

#[tokio::test]
async fn open_fails_when_the_parent_is_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    fs::write(&file, b"x").unwrap();
    let err = AuditLog::open(AuditConfig::new(file.join("audit.jsonl")))
        .await
        .unwrap_err();
    match &err {
        AuditError::Open { source, .. } => assert_eq!(source.raw_os_error(), Some(20), "ENOTDIR"),
        other => panic!("expected Open, got {other:?}"),
    }
    assert!(err.to_string().contains("not-a-dir/audit.jsonl"), "{err}");

    let missing = AuditLog::open(AuditConfig::new(dir.path().join("nope/audit.jsonl"))).await;
    assert!(matches!(missing, Err(AuditError::Open { .. })));
}

#[tokio::test]
async fn a_full_disk_fails_the_append_and_keeps_refusing() {
    // /dev/full accepts open but every write fails with ENOSPC, and it cannot be cut back, so
    // the log never gets to probe: every append is refused with the write error.
    let (log, recovery) = AuditLog::open(AuditConfig::new("/dev/full")).await.unwrap();
    assert_eq!(recovery.last_seq, 0);
    for n in 1..=2 {
        expect_write_error(
            log.append(AuditEntry::Intent(intent(n))).await,
            libc::ENOSPC,
        );
    }
    let stats = log.stats();
    assert!(stats.write_failed && !stats.poisoned);
    assert_eq!(
        (
            stats.records_written,
            stats.failed_appends,
            stats.syncs,
            stats.write_errors
        ),
        (0, 2, 0, 1)
    );
    log.close().await;
}

fn expect_write_error(r: Result<Appended, AuditError>, errno: i32) {
    match r {
        Err(AuditError::Write { source, .. }) => assert_eq!(source.raw_os_error(), Some(errno)),
        other => panic!("expected a write error (errno {errno}), got {other:?}"),
    }
}

/// A clock for the log that moves only when the test says so (milliseconds since the epoch).
fn manual_clock() -> (Arc<AtomicI64>, Clock) {
    let now = Arc::new(AtomicI64::new(1_780_000_000_000));
    let read = Arc::clone(&now);
    let clock: Clock = Arc::new(move || {
        let ms = read.load(Ordering::SeqCst);
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap()
    });
    (now, clock)
}

fn advance(now: &AtomicI64, by: Duration) {
    now.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
}

/// An intent large enough (about 10 KB) to need new blocks whatever space the file's last
/// block has left, so that on a full disk its write fails part-way and leaves a torn tail.
fn big_intent(n: u64) -> Intent {
    Intent {
        request_id: format!("req-{n}-{}", "x".repeat(10_000)),
        ..intent(n)
    }
}

/// Write fails → appends refused with that error → room comes back → after the probe
/// interval the next append succeeds, continuing the chain from the last durable record, and
/// nothing whose append failed is in the log. `fill` must make the next large write fail with
/// `errno`; `free` must undo it.
async fn failed_write_then_recovery(
    path: &Path,
    mut fill: impl FnMut(),
    mut free: impl FnMut(),
    errno: i32,
) {
    let (now, clock) = manual_clock();
    // Outcomes answered once written: the failed write must keep the one written before it.
    let config = written_outcomes(path, Duration::from_secs(3600));
    let (log, _) = AuditLog::open_with_clock(config, clock).await.unwrap();
    for n in 1..=3 {
        log.append(AuditEntry::Intent(intent(n))).await.unwrap();
    }
    let (open, _) = log.begin(intent(4), no_attempts()).await.unwrap();
    open.finish(|_| {}).await.unwrap();
    let durable_len = fs::metadata(path).unwrap().len();
    let syncs = log.stats().syncs;

    fill();
    expect_write_error(log.append(AuditEntry::Intent(big_intent(4))).await, errno);
    let stats = log.stats();
    assert!(stats.write_failed && !stats.poisoned, "{stats:?}");
    assert_eq!((stats.write_errors, stats.recoveries), (1, 0));
    // The torn tail of the failed write is gone: the file ends after record 5, the outcome
    // that was answered once written (the cut synced it).
    assert_eq!(fs::metadata(path).unwrap().len(), durable_len);
    assert_eq!(log.stats().records_written, 5);
    // Within the probe interval appends are refused without touching the file.
    expect_write_error(log.append(AuditEntry::Intent(intent(5))).await, errno);
    // A probe on a still-full disk fails like the first write, and is no new failure.
    advance(&now, PROBE_INTERVAL);
    expect_write_error(log.append(AuditEntry::Intent(big_intent(6))).await, errno);
    assert_eq!(fs::metadata(path).unwrap().len(), durable_len);
    assert_eq!(log.stats().write_errors, 1);

    free();
    // Room is back, but the last attempt was just now: still refused.
    expect_write_error(log.append(AuditEntry::Intent(intent(7))).await, errno);
    advance(&now, PROBE_INTERVAL);
    let probe = log.append(AuditEntry::Intent(big_intent(8))).await.unwrap();
    assert_eq!(
        probe.seq, 6,
        "the chain continues from the last durable record"
    );
    let last = log.append(AuditEntry::Intent(intent(9))).await.unwrap();
    assert_eq!(last.seq, 7);
    let stats = log.stats();
    assert!(!stats.write_failed && !stats.poisoned, "{stats:?}");
    assert_eq!(
        (
            stats.write_errors,
            stats.recoveries,
            stats.records_written,
            stats.failed_appends
        ),
        (1, 1, 7, 4)
    );
    assert_eq!(stats.syncs, syncs + 2, "refused appends do not sync");
    log.close().await;

    let summary = verify(&log_files(path).unwrap()).unwrap();
    assert_eq!((summary.records, summary.last_seq), (7, Some(7)));
    assert_eq!(summary.head, last.hash);
    let ids: Vec<String> = lines(path)
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let id = v["request_id"].as_str().unwrap();
            id.split('-').take(2).collect::<Vec<_>>().join("-")
        })
        .collect();
    assert_eq!(
        ids,
        ["req-1", "req-2", "req-3", "req-4", "req-4", "req-8", "req-9"]
    );
    let (log, recovery) = AuditLog::open(AuditConfig::new(path)).await.unwrap();
    assert_eq!((recovery.last_seq, recovery.head), (7, last.hash));
    assert!(recovery.truncated.is_none());
    log.close().await;
}

/// A tmpfs of its own, lazily unmounted on drop (even if the test fails half-way).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` bytes, or `None` where mounting is not permitted (not root,
    /// no CAP_SYS_ADMIN, no `mount`).
    fn mount(size: u64) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs ({}): run as root to test ENOSPC recovery",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount ({e}): run as root to test ENOSPC recovery");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_refuses_appends_until_space_is_back() {
    let Some(fs) = Tmpfs::mount(1 << 20) else {
        return;
    };
    let path = fs.dir.path().join("audit.jsonl");
    let ballast = fs.dir.path().join("ballast");
    let fill = || {
        // Take every free block: write until the file system says ENOSPC.
        let mut f = fs::File::create(&ballast).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        let err = loop {
            if let Err(e) = f.write_all(&chunk) {
                break e;
            }
        };
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    };
    let free = || fs::remove_file(&ballast).unwrap();
    failed_write_then_recovery(&path, fill, free, libc::ENOSPC).await;
}

const FSIZE_CHILD: &str = "AUDIT_LOG_FSIZE_CHILD";

/// The same story with the file size limit (EFBIG) instead of a full disk: runs everywhere,
/// no privileges needed. The limit is per process, so the test runs itself in a child.
#[test]
fn a_file_size_limit_refuses_appends_until_it_is_lifted() {
    let name = "a_file_size_limit_refuses_appends_until_it_is_lifted";
    if std::env::var_os(FSIZE_CHILD).is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--nocapture", "--test-threads=1"])
            .env(FSIZE_CHILD, "1")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "child failed:\n{text}");
        assert!(text.contains("1 passed"), "child ran no test:\n{text}");
        return;
    }
    // SAFETY: plain libc calls on this process only; ignoring SIGXFSZ turns the signal into
    // the EFBIG error the writer must handle.
    let original = unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let mut limit: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut limit), 0);
        limit
    };
    let dir = tempfile::tempdir().unwrap();
    let path = active(&dir);
    let set = |cur: libc::rlim_t| {
        let limit = libc::rlimit {
            rlim_cur: cur,
            rlim_max: original.rlim_max,
        };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &limit) }, 0);
    };
    // Room for a few bytes more than the log holds: the next large write is torn.
    let fill = || set(fs::metadata(&path).unwrap().len() + 100);
    let free = || set(original.rlim_cur);
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(failed_write_then_recovery(&path, fill, free, libc::EFBIG));
}

/// `/dev/null` can be locked by one audit log at a time (the log `flock`s its file), so the
/// tests that open it take turns.
static DEV_NULL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn a_failed_sync_keeps_refusing_even_when_writes_work_again() {
    let _dev_null = DEV_NULL.lock().await;
    // /dev/null takes every write, but fdatasync on it fails (EINVAL): a real sync error.
    let (now, clock) = manual_clock();
    let (log, _) = AuditLog::open_with_clock(AuditConfig::new("/dev/null"), clock)
        .await
        .unwrap();
    match log.append(AuditEntry::Intent(intent(1))).await {
        Err(AuditError::Sync { source, .. }) => {
            assert_eq!(source.raw_os_error(), Some(libc::EINVAL))
        }
        other => panic!("expected a sync error, got {other:?}"),
    }
    // Writes would succeed, and the probe interval passes: still nothing is accepted, since
    // after a failed fsync the log cannot know what reached the disk.
    for n in 2..=4 {
        advance(&now, PROBE_INTERVAL * 2);
        assert!(matches!(
            log.append(AuditEntry::Intent(intent(n))).await,
            Err(AuditError::Poisoned { .. })
        ));
    }
    let stats = log.stats();
    assert!(stats.poisoned && !stats.write_failed, "{stats:?}");
    assert_eq!(
        (
            stats.records_written,
            stats.failed_appends,
            stats.syncs,
            stats.write_errors,
            stats.recoveries
        ),
        (0, 4, 0, 0, 0)
    );
    log.close().await;
}

#[tokio::test]
async fn a_second_writer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = active(&dir);
    let (log, _) = AuditLog::open(AuditConfig::new(&path)).await.unwrap();
    assert!(matches!(
        AuditLog::open(AuditConfig::new(&path)).await,
        Err(AuditError::Locked { .. })
    ));
    log.close().await;
    let (again, _) = AuditLog::open(AuditConfig::new(&path)).await.unwrap();
    again.close().await;
}

#[tokio::test]
async fn open_reports_intents_without_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let path = active(&dir);
    let (log, _) = AuditLog::open(AuditConfig::new(&path)).await.unwrap();
    let a = log.append(AuditEntry::Intent(intent(1))).await.unwrap();
    let b = log.append(AuditEntry::Intent(intent(2))).await.unwrap();
    log.append(AuditEntry::Outcome(
        intent(1).outcome(a.seq, OutcomeKind::Failure),
    ))
    .await
    .unwrap();
    log.close().await;

    let (log, recovery) = AuditLog::open(AuditConfig::new(&path)).await.unwrap();
    assert_eq!(recovery.open_intents.len(), 1);
    let open = &recovery.open_intents[0];
    assert_eq!(
        (open.seq, open.request_id.as_deref().unwrap()),
        (b.seq, "req-2")
    );
    assert_eq!(open.gross_amount.as_deref(), Some("2.50"));
    // The gateway settles it with a normal append; then nothing is open.
    let settle = Outcome::for_open_intent(open, OutcomeKind::Unknown).unwrap();
    log.append(AuditEntry::Outcome(settle)).await.unwrap();
    log.close().await;
    let (log, recovery) = AuditLog::open(AuditConfig::new(&path)).await.unwrap();
    assert!(recovery.open_intents.is_empty());
    log.close().await;
}

#[tokio::test]
async fn a_torn_last_line_is_cut_and_the_chain_continues() {
    let dir = tempfile::tempdir().unwrap();
    let path = active(&dir);
    write_log(&path, 3).await;
    let good_len = fs::metadata(&path).unwrap().len();
    // A crash in the middle of writing record 4.
    let mut torn = fs::read(&path).unwrap();
    torn.extend_from_slice(br#"{"seq":4,"ts":"2025-11-21T08:4"#);
    fs::write(&path, &torn).unwrap();
    assert!(matches!(
        verify(&[&path]).unwrap_err().fault(),
        Some(Fault::TornTail { .. })
    ));

    let (log, recovery) = AuditLog::open(AuditConfig::new(&path)).await.unwrap();
    let cut = recovery.truncated.expect("torn tail reported");
    assert_eq!(
        (cut.path.as_path(), cut.kept_bytes),
        (path.as_path(), good_len)
    );
    assert_eq!(cut.removed_bytes, torn.len() as u64 - good_len);
    assert_eq!(recovery.last_seq, 3);
    // The intents written before the crash have no outcome.
    assert_eq!(recovery.open_intents.len(), 3);
    assert_eq!(
        log.append(AuditEntry::Intent(intent(4))).await.unwrap().seq,
        4
    );
    log.close().await;
    assert_eq!(verify(&[&path]).unwrap().records, 4);
}

#[tokio::test]
async fn a_crash_between_rename_and_create_is_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let path = active(&dir);
    write_log(&path, 2).await;
    // What rotation leaves behind if it dies right after the rename.
    fs::rename(&path, dir.path().join("audit-00000000000000000001.jsonl")).unwrap();
    let (log, recovery) = AuditLog::open(AuditConfig::new(&path)).await.unwrap();
    assert_eq!(recovery.last_seq, 2);
    assert_eq!(
        log.append(AuditEntry::Intent(intent(3))).await.unwrap().seq,
        3
    );
    log.close().await;
    let files = log_files(&path).unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(verify(&files).unwrap().records, 3);
}

#[test]
fn verify_needs_files() {
    assert!(matches!(verify::<PathBuf>(&[]), Err(VerifyError::NoFiles)));
    let err = verify(&[PathBuf::from("/nonexistent/audit.jsonl")]).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/nonexistent/audit.jsonl: cannot read"),
        "{err}"
    );
}

// ---- Through the gateway ----

use common::{keys, metric, problem, python_verifier, run_python, tx_path, Harness, Options};
const CANCEL_OP: &str = "payment.cancellations.create";

/// A capture of 40.00 and a refund of 15.50 on a fresh transaction through `h`; both 201.
async fn capture_and_refund(h: &Harness) -> String {
    let tx = h.authorize(keys::FULL, None, 100.0).await;
    let r = h
        .post_json(
            &tx_path(&tx, "captures"),
            keys::FULL,
            r#"{"gross_amount": 40.00, "partner_operation_id": "cap-1"}"#,
        )
        .await;
    assert_eq!(r.status(), 201);
    let r = h
        .post_json(
            &tx_path(&tx, "refunds"),
            keys::FULL,
            r#"{"gross_amount": 15.50, "partner_operation_id": "ref-1"}"#,
        )
        .await;
    assert_eq!(r.status(), 201);
    tx
}

#[tokio::test]
async fn captures_and_refunds_are_audited_when_audit_operations_lists_them_and_only_then() {
    let listed = Harness::with(Options {
        audit_toml: r#"operations = ["payment.cancellations.create", "payment.captures.create", "payment.refunds.create"]"#.into(),
        ..Options::default()
    })
    .await;
    let tx = capture_and_refund(&listed).await;
    let records = listed.audit_records();
    let summary: Vec<_> = records
        .iter()
        .map(|r| {
            (
                r["seq"].as_u64().unwrap(),
                r["kind"].as_str().unwrap(),
                r["operation"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            // After the start record (seq 1) and the checkpoint signing it (seq 2).
            (3, "intent", "payment.captures.create"),
            (4, "outcome", "payment.captures.create"),
            (5, "intent", "payment.refunds.create"),
            (6, "outcome", "payment.refunds.create"),
        ]
    );
    for (intent, outcome, amount, op_id) in [
        (&records[0], &records[1], "40.00", "cap-1"),
        (&records[2], &records[3], "15.50", "ref-1"),
    ] {
        assert_eq!(intent["ratepay_transaction_id"], tx.as_str());
        assert_eq!(intent["caller"], "full");
        assert_eq!(intent["gross_amount"], amount, "the exact decimal text");
        assert_eq!(intent["partner_operation_id"], op_id);
        assert_eq!(outcome["intent_seq"], intent["seq"]);
        assert_eq!(outcome["outcome"], "success");
        assert_eq!(outcome["status"], 201);
        assert_eq!(outcome["attempts"], 1);
    }
    assert_eq!(
        verify(&log_files(listed.audit_path()).unwrap())
            .unwrap()
            .records,
        6
    );
    listed.stop().await;

    // Not listed (the default is cancellations only): captures and refunds write nothing,
    // while a cancellation on the same gateway is still audited.
    let default = Harness::start().await;
    let tx = capture_and_refund(&default).await;
    assert!(default.audit_records().is_empty());
    let r = default
        .post_json(
            &tx_path(&tx, "cancellations"),
            keys::FULL,
            r#"{"gross_amount": 1}"#,
        )
        .await;
    assert_eq!(r.status(), 201);
    let ops: Vec<_> = default
        .audit_records()
        .iter()
        .map(|r| r["operation"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ops, [CANCEL_OP, CANCEL_OP]);
    default.stop().await;
}

/// The configuration text with the audit log at `path`.
fn audit_at(text: String, path: &str) -> String {
    let mut found = false;
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("path = \"") && l.ends_with("audit.jsonl\"") {
                found = true;
                format!("path = \"{path}\"")
            } else {
                l.to_owned()
            }
        })
        .collect();
    assert!(found, "the test configuration has an audit path");
    out.join("\n")
}

#[tokio::test]
async fn a_failed_fsync_refuses_cancellations_with_503_until_restart() {
    let _dev_null = DEV_NULL.lock().await;
    // /dev/null takes the write of the intent, and its fdatasync fails (EINVAL).
    let h = Harness::with_edited(Options::default(), |t| audit_at(t, "/dev/null")).await;
    let tx = h.authorize(keys::FULL, None, 100.0).await;
    let r = h
        .post_json(
            &tx_path(&tx, "cancellations"),
            keys::FULL,
            r#"{"gross_amount": 1}"#,
        )
        .await;
    let first = problem(r, 503).await;
    assert_eq!(
        first["type"],
        "https://ratepay-gateway.dev/problems/audit-unavailable"
    );
    let detail = first["detail"].as_str().unwrap();
    assert!(
        detail.contains("cannot sync audit log /dev/null"),
        "{detail}"
    );
    // Poisoned: the next cancellation is refused too, although writing would work.
    let r = h
        .post_json(
            &tx_path(&tx, "cancellations"),
            keys::FULL,
            r#"{"gross_amount": 2}"#,
        )
        .await;
    let second = problem(r, 503).await;
    let detail = second["detail"].as_str().unwrap();
    assert!(
        detail.contains("out of service after an earlier failure"),
        "{detail}"
    );
    assert_eq!(h.op_count(CANCEL_OP).await, 0, "nothing was forwarded");

    let text = h.scrape_metrics().await;
    let m = |name: &str| metric(&text, &format!("ratepay_gateway_{name}"));
    assert_eq!(m("audit_poisoned"), Some(1.0), "{text}");
    assert_eq!(
        m("audit_write_failed"),
        Some(0.0),
        "a sync failure, not a write failure"
    );
    assert_eq!(
        m("audit_failures_total"),
        Some(3.0),
        "the start record and both refused calls"
    );
    assert_eq!(m("audit_records_total"), Some(0.0));
    assert_eq!(
        m("audit_syncs_total"),
        Some(0.0),
        "the failed sync is not counted"
    );
    assert_eq!(m("audit_last_sync_seconds"), Some(0.0));
    // Reads are not audited and keep working.
    let r = h
        .req(
            reqwest::Method::GET,
            &format!("{}/{tx}", common::TX_PATH),
            keys::FULL,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    h.stop().await;
}

#[tokio::test]
async fn the_python_verifier_in_docs_accepts_a_gateway_log_and_rejects_a_tampered_one() {
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: python3 is not installed; the documented Python verifier was not run");
        return;
    }
    let code = python_verifier();
    // A real log from the gateway, rotated into several files.
    let h = Harness::with(Options {
        audit_toml: "rotate_bytes = 4096".into(),
        ..Options::default()
    })
    .await;
    let tx = h.authorize(keys::FULL, None, 100.0).await;
    for i in 0..8 {
        let body = format!(r#"{{"gross_amount": 1.25, "partner_operation_id": "op-{i}"}}"#);
        let r = h
            .post_json(&tx_path(&tx, "cancellations"), keys::FULL, &body)
            .await;
        assert_eq!(r.status(), 201);
    }
    // Every record is synced before its answer; the gateway stays up, idle, until the end.
    let files = log_files(h.audit_path()).unwrap();
    assert!(files.len() >= 3, "rotated: {files:?}");
    let rust = verify(&files).unwrap();
    // 16 audited records, the start, and the checkpoints after it and closing each rotated file.
    assert_eq!(rust.records, 18 + files.len() as u64 - 1, "{rust}");

    let (ok, stdout, stderr) = run_python(&code, &files);
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout,
        format!(
            "ok: {n} records, last seq {n}, head {}\n",
            rust.head,
            n = rust.records
        ),
        "the same count and head as the Rust verifier"
    );

    let rejects = |changed: &Path, text: String, expected: &str| {
        let original = fs::read_to_string(changed).unwrap();
        assert_ne!(original, text, "the tampering changed the file");
        fs::write(changed, &text).unwrap();
        let (ok, _, stderr) = run_python(&code, &files);
        let rust = verify(&files).unwrap_err().to_string();
        fs::write(changed, original).unwrap();
        assert!(!ok, "tampered log accepted");
        assert_eq!(stderr, format!("{}\n", expected));
        // The Rust verifier names the same place.
        let place = expected.rsplit_once(": ").unwrap().0;
        assert!(
            rust.starts_with(&format!("{place}: ")),
            "{rust} vs {expected}"
        );
    };
    // A changed amount in the first intent of the second file.
    let second = &files[1];
    let mut lines = self::lines(second);
    let at = lines
        .iter()
        .position(|l| l.contains("\"gross_amount\":\"1.25\""))
        .expect("an intent in the second file");
    lines[at] = lines[at].replacen("\"gross_amount\":\"1.25\"", "\"gross_amount\":\"0.25\"", 1);
    rejects(
        second,
        lines.iter().map(|l| format!("{l}\n")).collect(),
        &format!("{}:{}: hash mismatch", second.display(), at + 1),
    );
    // A record removed from the first file.
    let first = &files[0];
    let mut lines = self::lines(first);
    lines.remove(1);
    rejects(
        first,
        lines.iter().map(|l| format!("{l}\n")).collect(),
        &format!("{}:2: broken link", first.display()),
    );
    // The untouched log still verifies.
    assert!(run_python(&code, &files).0);
    h.stop().await;
}

/// The outcome records of `path`, as (intent_seq, outcome, error) in file order.
fn outcomes(path: &Path) -> Vec<(u64, String, Option<String>)> {
    lines(path)
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == "outcome")
        .map(|r| {
            (
                r["intent_seq"].as_u64().unwrap(),
                r["outcome"].as_str().unwrap().to_owned(),
                r["error"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// Issue 13, defect 11: every intent gets exactly one outcome on every path. A call that
/// finishes writes its own; a call whose future is dropped (a caller hanging up, a cancelled
/// task) or unwound by a panic gets `unknown` with [`CUT_OFF`] from its guard; an intent still
/// open when the log closes gets `unknown` with [`SHUT_DOWN`], and finishing it afterwards
/// writes nothing more.
#[tokio::test]
async fn every_intent_gets_one_outcome_on_every_path() {
    use futures_util::FutureExt;
    use ratepay_gateway::audit::{CUT_OFF, SHUT_DOWN};

    let dir = tempfile::tempdir().unwrap();
    let path = active(&dir);
    let (log, _) = AuditLog::open(AuditConfig::new(&path)).await.unwrap();
    let attempts: ratepay_gateway::audit::AttemptCounter = Arc::new(|| 2);

    // Finished: the call's own outcome.
    let (open, a) = log.begin(intent(1), attempts.clone()).await.unwrap();
    let written = open
        .finish(|o| {
            o.outcome = OutcomeKind::Success;
            o.status = Some(201);
        })
        .await
        .unwrap();
    assert!(written.is_some());
    assert_eq!(a.seq, 1);

    // Dropped mid-call: the guard settles it.
    let dropped = {
        let log = log.clone();
        let attempts = attempts.clone();
        async move {
            let (_open, a) = log.begin(intent(2), attempts).await.unwrap();
            // Never finishes: the future is dropped here, as hyper drops a hung-up request.
            std::future::pending::<()>().await;
            a.seq
        }
    };
    assert!(
        tokio::time::timeout(Duration::from_millis(200), dropped)
            .await
            .is_err(),
        "the call never finishes"
    );

    // Unwound by a panic: the guard settles it and the panic goes on.
    let panicked = std::panic::AssertUnwindSafe({
        let log = log.clone();
        let attempts = attempts.clone();
        async move {
            let (_open, _) = log.begin(intent(3), attempts).await.unwrap();
            panic!("a bug inside the audited call");
        }
    })
    .catch_unwind()
    .await;
    assert!(panicked.is_err(), "the panic reached the caller");

    // Open at shutdown: settled by close; a late finish writes nothing.
    let (late, _) = log.begin(intent(4), attempts.clone()).await.unwrap();
    assert_eq!(log.open_intents(), 1, "only the last call is still open");
    log.close().await;
    assert!(late.finish(|_| {}).await.unwrap().is_none());

    let got = outcomes(&path);
    let cut = Some(CUT_OFF.to_owned());
    assert_eq!(
        got,
        vec![
            (1, "success".to_owned(), None),
            (3, "unknown".to_owned(), cut.clone()),
            (5, "unknown".to_owned(), cut),
            (7, "unknown".to_owned(), Some(SHUT_DOWN.to_owned())),
        ],
        "one outcome per intent, in order"
    );
    assert!(verify(&[path]).is_ok(), "the chain verifies");
}

#[tokio::test]
async fn a_run_with_auditing_off_is_on_record_before_the_log_goes_quiet() {
    let h = Harness::with(Options {
        audit_toml: "enabled = false".into(),
        ..Options::default()
    })
    .await;
    let tx = h.authorize(keys::FULL, None, 100.0).await;
    let r = h
        .post_json(
            &tx_path(&tx, "cancellations"),
            keys::FULL,
            r#"{"gross_amount": 1}"#,
        )
        .await;
    assert_eq!(r.status(), 201);
    // While the gateway still runs: the start says auditing is off, and is already signed
    // off by a checkpoint (so removing it breaks the chain before that checkpoint).
    let records = h.all_audit_records();
    assert_eq!(
        common::kinds_of(&records),
        ["start", "checkpoint"],
        "the cancellation is not audited"
    );
    assert_eq!(records[0]["auditing"], false);
    assert_eq!(records[0]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(records[0]["config_sha256"].as_str().unwrap().len(), 64);
    let report = ratepay_gateway::audit::verify_with(
        &log_files(h.audit_path()).unwrap(),
        &Default::default(),
    );
    let runs = report.unwrap().runs;
    assert_eq!(
        (runs.starts, runs.auditing_off, runs.clean_stops),
        (1, 1, 0)
    );
    h.stop().await;
}
