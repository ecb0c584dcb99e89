//! End to end over loopback: the README's idempotency and retry promises that had no test,
//! each against the sandbox (whose counters prove what reached "Ratepay"), with the metrics
//! `retries_total` and `idempotency_conflicts_total` read from the admin listener.

mod common;

use std::time::{Duration, Instant};

use common::{
    custom::{eventually, replace_once, upstream_url_line},
    keys, problem, sandbox_config,
    upstream::relay,
    Harness, Options, TX_PATH,
};
use reqwest::Method;
use serde_json::json;

const CANCEL_OP: &str = "payment.cancellations.create";
const GET_OP: &str = "payment.transactions.get";

fn payment_retries() -> &'static str {
    "retries_total{upstream=\"payment\"}"
}

/// Whether the gateway answered from its idempotency store (`Idempotent-Replayed: true`).
fn replayed(r: &reqwest::Response) -> bool {
    match r.headers().get("idempotent-replayed") {
        None => false,
        Some(v) => {
            assert_eq!(v, "true");
            true
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Idempotency
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_stored_4xx_is_replayed_without_a_second_upstream_call() {
    let h = Harness::start().await;
    let tx = h.authorize(keys::FULL, None, 10.0).await;
    // More than was authorized: Ratepay declines with 422, a final answer.
    let body = json!({"gross_amount": 50});
    let first = h
        .cancel(keys::FULL, &tx, &body, Some("k-declined"), None)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 422);
    assert!(!replayed(&first));
    let first_body = first.text().await.unwrap();

    let again = h
        .cancel(keys::FULL, &tx, &body, Some("k-declined"), None)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 422);
    assert!(replayed(&again), "replayed by the gateway");
    assert_eq!(again.headers()["idempotency-key"], "k-declined");
    assert_eq!(again.text().await.unwrap(), first_body, "the same answer");
    assert_eq!(h.op_count(CANCEL_OP).await, 1, "no second upstream call");
    assert_eq!(h.metric("idempotency_replays_total").await, Some(1.0));
}

#[tokio::test]
async fn the_same_key_on_another_path_or_with_another_partner_is_409_before_ratepay() {
    let h = Harness::start().await;
    let body = json!({"gross_amount": 1});
    // Another path: the same key and body for another transaction.
    let (tx1, tx2) = (
        h.authorize(keys::FULL, None, 10.0).await,
        h.authorize(keys::FULL, None, 10.0).await,
    );
    let r = h
        .cancel(keys::FULL, &tx1, &body, Some("k-path"), None)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = h
        .cancel(keys::FULL, &tx2, &body, Some("k-path"), None)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["idempotency-key"], "k-path");
    let p = problem(r, 409).await;
    assert!(p["type"]
        .as_str()
        .unwrap()
        .ends_with("idempotency-conflict"));

    // Another X-Partner: the same key, path and body, chosen under p-a and then p-b.
    let tx3 = h.authorize(keys::CHOOSER, Some("p-a"), 10.0).await;
    let r = h
        .cancel(keys::CHOOSER, &tx3, &body, Some("k-partner"), Some("p-a"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = h
        .cancel(keys::CHOOSER, &tx3, &body, Some("k-partner"), Some("p-b"))
        .send()
        .await
        .unwrap();
    let p = problem(r, 409).await;
    assert!(p["type"]
        .as_str()
        .unwrap()
        .ends_with("idempotency-conflict"));

    assert_eq!(
        h.op_count(CANCEL_OP).await,
        2,
        "neither 409 reached Ratepay"
    );
    assert_eq!(h.cancellations(keys::FULL, &tx2, None).await, 0);
    assert_eq!(h.metric("idempotency_conflicts_total").await, Some(2.0));
    assert_eq!(h.metric("idempotency_replays_total").await, Some(0.0));
}

#[tokio::test]
async fn a_final_5xx_is_not_stored_and_the_same_key_executes_again() {
    let h = Harness::start().await;
    let tx = h.authorize(keys::FULL, None, 10.0).await;
    // Every attempt of the first request fails (3 attempts, the default).
    h.fault(json!({"operation": CANCEL_OP, "status": 500, "count": 3}))
        .await;
    let body = json!({"gross_amount": 2});
    let r = h
        .cancel(keys::FULL, &tx, &body, Some("k-5xx"), None)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500, "Ratepay's final 5xx passes through");
    assert_eq!(h.op_count(CANCEL_OP).await, 3);
    assert_eq!(h.metric(payment_retries()).await, Some(2.0));

    // The caller retries with the same key: executed again, not replayed.
    let r = h
        .cancel(keys::FULL, &tx, &body, Some("k-5xx"), None)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert!(!replayed(&r), "executed, not replayed");
    assert_eq!(h.op_count(CANCEL_OP).await, 4);
    assert_eq!(h.cancellations(keys::FULL, &tx, None).await, 1);
    assert_eq!(
        h.metric(payment_retries()).await,
        Some(2.0),
        "no retry needed"
    );
}

#[tokio::test]
async fn a_caller_hanging_up_does_not_cut_the_upstream_call_off() {
    let h = Harness::start().await;
    let tx = h.authorize(keys::FULL, None, 10.0).await;
    h.fault(json!({"operation": CANCEL_OP, "latency_ms": 1500, "count": 1}))
        .await;
    let body = json!({"gross_amount": 4});
    // The caller gives up (and closes its connection) long before Ratepay answers.
    let gave_up = h
        .cancel(keys::FULL, &tx, &body, Some("k-hang-up"), None)
        .timeout(Duration::from_millis(300))
        .send()
        .await
        .expect_err("the caller hung up first");
    assert!(gave_up.is_timeout(), "{gave_up}");
    eventually("Ratepay completed the abandoned cancellation", || async {
        h.cancellations(keys::FULL, &tx, None).await == 1
    })
    .await;
    // The retry with the same key gets the stored answer of the call that completed.
    let r = h
        .cancel(keys::FULL, &tx, &body, Some("k-hang-up"), None)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert!(replayed(&r), "the stored answer");
    assert_eq!(h.op_count(CANCEL_OP).await, 1, "one upstream call in all");
    // And its audit outcome is Ratepay's answer, not a call cut off halfway.
    let records = h.audit_records();
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[1]["outcome"], "success");
    assert_eq!(records[1]["status"], 201);
}

// ---------------------------------------------------------------------------------------------
// Retries
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_refused_connection_is_retried_and_the_retry_succeeds() {
    // The status API's port is bound but not listening, so connecting is refused (and no
    // other process can take the port); it starts listening, relaying to the sandbox, only
    // once the first attempt has failed.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let refusing = format!("http://{}", socket.local_addr().unwrap());
    let opts = Options {
        // 1.5 to 3 s before the retry: ample time to see the failure and open the port.
        retry_toml: "initial_backoff_ms = 3000\nmax_backoff_ms = 3000\ndeadline_ms = 10000".into(),
        ..Options::default()
    };
    let h = Harness::edited(
        sandbox_config(Duration::from_secs(1800)),
        &opts,
        |text, sandbox, _| {
            replace_once(
                &text,
                &upstream_url_line("status", sandbox),
                &upstream_url_line("status", &refusing),
            )
        },
    )
    .await;
    let tx = h.authorize(keys::FULL, None, 10.0).await;
    let call = tokio::spawn(
        h.req(
            Method::GET,
            &format!("/transaction/status/v2/transactions/{tx}"),
            keys::FULL,
        )
        .send(),
    );
    let failed = "upstream_responses_total{upstream=\"status\",status=\"error\"}";
    eventually("the first attempt was refused", || async {
        h.metric(failed).await == Some(1.0)
    })
    .await;
    assert_eq!(h.op_count("status.transactions.get").await, 0);
    relay(socket.listen(16).unwrap(), h.sandbox.addr);

    let r = call.await.unwrap().unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(h.op_count("status.transactions.get").await, 1);
    assert_eq!(h.metric(failed).await, Some(1.0));
    assert_eq!(
        h.metric("upstream_responses_total{upstream=\"status\",status=\"2xx\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(
        h.metric("retries_total{upstream=\"status\"}").await,
        Some(1.0)
    );
}

#[tokio::test]
async fn a_connection_closed_without_an_answer_is_retried() {
    let h = Harness::start().await;
    let tx = h.authorize(keys::FULL, None, 10.0).await;
    h.fault(json!({"operation": GET_OP, "close_connection": true, "count": 1}))
        .await;
    let r = h
        .req(Method::GET, &format!("{TX_PATH}/{tx}"), keys::FULL)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(h.op_count(GET_OP).await, 2, "closed once, then answered");
    assert_eq!(h.metric(payment_retries()).await, Some(1.0));
    assert_eq!(
        h.metric("upstream_responses_total{upstream=\"payment\",status=\"error\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn a_429_is_retried_once_after_its_retry_after() {
    let h = Harness::with(Options {
        retry_toml: "initial_backoff_ms = 10\nmax_backoff_ms = 50\ndeadline_ms = 5000".into(),
        ..Options::default()
    })
    .await;
    let tx = h.authorize(keys::FULL, None, 10.0).await;
    h.fault(json!({"operation": GET_OP, "status": 429, "retry_after": 1, "count": 1}))
        .await;
    let started = Instant::now();
    let r = h
        .req(Method::GET, &format!("{TX_PATH}/{tx}"), keys::FULL)
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), 200);
    assert_eq!(h.op_count(GET_OP).await, 2, "exactly two attempts");
    assert!(
        took >= Duration::from_secs(1),
        "the retry waited for Retry-After (1 s), not the 10 to 50 ms backoff: {took:?}"
    );
    assert_eq!(h.metric(payment_retries()).await, Some(1.0));
    // The final answer was a 200, so the API is not paused.
    let r = h
        .req(Method::GET, &format!("{TX_PATH}/{tx}"), keys::FULL)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(h.op_count(GET_OP).await, 3);
}

#[tokio::test]
async fn otp_regenerate_is_not_retried_after_a_closed_connection() {
    let h = Harness::start().await;
    let tx = h.authorize(keys::FULL, None, 10.0).await;
    let op = "payment.otp.regenerate";
    h.fault(json!({"operation": op, "close_connection": true, "count": 3}))
        .await;
    h.fault(json!({"operation": GET_OP, "close_connection": true, "count": 1}))
        .await;
    // The same transport failure on a GET is retried (and counted) ...
    let r = h
        .req(Method::GET, &format!("{TX_PATH}/{tx}"), keys::FULL)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(h.metric(payment_retries()).await, Some(1.0));
    // ... but never on an OTP call, even one the caller sent a key with.
    let r = h
        .req(
            Method::POST,
            &format!("/transaction/management/2fa/v1/regenerate/{tx}"),
            keys::FULL,
        )
        .header("idempotency-key", "k-otp")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    problem(r, 502).await;
    assert_eq!(h.op_count(op).await, 1, "attempted once");
    assert_eq!(h.metric(payment_retries()).await, Some(1.0), "no retry");
}
