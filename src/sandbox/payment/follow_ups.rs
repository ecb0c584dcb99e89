//! The follow-ups of a transaction: `POST` an authorization, capture, refund or cancellation
//! (checked by the ledger), list and read them, and add shipping information to a capture.

use http::StatusCode;
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::{
    render::{follow_up_representation, self_link},
    validate::{items_total, opt_string},
    with_tx, BASE,
};
use crate::sandbox::{
    call::Call,
    ledger::{parse_amount, FollowUp, Kind},
    reply::{decline, invalid_fields_many, rfc3339, Reply},
    state::Sandbox,
};

/// `POST /v2/transactions/{id}/{authorizations|captures|refunds|cancellations}`.
pub(crate) fn follow_up(
    sandbox: &Sandbox,
    call: &Call<'_>,
    kind: Kind,
    now: OffsetDateTime,
) -> Reply {
    let body = match call.json_object() {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut errors = Vec::new();
    let amount = match body.get("gross_amount").map(parse_amount) {
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => {
            errors.push(("$.gross_amount".to_owned(), e.to_string()));
            None
        }
        None => {
            errors.push(("$.gross_amount".to_owned(), "is required".to_owned()));
            None
        }
    };
    let items = items_total(&body, "$", &mut errors);
    let _ = opt_string(&body, "partner_operation_id", 255, &mut errors);
    let _ = opt_string(&body, "partner_shop_id", 255, &mut errors);
    let Some(amount) = amount.filter(|_| errors.is_empty()) else {
        return invalid_fields_many(&errors);
    };
    with_tx(sandbox, call, |tx, inner| {
        if items.is_some_and(|sum| sum != amount) {
            return decline(
                StatusCode::UNPROCESSABLE_ENTITY,
                "UNPROCESSABLE_OPERATION",
                &["SUM_OF_ITEM_AMOUNTS_NOT_MATCHING_OPERATION_AMOUNT"],
                "gross_amount differs from the sum of the items and special items",
            );
        }
        if let Err(refusal) = tx.check(kind, amount, now) {
            return decline(
                StatusCode::UNPROCESSABLE_ENTITY,
                "UNPROCESSABLE_OPERATION",
                &[refusal.reason],
                &refusal.message,
            );
        }
        let id = inner.new_id();
        let op = FollowUp {
            id: id.clone(),
            kind,
            gross_amount: amount,
            created: now,
            request: Value::Object(body),
            shipping_information: Vec::new(),
        };
        let body = if call.wants_representation() {
            follow_up_representation(tx, &op)
        } else {
            json!({
                "_links": self_link(format!("{BASE}/{}/{}/{id}", tx.id, kind.plural())),
                "created": rfc3339(now),
                kind.id_field(): id,
            })
        };
        tx.apply(op);
        Reply::hal(StatusCode::CREATED, &body)
    })
}

/// `POST /v2/transactions/{id}/captures/{capture_id}/shipping-information`.
pub(crate) fn shipping_information(
    sandbox: &Sandbox,
    call: &Call<'_>,
    now: OffsetDateTime,
) -> Reply {
    let body = match call.json_object() {
        Ok(b) => b,
        Err(r) => return r,
    };
    let capture_id = call.params.resource_id.as_deref().unwrap_or("");
    with_tx(sandbox, call, |tx, _| {
        let tx_id = tx.id.clone();
        let Some(capture) = tx
            .operations
            .iter_mut()
            .find(|o| o.kind == Kind::Capture && o.id == capture_id)
        else {
            return decline(
                StatusCode::NOT_FOUND,
                "RESOURCE_NOT_FOUND",
                &["CAPTURE_NOT_FOUND"],
                "no such capture on this transaction",
            );
        };
        capture
            .shipping_information
            .push((now, Value::Object(body)));
        Reply::hal(
            StatusCode::CREATED,
            &json!({
                "_links": self_link(format!("{BASE}/{tx_id}/captures/{capture_id}/shipping-information")),
                "created": rfc3339(now),
                "ratepay_capture_id": capture_id,
            }),
        )
    })
}

/// `GET /v2/transactions/{id}/{authorizations|captures|refunds|cancellations}`.
pub(crate) fn follow_up_list(sandbox: &Sandbox, call: &Call<'_>, kind: Kind) -> Reply {
    with_tx(sandbox, call, |tx, _| {
        let items: Vec<Value> = tx
            .of_kind(kind)
            .map(|o| follow_up_representation(tx, o))
            .collect();
        Reply::hal(
            StatusCode::OK,
            &json!({
                "_embedded": { kind.plural(): items },
                "_links": self_link(format!("{BASE}/{}/{}", tx.id, kind.plural())),
                "ratepay_transaction_id": tx.id,
            }),
        )
    })
}

/// `GET /v2/transactions/{id}/{authorizations|captures|refunds|cancellations}/{resource_id}`.
pub(crate) fn follow_up_get(sandbox: &Sandbox, call: &Call<'_>, kind: Kind) -> Reply {
    with_tx(sandbox, call, |tx, _| {
        let rid = call.params.resource_id.as_deref().unwrap_or("");
        match tx.of_kind(kind).find(|o| o.id == rid) {
            Some(o) => Reply::hal(StatusCode::OK, &follow_up_representation(tx, o)),
            None => decline(
                StatusCode::NOT_FOUND,
                "RESOURCE_NOT_FOUND",
                &[kind.not_found_reason()],
                "no such resource on this transaction",
            ),
        }
    })
}
