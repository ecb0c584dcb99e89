//! One access record per request, with the fields an operator filters on: request id, caller,
//! operation, status, latency, upstream attempts, cache result and bytes.

mod common;

use common::{keys, Harness, LogBuffer, Options};
use ratepay_gateway::logging::{self, LogFormat};
use reqwest::Method;
use serde_json::Value;

#[tokio::test]
async fn access_records_carry_caller_operation_cache_result_and_bytes() {
    let buf = LogBuffer::default();
    let writer = buf.clone();
    // The gateway's own subscriber, as `--log-format json` installs it.
    let subscriber = logging::subscriber(
        LogFormat::Json,
        tracing_subscriber::EnvFilter::new("ratepay_gateway::access=info"),
        false,
        move || writer.clone(),
    );
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let h = Harness::with(Options {
        extra_toml: "[cache]\n".into(),
        ..Options::default()
    })
    .await;
    let sid = h.session(keys::FULL, None).await;
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

    let text = buf.text();
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
    assert_eq!(miss["level"], "INFO");
    assert_eq!(miss["message"], "request");
    assert_eq!(miss["method"], "GET");
    let stamp = miss["timestamp"].as_str().unwrap();
    assert!(
        stamp.len() == 27 && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
        "RFC 3339 UTC with microseconds: {stamp}"
    );
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
