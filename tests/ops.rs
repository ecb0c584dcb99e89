//! Operations: metrics after traffic, graceful shutdown on SIGTERM under load.

mod common;

use std::{process::Command, time::Duration};

use common::{
    keys, metric,
    process::{authorize, gateway_config, spawn, BIN, KEY},
    Harness, Options, TX_PATH,
};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn metrics_are_present_and_move_with_traffic() {
    // Outcomes synced before the answer, so the outcome is counted once its call is answered
    // (`audit_records_total` counts synced records; with "written" the last one is synced by
    // the flush timer a moment later).
    let h = Harness::with_edited(Options::default(), |t| {
        t.replace("[audit]\n", "[audit]\noutcome_durability = \"synced\"\n")
    })
    .await;
    let scrape = || h.scrape_metrics();
    let before = scrape().await;
    assert!(before.contains("ratepay_gateway_in_flight_requests"));
    // The start record and the checkpoint signing it.
    assert_eq!(
        metric(&before, "ratepay_gateway_audit_records_total"),
        Some(2.0)
    );

    let tx = h.authorize(keys::FULL, None, 100.0).await;
    for _ in 0..2 {
        let r = h
            .req(
                Method::POST,
                &format!("{TX_PATH}/{tx}/cancellations"),
                keys::FULL,
            )
            .header("idempotency-key", "metrics-k")
            .header("content-type", "application/json")
            .body(r#"{"gross_amount": 1}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    h.req(Method::GET, "/admin", keys::FULL)
        .send()
        .await
        .unwrap();
    h.req(Method::GET, &format!("{TX_PATH}/{tx}"), keys::READER)
        .send()
        .await
        .unwrap();

    let after = scrape().await;
    let requests = |labels: &str| {
        metric(
            &after,
            &format!("ratepay_gateway_requests_total{{{labels}}}"),
        )
    };
    assert_eq!(
        requests("operation=\"payment.cancellations.create\",caller=\"full\",status=\"2xx\""),
        Some(2.0)
    );
    assert_eq!(
        requests("operation=\"-\",caller=\"-\",status=\"4xx\""),
        Some(1.0),
        "unrouted 404"
    );
    assert_eq!(
        requests("operation=\"payment.transactions.get\",caller=\"reader\",status=\"4xx\""),
        Some(1.0),
        "403: the caller is known, its call is not allowed"
    );
    assert_eq!(
        metric(&after, "ratepay_gateway_idempotency_replays_total"),
        Some(1.0)
    );
    assert_eq!(
        metric(&after, "ratepay_gateway_audit_records_total"),
        Some(4.0),
        "the start, its checkpoint, an intent and its outcome"
    );
    assert_eq!(
        metric(
            &after,
            "ratepay_gateway_token_fetches_total{upstream=\"payment\"}"
        ),
        Some(1.0)
    );
    let expiry = metric(
        &after,
        "ratepay_gateway_token_expiry_seconds{upstream=\"payment\"}",
    )
    .unwrap();
    assert!(expiry > 1700.0 && expiry <= 1800.0, "{expiry}");
    // Two calls left for Ratepay: the authorization and the first cancellation (the second was
    // replayed, the reader's GET refused).
    assert!(after.contains("ratepay_gateway_upstream_duration_seconds_bucket{le="));
    assert_eq!(
        metric(
            &after,
            "ratepay_gateway_upstream_duration_seconds_count{upstream=\"payment\"}"
        ),
        Some(2.0),
        "{after}"
    );
    assert_eq!(
        metric(
            &after,
            "ratepay_gateway_upstream_responses_total{upstream=\"payment\",status=\"2xx\"}"
        ),
        Some(2.0),
        "{after}"
    );
    assert_eq!(
        metric(&after, "ratepay_gateway_in_flight_requests"),
        Some(0.0)
    );
    for secret in [keys::FULL, keys::READER, common::RATEPAY_SECRET, "eyJ"] {
        assert!(!after.contains(secret), "metrics leak {secret:.5}");
    }
    assert!(!after.contains(&tx), "no ids in labels");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_answers_every_in_flight_request_and_leaves_a_verifiable_log() {
    let dir = tempfile::tempdir().unwrap();
    let (_sandbox, addrs) = spawn(&["sandbox", "--listen", "127.0.0.1:0"], &["sandbox"]);
    let sandbox = addrs["sandbox"].clone();
    let cfg = gateway_config(dir.path(), &sandbox);
    let (mut gateway, addrs) = spawn(&["serve", "--config", cfg.to_str().unwrap()], &["proxy"]);
    let proxy = addrs["proxy"].clone();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let tx = authorize(&http, &proxy, 1000).await;
    let stats = |http: reqwest::Client| {
        let url = format!("http://{sandbox}/_sandbox/stats");
        async move {
            http.get(url)
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    // Each cancellation stays in flight at the sandbox for 500 ms.
    http.post(format!("http://{sandbox}/_sandbox/faults"))
        .json(&json!({"operation": "payment.cancellations.create", "latency_ms": 500}))
        .send()
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let rb = http
            .post(format!("http://{proxy}{TX_PATH}/{tx}/cancellations"))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(r#"{"gross_amount": 1}"#);
        tasks.push(tokio::spawn(async move {
            rb.send().await.map(|r| r.status().as_u16())
        }));
    }
    // Wait (bounded) until all 40 reached the sandbox, i.e. are in flight through the gateway.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stats(http.clone()).await["requests"]["payment.cancellations.create"].as_u64() < Some(40)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "requests never arrived"
        );
        tokio::task::yield_now().await;
    }
    let pid = gateway.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    for t in tasks {
        assert_eq!(t.await.unwrap().expect("answered, not dropped"), 201);
    }
    let status = gateway.0.wait().unwrap();
    assert!(status.success(), "exit 0 after the drain: {status:?}");

    let verify = Command::new(BIN)
        .args(["audit", "verify"])
        .arg(dir.path().join("audit"))
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let mut kinds = Vec::new();
    for file in ratepay_gateway::audit::log_files(dir.path().join("audit")).unwrap() {
        for line in std::fs::read_to_string(file).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            kinds.push(v["kind"].as_str().unwrap().to_owned());
        }
    }
    let audited = kinds
        .iter()
        .filter(|k| *k == "intent" || *k == "outcome")
        .count();
    assert_eq!(audited, 80, "40 intents + 40 outcomes");
    // A clean stop: the stop record, signed by the last checkpoint.
    assert_eq!(kinds[kinds.len() - 2..], ["stop", "checkpoint"]);
}

#[tokio::test]
async fn admin_endpoints_answer() {
    let h = Harness::start().await;
    for (path, status) in [("/healthz", 200), ("/readyz", 200), ("/nope", 404)] {
        let r = h
            .http
            .get(format!("{}{path}", h.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{path}");
    }
}

#[tokio::test]
async fn cache_and_rate_limit_metrics_move() {
    let h = Harness::with(common::Options {
        // The session stays CREATED, a changing record: a long lifetime for those keeps the
        // later reads hits however slowly they follow the first (the default is 2 s).
        extra_toml: "[cache]\nchanging_ttl_secs = 600\n\
                     [rate_limits.callers.reader]\nrate_per_sec = 0.1\nburst = 1\n"
            .into(),
        ..common::Options::default()
    })
    .await;
    let sid = h.session(keys::FULL, None).await;
    let path = format!("/pps/api/v1/session-record/{sid}");
    let status = |key: &'static str| {
        let rb = h.req(Method::GET, &path, key);
        async move { rb.send().await.unwrap().status().as_u16() }
    };
    let record = h.req(Method::GET, &path, keys::FULL).send().await.unwrap();
    assert_eq!(record.headers()["x-cache"], "MISS");
    let record_len = record.bytes().await.unwrap().len() as f64;
    assert_eq!(status(keys::FULL).await, 200); // hit
    assert_eq!(status(keys::READER).await, 200); // hit (same partner), spends reader's burst
    assert_eq!(status(keys::READER).await, 429); // reader's budget is spent
    let text = h.scrape_metrics().await;
    let m = |name: &str| metric(&text, name);
    assert_eq!(
        m("ratepay_gateway_cache_lookups_total{result=\"miss\"}"),
        Some(1.0)
    );
    assert_eq!(
        m("ratepay_gateway_cache_lookups_total{result=\"hit\"}"),
        Some(2.0)
    );
    assert_eq!(m("ratepay_gateway_cache_entries"), Some(1.0));
    let bytes = m("ratepay_gateway_cache_bytes").unwrap();
    assert!(
        bytes >= record_len,
        "the one entry weighs at least its {record_len}-byte body: {bytes}"
    );
    assert_eq!(
        m("ratepay_gateway_rate_limit_rejections_total{scope=\"caller\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        m("ratepay_gateway_requests_total{operation=\"hpp.session_records.get\",caller=\"reader\",status=\"4xx\"}"),
        Some(1.0)
    );
    h.stop().await;
}

#[tokio::test]
async fn readiness_flips_when_the_token_endpoint_fails_past_the_tokens_life() {
    // 10 s Ratepay tokens refreshed at half their life: the refresh, about 5 s after the
    // fetch, fails. Readiness must hold while the token is valid and flip once it is not: no
    // sooner than 8 s after the fetch (10 s, less up to 1 s lost to `exp`'s whole seconds and
    // the 1 s before expiry at which the gateway stops sending a token). The bound below
    // leaves half a second for the fetch itself; a flip at the failed refresh comes 3 s
    // earlier.
    let h = Harness::with(common::Options {
        token_lifetime: Duration::from_secs(10),
        tokens_toml: "refresh_at_fraction = 0.5\nrefresh_margin_secs = 1\n\
                      retry_initial_ms = 50\nretry_max_ms = 200"
            .into(),
        ..common::Options::default()
    })
    .await;
    let ready = || async {
        let r = h
            .http
            .get(format!("{}/readyz", h.admin))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    let failed_refreshes = || async {
        let text = h.scrape_metrics().await;
        metric(
            &text,
            "ratepay_gateway_token_fetch_failures_total{upstream=\"payment\"}",
        )
        .unwrap_or(0.0)
    };
    // Before the first readiness check: every token is fetched after this instant.
    let before_fetch = std::time::Instant::now();
    assert_eq!(ready().await.0, 200, "a token is obtainable");
    h.fault(json!({"operation": "oauth.token", "status": 503}))
        .await;
    assert_eq!(ready().await.0, 200, "the current token still lives");
    // The poll only paces the checks; the flip itself comes from the token's expiry.
    let mut ready_after_a_failed_refresh = false;
    let (status, body) = loop {
        let (status, body) = ready().await;
        if status != 200 {
            break (status, body);
        }
        ready_after_a_failed_refresh |= failed_refreshes().await >= 1.0;
        assert!(
            before_fetch.elapsed() < Duration::from_secs(30),
            "never flipped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let flipped = before_fetch.elapsed();
    assert!(
        flipped >= Duration::from_millis(7500),
        "not ready after {flipped:?}, while the 10 s token was still valid"
    );
    assert!(
        ready_after_a_failed_refresh,
        "a failed refresh alone does not make the gateway unready"
    );
    assert_eq!(status, 503);
    assert!(body.starts_with("not ready\n"), "{body}");
    // Each upstream's token was fetched on its own, so whichever expired first is named
    // first; every line names an upstream and says why.
    let problems: Vec<&str> = body.lines().skip(1).filter(|l| !l.is_empty()).collect();
    assert!(!problems.is_empty(), "names an upstream: {body}");
    for line in problems {
        let (name, why) = line.split_once(": ").unwrap_or((line, ""));
        assert!(
            ["payment", "status", "hpp"].contains(&name),
            "names the upstream: {body}"
        );
        assert!(why.contains("503"), "says why: {body}");
    }
    // Proxied calls say the same, as a problem.
    let r = h
        .req(Method::GET, &format!("{TX_PATH}/any"), keys::FULL)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    // The endpoint recovers: ready again without a restart.
    h.http
        .delete(format!("{}/_sandbox/faults", h.sandbox.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready().await.0, 200);
    h.stop().await;
}
