//! Field rules the Payment API operations share: optional strings, item sums, expiry
//! timestamps. Each failure is a `(json_path, message)` pair for `INVALID_FIELDS`.

use serde_json::{Map, Value};
use time::{format_description::well_known::Rfc3339, Duration, OffsetDateTime};

use super::MAX_EXPIRY_DAYS;
use crate::sandbox::ledger::{parse_signed_cents, Cents};

/// Sum of `items` and `special_items` of a basket or operation, if it lists any.
pub(super) fn items_total(
    obj: &Map<String, Value>,
    path: &str,
    errors: &mut Vec<(String, String)>,
) -> Option<Cents> {
    let mut total: Option<Cents> = None;
    for list in ["items", "special_items"] {
        let Some(v) = obj.get(list) else { continue };
        let Some(items) = v.as_array() else {
            errors.push((format!("{path}.{list}"), "must be an array".into()));
            continue;
        };
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}.{list}[{i}]");
            let line = if let Some(t) = item.get("gross_total_price") {
                parse_signed_cents(t).map_err(|e| (format!("{p}.gross_total_price"), e.to_string()))
            } else if let Some(u) = item.get("gross_unit_price") {
                let qty = item.get("quantity").map_or(Some(1), Value::as_i64);
                match (parse_signed_cents(u), qty) {
                    (Ok(c), Some(q)) if (1..=1_000_000).contains(&q) => c
                        .checked_mul(q)
                        .ok_or_else(|| (format!("{p}.gross_unit_price"), "is too large".into())),
                    (Err(e), _) => Err((format!("{p}.gross_unit_price"), e.to_string())),
                    _ => Err((
                        format!("{p}.quantity"),
                        "must be an integer from 1 to 1000000".into(),
                    )),
                }
            } else {
                Err((format!("{p}.gross_unit_price"), "is required".into()))
            };
            match line {
                Ok(c) => {
                    let t = total.get_or_insert(0);
                    *t = t.saturating_add(c);
                }
                Err(e) => errors.push(e),
            }
        }
    }
    total
}

pub(super) fn opt_string(
    obj: &Map<String, Value>,
    field: &str,
    max: usize,
    errors: &mut Vec<(String, String)>,
) -> Option<String> {
    match obj.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if (1..=max).contains(&s.chars().count()) => Some(s.clone()),
        Some(_) => {
            errors.push((
                format!("$.{field}"),
                format!("must be a string of 1 to {max} characters"),
            ));
            None
        }
    }
}

fn parse_time(v: &Value) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(v.as_str()?, &Rfc3339).ok()
}

/// Validates a requested `authorization_expires`: an RFC 3339 timestamp after `now` and at
/// most [`MAX_EXPIRY_DAYS`] ahead. A past one would be accepted only to decline every later
/// capture as expired, which Ratepay refuses up front.
pub(super) fn expiry(v: &Value, now: OffsetDateTime) -> Result<OffsetDateTime, String> {
    let Some(t) = parse_time(v) else {
        return Err("must be an ISO 8601 timestamp with offset".into());
    };
    if t <= now {
        return Err("must be in the future".into());
    }
    if t > now + Duration::days(MAX_EXPIRY_DAYS) {
        return Err(format!(
            "must be at most {MAX_EXPIRY_DAYS} days in the future"
        ));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn item_sums_use_total_or_unit_times_quantity() {
        let obj = json!({
            "items": [
                {"gross_unit_price": 10.0, "quantity": 2},
                {"gross_total_price": 5.5}
            ],
            "special_items": [{"gross_unit_price": -1.25}]
        });
        let mut errors = Vec::new();
        let total = items_total(obj.as_object().unwrap(), "$", &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(total, Some(2425));
        let none = json!({});
        assert_eq!(
            items_total(none.as_object().unwrap(), "$", &mut errors),
            None
        );
        let bad = json!({"items": [{"gross_unit_price": 1.001}]});
        assert_eq!(
            items_total(bad.as_object().unwrap(), "$", &mut errors),
            None
        );
        assert_eq!(errors[0].0, "$.items[0].gross_unit_price");
    }

    #[test]
    fn expiry_must_be_a_future_timestamp_within_bounds() {
        let now = OffsetDateTime::parse("2030-06-01T12:00:00Z", &Rfc3339).unwrap();
        let at = |s: &str| expiry(&json!(s), now);
        assert_eq!(
            at("2030-06-02T14:00:00+02:00").unwrap(),
            now + Duration::days(1)
        );
        let past = at("2030-06-01T11:59:59Z").unwrap_err();
        assert!(past.contains("future"), "{past}");
        assert!(at("2030-06-01T12:00:00Z").is_err(), "now itself has passed");
        assert!(at("2030-06-01T12:00:00.001Z").is_ok());
        assert!(at("2031-06-01T12:00:00Z").is_ok(), "exactly 365 days ahead");
        let far = at("2031-06-01T12:00:00.001Z").unwrap_err();
        assert!(far.contains("365 days"), "{far}");
        for bad in [
            "tomorrow",
            "2030-06-02T12:00:00",
            "2030-06-02",
            "",
            "2030-13-02T12:00:00Z",
        ] {
            assert!(at(bad).unwrap_err().contains("ISO 8601"), "{bad}");
        }
        assert!(expiry(&json!(1_900_000_000), now).is_err());
        assert!(expiry(&Value::Null, now).is_err());
    }
}
