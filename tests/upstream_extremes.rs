//! End to end over loopback: extreme numbers from Ratepay (a `Retry-After`, a token's
//! `expires_in`, an `Age` of `u64::MAX`) are capped, and the caller gets an answer.
//!
//! Each value is injected with a sandbox fault; before the caps these calls panicked inside
//! the gateway and the caller's connection closed without an answer.

mod common;

use common::{
    keys, problem,
    upstream::{Answer, RawUpstream},
    Harness, Options, TX_PATH,
};
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

/// A gateway (with `extra_toml`) whose `api` is an upstream that answers every request with
/// `status`, a 2 KB `content-length`, and then its body a byte every 100 ms (far inside the
/// body's idle timeout), for as long as the connection lasts; its requests have a 1.5 s
/// deadline.
async fn behind_trickling_upstream(
    api: &str,
    status: &str,
    extra_toml: &str,
) -> (Harness, RawUpstream) {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: 2000\r\n\r\n{{"
    );
    let byte = (std::time::Duration::from_millis(100), b" ".to_vec());
    let mut parts = vec![(std::time::Duration::ZERO, head.into_bytes())];
    parts.extend(std::iter::repeat_n(byte, 1999));
    let upstream = RawUpstream::start(Answer::Paced(parts)).await;
    let opts = Options {
        extra_toml: extra_toml.into(),
        ..Options::default()
    };
    let h = Harness::edited(
        common::sandbox_config(opts.token_lifetime),
        &opts,
        |text, sandbox, _| {
            common::custom::replace_once(
                &common::custom::replace_once(
                    &text,
                    "request_timeout_ms = 20000",
                    "request_timeout_ms = 1500",
                ),
                &common::custom::upstream_url_line(api, sandbox),
                &common::custom::upstream_url_line(api, &upstream.url),
            )
        },
    )
    .await;
    (h, upstream)
}

/// Sends with `send` until `upstream` has seen a second request: the first call's task let go
/// of what it held.
async fn until_it_reaches_the_upstream_again<F, Fut>(what: &str, upstream: &RawUpstream, send: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    common::custom::eventually(what, || async {
        send().await;
        upstream.seen().len() >= 2
    })
    .await;
}

// A keyed cancellation's answer is read whole on the call's own task (audit, then the
// idempotency store), where the edge's deadline does not reach. Its body was bounded per gap
// only: an upstream trickling it held the task, and the key's slot, for good, so a retry with
// the key never reached Ratepay again. Now the read ends at the request's deadline.
#[tokio::test]
async fn a_trickled_answer_frees_its_idempotency_key_at_the_request_deadline() {
    let (h, upstream) = behind_trickling_upstream("payment", "201 Created", "").await;
    let body = json!({"gross_amount": 4});
    let first = h
        .cancel(keys::FULL, "trickletx01", &body, Some("k-trickle"), None)
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    problem(first, 504).await;
    assert_eq!(upstream.seen().len(), 1);
    // The same key again, until it reaches Ratepay (with the same upstream key, which Ratepay
    // deduplicates): the first call's task let go of it.
    until_it_reaches_the_upstream_again("the key is free again", &upstream, || async {
        let _ = h
            .cancel(keys::FULL, "trickletx01", &body, Some("k-trickle"), None)
            .timeout(std::time::Duration::from_secs(5))
            .send()
            .await;
    })
    .await;
    h.stop().await;
}

// The same for a session record: the cache fetches it on a task of its own that later callers
// of the record join; a trickled body held that fetch, and so the record, for good.
#[tokio::test]
async fn a_trickled_session_record_frees_its_shared_fetch_at_the_request_deadline() {
    let (h, upstream) = behind_trickling_upstream("hpp", "200 OK", "[cache]\n").await;
    let path = format!("{RECORD}/tricklesession01");
    let first = h
        .req(Method::GET, &path, keys::FULL)
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 504);
    assert_eq!(upstream.seen().len(), 1);
    until_it_reaches_the_upstream_again("the record is fetched again", &upstream, || async {
        let _ = h
            .req(Method::GET, &path, keys::FULL)
            .timeout(std::time::Duration::from_secs(5))
            .send()
            .await;
    })
    .await;
    h.stop().await;
}
