//! Metrics the README documents, asserted with the values the traffic determines: the request
//! latency histogram per operation and the audit log's record, sync and failure metrics. (The
//! audit metrics of a failed fsync, `audit_poisoned` 1 included, are asserted in
//! tests/audit_log.rs, which owns the tests that use `/dev/null` as a log.)

mod common;

use std::time::{Duration, Instant};

use common::{keys, metric, tx_path, Harness, Options, TX_PATH};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn request_duration_seconds_counts_and_sums_each_operations_requests() {
    let h = Harness::start().await;
    let tx = h.authorize(keys::FULL, None, 10.0).await;
    // Each of three reads waits 200 ms at the sandbox.
    h.fault(json!({"operation": "payment.transactions.get", "latency_ms": 200, "count": 3}))
        .await;
    let started = Instant::now();
    for _ in 0..3 {
        let r = h
            .req(Method::GET, &format!("{TX_PATH}/{tx}"), keys::FULL)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let wall = started.elapsed().as_secs_f64();
    // Unrouted requests have no operation, so no series.
    let r = h
        .req(Method::GET, "/nowhere", keys::FULL)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let text = h.scrape_metrics().await;
    let m = |suffix: &str| {
        metric(
            &text,
            &format!("ratepay_gateway_request_duration_seconds_{suffix}"),
        )
    };
    let get = "operation=\"payment.transactions.get\"";
    assert_eq!(m(&format!("count{{{get}}}")), Some(3.0), "{text}");
    let sum = m(&format!("sum{{{get}}}")).unwrap();
    assert!(
        (0.6..=wall).contains(&sum),
        "sum {sum} s: at least 3 × 200 ms, at most the {wall} s the three took"
    );
    // Buckets: none of the three below 102.4 ms, all three by +Inf.
    assert_eq!(
        m(&format!("bucket{{le=\"0.1024\",{get}}}")),
        Some(0.0),
        "{text}"
    );
    assert_eq!(m(&format!("bucket{{le=\"+Inf\",{get}}}")), Some(3.0));
    assert_eq!(
        m("count{operation=\"payment.transactions.create\"}"),
        Some(1.0)
    );
    assert!(!text.contains("request_duration_seconds_count{operation=\"-\"}"));
    assert_eq!(
        text.matches("ratepay_gateway_request_duration_seconds_count{")
            .count(),
        2,
        "one series per operation served: {text}"
    );
    h.stop().await;
}

#[tokio::test]
async fn audit_metrics_count_records_syncs_failures_and_the_last_sync() {
    // Every outcome synced before its answer, so that each record's sync is counted by the time
    // the call is answered (with "written", the default, the last outcome's sync comes from the
    // flush timer; tests/audit_log.rs covers that mode).
    let h = Harness::with_edited(Options::default(), |t| {
        t.replace("[audit]\n", "[audit]\noutcome_durability = \"synced\"\n")
    })
    .await;
    let scrape = || async {
        let text = h.scrape_metrics().await;
        move |name: &str| metric(&text, &format!("ratepay_gateway_{name}")).unwrap()
    };
    let m = scrape().await;
    // The start record and the checkpoint signing it, in one sync.
    assert_eq!(m("audit_records_total"), 2.0);
    assert_eq!(m("audit_syncs_total"), 1.0);
    for name in ["audit_failures_total", "audit_poisoned"] {
        assert_eq!(m(name), 0.0, "{name} before any audited call");
    }

    let tx = h.authorize(keys::FULL, None, 10.0).await;
    let mut slowest = Duration::ZERO;
    for _ in 0..3 {
        let started = Instant::now();
        let r = h
            .post_json(
                &tx_path(&tx, "cancellations"),
                keys::FULL,
                r#"{"gross_amount": 1}"#,
            )
            .await;
        assert_eq!(r.status(), 201);
        slowest = slowest.max(started.elapsed());
    }
    // Not audited: no record, no sync.
    let r = h
        .req(Method::GET, &format!("{TX_PATH}/{tx}"), keys::FULL)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let m = scrape().await;
    // One call at a time: its intent and its outcome are each synced on their own.
    assert_eq!(m("audit_records_total"), 8.0);
    assert_eq!(m("audit_syncs_total"), 7.0);
    assert_eq!(m("audit_failures_total"), 0.0);
    assert_eq!(m("audit_poisoned"), 0.0);
    assert_eq!(m("audit_write_failed"), 0.0);
    let last = m("audit_last_sync_seconds");
    assert!(
        last > 0.0 && last <= slowest.as_secs_f64(),
        "last sync {last} s: measured, and inside a call that took at most {slowest:?}"
    );
    let avg = m("audit_avg_sync_seconds");
    assert!(avg > 0.0 && avg <= slowest.as_secs_f64(), "{avg}");
    assert_eq!(h.audit_records().len(), 6);
    h.stop().await;
}
