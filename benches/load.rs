//! Load benchmark: the sandbox and the gateway in-process on loopback, a tokio load generator
//! with N HTTP/1.1 keep-alive connections, a fixed duration per case.
//!
//! ```sh
//! cargo bench --bench load                          # 32 connections, 5 s per case
//! BENCH_CONNECTIONS=64 BENCH_SECS=3 cargo bench --bench load
//! ```
//!
//! Cases: straight to the sandbox (GET transaction, Ratepay's own bearer token), through the
//! gateway uncached (GET transaction: caller auth, policy, headers, token, proxy), and through
//! the gateway on session-record cache hits. Generator, gateway and sandbox share the machine's
//! cores, so the figures compare cases rather than measure a deployment.

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{header, HeaderValue, Request};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use ratepay_gateway::{
    config::Config,
    sandbox::{self, SandboxConfig},
    server,
    stack::Gateway,
};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

const API_KEY: &str = "bench-key-0001";
const TX_PATH: &str = "/transaction/management/v2/transactions";
/// At most this many latencies are kept per connection (bounds memory on fast machines).
const MAX_SAMPLES_PER_CONNECTION: usize = 1 << 20;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Report {
    requests: usize,
    errors: usize,
    elapsed: Duration,
    latencies_us: Vec<u32>,
}

impl Report {
    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        f64::from(self.latencies_us[i]) / 1000.0
    }
}

/// Runs `connections` connections, each sending GET `path` (with `auth`, and `partner` as
/// X-Partner when given) back to back until `duration` is over.
async fn load(
    addr: SocketAddr,
    path: &str,
    auth: &str,
    partner: Option<&'static str>,
    connections: usize,
    duration: Duration,
) -> Report {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let path = path.to_owned();
        let auth = HeaderValue::from_str(auth).expect("auth header");
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(64 * 1024);
            let mut errors = 0usize;
            let Ok(stream) = TcpStream::connect(addr).await else {
                return (latencies, 1);
            };
            let _ = stream.set_nodelay(true);
            let Ok((mut send, conn)) = http1::handshake(TokioIo::new(stream)).await else {
                return (latencies, 1);
            };
            tokio::spawn(conn);
            while Instant::now() < deadline {
                if send.ready().await.is_err() {
                    errors += 1;
                    break;
                }
                let mut req = Request::get(path.as_str())
                    .header(header::HOST, addr.to_string())
                    .header(header::AUTHORIZATION, auth.clone())
                    .body(Empty::<Bytes>::new())
                    .expect("request");
                if let Some(p) = partner {
                    req.headers_mut()
                        .insert("x-partner", HeaderValue::from_static(p));
                }
                let t0 = Instant::now();
                match send.send_request(req).await {
                    Ok(resp) => {
                        let ok = resp.status().is_success();
                        let body_ok = resp.into_body().collect().await.is_ok();
                        if ok && body_ok {
                            if latencies.len() < MAX_SAMPLES_PER_CONNECTION {
                                latencies.push(
                                    u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX),
                                );
                            }
                        } else {
                            errors += 1;
                        }
                    }
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            }
            (latencies, errors)
        });
    }
    let mut all = Vec::new();
    let mut errors = 0;
    while let Some(done) = tasks.join_next().await {
        let (l, e) = done.expect("load task");
        all.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed();
    all.sort_unstable();
    Report {
        requests: all.len(),
        errors,
        elapsed,
        latencies_us: all,
    }
}

fn gateway_config(dir: &Path, sandbox_url: &str) -> String {
    let secret = dir.join("ratepay-secret");
    std::fs::write(&secret, sandbox::DEFAULT_CLIENT_SECRET).expect("secret file");
    let key_hash = hex::encode(ratepay_gateway::config::sha256(API_KEY.as_bytes()));
    let a = sandbox::SandboxAudiences::integration();
    format!(
        r#"
[listen]
proxy = "127.0.0.1:0"
admin = "off"

[credentials.default]
token_url = "{sandbox_url}/oauth/token"
client_id = "{client}"
client_secret_file = "{secret}"

[upstreams.payment]
url = "{sandbox_url}"
audience = "{payment}"

[upstreams.hpp]
url = "{sandbox_url}"
audience = "{hpp}"

[callers.bench]
api_key_sha256 = "{key_hash}"
operations = ["*"]
partner = "p-bench"

[cache]

[audit]
path = "{audit}"
"#,
        audit = dir.join("audit.jsonl").display(),
        client = sandbox::DEFAULT_CLIENT_ID,
        secret = secret.display(),
        payment = a.payment,
        hpp = a.hpp,
    )
}

async fn run() {
    let connections = env_or("BENCH_CONNECTIONS", 32) as usize;
    let duration = Duration::from_secs(env_or("BENCH_SECS", 5));

    let sb = sandbox::spawn(SandboxConfig {
        session_step: None,
        seed: Some(1),
        ..SandboxConfig::default()
    })
    .await
    .expect("sandbox");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::from_toml(
        &gateway_config(dir.path(), &sb.url()),
        Path::new("bench.toml"),
    )
    .expect("config");
    let gateway = Gateway::build(&config).await.expect("gateway");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let gw_addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::run(
        listener,
        None,
        gateway,
        Duration::from_secs(2),
        async {
            let _ = stopped.await;
        },
    ));

    // Setup through the gateway: a transaction, and a completed session record (cacheable).
    let http = reqwest::Client::new();
    let gw = format!("http://{gw_addr}");
    let tx: Value = http
        .post(format!("{gw}{TX_PATH}"))
        .bearer_auth(API_KEY)
        .json(
            &json!({"currency": "EUR", "buyer": {"first_name": "B", "last_name": "B",
               "contact": {"email": "b@example.com"}}, "shop_baskets": [{"gross_amount": 10.0}]}),
        )
        .send()
        .await
        .expect("authorize")
        .json()
        .await
        .expect("json");
    let tx = tx["ratepay_transaction_id"]
        .as_str()
        .expect("transaction id")
        .to_owned();
    let session: Value = http
        .post(format!("{gw}/pps/api/v1/session"))
        .bearer_auth(API_KEY)
        .json(&json!({"order_data": {"shop_baskets": [{"gross_amount": 10.0}], "currency": "EUR"}}))
        .send()
        .await
        .expect("session")
        .json()
        .await
        .expect("json");
    let sid = session["session_id"]
        .as_str()
        .expect("session id")
        .to_owned();
    http.post(format!("{}/_sandbox/sessions/{sid}", sb.url()))
        .json(&json!({"session_status": "COMPLETED"}))
        .send()
        .await
        .expect("set status");
    // Ratepay's own token, for the straight-to-sandbox case.
    let token: Value = http
        .post(format!("{}/oauth/token", sb.url()))
        .json(&json!({"client_id": sandbox::DEFAULT_CLIENT_ID, "client_secret": sandbox::DEFAULT_CLIENT_SECRET,
                      "audience": sandbox::SandboxAudiences::integration().payment, "grant_type": "client_credentials"}))
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("json");
    let ratepay_bearer = format!(
        "Bearer {}",
        token["access_token"].as_str().expect("access token")
    );
    let sb_addr: SocketAddr = sb
        .url()
        .trim_start_matches("http://")
        .parse()
        .expect("sandbox addr");
    let upstream_calls = |http: reqwest::Client, url: String| async move {
        let v: Value = http
            .get(format!("{url}/_sandbox/stats"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        v["requests_total"].as_u64()
    };

    let sid_path = format!("/pps/api/v1/session-record/{sid}");
    let tx_path = format!("{TX_PATH}/{tx}");
    // The sandbox keys transactions by partner: the direct case sends the X-Partner the
    // gateway adds for the bench caller.
    let caller = format!("Bearer {API_KEY}");
    let cases = [
        (
            "sandbox direct: GET transaction",
            sb_addr,
            &tx_path,
            &ratepay_bearer,
            Some("p-bench"),
        ),
        (
            "gateway uncached: GET transaction",
            gw_addr,
            &tx_path,
            &caller,
            None,
        ),
        (
            "gateway cache hit: GET session record",
            gw_addr,
            &sid_path,
            &caller,
            None,
        ),
    ];
    println!(
        "\nload: {connections} connections, {} s per case (HTTP/1.1 keep-alive, loopback)\n",
        duration.as_secs()
    );
    println!(
        "{:<40} {:>9} {:>10} {:>9} {:>9} {:>7} {:>10}",
        "case", "requests", "req/s", "p50 ms", "p99 ms", "errors", "upstream"
    );
    for (name, addr, path, auth, partner) in cases {
        let before = upstream_calls(http.clone(), sb.url()).await.unwrap_or(0);
        let r = load(addr, path, auth, partner, connections, duration).await;
        let after = upstream_calls(http.clone(), sb.url()).await.unwrap_or(0);
        println!(
            "{:<40} {:>9} {:>10.0} {:>9.2} {:>9.2} {:>7} {:>10}",
            name,
            r.requests,
            r.requests as f64 / r.elapsed.as_secs_f64(),
            r.percentile_ms(0.50),
            r.percentile_ms(0.99),
            r.errors,
            after.saturating_sub(before)
        );
    }
    println!("\n(upstream: calls the sandbox received during the case)");
    let _ = stop.send(());
    let _ = server.await;
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}
