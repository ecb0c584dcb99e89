//! Hosted Payment Page sessions as data: their statuses, how a status moves on with time or
//! reads, and the store of one sandbox's sessions. The HPP operations (`hpp.rs`) and the
//! `/_sandbox/sessions/{id}` endpoint (`control.rs`) act on it.
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

use serde_json::{json, Map, Value};
use time::{Date, OffsetDateTime};

use super::reply::rfc3339;

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

    /// The session record as `GET /session-record` answers it, counting this as one read.
    pub(crate) fn record(&mut self, now: OffsetDateTime, step: Option<Duration>) -> Value {
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

/// What a new session is made of; its progression starts fresh.
pub(crate) struct NewSession {
    /// `session_id`.
    pub id: String,
    /// The OAuth client that created it (the only one that sees it).
    pub client: String,
    /// Its `X-Partner`, if any (records are visible with the same partner only).
    pub partner: Option<String>,
    /// Creation time.
    pub created: OffsetDateTime,
    /// The id of the transaction Ratepay will create for it.
    pub transaction_id: String,
    /// `order_data.partner_transaction_id`.
    pub partner_transaction_id: Option<String>,
    /// `order_data.buyer.shop_buyer_id`.
    pub shop_buyer_id: Option<String>,
}

impl Sessions {
    /// Adds a session; records list in the order sessions were added.
    pub(crate) fn insert(&mut self, new: NewSession) {
        self.next_seq += 1;
        let session = Session {
            id: new.id,
            seq: self.next_seq,
            client: new.client,
            partner: new.partner,
            created: new.created,
            transaction_id: new.transaction_id,
            partner_transaction_id: new.partner_transaction_id,
            shop_buyer_id: new.shop_buyer_id,
            reads: 0,
            observed: [None; 3],
            set: None,
        };
        self.by_id.insert(session.id.clone(), session);
    }

    /// The session `id` if `client` and `partner` created it.
    pub(crate) fn visible_mut(
        &mut self,
        id: &str,
        client: &str,
        partner: Option<&str>,
    ) -> Option<&mut Session> {
        self.by_id
            .get_mut(id)
            .filter(|s| s.client == client && s.partner.as_deref() == partner)
    }

    /// The sessions `client` and `partner` created on `date`, in creation order.
    pub(crate) fn created_on(
        &mut self,
        date: Date,
        client: &str,
        partner: Option<&str>,
    ) -> Vec<&mut Session> {
        let mut matching: Vec<&mut Session> = self
            .by_id
            .values_mut()
            .filter(|s| {
                s.client == client && s.partner.as_deref() == partner && s.created.date() == date
            })
            .collect();
        matching.sort_by_key(|s| s.seq);
        matching
    }

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
    fn status_names_parse() {
        assert_eq!(
            SessionStatus::parse("CANCELED"),
            Some(SessionStatus::Canceled)
        );
        assert_eq!(SessionStatus::parse("nope"), None);
    }
}
