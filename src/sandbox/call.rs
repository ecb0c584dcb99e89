//! One authenticated API call as the operations see it ([`Call`]: query, headers, body, client,
//! partner, path ids), with the body checks every JSON operation shares.

use http::{header, HeaderMap, StatusCode};
use serde_json::{Map, Value};

use super::reply::{decline, invalid_json, Reply};
use crate::routes::PathParams;

/// Whether the request declares a JSON body (`application/json` or `*/*+json`).
pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| {
            let m = m.trim().to_ascii_lowercase();
            m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
        })
        .unwrap_or(false)
}

/// One authenticated API call, as the operations see it.
pub(crate) struct Call<'a> {
    /// Query string.
    pub query: Option<&'a str>,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// Request body.
    pub body: &'a [u8],
    /// OAuth client id (`sub` of the token).
    pub client: &'a str,
    /// `X-Partner`, if sent.
    pub partner: Option<&'a str>,
    /// Ids from the path.
    pub params: &'a PathParams,
}

impl Call<'_> {
    /// The body as a JSON object, or the 400/415 answer explaining why not.
    pub(crate) fn json_object(&self) -> Result<Map<String, Value>, Reply> {
        if self.body.is_empty() {
            return Err(invalid_json("a JSON request body is required"));
        }
        if !is_json(self.headers) {
            return Err(decline(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "SYNTAX",
                &["INVALID_JSON"],
                "Content-Type must be application/json",
            ));
        }
        match serde_json::from_slice::<Value>(self.body) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(invalid_json("the request body must be a JSON object")),
            Err(e) => Err(invalid_json(&format!("malformed JSON: {e}"))),
        }
    }

    /// `Prefer: return=representation` (RFC 7240).
    pub(crate) fn wants_representation(&self) -> bool {
        self.headers
            .get_all("prefer")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim().eq_ignore_ascii_case("return=representation"))
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn json_content_types() {
        let mut h = HeaderMap::new();
        assert!(!is_json(&h));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert!(is_json(&h));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/hal+json"),
        );
        assert!(is_json(&h));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(!is_json(&h));
    }
}
