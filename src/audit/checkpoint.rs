//! Signed checkpoints: the Ed25519 keys, the exact bytes a checkpoint signs, when the writer
//! owes one, and the anchors (checkpoints copied off the machine) that `verify` compares with.
//!
//! A checkpoint is an ordinary record of the chain (`kind` `checkpoint`) whose `prev` is the
//! head hash of everything before it. Its signature covers [`SIGNATURE_DOMAIN`] followed by the
//! record's canonical bytes without the `sig` field, so it binds the whole chain up to it; the
//! record's own hash then covers the signature. `docs/audit.md` spells the bytes out.

use std::{path::Path, sync::Arc, time::Duration};

use aws_lc_rs::{
    rand::SystemRandom,
    signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519},
};
use rustls::pki_types::{pem::PemObject, PrivateKeyDer};
use secrecy::{ExposeSecret, SecretSlice};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::record::{canonical_bytes, sha256_hex, AuditRecord, RecordKind};

/// What a checkpoint signature signs first, before the record's canonical bytes without `sig`.
pub const SIGNATURE_DOMAIN: &[u8] = b"ratepay-gateway audit checkpoint v1\n";

/// Hex digits of a key id: the start of the SHA-256 of the raw 32-byte public key.
const KEY_ID_HEX: usize = 16;

/// An Ed25519 private key that signs checkpoints. Never printed: `Debug` shows its key id.
#[derive(Clone)]
pub struct SigningKey {
    pair: Arc<Ed25519KeyPair>,
    public: PublicKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.public.id)
            .finish_non_exhaustive()
    }
}

/// Two keys are the same key when their public halves are.
impl PartialEq for SigningKey {
    fn eq(&self, other: &Self) -> bool {
        self.public == other.public
    }
}

impl Eq for SigningKey {}

impl SigningKey {
    /// Reads a PKCS#8 Ed25519 private key (PEM `PRIVATE KEY` or DER, v1 or v2) from `path`.
    /// The error names the file, never the key's bytes.
    pub fn from_file(path: &Path) -> Result<SigningKey, String> {
        let bytes = SecretSlice::from(
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        );
        SigningKey::from_pkcs8(bytes.expose_secret())
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses a PKCS#8 Ed25519 private key, PEM or DER.
    pub fn from_pkcs8(bytes: &[u8]) -> Result<SigningKey, String> {
        let pair = if bytes.starts_with(b"-----BEGIN") {
            let der = PrivateKeyDer::from_pem_slice(bytes)
                .map_err(|_| "holds no PEM private key".to_owned())?;
            Ed25519KeyPair::from_pkcs8(der.secret_der())
        } else {
            Ed25519KeyPair::from_pkcs8(bytes)
        }
        .map_err(|e| format!("is not an Ed25519 private key in PKCS#8 ({e})"))?;
        let public = PublicKey::from_raw(pair.public_key().as_ref())?;
        Ok(SigningKey {
            pair: Arc::new(pair),
            public,
        })
    }

    /// A new random key: its PKCS#8 v2 DER (to write to a file) and the key.
    pub fn generate() -> Result<(SecretSlice<u8>, SigningKey), String> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| "cannot generate an Ed25519 key".to_owned())?;
        let der = SecretSlice::from(doc.as_ref().to_vec());
        let key = SigningKey::from_pkcs8(der.expose_secret())?;
        Ok((der, key))
    }

    /// The public half.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The `sig` of a checkpoint record with these fields (its `key_id` set to this key's):
    /// what the writer computes. Anyone holding the key can do the same, which is why
    /// checkpoints are also anchored off the machine.
    pub fn sign_checkpoint(&self, record: &AuditRecord) -> Result<String, String> {
        signature_input(record)
            .map(|input| self.sign_hex(&input))
            .map_err(|e| e.to_string())
    }

    /// Lowercase hex Ed25519 signature of `message`.
    fn sign_hex(&self, message: &[u8]) -> String {
        hex::encode(self.pair.sign(message).as_ref())
    }
}

/// An Ed25519 public key that verifies checkpoints, with its key id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    raw: [u8; 32],
    id: String,
}

impl PublicKey {
    /// From the raw 32 bytes.
    pub fn from_raw(raw: &[u8]) -> Result<PublicKey, String> {
        let raw: [u8; 32] = raw
            .try_into()
            .map_err(|_| format!("an Ed25519 public key has 32 bytes, not {}", raw.len()))?;
        let id = sha256_hex(&raw)[..KEY_ID_HEX].to_owned();
        Ok(PublicKey { raw, id })
    }

    /// From the text of a `.pub` file: 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<PublicKey, String> {
        let bytes = hex::decode(text.trim())
            .map_err(|_| "expected 64 hex digits (an Ed25519 public key)".to_owned())?;
        PublicKey::from_raw(&bytes)
    }

    /// Reads a `.pub` file as written by `ratepay-gateway audit keygen`.
    pub fn from_file(path: &Path) -> Result<PublicKey, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        PublicKey::from_hex(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The key as 64 lowercase hex digits (the `.pub` file's content).
    pub fn to_hex(&self) -> String {
        hex::encode(self.raw)
    }

    /// The key id checkpoints name: the first 16 hex digits of SHA-256 of the raw key.
    pub fn key_id(&self) -> &str {
        &self.id
    }

    /// Whether `sig_hex` is this key's signature of `message`.
    fn verifies(&self, message: &[u8], sig_hex: &str) -> bool {
        let Ok(sig) = hex::decode(sig_hex) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, &self.raw)
            .verify(message, &sig)
            .is_ok()
    }
}

/// When the writer appends checkpoints, and with which key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointConfig {
    /// A checkpoint after at most this many records (the checkpoint states it, signed, so
    /// `verify` can tell removed checkpoints from a normal unsigned tail).
    pub every_records: u64,
    /// A checkpoint once this long has passed since the last one, if records came meanwhile.
    pub every: Duration,
    /// Signs the checkpoints; without it they are written unsigned.
    pub signing_key: Option<SigningKey>,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            every_records: 1000,
            every: Duration::from_secs(60),
            signing_key: None,
        }
    }
}

/// The writer's checkpoint bookkeeping: records since the last checkpoint and when it was.
#[derive(Debug, Clone)]
pub(crate) struct Due {
    /// Records written since the last checkpoint (or since the chain began).
    pub pending: u64,
    /// When the last checkpoint was written (or the log opened), on the writer's clock.
    pub since: OffsetDateTime,
}

impl Due {
    /// Whether a checkpoint is owed at `now`: records are waiting and either enough of them
    /// came, or enough time passed (whichever first).
    pub fn due(&self, config: &CheckpointConfig, now: OffsetDateTime) -> bool {
        self.pending > 0
            && (self.pending >= config.every_records
                || (now - self.since).unsigned_abs() >= config.every)
    }
}

/// The bytes a checkpoint's signature covers: [`SIGNATURE_DOMAIN`], then the canonical bytes
/// of `record` with `sig` left out.
pub fn signature_input(record: &AuditRecord) -> Result<Vec<u8>, serde_json::Error> {
    let unsigned = AuditRecord {
        sig: None,
        ..record.clone()
    };
    let mut input = SIGNATURE_DOMAIN.to_vec();
    input.extend_from_slice(&canonical_bytes(&unsigned)?);
    Ok(input)
}

/// The checkpoint at `seq` after `prev`: covers the `records` records since the previous
/// checkpoint, signed with `key` when there is one.
#[allow(clippy::too_many_arguments)]
pub(crate) fn checkpoint_record(
    seq: u64,
    prev: &str,
    ts: String,
    instance: &str,
    records: u64,
    every_records: u64,
    key: Option<&SigningKey>,
) -> Result<AuditRecord, serde_json::Error> {
    let mut record = AuditRecord {
        instance: Some(instance.to_owned()),
        records: Some(records),
        every_records: Some(every_records),
        key_id: key.map(|k| k.public.id.clone()),
        ..AuditRecord::system(seq, ts, prev.to_owned(), RecordKind::Checkpoint)
    };
    if let Some(key) = key {
        record.sig = Some(key.sign_hex(&signature_input(&record)?));
    }
    Ok(record)
}

/// Why a checkpoint does not check out with the keys given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SignatureCheck {
    /// Signed by one of the keys, over exactly this record.
    Valid,
    /// No `sig`.
    Unsigned,
    /// Signed with a key id none of the keys has.
    UnknownKey(String),
    /// The signature does not verify with the key it names.
    Bad(String),
}

/// Checks `record`'s signature against `keys` (by key id).
pub(crate) fn check_signature(record: &AuditRecord, keys: &[PublicKey]) -> SignatureCheck {
    let (Some(key_id), Some(sig)) = (&record.key_id, &record.sig) else {
        return SignatureCheck::Unsigned;
    };
    let Some(key) = keys.iter().find(|k| &k.id == key_id) else {
        return SignatureCheck::UnknownKey(key_id.clone());
    };
    match signature_input(record) {
        Ok(input) if key.verifies(&input, sig) => SignatureCheck::Valid,
        _ => SignatureCheck::Bad(key_id.clone()),
    }
}

/// The latest durable checkpoint, as logged, served on `GET /audit/checkpoint` and given to
/// `audit verify --anchor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    /// The checkpoint record's seq.
    pub seq: u64,
    /// The checkpoint record's hash: the chain head including it.
    pub hash: String,
    /// The checkpoint's `ts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<String>,
    /// The head before it (its `prev`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<String>,
    /// The writing gateway's instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Key id of the signing key (absent: unsigned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The signature (absent: unsigned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

impl Anchor {
    /// The anchor of a checkpoint record with hash `hash`.
    pub(crate) fn of(record: &AuditRecord, hash: &str) -> Anchor {
        Anchor {
            seq: record.seq,
            hash: hash.to_owned(),
            ts: Some(record.ts.clone()),
            prev: Some(record.prev.clone()),
            instance: record.instance.clone(),
            key_id: record.key_id.clone(),
            sig: record.sig.clone(),
        }
    }

    /// How long before `now` the checkpoint was written (zero if its `ts` is later or absent).
    pub fn age(&self, now: OffsetDateTime) -> Duration {
        self.ts
            .as_deref()
            .and_then(super::record::parse_ts)
            .map_or(Duration::ZERO, |at| {
                Duration::try_from(now - at).unwrap_or(Duration::ZERO)
            })
    }

    /// Reads one anchor per non-empty line of `path`: the JSON of `GET /audit/checkpoint`, or
    /// a JSON log line of the gateway's `audit checkpoint` event (the same fields at the top).
    pub fn read_file(path: &Path) -> Result<Vec<Anchor>, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut anchors = Vec::new();
        for (no, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let anchor = parse_anchor(line).map_err(|e| {
                format!(
                    "{}:{}: not an anchored checkpoint: {e}",
                    path.display(),
                    no + 1
                )
            })?;
            anchors.push(anchor);
        }
        if anchors.is_empty() {
            return Err(format!(
                "{}: no anchored checkpoint in the file",
                path.display()
            ));
        }
        Ok(anchors)
    }
}

/// One anchor line: `seq` (a number) and `hash` (64 hex digits) are required.
fn parse_anchor(line: &str) -> Result<Anchor, String> {
    let anchor: Anchor = {
        // Other fields of a log line (timestamp, level, message, target) are ignored.
        #[derive(Deserialize)]
        struct Lenient {
            seq: u64,
            hash: String,
            ts: Option<String>,
            prev: Option<String>,
            instance: Option<String>,
            key_id: Option<String>,
            sig: Option<String>,
        }
        let l: Lenient = serde_json::from_str(line).map_err(|e| e.to_string())?;
        Anchor {
            seq: l.seq,
            hash: l.hash,
            ts: l.ts,
            prev: l.prev,
            instance: l.instance,
            key_id: l.key_id,
            sig: l.sig,
        }
    };
    if anchor.hash.len() != 64
        || !anchor
            .hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err("hash is not 64 lowercase hex digits".into());
    }
    Ok(anchor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::{encode, GENESIS};
    use time::macros::datetime;

    #[test]
    fn due_whichever_comes_first() {
        let config = CheckpointConfig {
            every_records: 3,
            every: Duration::from_secs(60),
            signing_key: None,
        };
        let t0 = datetime!(2026-01-01 00:00:00 UTC);
        let due = |pending, secs| {
            Due { pending, since: t0 }.due(&config, t0 + time::Duration::seconds(secs))
        };
        assert!(!due(0, 3600), "nothing to sign");
        assert!(!due(2, 59));
        assert!(due(3, 0), "enough records");
        assert!(due(1, 60), "enough time");
        // A clock stepped back by more than the interval also makes one due.
        assert!(due(1, -61));
    }

    #[test]
    fn signature_covers_the_record_and_names_the_key() {
        let (_, key) = SigningKey::generate().unwrap();
        let (_, other) = SigningKey::generate().unwrap();
        let r = checkpoint_record(
            9,
            &"ab".repeat(32),
            "2026-01-01T00:00:00.000Z".into(),
            "gateway",
            8,
            1000,
            Some(&key),
        )
        .unwrap();
        let keys = [other.public_key().clone(), key.public_key().clone()];
        assert_eq!(check_signature(&r, &keys), SignatureCheck::Valid);
        assert_eq!(
            check_signature(&r, &keys[..1]),
            SignatureCheck::UnknownKey(key.public_key().key_id().to_owned())
        );
        let changed = AuditRecord {
            prev: GENESIS.into(),
            ..r.clone()
        };
        assert!(matches!(
            check_signature(&changed, &keys),
            SignatureCheck::Bad(_)
        ));
        let unsigned =
            checkpoint_record(9, GENESIS, r.ts.clone(), "gateway", 8, 1000, None).unwrap();
        assert_eq!(check_signature(&unsigned, &keys), SignatureCheck::Unsigned);
        // The signature input is the domain, then the line's canonical bytes without `sig`.
        let line = String::from_utf8(encode(&r).unwrap().line).unwrap();
        let canonical = format!("{}}}", line.rsplit_once(",\"hash\":").unwrap().0);
        let without_sig = format!("{}}}", canonical.rsplit_once(",\"sig\":").unwrap().0);
        let mut expected = SIGNATURE_DOMAIN.to_vec();
        expected.extend_from_slice(without_sig.as_bytes());
        assert_eq!(signature_input(&r).unwrap(), expected);
    }

    #[test]
    fn keys_parse_from_der_and_pem_and_never_print() {
        let (der, key) = SigningKey::generate().unwrap();
        let again = SigningKey::from_pkcs8(der.expose_secret()).unwrap();
        assert_eq!(again, key);
        assert!(SigningKey::from_pkcs8(b"not a key").is_err());
        let debug = format!("{key:?}");
        let seed = &der.expose_secret()[16..48];
        assert!(!debug.contains(&hex::encode(seed)), "{debug}");
        assert!(debug.contains(key.public_key().key_id()), "{debug}");
        let public = PublicKey::from_hex(&format!("{}\n", key.public_key().to_hex())).unwrap();
        assert_eq!(&public, key.public_key());
        assert!(PublicKey::from_hex("abcd").is_err());
    }

    #[test]
    fn anchors_parse_from_the_endpoint_and_from_log_lines() {
        let h = "c".repeat(64);
        let served = format!(r#"{{"seq":12,"hash":"{h}","ts":"2026-01-01T00:00:00.000Z"}}"#);
        let logged = format!(
            r#"{{"timestamp":"2026-01-01T00:00:00.000001Z","level":"INFO","message":"audit checkpoint","seq":12,"hash":"{h}","target":"ratepay_gateway::audit::writer"}}"#
        );
        assert_eq!(parse_anchor(&served).unwrap().seq, 12);
        assert_eq!(parse_anchor(&logged).unwrap().hash, h);
        assert!(parse_anchor(r#"{"seq":1}"#).is_err());
        assert!(parse_anchor(r#"{"seq":1,"hash":"xyz"}"#).is_err());
    }
}
