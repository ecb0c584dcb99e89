//! The binary as a user runs it: `check-config`, and `serve` on config/local.toml with the demo
//! caller, exactly as the README's first command and curl.

mod common;

use std::{path::Path, process::Command, time::Duration};

use common::process::{spawn_in, Running, BIN};

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

/// `check-config` and `serve` refuse a file with three mistakes naming all three, one per line.
#[test]
fn a_broken_file_is_refused_with_every_problem_listed() {
    let mut broken = std::fs::read_to_string("config/local.toml").unwrap();
    for (good, bad) in [
        ("proxy = \"127.0.0.1:8080\"", "proxy = \"nonsense\""),
        ("connect_timeout_ms = 2000", "connect_timeout_ms = 0"),
        ("lifetime_secs = 900", "lifetime_secs = 0"),
    ] {
        assert!(broken.contains(good), "config/local.toml has {good}");
        broken = broken.replacen(good, bad, 1);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, broken).unwrap();
    let file = path.display().to_string();
    for command in ["check-config", "serve"] {
        let out = Command::new(BIN)
            .args([command, "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{command}");
        let err = String::from_utf8_lossy(&out.stderr);
        let problems: Vec<&str> = err
            .lines()
            .map(|l| l.trim_start_matches("error: "))
            .filter(|l| l.starts_with(&format!("{file}: ")))
            .collect();
        assert_eq!(problems.len(), 3, "{command}: {err}");
        for (line, key) in problems.iter().zip([
            "listen.proxy",
            "upstream_client",
            "gateway_tokens.lifetime_secs",
        ]) {
            assert!(
                line.starts_with(&format!("{file}: {key}: ")),
                "{command}: {err}"
            );
        }
    }
}

/// A working directory holding a copy of config/local.toml and the files it names, laid out
/// as in the repository, so that `serve` runs exactly as from the repository root while the
/// files it writes (the audit log under `var/audit/`) stay out of the repository.
fn local_checkout() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("config/local");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::copy("config/local.toml", dir.path().join("config/local.toml")).unwrap();
    for entry in std::fs::read_dir("config/local").unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), local.join(entry.file_name())).unwrap();
    }
    dir
}

/// Starts `serve` on config/local.toml in `cwd` with ports 0; returns the proxy and admin
/// addresses.
fn serve_local(cwd: &Path) -> (Running, String, String) {
    let (running, addrs) = spawn_in(
        cwd,
        &[
            "serve",
            "--config",
            "config/local.toml",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        &["proxy", "admin"],
    );
    assert!(!addrs["proxy"].ends_with(":0"), "port 0 resolved");
    (running, addrs["proxy"].clone(), addrs["admin"].clone())
}

#[tokio::test]
async fn serve_local_toml_answers_the_readme_curl_with_the_demo_key() {
    let cwd = local_checkout();
    let (_child, proxy, admin) = serve_local(cwd.path());
    // The audit log went where local.toml says, relative to the working directory.
    let audit = cwd.path().join("var/audit/audit.jsonl");
    assert!(audit.is_file(), "{} exists", audit.display());
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
