//! End to end over loopback: routing, caller authentication and policy, X-Partner, Ratepay token
//! injection and refresh, problem responses.

mod common;

use std::time::{Duration, Instant};

use common::{keys, problem, Harness, Options, HPP_AUD, PAYMENT_AUD, STATUS_AUD, TX_PATH};
use reqwest::Method;
use serde_json::{json, Value};

#[tokio::test]
async fn tokens_are_injected_for_each_routes_audience() {
    let h = Harness::start().await;
    let tx = h.authorize(keys::FULL, None, 100.0).await;

    let r = h
        .req(Method::GET, &format!("{TX_PATH}/{tx}"), keys::FULL)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = h
        .req(
            Method::GET,
            &format!("/transaction/status/v2/transactions/{tx}"),
            keys::FULL,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let r = h
        .req(Method::POST, "/pps/api/v1/session", keys::FULL)
        .json(&json!({"order_data": {"shop_baskets": [{"gross_amount": 10.0}], "currency": "EUR", "buyer": {"contact": {"email": "b@example.com"}}}}))
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "hpp session: {} {}",
        r.status(),
        r.text().await.unwrap()
    );

    // One token per audience, and the sandbox accepted each on its own API only.
    let stats = h.stats().await;
    for aud in [PAYMENT_AUD, STATUS_AUD, HPP_AUD] {
        assert_eq!(stats["tokens_issued_by_audience"][aud], 1, "{aud}: {stats}");
    }
}

#[tokio::test]
async fn two_hundred_concurrent_first_requests_cause_one_token_fetch() {
    let h = Harness::start().await;
    let tx = h.authorize(keys::FULL, None, 100.0).await;
    // The authorize already fetched the payment token; the status API's is still unfetched.
    let path = format!("/transaction/status/v2/transactions/{tx}");
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let rb = h.req(Method::GET, &path, keys::FULL);
        tasks.push(tokio::spawn(async move {
            rb.send().await.map(|r| r.status().as_u16())
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 200);
    }
    let stats = h.stats().await;
    assert_eq!(stats["tokens_issued_by_audience"][STATUS_AUD], 1, "{stats}");
    assert_eq!(stats["requests"]["status.transactions.get"], 200);
}

#[tokio::test]
async fn short_lived_tokens_are_refreshed_ahead_of_expiry_without_failures() {
    // 3 s tokens refreshed at half their life: within a few seconds of steady traffic the
    // gateway fetches several tokens in the background and never sends an expired one.
    let h = Harness::with(Options {
        token_lifetime: Duration::from_secs(3),
        tokens_toml: "refresh_at_fraction = 0.5\nrefresh_margin_secs = 1".into(),
        ..Options::default()
    })
    .await;
    let tx = h.authorize(keys::FULL, None, 100.0).await;
    let path = format!("{TX_PATH}/{tx}");
    let give_up = Instant::now() + Duration::from_secs(15);
    let mut requests = 0;
    loop {
        let r = h.req(Method::GET, &path, keys::FULL).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {requests} failed");
        requests += 1;
        let stats = h.stats().await;
        if stats["tokens_issued"].as_u64().unwrap() >= 3 {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "no background refresh seen: {stats}"
        );
    }
    let stats = h.stats().await;
    // Every GET reached the sandbox exactly once: no 401 and replay was ever needed.
    assert_eq!(
        stats["requests"]["payment.transactions.get"], requests,
        "{stats}"
    );
}

#[tokio::test]
async fn token_endpoint_faults_do_not_fail_requests_while_the_token_is_valid() {
    // 10 s tokens refreshed at half their life: the background refresh (about 5 s after the
    // fetch) meets the faulted endpoint while the current token is still good for about 4 s
    // (10 s, less the second `exp` can lose and the 1 s the gateway keeps in hand).
    let h = Harness::with(Options {
        token_lifetime: Duration::from_secs(10),
        tokens_toml: "refresh_at_fraction = 0.5\nrefresh_margin_secs = 1".into(),
        ..Options::default()
    })
    .await;
    let tx = h.authorize(keys::FULL, None, 100.0).await;
    h.fault(json!({"operation": "oauth.token", "status": 503, "count": 1000}))
        .await;
    let path = format!("{TX_PATH}/{tx}");
    let get = || async {
        let r = h.req(Method::GET, &path, keys::FULL).send().await.unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    };
    // Traffic until the refresh has been tried and refused (the sandbox counts every token
    // request, issued or not). The poll only paces the checks.
    let give_up = Instant::now() + Duration::from_secs(20);
    let mut gets = 0;
    loop {
        get().await;
        gets += 1;
        let stats = h.stats().await;
        if stats["token_requests"].as_u64().unwrap() > stats["tokens_issued"].as_u64().unwrap() {
            break;
        }
        assert!(Instant::now() < give_up, "no refresh attempted: {stats}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // After the failed refresh, requests still go out with the old token.
    for _ in 0..20 {
        get().await;
        gets += 1;
    }
    let stats = h.stats().await;
    assert_eq!(
        stats["tokens_issued_by_audience"][PAYMENT_AUD], 1,
        "no new token: every request used the first one: {stats}"
    );
    assert_eq!(
        stats["requests"]["payment.transactions.get"], gets,
        "each GET reached Ratepay once: no 401, no replay: {stats}"
    );
    let metrics = h.scrape_metrics().await;
    let m = |name: &str| common::metric(&metrics, name);
    assert!(
        m("ratepay_gateway_token_fetch_failures_total{upstream=\"payment\"}")
            .is_some_and(|n| n >= 1.0),
        "the refresh failed: {metrics}"
    );
    assert_eq!(
        m("ratepay_gateway_token_fetches_total{upstream=\"payment\"}"),
        Some(1.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn no_token_obtainable_is_a_503_problem_naming_the_upstream() {
    let h = Harness::start().await;
    h.fault(json!({"operation": "oauth.token", "status": 503, "count": 1000}))
        .await;
    let r = h
        .req(
            Method::GET,
            &format!("{TX_PATH}/abcdefghij0123456789"),
            keys::FULL,
        )
        .send()
        .await
        .unwrap();
    let body = problem(r, 503).await;
    assert!(
        body["detail"].as_str().unwrap().contains("payment"),
        "{body}"
    );
    assert_eq!(h.op_count("payment.transactions.get").await, 0);
    // Readiness says the same.
    let r = h
        .http
        .get(format!("{}/readyz", h.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
}

#[tokio::test]
async fn a_revoked_token_is_refreshed_and_the_request_replayed_once() {
    let h = Harness::start().await;
    let tx = h.authorize(keys::FULL, None, 100.0).await;
    let before = h.stats().await;
    let r = h
        .http
        .post(format!("{}/_sandbox/tokens/revoke", h.sandbox.url()))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());

    let r = h
        .req(Method::GET, &format!("{TX_PATH}/{tx}"), keys::FULL)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let after = h.stats().await;
    assert_eq!(
        after["tokens_issued"].as_u64().unwrap(),
        before["tokens_issued"].as_u64().unwrap() + 1,
        "one new token"
    );
    // The GET reached the sandbox twice: refused once with the old token, then replayed.
    assert_eq!(after["requests"]["payment.transactions.get"], 2);

    // A POST body survives the replay: revoke again and cancel.
    h.http
        .post(format!("{}/_sandbox/tokens/revoke", h.sandbox.url()))
        .send()
        .await
        .unwrap();
    let r = h
        .req(
            Method::POST,
            &format!("{TX_PATH}/{tx}/cancellations"),
            keys::FULL,
        )
        .json(&json!({"gross_amount": 10.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

#[tokio::test]
async fn fixed_partner_is_always_sent_and_cannot_be_overridden() {
    let h = Harness::start().await;
    let tx = h.authorize(keys::FULL, None, 100.0).await;
    // The transaction lives under p-fixed: the chooser sees it under p-a as not found.
    let r = h
        .req(Method::GET, &format!("{TX_PATH}/{tx}"), keys::CHOOSER)
        .header("x-partner", "p-a")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Sending its own fixed value is fine; another one is refused before Ratepay.
    let r = h
        .req(Method::GET, &format!("{TX_PATH}/{tx}"), keys::FULL)
        .header("x-partner", "p-fixed")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let before = h.upstream_total().await;
    let r = h
        .req(Method::GET, &format!("{TX_PATH}/{tx}"), keys::FULL)
        .header("x-partner", "p-a")
        .send()
        .await
        .unwrap();
    problem(r, 403).await;
    assert_eq!(h.upstream_total().await, before);
}

#[tokio::test]
async fn chosen_partner_must_come_from_the_callers_list() {
    let h = Harness::start().await;
    let tx = h.authorize(keys::CHOOSER, Some("p-a"), 50.0).await;
    let get = |p: &'static str| {
        h.req(Method::GET, &format!("{TX_PATH}/{tx}"), keys::CHOOSER)
            .header("x-partner", p)
            .send()
    };
    assert_eq!(get("p-a").await.unwrap().status(), 200);
    assert_eq!(
        get("p-b").await.unwrap().status(),
        404,
        "partner isolation upstream"
    );
    let before = h.upstream_total().await;
    problem(get("p-other").await.unwrap(), 403).await;
    let r = h
        .req(Method::GET, &format!("{TX_PATH}/{tx}"), keys::CHOOSER)
        .send()
        .await
        .unwrap();
    let body = problem(r, 400).await;
    assert!(
        body["detail"].as_str().unwrap().contains("p-a"),
        "lists the choices: {body}"
    );
    // A caller without partners cannot inject one.
    let r = h
        .req(Method::GET, &format!("{TX_PATH}/{tx}"), keys::NOPARTNER)
        .header("x-partner", "p-a")
        .send()
        .await
        .unwrap();
    problem(r, 403).await;
    assert_eq!(h.upstream_total().await, before);
}

#[tokio::test]
async fn unknown_caller_and_forbidden_operation_never_reach_ratepay() {
    let h = Harness::start().await;
    let path = format!("{TX_PATH}/abcdefghij0123456789/cancellations");
    let r = h
        .http
        .post(h.url(&path))
        .json(&json!({"gross_amount": 1}))
        .send()
        .await
        .unwrap();
    let body = problem(r, 401).await;
    assert!(body["detail"].as_str().unwrap().contains("Authorization"));
    let r = h
        .req(Method::POST, &path, "wrong-key")
        .json(&json!({"gross_amount": 1}))
        .send()
        .await
        .unwrap();
    problem(r, 401).await;
    let r = h
        .req(Method::POST, &path, keys::READER)
        .json(&json!({"gross_amount": 1}))
        .send()
        .await
        .unwrap();
    let body = problem(r, 403).await;
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .contains("payment.cancellations.create"));
    let stats = h.stats().await;
    assert_eq!(stats["requests_total"], 0, "{stats}");
    assert_eq!(
        stats["token_requests"], 0,
        "not even a token was fetched: {stats}"
    );
}

#[tokio::test]
async fn path_tricks_and_unknown_paths_are_refused_before_anything_else() {
    let h = Harness::start().await;
    for path in [
        "/transaction/management/v2/transactions/../../admin",
        "/transaction/management/v2/transactions/%2e%2e/x",
        "/transaction/management/v2/transactions/a%2Fb/cancellations",
        "/transaction/management//v2/transactions",
        "/pps/api/v1/session-record/%C3%A9t%C3%A9",
    ] {
        // reqwest would normalise dot segments; send the raw path over a plain TCP socket.
        let status = raw_get(&h.gateway, path).await;
        assert_eq!(status, 400, "{path}");
    }
    for path in [
        "/admin",
        "/transaction/management/v3/transactions",
        "/_sandbox/stats",
    ] {
        let r = h.req(Method::GET, path, keys::FULL).send().await.unwrap();
        problem(r, 404).await;
    }
    // Unknown routes answer 404 even without credentials: routing comes first.
    let r = h.http.get(h.url("/admin")).send().await.unwrap();
    problem(r, 404).await;
    let r = h
        .req(
            Method::DELETE,
            &format!("{TX_PATH}/abcdefghij0123456789"),
            keys::FULL,
        )
        .send()
        .await
        .unwrap();
    problem(r, 405).await;
    assert_eq!(h.upstream_total().await, 0);
}

async fn raw_get(base: &str, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        keys::FULL
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn gateway_oauth_token_works_for_an_unmodified_client_flow() {
    let h = Harness::start().await;
    // Exactly what a Ratepay SDK sends to Ratepay's token endpoint, with internal credentials.
    let token_req = |secret: &str, aud: &str| {
        h.http.post(h.url("/oauth/token")).json(&json!({
            "client_id": "svc-client",
            "client_secret": secret,
            "audience": aud,
            "grant_type": "client_credentials"
        }))
    };
    let r = token_req(common::SVC_SECRET, PAYMENT_AUD)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 300);
    let token = body["access_token"].as_str().unwrap().to_owned();

    let r = h
        .http
        .post(h.url(TX_PATH))
        .bearer_auth(&token)
        .json(&common::authorize_body(20.0))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // The token is for the payment audience only.
    let r = h
        .http
        .get(h.url("/pps/api/v1/session-record/abcdef"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    problem(r, 401).await;
    // Wrong secret: 401 problem, and Ratepay's secret is never involved.
    let r = token_req("nope", PAYMENT_AUD).send().await.unwrap();
    problem(r, 401).await;
    let r = token_req(common::SVC_SECRET, "https://evil.example")
        .send()
        .await
        .unwrap();
    problem(r, 400).await;
}

/// Milliseconds since the Unix epoch, as a UUIDv7 carries them.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Asserts that `ids` are UUIDv7s (version 7, RFC 9562 variant) made between `from_ms` and
/// `to_ms`, in the order generated.
fn assert_uuid_v7s(ids: &[String], from_ms: u64, to_ms: u64) {
    for id in ids {
        let u = uuid::Uuid::parse_str(id).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(u.get_version_num(), 7, "{id}");
        assert_eq!(u.get_variant(), uuid::Variant::RFC4122, "{id}");
        assert_eq!(id, &u.hyphenated().to_string(), "lowercase hyphenated form");
        let (secs, nanos) = u.get_timestamp().expect("v7 has a timestamp").to_unix();
        let ms = secs * 1000 + u64::from(nanos) / 1_000_000;
        assert!(
            (from_ms..=to_ms).contains(&ms),
            "{id}: {ms} not in {from_ms}..={to_ms}"
        );
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "time-ordered: {ids:?}");
}

#[tokio::test]
async fn request_ids_are_kept_or_generated() {
    let h = Harness::start().await;
    let r = h
        .req(Method::GET, "/admin", keys::FULL)
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["request_id"], "abc-123");
    let tx = h.authorize(keys::FULL, None, 10.0).await;
    // Valid header values, but not well-formed ids: replaced by a generated one, never echoed.
    let from_ms = unix_ms();
    let mut generated = Vec::new();
    for bad in ["bad id with spaces".to_owned(), "x".repeat(129)] {
        let r = h
            .req(Method::GET, "/admin", keys::FULL)
            .header("x-request-id", &bad)
            .send()
            .await
            .unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_ne!(id, bad);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["request_id"], id.as_str());
        generated.push(id);
    }
    let r = h
        .req(Method::GET, &format!("{TX_PATH}/{tx}"), keys::FULL)
        .send()
        .await
        .unwrap();
    generated.push(r.headers()["x-request-id"].to_str().unwrap().to_owned());
    assert_uuid_v7s(&generated, from_ms, unix_ms());
}

#[tokio::test]
async fn upstream_down_and_slow_answer_502_and_504_naming_the_upstream() {
    // A 300 ms attempt timeout against a sandbox holding each GET for a minute: every attempt
    // times out however slow the machine. Nothing else the test sends waits on that timeout:
    // the fault applies before the sandbox looks the id up, so no transaction is needed, and
    // the token fetch has its own timeout.
    let h = Harness::with(Options {
        request_timeout_ms: 300,
        ..Options::default()
    })
    .await;
    let id = "abcdefghij0123456789";
    h.fault(json!({"operation": "payment.transactions.get", "latency_ms": 60_000, "count": 10}))
        .await;
    let r = h
        .req(Method::GET, &format!("{TX_PATH}/{id}"), keys::FULL)
        .send()
        .await
        .unwrap();
    let body = problem(r, 504).await;
    assert!(body["detail"].as_str().unwrap().contains("payment"));
    // A GET is retried after a timeout: three attempts (the default) reached the sandbox.
    assert_eq!(h.op_count("payment.transactions.get").await, 3);

    // Tokens still come from the sandbox, but the payment API's origin is a closed port: one
    // held by a socket bound and never listening, so nothing else can take it meanwhile and
    // every connect is refused.
    let closed = tokio::net::TcpSocket::new_v4().unwrap();
    closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let dead: http::Uri = format!("http://{}", closed.local_addr().unwrap())
        .parse()
        .unwrap();
    let sandbox = ratepay_gateway::sandbox::spawn(common::sandbox_config(Duration::from_secs(60)))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = common::config_text(dir.path(), &sandbox.url(), &Options::default());
    let mut config =
        ratepay_gateway::config::Config::from_toml(&text, std::path::Path::new("t.toml")).unwrap();
    if let Some(u) = config
        .upstreams
        .get_mut(&ratepay_gateway::routes::Api::Payment)
    {
        u.url = dead;
    }
    let g = Harness::serve(sandbox, dir, config).await;
    let r = g
        .req(Method::GET, &format!("{TX_PATH}/{id}"), keys::FULL)
        .send()
        .await
        .unwrap();
    let body = problem(r, 502).await;
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("payment"), "{body}");
    assert!(
        detail.to_lowercase().contains("refused"),
        "a refused connect: {body}"
    );
    drop(closed);
}

/// The problem's `type` ends with `kind`.
fn problem_kind(body: &Value, kind: &str) -> bool {
    body["type"].as_str().is_some_and(|t| t.ends_with(kind))
}

#[tokio::test]
async fn calls_on_tasks_of_their_own_time_out_per_attempt_too() {
    // A keyed cancellation runs on a task of its own (it completes when the caller hangs up),
    // and so does a session-record fetch that other callers may join. Their attempts must time
    // out at the 300 ms attempt timeout like a GET's, and be retried, not hang until the
    // request's whole deadline (20 s in these tests) while the upstream holds them for a minute.
    let h = Harness::with(Options {
        request_timeout_ms: 300,
        ..Options::default()
    })
    .await;
    let tx = h.authorize(keys::FULL, None, 10.0).await;
    let session = h.session(keys::FULL, None).await;
    h.fault(json!({"operation": "payment.cancellations.create", "latency_ms": 60_000, "count": 3}))
        .await;
    h.fault(json!({"operation": "hpp.session_records.get", "latency_ms": 60_000, "count": 3}))
        .await;

    let started = Instant::now();
    let r = h
        .cancel(
            keys::FULL,
            &tx,
            &json!({"gross_amount": 4}),
            Some("k-slow"),
            None,
        )
        .send()
        .await
        .unwrap();
    let body = problem(r, 504).await;
    assert!(problem_kind(&body, "upstream-timeout"), "{body}");
    assert_eq!(
        h.op_count("payment.cancellations.create").await,
        3,
        "three attempts"
    );

    let r = h
        .req(
            Method::GET,
            &format!("/pps/api/v1/session-record/{session}"),
            keys::FULL,
        )
        .send()
        .await
        .unwrap();
    let body = problem(r, 504).await;
    assert!(problem_kind(&body, "upstream-timeout"), "{body}");
    assert_eq!(
        h.op_count("hpp.session_records.get").await,
        3,
        "three attempts"
    );
    // Both answered long before either request's 20 s deadline.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn oversized_bodies_are_refused_with_413() {
    let h = Harness::start().await;
    let big = "x".repeat(70_000);
    let r = h
        .req(
            Method::POST,
            &format!("{TX_PATH}/abcdefghij0123456789/cancellations"),
            keys::FULL,
        )
        .body(big)
        .send()
        .await
        .unwrap();
    problem(r, 413).await;
    assert_eq!(h.upstream_total().await, 0);
}

#[tokio::test]
async fn upstream_answers_over_the_size_limit_are_refused_with_a_problem() {
    let h = Harness::with(Options {
        limits_toml: "max_response_body_bytes = 64".into(),
        ..Options::default()
    })
    .await;
    // An authorization answer is a few hundred bytes: more than 64.
    let r = h
        .req(Method::POST, TX_PATH, keys::FULL)
        .json(&common::authorize_body(10.0))
        .send()
        .await
        .unwrap();
    let p = problem(r, 502).await;
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.contains("limits.max_response_body_bytes"),
        "says which setting: {detail}"
    );
    assert!(detail.contains("64 bytes"), "{detail}");
    h.stop().await;
}
