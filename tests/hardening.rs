//! End to end: the money-path defects an adversarial review found (issue 13), each through the
//! gateway over loopback, with the sandbox or a raw upstream that records exactly what arrived.

mod common;

use std::path::Path;

use common::{
    config_text, keys, problem, sandbox_config, sha,
    upstream::{json_answer, Answer, RawUpstream},
    Harness, Options, TX_PATH,
};
use ratepay_gateway::{config::Config, sandbox};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const TX: &str = "scwBgARW-nE93I7_ywhp";

fn cancel_path(tx: &str) -> String {
    format!("{TX_PATH}/{tx}/cancellations")
}

/// The sandbox for tokens (and HPP/status), `payment` pointed at a raw upstream.
async fn with_raw_payment(answer: Answer, opts: Options) -> (Harness, RawUpstream) {
    let raw = RawUpstream::start(answer).await;
    let sandbox = sandbox::spawn(sandbox_config(opts.token_lifetime))
        .await
        .expect("sandbox starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), &sandbox.url(), &opts).replacen(
        &format!("[upstreams.payment]\nurl = \"{}\"", sandbox.url()),
        &format!("[upstreams.payment]\nurl = \"{}\"", raw.url),
        1,
    );
    assert!(text.contains(&raw.url), "payment upstream replaced");
    let config = Config::from_toml(&text, Path::new("test.toml")).expect("valid config");
    (Harness::serve(sandbox, dir, config).await, raw)
}

fn scoped(caller: &str, key: &str) -> String {
    hex::encode(Sha256::digest(format!("{caller}:{key}").as_bytes()))
}

const CREATED: &str = r#"{"_links":{"self":{"href":"x"}},"created":"2026-01-01T00:00:00+01:00","ratepay_cancellation_id":"aa7rth5-__GG44rdsasf"}"#;

#[tokio::test]
async fn connection_cannot_strip_what_the_gateway_sets() {
    let (h, raw) = with_raw_payment(json_answer(201, CREATED), Options::default()).await;
    // Naming an end-to-end header in Connection is refused before anything leaves.
    for name in [
        "Idempotency-Key",
        "X-Partner",
        "Authorization",
        "Content-Type",
        "Content-Length",
        "X-Request-Id",
        "Prefer",
    ] {
        let resp = h
            .req(Method::POST, &cancel_path(TX), keys::FULL)
            .header("connection", format!("keep-alive, {name}"))
            .header("idempotency-key", "k-conn-1")
            .json(&json!({"gross_amount": 1.0}))
            .send()
            .await
            .unwrap();
        let body = problem(resp, 400).await;
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains(&name.to_ascii_lowercase()),
            "{body}"
        );
    }
    assert!(raw.seen().is_empty(), "nothing reached Ratepay");
    // A genuine hop-by-hop name goes; everything the gateway sets arrives.
    let resp = h
        .req(Method::POST, &cancel_path(TX), keys::FULL)
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret-hop")
        .header("te", "trailers")
        .header("idempotency-key", "k-conn-2")
        .header("prefer", "return=representation")
        .json(&json!({"gross_amount": 1.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["idempotency-key"], "k-conn-2");
    let seen = raw.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert!(s.header("x-hop").is_empty() && s.header("te").is_empty());
    assert!(s.header("connection").iter().all(|v| !v.contains("x-hop")));
    assert_eq!(s.header("idempotency-key"), [scoped("full", "k-conn-2")]);
    assert_eq!(s.header("x-partner"), ["p-fixed"]);
    assert_eq!(s.header("prefer"), ["return=representation"]);
    assert_eq!(s.header("content-type"), ["application/json"]);
    let auth = s.header("authorization");
    assert_eq!(auth.len(), 1);
    assert!(auth[0].starts_with("Bearer ey") && !auth[0].contains(keys::FULL));
    h.stop().await;
}

#[tokio::test]
async fn a_duplicated_json_key_is_refused_and_intents_carry_the_body_hash() {
    let (h, raw) = with_raw_payment(json_answer(201, CREATED), Options::default()).await;
    let evil = r#"{"gross_amount":1.00,"partner_operation_id":"op","gross_amount":400.00}"#;
    for (body, ct) in [
        (evil, "application/json"),
        (
            r#"{"items":[{"name":"a","name":"b"}],"gross_amount":1}"#,
            "application/json",
        ),
        ("[1]", "application/json"),
        ("", "application/json"),
        (r#"{"gross_amount":1} trailing"#, "application/json"),
    ] {
        let resp = h
            .req(Method::POST, &cancel_path(TX), keys::FULL)
            .header("content-type", ct)
            .header("idempotency-key", "k-dup")
            .body(body)
            .send()
            .await
            .unwrap();
        let p = problem(resp, 400).await;
        assert_eq!(
            p["type"], "https://ratepay-gateway.dev/problems/invalid-json",
            "{body}: {p}"
        );
    }
    assert!(raw.seen().is_empty(), "nothing reached Ratepay");
    assert!(
        h.audit_records().is_empty(),
        "nothing audited: nothing was sent"
    );
    // A valid body: the intent binds the exact bytes forwarded.
    let good = r#"{"gross_amount": 12.50, "partner_operation_id": "op-7"}"#;
    let resp = h
        .req(Method::POST, &cancel_path(TX), keys::FULL)
        .header("content-type", "application/json")
        .body(good)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let seen = raw.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, good.as_bytes());
    let records = h.audit_records();
    let intent = records.iter().find(|r| r["kind"] == "intent").unwrap();
    assert_eq!(intent["body_sha256"], sha(good));
    assert_eq!(intent["gross_amount"], "12.50");
    h.stop().await;
}

#[tokio::test]
async fn an_empty_x_partner_is_no_partner_for_every_policy() {
    let h = Harness::start().await;
    let get = |key: &'static str| {
        h.req(Method::GET, &format!("{TX_PATH}/{TX}"), key)
            .header("x-partner", "")
    };
    // Fixed partner: the configured one is sent (the sandbox's 404 means it was forwarded).
    let resp = get(keys::FULL).send().await.unwrap();
    assert_eq!(resp.status(), 404, "forwarded, not refused");
    // No partner policy: nothing sent, nothing refused.
    let resp = get(keys::NOPARTNER).send().await.unwrap();
    assert_eq!(resp.status(), 404, "forwarded, not refused");
    // A list: as absent, the caller must choose.
    let p = problem(get(keys::CHOOSER).send().await.unwrap(), 400).await;
    assert_eq!(
        p["type"],
        "https://ratepay-gateway.dev/problems/partner-required"
    );
    assert_eq!(h.op_count("payment.transactions.get").await, 2);
    // Two X-Partner headers are refused rather than guessed at.
    let resp = h
        .req(Method::GET, &format!("{TX_PATH}/{TX}"), keys::CHOOSER)
        .header("x-partner", "p-a")
        .header("x-partner", "p-b")
        .send()
        .await
        .unwrap();
    problem(resp, 400).await;
    h.stop().await;
}

#[tokio::test]
async fn otp_calls_are_never_keyed_nor_retried() {
    let (h, raw) = with_raw_payment(json_answer(500, r#"{"error":"x"}"#), Options::default()).await;
    let resp = h
        .req(
            Method::POST,
            &format!("/transaction/management/2fa/v1/verify/{TX}"),
            keys::FULL,
        )
        .header("idempotency-key", "probe-otp-1")
        .json(&json!({"otp": "123456"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500, "Ratepay's answer passes through");
    assert!(resp.headers().get("idempotency-key").is_none());
    let seen = raw.seen();
    assert_eq!(seen.len(), 1, "attempted once: OTP calls are never retried");
    assert!(
        seen[0].header("idempotency-key").is_empty(),
        "no key leaves for OTP"
    );
    h.stop().await;
}

#[tokio::test]
async fn every_answer_to_a_keyed_call_names_its_key() {
    let (h, raw) = with_raw_payment(Answer::Close, Options::default()).await;
    // The upstream connection closes mid-call on every attempt: 502, with the caller's key.
    let resp = h
        .req(Method::POST, &cancel_path(TX), keys::FULL)
        .header("idempotency-key", "k-lost-1")
        .json(&json!({"gross_amount": 1.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["idempotency-key"], "k-lost-1");
    problem(resp, 502).await;
    assert_eq!(raw.seen().len(), 3, "retried with its key");
    // Without a key of its own the caller learns the generated one (a UUID v4).
    let resp = h
        .req(Method::POST, &cancel_path(TX), keys::FULL)
        .json(&json!({"gross_amount": 1.0}))
        .send()
        .await
        .unwrap();
    let key = resp.headers()["idempotency-key"]
        .to_str()
        .unwrap()
        .to_owned();
    problem(resp, 502).await;
    let uuid = uuid::Uuid::parse_str(&key).expect("a UUID");
    assert_eq!(uuid.get_version_num(), 4);
    let sent: Vec<String> = raw.seen()[3..]
        .iter()
        .map(|s| s.header("idempotency-key")[0].to_owned())
        .collect();
    assert_eq!(sent, vec![scoped("full", &key); 3], "the key Ratepay saw");
    // A 409 and Ratepay's own 429 name it too.
    raw.answer(json_answer(201, CREATED));
    let first = h
        .req(
            Method::POST,
            &cancel_path("another-transaction-id-1"),
            keys::FULL,
        )
        .header("idempotency-key", "k-409")
        .json(&json!({"gross_amount": 1.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 201);
    let resp = h
        .req(
            Method::POST,
            &cancel_path("another-transaction-id-1"),
            keys::FULL,
        )
        .header("idempotency-key", "k-409")
        .json(&json!({"gross_amount": 2.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["idempotency-key"], "k-409");
    problem(resp, 409).await;
    raw.answer(json_answer(429, r#"{"error":"slow down"}"#));
    let resp = h
        .req(Method::POST, &cancel_path(TX), keys::FULL)
        .header("idempotency-key", "k-429")
        .json(&json!({"gross_amount": 1.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["idempotency-key"], "k-429");
    h.stop().await;
}

/// 95 bytes of chunked body behind a Content-Length of 5, forging a second response inside.
fn conflicting_framing() -> Answer {
    let forged = "HTTP/1.1 299 Forged\r\ncontent-length: 2\r\n\r\nhi";
    let body = format!("{{\"a\":1}}{forged}");
    Answer::Raw(
        format!(
            "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 5\r\n\
             transfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        )
        .into_bytes(),
    )
}

#[tokio::test]
async fn conflicting_upstream_framing_is_refused_never_forwarded_or_stored() {
    let (h, raw) = with_raw_payment(conflicting_framing(), Options::default()).await;
    // One client connection for every request, so a mis-framed answer would desynchronise it.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .http1_only()
        .build()
        .unwrap();
    let mut statuses = Vec::new();
    for (method, path) in [
        (Method::GET, format!("{TX_PATH}/{TX}")),
        (Method::POST, cancel_path(TX)),
        (Method::POST, cancel_path(TX)),
        (Method::GET, format!("{TX_PATH}/{TX}")),
    ] {
        let mut rb = http
            .request(method.clone(), h.url(&path))
            .bearer_auth(keys::FULL);
        if method == Method::POST {
            rb = rb
                .header("idempotency-key", "k-frame")
                .json(&json!({"gross_amount": 1.0}));
        }
        let resp = rb.send().await.unwrap();
        statuses.push(resp.status().as_u16());
        let p: Value = resp.json().await.unwrap();
        assert!(p["detail"].as_str().unwrap().contains("framing"), "{p}");
    }
    assert_eq!(statuses, [502, 502, 502, 502]);
    // GET retried 3 times each, the keyed POST 3 times each: the 502 was never stored.
    assert_eq!(raw.seen().len(), 12);
    h.stop().await;
}
