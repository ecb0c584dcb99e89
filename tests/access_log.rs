//! One access record per request, with the fields an operator filters on: request id, caller,
//! operation, status, latency, upstream attempts, cache result and bytes.

mod common;

use std::sync::{Arc, Mutex};

use common::{keys, Harness, Options};
use reqwest::Method;
use serde_json::{json, Value};

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn access_records_carry_caller_operation_cache_result_and_bytes() {
    let buf = Buffer::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_env_filter("ratepay_gateway::access=info")
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let h = Harness::with(Options {
        extra_toml: "[cache]\n".into(),
        ..Options::default()
    })
    .await;
    let r = h
        .req(Method::POST, "/pps/api/v1/session", keys::FULL)
        .json(&json!({
            "order_data": {"shop_baskets": [{"gross_amount": 10.0}], "currency": "EUR",
                           "buyer": {"contact": {"email": "b@example.com"}}}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let sid = r.json::<Value>().await.unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut answers = Vec::new();
    for _ in 0..2 {
        let r = h
            .req(
                Method::GET,
                &format!("/pps/api/v1/session-record/{sid}"),
                keys::FULL,
            )
            .header("x-request-id", format!("access-test-{}", answers.len()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let len = r.bytes().await.unwrap().len() as u64;
        answers.push(len);
    }
    h.req(Method::GET, "/nowhere", "no-such-key")
        .send()
        .await
        .unwrap();
    h.stop().await;

    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON line"))
        .filter(|v| v["target"] == "ratepay_gateway::access")
        .collect();
    assert_eq!(records.len(), 4, "one record per request: {text}");
    let by_id = |id: &str| {
        records
            .iter()
            .find(|r| r["request_id"] == id)
            .unwrap_or_else(|| panic!("record {id} in {text}"))
    };
    let miss = by_id("access-test-0");
    assert_eq!(miss["caller"], "full");
    assert_eq!(miss["operation"], "hpp.session_records.get");
    assert_eq!(miss["status"], 200);
    assert_eq!(miss["cache"], "miss");
    assert_eq!(miss["upstream_attempts"], 1);
    assert_eq!(miss["bytes"], answers[0]);
    assert!(miss["latency_us"].as_u64().unwrap() > 0);
    let hit = by_id("access-test-1");
    assert_eq!(hit["cache"], "hit");
    assert_eq!(hit["upstream_attempts"], 0);
    assert_eq!(hit["bytes"], answers[1]);
    let unrouted = records.iter().find(|r| r["status"] == 404).unwrap();
    assert_eq!(unrouted["caller"], "-");
    assert_eq!(unrouted["operation"], "-");
    assert_eq!(unrouted["cache"], "-");
    assert_eq!(unrouted["path"], "/nowhere");
}
