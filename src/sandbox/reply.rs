//! What every sandbox answer is made of: [`Reply`] (status, headers, body; cloned to replay an
//! idempotent answer exactly) and the shapes Ratepay answers refusals with (declines,
//! `INVALID_FIELDS`, `INVALID_JSON`), plus Ratepay's timestamp format.
//!
//! At the bottom of the sandbox: the operations and the HTTP front both build replies; this file
//! imports neither.

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

/// A complete answer, cheap to clone so that idempotency can store and replay it exactly.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers besides the ones hyper adds.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Body.
    pub body: Bytes,
}

impl Reply {
    /// A body with a content type.
    pub(crate) fn raw(status: StatusCode, content_type: &'static str, body: Bytes) -> Reply {
        Reply {
            status,
            headers: vec![(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
            body,
        }
    }

    /// `application/json`.
    pub(crate) fn json(status: StatusCode, v: &Value) -> Reply {
        Reply::raw(status, "application/json", Bytes::from(v.to_string()))
    }

    /// `application/hal+json` (Payment API resources).
    pub(crate) fn hal(status: StatusCode, v: &Value) -> Reply {
        Reply::raw(status, "application/hal+json", Bytes::from(v.to_string()))
    }

    /// Adds a header.
    pub(crate) fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Reply {
        self.headers.push((name, value));
        self
    }

    /// The hyper response.
    pub(crate) fn into_response(self) -> Response<Full<Bytes>> {
        let mut res = Response::new(Full::new(self.body));
        *res.status_mut() = self.status;
        for (k, v) in self.headers {
            res.headers_mut().append(k, v);
        }
        res
    }
}

/// A Ratepay decline: `{"category", "reasons", "message"}` (the DeclineDto shape of
/// Ratepay's HPP docs; the Payment API uses the same category/reason vocabulary).
pub(crate) fn decline(
    status: StatusCode,
    category: &str,
    reasons: &[&str],
    message: &str,
) -> Reply {
    Reply::json(
        status,
        &json!({"category": category, "reasons": reasons, "message": message}),
    )
}

/// 400 `SYNTAX` / `INVALID_FIELDS` naming each bad field.
pub(crate) fn invalid_fields_many(fields: &[(String, String)]) -> Reply {
    let list: Vec<Value> = fields
        .iter()
        .map(|(p, m)| json!({"json_path": p, "message": m}))
        .collect();
    let message = fields
        .iter()
        .map(|(p, m)| format!("{p}: {m}"))
        .collect::<Vec<_>>()
        .join("; ");
    Reply::json(
        StatusCode::BAD_REQUEST,
        &json!({"category": "SYNTAX", "reasons": ["INVALID_FIELDS"], "invalid_fields": list, "message": message}),
    )
}

/// 400 `INVALID_FIELDS` for one field.
pub(crate) fn invalid_fields(path: &str, message: &str) -> Reply {
    invalid_fields_many(&[(path.to_owned(), message.to_owned())])
}

/// 400 `SYNTAX` / `INVALID_JSON`.
pub(crate) fn invalid_json(message: &str) -> Reply {
    decline(
        StatusCode::BAD_REQUEST,
        "SYNTAX",
        &["INVALID_JSON"],
        message,
    )
}

/// RFC 3339 (ISO 8601 with offset) text.
pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}
