//! `X-Request-Id`: the one id that ties a request's access record, problem responses, audit
//! records and upstream call together. Read at the edge, passed on to Ratepay, never trusted
//! for more than its shape.

use std::sync::Arc;

/// `X-Request-Id`.
pub static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// Keeps a well-formed incoming`X-Request-Id` (1 to 128 of `[A-Za-z0-9._:-]`), else makes one.
pub fn request_id(headers: &http::HeaderMap) -> Arc<str> {
    headers
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=128).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        })
        .map(Arc::from)
        .unwrap_or_else(|| {
            // Encoded into a stack buffer: `to_string` went through the formatter and a
            // `String` on every request.
            let mut buf = uuid::Uuid::encode_buffer();
            Arc::from(&*uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buf))
        })
}
