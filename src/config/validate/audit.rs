//! `[audit]`: which operations are audited, the log file, and its signed checkpoints.

use std::{path::Path, time::Duration};

use crate::{
    audit::{CheckpointConfig, SigningKey},
    config::{file, problems::Ctx, AuditSettings},
    routes,
};

/// Largest `checkpoint_every_records`: more unsigned records than this is no protection.
const MAX_CHECKPOINT_RECORDS: u64 = 1_000_000;
/// Largest `checkpoint_every_secs` (a day).
const MAX_CHECKPOINT_SECS: u64 = 86_400;
/// Largest `outcome_sync_delay_ms`: an outcome answered is on disk within a second at most.
const MAX_OUTCOME_SYNC_DELAY_MS: u64 = 1000;

pub(super) fn audit(f: &file::AuditFile, cx: &Ctx<'_>) -> Option<AuditSettings> {
    let d = AuditSettings::default();
    let mut operations = Vec::new();
    let mut all_ok = true;
    let names: Vec<&str> = match &f.operations {
        Some(names) => names.iter().map(String::as_str).collect(),
        None => d.operations.clone(),
    };
    for name in names {
        match routes::operation(name) {
            Some(op) if op.creating() => operations.push(op.name),
            Some(_) => {
                cx.report(
                    "audit.operations",
                    format!(
                        "{name} is not a creating POST; only money-moving creates can be audited"
                    ),
                );
                all_ok = false;
            }
            None => {
                cx.report("audit.operations", format!("unknown operation {name:?}"));
                all_ok = false;
            }
        }
    }
    let enabled = f.enabled.unwrap_or(d.enabled);
    let always = cx.require(
        !enabled || operations.contains(&AuditSettings::ALWAYS_AUDITED),
        "audit.operations",
        format!(
            "{} is always audited; list it too",
            AuditSettings::ALWAYS_AUDITED
        ),
    );
    let mut log = d.log;
    if let Some(path) = &f.path {
        log.path = path.into();
    }
    log.rotate_bytes = f.rotate_bytes.or(log.rotate_bytes);
    log.rotate_daily = f.rotate_daily.unwrap_or(log.rotate_daily);
    let rotate_ok = cx.require(
        log.rotate_bytes.is_none_or(|b| b >= 4096),
        "audit.rotate_bytes",
        "expected at least 4096 bytes",
    );
    let every_records = f.checkpoint_every_records.unwrap_or(1000);
    let records_ok = cx.require(
        (1..=MAX_CHECKPOINT_RECORDS).contains(&every_records),
        "audit.checkpoint_every_records",
        format!("expected 1 to {MAX_CHECKPOINT_RECORDS} records"),
    );
    let every_secs = f.checkpoint_every_secs.unwrap_or(60);
    let secs_ok = cx.require(
        (1..=MAX_CHECKPOINT_SECS).contains(&every_secs),
        "audit.checkpoint_every_secs",
        format!("expected 1 to {MAX_CHECKPOINT_SECS} seconds"),
    );
    let outcome_sync = outcome_sync(f, cx);
    if let Some(delay) = outcome_sync {
        log.outcome_sync_delay = delay;
    }
    // Parsed now, so a bad key stops the start rather than the first checkpoint. The error
    // names the file and what is wrong, never the key's bytes.
    let signing_key = match &f.signing_key_file {
        Some(path) => cx
            .check(
                SigningKey::from_file(Path::new(path))
                    .map_err(|e| cx.err("audit.signing_key_file", e)),
            )
            .map(Some),
        None => Some(None),
    };
    log.checkpoints = Some(CheckpointConfig {
        every_records,
        every: Duration::from_secs(every_secs),
        signing_key: signing_key.clone().flatten(),
    });
    always?;
    rotate_ok?;
    records_ok?;
    secs_ok?;
    outcome_sync?;
    signing_key?;
    all_ok.then_some(AuditSettings {
        log,
        enabled,
        operations,
    })
}

/// `outcome_durability` and `outcome_sync_delay_ms`: the outcome's sync delay (`None` inside:
/// synced before the answer), or `None` after reporting what is wrong.
fn outcome_sync(f: &file::AuditFile, cx: &Ctx<'_>) -> Option<Option<Duration>> {
    let delay_ms = f
        .outcome_sync_delay_ms
        .unwrap_or(AuditSettings::DEFAULT_OUTCOME_SYNC_DELAY.as_millis() as u64);
    match f.outcome_durability.as_deref().unwrap_or("written") {
        "written" => cx
            .require(
                (1..=MAX_OUTCOME_SYNC_DELAY_MS).contains(&delay_ms),
                "audit.outcome_sync_delay_ms",
                format!("expected 1 to {MAX_OUTCOME_SYNC_DELAY_MS} ms"),
            )
            .map(|()| Some(Duration::from_millis(delay_ms))),
        "synced" => cx
            .require(
                f.outcome_sync_delay_ms.is_none(),
                "audit.outcome_sync_delay_ms",
                "applies only with outcome_durability = \"written\"",
            )
            .map(|()| None),
        other => {
            cx.report(
                "audit.outcome_durability",
                format!("expected \"written\" or \"synced\", got {other:?}"),
            );
            None
        }
    }
}
