//! Running the real binary: spawn it, read its `listening <name> <addr>` lines, kill it on drop.
//! Also built without the `sandbox` feature (tests/without_sandbox.rs), so what needs the
//! sandbox's types is marked.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_ratepay-gateway");
/// The API key of the caller in [`gateway_config`].
pub const KEY: &str = "process-test-key";

/// A child process killed (SIGKILL) when dropped.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns the binary and waits until it announced every listener in `names`.
pub fn spawn(args: &[&str], names: &[&str]) -> (Running, HashMap<String, String>) {
    let mut command = Command::new(BIN);
    command.args(args);
    spawn_command(command, names)
}

/// [`spawn`] with `cwd` as the working directory (where relative paths resolve).
pub fn spawn_in(cwd: &Path, args: &[&str], names: &[&str]) -> (Running, HashMap<String, String>) {
    let mut command = Command::new(BIN);
    command.current_dir(cwd).args(args);
    spawn_command(command, names)
}

/// As [`spawn`], for a command that runs the binary (for example under `prlimit`).
pub fn spawn_command(mut command: Command, names: &[&str]) -> (Running, HashMap<String, String>) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the binary");
    // Keep the tail of stderr so a failed start says why.
    let stderr = child.stderr.take().expect("stderr");
    let tail = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let tail2 = tail.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut t = tail2.lock().unwrap_or_else(|p| p.into_inner());
            t.push(line);
            if t.len() > 20 {
                t.remove(0);
            }
        }
    });
    announced(Running(child), names)
}

/// [`spawn`] with stderr (the logs) written to the file `log`, to read them whole afterwards.
pub fn spawn_logging_to(
    log: &Path,
    args: &[&str],
    names: &[&str],
) -> (Running, HashMap<String, String>) {
    let child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("spawn the binary");
    announced(Running(child), names)
}

/// Waits until `running` announced every listener in `names` on stdout; keeps draining it.
fn announced(mut running: Running, names: &[&str]) -> (Running, HashMap<String, String>) {
    let stdout = running.0.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut found = HashMap::new();
    while names.iter().any(|n| !found.contains_key(*n)) {
        let line = lines
            .next()
            .expect("the process announced its listeners")
            .expect("line");
        if let ["ratepay-gateway", "listening", name, addr] =
            line.split(' ').collect::<Vec<_>>()[..]
        {
            found.insert(name.to_owned(), addr.to_owned());
        }
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (running, found)
}

/// A gateway configuration in `dir` against a separate sandbox process at `sandbox` (its
/// default client and audiences), one caller with [`KEY`], audit log in `dir/audit/`.
#[cfg(feature = "sandbox")]
pub fn gateway_config(dir: &Path, sandbox: &str) -> std::path::PathBuf {
    std::fs::write(
        dir.join("secret"),
        ratepay_gateway::sandbox::DEFAULT_CLIENT_SECRET,
    )
    .expect("secret");
    let aud = ratepay_gateway::sandbox::SandboxAudiences::integration();
    let text = format!(
        r#"
[listen]
proxy = "127.0.0.1:0"
admin = "127.0.0.1:0"
shutdown_grace_ms = 10000
[credentials.default]
token_url = "http://{sandbox}/oauth/token"
client_id = "{client}"
client_secret_file = "{secret}"
[upstreams.payment]
url = "http://{sandbox}"
audience = "{payment}"
[callers.burst]
api_key_sha256 = "{hash}"
operations = ["*"]
partner = "burst"
[audit]
path = "{audit}"
rotate_bytes = 8192
"#,
        client = ratepay_gateway::sandbox::DEFAULT_CLIENT_ID,
        secret = dir.join("secret").display(),
        payment = aud.payment,
        hash = hex::encode(ratepay_gateway::config::sha256(KEY.as_bytes())),
        audit = dir.join("audit").join("audit.jsonl").display(),
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).expect("config");
    path
}

/// Authorizes a transaction of `amount` through the gateway at `proxy`; returns its id.
pub async fn authorize(http: &reqwest::Client, proxy: &str, amount: u32) -> String {
    let r = http
        .post(format!("http://{proxy}/transaction/management/v2/transactions"))
        .bearer_auth(KEY)
        .json(&serde_json::json!({"currency": "EUR", "buyer": {"contact": {"email": "b@example.com"}}, "shop_baskets": [{"gross_amount": amount}]}))
        .send()
        .await
        .expect("authorize");
    assert_eq!(r.status(), 201);
    let body: serde_json::Value = r.json().await.expect("json");
    body["ratepay_transaction_id"]
        .as_str()
        .expect("id")
        .to_owned()
}

/// Cancels 1.00 of `tx` through the gateway at `proxy`; asserts Ratepay's 201.
pub async fn cancel(http: &reqwest::Client, proxy: &str, tx: &str) {
    let r = http
        .post(format!(
            "http://{proxy}/transaction/management/v2/transactions/{tx}/cancellations"
        ))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(r#"{"gross_amount": 1.00}"#)
        .send()
        .await
        .expect("cancel");
    assert_eq!(r.status(), 201);
}

/// Sends `signal` (a name such as `TERM`, `STOP`) to the running process.
pub fn signal(process: &Running, signal: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(process.0.id().to_string())
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -{signal}");
}

/// The sandbox process's counters (`GET /_sandbox/stats`).
pub async fn sandbox_stats(http: &reqwest::Client, sandbox: &str) -> serde_json::Value {
    http.get(format!("http://{sandbox}/_sandbox/stats"))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("stats json")
}

/// Installs a fault in the sandbox process.
pub async fn sandbox_fault(http: &reqwest::Client, sandbox: &str, fault: serde_json::Value) {
    let r = http
        .post(format!("http://{sandbox}/_sandbox/faults"))
        .json(&fault)
        .send()
        .await
        .expect("fault");
    assert!(r.status().is_success(), "fault accepted: {}", r.status());
}

/// A Payment API token straight from the sandbox process (its default client), to look at
/// Ratepay's side without the gateway.
#[cfg(feature = "sandbox")]
pub async fn sandbox_token(http: &reqwest::Client, sandbox: &str) -> String {
    let body: serde_json::Value = http
        .post(format!("http://{sandbox}/oauth/token"))
        .json(&serde_json::json!({
            "client_id": ratepay_gateway::sandbox::DEFAULT_CLIENT_ID,
            "client_secret": ratepay_gateway::sandbox::DEFAULT_CLIENT_SECRET,
            "audience": ratepay_gateway::sandbox::SandboxAudiences::integration().payment,
            "grant_type": "client_credentials",
        }))
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("token json");
    body["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}
