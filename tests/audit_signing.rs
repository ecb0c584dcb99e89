//! Signed checkpoints on real files: when the writer appends them (records, time, rotation,
//! close), what `verify_with` accepts and refuses (signatures, a rewritten chain, unsigned
//! checkpoints, key rotation, anchors), and `audit keygen` / `audit verify` with their exit
//! codes.

use std::{
    fs,
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc,
    },
    time::Duration,
};

mod common;

use common::{intent, lines, record_kinds as kinds, write_lines};
use ratepay_gateway::audit::{
    log_files, record, verify, verify_with, AuditConfig, AuditEntry, AuditLog, AuditRecord,
    CheckpointConfig, Clock, Fault, PublicKey, SigningKey, VerifyError, VerifyOptions,
};
use time::OffsetDateTime;

const BIN: &str = env!("CARGO_BIN_EXE_ratepay-gateway");

fn config(path: &Path, every_records: u64, key: Option<&SigningKey>) -> AuditConfig {
    AuditConfig {
        checkpoints: Some(CheckpointConfig {
            every_records,
            every: Duration::from_secs(60),
            signing_key: key.cloned(),
        }),
        ..AuditConfig::new(path)
    }
}

async fn write(config: AuditConfig, from: u64, to: u64) {
    let (log, _) = AuditLog::open(config).await.unwrap();
    for i in from..=to {
        log.append(AuditEntry::Intent(intent(i))).await.unwrap();
    }
    log.close().await;
}

fn with_keys(keys: &[&SigningKey]) -> VerifyOptions {
    VerifyOptions {
        public_keys: keys.iter().map(|k| k.public_key().clone()).collect(),
        anchors: Vec::new(),
    }
}

/// Asserts that `verify_with` of the one-file log `file` fails at `file:line`; the fault.
fn broken_at(file: &Path, options: &VerifyOptions, line: u64) -> Fault {
    match verify_with(&[file], options) {
        Err(VerifyError::Broken {
            path,
            line: at,
            fault,
        }) => {
            assert_eq!((path.as_path(), at), (file, line), "wrong place: {fault}");
            fault
        }
        other => panic!(
            "expected a failure at {}:{line}, got {other:?}",
            file.display()
        ),
    }
}

/// Rewrites `lines` from index `from` on as an attacker without the key would: each record
/// changed by `edit`, then re-hashed and re-linked so the hash chain is valid again.
fn rechain(
    lines: &[String],
    from: usize,
    edit: impl Fn(usize, &mut serde_json::Value),
) -> Vec<String> {
    let mut out: Vec<String> = lines[..from].to_vec();
    let mut prev = if from == 0 {
        record::GENESIS.to_owned()
    } else {
        let v: serde_json::Value = serde_json::from_str(&lines[from - 1]).unwrap();
        v["hash"].as_str().unwrap().to_owned()
    };
    for (i, line) in lines.iter().enumerate().skip(from) {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        v.as_object_mut().unwrap().remove("hash");
        v["prev"] = prev.clone().into();
        edit(i, &mut v);
        let rec: AuditRecord = serde_json::from_value(v).unwrap();
        let enc = record::encode(&rec).unwrap();
        prev = enc.hash.clone();
        out.push(String::from_utf8(enc.line).unwrap().trim_end().to_owned());
    }
    out
}

#[tokio::test]
async fn checkpoints_every_n_records_and_at_close_verify_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (_, key) = SigningKey::generate().unwrap();
    write(config(&path, 3, Some(&key)), 1, 7).await;
    // 3 intents, checkpoint, 3 intents, checkpoint, 1 intent, and the one at close.
    let expected: Vec<&str> =
        "intent intent intent checkpoint intent intent intent checkpoint intent checkpoint"
            .split(' ')
            .collect();
    assert_eq!(kinds(&path), expected);
    let first_cp: serde_json::Value = serde_json::from_str(&lines(&path)[3]).unwrap();
    assert_eq!(first_cp["records"], 3);
    assert_eq!(first_cp["every_records"], 3);
    assert_eq!(first_cp["instance"], "gateway");
    assert_eq!(first_cp["key_id"], key.public_key().key_id());
    assert_eq!(first_cp["sig"].as_str().unwrap().len(), 128);

    let report = verify_with(&[&path], &with_keys(&[&key])).unwrap();
    let signed = report.signatures.as_ref().unwrap();
    assert_eq!(
        (signed.checkpoints, signed.last_signed, signed.unsigned_tail),
        (3, 10, 0)
    );
    assert!(report
        .to_string()
        .contains("last signed record seq 10; 0 record(s) follow it unsigned"));
    // Without keys the chain alone is checked, as before.
    assert_eq!(verify(&[&path]).unwrap().records, 10);

    // Reopened, the count since the last checkpoint goes on from the files.
    write(config(&path, 3, Some(&key)), 8, 9).await;
    let report = verify_with(&[&path], &with_keys(&[&key])).unwrap();
    assert_eq!(report.signatures.unwrap().last_signed, 13);
}

#[tokio::test]
async fn a_chain_rewritten_before_a_checkpoint_fails_at_its_signature() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (_, key) = SigningKey::generate().unwrap();
    write(config(&path, 4, Some(&key)), 1, 10).await;
    let original = lines(&path);
    let keys = with_keys(&[&key]);
    verify_with(&[&path], &keys).unwrap();

    // A changed amount in line 2, the chain re-hashed from there: the hash chain is valid, but
    // the checkpoint at line 5 signed the old head.
    let forged = rechain(&original, 1, |i, v| {
        if i == 1 {
            v["gross_amount"] = "9999.00".into();
        }
    });
    write_lines(&path, &forged);
    verify(&[&path]).unwrap();
    let fault = broken_at(&path, &keys, 5);
    assert!(
        matches!(fault, Fault::BadSignature { seq: 5, .. }),
        "{fault}"
    );

    // The same with the checkpoints dropped: more unsigned records than the writer leaves.
    let without: Vec<String> = original
        .iter()
        .filter(|l| !l.contains("\"kind\":\"checkpoint\""))
        .cloned()
        .collect();
    // Re-numbered as an attacker must after removing records.
    let renumbered = rechain(&without, 0, |i, v| v["seq"] = (i as u64 + 1).into());
    write_lines(&path, &renumbered);
    verify(&[&path]).unwrap();
    let fault = broken_at(&path, &keys, 1);
    assert!(
        matches!(fault, Fault::NoCheckpoint { records: 10 }),
        "{fault}"
    );

    // An unsigned checkpoint (a log written without a key) fails with the key given.
    let unsigned_dir = tempfile::tempdir().unwrap();
    let unsigned = unsigned_dir.path().join("audit.jsonl");
    write(config(&unsigned, 4, None), 1, 5).await;
    let fault = broken_at(&unsigned, &keys, 5);
    assert!(matches!(fault, Fault::Unsigned { seq: 5 }), "{fault}");
    assert!(
        verify(&[&unsigned]).is_ok(),
        "unsigned checkpoints are still chain records"
    );
}

#[tokio::test]
async fn key_rotation_needs_both_public_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (_, old) = SigningKey::generate().unwrap();
    let (_, new) = SigningKey::generate().unwrap();
    write(config(&path, 2, Some(&old)), 1, 4).await;
    // From seq 7 on (after restarting with the new key), the new key signs.
    write(config(&path, 2, Some(&new)), 5, 8).await;
    let text = lines(&path);
    let key_ids: Vec<(u64, String)> = text
        .iter()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Some((v["seq"].as_u64()?, v["key_id"].as_str()?.to_owned()))
        })
        .collect();
    assert_eq!(
        key_ids,
        [
            (3, old.public_key().key_id().to_owned()),
            (6, old.public_key().key_id().to_owned()),
            (9, new.public_key().key_id().to_owned()),
            (12, new.public_key().key_id().to_owned()),
        ]
    );
    let report = verify_with(&[&path], &with_keys(&[&old, &new])).unwrap();
    assert_eq!(
        report.signatures.unwrap().key_ids,
        [old.public_key().key_id(), new.public_key().key_id()]
    );
    let fault = broken_at(&path, &with_keys(&[&old]), 9);
    assert!(
        matches!(&fault, Fault::UnknownKey { seq: 9, key_id } if key_id == new.public_key().key_id()),
        "{fault}"
    );
}

#[tokio::test]
async fn rotation_closes_every_file_with_a_checkpoint_within_rotate_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (_, key) = SigningKey::generate().unwrap();
    let config = AuditConfig {
        rotate_bytes: Some(4096),
        ..config(&path, 1000, Some(&key))
    };
    write(config, 1, 30).await;
    let files = log_files(&path).unwrap();
    assert!(files.len() >= 3, "{files:?}");
    for file in &files {
        assert_eq!(
            kinds(file).last().map(String::as_str),
            Some("checkpoint"),
            "{}",
            file.display()
        );
        assert!(
            fs::metadata(file).unwrap().len() <= 4096,
            "{}",
            file.display()
        );
    }
    let report = verify_with(&files, &with_keys(&[&key])).unwrap();
    assert_eq!(report.signatures.unwrap().checkpoints, files.len() as u64);
}

#[tokio::test(start_paused = true)]
async fn a_checkpoint_is_written_once_the_interval_passed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let now = Arc::new(AtomicI64::new(1_800_000_000));
    let at = now.clone();
    let clock: Clock =
        Arc::new(move || OffsetDateTime::from_unix_timestamp(at.load(Ordering::SeqCst)).unwrap());
    let (log, _) = AuditLog::open_with_clock(config(&path, 1000, None), clock)
        .await
        .unwrap();
    log.append(AuditEntry::Intent(intent(1))).await.unwrap();
    // Ticks come (paused time runs ahead while the test waits), but the log's clock has not
    // moved: nothing is due.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(log.latest_checkpoint().is_none());
    now.fetch_add(60, Ordering::SeqCst);
    let mut changes = log.checkpoints();
    let anchor = changes
        .wait_for(|c| c.is_some())
        .await
        .unwrap()
        .clone()
        .unwrap();
    assert_eq!(anchor.seq, 2);
    assert_eq!(kinds(&path), ["intent", "checkpoint"]);
    assert_eq!(log.stats().last_checkpoint_seq, 2);
    log.close().await;
    // Nothing new since: close adds no checkpoint.
    assert_eq!(kinds(&path), ["intent", "checkpoint"]);
}

// ---- The CLI ----

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn keygen_then_verify_with_exit_codes() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("audit-signing");
    let p = prefix.to_str().unwrap();
    let (code, stdout, stderr) = run(&["audit", "keygen", "--out", p]);
    assert_eq!(code, 0, "{stderr}");
    let key_file = dir.path().join("audit-signing.key");
    let pub_file = dir.path().join("audit-signing.pub");
    assert_eq!(
        fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let key = SigningKey::from_file(&key_file).unwrap();
    let public = PublicKey::from_file(&pub_file).unwrap();
    assert_eq!(key.public_key(), &public);
    assert!(stdout.contains(public.key_id()), "{stdout}");
    let der = fs::read(&key_file).unwrap();
    assert!(!stdout.contains(&hex::encode(&der[16..48])));
    // Never overwrites.
    let (code, _, stderr) = run(&["audit", "keygen", "--out", p]);
    assert_eq!(code, 2);
    assert!(stderr.contains("exists"), "{stderr}");

    let log = dir.path().join("log");
    fs::create_dir(&log).unwrap();
    let path = log.join("audit.jsonl");
    write(config(&path, 2, Some(&key)), 1, 3).await;
    let pk = pub_file.to_str().unwrap();
    let l = log.to_str().unwrap();
    let (code, stdout, stderr) = run(&["audit", "verify", "--public-key", pk, l]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("ok: 5 records in 1 file(s)"), "{stdout}");
    assert!(
        stdout.contains("signed: 2 checkpoint(s) verified"),
        "{stdout}"
    );
    // Without the key: exactly the chain summary, as before.
    let (code, stdout, _) = run(&["audit", "verify", l]);
    assert_eq!(code, 0);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");

    // 1: the log does not verify (a changed checkpoint), naming file and line.
    let original = lines(&path);
    let mut changed = original.clone();
    changed[2] = changed[2].replace("\"records\":2", "\"records\":1");
    let changed = rechain(&changed, 2, |_, _| {});
    write_lines(&path, &changed);
    let (code, _, stderr) = run(&["audit", "verify", "--public-key", pk, l]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("{}:3: ", path.display())),
        "{stderr}"
    );
    write_lines(&path, &original);
    // 2: usage and I/O errors.
    let (code, _, stderr) = run(&["audit", "verify", "--public-key", "/nonexistent.pub", l]);
    assert_eq!(code, 2, "{stderr}");
    let (code, _, _) = run(&[
        "audit",
        "verify",
        "--public-key",
        key_file.to_str().unwrap(),
        l,
    ]);
    assert_eq!(code, 2, "a private key is not a public key file");
    let (code, _, _) = run(&["audit", "verify", "/nonexistent/audit.jsonl"]);
    assert_eq!(code, 2);
    let (code, _, _) = run(&["audit", "verify"]);
    assert_eq!(code, 2, "clap's usage error");
}

#[tokio::test]
async fn anchors_must_all_match_including_two_for_one_seq() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (log, _) = AuditLog::open(config(&path, 2, None)).await.unwrap();
    for i in 1..=2 {
        log.append(AuditEntry::Intent(intent(i))).await.unwrap();
    }
    let anchor = (*log.latest_checkpoint().unwrap()).clone();
    log.close().await;
    assert_eq!(anchor.seq, 3);
    let with = |anchors| VerifyOptions {
        public_keys: Vec::new(),
        anchors,
    };
    let report = verify_with(&[&path], &with(vec![anchor.clone(), anchor.clone()])).unwrap();
    assert_eq!(report.anchors_matched, 2);
    // A second anchor for the same seq with another hash (a forked log) fails at that line.
    let other = ratepay_gateway::audit::Anchor {
        hash: "e".repeat(64),
        ..anchor.clone()
    };
    let fault = broken_at(&path, &with(vec![anchor, other]), 3);
    assert!(
        matches!(fault, Fault::AnchorMismatch { seq: 3, .. }),
        "{fault}"
    );
}
