//! End to end: Idempotency-Key handling, safe retries, and the audit log of cancellations.

mod common;

use std::process::Command;

use common::{keys, problem, scoped_key, Harness, Options, TX_PATH};
use reqwest::Method;
use serde_json::Value;

const CANCEL_OP: &str = "payment.cancellations.create";

fn cancel_path(tx: &str) -> String {
    format!("{TX_PATH}/{tx}/cancellations")
}

async fn cancel(
    h: &Harness,
    key: &str,
    tx: &str,
    body: &str,
    idem: Option<&str>,
) -> reqwest::Response {
    let mut rb = h
        .req(Method::POST, &cancel_path(tx), key)
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(k) = idem {
        rb = rb.header("idempotency-key", k);
    }
    rb.send().await.unwrap()
}

async fn cancellations_at_ratepay(h: &Harness, tx: &str) -> usize {
    let r = h
        .req(Method::GET, &cancel_path(tx), keys::FULL)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    body["_embedded"]["cancellations"]
        .as_array()
        .map_or(0, |a| a.len())
}

#[tokio::test]
async fn a_key_is_generated_when_missing_and_the_callers_key_is_echoed() {
    let h = Harness::start().await;
    let tx = h.authorize(keys::FULL, None, 100.0).await;
    let r = cancel(&h, keys::FULL, &tx, r#"{"gross_amount": 1}"#, None).await;
    assert_eq!(r.status(), 201);
    let generated = r.headers()["idempotency-key"].to_str().unwrap().to_owned();
    let uuid = uuid::Uuid::parse_str(&generated).expect("a UUID");
    assert_eq!(uuid.get_version_num(), 4);

    let r = cancel(
        &h,
        keys::FULL,
        &tx,
        r#"{"gross_amount": 1}"#,
        Some("order-4711-cancel"),
    )
    .await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["idempotency-key"], "order-4711-cancel");
}

#[tokio::test]
async fn invalid_keys_are_refused_before_ratepay() {
    let h = Harness::start().await;
    let tx = h.authorize(keys::FULL, None, 100.0).await;
    let before = h.op_count(CANCEL_OP).await;
    for bad in [
        "a".repeat(65),
        "with space".to_owned(),
        "tab\there".to_owned(),
    ] {
        let r = cancel(&h, keys::FULL, &tx, r#"{"gross_amount": 1}"#, Some(&bad)).await;
        let body = problem(r, 400).await;
        assert!(body["detail"].as_str().unwrap().contains("Idempotency-Key"));
    }
    let r = h
        .req(Method::POST, &cancel_path(&tx), keys::FULL)
        .header(
            "idempotency-key",
            reqwest::header::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
        )
        .body(r#"{"gross_amount": 1}"#)
        .send()
        .await
        .unwrap();
    problem(r, 400).await;
    assert_eq!(h.op_count(CANCEL_OP).await, before);
}

#[tokio::test]
async fn concurrent_duplicates_execute_once_and_get_identical_answers() {
    let h = Harness::start().await;
    let tx = h.authorize(keys::FULL, None, 100.0).await;
    // Keep the first call in flight while the duplicates arrive.
    h.fault(serde_json::json!({"operation": CANCEL_OP, "latency_ms": 300, "count": 1}))
        .await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let rb = h
            .req(Method::POST, &cancel_path(&tx), keys::FULL)
            .header("idempotency-key", "dup-key-1")
            .header("content-type", "application/json")
            .body(r#"{"gross_amount": 7.25}"#);
        tasks.push(tokio::spawn(async move {
            let r = rb.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }));
    }
    let mut bodies = Vec::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 201, "{body}");
        bodies.push(body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "identical answers");
    assert_eq!(h.op_count(CANCEL_OP).await, 1, "one upstream execution");
    assert_eq!(cancellations_at_ratepay(&h, &tx).await, 1);

    // Completed: a later duplicate is replayed by the gateway; another body is a 409.
    let r = cancel(
        &h,
        keys::FULL,
        &tx,
        r#"{"gross_amount": 7.25}"#,
        Some("dup-key-1"),
    )
    .await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    assert_eq!(r.text().await.unwrap(), bodies[0]);
    let r = cancel(
        &h,
        keys::FULL,
        &tx,
        r#"{"gross_amount": 8}"#,
        Some("dup-key-1"),
    )
    .await;
    let body = problem(r, 409).await;
    assert!(body["detail"].as_str().unwrap().contains("new key"));
    assert_eq!(h.op_count(CANCEL_OP).await, 1, "neither reached Ratepay");
}

#[tokio::test]
async fn the_same_key_from_two_callers_never_collides() {
    let h = Harness::start().await;
    let tx1 = h.authorize(keys::FULL, None, 100.0).await;
    let tx2 = h.authorize(keys::CHOOSER, Some("p-a"), 100.0).await;
    let r = cancel(
        &h,
        keys::FULL,
        &tx1,
        r#"{"gross_amount": 1}"#,
        Some("shared"),
    )
    .await;
    assert_eq!(r.status(), 201);
    let r = h
        .req(Method::POST, &cancel_path(&tx2), keys::CHOOSER)
        .header("x-partner", "p-a")
        .header("idempotency-key", "shared")
        .header("content-type", "application/json")
        .body(r#"{"gross_amount": 2}"#)
        .send()
        .await
        .unwrap();
    let status = r.status();
    assert_eq!(
        status,
        201,
        "no 409 from Ratepay: the upstream keys differ: {}",
        r.text().await.unwrap()
    );
    assert_eq!(h.op_count(CANCEL_OP).await, 2);
    // Ratepay saw each caller's scoped form of the shared key, not the key itself.
    assert_eq!(
        h.idempotency_keys(CANCEL_OP).await,
        [
            scoped_key("full", "shared"),
            scoped_key("chooser", "shared")
        ]
    );
}

#[tokio::test]
async fn a_503_is_retried_with_the_same_key_and_cancels_once() {
    let h = Harness::start().await;
    let tx = h.authorize(keys::FULL, None, 100.0).await;
    h.fault(serde_json::json!({"operation": CANCEL_OP, "status": 503, "count": 1}))
        .await;
    let r = cancel(&h, keys::FULL, &tx, r#"{"gross_amount": 3}"#, None).await;
    assert_eq!(r.status(), 201);
    let generated = r.headers()["idempotency-key"].to_str().unwrap().to_owned();
    assert_eq!(
        h.op_count(CANCEL_OP).await,
        2,
        "first attempt 503, second 201"
    );
    // The fault answered the first attempt before the sandbox's idempotency store saw it, so
    // "cancels once" alone would also hold for a retry under a new key: the keys prove it.
    let upstream = scoped_key("full", &generated);
    assert_eq!(
        h.idempotency_keys(CANCEL_OP).await,
        [upstream.clone(), upstream.clone()],
        "both attempts carried the scoped form of the key the caller got back"
    );
    assert_eq!(cancellations_at_ratepay(&h, &tx).await, 1);
    let records = h.audit_records();
    assert_eq!(records[0]["idempotency_key"], upstream.as_str());
    let outcome = records.iter().find(|r| r["kind"] == "outcome").unwrap();
    assert_eq!(outcome["attempts"], 2);
    assert_eq!(outcome["status"], 201);
}

#[tokio::test]
async fn client_errors_are_not_retried_and_declines_are_audited_as_failures() {
    let h = Harness::start().await;
    let tx = h.authorize(keys::FULL, None, 10.0).await;
    let r = cancel(&h, keys::FULL, &tx, r#"{"gross_amount": 50}"#, None).await;
    assert_eq!(r.status(), 422);
    assert_eq!(h.op_count(CANCEL_OP).await, 1);
    let records = h.audit_records();
    assert_eq!(records.len(), 2);
    assert_eq!(records[1]["outcome"], "failure");
    assert_eq!(records[1]["status"], 422);
}

#[tokio::test]
async fn audit_records_success_with_exact_amount_and_ids() {
    let h = Harness::start().await;
    let tx = h.authorize(keys::FULL, None, 100.0).await;
    let r = cancel(
        &h,
        keys::FULL,
        &tx,
        r#"{"gross_amount": 10.50, "partner_operation_id": "op-1"}"#,
        Some("k-audit"),
    )
    .await;
    assert_eq!(r.status(), 201);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = r.json().await.unwrap();
    let records = h.audit_records();
    assert_eq!(records.len(), 2, "{records:?}");
    let (intent, outcome) = (&records[0], &records[1]);
    assert_eq!(intent["kind"], "intent");
    assert_eq!(intent["caller"], "full");
    assert_eq!(intent["source"], "127.0.0.1");
    assert_eq!(intent["operation"], CANCEL_OP);
    assert_eq!(intent["ratepay_transaction_id"], tx.as_str());
    assert_eq!(intent["partner"], "p-fixed");
    assert_eq!(intent["gross_amount"], "10.50", "the exact decimal text");
    assert_eq!(intent["partner_operation_id"], "op-1");
    assert_eq!(intent["request_id"], rid.as_str());
    // The README's formula, computed here: hex(SHA-256("<caller>:<key>")), and exactly what
    // Ratepay received.
    let upstream = scoped_key("full", "k-audit");
    assert_eq!(
        intent["idempotency_key"], upstream,
        "the scoped key sent upstream"
    );
    assert_eq!(h.idempotency_keys(CANCEL_OP).await, [upstream]);
    assert_eq!(outcome["outcome"], "success");
    assert_eq!(outcome["intent_seq"], intent["seq"]);
    assert_eq!(
        outcome["ratepay_cancellation_id"],
        body["ratepay_cancellation_id"]
    );
    let line = std::fs::read_to_string(h.audit_path()).unwrap();
    assert!(
        !line.contains(keys::FULL) && !line.contains("eyJ"),
        "no credential in the audit log"
    );

    // Non-audited calls write nothing.
    h.req(Method::GET, &format!("{TX_PATH}/{tx}"), keys::FULL)
        .send()
        .await
        .unwrap();
    assert_eq!(h.audit_records().len(), 2);
}

#[tokio::test]
async fn upstream_failure_is_audited_after_the_retries() {
    let h = Harness::start().await;
    let tx = h.authorize(keys::FULL, None, 100.0).await;
    h.fault(serde_json::json!({"operation": CANCEL_OP, "status": 500, "count": 10}))
        .await;
    let r = cancel(&h, keys::FULL, &tx, r#"{"gross_amount": 1}"#, None).await;
    assert_eq!(r.status(), 500);
    let records = h.audit_records();
    assert_eq!(records[1]["outcome"], "failure");
    assert_eq!(records[1]["status"], 500);
    assert_eq!(records[1]["attempts"], 3);
}

#[tokio::test]
async fn an_unwritable_audit_log_refuses_cancellations_and_nothing_else() {
    let h = Harness::start().await;
    let tx = h.authorize(keys::FULL, None, 100.0).await;
    let sandbox = ratepay_gateway::sandbox::spawn(common::sandbox_config(
        std::time::Duration::from_secs(600),
    ))
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // /dev/full accepts the open and fails every write with ENOSPC, like a full disk.
    let text = common::config_text(dir.path(), &sandbox.url(), &Options::default()).replace(
        &format!("{}", dir.path().join("audit.jsonl").display()),
        "/dev/full",
    );
    let config =
        ratepay_gateway::config::Config::from_toml(&text, std::path::Path::new("t.toml")).unwrap();
    let g = Harness::serve(sandbox, dir, config).await;
    let tx2 = g.authorize(keys::FULL, None, 100.0).await;
    let r = cancel(&g, keys::FULL, &tx2, r#"{"gross_amount": 1}"#, None).await;
    let body = problem(r, 503).await;
    assert!(body["type"]
        .as_str()
        .unwrap()
        .ends_with("audit-unavailable"));
    assert_eq!(g.op_count(CANCEL_OP).await, 0, "not forwarded");
    // A failed write is a state of its own: refusing until a probe succeeds, not poisoned.
    let metrics = g.scrape_metrics().await;
    let m = |name: &str| common::metric(&metrics, &format!("ratepay_gateway_{name}"));
    assert_eq!(m("audit_write_failed"), Some(1.0), "{metrics}");
    assert_eq!(m("audit_write_errors_total"), Some(1.0), "{metrics}");
    assert_eq!(m("audit_recoveries_total"), Some(0.0), "{metrics}");
    assert_eq!(m("audit_poisoned"), Some(0.0), "{metrics}");
    // Reads are not audited and keep working.
    let r = g
        .req(Method::GET, &format!("{TX_PATH}/{tx2}"), keys::FULL)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(tx);
}

#[tokio::test]
async fn audit_verify_cli_accepts_a_clean_log_and_names_a_changed_line() {
    let h = Harness::start().await;
    let tx = h.authorize(keys::FULL, None, 100.0).await;
    for amount in ["1.00", "2.00", "3.00"] {
        let r = cancel(
            &h,
            keys::FULL,
            &tx,
            &format!(r#"{{"gross_amount": {amount}}}"#),
            None,
        )
        .await;
        assert_eq!(r.status(), 201);
    }
    let path = h.audit_path();
    let bin = env!("CARGO_BIN_EXE_ratepay-gateway");
    let ok = Command::new(bin)
        .args(["audit", "verify"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // The six records of the three calls, after the start record and its checkpoint.
    assert!(String::from_utf8_lossy(&ok.stdout).contains("8 records"));

    let text = std::fs::read_to_string(&path).unwrap();
    let tampered = text.replacen("\"gross_amount\":\"2.00\"", "\"gross_amount\":\"0.02\"", 1);
    assert_ne!(text, tampered);
    std::fs::write(&path, tampered).unwrap();
    let bad = Command::new(bin)
        .args(["audit", "verify"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    // Line 5: the third record of the calls, after the start record and its checkpoint.
    assert!(err.contains(":5:"), "names line 5: {err}");
}
