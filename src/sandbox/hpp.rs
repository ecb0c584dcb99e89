//! Hosted Payment Page: sessions and their records (`/pps/api/v1/...`).
//!
//! A session's status is computed lazily when it is read, never by a timer:
//! - `session_step = None`: it stays `CREATED` until a test sets it;
//! - `session_step = Some(d)` with `d > 0`: `CREATED`, then `IN_PROGRESS` after `d`, then
//!   `COMPLETED` after `2d`, counted from creation (wall clock);
//! - `session_step = Some(0)`: every read advances it by one step: the first read shows
//!   `CREATED`, the second `IN_PROGRESS`, the third and later `COMPLETED`. This lets tests see
//!   the progression without sleeping.
//!
//! `POST /_sandbox/sessions/{id}` sets a status that sticks. Records are visible only to the
//! OAuth client and `X-Partner` that created the session.

use std::{collections::HashMap, time::Duration};

use http::StatusCode;
use serde_json::{json, Map, Value};
use time::{
    format_description::well_known::Rfc3339, macros::format_description, Date, OffsetDateTime,
};

use super::{
    http::{decline, invalid_fields, Call, Reply},
    state::{lock, Sandbox},
};

/// Ratepay's `session_status` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionStatus {
    /// Created, buyer has done nothing yet.
    Created,
    /// Being processed.
    InProgress,
    /// Waiting for a passcode.
    OtpPending,
    /// Ratepay advises cancelling.
    FraudCancellationRequested,
    /// Done (terminal).
    Completed,
    /// Failed (terminal).
    Error,
    /// Buyer took no action (terminal).
    Expired,
    /// Buyer cancelled (terminal).
    Canceled,
}

impl SessionStatus {
    const ALL: [SessionStatus; 8] = [
        SessionStatus::Created,
        SessionStatus::InProgress,
        SessionStatus::OtpPending,
        SessionStatus::FraudCancellationRequested,
        SessionStatus::Completed,
        SessionStatus::Error,
        SessionStatus::Expired,
        SessionStatus::Canceled,
    ];

    /// Wire name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Created => "CREATED",
            SessionStatus::InProgress => "IN_PROGRESS",
            SessionStatus::OtpPending => "OTP_PENDING",
            SessionStatus::FraudCancellationRequested => "FRAUD_CANCELLATION_REQUESTED",
            SessionStatus::Completed => "COMPLETED",
            SessionStatus::Error => "ERROR",
            SessionStatus::Expired => "EXPIRED",
            SessionStatus::Canceled => "CANCELED",
        }
    }

    /// Parses a wire name.
    pub(crate) fn parse(s: &str) -> Option<SessionStatus> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// The automatic progression.
const PROGRESSION: [SessionStatus; 3] = [
    SessionStatus::Created,
    SessionStatus::InProgress,
    SessionStatus::Completed,
];

/// Which step of [`PROGRESSION`] a session is at, and since when, for time-based progression.
pub(crate) fn step_at(
    created: OffsetDateTime,
    now: OffsetDateTime,
    step: Duration,
) -> (usize, OffsetDateTime) {
    let elapsed = (now - created).max(time::Duration::ZERO);
    let step_t = time::Duration::try_from(step).unwrap_or(time::Duration::MAX);
    // Checked arithmetic throughout: a huge configured step must not overflow (and panic).
    let start_of = |i: usize| -> Option<OffsetDateTime> {
        created.checked_add(step_t.checked_mul(i32::try_from(i).ok()?)?)
    };
    let mut idx = 0usize;
    while idx + 1 < PROGRESSION.len()
        && step_t
            .checked_mul(idx as i32 + 1)
            .is_some_and(|t| elapsed >= t)
    {
        idx += 1;
    }
    (idx, start_of(idx).unwrap_or(created))
}

/// One HPP session.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    id: String,
    seq: u64,
    client: String,
    partner: Option<String>,
    created: OffsetDateTime,
    transaction_id: String,
    partner_transaction_id: Option<String>,
    shop_buyer_id: Option<String>,
    /// Reads so far (drives progression when `session_step` is zero).
    reads: usize,
    /// When each progression step was first observed (read-driven progression).
    observed: [Option<OffsetDateTime>; 3],
    /// A status set by a test: sticks.
    set: Option<(SessionStatus, OffsetDateTime, Option<Value>)>,
}

impl Session {
    /// Status and `updated_date` as of `now`, counting this as one read.
    fn read(
        &mut self,
        now: OffsetDateTime,
        step: Option<Duration>,
    ) -> (SessionStatus, OffsetDateTime, Option<Value>) {
        if let Some((s, at, reasons)) = &self.set {
            return (*s, *at, reasons.clone());
        }
        let (idx, since) = match step {
            None => (0, self.created),
            Some(d) if d.is_zero() => {
                let idx = self.reads.min(PROGRESSION.len() - 1);
                self.reads += 1;
                let since =
                    *self.observed[idx].get_or_insert(if idx == 0 { self.created } else { now });
                (idx, since)
            }
            Some(d) => step_at(self.created, now, d),
        };
        (PROGRESSION[idx], since, None)
    }

    fn record(&mut self, now: OffsetDateTime, step: Option<Duration>) -> Value {
        let (status, updated, reasons) = self.read(now, step);
        let mut m = Map::new();
        m.insert("session_id".into(), json!(self.id));
        // Ratepay creates the transaction while processing; expose its id once it exists.
        if matches!(
            status,
            SessionStatus::Completed
                | SessionStatus::FraudCancellationRequested
                | SessionStatus::OtpPending
        ) {
            m.insert("transaction_id".into(), json!(self.transaction_id));
        }
        if let Some(p) = &self.partner_transaction_id {
            m.insert("partner_transaction_id".into(), json!(p));
        }
        if let Some(b) = &self.shop_buyer_id {
            m.insert("shop_buyer_id".into(), json!(b));
        }
        m.insert("session_status".into(), json!(status.as_str()));
        if let Some(r) = reasons {
            m.insert("decline_reasons".into(), r);
        }
        m.insert("created_date".into(), json!(rfc3339(self.created)));
        m.insert("updated_date".into(), json!(rfc3339(updated)));
        Value::Object(m)
    }
}

/// All sessions of one sandbox.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    by_id: HashMap<String, Session>,
    next_seq: u64,
}

impl Sessions {
    /// Whether an id is taken.
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    /// Sets a sticky status (test endpoint); false when the session is unknown.
    pub(crate) fn set_status(
        &mut self,
        id: &str,
        status: SessionStatus,
        reasons: Option<Value>,
        now: OffsetDateTime,
    ) -> bool {
        match self.by_id.get_mut(id) {
            Some(s) => {
                s.set = Some((status, now, reasons));
                true
            }
            None => false,
        }
    }
}

/// RFC 3339 (ISO 8601 with offset) text.
pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn not_found() -> Reply {
    decline(
        StatusCode::NOT_FOUND,
        "RESOURCE_NOT_FOUND",
        &["SESSION_NOT_FOUND"],
        "no such session for this client and partner",
    )
}

/// Runs one HPP operation.
pub(crate) fn execute(sandbox: &Sandbox, op: &str, call: &Call<'_>) -> Reply {
    let now = OffsetDateTime::now_utc();
    let step = sandbox.config.session_step;
    match op {
        "hpp.sessions.create" => create(sandbox, call, now),
        "hpp.session_records.get" => {
            let Some(id) = call.params.session_id.as_deref() else {
                return not_found();
            };
            let mut inner = lock(&sandbox.inner);
            match inner.sessions.by_id.get_mut(id) {
                Some(s) if s.client == call.client && s.partner.as_deref() == call.partner => {
                    Reply::json(StatusCode::OK, &s.record(now, step))
                }
                _ => not_found(),
            }
        }
        "hpp.session_records.list" => {
            let Some(date) = query_param(call.query, "createdDate").and_then(parse_date) else {
                return invalid_fields(
                    "$.createdDate",
                    "createdDate is required and must be a date formatted yyyy-MM-dd",
                );
            };
            let mut inner = lock(&sandbox.inner);
            let mut matching: Vec<&mut Session> = inner
                .sessions
                .by_id
                .values_mut()
                .filter(|s| {
                    s.client == call.client
                        && s.partner.as_deref() == call.partner
                        && s.created.date() == date
                })
                .collect();
            matching.sort_by_key(|s| s.seq);
            let records: Vec<Value> = matching.into_iter().map(|s| s.record(now, step)).collect();
            Reply::json(StatusCode::OK, &Value::Array(records))
        }
        _ => decline(
            StatusCode::NOT_FOUND,
            "RESOURCE_NOT_FOUND",
            &["NOT_FOUND"],
            "unknown operation",
        ),
    }
}

fn create(sandbox: &Sandbox, call: &Call<'_>, now: OffsetDateTime) -> Reply {
    let body = match call.json_object() {
        Ok(b) => b,
        Err(reply) => return reply,
    };
    let Some(order) = body.get("order_data").and_then(Value::as_object) else {
        return invalid_fields(
            "$.order_data",
            "order_data is required and must be an object",
        );
    };
    let partner_transaction_id = order
        .get("partner_transaction_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let shop_buyer_id = order
        .get("buyer")
        .and_then(|b| b.get("shop_buyer_id"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let mut inner = lock(&sandbox.inner);
    let id = inner.new_id();
    let transaction_id = inner.new_id();
    inner.sessions.next_seq += 1;
    let seq = inner.sessions.next_seq;
    inner.sessions.by_id.insert(
        id.clone(),
        Session {
            id: id.clone(),
            seq,
            client: call.client.to_owned(),
            partner: call.partner.map(str::to_owned),
            created: now,
            transaction_id,
            partner_transaction_id,
            shop_buyer_id,
            reads: 0,
            observed: [None; 3],
            set: None,
        },
    );
    Reply::json(StatusCode::CREATED, &json!({ "session_id": id }))
}

/// The value of `name` in a query string (no percent-decoding: dates and ids never need it).
pub(crate) fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn parse_date(s: &str) -> Option<Date> {
    Date::parse(s, format_description!("[year]-[month]-[day]")).ok()
}

/// Handles `POST /_sandbox/sessions/{id}` with `{"session_status": ..., "decline_reasons"?: ...}`.
pub(crate) fn set_status(sandbox: &Sandbox, id: &str, body: &[u8]) -> Reply {
    let parsed: Option<(SessionStatus, Option<Value>)> =
        serde_json::from_slice::<Value>(body).ok().and_then(|v| {
            let status = SessionStatus::parse(v.get("session_status")?.as_str()?)?;
            Some((status, v.get("decline_reasons").cloned()))
        });
    let Some((status, reasons)) = parsed else {
        return Reply::json(
            StatusCode::BAD_REQUEST,
            &json!({"error": "body must be {\"session_status\": <one of CREATED, IN_PROGRESS, OTP_PENDING, FRAUD_CANCELLATION_REQUESTED, COMPLETED, ERROR, EXPIRED, CANCELED>}"}),
        );
    };
    let now = OffsetDateTime::now_utc();
    if lock(&sandbox.inner)
        .sessions
        .set_status(id, status, reasons, now)
    {
        Reply::json(
            StatusCode::OK,
            &json!({"session_id": id, "session_status": status.as_str()}),
        )
    } else {
        Reply::json(StatusCode::NOT_FOUND, &json!({"error": "no such session"}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(created: OffsetDateTime) -> Session {
        Session {
            id: "s".into(),
            seq: 1,
            client: "c".into(),
            partner: None,
            created,
            transaction_id: "t".into(),
            partner_transaction_id: None,
            shop_buyer_id: None,
            reads: 0,
            observed: [None; 3],
            set: None,
        }
    }

    #[test]
    fn time_based_progression() {
        let t0 = OffsetDateTime::UNIX_EPOCH;
        let step = Duration::from_secs(10);
        let sec = time::Duration::seconds;
        assert_eq!(step_at(t0, t0, step), (0, t0));
        assert_eq!(step_at(t0, t0 + sec(9), step), (0, t0));
        assert_eq!(step_at(t0, t0 + sec(10), step), (1, t0 + sec(10)));
        assert_eq!(step_at(t0, t0 + sec(25), step), (2, t0 + sec(20)));
        assert_eq!(step_at(t0, t0 + sec(1000), step), (2, t0 + sec(20)));
        let mut s = session(t0);
        assert_eq!(
            s.read(t0 + sec(15), Some(step)).0,
            SessionStatus::InProgress
        );
    }

    #[test]
    fn zero_step_advances_per_read_and_no_step_never_moves() {
        let t0 = OffsetDateTime::UNIX_EPOCH;
        let mut s = session(t0);
        let seen: Vec<_> = (0..4).map(|_| s.read(t0, Some(Duration::ZERO)).0).collect();
        assert_eq!(
            seen,
            [
                SessionStatus::Created,
                SessionStatus::InProgress,
                SessionStatus::Completed,
                SessionStatus::Completed
            ]
        );
        let mut s = session(t0);
        assert_eq!(
            s.read(t0 + time::Duration::days(1), None).0,
            SessionStatus::Created
        );
    }

    #[test]
    fn set_status_sticks() {
        let t0 = OffsetDateTime::UNIX_EPOCH;
        let mut all = Sessions::default();
        all.by_id.insert("s".into(), session(t0));
        assert!(all.set_status("s", SessionStatus::Expired, None, t0));
        assert!(!all.set_status("x", SessionStatus::Expired, None, t0));
        let s = all.by_id.get_mut("s").unwrap();
        for _ in 0..3 {
            assert_eq!(s.read(t0, Some(Duration::ZERO)).0, SessionStatus::Expired);
        }
        let rec = s.record(t0, Some(Duration::ZERO));
        assert_eq!(rec["session_status"], "EXPIRED");
        assert!(rec.get("transaction_id").is_none());
    }

    #[test]
    fn query_and_date_parsing() {
        assert_eq!(
            query_param(Some("a=1&createdDate=2024-02-29"), "createdDate"),
            Some("2024-02-29")
        );
        assert!(parse_date("2024-02-29").is_some());
        assert!(parse_date("2023-02-29").is_none());
        assert!(parse_date("29.02.2024").is_none());
        assert_eq!(
            SessionStatus::parse("CANCELED"),
            Some(SessionStatus::Canceled)
        );
        assert_eq!(SessionStatus::parse("nope"), None);
    }
}
