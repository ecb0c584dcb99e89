//! Durability under a crash: the gateway process is killed (SIGKILL) during a burst of
//! cancellations and restarted. The audit chain must verify, every intent must be closed after
//! the restart, and every cancellation the sandbox accepted must have an intent record.

mod common;

use std::{collections::HashMap, process::Command, time::Duration};

use common::process::{authorize, cancel, gateway_config, spawn, BIN, KEY};
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

/// The records of every audit file in `dir`, in chain order.
fn records(dir: &std::path::Path) -> Vec<Value> {
    ratepay_gateway::audit::log_files(dir)
        .unwrap()
        .into_iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<Value>>()
        })
        .collect()
}

/// An outcome is answered once written (`audit.outcome_durability = "written"`, the default):
/// a gateway killed the moment its answer arrived has the outcome in its file already.
#[tokio::test]
async fn an_answered_cancellation_keeps_its_outcome_through_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let (_sandbox, addrs) = spawn(&["sandbox", "--listen", "127.0.0.1:0"], &["sandbox"]);
    let cfg = gateway_config(dir.path(), &addrs["sandbox"]);
    let (mut gateway, addrs) = spawn(&["serve", "--config", cfg.to_str().unwrap()], &["proxy"]);
    let proxy = addrs["proxy"].clone();
    let http = reqwest::Client::new();
    let tx = authorize(&http, &proxy, 1000).await;
    cancel(&http, &proxy, &tx).await;
    gateway.0.kill().unwrap();
    gateway.0.wait().unwrap();
    let records = records(&dir.path().join("audit"));
    let intent = records
        .iter()
        .find(|r| r["kind"] == "intent" && r["ratepay_transaction_id"] == tx.as_str())
        .expect("the intent");
    let outcome = records
        .iter()
        .find(|r| r["kind"] == "outcome" && r["intent_seq"] == intent["seq"])
        .expect("the outcome, written before the answer");
    assert_eq!(outcome["outcome"], "success", "{outcome}");
    assert_eq!(outcome["status"], 201, "{outcome}");
}

/// The scheduling policy of each of `pid`'s threads but the main one named `name`
/// (`/proc/PID/task/TID/stat` field 41; 3 is `SCHED_BATCH`).
fn policies(pid: u32, name: &str) -> Vec<u64> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        if task.ends_with(pid.to_string()) {
            continue;
        }
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.join("stat")).unwrap();
        // Fields after the `(comm)` start at field 3.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        found.push(after.split(' ').nth(41 - 3).unwrap().parse().unwrap());
    }
    found
}

/// The audit writer and the log writer never preempt a request thread (`crate::sched`).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_audit_and_log_writers_run_as_batch_threads() {
    let dir = tempfile::tempdir().unwrap();
    let (_sandbox, addrs) = spawn(&["sandbox", "--listen", "127.0.0.1:0"], &["sandbox"]);
    let cfg = gateway_config(dir.path(), &addrs["sandbox"]);
    let (gateway, _) = spawn(&["serve", "--config", cfg.to_str().unwrap()], &["proxy"]);
    let pid = gateway.0.id();
    // Both threads set their policy first thing, before the listeners were announced.
    assert_eq!(policies(pid, "audit-writer"), [3]);
    // The thread name `ratepay-gateway-log`, cut to the kernel's 15 bytes (as the main
    // thread's name is, which `policies` leaves out).
    assert_eq!(policies(pid, "ratepay-gateway"), [3]);
    // The request threads keep the default policy.
    let workers = policies(pid, "tokio-rt-worker");
    assert!(
        !workers.is_empty() && workers.iter().all(|p| *p == 0),
        "{workers:?}"
    );
}
