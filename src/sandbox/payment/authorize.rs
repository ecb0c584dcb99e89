//! Creating a transaction (`POST /v2/transactions`, the authorization, with Ratepay's test
//! e-mails deciding OTP or decline) and changing it (`PATCH`: expiry and buyer).

use http::StatusCode;
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::{
    render::{self_link, tx_representation},
    validate::{expiry, items_total, opt_string},
    with_tx, BASE, DEFAULT_EXPIRY, OTP_ATTEMPTS, OTP_BASE, OTP_REGENERATIONS,
};
use crate::sandbox::{
    call::Call,
    ledger::{parse_amount, Cents, FollowUp, Kind, Transaction, TxState},
    reply::{decline, invalid_fields, invalid_fields_many, rfc3339, Reply},
    state::{lock, Sandbox},
};

/// The basket test e-mails of Ratepay's integration environment.
fn test_email_outcome(email: &str) -> Option<Result<(), &'static str>> {
    match email.to_ascii_lowercase().as_str() {
        "otp_required@ratepay.com" => Some(Ok(())),
        "buyer_identity@ratepay.com" => Some(Err("BUYER_IDENTITY")),
        "payment_attribute@ratepay.com" => Some(Err("PAYMENT_ATTRIBUTE")),
        "risk_decision@ratepay.com" => Some(Err("RISK_DECISION")),
        "transaction_risk@ratepay.com" => Some(Err("TRANSACTION_RISK")),
        _ => None,
    }
}

/// `POST /v2/transactions`.
pub(crate) fn authorize(sandbox: &Sandbox, call: &Call<'_>, now: OffsetDateTime) -> Reply {
    let body = match call.json_object() {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut errors: Vec<(String, String)> = Vec::new();
    let buyer = body.get("buyer").and_then(Value::as_object);
    if buyer.is_none() {
        errors.push(("$.buyer".into(), "is required and must be an object".into()));
    }
    let currency = body.get("currency").and_then(Value::as_str).unwrap_or("");
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        errors.push((
            "$.currency".into(),
            "is required and must match [A-Z]{3}".into(),
        ));
    }
    let partner_transaction_id = opt_string(&body, "partner_transaction_id", 50, &mut errors);
    let _ = opt_string(&body, "partner_operation_id", 255, &mut errors);
    let expires = match body.get("authorization_expires") {
        None | Some(Value::Null) => Some(now + DEFAULT_EXPIRY),
        Some(v) => match expiry(v, now) {
            Ok(t) => Some(t),
            Err(e) => {
                errors.push(("$.authorization_expires".into(), e));
                None
            }
        },
    };
    let mut total: Cents = 0;
    let mut mismatch = false;
    match body.get("shop_baskets").and_then(Value::as_array) {
        Some(baskets) if !baskets.is_empty() => {
            for (i, b) in baskets.iter().enumerate() {
                let p = format!("$.shop_baskets[{i}]");
                let Some(b) = b.as_object() else {
                    errors.push((p, "must be an object".into()));
                    continue;
                };
                match b.get("gross_amount").map(parse_amount) {
                    Some(Ok(c)) => {
                        total = total.saturating_add(c);
                        if items_total(b, &p, &mut errors).is_some_and(|sum| sum != c) {
                            mismatch = true;
                        }
                    }
                    Some(Err(e)) => errors.push((format!("{p}.gross_amount"), e.to_string())),
                    None => errors.push((format!("{p}.gross_amount"), "is required".into())),
                }
            }
        }
        _ => errors.push((
            "$.shop_baskets".into(),
            "is required and must be a non-empty array".into(),
        )),
    }
    if !errors.is_empty() {
        return invalid_fields_many(&errors);
    }
    if mismatch {
        return decline(
            StatusCode::UNPROCESSABLE_ENTITY,
            "UNPROCESSABLE_OPERATION",
            &["SUM_OF_ITEM_AMOUNTS_NOT_MATCHING_TRANSACTION_AMOUNT"],
            "a basket's gross_amount differs from the sum of its items and special items",
        );
    }
    let buyer = buyer.cloned().unwrap_or_default();
    let email = buyer
        .get("contact")
        .and_then(|c| c.get("email"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let shop_buyer_id = buyer
        .get("shop_buyer_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let mut inner = lock(&sandbox.inner);
    let id = inner.new_id();
    let state = match test_email_outcome(email) {
        None => TxState::Authorized,
        Some(Ok(())) => TxState::OtpPending {
            amount: total,
            attempts_left: OTP_ATTEMPTS,
            regenerations_left: OTP_REGENERATIONS,
        },
        Some(Err(category)) => TxState::Declined {
            category,
            reason: category,
        },
    };
    let mut tx = Transaction {
        id: id.clone(),
        client: call.client.to_owned(),
        partner: call.partner.map(str::to_owned),
        created: now,
        authorization_expires: expires.unwrap_or(now + DEFAULT_EXPIRY),
        currency: currency.to_owned(),
        partner_transaction_id,
        shop_buyer_id,
        request: Value::Object(body),
        state: state.clone(),
        authorized: 0,
        captured: 0,
        refunded: 0,
        cancelled: 0,
        operations: Vec::new(),
    };
    let reply = match state {
        TxState::Authorized => {
            // The initial authorization is listed among the authorizations like Ratepay's.
            let auth_id = inner.new_id();
            tx.apply(FollowUp {
                id: auth_id,
                kind: Kind::Authorization,
                gross_amount: total,
                created: now,
                request: json!({}),
                shipping_information: Vec::new(),
            });
            let body = if call.wants_representation() {
                tx_representation(&tx)
            } else {
                json!({
                    "_links": self_link(format!("{BASE}/{id}")),
                    "ratepay_transaction_id": id,
                    "created": rfc3339(now),
                    "authorization_expires": rfc3339(tx.authorization_expires),
                })
            };
            Reply::hal(StatusCode::CREATED, &body)
        }
        TxState::OtpPending { .. } => Reply::hal(
            StatusCode::ACCEPTED,
            &json!({
                "_links": {
                    "self": { "href": format!("{BASE}/{id}") },
                    "verify": { "href": format!("{OTP_BASE}/verify/{id}") },
                    "regenerate": { "href": format!("{OTP_BASE}/regenerate/{id}") },
                },
                "ratepay_transaction_id": id,
                "created": rfc3339(now),
                "result": "OTP_REQUIRED",
            }),
        ),
        TxState::Declined { category, reason } => Reply::json(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({
                "category": category,
                "reasons": [reason],
                "message": "transaction declined (integration test e-mail)",
                "ratepay_transaction_id": id,
            }),
        ),
    };
    inner.ledger.insert(tx);
    reply
}

/// `PATCH /v2/transactions/{id}`: `authorization_expires` and `buyer` may change.
pub(crate) fn update(sandbox: &Sandbox, call: &Call<'_>, now: OffsetDateTime) -> Reply {
    let body = match call.json_object() {
        Ok(b) => b,
        Err(r) => return r,
    };
    let expires = match body.get("authorization_expires") {
        None => None,
        Some(v) => match expiry(v, now) {
            Ok(t) => Some(t),
            Err(e) => return invalid_fields("$.authorization_expires", &e),
        },
    };
    let buyer = match body.get("buyer") {
        None => None,
        Some(Value::Object(b)) => Some(b.clone()),
        Some(_) => return invalid_fields("$.buyer", "must be an object"),
    };
    with_tx(sandbox, call, |tx, _| {
        if matches!(tx.state, TxState::Declined { .. }) {
            return decline(
                StatusCode::UNPROCESSABLE_ENTITY,
                "UNPROCESSABLE_OPERATION",
                &["NOT_ALLOWED_FOR_DECLINED_TRANSACTION"],
                "the transaction was declined",
            );
        }
        if let Some(t) = expires {
            tx.authorization_expires = t;
        }
        if let (Some(b), Some(req)) = (buyer, tx.request.as_object_mut()) {
            req.insert("buyer".into(), Value::Object(b));
        }
        Reply::hal(StatusCode::OK, &tx_representation(tx))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_emails() {
        assert_eq!(test_email_outcome("OTP_REQUIRED@ratepay.com"), Some(Ok(())));
        assert_eq!(
            test_email_outcome("risk_decision@ratepay.com"),
            Some(Err("RISK_DECISION"))
        );
        assert_eq!(test_email_outcome("someone@example.org"), None);
    }
}
