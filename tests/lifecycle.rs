//! A request's and the process's life at its edges: the whole-request deadline, the shutdown
//! grace running out, and start-up recovery of an intent a killed gateway left open.

mod common;

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use common::{
    keys, problem,
    process::{
        authorize, gateway_config, sandbox_fault, sandbox_stats, sandbox_token, signal, spawn,
        Running, BIN, KEY,
    },
    Harness, Options, TX_PATH,
};
use reqwest::Method;
use serde_json::{json, Value};

const CANCEL_OP: &str = "payment.cancellations.create";

#[tokio::test]
async fn a_request_past_limits_request_timeout_gets_504_deadline_exceeded() {
    // Each attempt may take 1000 ms and 3 attempts are allowed (about 3 s in all), but the
    // whole request has 1500 ms.
    let h = Harness::with_edited(
        Options {
            request_timeout_ms: 1000,
            retry_toml: "max_attempts = 3\ninitial_backoff_ms = 10\nmax_backoff_ms = 50\n\
                         deadline_ms = 10000"
                .into(),
            ..Options::default()
        },
        |text| {
            assert!(text.contains("request_timeout_ms = 20000"));
            text.replace("request_timeout_ms = 20000", "request_timeout_ms = 1500")
        },
    )
    .await;
    let tx = h.authorize(keys::FULL, None, 10.0).await;
    h.fault(json!({"operation": "payment.transactions.get", "latency_ms": 5000}))
        .await;
    let started = Instant::now();
    let r = h
        .req(Method::GET, &format!("{TX_PATH}/{tx}"), keys::FULL)
        .send()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    let body = problem(r, 504).await;
    assert_eq!(
        body["type"],
        "https://ratepay-gateway.dev/problems/deadline-exceeded"
    );
    assert_eq!(
        body["detail"],
        "the request did not complete within 1500 ms"
    );
    // Not before the deadline, and well before the retries would have run out (3 × 1000 ms).
    assert!(
        elapsed >= Duration::from_millis(1500) && elapsed < Duration::from_millis(2900),
        "answered after {elapsed:?}"
    );
    // The first attempt timed out after 1000 ms; the retry was in flight when the deadline cut
    // the request off, and no third attempt followed.
    assert_eq!(h.op_count("payment.transactions.get").await, 2);
    h.stop().await;
}

/// A separate sandbox process and a gateway process configured by `edit` (on the text of
/// [`gateway_config`]); returns the sandbox, its address and the config file.
fn processes(dir: &Path, edit: impl FnOnce(String) -> String) -> (Running, String, String) {
    let (sandbox, addrs) = spawn(&["sandbox", "--listen", "127.0.0.1:0"], &["sandbox"]);
    let cfg = gateway_config(dir, &addrs["sandbox"]);
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, edit(text)).unwrap();
    (
        sandbox,
        addrs["sandbox"].clone(),
        cfg.to_str().unwrap().to_owned(),
    )
}

fn cancel(
    http: &reqwest::Client,
    proxy: &str,
    tx: &str,
    body: &'static str,
) -> reqwest::RequestBuilder {
    http.post(format!("http://{proxy}{TX_PATH}/{tx}/cancellations"))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(body)
}

/// Waits (bounded; the poll only paces the checks) until the sandbox counted `n` calls of `op`.
async fn until_sandbox_counted(http: &reqwest::Client, sandbox: &str, op: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while sandbox_stats(http, sandbox).await["requests"][op].as_u64() < Some(n) {
        assert!(Instant::now() < deadline, "{op} never reached the sandbox");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The intent and outcome records (the log's start, stop and checkpoint records left out).
fn audit_records(dir: &Path) -> Vec<Value> {
    all_audit_records(dir)
        .into_iter()
        .filter(|r| r["kind"] == "intent" || r["kind"] == "outcome")
        .collect()
}

fn all_audit_records(dir: &Path) -> Vec<Value> {
    let mut records = Vec::new();
    for file in ratepay_gateway::audit::log_files(dir.join("audit")).unwrap() {
        for line in std::fs::read_to_string(file).unwrap().lines() {
            records.push(serde_json::from_str(line).unwrap());
        }
    }
    records
}

fn verify_audit(dir: &Path) -> String {
    let out = Command::new(BIN)
        .args(["audit", "verify"])
        .arg(dir.join("audit"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chain verifies: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_request_longer_than_the_grace_exits_when_the_grace_is_over() {
    let dir = tempfile::tempdir().unwrap();
    let (_sandbox, sandbox, cfg) = processes(dir.path(), |t| {
        assert!(t.contains("shutdown_grace_ms = 10000"));
        t.replace("shutdown_grace_ms = 10000", "shutdown_grace_ms = 1000")
    });
    let (mut gateway, addrs) = spawn(&["serve", "--config", &cfg], &["proxy"]);
    let proxy = addrs["proxy"].clone();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let tx = authorize(&http, &proxy, 100).await;
    // The cancellation stays at the sandbox for 8 s, far past the 1 s grace.
    sandbox_fault(
        &http,
        &sandbox,
        json!({"operation": CANCEL_OP, "latency_ms": 8000, "count": 1}),
    )
    .await;
    let in_flight = {
        let rb = cancel(&http, &proxy, &tx, r#"{"gross_amount": 1}"#);
        tokio::spawn(async move { rb.send().await.map(|r| r.status().as_u16()) })
    };
    until_sandbox_counted(&http, &sandbox, CANCEL_OP, 1).await;

    let term = Instant::now();
    signal(&gateway, "TERM");
    let status = gateway.0.wait().unwrap();
    let took = term.elapsed();
    assert!(status.success(), "exit 0 after the grace: {status:?}");
    assert!(
        took >= Duration::from_millis(1000),
        "exited after {took:?}, before the 1000 ms grace was over"
    );
    assert!(
        took < Duration::from_millis(6000),
        "exited after {took:?}: it waited for the request instead of the grace"
    );
    let answer = in_flight.await.unwrap();
    assert!(
        answer.is_err(),
        "the in-flight request is cut off, not answered: {answer:?}"
    );
    // The cut-off cancellation's intent is closed at shutdown as unknown.
    let records = audit_records(dir.path());
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(
        (&records[0]["kind"], &records[1]["kind"]),
        (&json!("intent"), &json!("outcome"))
    );
    assert_eq!(records[1]["intent_seq"], records[0]["seq"]);
    assert_eq!(records[1]["outcome"], "unknown");
    assert_eq!(
        records[1]["error"].as_str().unwrap(),
        ratepay_gateway::audit::SHUT_DOWN
    );
    // A clean stop: the log ends with a stop record and the checkpoint signing it.
    assert_eq!(
        common::kinds_of(&all_audit_records(dir.path())),
        [
            "start",
            "checkpoint",
            "intent",
            "outcome",
            "stop",
            "checkpoint"
        ]
    );
    assert!(verify_audit(dir.path()).contains("6 records"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intent_a_killed_gateway_left_open_is_settled_success_before_the_listeners_open() {
    let dir = tempfile::tempdir().unwrap();
    let (_sandbox, sandbox, cfg) = processes(dir.path(), |t| t);
    let (mut gateway, addrs) = spawn(&["serve", "--config", &cfg], &["proxy"]);
    let proxy = addrs["proxy"].clone();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let tx = authorize(&http, &proxy, 100).await;

    // A cancellation the sandbox holds for 3 s before executing it.
    sandbox_fault(
        &http,
        &sandbox,
        json!({"operation": CANCEL_OP, "latency_ms": 3000, "count": 1}),
    )
    .await;
    let cut = {
        let rb = cancel(
            &http,
            &proxy,
            &tx,
            r#"{"gross_amount": 2.50, "partner_operation_id": "op-killed-1"}"#,
        );
        tokio::spawn(async move { rb.send().await.map(|r| r.status().as_u16()) })
    };
    until_sandbox_counted(&http, &sandbox, CANCEL_OP, 1).await;
    // Freeze the gateway while the call is at the sandbox: it can write nothing more, while its
    // connection stays open so the sandbox executes the cancellation. Then kill it.
    signal(&gateway, "STOP");
    let token = sandbox_token(&http, &sandbox).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let cancellation_id = loop {
        let list: Value = http
            .get(format!("http://{sandbox}{TX_PATH}/{tx}/cancellations"))
            .bearer_auth(&token)
            .header("x-partner", "burst")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let items = list["_embedded"]["cancellations"].as_array().cloned();
        if let Some(c) = items
            .unwrap_or_default()
            .iter()
            .find(|c| c["partner_operation_id"] == "op-killed-1")
        {
            break c["ratepay_cancellation_id"].as_str().unwrap().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the sandbox never executed the cancellation"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    gateway.0.kill().unwrap();
    gateway.0.wait().unwrap();
    assert!(
        cut.await.unwrap().is_err(),
        "a killed gateway answers nothing"
    );
    let left = audit_records(dir.path());
    assert_eq!(left.len(), 1, "only the intent was written: {left:?}");
    assert_eq!(left[0]["kind"], "intent");
    assert_eq!(left[0]["partner_operation_id"], "op-killed-1");

    // Recovery asks Ratepay for the transaction's cancellations; the sandbox takes 1.5 s to
    // answer that, so a listener opened before recovery was done would be announced first.
    sandbox_fault(
        &http,
        &sandbox,
        json!({"operation": "payment.cancellations.list", "latency_ms": 1500, "count": 1}),
    )
    .await;
    let lookups = |http: &reqwest::Client| {
        let (http, sandbox) = (http.clone(), sandbox.clone());
        async move {
            sandbox_stats(&http, &sandbox).await["requests"]["payment.cancellations.list"]
                .as_u64()
                .unwrap_or(0)
        }
    };
    let lookups_before = lookups(&http).await;
    let restarted = Instant::now();
    let (_gateway, addrs) = spawn(&["serve", "--config", &cfg], &["proxy"]);
    let announced = restarted.elapsed();
    // The moment the listener is announced, the recovery outcome is already on disk.
    let records = audit_records(dir.path());
    assert_eq!(
        records.len(),
        2,
        "the recovery outcome precedes the listening line: {records:?}"
    );
    let settled = &records[1];
    assert_eq!(settled["kind"], "outcome");
    assert_eq!(settled["intent_seq"], left[0]["seq"]);
    assert_eq!(settled["outcome"], "success");
    assert_eq!(settled["ratepay_cancellation_id"], cancellation_id.as_str());
    assert!(
        settled["error"]
            .as_str()
            .unwrap()
            .contains("settled from Ratepay's cancellations list by partner_operation_id"),
        "{settled}"
    );
    assert!(
        announced >= Duration::from_millis(1500),
        "announced after {announced:?}, before Ratepay answered the recovery lookup"
    );
    assert_eq!(
        lookups(&http).await,
        lookups_before + 1,
        "recovery asked Ratepay once"
    );

    // The first request served after the restart is recorded after the recovery.
    let proxy = addrs["proxy"].clone();
    let r = cancel(&http, &proxy, &tx, r#"{"gross_amount": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let records = all_audit_records(dir.path());
    // The killed run has no stop record; each start is signed by a checkpoint at once.
    assert_eq!(
        common::kinds_of(&records),
        [
            "start",
            "checkpoint",
            "intent",
            "start",
            "checkpoint",
            "outcome",
            "intent",
            "outcome"
        ]
    );
    let seqs: Vec<_> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=8).collect::<Vec<_>>());
    assert!(verify_audit(dir.path()).contains("8 records"));
}
