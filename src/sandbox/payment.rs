//! Payment API v2, One Time Passcode and Transaction Status API operations.
//!
//! Parses and validates requests (400 `INVALID_JSON` / `INVALID_FIELDS`), finds the caller's
//! transaction (404 `TRANSACTION_NOT_FOUND`, also for other clients' or partners'), asks the
//! [`ledger`](super::ledger) whether the operation is allowed (422 with Ratepay's reason) and
//! renders `application/hal+json` resources with `_links.self.href`.
//!
//! Ratepay's integration test e-mails drive outcomes of an authorization
//! (`buyer.contact.email`): `otp_required@ratepay.com` → 202 `OTP_REQUIRED`;
//! `buyer_identity@`, `payment_attribute@`, `risk_decision@`, `transaction_risk@ratepay.com` →
//! 422 decline of that category. The sandbox's one-time passcode is always [`OTP_CODE`].

use http::StatusCode;
use serde_json::{json, Map, Value};
use time::{format_description::well_known::Rfc3339, Duration, OffsetDateTime};

use super::{
    hpp::rfc3339,
    http::{decline, invalid_fields, invalid_fields_many, Call, Reply},
    ledger::{
        amount_json, parse_amount, parse_signed_cents, Cents, FollowUp, Kind, Transaction, TxState,
    },
    state::{lock, Inner, Sandbox},
};

/// Path prefix of transaction resources.
const BASE: &str = "/transaction/management/v2/transactions";
/// Path prefix of the One Time Passcode API.
const OTP_BASE: &str = "/transaction/management/2fa/v1";
/// The passcode the sandbox "sends" to every buyer.
pub const OTP_CODE: &str = "123456";
/// Wrong passcodes allowed before the transaction is declined.
const OTP_ATTEMPTS: u32 = 3;
/// Passcode regenerations allowed.
const OTP_REGENERATIONS: u32 = 3;
/// Default `authorization_expires` when the request gives none (Ratepay: "a default expiry
/// time is generated"; its length is not documented).
const DEFAULT_EXPIRY: Duration = Duration::days(30);
/// Latest `authorization_expires` accepted, counted from now. Ratepay publishes no maximum;
/// a year bounds the obvious mistakes (a year typed wrong, seconds sent as milliseconds).
pub const MAX_EXPIRY_DAYS: i64 = 365;

fn self_link(href: String) -> Value {
    json!({ "self": { "href": href } })
}

fn tx_not_found() -> Reply {
    decline(
        StatusCode::NOT_FOUND,
        "RESOURCE_NOT_FOUND",
        &["TRANSACTION_NOT_FOUND"],
        "no such transaction for this client and partner",
    )
}

/// Runs one Payment, OTP or Status API operation.
pub(crate) fn execute(sandbox: &Sandbox, op: &str, call: &Call<'_>) -> Reply {
    let now = OffsetDateTime::now_utc();
    let kind = |name: &str| match name {
        "authorizations" => Some(Kind::Authorization),
        "captures" => Some(Kind::Capture),
        "refunds" => Some(Kind::Refund),
        "cancellations" => Some(Kind::Cancellation),
        _ => None,
    };
    let mut parts = op.split('.');
    let (api, resource, action) = (parts.next(), parts.next(), parts.next());
    match (api, resource, action) {
        (Some("payment"), Some("transactions"), Some("create")) => authorize(sandbox, call, now),
        (Some("payment"), Some("transactions"), Some("get")) => with_tx(sandbox, call, |tx, _| {
            Reply::hal(StatusCode::OK, &tx_representation(tx))
        }),
        (Some("payment"), Some("transactions"), Some("update")) => update(sandbox, call, now),
        (Some("payment"), Some("shipping_information"), Some("create")) => {
            shipping_information(sandbox, call, now)
        }
        (Some("payment"), Some("otp"), Some(action)) => otp(sandbox, call, action == "verify", now),
        (Some("status"), Some("transactions"), Some("get")) => with_tx(sandbox, call, |tx, _| {
            Reply::raw(
                StatusCode::OK,
                "application/json;charset=UTF-8",
                status_representation(tx).to_string().into(),
            )
        }),
        (Some("payment"), Some(res), Some(action)) => match (kind(res), action) {
            (Some(k), "create") => follow_up(sandbox, call, k, now),
            (Some(k), "list") => with_tx(sandbox, call, |tx, _| {
                let items: Vec<Value> = tx
                    .of_kind(k)
                    .map(|o| follow_up_representation(tx, o))
                    .collect();
                Reply::hal(
                    StatusCode::OK,
                    &json!({
                        "_embedded": { k.plural(): items },
                        "_links": self_link(format!("{BASE}/{}/{}", tx.id, k.plural())),
                        "ratepay_transaction_id": tx.id,
                    }),
                )
            }),
            (Some(k), "get") => with_tx(sandbox, call, |tx, _| {
                let rid = call.params.resource_id.as_deref().unwrap_or("");
                match tx.of_kind(k).find(|o| o.id == rid) {
                    Some(o) => Reply::hal(StatusCode::OK, &follow_up_representation(tx, o)),
                    None => decline(
                        StatusCode::NOT_FOUND,
                        "RESOURCE_NOT_FOUND",
                        &[k.not_found_reason()],
                        "no such resource on this transaction",
                    ),
                }
            }),
            _ => unknown(),
        },
        _ => unknown(),
    }
}

fn unknown() -> Reply {
    decline(
        StatusCode::NOT_FOUND,
        "RESOURCE_NOT_FOUND",
        &["NOT_FOUND"],
        "unknown operation",
    )
}

/// Runs `f` on the caller's transaction from the path, or answers 404.
fn with_tx(
    sandbox: &Sandbox,
    call: &Call<'_>,
    f: impl FnOnce(&mut Transaction, &mut Inner) -> Reply,
) -> Reply {
    let Some(id) = call.params.transaction_id.as_deref() else {
        return tx_not_found();
    };
    let mut guard = lock(&sandbox.inner);
    let inner = &mut *guard;
    // Take the transaction out while `f` runs so that `f` may also draw ids from `inner`.
    let Some(tx) = inner.ledger.get_mut(id, call.client, call.partner) else {
        return tx_not_found();
    };
    let mut tx = tx.clone();
    let reply = f(&mut tx, inner);
    inner.ledger.insert(tx);
    reply
}

/// Sum of `items` and `special_items` of a basket or operation, if it lists any.
fn items_total(
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

fn opt_string(
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
fn expiry(v: &Value, now: OffsetDateTime) -> Result<OffsetDateTime, String> {
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
fn authorize(sandbox: &Sandbox, call: &Call<'_>, now: OffsetDateTime) -> Reply {
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

/// `POST /v2/transactions/{id}/{authorizations|captures|refunds|cancellations}`.
fn follow_up(sandbox: &Sandbox, call: &Call<'_>, kind: Kind, now: OffsetDateTime) -> Reply {
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
fn shipping_information(sandbox: &Sandbox, call: &Call<'_>, now: OffsetDateTime) -> Reply {
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

/// `PATCH /v2/transactions/{id}`: `authorization_expires` and `buyer` may change.
fn update(sandbox: &Sandbox, call: &Call<'_>, now: OffsetDateTime) -> Reply {
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
            let id = super::state::random_id(&mut inner.ids);
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

fn amounts(tx: &Transaction) -> Value {
    json!({
        "authorized": amount_json(tx.authorized),
        "captured": amount_json(tx.captured),
        "refunded": amount_json(tx.refunded),
        "cancelled": amount_json(tx.cancelled),
        "open": amount_json(tx.open()),
    })
}

fn follow_up_representation(tx: &Transaction, o: &FollowUp) -> Value {
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
fn tx_representation(tx: &Transaction) -> Value {
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

#[cfg(test)]
mod tests {
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
