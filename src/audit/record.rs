//! Audit records: the explicit fields an entry may carry, the canonical bytes of a record and
//! the SHA-256 hash that chains records together.
//!
//! Everything here is a plain function of its inputs (no files, no clock), so the line format
//! and the hash definition are unit-tested on their own and `docs/audit.md` can describe them
//! exactly.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::{format_description::FormatItem, macros::format_description, OffsetDateTime, UtcOffset};

/// The `prev` of the very first record of a log: 64 zeros.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Longest `error` text kept in an outcome record; longer text is cut (on a char boundary) so
/// that an upstream body pasted into an error by mistake cannot flood the log.
pub const MAX_ERROR_LEN: usize = 256;

/// RFC 3339, UTC, milliseconds, `Z`: `2025-11-21T08:43:12.345Z`.
const TS_FORMAT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// The line suffix that carries the hash: `,"hash":"<64 hex>"}`.
const HASH_PREFIX: &[u8] = b",\"hash\":\"";
const HASH_SUFFIX_LEN: usize = HASH_PREFIX.len() + 64 + 2;

/// Whether a record announces an operation, reports how it ended, or is one of the log's own
/// records (checkpoint, start, stop).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// Written (and synced) before the request is forwarded to Ratepay.
    Intent,
    /// Written after the final upstream answer, or by recovery.
    Outcome,
    /// The writer's (signed) statement of the chain head before it; see `checkpoint.rs`.
    Checkpoint,
    /// A gateway process started (with auditing on or off).
    Start,
    /// A gateway process stopped cleanly.
    Stop,
}

impl RecordKind {
    /// The name on disk (`intent`, `checkpoint`, ...).
    pub fn name(self) -> &'static str {
        match self {
            RecordKind::Intent => "intent",
            RecordKind::Outcome => "outcome",
            RecordKind::Checkpoint => "checkpoint",
            RecordKind::Start => "start",
            RecordKind::Stop => "stop",
        }
    }
}

/// How an audited operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    /// Ratepay accepted it (2xx).
    Success,
    /// Ratepay refused it, or it was never sent.
    Failure,
    /// Nobody knows: the connection died after sending, or the gateway crashed (recovery).
    Unknown,
}

/// The intent to perform an audited operation; appended before forwarding.
///
/// Only explicit fields exist: there is deliberately no free-form map, so a token, a secret or
/// buyer data cannot end up in the log without a visible change to this type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    /// The gateway's request id (`x-request-id`).
    pub request_id: String,
    /// The authenticated internal caller (who).
    pub caller: String,
    /// The caller's network address (where from).
    pub source: IpAddr,
    /// The operation name, e.g. `payment.cancellations.create` (what).
    pub operation: String,
    /// The transaction the operation acts on (which resource).
    pub ratepay_transaction_id: String,
    /// `X-Partner`, when the request carries one.
    pub partner: Option<String>,
    /// `gross_amount` exactly as the caller wrote it (decimal text, never a float).
    pub gross_amount: Option<String>,
    /// `partner_operation_id` from the request body.
    pub partner_operation_id: Option<String>,
    /// `partner_shop_id` from the request body.
    pub partner_shop_id: Option<String>,
    /// Lowercase hex SHA-256 of the exact body bytes forwarded: binds the record to the request
    /// whatever its fields say.
    pub body_sha256: String,
    /// The `Idempotency-Key` forwarded upstream.
    pub idempotency_key: Option<String>,
}

impl Intent {
    /// An outcome for this intent (appended as `intent_seq`) with the identifying fields copied;
    /// the caller fills in status, ids, attempts, latency and error.
    pub fn outcome(&self, intent_seq: u64, outcome: OutcomeKind) -> Outcome {
        Outcome {
            intent_seq,
            request_id: self.request_id.clone(),
            caller: self.caller.clone(),
            operation: self.operation.clone(),
            ratepay_transaction_id: self.ratepay_transaction_id.clone(),
            partner: self.partner.clone(),
            idempotency_key: self.idempotency_key.clone(),
            outcome,
            status: None,
            ratepay_cancellation_id: None,
            attempts: 0,
            latency_ms: 0,
            error: None,
        }
    }
}

/// How an audited operation ended; appended after the final upstream answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `seq` of the intent record this outcome closes.
    pub intent_seq: u64,
    /// The gateway's request id (same as the intent's).
    pub request_id: String,
    /// The authenticated internal caller.
    pub caller: String,
    /// The operation name.
    pub operation: String,
    /// The transaction the operation acted on.
    pub ratepay_transaction_id: String,
    /// `X-Partner`, when the request carried one.
    pub partner: Option<String>,
    /// The `Idempotency-Key` forwarded upstream.
    pub idempotency_key: Option<String>,
    /// Success, failure or unknown.
    pub outcome: OutcomeKind,
    /// Final HTTP status from Ratepay, if one arrived.
    pub status: Option<u16>,
    /// `ratepay_cancellation_id` from Ratepay's answer, if any.
    pub ratepay_cancellation_id: Option<String>,
    /// Upstream attempts made (0 when nothing was sent).
    pub attempts: u32,
    /// Time from intent to final answer, in milliseconds.
    pub latency_ms: u64,
    /// A short error class or message; never a response body (cut at [`MAX_ERROR_LEN`]).
    pub error: Option<String>,
}

impl Outcome {
    /// An outcome closing `intent` (an open intent returned by recovery); `None` if the record
    /// is not an intent.
    pub fn for_open_intent(intent: &AuditRecord, outcome: OutcomeKind) -> Option<Outcome> {
        if intent.kind != RecordKind::Intent {
            return None;
        }
        Some(Outcome {
            intent_seq: intent.seq,
            request_id: intent.request_id.clone().unwrap_or_default(),
            caller: intent.caller.clone().unwrap_or_default(),
            operation: intent.operation.clone().unwrap_or_default(),
            ratepay_transaction_id: intent.ratepay_transaction_id.clone().unwrap_or_default(),
            partner: intent.partner.clone(),
            idempotency_key: intent.idempotency_key.clone(),
            outcome,
            status: None,
            ratepay_cancellation_id: None,
            attempts: 0,
            latency_ms: 0,
            error: None,
        })
    }
}

/// A gateway process started: which build, which configuration, whether it audits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    /// The writing gateway's instance name.
    pub instance: String,
    /// The gateway's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// Lowercase hex SHA-256 of the resolved, redacted configuration (`check-config`'s output).
    pub config_sha256: String,
    /// `audit.enabled`: false means nothing is audited until the next start.
    pub auditing: bool,
}

/// A gateway process stops cleanly (the last record before the final checkpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    /// The writing gateway's instance name.
    pub instance: String,
    /// The gateway's version.
    pub version: String,
}

/// What a caller asks the log to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditEntry {
    /// Before forwarding.
    Intent(Intent),
    /// After the final answer.
    Outcome(Outcome),
    /// A process started.
    Start(Start),
    /// A process stops cleanly.
    Stop(Stop),
}

/// One record as stored, without its `hash` (which the line carries after these fields).
///
/// The field order below is the order on disk and part of the hash definition; `None` fields
/// are omitted. Unknown fields are rejected when reading, so a line with an added field fails
/// verification even if its hash was recomputed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// Position in the chain, 1 for the first record ever; +1 per record, across files.
    pub seq: u64,
    /// UTC time the writer took the record, RFC 3339 with milliseconds and `Z`.
    pub ts: String,
    /// Hash of the previous record ([`GENESIS`] for seq 1).
    pub prev: String,
    /// Intent or outcome.
    pub kind: RecordKind,
    /// The gateway's request id. (intents and outcomes only, like the fields up to `error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The authenticated internal caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    /// Caller address (intents only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<IpAddr>,
    /// Operation name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// Transaction acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratepay_transaction_id: Option<String>,
    /// `X-Partner`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partner: Option<String>,
    /// Exact decimal text of `gross_amount` (intents only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gross_amount: Option<String>,
    /// `partner_operation_id` (intents only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partner_operation_id: Option<String>,
    /// `partner_shop_id` (intents only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partner_shop_id: Option<String>,
    /// SHA-256 of the forwarded body bytes (intents only; absent in records written before it
    /// existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_sha256: Option<String>,
    /// `Idempotency-Key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The intent this outcome closes (outcomes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent_seq: Option<u64>,
    /// Success, failure or unknown (outcomes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<OutcomeKind>,
    /// Final HTTP status (outcomes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Ratepay's cancellation id (outcomes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratepay_cancellation_id: Option<String>,
    /// Upstream attempts (outcomes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// Latency in milliseconds (outcomes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Short error text (outcomes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The writing gateway's instance (checkpoints, starts, stops).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Gateway version (starts, stops).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// SHA-256 of the resolved, redacted configuration (starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_sha256: Option<String>,
    /// Whether this run audits at all (starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auditing: Option<bool>,
    /// Records since the previous checkpoint (checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<u64>,
    /// The writer's `checkpoint_every_records`: no more records than this follow a checkpoint
    /// before the next (checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_records: Option<u64>,
    /// Id of the signing key (signed checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Ed25519 signature, lowercase hex, always the last field before `hash` (signed
    /// checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

impl AuditRecord {
    /// A record of the log's own (`kind` checkpoint, start or stop) with only the chain fields
    /// set; the caller fills in its kind's fields.
    pub fn system(seq: u64, ts: String, prev: String, kind: RecordKind) -> AuditRecord {
        AuditRecord {
            seq,
            ts,
            prev,
            kind,
            request_id: None,
            caller: None,
            source: None,
            operation: None,
            ratepay_transaction_id: None,
            partner: None,
            gross_amount: None,
            partner_operation_id: None,
            partner_shop_id: None,
            body_sha256: None,
            idempotency_key: None,
            intent_seq: None,
            outcome: None,
            status: None,
            ratepay_cancellation_id: None,
            attempts: None,
            latency_ms: None,
            error: None,
            instance: None,
            version: None,
            config_sha256: None,
            auditing: None,
            records: None,
            every_records: None,
            key_id: None,
            sig: None,
        }
    }

    /// Whether the record has the fields its kind needs (and only fields of its kind's group):
    /// an intent or outcome names request, caller, operation and transaction; a checkpoint,
    /// start or stop names none of them.
    fn has_shape_of_its_kind(&self) -> bool {
        let operation_fields = [
            &self.request_id,
            &self.caller,
            &self.operation,
            &self.ratepay_transaction_id,
        ];
        let system_fields = self.instance.is_some()
            || self.version.is_some()
            || self.config_sha256.is_some()
            || self.auditing.is_some()
            || self.records.is_some()
            || self.every_records.is_some()
            || self.key_id.is_some()
            || self.sig.is_some();
        match self.kind {
            RecordKind::Intent | RecordKind::Outcome => {
                operation_fields.iter().all(|f| f.is_some()) && !system_fields
            }
            RecordKind::Checkpoint => {
                operation_fields.iter().all(|f| f.is_none())
                    && self.instance.is_some()
                    && self.records.is_some()
                    && self.every_records.is_some()
                    && self.key_id.is_some() == self.sig.is_some()
            }
            RecordKind::Start | RecordKind::Stop => {
                operation_fields.iter().all(|f| f.is_none())
                    && self.instance.is_some()
                    && self.version.is_some()
            }
        }
    }
}

/// Formats a timestamp the way records carry it (UTC, milliseconds, `Z`).
pub fn format_ts(at: OffsetDateTime) -> String {
    let utc = at.to_offset(UtcOffset::UTC);
    // Formatting a valid date with a fixed, all-numeric description cannot fail in practice;
    // fall back to the default RFC 3339 rendering rather than panicking if it ever does.
    utc.format(TS_FORMAT).unwrap_or_else(|_| {
        format!(
            "{}-{:02}-{:02}T00:00:00.000Z",
            utc.year(),
            u8::from(utc.month()),
            utc.day()
        )
    })
}

/// Parses a record's `ts` back to a UTC time (for daily rotation after a restart).
pub(crate) fn parse_ts(ts: &str) -> Option<OffsetDateTime> {
    time::PrimitiveDateTime::parse(ts, TS_FORMAT)
        .ok()
        .map(|t| t.assume_utc())
}

/// Builds the record for `entry` at chain position `seq` after `prev`, taken at `at`.
pub fn build_record(entry: AuditEntry, seq: u64, prev: &str, at: OffsetDateTime) -> AuditRecord {
    let base =
        |request_id, caller, operation, ratepay_transaction_id, partner, idempotency_key, kind| {
            AuditRecord {
                request_id: Some(request_id),
                caller: Some(caller),
                operation: Some(operation),
                ratepay_transaction_id: Some(ratepay_transaction_id),
                partner,
                idempotency_key,
                ..AuditRecord::system(seq, format_ts(at), prev.to_owned(), kind)
            }
        };
    match entry {
        AuditEntry::Intent(i) => AuditRecord {
            source: Some(i.source),
            gross_amount: i.gross_amount,
            partner_operation_id: i.partner_operation_id,
            partner_shop_id: i.partner_shop_id,
            body_sha256: Some(i.body_sha256),
            ..base(
                i.request_id,
                i.caller,
                i.operation,
                i.ratepay_transaction_id,
                i.partner,
                i.idempotency_key,
                RecordKind::Intent,
            )
        },
        AuditEntry::Outcome(o) => AuditRecord {
            intent_seq: Some(o.intent_seq),
            outcome: Some(o.outcome),
            status: o.status,
            ratepay_cancellation_id: o.ratepay_cancellation_id,
            attempts: Some(o.attempts),
            latency_ms: Some(o.latency_ms),
            error: o.error.map(cut_error),
            ..base(
                o.request_id,
                o.caller,
                o.operation,
                o.ratepay_transaction_id,
                o.partner,
                o.idempotency_key,
                RecordKind::Outcome,
            )
        },
        AuditEntry::Start(st) => AuditRecord {
            instance: Some(st.instance),
            version: Some(st.version),
            config_sha256: Some(st.config_sha256),
            auditing: Some(st.auditing),
            ..AuditRecord::system(seq, format_ts(at), prev.to_owned(), RecordKind::Start)
        },
        AuditEntry::Stop(st) => AuditRecord {
            instance: Some(st.instance),
            version: Some(st.version),
            ..AuditRecord::system(seq, format_ts(at), prev.to_owned(), RecordKind::Stop)
        },
    }
}

fn cut_error(mut error: String) -> String {
    if error.len() > MAX_ERROR_LEN {
        let mut end = MAX_ERROR_LEN;
        while !error.is_char_boundary(end) {
            end -= 1;
        }
        error.truncate(end);
    }
    error
}

/// The canonical bytes of a record: serde_json, fields in declaration order, no whitespace,
/// no `hash` field. The record's hash is SHA-256 over exactly these bytes.
pub fn canonical_bytes(record: &AuditRecord) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(record)
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    digest_hex(&Sha256::digest(bytes).into())
}

/// Lowercase hex of a SHA-256 digest. `hex::encode` pushes `char`s one at a time into a growing
/// `String` (0.3 % of an audited cancellation's CPU in a perf profile, four digests a
/// cancellation); the same crate's `encode_to_slice` fills the 64 bytes from its table at once.
pub fn digest_hex(digest: &[u8; 32]) -> String {
    let mut out = [0u8; 64];
    // Cannot fail: the output is exactly twice the input, and hex digits are ASCII.
    let _ = hex::encode_to_slice(digest, &mut out);
    String::from_utf8(out.to_vec()).unwrap_or_default()
}

/// A record ready to write: its line (with `hash` and trailing newline) and its hash.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// `{...canonical fields...,"hash":"<hex>"}\n`.
    pub line: Vec<u8>,
    /// SHA-256 hex of the canonical bytes.
    pub hash: String,
}

/// Encodes a record as one JSON line: the canonical bytes with `"hash"` added as last field.
pub fn encode(record: &AuditRecord) -> Result<Encoded, serde_json::Error> {
    let mut line = canonical_bytes(record)?;
    let hash = sha256_hex(&line);
    // The canonical bytes of a struct always end in `}`: replace it by `,"hash":"..."}`.
    line.pop();
    line.extend_from_slice(HASH_PREFIX);
    line.extend_from_slice(hash.as_bytes());
    line.extend_from_slice(b"\"}\n");
    Ok(Encoded { line, hash })
}

/// Why one line is not a valid record (chain links are checked separately).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineFault {
    /// The line does not parse as JSON.
    #[error("not JSON ({0})")]
    NotJson(String),
    /// The line is JSON but does not end with the `"hash"` field.
    #[error("no trailing \"hash\" field")]
    MissingHash,
    /// The stored hash is not the hash of the record's contents.
    #[error("hash mismatch, the record was changed (stored {stored}, computed {computed})")]
    HashMismatch {
        /// Hash written in the line.
        stored: String,
        /// Hash of the line's canonical bytes.
        computed: String,
    },
    /// The JSON is not an audit record (missing or unknown field, wrong type).
    #[error("not an audit record ({0})")]
    NotARecord(String),
    /// The record parses, but re-encoding it gives different bytes (reordered fields, spaces,
    /// `null`s): a writer never produces that.
    #[error("record is not in canonical form")]
    NotCanonical,
}

/// Decodes and checks one line (without its newline): JSON, hash, record shape, canonical form.
/// Returns the record and its hash.
pub fn decode(line: &[u8]) -> Result<(AuditRecord, String), LineFault> {
    serde_json::from_slice::<serde::de::IgnoredAny>(line)
        .map_err(|e| LineFault::NotJson(e.to_string()))?;
    if line.len() < HASH_SUFFIX_LEN + 1 {
        return Err(LineFault::MissingHash);
    }
    let split = line.len() - HASH_SUFFIX_LEN;
    let (body, suffix) = line.split_at(split);
    let stored = &suffix[HASH_PREFIX.len()..HASH_PREFIX.len() + 64];
    if !suffix.starts_with(HASH_PREFIX)
        || !suffix.ends_with(b"\"}")
        || !stored
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    {
        return Err(LineFault::MissingHash);
    }
    let mut canonical = Vec::with_capacity(body.len() + 1);
    canonical.extend_from_slice(body);
    canonical.push(b'}');
    let computed = sha256_hex(&canonical);
    // `stored` is ASCII hex (checked above).
    let stored = String::from_utf8_lossy(stored).into_owned();
    if computed != stored {
        return Err(LineFault::HashMismatch { stored, computed });
    }
    let record: AuditRecord =
        serde_json::from_slice(&canonical).map_err(|e| LineFault::NotARecord(e.to_string()))?;
    match canonical_bytes(&record) {
        Ok(again) if again != canonical => Err(LineFault::NotCanonical),
        Ok(_) if !record.has_shape_of_its_kind() => Err(LineFault::NotARecord(format!(
            "a {} record with fields it does not have or without fields it needs",
            record.kind.name()
        ))),
        Ok(_) => Ok((record, computed)),
        Err(_) => Err(LineFault::NotCanonical),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn digests_are_lowercase_hex_as_the_hex_crate_writes_them() {
        for seed in [&b""[..], b"abc", &[0xff; 1000]] {
            let digest: [u8; 32] = Sha256::digest(seed).into();
            assert_eq!(digest_hex(&digest), hex::encode(digest));
        }
        // `printf abc | sha256sum`
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    fn intent() -> Intent {
        Intent {
            request_id: "req-1".into(),
            caller: "shop-backend".into(),
            source: "10.1.2.3".parse().unwrap(),
            operation: "payment.cancellations.create".into(),
            ratepay_transaction_id: "scwBgARW-nE93I7_ywhp".into(),
            partner: Some("partner-a".into()),
            gross_amount: Some("12.50".into()),
            partner_operation_id: Some("op-77".into()),
            partner_shop_id: None,
            body_sha256: "0".repeat(64),
            idempotency_key: Some("idem-1".into()),
        }
    }

    #[test]
    fn timestamp_is_utc_millis_z() {
        let t = datetime!(2025-11-21 09:43:12.345678 +01:00);
        assert_eq!(format_ts(t), "2025-11-21T08:43:12.345Z");
        assert_eq!(
            parse_ts("2025-11-21T08:43:12.345Z"),
            Some(datetime!(2025-11-21 08:43:12.345 UTC))
        );
    }

    #[test]
    fn canonical_bytes_are_stable() {
        let r = build_record(
            AuditEntry::Intent(intent()),
            1,
            GENESIS,
            datetime!(2025-11-21 08:43:12.345 UTC),
        );
        let bytes = canonical_bytes(&r).unwrap();
        let expected = concat!(
            r#"{"seq":1,"ts":"2025-11-21T08:43:12.345Z","prev":"0000000000000000000000000000000000000000000000000000000000000000","#,
            r#""kind":"intent","request_id":"req-1","caller":"shop-backend","source":"10.1.2.3","#,
            r#""operation":"payment.cancellations.create","ratepay_transaction_id":"scwBgARW-nE93I7_ywhp","#,
            r#""partner":"partner-a","gross_amount":"12.50","partner_operation_id":"op-77","#,
            r#""body_sha256":"0000000000000000000000000000000000000000000000000000000000000000","idempotency_key":"idem-1"}"#
        );
        assert_eq!(std::str::from_utf8(&bytes).unwrap(), expected);
        // Pinned so that an accidental change of field order or format shows up here.
        assert_eq!(sha256_hex(expected.as_bytes()), encode(&r).unwrap().hash);
    }

    #[test]
    fn encode_then_decode_round_trips() {
        let r = build_record(
            AuditEntry::Intent(intent()),
            7,
            &"ab".repeat(32),
            OffsetDateTime::now_utc(),
        );
        let enc = encode(&r).unwrap();
        assert!(enc
            .line
            .ends_with(format!(",\"hash\":\"{}\"}}\n", enc.hash).as_bytes()));
        let (back, hash) = decode(&enc.line[..enc.line.len() - 1]).unwrap();
        assert_eq!(back, r);
        assert_eq!(hash, enc.hash);
    }

    #[test]
    fn outcome_record_fields() {
        let i = intent();
        let mut o = i.outcome(1, OutcomeKind::Success);
        o.status = Some(201);
        o.ratepay_cancellation_id = Some("aa7rth5-__GG44rdsasf".into());
        o.attempts = 2;
        o.latency_ms = 340;
        o.error = Some("é".repeat(200));
        let r = build_record(
            AuditEntry::Outcome(o),
            2,
            GENESIS,
            OffsetDateTime::now_utc(),
        );
        assert_eq!(r.kind, RecordKind::Outcome);
        assert_eq!(r.intent_seq, Some(1));
        assert_eq!(r.source, None);
        assert_eq!(r.gross_amount, None);
        assert!(r.error.as_ref().unwrap().len() <= MAX_ERROR_LEN);
        let line = encode(&r).unwrap().line;
        let text = std::str::from_utf8(&line).unwrap();
        assert!(text.contains(r#""outcome":"success","status":201,"ratepay_cancellation_id":"aa7rth5-__GG44rdsasf","attempts":2,"latency_ms":340"#));
    }

    #[test]
    fn decode_detects_each_line_fault() {
        let r = build_record(
            AuditEntry::Intent(intent()),
            1,
            GENESIS,
            OffsetDateTime::now_utc(),
        );
        let line = String::from_utf8(encode(&r).unwrap().line).unwrap();
        let line = line.trim_end();

        assert!(matches!(decode(b"{not json"), Err(LineFault::NotJson(_))));
        assert!(matches!(
            decode(b"{\"seq\":1}"),
            Err(LineFault::MissingHash)
        ));
        let changed = line.replace("\"12.50\"", "\"92.50\"");
        assert!(matches!(
            decode(changed.as_bytes()),
            Err(LineFault::HashMismatch { .. })
        ));

        // An added field with a recomputed hash is still refused.
        let body = line.split(",\"hash\"").next().unwrap();
        let added = format!("{body},\"card\":\"4111\"}}");
        let forged = format!(
            "{},\"hash\":\"{}\"}}",
            &added[..added.len() - 1],
            sha256_hex(added.as_bytes())
        );
        assert!(matches!(
            decode(forged.as_bytes()),
            Err(LineFault::NotARecord(_))
        ));

        // Same fields with a space: parses, but is not what a writer produces.
        let spaced = body.replacen("\"seq\":1", "\"seq\": 1", 1) + "}";
        let forged = format!(
            "{},\"hash\":\"{}\"}}",
            &spaced[..spaced.len() - 1],
            sha256_hex(spaced.as_bytes())
        );
        assert_eq!(
            decode(forged.as_bytes()).unwrap_err(),
            LineFault::NotCanonical
        );
    }
}
