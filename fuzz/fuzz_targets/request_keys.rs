//! `Idempotency-Key` validation (`idempotency::validate_key`, `upstream_key`) and the
//! `X-Request-Id` rule (`stack::request_id`) on any header bytes.
//!
//! Invariants: never panics; a validated key is the input unchanged, 1 to 64 visible ASCII
//! characters, fits back into a header, and scopes to 64 lowercase hex characters; a refused
//! key breaks the rule. A well-formed request id is kept byte for byte, anything else is
//! replaced by a fresh UUID, and the result always satisfies the rule and fits a header.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use ratepay_gateway::{
    middleware::idempotency::{upstream_key, validate_key},
    request_id::{request_id, X_REQUEST_ID},
};

fn key_rule(k: &[u8]) -> bool {
    (1..=64).contains(&k.len()) && k.iter().all(|b| (0x21..=0x7e).contains(b))
}

fn id_rule(v: &[u8]) -> bool {
    (1..=128).contains(&v.len())
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

fuzz_target!(|data: &[u8]| {
    match validate_key(data) {
        Ok(k) => {
            assert_eq!(k.as_bytes(), data);
            assert!(key_rule(data));
            assert_eq!(HeaderValue::from_str(k).unwrap().as_bytes(), data);
            let scoped = upstream_key("caller-1", k);
            assert_eq!(scoped.len(), 64);
            assert!(scoped
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
            assert_ne!(scoped, upstream_key("caller-2", k));
        }
        Err(_) => assert!(
            !key_rule(data),
            "refused a key that keeps the rule: {data:?}"
        ),
    }

    // What hyper hands the stack is a HeaderValue: only bytes that make one are reachable.
    let mut headers = HeaderMap::new();
    let sent = HeaderValue::from_bytes(data).ok();
    if let Some(v) = &sent {
        headers.insert(X_REQUEST_ID.clone(), v.clone());
    }
    let id = request_id(&headers);
    assert!(id_rule(id.as_bytes()), "unusable request id {id:?}");
    assert!(HeaderValue::from_str(&id).is_ok());
    if sent.is_some() && id_rule(data) {
        assert_eq!(id.as_bytes(), data, "a well-formed id was not kept");
    } else {
        assert_eq!(id.len(), 36, "a malformed id was not replaced: {id:?}");
    }
});
