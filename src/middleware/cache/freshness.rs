//! The lifetime policy: how long an answer may be served, decided by its content (terminal
//! records long, changing ones briefly, a past day's all-terminal list long, 404s briefly).

use std::time::Duration;

use http::StatusCode;
use serde_json::Value;
use time::{macros::format_description, Date};

use crate::config::CacheSettings;

use super::*;

/// Statuses after which a session record no longer changes.
pub const TERMINAL: [&str; 4] = ["COMPLETED", "ERROR", "EXPIRED", "CANCELED"];

/// Whether a `session_status` is terminal.
pub fn is_terminal(status: &str) -> bool {
    TERMINAL.contains(&status)
}

/// How long an answer may be served, and the transactions its records belong to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Freshness {
    /// Time to live.
    pub ttl: Duration,
    /// `transaction_id`s of the records (for invalidation on cancellation).
    pub transaction_ids: Vec<String>,
}

pub(super) fn transaction_id(record: &Value) -> Option<String> {
    record
        .get("transaction_id")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

pub(super) fn terminal_record(record: &Value) -> bool {
    record
        .get("session_status")
        .and_then(Value::as_str)
        .is_some_and(is_terminal)
}

/// Freshness of one Ratepay answer by its content; `None`: do not store it.
///
/// A record: terminal status → `terminal_ttl`, any other or unknown status → `changing_ttl`.
/// A list: a past day (before `today`, UTC) whose records are all terminal → `list_past_ttl`;
/// today, a future day, or a past day still holding a changing record (a session created just
/// before midnight) → `list_today_ttl`. A 404 → `not_found_ttl`. Anything else, a body that is
/// not the expected JSON, or a zero lifetime → not stored.
pub fn freshness(
    settings: &CacheSettings,
    operation: &str,
    status: StatusCode,
    body: &[u8],
    query: Option<&str>,
    today: Date,
) -> Option<Freshness> {
    let fresh = match status {
        StatusCode::NOT_FOUND => Freshness {
            ttl: settings.not_found_ttl,
            transaction_ids: Vec::new(),
        },
        StatusCode::OK if operation == RECORD_GET => {
            let record: Value = serde_json::from_slice(body).ok()?;
            record.get("session_id")?;
            Freshness {
                ttl: if terminal_record(&record) {
                    settings.terminal_ttl
                } else {
                    settings.changing_ttl
                },
                transaction_ids: transaction_id(&record).into_iter().collect(),
            }
        }
        StatusCode::OK if operation == RECORD_LIST => {
            let day = query_param(query, "createdDate")
                .and_then(|d| Date::parse(d, format_description!("[year]-[month]-[day]")).ok())?;
            let records: Vec<Value> = serde_json::from_slice(body).ok()?;
            let settled = day < today && records.iter().all(terminal_record);
            Freshness {
                ttl: if settled {
                    settings.list_past_ttl
                } else {
                    settings.list_today_ttl
                },
                transaction_ids: records.iter().filter_map(transaction_id).collect(),
            }
        }
        _ => return None,
    };
    (!fresh.ttl.is_zero()).then_some(fresh)
}
