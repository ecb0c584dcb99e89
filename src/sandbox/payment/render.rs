//! Transactions and follow-ups as Ratepay renders them (`application/hal+json` with
//! `_links.self.href`; the Status API's plain JSON), and the two reads that answer with nothing
//! else: `GET` a transaction and the Transaction Status API.

use http::StatusCode;
use serde_json::{json, Map, Value};

use super::{with_tx, BASE};
use crate::sandbox::{
    call::Call,
    ledger::{amount_json, FollowUp, Kind, Transaction, TxState},
    reply::{rfc3339, Reply},
    state::Sandbox,
};

/// `GET /v2/transactions/{id}`.
pub(crate) fn transaction(sandbox: &Sandbox, call: &Call<'_>) -> Reply {
    with_tx(sandbox, call, |tx, _| {
        Reply::hal(StatusCode::OK, &tx_representation(tx))
    })
}

/// `GET /transaction/status/v2/transactions/{id}`.
pub(crate) fn status(sandbox: &Sandbox, call: &Call<'_>) -> Reply {
    with_tx(sandbox, call, |tx, _| {
        Reply::raw(
            StatusCode::OK,
            "application/json;charset=UTF-8",
            status_representation(tx).to_string().into(),
        )
    })
}

/// `{"self": {"href": ...}}`.
pub(super) fn self_link(href: String) -> Value {
    json!({ "self": { "href": href } })
}

fn amounts(tx: &Transaction) -> Value {
    json!({
        "authorized": amount_json(tx.authorized),
        "captured": amount_json(tx.captured),
        "refunded": amount_json(tx.refunded),
        "cancelled": amount_json(tx.cancelled),
        "open": amount_json(tx.open()),
    })
}

pub(super) fn follow_up_representation(tx: &Transaction, o: &FollowUp) -> Value {
    let mut m = o.request.as_object().cloned().unwrap_or_default();
    m.insert(
        "_links".into(),
        self_link(format!("{BASE}/{}/{}/{}", tx.id, o.kind.plural(), o.id)),
    );
    m.insert(o.kind.id_field().into(), json!(o.id));
    m.insert("created".into(), json!(rfc3339(o.created)));
    m.insert("gross_amount".into(), amount_json(o.gross_amount));
    if o.kind == Kind::Capture {
        let infos: Vec<Value> = o
            .shipping_information
            .iter()
            .map(|(at, v)| {
                let mut v = v.clone();
                if let Some(obj) = v.as_object_mut() {
                    obj.insert("created".into(), json!(rfc3339(*at)));
                }
                v
            })
            .collect();
        m.insert("shipping_information".into(), Value::Array(infos));
    }
    Value::Object(m)
}

/// The full transaction with its follow-ups (GET, PATCH, `Prefer: return=representation`).
pub(super) fn tx_representation(tx: &Transaction) -> Value {
    let mut m = Map::new();
    let mut links = Map::new();
    links.insert("self".into(), json!({"href": format!("{BASE}/{}", tx.id)}));
    let mut embedded = Map::new();
    for k in [
        Kind::Authorization,
        Kind::Capture,
        Kind::Refund,
        Kind::Cancellation,
    ] {
        links.insert(
            k.plural().into(),
            json!({"href": format!("{BASE}/{}/{}", tx.id, k.plural())}),
        );
        let items: Vec<Value> = tx
            .of_kind(k)
            .map(|o| follow_up_representation(tx, o))
            .collect();
        embedded.insert(k.plural().into(), Value::Array(items));
    }
    m.insert("_links".into(), Value::Object(links));
    m.insert("_embedded".into(), Value::Object(embedded));
    m.insert("ratepay_transaction_id".into(), json!(tx.id));
    if let Some(p) = &tx.partner_transaction_id {
        m.insert("partner_transaction_id".into(), json!(p));
    }
    m.insert("created".into(), json!(rfc3339(tx.created)));
    m.insert(
        "authorization_expires".into(),
        json!(rfc3339(tx.authorization_expires)),
    );
    m.insert("currency".into(), json!(tx.currency));
    m.insert("status".into(), json!(tx.status()));
    m.insert("amounts".into(), amounts(tx));
    for field in ["buyer", "shop_baskets", "payment_method", "delivery"] {
        if let Some(v) = tx.request.get(field) {
            m.insert(field.into(), v.clone());
        }
    }
    if let TxState::Declined { category, reason } = &tx.state {
        m.insert(
            "decline".into(),
            json!({"category": category, "reasons": [reason]}),
        );
    }
    Value::Object(m)
}

/// Transaction Status API body: Ratepay's top-level fields plus `status` and `amounts`.
fn status_representation(tx: &Transaction) -> Value {
    json!({
        "ratepay_transaction_id": tx.id,
        "partner_transaction_id": tx.partner_transaction_id,
        "created": rfc3339(tx.created),
        "shop_buyer_id": tx.shop_buyer_id,
        "currency": tx.currency,
        "shop_baskets": tx.request.get("shop_baskets").cloned().unwrap_or(json!([])),
        "status": tx.status(),
        "amounts": amounts(tx),
    })
}
