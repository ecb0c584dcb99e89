//! Pulling the audited fields out of request and response bodies, and nothing else.
//!
//! Each helper deserialises into a struct that names only the wanted fields: serde skips the
//! others without copying them, so items, vats or anything a caller adds never reach the log.
//! Both helpers are lenient: a body that is not JSON or lacks a field yields `None`, because
//! the audit records what was sent and Ratepay judges whether it is valid.

use serde::Deserialize;
use serde_json::value::RawValue;

/// Longest value kept for an id field (Ratepay allows 255 characters).
const MAX_ID_LEN: usize = 255;
/// Longest `gross_amount` text kept; longer text is not an amount.
const MAX_AMOUNT_LEN: usize = 32;

/// The audited fields of a cancellation (or capture/refund) request body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CancellationFields {
    /// `gross_amount` exactly as written (`12.50` stays `12.50`; a JSON string's content is
    /// taken as is).
    pub gross_amount: Option<String>,
    /// `partner_operation_id`.
    pub partner_operation_id: Option<String>,
    /// `partner_shop_id`.
    pub partner_shop_id: Option<String>,
}

#[derive(Deserialize)]
struct RequestFields<'a> {
    #[serde(borrow, default)]
    gross_amount: Option<&'a RawValue>,
    #[serde(borrow, default)]
    partner_operation_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    partner_shop_id: Option<&'a RawValue>,
}

impl CancellationFields {
    /// Reads the fields from a JSON request body; missing or odd fields are `None`.
    pub fn from_body(body: &[u8]) -> CancellationFields {
        let Some(fields) = object::<RequestFields<'_>>(body) else {
            return CancellationFields::default();
        };
        CancellationFields {
            gross_amount: fields
                .gross_amount
                .and_then(|v| scalar_text(v, MAX_AMOUNT_LEN)),
            partner_operation_id: fields
                .partner_operation_id
                .and_then(|v| scalar_text(v, MAX_ID_LEN)),
            partner_shop_id: fields
                .partner_shop_id
                .and_then(|v| scalar_text(v, MAX_ID_LEN)),
        }
    }
}

/// Deserialises `body` if it is a JSON object. A derived struct would also accept an array
/// (fields by position), which would put arbitrary values into named fields.
fn object<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Option<T> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    serde_json::from_slice(body).ok()
}

/// The text of a JSON number (verbatim) or string (its content); `None` for anything else or
/// when longer than `max`.
fn scalar_text(raw: &RawValue, max: usize) -> Option<String> {
    let text = raw.get();
    let value = if text.starts_with('"') {
        serde_json::from_str::<String>(text).ok()?
    } else if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        text.to_owned()
    } else {
        return None;
    };
    (value.len() <= max).then_some(value)
}

#[derive(Deserialize)]
struct ResponseFields {
    #[serde(default)]
    ratepay_cancellation_id: Option<String>,
}

/// `ratepay_cancellation_id` from a Ratepay response body, if present.
pub fn ratepay_cancellation_id(body: &[u8]) -> Option<String> {
    object::<ResponseFields>(body)?
        .ratepay_cancellation_id
        .filter(|id| id.len() <= MAX_ID_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_exact_amount_text_and_ignores_the_rest() {
        let body = br#"{"items":[{"name":"Shoe","gross_amount":1}],"gross_amount": 12.50,
            "partner_operation_id":"op-1","partner_shop_id":"shop\u002d9","buyer":{"email":"a@b.c"}}"#;
        let f = CancellationFields::from_body(body);
        assert_eq!(f.gross_amount.as_deref(), Some("12.50"));
        assert_eq!(f.partner_operation_id.as_deref(), Some("op-1"));
        assert_eq!(f.partner_shop_id.as_deref(), Some("shop-9"));
        assert_eq!(
            CancellationFields::from_body(br#"{"gross_amount":100}"#)
                .gross_amount
                .as_deref(),
            Some("100")
        );
        assert_eq!(
            CancellationFields::from_body(br#"{"gross_amount":"7.10"}"#)
                .gross_amount
                .as_deref(),
            Some("7.10")
        );
        assert_eq!(
            CancellationFields::from_body(br#"{"gross_amount":0.100000000000000005551}"#)
                .gross_amount
                .as_deref(),
            Some("0.100000000000000005551")
        );
    }

    #[test]
    fn lenient_on_bad_input() {
        assert_eq!(
            CancellationFields::from_body(b"not json"),
            CancellationFields::default()
        );
        assert_eq!(
            CancellationFields::from_body(br#"{"gross_amount":{"x":1}}"#).gross_amount,
            None
        );
        assert_eq!(
            CancellationFields::from_body(br#"{"gross_amount":true}"#).gross_amount,
            None
        );
        assert_eq!(
            CancellationFields::from_body(b"[1,2]"),
            CancellationFields::default()
        );
    }

    #[test]
    fn cancellation_id_from_response() {
        let body = br#"{"_links":{"self":{"href":"/x"}},"created":"2025-01-01T00:00:00+01:00","ratepay_cancellation_id":"aa7rth5-__GG44rdsasf"}"#;
        assert_eq!(
            ratepay_cancellation_id(body).as_deref(),
            Some("aa7rth5-__GG44rdsasf")
        );
        assert_eq!(ratepay_cancellation_id(b"{}"), None);
        assert_eq!(ratepay_cancellation_id(b"<html>"), None);
        assert_eq!(ratepay_cancellation_id(br#"["x"]"#), None);
    }
}
