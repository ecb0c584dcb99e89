//! Transactions and their amount bookkeeping, in integer cents.
//!
//! The decision core of the Payment API simulation: what a transaction may still do (capture,
//! cancel, refund, authorize more) and why not (Ratepay's 422 `UNPROCESSABLE_OPERATION`
//! reasons). `payment/` parses requests and renders responses around it; nothing here knows
//! about HTTP, so the rules are unit-tested directly.

use std::collections::HashMap;

use serde_json::Value;
use time::OffsetDateTime;

use crate::routes::FollowUpKind;

/// An amount in cents (hundredths of the transaction's currency unit).
pub(crate) type Cents = i64;

/// Largest amount accepted (10^13 cents), far above any basket, far below overflow.
const MAX_CENTS: Cents = 10_000_000_000_000;

/// Why an amount was refused (Ratepay answers 400 `INVALID_FIELDS`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AmountError {
    /// Not a JSON number.
    #[error("must be a number")]
    NotANumber,
    /// Zero or negative where Ratepay requires > 0.
    #[error("must be greater than 0")]
    NotPositive,
    /// More than two decimal places.
    #[error("must have at most 2 decimal places")]
    TooPrecise,
    /// Absurdly large.
    #[error("is too large")]
    TooLarge,
}

/// Parses a JSON number with at most two decimals into cents (may be zero or negative).
///
/// Works on the number's shortest decimal text (serde_json prints floats with ryu), so
/// `10.1` is exactly 1010 cents and `0.105` is refused instead of being rounded.
pub(crate) fn parse_signed_cents(v: &Value) -> Result<Cents, AmountError> {
    let Value::Number(n) = v else {
        return Err(AmountError::NotANumber);
    };
    let text = n.to_string();
    if text.contains(['e', 'E']) {
        // Only tiny (more than 2 decimals) or huge values print with an exponent.
        return Err(if text.contains("e-") || text.contains("E-") {
            AmountError::TooPrecise
        } else {
            AmountError::TooLarge
        });
    }
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.as_str()),
    };
    let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
    // "10.0" is how ryu prints an integral float; trailing zeros carry no precision.
    let frac_trimmed = frac_part.trim_end_matches('0');
    if frac_trimmed.len() > 2 {
        return Err(AmountError::TooPrecise);
    }
    if int_part.len() > 12 {
        return Err(AmountError::TooLarge);
    }
    let whole: Cents = int_part.parse().map_err(|_| AmountError::NotANumber)?;
    let mut frac: Cents = 0;
    for (i, c) in frac_trimmed
        .chars()
        .chain(std::iter::repeat('0'))
        .take(2)
        .enumerate()
    {
        let d = c.to_digit(10).ok_or(AmountError::NotANumber)? as Cents;
        frac += d * if i == 0 { 10 } else { 1 };
    }
    let cents = whole * 100 + frac;
    if cents > MAX_CENTS {
        return Err(AmountError::TooLarge);
    }
    Ok(if negative { -cents } else { cents })
}

/// Parses a `gross_amount`: a number > 0 with at most two decimals.
pub(crate) fn parse_amount(v: &Value) -> Result<Cents, AmountError> {
    let c = parse_signed_cents(v)?;
    if c <= 0 {
        return Err(AmountError::NotPositive);
    }
    Ok(c)
}

/// Renders cents as a JSON number (e.g. 1010 → `10.1`).
pub(crate) fn amount_json(c: Cents) -> Value {
    // Cents below 10^13 are exact in f64 after division's correct rounding to the nearest
    // double, and ryu prints the shortest text that round-trips, i.e. the intended decimal.
    serde_json::Number::from_f64(c as f64 / 100.0)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// A follow-up operation on a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Incremental authorization (the initial one is also recorded as an authorization).
    Authorization,
    /// Capture (shipment).
    Capture,
    /// Refund of captured money.
    Refund,
    /// Cancellation of open authorized money.
    Cancellation,
}

impl From<FollowUpKind> for Kind {
    fn from(k: FollowUpKind) -> Kind {
        match k {
            FollowUpKind::Authorization => Kind::Authorization,
            FollowUpKind::Capture => Kind::Capture,
            FollowUpKind::Refund => Kind::Refund,
            FollowUpKind::Cancellation => Kind::Cancellation,
        }
    }
}

impl Kind {
    /// Path segment and `_embedded` key (`captures` ...).
    pub(crate) fn plural(self) -> &'static str {
        match self {
            Kind::Authorization => "authorizations",
            Kind::Capture => "captures",
            Kind::Refund => "refunds",
            Kind::Cancellation => "cancellations",
        }
    }

    /// The id field name (`ratepay_capture_id` ...).
    pub(crate) fn id_field(self) -> &'static str {
        match self {
            Kind::Authorization => "ratepay_authorization_id",
            Kind::Capture => "ratepay_capture_id",
            Kind::Refund => "ratepay_refund_id",
            Kind::Cancellation => "ratepay_cancellation_id",
        }
    }

    /// The 404 reason when such a resource is unknown.
    pub(crate) fn not_found_reason(self) -> &'static str {
        match self {
            Kind::Authorization => "AUTHORIZATION_NOT_FOUND",
            Kind::Capture => "CAPTURE_NOT_FOUND",
            Kind::Refund => "REFUND_NOT_FOUND",
            Kind::Cancellation => "CANCELLATION_NOT_FOUND",
        }
    }
}

/// One recorded follow-up operation.
#[derive(Debug, Clone)]
pub(crate) struct FollowUp {
    /// Ratepay's id for it.
    pub id: String,
    /// What it is.
    pub kind: Kind,
    /// Its amount.
    pub gross_amount: Cents,
    /// When it was created.
    pub created: OffsetDateTime,
    /// The request body as sent (echoed in representations).
    pub request: Value,
    /// Shipping information added later (captures only).
    pub shipping_information: Vec<(OffsetDateTime, Value)>,
}

/// Where a transaction stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TxState {
    /// Authorized; follow-ups allowed.
    Authorized,
    /// Waiting for the buyer's one-time passcode.
    OtpPending {
        /// The amount that becomes authorized once the passcode is verified.
        amount: Cents,
        /// Wrong codes still allowed.
        attempts_left: u32,
        /// Regenerations still allowed.
        regenerations_left: u32,
    },
    /// Declined (at authorization or after failed OTP).
    Declined {
        /// Ratepay decline category.
        category: &'static str,
        /// Decline reason.
        reason: &'static str,
    },
}

/// A refusal of a follow-up, rendered as 422 `UNPROCESSABLE_OPERATION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// Ratepay decline reason, e.g. `CAPTURE_AMOUNT_TOO_HIGH`.
    pub reason: &'static str,
    /// Human explanation with the numbers involved.
    pub message: String,
}

/// One transaction.
#[derive(Debug, Clone)]
pub(crate) struct Transaction {
    /// `ratepay_transaction_id`.
    pub id: String,
    /// OAuth client (`sub`) that created it: other clients cannot see it.
    pub client: String,
    /// `X-Partner` it was created under: other partners cannot see it.
    pub partner: Option<String>,
    /// Creation time.
    pub created: OffsetDateTime,
    /// When open amounts expire (changeable with PATCH).
    pub authorization_expires: OffsetDateTime,
    /// ISO 4217 code.
    pub currency: String,
    /// Partner's id, if sent.
    pub partner_transaction_id: Option<String>,
    /// Buyer id on the merchant side, if sent.
    pub shop_buyer_id: Option<String>,
    /// The authorization request as sent (echoed in representations).
    pub request: Value,
    /// State.
    pub state: TxState,
    /// Sum of initial and incremental authorizations.
    pub authorized: Cents,
    /// Sum of captures.
    pub captured: Cents,
    /// Sum of refunds.
    pub refunded: Cents,
    /// Sum of cancellations.
    pub cancelled: Cents,
    /// Follow-ups in creation order.
    pub operations: Vec<FollowUp>,
}

impl Transaction {
    /// Authorized money neither captured nor cancelled.
    pub(crate) fn open(&self) -> Cents {
        self.authorized - self.captured - self.cancelled
    }

    /// Captured money not refunded.
    pub(crate) fn refundable(&self) -> Cents {
        self.captured - self.refunded
    }

    /// A summary status for representations (sandbox wording; Ratepay does not document one).
    pub(crate) fn status(&self) -> &'static str {
        match self.state {
            TxState::OtpPending { .. } => "OTP_PENDING",
            TxState::Declined { .. } => "DECLINED",
            TxState::Authorized => {
                if self.open() > 0 {
                    if self.captured > 0 {
                        "PARTIALLY_CAPTURED"
                    } else {
                        "AUTHORIZED"
                    }
                } else if self.captured == 0 {
                    "CANCELLED"
                } else if self.refunded == self.captured {
                    "REFUNDED"
                } else {
                    "CAPTURED"
                }
            }
        }
    }

    /// Whether a follow-up of `kind` for `amount` is allowed at `now`.
    pub(crate) fn check(
        &self,
        kind: Kind,
        amount: Cents,
        now: OffsetDateTime,
    ) -> Result<(), Refusal> {
        match self.state {
            TxState::Authorized => {}
            TxState::Declined { .. } => {
                return Err(Refusal {
                    reason: "NOT_ALLOWED_FOR_DECLINED_TRANSACTION",
                    message: "the transaction was declined".into(),
                })
            }
            TxState::OtpPending { .. } => {
                return Err(Refusal {
                    reason: "NOT_ALLOWED_FOR_DECLINED_TRANSACTION",
                    message: "the transaction waits for the buyer's one-time passcode".into(),
                })
            }
        }
        let expiry_matters = matches!(kind, Kind::Authorization | Kind::Capture);
        if expiry_matters && now >= self.authorization_expires {
            return Err(Refusal {
                reason: "NOT_ALLOWED_FOR_EXPIRED_TRANSACTION",
                message: "authorization_expires has passed".into(),
            });
        }
        let (limit, reason, what) = match kind {
            Kind::Authorization => return Ok(()),
            Kind::Capture => (self.open(), "CAPTURE_AMOUNT_TOO_HIGH", "open"),
            Kind::Cancellation => (self.open(), "CANCELLATION_AMOUNT_TOO_HIGH", "open"),
            Kind::Refund => (
                self.refundable(),
                "REFUND_AMOUNT_TOO_HIGH",
                "captured and not refunded",
            ),
        };
        if amount > limit {
            return Err(Refusal {
                reason,
                message: format!(
                    "{} {} exceeds the {} amount of {}",
                    kind_verb(kind),
                    fmt_cents(amount),
                    what,
                    fmt_cents(limit)
                ),
            });
        }
        Ok(())
    }

    /// Records a follow-up that [`Transaction::check`] allowed.
    pub(crate) fn apply(&mut self, op: FollowUp) {
        match op.kind {
            Kind::Authorization => {
                self.authorized = self.authorized.saturating_add(op.gross_amount)
            }
            Kind::Capture => self.captured = self.captured.saturating_add(op.gross_amount),
            Kind::Refund => self.refunded = self.refunded.saturating_add(op.gross_amount),
            Kind::Cancellation => self.cancelled = self.cancelled.saturating_add(op.gross_amount),
        }
        self.operations.push(op);
    }

    /// The follow-ups of one kind.
    pub(crate) fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &FollowUp> {
        self.operations.iter().filter(move |o| o.kind == kind)
    }
}

fn kind_verb(kind: Kind) -> &'static str {
    match kind {
        Kind::Authorization => "authorization",
        Kind::Capture => "capture of",
        Kind::Refund => "refund of",
        Kind::Cancellation => "cancellation of",
    }
}

/// `1010` → `"10.10"`.
pub(crate) fn fmt_cents(c: Cents) -> String {
    let sign = if c < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", c.abs() / 100, c.abs() % 100)
}

/// All transactions of one sandbox, by id.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    transactions: HashMap<String, Transaction>,
}

impl Ledger {
    /// Stores a new transaction.
    pub(crate) fn insert(&mut self, tx: Transaction) {
        self.transactions.insert(tx.id.clone(), tx);
    }

    /// Whether an id is taken (ids must never repeat, even across partners).
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.transactions.contains_key(id)
    }

    /// The transaction `id` as seen by `client` under `partner`; others' transactions are
    /// invisible (Ratepay: "do not exist or do not belong to the sender" → 404).
    pub(crate) fn get_mut(
        &mut self,
        id: &str,
        client: &str,
        partner: Option<&str>,
    ) -> Option<&mut Transaction> {
        self.transactions
            .get_mut(id)
            .filter(|t| t.client == client && t.partner.as_deref() == partner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::Duration;

    fn tx(authorized: Cents) -> Transaction {
        let now = OffsetDateTime::now_utc();
        Transaction {
            id: "t".repeat(20),
            client: "c".into(),
            partner: None,
            created: now,
            authorization_expires: now + Duration::days(1),
            currency: "EUR".into(),
            partner_transaction_id: None,
            shop_buyer_id: None,
            request: Value::Null,
            state: TxState::Authorized,
            authorized,
            captured: 0,
            refunded: 0,
            cancelled: 0,
            operations: vec![],
        }
    }

    fn op(kind: Kind, c: Cents) -> FollowUp {
        FollowUp {
            id: "x".into(),
            kind,
            gross_amount: c,
            created: OffsetDateTime::now_utc(),
            request: Value::Null,
            shipping_information: vec![],
        }
    }

    fn try_apply(t: &mut Transaction, kind: Kind, c: Cents) -> Result<(), &'static str> {
        t.check(kind, c, OffsetDateTime::now_utc())
            .map_err(|r| r.reason)?;
        t.apply(op(kind, c));
        Ok(())
    }

    #[test]
    fn amounts_parse_exactly_with_at_most_two_decimals() {
        assert_eq!(parse_amount(&json!(10.1)), Ok(1010));
        assert_eq!(parse_amount(&json!(10)), Ok(1000));
        assert_eq!(parse_amount(&json!(0.01)), Ok(1));
        assert_eq!(parse_amount(&json!(19.99)), Ok(1999));
        assert_eq!(parse_amount(&json!(1234567.89)), Ok(123456789));
        assert_eq!(parse_amount(&json!(10.0)), Ok(1000));
        assert_eq!(parse_amount(&json!(0.105)), Err(AmountError::TooPrecise));
        assert_eq!(parse_amount(&json!(1e-7)), Err(AmountError::TooPrecise));
        assert_eq!(parse_amount(&json!(0)), Err(AmountError::NotPositive));
        assert_eq!(parse_amount(&json!(-5)), Err(AmountError::NotPositive));
        assert_eq!(parse_amount(&json!("5")), Err(AmountError::NotANumber));
        assert_eq!(parse_amount(&json!(1e300)), Err(AmountError::TooLarge));
        assert_eq!(parse_signed_cents(&json!(-5.5)), Ok(-550));
        assert_eq!(amount_json(1010), json!(10.1));
        assert_eq!(amount_json(123456789), json!(1234567.89));
        assert_eq!(fmt_cents(1005), "10.05");
    }

    #[test]
    fn capture_and_cancel_are_limited_by_the_open_amount() {
        let mut t = tx(10_000);
        try_apply(&mut t, Kind::Capture, 6_000).unwrap();
        assert_eq!(
            try_apply(&mut t, Kind::Capture, 4_001),
            Err("CAPTURE_AMOUNT_TOO_HIGH")
        );
        try_apply(&mut t, Kind::Cancellation, 1_000).unwrap();
        assert_eq!(
            try_apply(&mut t, Kind::Cancellation, 3_001),
            Err("CANCELLATION_AMOUNT_TOO_HIGH")
        );
        try_apply(&mut t, Kind::Capture, 3_000).unwrap();
        assert_eq!(t.open(), 0);
        assert_eq!(t.status(), "CAPTURED");
        assert_eq!(
            try_apply(&mut t, Kind::Cancellation, 1),
            Err("CANCELLATION_AMOUNT_TOO_HIGH")
        );
    }

    #[test]
    fn refunds_are_limited_by_captured_minus_refunded() {
        let mut t = tx(10_000);
        assert_eq!(
            try_apply(&mut t, Kind::Refund, 1),
            Err("REFUND_AMOUNT_TOO_HIGH")
        );
        try_apply(&mut t, Kind::Capture, 5_000).unwrap();
        try_apply(&mut t, Kind::Refund, 2_000).unwrap();
        assert_eq!(
            try_apply(&mut t, Kind::Refund, 3_001),
            Err("REFUND_AMOUNT_TOO_HIGH")
        );
        try_apply(&mut t, Kind::Refund, 3_000).unwrap();
        assert_eq!(t.refundable(), 0);
        // Refunds do not reopen authorized money.
        assert_eq!(t.open(), 5_000);
    }

    #[test]
    fn incremental_authorization_raises_the_open_amount() {
        let mut t = tx(1_000);
        try_apply(&mut t, Kind::Authorization, 500).unwrap();
        assert_eq!(t.authorized, 1_500);
        try_apply(&mut t, Kind::Capture, 1_500).unwrap();
    }

    #[test]
    fn full_cancellation_ends_the_transaction() {
        let mut t = tx(1_000);
        try_apply(&mut t, Kind::Cancellation, 1_000).unwrap();
        assert_eq!(t.status(), "CANCELLED");
        assert_eq!(
            try_apply(&mut t, Kind::Capture, 1),
            Err("CAPTURE_AMOUNT_TOO_HIGH")
        );
    }

    #[test]
    fn declined_pending_and_expired_transactions_refuse_follow_ups() {
        let mut t = tx(1_000);
        t.state = TxState::Declined {
            category: "RISK_DECISION",
            reason: "RISK_DECISION",
        };
        assert_eq!(
            try_apply(&mut t, Kind::Capture, 1),
            Err("NOT_ALLOWED_FOR_DECLINED_TRANSACTION")
        );
        t.state = TxState::OtpPending {
            amount: 1_000,
            attempts_left: 3,
            regenerations_left: 3,
        };
        assert_eq!(t.status(), "OTP_PENDING");
        assert!(try_apply(&mut t, Kind::Cancellation, 1).is_err());
        let mut t = tx(1_000);
        t.authorization_expires = OffsetDateTime::now_utc() - Duration::seconds(1);
        assert_eq!(
            try_apply(&mut t, Kind::Capture, 1),
            Err("NOT_ALLOWED_FOR_EXPIRED_TRANSACTION")
        );
        // Cancelling what expires anyway stays possible.
        try_apply(&mut t, Kind::Cancellation, 1).unwrap();
    }

    #[test]
    fn ledger_hides_other_clients_and_partners() {
        let mut l = Ledger::default();
        let mut t = tx(1);
        t.partner = Some("p1".into());
        l.insert(t);
        let id = "t".repeat(20);
        assert!(l.get_mut(&id, "c", Some("p1")).is_some());
        assert!(l.get_mut(&id, "c", None).is_none());
        assert!(l.get_mut(&id, "c", Some("p2")).is_none());
        assert!(l.get_mut(&id, "other", Some("p1")).is_none());
    }
}
