//! `audit verify` beyond the hash chain: checkpoint signatures checked with public keys, the
//! unsigned records after the last checkpoint, anchored checkpoints the log must still hold,
//! and what the start and stop records say about the gateway's runs.
//!
//! A hash chain alone is accepted by [`super::verify`] however it was rewritten; with public
//! keys a rewrite before the last checkpoint fails at a signature, and with anchors (kept off
//! the machine) a rewrite or truncation by someone holding the key fails too.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

use super::{
    chain::{scan_file, Chain, Fault, Tail, VerifyError, VerifySummary},
    checkpoint::{check_signature, Anchor, PublicKey, SignatureCheck},
    record::{RecordKind, GENESIS},
};

/// What to check beyond the chain.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Public keys checkpoints may be signed with (several: key rotation). Empty: signatures
    /// are not checked.
    pub public_keys: Vec<PublicKey>,
    /// Checkpoints that must still be in the log, by seq and hash.
    pub anchors: Vec<Anchor>,
}

/// What signature checking found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signatures {
    /// Checkpoints whose signature verified.
    pub checkpoints: u64,
    /// Key ids that signed them, in order of first use.
    pub key_ids: Vec<String>,
    /// The last signed record: the last checkpoint's seq.
    pub last_signed: u64,
    /// Records after it (written since, or left by a crash).
    pub unsigned_tail: u64,
}

/// The gateway's runs as the start and stop records tell them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Runs {
    /// `start` records.
    pub starts: u64,
    /// Of those, runs with `audit.enabled = false`.
    pub auditing_off: u64,
    /// `stop` records.
    pub clean_stops: u64,
    /// Starts that follow a start with no stop between: the run before ended by a crash or kill.
    pub unclean: u64,
}

/// The outcome of a successful [`verify_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The chain.
    pub summary: VerifySummary,
    /// Signatures, when public keys were given.
    pub signatures: Option<Signatures>,
    /// Anchored checkpoints found.
    pub anchors_matched: usize,
    /// Starts and stops.
    pub runs: Runs,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.summary)?;
        if let Some(s) = &self.signatures {
            write!(
                f,
                "\nsigned: {} checkpoint(s) verified with key(s) {}; last signed record seq {}; {} record(s) follow it unsigned",
                s.checkpoints,
                s.key_ids.join(", "),
                s.last_signed,
                s.unsigned_tail
            )?;
        }
        if self.anchors_matched > 0 {
            write!(f, "\nanchors: {} matched", self.anchors_matched)?;
        }
        let r = &self.runs;
        write!(
            f,
            "\nruns: {} start(s) ({} with auditing off), {} clean stop(s), {} ended without a stop record (crash or kill)",
            r.starts, r.auditing_off, r.clean_stops, r.unclean
        )
    }
}

/// The last checkpoint seen: its seq, `every_records`, and where the first record after it is.
struct LastCheckpoint {
    seq: u64,
    every_records: u64,
    first_after: Option<(PathBuf, u64)>,
}

/// Verifies the chain across `paths` (as [`super::verify`]) and, per `options`, every
/// checkpoint's signature, the records each states it covers, timestamps that never go back,
/// the unsigned tail, and the anchors. Errors name the file and line.
pub fn verify_with<P: AsRef<Path>>(
    paths: &[P],
    options: &VerifyOptions,
) -> Result<Report, VerifyError> {
    if paths.is_empty() {
        return Err(VerifyError::NoFiles);
    }
    let signed = !options.public_keys.is_empty();
    // Several anchors may name one seq (the endpoint's and the log line's): all must match.
    let mut anchors: BTreeMap<u64, Vec<&Anchor>> = BTreeMap::new();
    for a in &options.anchors {
        anchors.entry(a.seq).or_default().push(a);
    }
    let mut matched = 0usize;
    let mut chain = Chain::default();
    let mut summary = VerifySummary::empty();
    let mut runs = Runs::default();
    let mut in_run = false;
    let mut last_ts: Option<String> = None;
    let mut last_cp: Option<LastCheckpoint> = None;
    let mut sigs = Signatures {
        checkpoints: 0,
        key_ids: Vec::new(),
        last_signed: 0,
        unsigned_tail: 0,
    };
    let mut previous: Option<&Path> = None;
    let mut last_file_lines = 0u64;
    for path in paths {
        let path = path.as_ref();
        let scan = scan_file(
            path,
            &mut chain,
            previous,
            Tail::Strict,
            &mut |r, hash, line| {
                if summary.first_seq.is_none() {
                    summary.first_seq = Some(r.seq);
                    summary.first_prev = Some(r.prev.clone());
                }
                if signed {
                    if let Some(prev_ts) = last_ts.as_deref() {
                        // Fixed-width UTC text: string order is time order.
                        if r.ts.as_str() < prev_ts {
                            return Err(Fault::TsBack {
                                ts: r.ts.clone(),
                                previous: prev_ts.to_owned(),
                            });
                        }
                    }
                    last_ts = Some(r.ts.clone());
                }
                if let Some(cp) = last_cp.as_mut().filter(|c| c.first_after.is_none()) {
                    cp.first_after = Some((path.to_owned(), line));
                }
                for anchor in anchors.remove(&r.seq).unwrap_or_default() {
                    if anchor.hash != hash {
                        return Err(Fault::AnchorMismatch {
                            seq: r.seq,
                            anchored: anchor.hash.clone(),
                        });
                    }
                    matched += 1;
                }
                match r.kind {
                    RecordKind::Start => {
                        runs.starts += 1;
                        runs.auditing_off += u64::from(r.auditing == Some(false));
                        runs.unclean += u64::from(in_run);
                        in_run = true;
                    }
                    RecordKind::Stop => {
                        runs.clean_stops += 1;
                        in_run = false;
                    }
                    RecordKind::Checkpoint if signed => {
                        // Records since the previous checkpoint, when this verification knows it.
                        let since = match (&last_cp, summary.first_prev.as_deref()) {
                            (Some(c), _) => Some(r.seq - c.seq - 1),
                            (None, Some(GENESIS)) => Some(r.seq - 1),
                            (None, _) => None,
                        };
                        let stated = r.records.unwrap_or(0);
                        if let Some(found) = since.filter(|f| *f != stated) {
                            return Err(Fault::CountMismatch {
                                seq: r.seq,
                                stated,
                                found,
                            });
                        }
                        match check_signature(r, &options.public_keys) {
                            SignatureCheck::Valid => {}
                            SignatureCheck::Unsigned => return Err(Fault::Unsigned { seq: r.seq }),
                            SignatureCheck::UnknownKey(key_id) => {
                                return Err(Fault::UnknownKey { seq: r.seq, key_id })
                            }
                            SignatureCheck::Bad(key_id) => {
                                return Err(Fault::BadSignature { seq: r.seq, key_id })
                            }
                        }
                        sigs.checkpoints += 1;
                        if let Some(id) = r.key_id.as_ref().filter(|id| !sigs.key_ids.contains(id))
                        {
                            sigs.key_ids.push(id.clone());
                        }
                        last_cp = Some(LastCheckpoint {
                            seq: r.seq,
                            every_records: r.every_records.unwrap_or(0),
                            first_after: None,
                        });
                    }
                    _ => {}
                }
                Ok(())
            },
        )?;
        summary.files += 1;
        summary.records += scan.records;
        last_file_lines = scan.records;
        previous = Some(path);
    }
    if let Some((seq, hash)) = chain.last() {
        summary.last_seq = Some(seq);
        summary.head = hash.to_owned();
    }
    let first_file = paths[0].as_ref();
    let last_file = paths[paths.len() - 1].as_ref();
    let broken = |path: &Path, line, fault| VerifyError::Broken {
        path: path.to_owned(),
        line,
        fault,
    };
    let last_seq = summary.last_seq.unwrap_or(0);
    if let Some(anchor) = anchors.values().flatten().next() {
        return Err(match summary.first_seq {
            Some(first) if anchor.seq < first => broken(
                first_file,
                1,
                Fault::AnchorBefore {
                    seq: anchor.seq,
                    first,
                },
            ),
            _ => broken(
                last_file,
                last_file_lines + 1,
                Fault::AnchorMissing {
                    seq: anchor.seq,
                    last: last_seq,
                },
            ),
        });
    }
    let signatures = if signed {
        match last_cp {
            None if summary.records > 0 => {
                return Err(broken(
                    first_file,
                    1,
                    Fault::NoCheckpoint {
                        records: summary.records,
                    },
                ))
            }
            None => None,
            Some(cp) => {
                let tail = last_seq - cp.seq;
                if tail > cp.every_records {
                    let (path, line) = cp
                        .first_after
                        .unwrap_or_else(|| (last_file.to_owned(), last_file_lines));
                    return Err(broken(
                        &path,
                        line,
                        Fault::TooManyUnsigned {
                            checkpoint: cp.seq,
                            found: tail,
                            limit: cp.every_records,
                        },
                    ));
                }
                sigs.last_signed = cp.seq;
                sigs.unsigned_tail = tail;
                Some(sigs)
            }
        }
    } else {
        None
    };
    Ok(Report {
        summary,
        signatures,
        anchors_matched: matched,
        runs,
    })
}
