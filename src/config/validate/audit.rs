//! `[audit]`: which operations are audited, and the log file.

use crate::{
    config::{file, problems::Ctx, AuditSettings},
    routes,
};

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
    always?;
    rotate_ok?;
    all_ok.then_some(AuditSettings {
        log,
        enabled,
        operations,
    })
}
