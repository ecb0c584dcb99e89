//! Secrets and tokens never reach the logs: the suite's kind of traffic runs with every target at
//! TRACE into a buffer, which is then scanned for each secret and for any JWT.

mod common;

use common::{keys, Harness, LogBuffer, TX_PATH};
use ratepay_gateway::logging::{self, LogFormat};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn trace_logs_contain_no_secret_and_no_token() {
    let buf = LogBuffer::default();
    let writer = buf.clone();
    // The gateway's own subscriber (text, as the binary writes it), every target at TRACE.
    let subscriber = logging::subscriber(
        LogFormat::Text,
        tracing_subscriber::EnvFilter::new("trace"),
        false,
        move || writer.clone(),
    );
    tracing::subscriber::set_global_default(subscriber).unwrap();

    // Checkpoints signed with a key of their own (its seed must not show up either).
    let key_dir = tempfile::tempdir().unwrap();
    let (der, _) = ratepay_gateway::audit::SigningKey::generate().unwrap();
    let der = secrecy::ExposeSecret::expose_secret(&der).to_vec();
    let key_file = key_dir.path().join("audit-signing.key");
    std::fs::write(&key_file, &der).unwrap();
    let h = Harness::with(common::Options {
        audit_toml: format!("signing_key_file = {:?}", key_file.display().to_string()),
        ..common::Options::default()
    })
    .await;
    let tx = h.authorize(keys::FULL, None, 100.0).await;
    // Gateway-issued token flow.
    let r = h
        .http
        .post(h.url("/oauth/token"))
        .json(&json!({"client_id": "svc-client", "client_secret": common::SVC_SECRET, "audience": common::PAYMENT_AUD, "grant_type": "client_credentials"}))
        .send()
        .await
        .unwrap();
    let gw_token = r.json::<serde_json::Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = h
        .http
        .get(h.url(&format!("{TX_PATH}/{tx}")))
        .bearer_auth(&gw_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A 401 from Ratepay, refresh and replay.
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
        .json(&json!({"gross_amount": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // Refusals.
    h.req(Method::GET, &format!("{TX_PATH}/{tx}"), "wrong-key")
        .send()
        .await
        .unwrap();
    h.req(Method::GET, &format!("{TX_PATH}/{tx}"), keys::READER)
        .send()
        .await
        .unwrap();
    h.http.post(h.url("/oauth/token")).json(&json!({"client_id": "svc-client", "client_secret": "bad-secret-value", "audience": common::PAYMENT_AUD, "grant_type": "client_credentials"})).send().await.unwrap();
    // Token endpoint failing.
    h.fault(json!({"operation": "oauth.token", "status": 500, "count": 5}))
        .await;
    h.http
        .post(format!("{}/_sandbox/tokens/revoke", h.sandbox.url()))
        .send()
        .await
        .unwrap();
    h.req(Method::GET, &format!("{TX_PATH}/{tx}"), keys::FULL)
        .send()
        .await
        .unwrap();
    h.stop().await;

    let logs = buf.text();
    assert!(logs.lines().count() > 20, "the scan saw real log output");
    assert!(
        logs.contains("ratepay_gateway::access"),
        "access records present"
    );
    assert!(
        logs.contains("audit checkpoint"),
        "signed checkpoints were logged"
    );
    let seed = &der[16..48];
    for form in [
        hex::encode(seed),
        hex::encode(&der),
        format!("{:?}", &seed[..8]),
    ] {
        assert!(!logs.contains(&form), "the audit signing key found in logs");
    }
    for secret in [
        common::RATEPAY_SECRET,
        common::SVC_SECRET,
        "bad-secret-value",
        keys::FULL,
        keys::READER,
        "wrong-key",
        "test-gateway-signing-key",
        &gw_token,
    ] {
        assert!(!logs.contains(secret), "secret {secret:.6}… found in logs");
    }
    // Every JWT (ours or Ratepay's) starts with a base64url '{"' header.
    assert!(!logs.contains("eyJ"), "a JWT found in logs");
}
