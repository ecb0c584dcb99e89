//! The binary as a user runs it: `check-config`, and `serve` on config/local.toml with the demo
//! caller, exactly as the README's first command and curl.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

const BIN: &str = env!("CARGO_BIN_EXE_ratepay-gateway");

#[test]
fn check_config_accepts_local_and_rejects_a_broken_file_naming_the_key() {
    let ok = Command::new(BIN)
        .args(["check-config", "--config", "config/local.toml"])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(out.contains("[callers.demo]") && out.contains("[REDACTED]"));
    assert!(!out.contains("local-sandbox-secret"));

    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.toml");
    std::fs::write(
        &broken,
        "[listen]\nproxy = \"127.0.0.1:8080\"\nadmn = \"x\"\n",
    )
    .unwrap();
    let bad = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&broken)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("broken.toml") && err.contains("admn"), "{err}");
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `serve` and reads the `listening` lines until proxy and admin are known.
fn serve_local() -> (Running, String, String) {
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--config",
            "config/local.toml",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let running = Running(child);
    let (mut proxy, mut admin) = (String::new(), String::new());
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let parts: Vec<&str> = line.split(' ').collect();
        if let ["ratepay-gateway", "listening", name, addr] = parts[..] {
            match name {
                "proxy" => proxy = addr.to_owned(),
                "admin" => admin = addr.to_owned(),
                _ => {}
            }
        }
        if !proxy.is_empty() && !admin.is_empty() {
            break;
        }
    }
    assert!(
        !proxy.is_empty() && !proxy.ends_with(":0"),
        "proxy address announced"
    );
    (running, proxy, admin)
}

#[tokio::test]
async fn serve_local_toml_answers_the_readme_curl_with_the_demo_key() {
    let (_child, proxy, admin) = serve_local();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let r = http
        .post(format!("http://{proxy}/transaction/management/v2/transactions"))
        .bearer_auth("demo-key")
        .json(&serde_json::json!({
            "currency": "EUR",
            "buyer": {"first_name": "Test", "last_name": "Buyer", "contact": {"email": "buyer@example.com"}},
            "shop_baskets": [{"gross_amount": 25.5}]
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert!(r.headers().contains_key("x-request-id"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["ratepay_transaction_id"].is_string(), "{body}");
    let r = http
        .get(format!("http://{admin}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .get(format!("http://{admin}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
