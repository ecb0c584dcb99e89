//! Durability under a crash: the gateway process is killed (SIGKILL) during a burst of
//! cancellations and restarted. The audit chain must verify, every intent must be closed after
//! the restart, and every cancellation the sandbox accepted must have an intent record.

mod common;

use std::{collections::HashMap, process::Command, time::Duration};

use common::process::{authorize, gateway_config, spawn, BIN, KEY};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_burst_loses_no_audit_record() {
    let dir = tempfile::tempdir().unwrap();
    let (_sandbox, addrs) = spawn(
        &["sandbox", "--listen", "127.0.0.1:0", "--seed", "3"],
        &["sandbox"],
    );
    let sandbox = addrs["sandbox"].clone();
    let cfg = gateway_config(dir.path(), &sandbox);
    let cfg_s = cfg.to_str().unwrap();
    let (mut gateway, addrs) = spawn(&["serve", "--config", cfg_s], &["proxy"]);
    let proxy = addrs["proxy"].clone();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let base = format!("http://{proxy}/transaction/management/v2/transactions");

    let mut txs = Vec::new();
    for _ in 0..4 {
        txs.push(authorize(&http, &proxy, 1000).await);
    }
    let cancel = |i: usize| {
        http.post(format!("{base}/{}/cancellations", txs[i % txs.len()]))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(r#"{"gross_amount": 1.00}"#)
    };
    // First a quarter of the burst completes normally.
    for i in 0..50 {
        assert_eq!(cancel(i).send().await.unwrap().status(), 201);
    }
    // Then the sandbox holds every cancellation for a minute, so the rest is in flight (intent
    // written, call forwarded or about to be) when the kill lands, however long the burst takes
    // to arrive: no held call can be answered before the kill.
    let r = http
        .post(format!("http://{sandbox}/_sandbox/faults"))
        .json(&json!({"operation": "payment.cancellations.create", "latency_ms": 60_000}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let mut tasks = Vec::new();
    for i in 50..200 {
        let rb = cancel(i);
        tasks.push(tokio::spawn(async move {
            rb.send().await.map(|r| r.status().as_u16()).unwrap_or(0)
        }));
    }
    // Kill once the sandbox has received at least 100 of them, 150 in all (it counts before the
    // delay).
    let received = || async {
        let stats: Value = http
            .get(format!("http://{sandbox}/_sandbox/stats"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        stats["requests"]["payment.cancellations.create"]
            .as_u64()
            .unwrap_or(0)
    };
    let give_up = std::time::Instant::now() + Duration::from_secs(30);
    while received().await < 150 {
        assert!(
            std::time::Instant::now() < give_up,
            "the burst never reached the sandbox"
        );
        // Pacing of the poll only.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gateway.0.kill().unwrap();
    gateway.0.wait().unwrap();
    for t in tasks {
        let status = t.await.unwrap();
        assert_ne!(status, 201, "no answer can come from a killed gateway");
    }
    // Clear the fault for the checks below (calls still held stay held until the test ends).
    let r = http
        .delete(format!("http://{sandbox}/_sandbox/faults"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());

    // Restart: recovery closes the intents the killed process left open.
    let (_gateway2, addrs) = spawn(&["serve", "--config", cfg_s], &["proxy"]);
    let proxy2 = addrs["proxy"].clone();
    let audit_dir = dir.path().join("audit");
    let verify = Command::new(BIN)
        .args(["audit", "verify"])
        .arg(&audit_dir)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "chain verifies: {}",
        String::from_utf8_lossy(&verify.stderr)
    );

    let mut intents: HashMap<String, usize> = HashMap::new();
    let mut open: HashMap<u64, bool> = HashMap::new();
    for file in ratepay_gateway::audit::log_files(&audit_dir).unwrap() {
        for line in std::fs::read_to_string(file).unwrap().lines() {
            let rec: Value = serde_json::from_str(line).unwrap();
            if rec["kind"] != "intent" && rec["kind"] != "outcome" {
                continue;
            }
            if rec["kind"] == "intent" {
                *intents
                    .entry(rec["ratepay_transaction_id"].as_str().unwrap().to_owned())
                    .or_default() += 1;
                open.insert(rec["seq"].as_u64().unwrap(), true);
            } else {
                open.remove(&rec["intent_seq"].as_u64().unwrap());
                if rec["outcome"] == "unknown" {
                    // Recovery asked Ratepay and wrote down what it lists.
                    let error = rec["error"].as_str().unwrap_or("");
                    assert!(error.contains("Ratepay lists"), "{error}");
                }
            }
        }
    }
    assert!(
        open.is_empty(),
        "every intent has an outcome after the restart: {open:?}"
    );
    let mut accepted_total = 0;
    for tx in &txs {
        let r = http
            .get(format!(
                "http://{proxy2}/transaction/management/v2/transactions/{tx}/cancellations"
            ))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        let accepted = body["_embedded"]["cancellations"]
            .as_array()
            .map_or(0, |a| a.len());
        accepted_total += accepted;
        let recorded = intents.get(tx).copied().unwrap_or(0);
        assert!(
            accepted <= recorded,
            "{tx}: {accepted} cancellations at Ratepay but {recorded} intents"
        );
    }
    assert!(
        accepted_total >= 50,
        "the burst really cancelled before the kill: {accepted_total}"
    );
}
