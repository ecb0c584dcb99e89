//! The gateway built without the `sandbox` feature (CI: `cargo test --no-default-features
//! --test without_sandbox`): it still serves and forwards, and a configuration that asks for the
//! embedded sandbox is refused when it is loaded, naming the key. In the default build (the
//! sandbox compiled in) this file is empty.
#![cfg(not(feature = "sandbox"))]

#[allow(dead_code)]
#[path = "common/process.rs"]
mod process;
#[allow(dead_code)]
#[path = "common/upstream.rs"]
mod upstream;

use std::{io::Read, path::Path, process::Command, sync::mpsc, time::Duration};

use process::{spawn, Running, BIN, KEY};
use ratepay_gateway::config::Config;
use upstream::{json_answer, RawUpstream};

/// What every refusal says, wherever the configuration is loaded.
fn assert_refusal(message: &str) {
    assert!(
        message.contains("sandbox.embedded: this binary was built without the embedded sandbox")
            && message.contains("(cargo feature `sandbox`)"),
        "{message}"
    );
}

#[test]
fn a_configuration_embedding_the_sandbox_is_refused_at_load_naming_the_key() {
    let err = Config::from_file(Path::new("config/local.toml")).unwrap_err();
    let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["sandbox.embedded"], "the one problem of the file");
    assert_refusal(&err.to_string());
    assert!(err.to_string().starts_with("config/local.toml: "), "{err}");

    // `embedded = false` is accepted: the section alone asks for nothing.
    let text = std::fs::read_to_string("config/local.toml")
        .unwrap()
        .replace("embedded = true", "embedded = false");
    let c = Config::from_toml(&text, Path::new("config/local.toml")).unwrap();
    assert!(c.sandbox.is_none());

    let check = Command::new(BIN)
        .args(["check-config", "--config", "config/local.toml"])
        .output()
        .unwrap();
    assert!(!check.status.success());
    assert_refusal(&String::from_utf8_lossy(&check.stderr));
}

/// The README's first command, run by a binary without the sandbox: it exits at once with the
/// refusal (bounded wait: a binary that went on to serve would be killed and fail the test).
#[test]
fn serve_on_the_local_configuration_exits_with_the_refusal() {
    let mut child = Command::new(BIN)
        .args(["serve", "--config", "config/local.toml"])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut running = Running(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        let _ = tx.send(text);
    });
    let text = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("serve exits instead of serving");
    let status = running.0.wait().unwrap();
    assert!(!status.success());
    assert_refusal(&text);
    assert!(text.contains("error: config/local.toml: "), "{text}");

    let sub = Command::new(BIN).args(["sandbox"]).output().unwrap();
    assert!(!sub.status.success());
    assert!(
        String::from_utf8_lossy(&sub.stderr).contains("unrecognized subcommand 'sandbox'"),
        "{}",
        String::from_utf8_lossy(&sub.stderr)
    );
}

/// Without the sandbox the gateway is whole: it fetches a Ratepay token, injects it and
/// forwards. The upstream answers every request with the same JSON, which serves as the token
/// response and as the API answer.
#[tokio::test]
async fn the_gateway_serves_and_forwards_without_the_sandbox() {
    let body = r#"{"access_token":"upstream-token-1","expires_in":1800,"token_type":"Bearer"}"#;
    let up = RawUpstream::start(json_answer(200, body)).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "client-secret").unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[listen]
proxy = "127.0.0.1:0"
admin = "127.0.0.1:0"
[credentials.default]
token_url = "{up}/oauth/token"
client_id = "client"
client_secret_file = "{secret}"
[upstreams.payment]
url = "{up}"
audience = "payment-audience"
[callers.only]
api_key_sha256 = "{hash}"
operations = ["*"]
[audit]
path = "{audit}"
"#,
            up = up.url,
            secret = dir.path().join("secret").display(),
            audit = dir.path().join("audit").join("audit.jsonl").display(),
            hash = hex::encode(ratepay_gateway::config::sha256(KEY.as_bytes())),
        ),
    )
    .unwrap();
    let (_gateway, addrs) = spawn(
        &["serve", "--config", config.to_str().unwrap()],
        &["proxy", "admin"],
    );
    let http = reqwest::Client::new();
    let health = http
        .get(format!("http://{}/healthz", addrs["admin"]))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    let path = "/transaction/management/v2/transactions/tx-without-sandbox";
    let r = http
        .get(format!("http://{}{path}", addrs["proxy"]))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), body);
    let seen = up.seen();
    let token = seen
        .iter()
        .find(|s| s.path == "/oauth/token")
        .expect("a token fetch");
    assert_eq!(token.method, "POST");
    let call = seen.iter().find(|s| s.path == path).expect("the call");
    assert_eq!(call.method, "GET");
    assert_eq!(call.header("authorization"), ["Bearer upstream-token-1"]);
}
