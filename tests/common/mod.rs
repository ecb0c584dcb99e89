//! Shared harness for end-to-end tests: the sandbox and the gateway on 127.0.0.1:0, a real
//! HTTP client, and the sandbox's counters.
#![allow(dead_code)]

pub mod custom;
pub mod process;
pub mod redis_server;
pub mod upstream;

use std::{path::Path, time::Duration};

use ratepay_gateway::{
    config::Config,
    gateway::Gateway,
    reload::LiveGateway,
    sandbox::{self, SandboxAudiences, SandboxClient, SandboxConfig, SandboxHandle},
    server,
};
use serde_json::{json, Value};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

pub const PAYMENT_AUD: &str = "https://api-integration.ratepay.com/transaction/management";
pub const STATUS_AUD: &str =
    "https://api-integration.ratepay.com/transaction/status/v2/transactions";
pub const HPP_AUD: &str = "https://payment-integration.ratepay.com";
pub const RATEPAY_SECRET: &str = "test-ratepay-client-secret-5f1c";
pub const SVC_SECRET: &str = "svc-client-secret-9a7e";
pub const TX_PATH: &str = "/transaction/management/v2/transactions";

/// The API keys of the test callers.
pub mod keys {
    /// All operations, fixed partner `p-fixed`.
    pub const FULL: &str = "full-key-0001";
    /// All operations, chooses `p-a` or `p-b`.
    pub const CHOOSER: &str = "chooser-key-0002";
    /// Only session records, partner `p-fixed`.
    pub const READER: &str = "reader-key-0003";
    /// All operations, no partner.
    pub const NOPARTNER: &str = "nopartner-key-0004";
}

/// Knobs for one harness.
pub struct Options {
    pub token_lifetime: Duration,
    pub request_timeout_ms: u64,
    pub tokens_toml: String,
    /// Lines of the `[audit]` section; the log file is always `<tempdir>/audit.jsonl`.
    pub audit_toml: String,
    /// Lines of the `[retry]` section.
    pub retry_toml: String,
    /// Extra lines of the `[limits]` section.
    pub limits_toml: String,
    pub extra_toml: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            token_lifetime: Duration::from_secs(1800),
            request_timeout_ms: 5000,
            tokens_toml: String::new(),
            audit_toml: String::new(),
            retry_toml: "initial_backoff_ms = 10\nmax_backoff_ms = 50".into(),
            limits_toml: String::new(),
            extra_toml: String::new(),
        }
    }
}

/// A running sandbox and gateway.
pub struct Harness {
    pub sandbox: SandboxHandle,
    pub gateway: String,
    pub admin: String,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Hex SHA-256, as `api_key_sha256` wants it.
pub fn sha(s: &str) -> String {
    hex::encode(ratepay_gateway::config::sha256(s.as_bytes()))
}

/// The key Ratepay receives for `caller`'s `key`, computed as the README states it:
/// `hex(SHA-256("<caller name>:<key>"))`, independently of the gateway's own code.
pub fn scoped_key(caller: &str, key: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(format!("{caller}:{key}")))
}

fn write(dir: &Path, name: &str, content: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, content).expect("write test file");
    p.display().to_string()
}

/// The gateway configuration used by the tests, pointing at `sandbox_url`.
pub fn config_text(dir: &Path, sandbox_url: &str, opts: &Options) -> String {
    let secret = write(dir, "ratepay-secret", RATEPAY_SECRET);
    let jwt_key = write(dir, "jwt-key", "test-gateway-signing-key-0123456789abcdef");
    let svc_secret = write(dir, "svc-secret", SVC_SECRET);
    format!(
        r#"
[listen]
proxy = "127.0.0.1:0"
admin = "127.0.0.1:0"
shutdown_grace_ms = 5000

[credentials.default]
token_url = "{sandbox_url}/oauth/token"
client_id = "gw-client"
client_secret_file = "{secret}"

[upstreams.payment]
url = "{sandbox_url}"
audience = "{PAYMENT_AUD}"

[upstreams.status]
url = "{sandbox_url}"
audience = "{STATUS_AUD}"

[upstreams.hpp]
url = "{sandbox_url}"
audience = "{HPP_AUD}"

[upstream_client]
connect_timeout_ms = 1000
request_timeout_ms = {timeout}

[tokens]
{tokens}

[gateway_tokens]
hs256_key_file = "{jwt_key}"
lifetime_secs = 300

[callers.full]
api_key_sha256 = "{full}"
operations = ["*"]
partner = "p-fixed"

[callers.chooser]
api_key_sha256 = "{chooser}"
operations = ["*"]
partners = ["p-a", "p-b"]

[callers.reader]
api_key_sha256 = "{reader}"
operations = ["hpp.session_records.*"]
partner = "p-fixed"

[callers.nopartner]
api_key_sha256 = "{nopartner}"
operations = ["*"]

[callers.svc]
client_id = "svc-client"
client_secret_file = "{svc_secret}"
operations = ["payment.*", "hpp.*"]
partner = "p-fixed"

[limits]
max_request_body_bytes = 65536
request_timeout_ms = 20000
{limits}

[audit]
path = "{audit_path}"
{audit}

[retry]
{retry}

{extra}
"#,
        timeout = opts.request_timeout_ms,
        tokens = opts.tokens_toml,
        extra = opts.extra_toml,
        audit_path = dir.join("audit.jsonl").display(),
        audit = opts.audit_toml,
        retry = opts.retry_toml,
        limits = opts.limits_toml,
        full = sha(keys::FULL),
        chooser = sha(keys::CHOOSER),
        reader = sha(keys::READER),
        nopartner = sha(keys::NOPARTNER),
    )
}

/// The sandbox configuration matching [`config_text`].
pub fn sandbox_config(token_lifetime: Duration) -> SandboxConfig {
    SandboxConfig {
        clients: vec![SandboxClient {
            client_id: "gw-client".into(),
            client_secret: RATEPAY_SECRET.to_owned().into(),
        }],
        audiences: SandboxAudiences {
            payment: PAYMENT_AUD.into(),
            status: STATUS_AUD.into(),
            hpp: HPP_AUD.into(),
        },
        token_lifetime,
        seed: Some(7),
        session_step: None,
    }
}

impl Harness {
    /// Sandbox + gateway with default options.
    pub async fn start() -> Harness {
        Harness::with(Options::default()).await
    }

    /// Sandbox + gateway with `opts`.
    pub async fn with(opts: Options) -> Harness {
        Harness::with_edited(opts, |text| text).await
    }

    /// Sandbox + gateway with `opts`, the configuration text passed through `edit` first (for
    /// what [`Options`] has no knob for, such as a fixed value of [`config_text`]).
    pub async fn with_edited(opts: Options, edit: impl FnOnce(String) -> String) -> Harness {
        let sandbox = sandbox::spawn(sandbox_config(opts.token_lifetime))
            .await
            .expect("sandbox starts");
        let dir = tempfile::tempdir().expect("tempdir");
        let text = edit(config_text(dir.path(), &sandbox.url(), &opts));
        let config =
            Config::from_toml(&text, Path::new("test.toml")).expect("test config is valid");
        Harness::serve(sandbox, dir, config).await
    }

    /// Serves `config` (already pointing at `sandbox`).
    pub async fn serve(sandbox: SandboxHandle, dir: tempfile::TempDir, config: Config) -> Harness {
        let gateway = Gateway::build(&config).await.expect("gateway builds");
        Harness::serve_gateway(sandbox, dir, gateway).await
    }

    /// Sandbox + gateway with `opts`; also returns the gateway (a cheap clone) to inspect it.
    pub async fn with_gateway(opts: Options) -> (Harness, Gateway) {
        let sandbox = sandbox::spawn(sandbox_config(opts.token_lifetime))
            .await
            .expect("sandbox starts");
        let dir = tempfile::tempdir().expect("tempdir");
        let text = config_text(dir.path(), &sandbox.url(), &opts);
        let config =
            Config::from_toml(&text, Path::new("test.toml")).expect("test config is valid");
        let gateway = Gateway::build(&config).await.expect("gateway builds");
        (
            Harness::serve_gateway(sandbox, dir, gateway.clone()).await,
            gateway,
        )
    }

    /// Serves an already built `gateway` (pointing at `sandbox`).
    pub async fn serve_gateway(
        sandbox: SandboxHandle,
        dir: tempfile::TempDir,
        gateway: impl Into<LiveGateway>,
    ) -> Harness {
        let gateway: LiveGateway = gateway.into();
        let proxy = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let gw_url = format!("http://{}", proxy.local_addr().expect("addr"));
        let admin_url = format!("http://{}", admin.local_addr().expect("addr"));
        let (tx, rx) = oneshot::channel();
        let gw = gateway.clone();
        let task = tokio::spawn(async move {
            server::run(
                proxy,
                Some(admin),
                gw.clone(),
                Duration::from_secs(5),
                async {
                    let _ = rx.await;
                },
            )
            .await;
            gw.current().shutdown().await;
        });
        Harness {
            sandbox,
            gateway: gw_url,
            admin: admin_url,
            http: reqwest::Client::builder().build().expect("client"),
            dir,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Stops the gateway gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    /// The audit log file of this harness.
    pub fn audit_path(&self) -> std::path::PathBuf {
        self.dir.path().join("audit.jsonl")
    }

    /// The intent and outcome records written so far (the log's own start, stop and
    /// checkpoint records left out; [`Harness::all_audit_records`] has them).
    pub fn audit_records(&self) -> Vec<Value> {
        self.all_audit_records()
            .into_iter()
            .filter(|r| r["kind"] == "intent" || r["kind"] == "outcome")
            .collect()
    }

    /// Every record of the active audit file, in order.
    pub fn all_audit_records(&self) -> Vec<Value> {
        std::fs::read_to_string(self.audit_path())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
            .collect()
    }

    /// A URL on the gateway.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.gateway, path)
    }

    /// A request builder through the gateway with an API key.
    pub fn req(&self, method: reqwest::Method, path: &str, key: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path)).bearer_auth(key)
    }

    /// The sandbox's counters.
    pub async fn stats(&self) -> Value {
        self.http
            .get(format!("{}/_sandbox/stats", self.sandbox.url()))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("stats json")
    }

    /// Requests the sandbox received for one operation.
    pub async fn op_count(&self, op: &str) -> u64 {
        self.stats().await["requests"][op].as_u64().unwrap_or(0)
    }

    /// The `Idempotency-Key` of every call of `op` the sandbox received, in order.
    pub async fn idempotency_keys(&self, op: &str) -> Vec<String> {
        self.stats().await["idempotency_keys"][op]
            .as_array()
            .map(|keys| {
                keys.iter()
                    .map(|k| k.as_str().expect("key is a string").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Requests the sandbox received in total (token requests excluded).
    pub async fn upstream_total(&self) -> u64 {
        self.stats().await["requests_total"].as_u64().unwrap_or(0)
    }

    /// Installs a sandbox fault.
    pub async fn fault(&self, fault: Value) {
        let r = self
            .http
            .post(format!("{}/_sandbox/faults", self.sandbox.url()))
            .json(&fault)
            .send()
            .await
            .expect("fault");
        assert!(r.status().is_success(), "fault accepted: {}", r.status());
    }

    /// Authorizes a transaction through the gateway; returns its id.
    pub async fn authorize(&self, key: &str, partner: Option<&str>, amount: f64) -> String {
        let mut rb = self
            .req(reqwest::Method::POST, TX_PATH, key)
            .json(&authorize_body(amount));
        if let Some(p) = partner {
            rb = rb.header("x-partner", p);
        }
        let resp = rb.send().await.expect("authorize");
        let status = resp.status();
        let body: Value = resp.json().await.expect("authorize json");
        assert_eq!(status, 201, "authorize: {body}");
        body["ratepay_transaction_id"]
            .as_str()
            .expect("transaction id")
            .to_owned()
    }
}

/// A minimal valid authorization request.
pub fn authorize_body(amount: f64) -> Value {
    json!({
        "currency": "EUR",
        "buyer": {
            "first_name": "Test",
            "last_name": "Buyer",
            "contact": { "email": "buyer@example.com" }
        },
        "shop_baskets": [{ "gross_amount": amount }]
    })
}

/// Asserts a problem+json answer with `status` and returns its body.
pub async fn problem(resp: reqwest::Response, status: u16) -> Value {
    assert_eq!(resp.status().as_u16(), status, "status");
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert_eq!(ct, "application/problem+json");
    assert!(resp.headers().contains_key("x-request-id"));
    let body: Value = resp.json().await.expect("problem json");
    assert_eq!(body["status"], status);
    assert!(body["type"]
        .as_str()
        .is_some_and(|t| t.starts_with("https://")));
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    assert!(body["request_id"].as_str().is_some());
    body
}

/// An in-memory log sink for a tracing subscriber (`with_writer(move || buf.clone())`).
#[derive(Clone, Default)]
pub struct LogBuffer(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// The value of the first Prometheus line starting with `line_start` (name and labels).
pub fn metric(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

impl Harness {
    /// The admin listener's `/metrics` text.
    pub async fn scrape_metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .expect("metrics answer")
            .text()
            .await
            .expect("metrics text")
    }

    /// Creates an HPP session through the gateway as `key` (with `partner` if given).
    pub async fn session(&self, key: &str, partner: Option<&str>) -> String {
        let mut rb = self
            .req(reqwest::Method::POST, "/pps/api/v1/session", key)
            .json(&json!({
                "order_data": {"shop_baskets": [{"gross_amount": 10.0}], "currency": "EUR",
                               "buyer": {"contact": {"email": "b@example.com"}}}
            }));
        if let Some(p) = partner {
            rb = rb.header("x-partner", p);
        }
        let r = rb.send().await.expect("session create");
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.expect("json")["session_id"]
            .as_str()
            .expect("id")
            .to_owned()
    }
}

/// The path of a transaction's follow-up list, e.g. `tx_path(tx, "cancellations")`.
pub fn tx_path(tx: &str, follow_up: &str) -> String {
    format!("{TX_PATH}/{tx}/{follow_up}")
}

impl Harness {
    /// POSTs `body` (sent byte for byte, as JSON) to `path` through the gateway as `key`.
    pub async fn post_json(&self, path: &str, key: &str, body: &str) -> reqwest::Response {
        self.req(reqwest::Method::POST, path, key)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("POST answered")
    }
}

/// The Python verifier as docs/audit.md prints it (the first python block after its heading
/// sentence), so the tests run what a reader would copy.
pub fn python_verifier() -> String {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/audit.md"))
        .unwrap();
    let after = doc
        .split_once("This Python version")
        .expect("docs/audit.md introduces its Python verifier")
        .1;
    let code = after.split_once("```python\n").expect("a python block").1;
    code.split_once("```").expect("the block ends").0.to_owned()
}

/// Runs the documented verifier with `args`: (exit success, stdout, stderr).
pub fn run_python<S: AsRef<std::ffi::OsStr>>(code: &str, args: &[S]) -> (bool, String, String) {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .expect("run python3");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The lines of a file (an audit log), without their newlines.
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Writes `lines` to `path`, each ending in a newline.
pub fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(
        path,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
}

/// An intent for the audit log tests, numbered `n` (amount `n.50`).
pub fn intent(n: u64) -> ratepay_gateway::audit::Intent {
    ratepay_gateway::audit::Intent {
        request_id: format!("req-{n}"),
        caller: "shop-backend".into(),
        source: "10.1.2.3".parse().unwrap(),
        operation: "payment.cancellations.create".into(),
        ratepay_transaction_id: "scwBgARW-nE93I7_ywhp".into(),
        partner: Some("partner-a".into()),
        gross_amount: Some(format!("{n}.50")),
        partner_operation_id: Some(format!("op-{n}")),
        partner_shop_id: None,
        body_sha256: "0".repeat(64),
        idempotency_key: Some(format!("idem-{n}")),
    }
}

/// The `kind` of every record of the audit file `path`, in order.
pub fn record_kinds(path: &Path) -> Vec<String> {
    lines(path)
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["kind"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// The `kind` of each record, in order.
pub fn kinds_of(records: &[Value]) -> Vec<&str> {
    records
        .iter()
        .map(|r| r["kind"].as_str().expect("every record has a kind"))
        .collect()
}
