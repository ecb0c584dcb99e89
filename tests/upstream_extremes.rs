//! End to end over loopback: extreme numbers from Ratepay (a `Retry-After`, a token's
//! `expires_in`, an `Age` of `u64::MAX`) are capped, and the caller gets an answer.
//!
//! Each value is injected with a sandbox fault; before the caps these calls panicked inside
//! the gateway and the caller's connection closed without an answer.

mod common;

use common::{keys, problem, Harness, Options, TX_PATH};
use ratepay_gateway::routes::Api;
use reqwest::{Method, Response};
use serde_json::json;

const RECORD: &str = "/pps/api/v1/session-record";

fn header(r: &Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().expect("ascii header").to_owned())
        .unwrap_or_default()
}

// The sandbox answers after a second: `elapsed + Retry-After` overflowed only once the first
// attempt had taken a whole second (a `Duration` holds u64::MAX seconds and a fraction).

#[tokio::test]
async fn a_5xx_with_a_huge_retry_after_is_answered_and_not_retried() {
    let h = Harness::start().await;
    let tx = h.authorize(keys::FULL, None, 100.0).await;
    h.fault(
        json!({"operation": "payment.transactions.get", "status": 503,
                   "retry_after": u64::MAX, "latency_ms": 1000, "count": 1}),
    )
    .await;
    let r = h
        .req(Method::GET, &format!("{TX_PATH}/{tx}"), keys::FULL)
        .send()
        .await
        .expect("an answer, not a dropped connection");
    // Capped at a day, the wait is still beyond the retry deadline: the 503 is final.
    assert_eq!(r.status(), 503);
    assert_eq!(h.op_count("payment.transactions.get").await, 1);
}

#[tokio::test]
async fn a_429_with_a_huge_retry_after_pauses_the_api_for_at_most_the_configured_cap() {
    let h = Harness::with(Options {
        extra_toml: "[rate_limits]\nupstream_pause_max_secs = 120\n".into(),
        ..Options::default()
    })
    .await;
    let tx = h.authorize(keys::FULL, None, 100.0).await;
    h.fault(
        json!({"operation": "payment.transactions.get", "status": 429,
                   "retry_after": u64::MAX, "latency_ms": 1000, "count": 1}),
    )
    .await;
    let path = format!("{TX_PATH}/{tx}");
    let r = h
        .req(Method::GET, &path, keys::FULL)
        .send()
        .await
        .expect("an answer, not a dropped connection");
    assert_eq!(r.status(), 429);
    // The pause is in force, capped at upstream_pause_max_secs.
    let r = h.req(Method::GET, &path, keys::FULL).send().await.unwrap();
    let after: u64 = header(&r, "retry-after").parse().expect("Retry-After");
    assert!((119..=120).contains(&after), "Retry-After {after}");
    problem(r, 429).await;
    assert_eq!(h.op_count("payment.transactions.get").await, 1);
}

#[tokio::test]
async fn a_token_with_a_huge_expires_in_is_used_and_kept_for_at_most_a_day() {
    let (h, gw) = Harness::with_gateway(Options::default()).await;
    h.fault(json!({"operation": "oauth.token", "expires_in": u64::MAX, "count": 1}))
        .await;
    let tx = h.authorize(keys::FULL, None, 100.0).await;
    let r = h
        .req(Method::GET, &format!("{TX_PATH}/{tx}"), keys::FULL)
        .send()
        .await
        .expect("an answer, not a dropped connection");
    assert_eq!(r.status(), 200);
    let stats = h.stats().await;
    assert_eq!(stats["tokens_issued"], 1, "{stats}");
    let left = gw.token_sources()[&Api::Payment]
        .expires_in()
        .expect("a valid payment token");
    assert!(
        left <= std::time::Duration::from_secs(86_400) && left.as_secs() > 86_000,
        "lifetime capped at 24 h: {left:?}"
    );
}

#[tokio::test]
async fn a_huge_upstream_age_is_capped_on_miss_and_hit() {
    let h = Harness::with(Options {
        extra_toml: "[cache]\n".into(),
        ..Options::default()
    })
    .await;
    let sid = h.session(keys::FULL, None).await;
    h.fault(json!({"operation": "hpp.session_records.get", "age": u64::MAX, "count": 1}))
        .await;
    let path = format!("{RECORD}/{sid}");
    for expected in ["MISS", "HIT"] {
        let r = h
            .req(Method::GET, &path, keys::FULL)
            .send()
            .await
            .expect("an answer, not a dropped connection");
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-cache"), expected);
        // RFC 9111 section 1.2.2: a delta-seconds above 2^31 is sent as 2^31.
        assert_eq!(header(&r, "age"), "2147483648", "{expected}");
    }
    assert_eq!(h.op_count("hpp.session_records.get").await, 1);
}
