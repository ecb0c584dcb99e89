//! End to end over loopback: rate limits (per caller, per upstream, queue mode, Ratepay's 429
//! pause) and the session-record cache (coalescing, lifetimes by status, partner isolation,
//! no-cache, stale-if-error, byte capacity, invalidation on cancellation).
//!
//! Timing: nothing waits for a fixed time to let something happen. Exact lifetimes and
//! Retry-After arithmetic are unit-tested on a fake clock (`middleware::{cache, rate_limit}`);
//! here, expiry is observed by polling with a deadline against short configured lifetimes, and
//! limits use slow rates (one request per 10 s) so that no refill can happen during a test.
//! A wait in whole seconds counts down with the wall clock, so it is checked against the time
//! the test measured (`assert_secs_left`): exact whenever the requests took under a second, and
//! never a value the elapsed time rules out. Queue waits are seconds long, so that concurrent
//! requests arriving a little apart still all queue.

mod common;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use common::{keys, problem, Harness, Options, TX_PATH};
use ratepay_gateway::config::Config;
use reqwest::{Method, Response};
use serde_json::{json, Value};

const RECORD: &str = "/pps/api/v1/session-record";

fn opts(extra: &str) -> Options {
    Options {
        extra_toml: extra.to_owned(),
        ..Options::default()
    }
}

fn header(r: &Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().expect("ascii header").to_owned())
        .unwrap_or_default()
}

/// Sets a session's status in the sandbox (sticks).
async fn set_status(h: &Harness, sid: &str, status: &str) {
    let r = h
        .http
        .post(format!("{}/_sandbox/sessions/{sid}", h.sandbox.url()))
        .json(&json!({ "session_status": status }))
        .send()
        .await
        .expect("set status");
    assert_eq!(r.status(), 200);
}

async fn clear_faults(h: &Harness) {
    h.http
        .delete(format!("{}/_sandbox/faults", h.sandbox.url()))
        .send()
        .await
        .expect("clear");
}

/// GET of one record: (status, X-Cache, Age, body).
async fn read(
    h: &Harness,
    sid: &str,
    key: &str,
    extra: &[(&str, &str)],
) -> (u16, String, String, Value) {
    let mut rb = h.req(Method::GET, &format!("{RECORD}/{sid}"), key);
    for (k, v) in extra {
        rb = rb.header(*k, *v);
    }
    let r = rb.send().await.expect("read");
    let out = (
        r.status().as_u16(),
        header(&r, "x-cache"),
        header(&r, "age"),
    );
    let body = r.json::<Value>().await.unwrap_or(Value::Null);
    (out.0, out.1, out.2, body)
}

/// Polls `f` until it returns `Some`, failing after `limit`.
async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let give_up = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < give_up, "timed out waiting for {what}");
        // Pacing of the poll only; correctness never depends on this delay.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts a whole-seconds wait (`Retry-After`, `t=`) of `got` for a limit that frees up
/// `secs` after the first admitted request, when at most `spent` has gone by since just
/// before it. The gateway rounds up, so while `spent` is under a second (the usual case) the
/// only right answer is `secs`; on a slower run, exactly the values the elapsed time allows.
fn assert_secs_left(got: &str, secs: u64, spent: Duration) {
    let got: u64 = got
        .parse()
        .unwrap_or_else(|_| panic!("whole seconds: {got:?}"));
    let lowest = ((secs as f64 - spent.as_secs_f64()).ceil() as u64).max(1);
    assert!(
        (lowest..=secs).contains(&got),
        "{got} s left; expected {secs} s less what {spent:?} allows ({lowest}..={secs})"
    );
}

// ---------------------------------------------------------------- rate limits

#[tokio::test]
async fn per_caller_limit_refuses_the_request_after_the_burst_with_exact_retry_after() {
    let h = Harness::with(opts(
        "[rate_limits.per_caller]\nrate_per_sec = 0.1\nburst = 3\n\
         [rate_limits.callers.reader]\nrate_per_sec = 0.1\nburst = 1\n",
    ))
    .await;
    let path = format!("{RECORD}/AAAAAAAAAAAAAAAAAAAA");
    let first = Instant::now();
    for i in 0..3 {
        let r = h.req(Method::GET, &path, keys::FULL).send().await.unwrap();
        assert_eq!(r.status(), 404, "request {i} reaches the sandbox");
        assert_eq!(header(&r, "ratelimit-policy"), "\"caller\";q=3;w=30");
        // Counted from what is left of the burst, not from the clock: exact whatever the pace
        // (no refill within the 10 s a cell takes).
        assert_eq!(
            header(&r, "ratelimit"),
            format!("\"caller\";r={};t={}", 2 - i, (i + 1) * 10)
        );
    }
    let r = h.req(Method::GET, &path, keys::FULL).send().await.unwrap();
    // One request per 10 s: the 4th waits until 10 s after the 1st, rounded up.
    let retry_after = header(&r, "retry-after");
    assert_secs_left(&retry_after, 10, first.elapsed());
    assert_eq!(header(&r, "ratelimit-policy"), "\"caller\";q=3;w=30");
    assert_eq!(
        header(&r, "ratelimit"),
        format!("\"caller\";r=0;t={retry_after}")
    );
    let body = problem(r, 429).await;
    assert_eq!(
        body["type"],
        "https://ratepay-gateway.dev/problems/rate-limited"
    );
    assert!(
        body["detail"].as_str().unwrap().contains("caller 'full'"),
        "{body}"
    );

    // Other callers have their own budgets; the override gives reader only one request.
    let r = h
        .req(Method::GET, &path, keys::NOPARTNER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let first = Instant::now();
    assert_eq!(
        h.req(Method::GET, &path, keys::READER)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let r = h
        .req(Method::GET, &path, keys::READER)
        .send()
        .await
        .unwrap();
    assert_secs_left(&header(&r, "retry-after"), 10, first.elapsed());
    problem(r, 429).await;
    assert_eq!(
        h.op_count("hpp.session_records.get").await,
        5,
        "refused requests never reach Ratepay"
    );
}

#[tokio::test]
async fn per_upstream_budget_is_shared_by_all_callers_and_only_that_api() {
    let h = Harness::with(opts(
        "[rate_limits.upstreams.status]\nrate_per_sec = 0.1\nburst = 2\n",
    ))
    .await;
    let path = "/transaction/status/v2/transactions/AAAAAAAAAAAAAAAAAAAA";
    let first = Instant::now();
    assert_eq!(
        h.req(Method::GET, path, keys::FULL)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        h.req(Method::GET, path, keys::NOPARTNER)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let r = h
        .req(Method::GET, path, keys::CHOOSER)
        .header("x-partner", "p-a")
        .send()
        .await
        .unwrap();
    assert_secs_left(&header(&r, "retry-after"), 10, first.elapsed());
    assert_eq!(header(&r, "ratelimit-policy"), "\"upstream\";q=2;w=20");
    let body = problem(r, 429).await;
    assert!(
        body["detail"].as_str().unwrap().contains("status API"),
        "{body}"
    );
    // The payment API has no budget configured and is not affected.
    let r = h
        .req(
            Method::GET,
            &format!("{TX_PATH}/AAAAAAAAAAAAAAAAAAAA"),
            keys::FULL,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(h.op_count("status.transactions.get").await, 2);
}

#[tokio::test]
async fn operation_budget_applies_to_that_operation_only() {
    let h = Harness::with(opts(
        "[rate_limits.operations.\"payment.transactions.get\"]\nrate_per_sec = 0.1\nburst = 1\n",
    ))
    .await;
    let get = format!("{TX_PATH}/AAAAAAAAAAAAAAAAAAAA");
    assert_eq!(
        h.req(Method::GET, &get, keys::FULL)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let r = h.req(Method::GET, &get, keys::FULL).send().await.unwrap();
    assert_eq!(header(&r, "ratelimit-policy"), "\"operation\";q=1;w=10");
    problem(r, 429).await;
    let list = format!("{TX_PATH}/AAAAAAAAAAAAAAAAAAAA/captures");
    assert_eq!(
        h.req(Method::GET, &list, keys::FULL)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test]
async fn queue_mode_waits_for_a_turn_then_serves_and_refuses_what_cannot_fit() {
    // One request per 2 s, burst 1: of three concurrent requests the 2nd and 3rd wait their
    // turns, 2 and 4 s after the 1st. Both wait as long as they arrive within 2 s of the 1st.
    let h = Harness::with(opts(
        "[rate_limits]\nmode = \"queue\"\nmax_wait_ms = 6000\n\
         [rate_limits.per_caller]\nrate_per_sec = 0.5\nburst = 1\n\
         [rate_limits.callers.reader]\nrate_per_sec = 0.1\nburst = 1\n",
    ))
    .await;
    let path = format!("{RECORD}/AAAAAAAAAAAAAAAAAAAA");
    let started = Instant::now();
    let sends: Vec<_> = (0..3)
        .map(|_| h.req(Method::GET, &path, keys::FULL).send())
        .collect();
    for r in futures_util::future::join_all(sends).await {
        assert_eq!(
            r.unwrap().status(),
            404,
            "served by the sandbox after waiting"
        );
    }
    // The 3rd turn comes 4 s after the 1st admission, itself after `started` (less 50 ms for
    // the rate limiter's clock, which is not the one `Instant` reads).
    assert!(
        started.elapsed() >= Duration::from_millis(3950),
        "waited: {:?}",
        started.elapsed()
    );
    assert_eq!(h.op_count("hpp.session_records.get").await, 3);
    // Two of the three waited; the wait shows in the metrics.
    let metrics = h.scrape_metrics().await;
    assert!(
        metrics.contains("ratepay_gateway_rate_limit_queue_wait_seconds_count 2"),
        "{metrics}"
    );

    // reader's next turn is 10 s away, beyond max_wait: refused at once, not after waiting.
    let first = Instant::now();
    assert_eq!(
        h.req(Method::GET, &path, keys::READER)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let refused = Instant::now();
    let r = h
        .req(Method::GET, &path, keys::READER)
        .send()
        .await
        .unwrap();
    assert!(
        refused.elapsed() < Duration::from_millis(6000),
        "answered before max_wait_ms: {:?}",
        refused.elapsed()
    );
    assert_secs_left(&header(&r, "retry-after"), 10, first.elapsed());
    problem(r, 429).await;
}

#[tokio::test]
async fn ratepay_429_pauses_the_upstream_without_further_calls() {
    let h = Harness::start().await;
    let tx = h.authorize(keys::FULL, None, 100.0).await;
    h.fault(json!({"operation": "payment.transactions.get", "status": 429, "retry_after": 30, "count": 1}))
        .await;
    // The pause starts when the gateway reads Ratepay's 429, after this instant.
    let paused = Instant::now();
    let r = h
        .req(Method::GET, &format!("{TX_PATH}/{tx}"), keys::FULL)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429, "Ratepay's own 429 is passed on");
    assert_eq!(header(&r, "retry-after"), "30");
    let before = h.upstream_total().await;

    for path in [
        format!("{TX_PATH}/{tx}"),
        format!("{TX_PATH}/{tx}/captures"),
    ] {
        let r = h
            .req(Method::GET, &path, keys::NOPARTNER)
            .send()
            .await
            .unwrap();
        assert_secs_left(&header(&r, "retry-after"), 30, paused.elapsed());
        let body = problem(r, 429).await;
        assert_eq!(
            body["type"],
            "https://ratepay-gateway.dev/problems/upstream-paused"
        );
    }
    assert_eq!(
        h.upstream_total().await,
        before,
        "no call reached Ratepay during the pause"
    );
    // Other Ratepay APIs are not paused.
    let r = h
        .req(
            Method::GET,
            &format!("/transaction/status/v2/transactions/{tx}"),
            keys::FULL,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn cache_hits_spend_no_upstream_budget_and_are_served_during_a_pause() {
    let h = Harness::with(opts(
        "[cache]\n[rate_limits.upstreams.hpp]\nrate_per_sec = 0.1\nburst = 3\n",
    ))
    .await;
    let sid = h.session(keys::FULL, None).await; // spends one
    set_status(&h, &sid, "COMPLETED").await;
    assert_eq!(read(&h, &sid, keys::FULL, &[]).await.1, "MISS"); // spends one
    for _ in 0..5 {
        assert_eq!(read(&h, &sid, keys::FULL, &[]).await.1, "HIT");
    }
    assert_eq!(
        read(&h, "BBBBBBBBBBBBBBBBBBBB", keys::FULL, &[]).await.0,
        404
    ); // the last one
    let r = h
        .req(
            Method::GET,
            &format!("{RECORD}/CCCCCCCCCCCCCCCCCCCC"),
            keys::FULL,
        )
        .send()
        .await
        .unwrap();
    problem(r, 429).await;
    assert_eq!(read(&h, &sid, keys::FULL, &[]).await.1, "HIT");
}

// ---------------------------------------------------------------- cache

#[tokio::test]
async fn five_hundred_concurrent_misses_cause_one_upstream_call() {
    let h = Harness::with(opts("[cache]\n")).await;
    let sid = h.session(keys::FULL, None).await;
    set_status(&h, &sid, "COMPLETED").await;
    let path = format!("{RECORD}/{sid}");
    let sends: Vec<_> = (0..500)
        .map(|_| h.req(Method::GET, &path, keys::FULL).send())
        .collect();
    // Which of them came late enough to be a HIT depends on timing; what each answer says it
    // was, the metrics must count exactly.
    let (mut hits, mut misses) = (0, 0);
    for r in futures_util::future::join_all(sends).await {
        let r = r.unwrap();
        assert_eq!(r.status(), 200);
        match header(&r, "x-cache").as_str() {
            "HIT" => hits += 1,
            "MISS" => misses += 1,
            other => panic!("X-Cache {other:?}"),
        }
        assert_eq!(
            r.json::<Value>().await.unwrap()["session_status"],
            "COMPLETED"
        );
    }
    assert_eq!(h.op_count("hpp.session_records.get").await, 1);
    assert!(misses >= 1, "the first request missed");
    let metrics = h.scrape_metrics().await;
    let lookups = |result: &str| {
        common::metric(
            &metrics,
            &format!("ratepay_gateway_cache_lookups_total{{result=\"{result}\"}}"),
        )
    };
    assert_eq!(
        (lookups("hit"), lookups("miss")),
        (Some(f64::from(hits)), Some(f64::from(misses))),
        "{metrics}"
    );
}

#[tokio::test]
async fn changing_records_expire_quickly_and_terminal_ones_stay() {
    let h = Harness::with(opts(
        "[cache]\nchanging_ttl_secs = 1\nterminal_ttl_secs = 600\n",
    ))
    .await;
    let sid = h.session(keys::FULL, None).await;
    let (status, x_cache, age, body) = read(&h, &sid, keys::FULL, &[]).await;
    assert_eq!((status, x_cache.as_str(), age.as_str()), (200, "MISS", "0"));
    assert_eq!(body["session_status"], "CREATED");

    // The record completes at Ratepay; the CREATED entry must run out and be refetched.
    set_status(&h, &sid, "COMPLETED").await;
    let x_cache = eventually(
        Duration::from_secs(10),
        "the CREATED entry to expire",
        || async {
            let (_, x_cache, _, body) = read(&h, &sid, keys::FULL, &[]).await;
            (body["session_status"] == "COMPLETED").then_some(x_cache)
        },
    )
    .await;
    assert_eq!(x_cache, "MISS");
    let fetched = h.op_count("hpp.session_records.get").await;

    // COMPLETED is terminal: even when the sandbox shows something else, the entry stays.
    set_status(&h, &sid, "EXPIRED").await;
    for _ in 0..5 {
        let (_, x_cache, _, body) = read(&h, &sid, keys::FULL, &[]).await;
        assert_eq!(
            (x_cache.as_str(), body["session_status"].as_str()),
            ("HIT", Some("COMPLETED"))
        );
    }
    assert_eq!(h.op_count("hpp.session_records.get").await, fetched);
}

#[tokio::test]
async fn partner_b_never_receives_partner_a_cached_record() {
    let h = Harness::with(opts("[cache]\n")).await;
    let sid = h.session(keys::CHOOSER, Some("p-a")).await;
    set_status(&h, &sid, "COMPLETED").await;
    let as_a = [("x-partner", "p-a")];
    assert_eq!(read(&h, &sid, keys::CHOOSER, &as_a).await.1, "MISS");
    let (status, x_cache, _, body) = read(&h, &sid, keys::CHOOSER, &as_a).await;
    assert_eq!((status, x_cache.as_str()), (200, "HIT"));
    assert_eq!(body["session_id"], sid);

    // Same caller, partner B; and another caller with a fixed partner: both ask Ratepay.
    for (key, partner) in [
        (keys::CHOOSER, Some("p-b")),
        (keys::FULL, None),
        (keys::NOPARTNER, None),
    ] {
        let extra: Vec<(&str, &str)> = partner.map(|p| ("x-partner", p)).into_iter().collect();
        let (status, x_cache, _, body) = read(&h, &sid, key, &extra).await;
        assert_eq!((status, x_cache.as_str()), (404, "MISS"), "{key}");
        assert_ne!(body["session_id"], sid);
    }
    assert_eq!(h.op_count("hpp.session_records.get").await, 4);
}

#[tokio::test]
async fn callers_get_cached_answers_only_for_operations_their_policy_allows() {
    let h = Harness::with(opts("[cache]\n[callers.payments_only]\napi_key_sha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\noperations = [\"payment.*\"]\npartner = \"p-fixed\"\n")).await;
    let sid = h.session(keys::FULL, None).await;
    set_status(&h, &sid, "COMPLETED").await;
    assert_eq!(read(&h, &sid, keys::FULL, &[]).await.1, "MISS");
    // "test" hashes to the key above; same partner as `full`, but no HPP operations.
    let r = h
        .req(Method::GET, &format!("{RECORD}/{sid}"), "test")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("x-cache").is_none());
    problem(r, 403).await;
}

#[tokio::test]
async fn no_cache_fetches_fresh_and_refreshes_the_entry() {
    let h = Harness::with(opts("[cache]\n")).await;
    let sid = h.session(keys::FULL, None).await;
    set_status(&h, &sid, "COMPLETED").await;
    assert_eq!(read(&h, &sid, keys::FULL, &[]).await.1, "MISS");
    set_status(&h, &sid, "ERROR").await;
    let (_, x_cache, _, body) = read(&h, &sid, keys::FULL, &[]).await;
    assert_eq!(
        (x_cache.as_str(), body["session_status"].as_str()),
        ("HIT", Some("COMPLETED"))
    );
    let (_, x_cache, _, body) = read(&h, &sid, keys::FULL, &[("cache-control", "no-cache")]).await;
    assert_eq!(
        (x_cache.as_str(), body["session_status"].as_str()),
        ("BYPASS", Some("ERROR"))
    );
    let (_, x_cache, _, body) = read(&h, &sid, keys::FULL, &[]).await;
    assert_eq!(
        (x_cache.as_str(), body["session_status"].as_str()),
        ("HIT", Some("ERROR"))
    );
    assert_eq!(h.op_count("hpp.session_records.get").await, 2);
}

#[tokio::test]
async fn stale_record_is_served_while_ratepay_fails() {
    let h = Harness::with(opts(
        "[cache]\nchanging_ttl_secs = 1\nstale_if_error_secs = 300\n",
    ))
    .await;
    let sid = h.session(keys::FULL, None).await;
    assert_eq!(read(&h, &sid, keys::FULL, &[]).await.1, "MISS");
    h.fault(json!({"operation": "hpp.session_records.get", "status": 503}))
        .await;
    let (status, age, body) = eventually(Duration::from_secs(10), "a STALE answer", || async {
        let (status, x_cache, age, body) = read(&h, &sid, keys::FULL, &[]).await;
        (x_cache == "STALE").then_some((status, age, body))
    })
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["session_id"], sid);
    assert!(age.parse::<u64>().unwrap() >= 1, "age {age}");
    assert!(
        h.op_count("hpp.session_records.get").await >= 2,
        "Ratepay was asked first"
    );

    // Nothing cached for another record: Ratepay's 503 comes through.
    let (status, x_cache, _, _) = read(&h, "DDDDDDDDDDDDDDDDDDDD", keys::FULL, &[]).await;
    assert_eq!((status, x_cache.as_str()), (503, "MISS"));
    // A dropped connection (transport error) is also covered.
    clear_faults(&h).await;
    h.fault(json!({"operation": "hpp.session_records.get", "close_connection": true}))
        .await;
    let (status, x_cache, _, _) = read(&h, &sid, keys::FULL, &[]).await;
    assert_eq!((status, x_cache.as_str()), (200, "STALE"));
}

#[tokio::test]
async fn byte_capacity_is_respected() {
    let (h, gw) = Harness::with_gateway(opts("[cache]\nmax_bytes = 4096\n")).await;
    let mut sids = Vec::new();
    for _ in 0..20 {
        let sid = h.session(keys::FULL, None).await;
        set_status(&h, &sid, "COMPLETED").await;
        assert_eq!(read(&h, &sid, keys::FULL, &[]).await.0, 200);
        sids.push(sid);
    }
    let cache = gw.session_record_cache().expect("cache enabled");
    cache.run_pending_tasks().await;
    assert!(
        cache.weighted_size() <= 4096,
        "{} bytes held",
        cache.weighted_size()
    );
    let held = cache.entry_count();
    assert!((1..20).contains(&held), "{held} entries held");
    let mut hits = 0;
    for sid in &sids {
        hits += u64::from(read(&h, sid, keys::FULL, &[]).await.1 == "HIT");
    }
    assert!(hits <= held, "{hits} hits with {held} entries");
}

#[tokio::test]
async fn a_cancellation_invalidates_the_transactions_cached_records() {
    let h = Harness::with(opts("[cache]\nlist_today_ttl_secs = 600\n")).await;
    let sid = h.session(keys::FULL, None).await;
    set_status(&h, &sid, "COMPLETED").await;
    let (_, x_cache, _, body) = read(&h, &sid, keys::FULL, &[]).await;
    assert_eq!(x_cache, "MISS");
    let tx = body["transaction_id"]
        .as_str()
        .expect("a completed record names its transaction")
        .to_owned();
    let list = format!(
        "{RECORD}?createdDate={}",
        &body["created_date"].as_str().unwrap()[..10]
    );
    let r = h.req(Method::GET, &list, keys::FULL).send().await.unwrap();
    assert_eq!(header(&r, "x-cache"), "MISS");

    // A refused cancellation (the sandbox does not know the HPP transaction) changes nothing.
    let cancel = format!("{TX_PATH}/{tx}/cancellations");
    let r = h
        .req(Method::POST, &cancel, keys::FULL)
        .json(&json!({"gross_amount": 10.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(read(&h, &sid, keys::FULL, &[]).await.1, "HIT");
    let r = h.req(Method::GET, &list, keys::FULL).send().await.unwrap();
    assert_eq!(header(&r, "x-cache"), "HIT");

    // A successful one drops both the record and the list holding it.
    h.fault(json!({"operation": "payment.cancellations.create", "status": 201, "count": 1}))
        .await;
    let r = h
        .req(Method::POST, &cancel, keys::FULL)
        .json(&json!({"gross_amount": 10.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(read(&h, &sid, keys::FULL, &[]).await.1, "MISS");
    let r = h.req(Method::GET, &list, keys::FULL).send().await.unwrap();
    assert_eq!(header(&r, "x-cache"), "MISS");
    assert_eq!(h.op_count("hpp.session_records.get").await, 2);
}

#[tokio::test]
async fn list_query_order_does_not_matter_and_other_operations_are_not_cached() {
    let h = Harness::with(opts("[cache]\n")).await;
    let a = h
        .req(
            Method::GET,
            &format!("{RECORD}?createdDate=2001-01-01&x=1"),
            keys::FULL,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        (a.status().as_u16(), header(&a, "x-cache")),
        (200, "MISS".to_owned())
    );
    let b = h
        .req(
            Method::GET,
            &format!("{RECORD}?x=1&createdDate=2001-01-01"),
            keys::FULL,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(header(&b, "x-cache"), "HIT");
    let tx = h.authorize(keys::FULL, None, 10.0).await;
    for _ in 0..2 {
        let r = h
            .req(Method::GET, &format!("{TX_PATH}/{tx}"), keys::FULL)
            .send()
            .await
            .unwrap();
        assert!(r.headers().get("x-cache").is_none());
    }
    assert_eq!(h.op_count("payment.transactions.get").await, 2);
}

// ---------------------------------------------------------------- configuration

fn config_error(extra: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let text = common::config_text(dir.path(), "http://127.0.0.1:9", &opts(extra));
    Config::from_toml(&text, Path::new("gw.toml"))
        .expect_err("invalid")
        .to_string()
}

#[test]
fn configuration_errors_name_the_key() {
    let cases = [
        (
            "[rate_limits]\nmode = \"drop\"\n",
            "gw.toml: rate_limits.mode: expected \"reject\" or \"queue\"",
        ),
        (
            "[rate_limits]\nmax_wait_ms = 10\n",
            "rate_limits.max_wait_ms: applies only with mode = \"queue\"",
        ),
        (
            "[rate_limits]\nmode = \"queue\"\nmax_wait_ms = 0\n",
            "rate_limits.max_wait_ms: expected above 0",
        ),
        (
            "[rate_limits.per_caller]\nrate_per_sec = 0\nburst = 1\n",
            "rate_limits.per_caller.rate_per_sec: expected requests per second from 0.0000116 (one a day) to 1e9",
        ),
        (
            "[rate_limits.per_caller]\nrate_per_sec = 1\nburst = 0\n",
            "rate_limits.per_caller.burst: expected 1 to 1000000",
        ),
        (
            "[rate_limits.callers.nobody]\nrate_per_sec = 1\nburst = 1\n",
            "rate_limits.callers.nobody: no [callers.nobody] section",
        ),
        (
            "[rate_limits.upstreams.billing]\nrate_per_sec = 1\nburst = 1\n",
            "rate_limits.upstreams.billing: unknown upstream",
        ),
        (
            "[rate_limits.operations.\"payment.nope\"]\nrate_per_sec = 1\nburst = 1\n",
            "rate_limits.operations.\"payment.nope\": unknown operation",
        ),
        (
            "[rate_limits.per_caller]\nrate_per_sec = 1\n",
            "missing field `burst`",
        ),
        (
            "[rate_limits]\nper_callers = 1\n",
            "unknown field `per_callers`",
        ),
        (
            "[cache]\nmax_bytes = 10\n",
            "cache.max_bytes: expected at least 1024 bytes",
        ),
        (
            "[cache]\nterminal_ttl_secs = 99999999\n",
            "cache.terminal_ttl_secs: expected 0 (do not cache) to 604800 seconds",
        ),
        ("[cache]\nttl = 1\n", "unknown field `ttl`"),
    ];
    for (extra, want) in cases {
        let got = config_error(extra);
        assert!(
            got.contains(want),
            "{extra:?}\n  got:  {got}\n  want: {want}"
        );
    }
}

#[test]
fn configuration_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let load = |extra: &str| {
        let text = common::config_text(dir.path(), "http://127.0.0.1:9", &opts(extra));
        Config::from_toml(&text, Path::new("gw.toml")).expect("valid")
    };
    let c = load("");
    assert!(c.cache.is_none(), "no [cache] section: no caching");
    assert!(c.rate_limits.per_caller.is_none() && c.rate_limits.upstreams.is_empty());
    let c = load("[cache]\n[rate_limits]\nmode = \"queue\"\n[rate_limits.per_caller]\nrate_per_sec = 50\nburst = 100\n");
    let cache = c.cache.expect("enabled");
    assert_eq!(cache.max_bytes, 64 << 20);
    assert_eq!(
        (
            cache.terminal_ttl.as_secs(),
            cache.changing_ttl.as_secs(),
            cache.stale_if_error.as_secs()
        ),
        (600, 2, 300)
    );
    assert_eq!(
        c.rate_limits.over_limit,
        ratepay_gateway::config::OverLimit::Queue {
            max_wait: Duration::from_millis(500)
        }
    );
    assert_eq!(
        c.rate_limits.per_caller.map(|r| (r.per_sec, r.burst)),
        Some((50.0, 100))
    );
    assert!(load("[cache]\nenabled = false\n").cache.is_none());
}
