//! The audit chain verifier (`audit::verify`, what `ratepay-gateway audit verify` runs) and the
//! line decoder (`audit::record::decode`) on arbitrary file contents.
//!
//! Three shapes of input, by the first byte: raw bytes as a log file; lines whose `"hash"` is
//! recomputed first (so the fuzzer gets past the hash check into the record and chain rules);
//! and a valid chain the fuzzer may overwrite bytes of. Invariants: never panics; a fault names
//! a line that exists; a log that verifies decodes line by line and re-encodes to the same
//! bytes; a valid chain verifies, in one file or split across two, and any changed byte is
//! detected.
#![no_main]

use std::{fs, path::PathBuf, sync::OnceLock};

use libfuzzer_sys::fuzz_target;
use ratepay_gateway::audit::{
    record::{build_record, decode, encode, sha256_hex},
    verify, AuditEntry, Intent, OutcomeKind, VerifyError, GENESIS,
};

fn dir() -> &'static tempfile::TempDir {
    static D: OnceLock<tempfile::TempDir> = OnceLock::new();
    D.get_or_init(|| tempfile::tempdir().unwrap())
}

fn write(name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir().path().join(name);
    fs::write(&p, bytes).unwrap();
    p
}

fn lines(bytes: &[u8]) -> u64 {
    bytes.split_inclusive(|b| *b == b'\n').count() as u64
}

/// Verifies `bytes` as one file; checks the fault's line and, when it verifies, the records.
fn check(bytes: &[u8]) -> Result<String, VerifyError> {
    let p = write("audit.jsonl", bytes);
    let r = verify(&[&p]);
    match &r {
        Ok(s) => {
            assert!(
                bytes.is_empty() || bytes.ends_with(b"\n"),
                "a torn tail verified"
            );
            assert_eq!(s.records, lines(bytes));
            // A file may start mid-chain (older files archived); from there on, links hold.
            let mut last: Option<(u64, String)> = None;
            for line in bytes.split_inclusive(|b| *b == b'\n') {
                let (record, hash) =
                    decode(&line[..line.len() - 1]).expect("verified line decodes");
                assert_eq!(
                    encode(&record).unwrap().line,
                    line,
                    "verified line re-encodes differently"
                );
                match &last {
                    None => assert_eq!(record.seq == 1, record.prev == GENESIS),
                    Some((seq, h)) => {
                        assert_eq!(Some(record.seq), seq.checked_add(1), "seqs not consecutive");
                        assert_eq!(&record.prev, h);
                    }
                }
                last = Some((record.seq, hash));
            }
            assert_eq!(s.head, last.map_or(GENESIS.to_owned(), |(_, h)| h));
        }
        Err(VerifyError::Broken { line, .. }) => {
            assert!(
                (1..=lines(bytes)).contains(line),
                "fault at line {line} of {}",
                lines(bytes)
            );
        }
        Err(e) => panic!("unexpected verify error: {e}"),
    }
    r.map(|s| s.head)
}

/// Replaces each line's trailing `"hash"` (or appends one) with the hash of its contents.
fn rehash(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 128);
    for line in bytes.split(|b| *b == b'\n') {
        let body = match line.windows(9).rposition(|w| w == b",\"hash\":\"") {
            Some(at) => &line[..at],
            None => line.strip_suffix(b"}").unwrap_or(line),
        };
        let mut canonical = body.to_vec();
        canonical.push(b'}');
        out.extend_from_slice(body);
        out.extend_from_slice(b",\"hash\":\"");
        out.extend_from_slice(sha256_hex(&canonical).as_bytes());
        out.extend_from_slice(b"\"}\n");
    }
    out
}

/// A valid chain of `n` records (intents and their outcomes).
fn chain(n: usize, seed: u8) -> Vec<u8> {
    let at = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
    let mut prev = GENESIS.to_owned();
    let mut out = Vec::new();
    let mut last_intent = None;
    for seq in 1..=n as u64 {
        let entry = match last_intent.take() {
            Some(i) if seq % 3 != 0 => {
                let i: Intent = i;
                AuditEntry::Outcome(i.outcome(seq - 1, OutcomeKind::Success))
            }
            _ => {
                let i = Intent {
                    request_id: format!("req-{seq}"),
                    caller: "shop".into(),
                    source: std::net::IpAddr::from([10, 0, 0, seed]),
                    operation: "payment.cancellations.create".into(),
                    ratepay_transaction_id: format!("tx{seed}"),
                    partner: seed.is_multiple_of(2).then(|| "p".into()),
                    gross_amount: Some(format!("{seed}.50")),
                    partner_operation_id: Some("op\u{e9}\"\\".into()),
                    partner_shop_id: None,
                    idempotency_key: Some("k".into()),
                    body_sha256: format!("{seed:064x}"),
                };
                last_intent = Some(i.clone());
                AuditEntry::Intent(i)
            }
        };
        let record = build_record(entry, seq, &prev, at);
        let e = encode(&record).unwrap();
        out.extend_from_slice(&e.line);
        prev = e.hash;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let _ = check(rest);
        }
        1 => {
            let _ = check(&rehash(rest));
        }
        _ => {
            let Some((&n, edits)) = rest.split_first() else {
                return;
            };
            let good = chain(usize::from(n % 8) + 1, n);
            let head = check(&good).expect("a valid chain verifies");
            // The same chain split across two files at a line boundary verifies the same.
            let cut = good
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .nth(usize::from(n >> 4) % (usize::from(n % 8) + 1))
                .map_or(good.len(), |(i, _)| i + 1);
            let (a, b) = (
                write("a.jsonl", &good[..cut]),
                write("b.jsonl", &good[cut..]),
            );
            let split = verify(&[&a, &b]).expect("a split chain verifies");
            assert_eq!(split.head, head);
            let mut bad = good.clone();
            for pair in edits.chunks_exact(2) {
                let at = usize::from(pair[0]) * bad.len() / 256;
                bad[at] = pair[1];
            }
            if bad != good {
                assert!(check(&bad).is_err(), "a changed chain verified");
            }
        }
    }
});
