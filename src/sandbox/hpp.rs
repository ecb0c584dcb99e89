//! Hosted Payment Page operations (`/pps/api/v1/...`): create a session, read its record, list
//! the records of a day. The sessions themselves, and how their status moves, are in
//! `sessions.rs`.

use http::StatusCode;
use serde_json::{json, Value};
use time::{macros::format_description, Date, OffsetDateTime};

use super::{
    call::Call,
    reply::{decline, invalid_fields, Reply},
    sessions::NewSession,
    state::{lock, Sandbox},
};

fn not_found() -> Reply {
    decline(
        StatusCode::NOT_FOUND,
        "RESOURCE_NOT_FOUND",
        &["SESSION_NOT_FOUND"],
        "no such session for this client and partner",
    )
}

/// `GET /pps/api/v1/session-record/{id}`.
pub(crate) fn record(sandbox: &Sandbox, call: &Call<'_>, now: OffsetDateTime) -> Reply {
    let Some(id) = call.params.session_id.as_deref() else {
        return not_found();
    };
    let step = sandbox.config.session_step;
    let mut inner = lock(&sandbox.inner);
    match inner.sessions.visible_mut(id, call.client, call.partner) {
        Some(s) => Reply::json(StatusCode::OK, &s.record(now, step)),
        None => not_found(),
    }
}

/// `GET /pps/api/v1/session-record?createdDate=yyyy-MM-dd`.
pub(crate) fn records(sandbox: &Sandbox, call: &Call<'_>, now: OffsetDateTime) -> Reply {
    let Some(date) = query_param(call.query, "createdDate").and_then(parse_date) else {
        return invalid_fields(
            "$.createdDate",
            "createdDate is required and must be a date formatted yyyy-MM-dd",
        );
    };
    let step = sandbox.config.session_step;
    let mut inner = lock(&sandbox.inner);
    let records: Vec<Value> = inner
        .sessions
        .created_on(date, call.client, call.partner)
        .into_iter()
        .map(|s| s.record(now, step))
        .collect();
    Reply::json(StatusCode::OK, &Value::Array(records))
}

/// `POST /pps/api/v1/session`.
pub(crate) fn create(sandbox: &Sandbox, call: &Call<'_>, now: OffsetDateTime) -> Reply {
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
    inner.sessions.insert(NewSession {
        id: id.clone(),
        client: call.client.to_owned(),
        partner: call.partner.map(str::to_owned),
        created: now,
        transaction_id,
        partner_transaction_id,
        shop_buyer_id,
    });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_date_parsing() {
        assert_eq!(
            query_param(Some("a=1&createdDate=2024-02-29"), "createdDate"),
            Some("2024-02-29")
        );
        assert!(parse_date("2024-02-29").is_some());
        assert!(parse_date("2023-02-29").is_none());
        assert!(parse_date("29.02.2024").is_none());
    }
}
