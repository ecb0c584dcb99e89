//! The One Time Passcode API: `POST /2fa/v1/verify/{id}` and `POST /2fa/v1/regenerate/{id}` on
//! a transaction that an authorization left `OTP_REQUIRED`. The passcode is always
//! [`OTP_CODE`]; wrong codes and regenerations are limited as Ratepay limits them.

use http::StatusCode;
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::{render::self_link, OTP_BASE, OTP_CODE};
use crate::sandbox::{
    call::Call,
    ledger::{FollowUp, Kind, TxState},
    reply::{rfc3339, Reply},
    state::{lock, random_id, Sandbox},
};

fn otp_reply(
    status: StatusCode,
    tx_id: &str,
    result: &str,
    en: &str,
    de: &str,
    extra: Value,
) -> Reply {
    let mut body = json!({
        "timestamp": rfc3339(OffsetDateTime::now_utc()),
        "ratepay_transaction_id": tx_id,
        "result": result,
        "message": { "en": en, "de": de },
        "_links": self_link(format!("{OTP_BASE}/{}/{tx_id}", if extra.get("regenerate").is_some() { "regenerate" } else { "verify" })),
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            if k != "regenerate" {
                b.insert(k.clone(), v.clone());
            }
        }
    }
    Reply::json(status, &body)
}

/// `POST /2fa/v1/verify/{id}` (`{"otp_code": ...}`) and `POST /2fa/v1/regenerate/{id}`.
fn otp(sandbox: &Sandbox, call: &Call<'_>, verify: bool, now: OffsetDateTime) -> Reply {
    let tx_id = call.params.transaction_id.clone().unwrap_or_default();
    let marker = if verify {
        json!({})
    } else {
        json!({"regenerate": true})
    };
    let code = if verify {
        let body = match call.json_object() {
            Ok(b) => b,
            Err(_) => {
                return otp_reply(
                    StatusCode::BAD_REQUEST,
                    &tx_id,
                    "unexpected_client_input",
                    "The request must be a JSON object with otp_code.",
                    "Die Anfrage muss ein JSON-Objekt mit otp_code sein.",
                    marker,
                )
            }
        };
        // Ratepay's own sample sends the code as a number; accept both.
        match body.get("otp_code") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => {
                return otp_reply(
                    StatusCode::BAD_REQUEST,
                    &tx_id,
                    "unexpected_client_input",
                    "otp_code is required.",
                    "otp_code ist erforderlich.",
                    marker,
                )
            }
        }
    } else {
        String::new()
    };
    let mut guard = lock(&sandbox.inner);
    let inner = &mut *guard;
    let Some(tx) = inner.ledger.get_mut(&tx_id, call.client, call.partner) else {
        return otp_reply(
            StatusCode::NOT_FOUND,
            &tx_id,
            "transaction_not_found",
            "The transaction does not exist.",
            "Die Transaktion existiert nicht.",
            marker,
        );
    };
    let TxState::OtpPending {
        amount,
        attempts_left,
        regenerations_left,
    } = tx.state.clone()
    else {
        return otp_reply(
            StatusCode::UNPROCESSABLE_ENTITY,
            &tx_id,
            "otp_failed",
            "There is no active one-time passcode process for this transaction.",
            "Für diese Transaktion läuft kein Einmalpasswort-Verfahren.",
            marker,
        );
    };
    if !verify {
        if regenerations_left == 0 {
            return otp_reply(
                StatusCode::UNPROCESSABLE_ENTITY,
                &tx_id,
                "no_more_regeneration_attempts_left",
                "No more codes can be sent.",
                "Es können keine weiteren Codes gesendet werden.",
                marker,
            );
        }
        tx.state = TxState::OtpPending {
            amount,
            attempts_left,
            regenerations_left: regenerations_left - 1,
        };
        return otp_reply(
            StatusCode::OK,
            &tx_id,
            "otp_sent",
            "The code has been sent to your phone number.",
            "Der Code wurde an Ihre Telefonnummer gesendet.",
            json!({"regenerate": true, "regeneration_possible_in_seconds": 60, "time_to_live_in_seconds": 120}),
        );
    }
    if code == OTP_CODE {
        tx.state = TxState::Authorized;
        let auth_id = loop {
            // Cannot call inner.new_id() while `tx` borrows the ledger; ids only need to be
            // unique among this transaction's resources and transactions, checked here.
            let id = random_id(&mut inner.ids);
            if !inner.ledger.contains(&id) {
                break id;
            }
        };
        if let Some(tx) = inner.ledger.get_mut(&tx_id, call.client, call.partner) {
            tx.apply(FollowUp {
                id: auth_id,
                kind: Kind::Authorization,
                gross_amount: amount,
                created: now,
                request: json!({}),
                shipping_information: Vec::new(),
            });
        }
        return otp_reply(
            StatusCode::OK,
            &tx_id,
            "otp_verified",
            "Your code has been successfully verified.",
            "Ihr Code wurde erfolgreich überprüft.",
            marker,
        );
    }
    if attempts_left <= 1 {
        tx.state = TxState::Declined {
            category: "TRANSACTION_RISK",
            reason: "OTP_VERIFICATION_FAILED",
        };
        return otp_reply(
            StatusCode::UNPROCESSABLE_ENTITY,
            &tx_id,
            "no_more_verification_attempts_left",
            "The code was wrong too often; the transaction is declined.",
            "Der Code war zu oft falsch; die Transaktion wurde abgelehnt.",
            marker,
        );
    }
    tx.state = TxState::OtpPending {
        amount,
        attempts_left: attempts_left - 1,
        regenerations_left,
    };
    otp_reply(
        StatusCode::UNPROCESSABLE_ENTITY,
        &tx_id,
        "verify_attempt_failed",
        "The code is wrong.",
        "Der Code ist falsch.",
        json!({"attempts_left": attempts_left - 1}),
    )
}

/// `POST /2fa/v1/verify/{id}` with `{"otp_code": ...}`.
pub(crate) fn verify(sandbox: &Sandbox, call: &Call<'_>, now: OffsetDateTime) -> Reply {
    otp(sandbox, call, true, now)
}

/// `POST /2fa/v1/regenerate/{id}`.
pub(crate) fn regenerate(sandbox: &Sandbox, call: &Call<'_>, now: OffsetDateTime) -> Reply {
    otp(sandbox, call, false, now)
}
