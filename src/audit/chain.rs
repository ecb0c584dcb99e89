//! The hash chain: the rule that links each record to the one before it, the file scanner
//! shared by [`verify`] and recovery, and the errors that say where a chain breaks.

use std::{
    fmt,
    fs::File,
    io::{self, BufRead, BufReader, Read},
    path::{Path, PathBuf},
};

use super::record::{decode, AuditRecord, LineFault, GENESIS};

/// What is wrong at one line of a log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    /// The line itself is bad (not JSON, changed, not a record).
    #[error("{0}")]
    Line(#[from] LineFault),
    /// `seq` does not follow the previous record's.
    #[error(
        "seq {found} where {expected} was expected: a record was removed, inserted or reordered"
    )]
    SeqGap {
        /// Previous seq + 1.
        expected: u64,
        /// The line's seq.
        found: u64,
    },
    /// `prev` is not the previous record's hash.
    #[error("prev does not match the hash of the previous record: a record was removed, replaced or reordered")]
    PrevMismatch,
    /// A record claims to start the chain (seq 1 or genesis `prev`) but the other field disagrees.
    #[error("bad chain start: seq {seq} with prev {prev}")]
    BadGenesis {
        /// The record's seq.
        seq: u64,
        /// The record's prev.
        prev: String,
    },
    /// The last line has no newline: a write was torn (crash) or the file was cut.
    #[error("incomplete last line ({bytes} bytes without newline): torn write or truncated file")]
    TornTail {
        /// Length of the partial line.
        bytes: u64,
    },
    /// A checkpoint has no signature, and `verify` was given public keys.
    #[error("checkpoint seq {seq} is not signed (written without audit.signing_key_file)")]
    Unsigned {
        /// The checkpoint's seq.
        seq: u64,
    },
    /// A checkpoint names a key that none of the given public keys has.
    #[error("checkpoint seq {seq} is signed with key {key_id}, which is not among the public keys given")]
    UnknownKey {
        /// The checkpoint's seq.
        seq: u64,
        /// The key id it names.
        key_id: String,
    },
    /// A checkpoint's signature does not verify.
    #[error("checkpoint seq {seq}: the signature does not verify with key {key_id}: the chain before it was rewritten, or the checkpoint forged")]
    BadSignature {
        /// The checkpoint's seq.
        seq: u64,
        /// The key id it names.
        key_id: String,
    },
    /// A checkpoint states a different number of records since the previous one.
    #[error("checkpoint seq {seq} covers {stated} records since the previous checkpoint, but {found} are there: records or checkpoints were removed or added")]
    CountMismatch {
        /// The checkpoint's seq.
        seq: u64,
        /// Its `records`.
        stated: u64,
        /// Records between it and the previous checkpoint.
        found: u64,
    },
    /// More unsigned records follow the last checkpoint than its writer ever leaves.
    #[error("{found} records follow the last checkpoint (seq {checkpoint}), more than its every_records {limit}: checkpoints were removed and the chain rewritten")]
    TooManyUnsigned {
        /// The last checkpoint's seq.
        checkpoint: u64,
        /// Records after it.
        found: u64,
        /// Its `every_records`.
        limit: u64,
    },
    /// Records but no checkpoint at all, while public keys were given.
    #[error("{records} records and no checkpoint: nothing is signed (a gateway checkpoints right after it starts)")]
    NoCheckpoint {
        /// Records seen.
        records: u64,
    },
    /// A record's `ts` is earlier than the record before it (the writer never does that).
    #[error("ts {ts} is earlier than the previous record's {previous}: the record was changed or inserted")]
    TsBack {
        /// This record's ts.
        ts: String,
        /// The previous record's ts.
        previous: String,
    },
    /// The record at an anchored checkpoint's seq is not that checkpoint.
    #[error("record seq {seq} is not the anchored checkpoint (anchored hash {anchored}): the log was rewritten from here or earlier")]
    AnchorMismatch {
        /// The anchored seq.
        seq: u64,
        /// The anchored hash.
        anchored: String,
    },
    /// The log ends before an anchored checkpoint.
    #[error("the log ends at seq {last} but checkpoint seq {seq} was anchored: records were cut off the end, or a file deleted")]
    AnchorMissing {
        /// The anchored seq.
        seq: u64,
        /// The last seq in the files (0 when empty).
        last: u64,
    },
    /// An anchored checkpoint precedes the files given.
    #[error("checkpoint seq {seq} was anchored, but the files start at seq {first}: files are missing from the start")]
    AnchorBefore {
        /// The anchored seq.
        seq: u64,
        /// The first seq in the files.
        first: u64,
    },
    /// The first record of a file does not continue the previous file's last record.
    #[error("does not continue {} ({fault}): file missing or out of order", previous.display())]
    BrokenLink {
        /// The file that came before in the given order.
        previous: PathBuf,
        /// The link check that failed.
        fault: Box<Fault>,
    },
}

/// Why a set of log files does not verify. Display is one line, `FILE:LINE: what`.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Nothing to verify.
    #[error("no audit log files given")]
    NoFiles,
    /// A file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The chain is broken at a line.
    #[error("{}:{line}: {fault}", path.display())]
    Broken {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        fault: Fault,
    },
}

impl VerifyError {
    /// The file named by the error, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            VerifyError::NoFiles => None,
            VerifyError::Read { path, .. } | VerifyError::Broken { path, .. } => Some(path),
        }
    }

    /// The 1-based line number, for a broken chain.
    pub fn line(&self) -> Option<u64> {
        match self {
            VerifyError::Broken { line, .. } => Some(*line),
            _ => None,
        }
    }

    /// What is wrong, for a broken chain.
    pub fn fault(&self) -> Option<&Fault> {
        match self {
            VerifyError::Broken { fault, .. } => Some(fault),
            _ => None,
        }
    }
}

/// What a successful verification saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifySummary {
    /// Files checked.
    pub files: usize,
    /// Records checked.
    pub records: u64,
    /// Seq of the first record (`None` when all files are empty).
    pub first_seq: Option<u64>,
    /// Seq of the last record.
    pub last_seq: Option<u64>,
    /// `prev` of the first record: [`GENESIS`] when the set starts the chain, otherwise the
    /// head hash of the (archived) records before it, to compare with a saved anchor.
    pub first_prev: Option<String>,
    /// Hash of the last record ([`GENESIS`] when there is none): keep it to detect later
    /// truncation at a record boundary.
    pub head: String,
}

impl VerifySummary {
    /// Nothing seen yet.
    pub(crate) fn empty() -> VerifySummary {
        VerifySummary {
            files: 0,
            records: 0,
            first_seq: None,
            last_seq: None,
            first_prev: None,
            head: GENESIS.to_owned(),
        }
    }
}

impl fmt::Display for VerifySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.first_seq, self.last_seq) {
            (Some(first), Some(last)) => {
                write!(
                    f,
                    "ok: {} records in {} file(s), seq {first}..{last}, head {}",
                    self.records, self.files, self.head
                )?;
                match self.first_prev.as_deref() {
                    Some(GENESIS) | None => write!(f, ", starts at genesis"),
                    Some(prev) => write!(f, ", continues from {prev}"),
                }
            }
            _ => write!(f, "ok: no records in {} file(s)", self.files),
        }
    }
}

/// The link state of a chain being read: the last record's seq and hash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chain {
    last: Option<(u64, String)>,
}

impl Chain {
    /// A chain that continues after `seq` with hash `hash`.
    pub fn after(seq: u64, hash: String) -> Chain {
        Chain {
            last: Some((seq, hash)),
        }
    }

    /// Seq and hash of the last accepted record.
    pub fn last(&self) -> Option<(u64, &str)> {
        self.last.as_ref().map(|(s, h)| (*s, h.as_str()))
    }

    /// Checks that `record` may follow; does not advance.
    ///
    /// With no record seen yet, a set of files may start mid-chain (older files archived):
    /// then only the genesis rule is checked (seq 1 ⇔ prev is all zeros).
    pub fn check(&self, record: &AuditRecord) -> Result<(), Fault> {
        match &self.last {
            None => {
                if (record.seq == 1) != (record.prev == GENESIS) || record.seq == 0 {
                    return Err(Fault::BadGenesis {
                        seq: record.seq,
                        prev: record.prev.clone(),
                    });
                }
                Ok(())
            }
            Some((seq, hash)) => {
                let expected = seq.saturating_add(1);
                if record.seq != expected {
                    return Err(Fault::SeqGap {
                        expected,
                        found: record.seq,
                    });
                }
                if &record.prev != hash {
                    return Err(Fault::PrevMismatch);
                }
                Ok(())
            }
        }
    }

    /// Accepts a checked record.
    pub fn advance(&mut self, seq: u64, hash: String) {
        self.last = Some((seq, hash));
    }
}

/// Whether a partial last line is an error (verify) or a crash artefact to report (recovery).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tail {
    Strict,
    Tolerant,
}

/// What scanning one file found.
#[derive(Debug, Clone, Default)]
pub(crate) struct FileScan {
    /// Complete, valid records.
    pub records: u64,
    /// Bytes up to and including the last complete line.
    pub good_len: u64,
    /// Length of a partial last line (tolerant mode only).
    pub torn_bytes: u64,
    /// The file's first record.
    pub first: Option<AuditRecord>,
}

/// Sees every accepted record with its hash and 1-based line; an error stops the scan there.
pub(crate) type Visit<'a> = dyn FnMut(&AuditRecord, &str, u64) -> Result<(), Fault> + 'a;

/// Reads `path` line by line, decoding each record and checking it against `chain`, which it
/// advances; `visit` sees every accepted record. `previous` names the file before this one
/// (so a failure on line 1 is reported as a broken link between files).
///
/// Reads only the length the file had when opened, so a file that grows meanwhile (or a
/// device such as `/dev/full`, which reports length 0) cannot make the scan run forever.
pub(crate) fn scan_file(
    path: &Path,
    chain: &mut Chain,
    previous: Option<&Path>,
    tail: Tail,
    visit: &mut Visit<'_>,
) -> Result<FileScan, VerifyError> {
    let read_err = |source| VerifyError::Read {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let len = file.metadata().map_err(read_err)?.len();
    let mut reader = BufReader::new(file.take(len));
    let mut scan = FileScan::default();
    let mut buf = Vec::with_capacity(1024);
    let mut line_no = 0u64;
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(read_err)?;
        if n == 0 {
            return Ok(scan);
        }
        line_no += 1;
        let broken = |fault| VerifyError::Broken {
            path: path.to_owned(),
            line: line_no,
            fault,
        };
        if buf.last() != Some(&b'\n') {
            if tail == Tail::Tolerant {
                scan.torn_bytes = n as u64;
                return Ok(scan);
            }
            return Err(broken(Fault::TornTail { bytes: n as u64 }));
        }
        let (record, hash) = decode(&buf[..n - 1]).map_err(|f| broken(f.into()))?;
        if let Err(fault) = chain.check(&record) {
            let fault = match previous {
                Some(prev) if line_no == 1 && chain.last().is_some() => Fault::BrokenLink {
                    previous: prev.to_owned(),
                    fault: Box::new(fault),
                },
                _ => fault,
            };
            return Err(broken(fault));
        }
        visit(&record, &hash, line_no).map_err(broken)?;
        chain.advance(record.seq, hash);
        scan.records += 1;
        scan.good_len += n as u64;
        if scan.first.is_none() {
            scan.first = Some(record);
        }
    }
}

/// Verifies the chain across `paths`, in the order given (use
/// [`log_files`](super::log_files) for a log directory's chain order).
///
/// Detects a changed record (hash mismatch), a removed, inserted or reordered record (seq gap
/// or prev mismatch), a torn or truncated last line, a line that is not JSON or not a record,
/// and a missing or misordered file (broken link at line 1). Truncation exactly at a record
/// boundary leaves a valid shorter chain: compare [`VerifySummary::head`] with a head hash
/// kept elsewhere to detect it.
pub fn verify<P: AsRef<Path>>(paths: &[P]) -> Result<VerifySummary, VerifyError> {
    if paths.is_empty() {
        return Err(VerifyError::NoFiles);
    }
    let mut chain = Chain::default();
    let mut summary = VerifySummary::empty();
    let mut previous: Option<&Path> = None;
    for path in paths {
        let path = path.as_ref();
        let scan = scan_file(path, &mut chain, previous, Tail::Strict, &mut |r, _, _| {
            if summary.first_seq.is_none() {
                summary.first_seq = Some(r.seq);
                summary.first_prev = Some(r.prev.clone());
            }
            Ok(())
        })?;
        summary.files += 1;
        summary.records += scan.records;
        previous = Some(path);
    }
    if let Some((seq, hash)) = chain.last() {
        summary.last_seq = Some(seq);
        summary.head = hash.to_owned();
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::{build_record, encode, AuditEntry, Intent};
    use time::OffsetDateTime;

    fn record(seq: u64, prev: &str) -> (AuditRecord, String) {
        let intent = Intent {
            request_id: format!("req-{seq}"),
            caller: "c".into(),
            source: "127.0.0.1".parse().unwrap(),
            operation: "payment.cancellations.create".into(),
            ratepay_transaction_id: "scwBgARW-nE93I7_ywhp".into(),
            partner: None,
            gross_amount: Some("1.00".into()),
            partner_operation_id: None,
            partner_shop_id: None,
            body_sha256: "0".repeat(64),
            idempotency_key: None,
        };
        let r = build_record(
            AuditEntry::Intent(intent),
            seq,
            prev,
            OffsetDateTime::now_utc(),
        );
        let hash = encode(&r).unwrap().hash;
        (r, hash)
    }

    #[test]
    fn chain_accepts_links_and_rejects_gaps() {
        let (r1, h1) = record(1, GENESIS);
        let (r2, h2) = record(2, &h1);
        let (r3, _) = record(3, &h2);
        let mut chain = Chain::default();
        chain.check(&r1).unwrap();
        chain.advance(1, h1.clone());
        assert_eq!(
            chain.check(&r3),
            Err(Fault::SeqGap {
                expected: 2,
                found: 3
            })
        );
        let (bad, _) = record(2, &"f".repeat(64));
        assert_eq!(chain.check(&bad), Err(Fault::PrevMismatch));
        chain.check(&r2).unwrap();
    }

    #[test]
    fn chain_start_rules() {
        let chain = Chain::default();
        // Mid-chain start (archived history) is accepted...
        chain.check(&record(5, &"a".repeat(64)).0).unwrap();
        // ...but a fake genesis is not.
        assert!(matches!(
            chain.check(&record(5, GENESIS).0),
            Err(Fault::BadGenesis { .. })
        ));
        assert!(matches!(
            chain.check(&record(1, &"a".repeat(64)).0),
            Err(Fault::BadGenesis { .. })
        ));
    }

    #[test]
    fn display_is_one_line() {
        let e = VerifyError::Broken {
            path: "audit.jsonl".into(),
            line: 3,
            fault: Fault::BrokenLink {
                previous: "audit-00000000000000000001.jsonl".into(),
                fault: Box::new(Fault::SeqGap {
                    expected: 4,
                    found: 9,
                }),
            },
        };
        let text = e.to_string();
        assert!(!text.contains('\n'));
        assert!(
            text.starts_with("audit.jsonl:3: does not continue audit-00000000000000000001.jsonl")
        );
    }
}
