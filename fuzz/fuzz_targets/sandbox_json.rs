//! The sandbox's request validation (`sandbox/payment/`, `hpp.rs`, `oauth.rs`: JSON bodies of
//! authorize, change, follow-ups, OTP, HPP sessions and the token endpoint), driven in-process
//! through `sandbox::InProcess`, as a client would reach it over HTTP.
//!
//! Each input is up to four bodies separated by NUL bytes: a transaction is authorized with the
//! first (or a known-good body when it is refused), then three calls chosen by the first byte
//! act on that transaction with the others. Invariants: never panics; every answer is a 2xx or
//! a 4xx (bad input is refused, never a 500) with a JSON body; a follow-up the sandbox accepted
//! leaves the transaction readable, its amounts consistent (captured and cancelled within
//! authorized, refunded within captured).
#![no_main]

use std::sync::OnceLock;

use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Full};
use libfuzzer_sys::fuzz_target;
use ratepay_gateway::sandbox::{
    InProcess, SandboxAudiences, SandboxConfig, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET,
};
use serde_json::{json, Value};

const TX: &str = "/transaction/management/v2/transactions";
const GOOD: &str = r#"{"currency":"EUR","buyer":{"first_name":"T","last_name":"B","contact":{"email":"b@example.com"}},"shop_baskets":[{"gross_amount":100.0}]}"#;

fn config() -> SandboxConfig {
    SandboxConfig {
        seed: Some(7),
        ..SandboxConfig::default()
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

/// Sends one request; checks the answer is 2xx/4xx with JSON (or no) body and returns both.
async fn call(
    sb: &InProcess,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Bytes,
) -> (u16, Value) {
    let mut rb = Request::builder()
        .method(method.clone())
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        rb = rb.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let resp = sb.handle(rb.body(Full::new(body)).unwrap()).await;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(
        (200..300).contains(&status) || (400..500).contains(&status),
        "{method} {path} answered {status}: {}",
        String::from_utf8_lossy(&bytes)
    );
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e})"))
    };
    (status, v)
}

/// Tokens are HS256 from the seed: one fetch serves every sandbox built from `config()`.
fn tokens() -> &'static (String, String, String) {
    static T: OnceLock<(String, String, String)> = OnceLock::new();
    T.get_or_init(|| {
        let sb = InProcess::new(config());
        let a = SandboxAudiences::integration();
        runtime().block_on(async {
            let get = async |aud: &str| {
                let body = json!({"client_id": DEFAULT_CLIENT_ID, "client_secret": DEFAULT_CLIENT_SECRET,
                                  "audience": aud, "grant_type": "client_credentials"});
                let (s, v) = call(&sb, Method::POST, "/oauth/token", None, Bytes::from(body.to_string())).await;
                assert_eq!(s, 200);
                v["access_token"].as_str().unwrap().to_owned()
            };
            (get(&a.payment).await, get(&a.status).await, get(&a.hpp).await)
        })
    })
}

/// Cents as the sandbox keeps them, from a retrieve's `amounts` (numbers of euros).
fn cents(v: &Value, name: &str) -> i64 {
    v["amounts"][name]
        .as_f64()
        .map_or(0, |e| (e * 100.0).round() as i64)
}

fuzz_target!(|data: &[u8]| {
    let Some((&ops, rest)) = data.split_first() else {
        return;
    };
    let mut bodies = rest.splitn(4, |b| *b == 0).map(Bytes::copy_from_slice);
    let first = bodies.next().unwrap_or_default();
    let (pay, status_token, hpp) = tokens();
    let sb = InProcess::new(config());
    runtime().block_on(async {
        // The token endpoint parses the same kind of input.
        if ops & 0x80 != 0 {
            call(&sb, Method::POST, "/oauth/token", None, first.clone()).await;
        }
        let (s, v) = call(&sb, Method::POST, TX, Some(pay), first.clone()).await;
        let (s, v) = if s == 201 || s == 202 {
            (s, v)
        } else {
            call(
                &sb,
                Method::POST,
                TX,
                Some(pay),
                Bytes::from_static(GOOD.as_bytes()),
            )
            .await
        };
        assert!(
            s == 201 || s == 202,
            "the known-good authorization failed: {s} {v}"
        );
        let id = v["ratepay_transaction_id"]
            .as_str()
            .expect("an authorization names its transaction")
            .to_owned();
        let tx = format!("{TX}/{id}");
        let mut capture: Option<String> = None;
        for (i, body) in bodies.enumerate() {
            let op = (ops >> (2 * i)) & 0x0f;
            let (method, path, token) = match op {
                0 => (Method::PATCH, tx.clone(), pay),
                1 => (Method::POST, format!("{tx}/authorizations"), pay),
                2 => (Method::POST, format!("{tx}/captures"), pay),
                3 => (Method::POST, format!("{tx}/refunds"), pay),
                4 | 5 => (Method::POST, format!("{tx}/cancellations"), pay),
                6 => (
                    Method::POST,
                    format!(
                        "{tx}/captures/{}/shipping-information",
                        capture.as_deref().unwrap_or("none")
                    ),
                    pay,
                ),
                7 => (
                    Method::POST,
                    format!("/transaction/management/2fa/v1/verify/{id}"),
                    pay,
                ),
                8 => (
                    Method::POST,
                    format!("/transaction/management/2fa/v1/regenerate/{id}"),
                    pay,
                ),
                9 | 10 => (Method::POST, "/pps/api/v1/session".to_owned(), hpp),
                11 => (Method::POST, format!("{tx}/captures"), pay),
                _ => (Method::POST, format!("{tx}/cancellations"), pay),
            };
            let (s, v) = call(&sb, method, &path, Some(token), body).await;
            if s == 201 {
                if let Some(c) = v["ratepay_capture_id"].as_str() {
                    capture = Some(c.to_owned());
                }
            }
        }
        let (s, t) = call(&sb, Method::GET, &tx, Some(pay), Bytes::new()).await;
        assert_eq!(s, 200, "the transaction is no longer readable: {t}");
        let (authorized, captured, cancelled, refunded) = (
            cents(&t, "authorized"),
            cents(&t, "captured"),
            cents(&t, "cancelled"),
            cents(&t, "refunded"),
        );
        assert!(captured + cancelled <= authorized, "{t}");
        assert!(refunded <= captured, "{t}");
        let (s, _) = call(
            &sb,
            Method::GET,
            &format!("/transaction/status/v2/transactions/{id}"),
            Some(status_token),
            Bytes::new(),
        )
        .await;
        assert_eq!(s, 200);
    });
});
