//! Load benchmark: the gateway as its own process in front of a minimal static upstream, driven
//! by an in-bench tokio load generator over N HTTP/1.1 keep-alive connections.
//!
//! ```sh
//! cargo bench --bench load                                  # everything, about 1.5 min
//! BENCH_SECS=5 BENCH_CONNECTIONS=64 BENCH_RATE=4000 cargo bench --bench load
//! BENCH_CASES=direct,uncached cargo bench --bench load      # a subset
//! BENCH_PERF=/tmp/gw.perf cargo bench --bench load          # perf record the gateway (uncached)
//! BENCH_GATEWAY_BIN=/tmp/gw cargo bench --bench load        # measure this gateway binary
//! BENCH_CASES=steady cargo bench --bench load               # the 10-minute steady run alone
//! ```
//!
//! Environment: `BENCH_SECS` (3) per phase, `BENCH_CONNECTIONS` (32), `BENCH_RATE` (2000 req/s,
//! the open-loop rate), `BENCH_CASES` (all of `direct,uncached,cached,audited,unaudited,cluster,nginx,haproxy,floor,nolog,
//! tls,memory`, and `paired`, which is not in it: each pinned target as the gateway against its
//! peer in `BENCH_PEER_SLICES` (11) pairs of one-second slices of saturation, or of
//! `BENCH_PAIRED_RATE` req/s offered to each side, see `paired.rs`; `tls` repeats
//! the uncached GET through the gateway and each peer with TLS to the upstream), `BENCH_PERF` (a file: `perf record` of the gateway during the uncached saturation
//! phase, or another with `BENCH_PERF_CASE=cached|audited|unaudited|cluster|cluster-post|
//! floor|nginx|nolog|tls|tls-floor|tls-nginx`; needs `perf`; `BENCH_PERF_FREQ` its sampling rate, 499 Hz by default;
//! `BENCH_PERF_EVENTS`, e.g. `syscalls:sys_enter_*`, counts those events with `perf stat`
//! instead and notes each per request; `BENCH_PERF_PHASE=rate` watches the fixed-rate phase
//! instead of the saturation one), `BENCH_STEADY_SECS`
//! (600: the `steady` case, which is not in the default list, holds `BENCH_RATE` of uncached and
//! cache-hit GETs for this long and samples the gateway's RSS every minute), `BENCH_GW_THREADS`
//! (the gateway's tokio worker threads, passed as `TOKIO_WORKER_THREADS`; default one per core),
//! `BENCH_BASELINE_BIN` (another build's `ratepay-gateway` binary: its uncached, cache-hit and
//! audited cases run right after this build's, on the same configuration, for a before/after
//! comparison within one run), `BENCH_AB_ROUNDS` (1: with a baseline, this many rounds of both
//! builds, alternating which goes first, and the median CPU per request of each),
//! `BENCH_AB_SLICES` (0: with a baseline, this many pairs of short saturation slices, both builds
//! running, alternately first, `BENCH_AB_SLICE_MS` (1000) each, and the median ratio of CPU per
//! request and its quartiles, for the cases uncached, cached, audited and unaudited; on session 12's host it read a build against its own copy within
//! 6 %, where the rounds read +38 %), `BENCH_PIN`
//! (1: this process, the generator and the upstream, on CPU 0; each measured proxy alone on
//! CPU 1 with one worker thread or process; needs `taskset` and two CPUs), `BENCH_REDIS_CPU`
//! (pinned: the CPU of the cluster cases' redis-server, 0 by default, beside the generator;
//! 1 puts it beside the gateway, away from the generator's load).
//! The `direct_process` case (not in the default list either) repeats the direct case with the
//! static upstream in a process of its own and reads that process's CPU per request.
//!
//! The static upstream answers every path at once: `POST /oauth/token` a JWT-shaped token, any
//! other POST a 201 cancellation, any GET a fixed terminal session record. It checks no token, so
//! what the cases add over "direct" is the gateway's (or nginx's) own cost. Each case runs two
//! phases with the same generator and connection count:
//!
//! - saturation (closed loop): every connection sends its next request as soon as the previous
//!   answer is read; latency from send to the end of the answer;
//! - fixed rate (open loop): a pacer thread schedules `BENCH_RATE` requests per second spread over
//!   the connections; latency is measured from the scheduled time, so a stall shows up in the
//!   latency of every request it delayed (no coordinated omission).
//!
//! The gateway runs as `ratepay-gateway serve` (release binary) with its access log on stderr
//! redirected to a file; its RSS, peak RSS (VmHWM, reset per phase through `clear_refs`) and CPU
//! time per request come from `/proc`. nginx, when installed, runs as a peer on the same upstream
//! (`worker_processes auto`: one worker per core, as the gateway runs one tokio worker per core).
//! The upstream and the generator share this process; everything shares the machine's cores, so
//! the figures compare cases within one run rather than measure a deployment.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

mod paired;
mod peers;
mod tls;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, client::conn::http1 as client_http1, server::conn::http1};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

const API_KEY: &str = "bench-key-0001";
/// What nginx and the direct case send in place of the gateway's Ratepay token.
const STATIC_BEARER: &str = "Bearer bench-static-token";
const PARTNER: &str = "p-bench";
const TX_PATH: &str = "/transaction/management/v2/transactions/bench-tx-0001";
const CANCEL_PATH: &str = "/transaction/management/v2/transactions/bench-tx-0001/cancellations";
const RECORD_PATH: &str = "/pps/api/v1/session-record/bench-session-0001";
const CANCEL_BODY: &str = r#"{"gross_amount":10.00,"partner_operation_id":"op-bench"}"#;
/// A terminal record (long lifetime in the cache) of another transaction than the cancellations
/// act on, so cancellations never invalidate it.
const RECORD: &str = r#"{"session_id":"bench-session-0001","transaction_id":"bench-tx-record","partner_transaction_id":"order-0001","session_status":"COMPLETED","created_date":"2026-11-21T08:00:00+01:00","updated_date":"2026-11-21T08:01:00+01:00"}"#;
const CANCELLATION: &str = r#"{"_links":{"self":{"href":"/transaction/management/v2/transactions/bench-tx-0001/cancellations/bench-cancellation"}},"created":"2026-11-21T08:02:00+01:00","ratepay_cancellation_id":"bench-cancellation"}"#;
/// Distinct session records held for the memory case.
const FILL_RECORDS: usize = 100_000;
/// At most this many latencies are kept per connection and phase.
const MAX_SAMPLES_PER_CONNECTION: usize = 1 << 21;
const MIB: f64 = 1024.0 * 1024.0;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------
// The static upstream

/// Requests the static upstream answered, by kind.
#[derive(Default)]
struct UpstreamStats {
    tokens: AtomicU64,
    gets: AtomicU64,
    posts: AtomicU64,
}

impl UpstreamStats {
    fn calls(&self) -> u64 {
        self.gets.load(Ordering::Relaxed) + self.posts.load(Ordering::Relaxed)
    }
}

/// Ratepay's token answer: a JWT-shaped token (the gateway reads its `exp`), valid one hour.
fn token_answer() -> Bytes {
    ratepay_gateway::crypto::install_providers();
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    let jwt = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": "bench", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(b"bench-upstream"),
    )
    .expect("jwt");
    Bytes::from(
        serde_json::to_vec(
            &serde_json::json!({"access_token": jwt, "token_type": "Bearer", "expires_in": 3600}),
        )
        .expect("json"),
    )
}

async fn answer(
    req: Request<Incoming>,
    stats: Arc<UpstreamStats>,
    token: Bytes,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let post = req.method() == Method::POST;
    let is_token = req.uri().path() == "/oauth/token";
    let _ = req.into_body().collect().await;
    let (status, body) = match (post, is_token) {
        (true, true) => {
            stats.tokens.fetch_add(1, Ordering::Relaxed);
            (StatusCode::OK, token)
        }
        (true, false) => {
            stats.posts.fetch_add(1, Ordering::Relaxed);
            (
                StatusCode::CREATED,
                Bytes::from_static(CANCELLATION.as_bytes()),
            )
        }
        (false, _) => {
            stats.gets.fetch_add(1, Ordering::Relaxed);
            (StatusCode::OK, Bytes::from_static(RECORD.as_bytes()))
        }
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// Starts the static upstream on a loopback port.
async fn static_upstream() -> (SocketAddr, Arc<UpstreamStats>) {
    let stats = Arc::new(UpstreamStats::default());
    let addr = serve_static(stats.clone(), None).await;
    (addr, stats)
}

/// Serves the static upstream (counting in `stats`) on another loopback port, over TLS when
/// `tls` is given (the `tls` cases).
async fn serve_static(
    stats: Arc<UpstreamStats>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let token = token_answer();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (stats, token, tls) = (stats.clone(), token.clone(), tls.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    answer(req, stats.clone(), token.clone())
                });
                let conn = http1::Builder::new();
                let _ = match tls {
                    None => conn.serve_connection(TokioIo::new(stream), svc).await,
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(s) => conn.serve_connection(TokioIo::new(s), svc).await,
                        Err(_) => return,
                    },
                };
            });
        }
    });
    addr
}

// ---------------------------------------------------------------------------------------------
// The load generator

/// What one case sends.
#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
    /// A fresh `Idempotency-Key` on every request, so every POST goes upstream.
    keyed: bool,
}

static PHASE: AtomicU64 = AtomicU64::new(0);
static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

impl Target {
    fn get(addr: SocketAddr, path: &str, auth: &str, partner: bool) -> Target {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(auth).expect("auth"),
        );
        if partner {
            headers.insert("x-partner", HeaderValue::from_static(PARTNER));
        }
        headers.insert(header::HOST, HeaderValue::from_static("ratepay.bench"));
        Target {
            addr,
            method: Method::GET,
            path: path.to_owned(),
            headers,
            body: Bytes::new(),
            keyed: false,
        }
    }

    fn cancellation(addr: SocketAddr) -> Target {
        let mut t = Target::get(addr, CANCEL_PATH, &format!("Bearer {API_KEY}"), false);
        t.method = Method::POST;
        t.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        t.body = Bytes::from_static(CANCEL_BODY.as_bytes());
        t.keyed = true;
        t
    }

    fn request(&self, phase: u64, connection: usize, seq: u64) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.path.parse().expect("path");
        *req.headers_mut() = self.headers.clone();
        if self.keyed {
            let key = format!("bench-{phase}-{connection}-{seq}");
            req.headers_mut().insert(
                IDEMPOTENCY_KEY.clone(),
                HeaderValue::from_str(&key).expect("key"),
            );
        }
        req
    }
}

type Sender = client_http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Option<Sender> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (send, conn) = client_http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(conn);
    Some(send)
}

/// How one exchange went.
enum Exchange {
    /// 2xx, body read.
    Ok,
    /// Another status, or the body broke off.
    Failed,
    /// The connection is gone (nothing may have been sent: reconnect).
    Closed,
}

async fn exchange(send: &mut Sender, req: Request<Full<Bytes>>) -> Exchange {
    if send.ready().await.is_err() {
        return Exchange::Closed;
    }
    match send.send_request(req).await {
        Ok(resp) => {
            let ok = resp.status().is_success();
            if resp.into_body().collect().await.is_ok() && ok {
                Exchange::Ok
            } else {
                Exchange::Failed
            }
        }
        Err(_) => Exchange::Closed,
    }
}

/// The outcome of one phase.
#[derive(Default)]
struct Run {
    ok: usize,
    errors: usize,
    elapsed: Duration,
    /// Sorted.
    latencies_ns: Vec<u64>,
    /// Open loop: how late the pacer thread itself was (p50), included in the latencies.
    pacer_late_p50: Option<Duration>,
    /// Open loop: how long after the last scheduled send the last answer came (a target that
    /// kept the rate answers within its latency; one that did not, after its backlog).
    drain: Option<Duration>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile_us(&self, p: f64) -> Option<f64> {
        if self.latencies_ns.is_empty() {
            return None;
        }
        let i = ((self.latencies_ns.len() - 1) as f64 * p).round() as usize;
        Some(self.latencies_ns[i] as f64 / 1000.0)
    }

    fn merge(parts: Vec<(Vec<u64>, usize)>, elapsed: Duration) -> Run {
        let mut latencies_ns = Vec::with_capacity(parts.iter().map(|p| p.0.len()).sum());
        let mut errors = 0;
        for (l, e) in parts {
            latencies_ns.extend(l);
            errors += e;
        }
        latencies_ns.sort_unstable();
        Run {
            ok: latencies_ns.len(),
            errors,
            elapsed,
            latencies_ns,
            pacer_late_p50: None,
            drain: None,
        }
    }
}

async fn connect_all(addr: SocketAddr, connections: usize) -> (Vec<Sender>, usize) {
    let mut sends = Vec::with_capacity(connections);
    let mut failed = 0;
    for _ in 0..connections {
        match connect(addr).await {
            Some(s) => sends.push(s),
            None => failed += 1,
        }
    }
    (sends, failed)
}

/// Saturation: each connection sends back to back until `duration` is over.
async fn closed_loop(target: &Target, connections: usize, duration: Duration) -> Run {
    let phase = PHASE.fetch_add(1, Ordering::Relaxed);
    let (sends, failed) = connect_all(target.addr, connections).await;
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for (c, mut send) in sends.into_iter().enumerate() {
        let target = target.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(1 << 16);
            let mut errors = 0;
            let mut seq = 0;
            while Instant::now() < deadline {
                let req = target.request(phase, c, seq);
                seq += 1;
                let t0 = Instant::now();
                match exchange(&mut send, req).await {
                    Exchange::Ok if latencies.len() < MAX_SAMPLES_PER_CONNECTION => {
                        latencies.push(t0.elapsed().as_nanos() as u64)
                    }
                    Exchange::Ok => {}
                    Exchange::Failed => errors += 1,
                    Exchange::Closed => {
                        errors += 1;
                        match connect(target.addr).await {
                            Some(s) => send = s,
                            None => break,
                        }
                    }
                }
            }
            (latencies, errors)
        });
    }
    let mut parts = Vec::new();
    while let Some(done) = tasks.join_next().await {
        parts.push(done.expect("load task"));
    }
    let mut run = Run::merge(parts, started.elapsed());
    run.errors += failed;
    run
}

/// Fixed rate: a pacer thread schedules `rate` requests per second round-robin over the
/// connections; each latency runs from the scheduled time to the end of the answer.
async fn open_loop(target: &Target, connections: usize, rate: f64, duration: Duration) -> Run {
    let phase = PHASE.fetch_add(1, Ordering::Relaxed);
    let (sends, failed) = connect_all(target.addr, connections).await;
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let start = Instant::now() + Duration::from_millis(20);
    // Requests not answered by then count as errors (the target could not keep the rate).
    let hard_deadline = start + duration + Duration::from_secs(5);
    let mut tasks = tokio::task::JoinSet::new();
    let mut queues = Vec::with_capacity(sends.len());
    for (c, mut send) in sends.into_iter().enumerate() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        queues.push(tx);
        let target = target.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(1 << 14);
            let mut errors = 0;
            let mut seq = 0;
            while let Some(scheduled) = rx.recv().await {
                if Instant::now() > hard_deadline {
                    errors += 1;
                    continue;
                }
                let req = target.request(phase, c, seq);
                seq += 1;
                match exchange(&mut send, req).await {
                    Exchange::Ok if latencies.len() < MAX_SAMPLES_PER_CONNECTION => {
                        latencies.push(scheduled.elapsed().as_nanos() as u64)
                    }
                    Exchange::Ok => {}
                    Exchange::Failed => errors += 1,
                    Exchange::Closed => {
                        errors += 1;
                        match connect(target.addr).await {
                            Some(s) => send = s,
                            None => {
                                errors += rx.len();
                                break;
                            }
                        }
                    }
                }
            }
            (latencies, errors)
        });
    }
    let pacer = std::thread::spawn(move || {
        let mut late = Vec::with_capacity(total as usize);
        if queues.is_empty() {
            return late;
        }
        for i in 0..total {
            let at = start + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            late.push(at.elapsed());
            let _ = queues[(i % queues.len() as u64) as usize].send(at);
        }
        late
    });
    let mut late = tokio::task::spawn_blocking(move || pacer.join().expect("pacer"))
        .await
        .expect("pacer task");
    let mut parts = Vec::new();
    while let Some(done) = tasks.join_next().await {
        parts.push(done.expect("load task"));
    }
    let mut run = Run::merge(parts, start.elapsed());
    run.drain = Some(run.elapsed.saturating_sub(duration));
    run.errors += failed;
    // The rate asked for, over the nominal duration (the drain afterwards is not idle time).
    run.elapsed = duration;
    late.sort_unstable();
    run.pacer_late_p50 = late.get(late.len() / 2).copied();
    run
}

// ---------------------------------------------------------------------------------------------
// Processes: the gateway and nginx, and what /proc says about them

/// A child process stopped (SIGTERM, then SIGKILL) when dropped.
struct Proc {
    child: Child,
    name: &'static str,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM lets nginx's master stop its workers; the gateway drains and exits.
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        for _ in 0..60 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop on SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The process and its direct children (nginx's workers).
fn process_tree(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    if let Ok(children) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        pids.extend(
            children
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    pids
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Bytes summed over the tree, for `VmRSS:` or `VmHWM:`.
fn tree_bytes(pid: u32, field: &str) -> Option<u64> {
    process_tree(pid)
        .into_iter()
        .map(|p| status_kib(p, field).map(|k| k * 1024))
        .sum()
}

/// Resets the peak RSS (VmHWM) of the tree to the current RSS.
fn reset_peak(pid: u32) {
    for p in process_tree(pid) {
        let _ = std::fs::write(format!("/proc/{p}/clear_refs"), "5");
    }
}

/// User + system CPU time of the tree.
/// User and system CPU time of `pid` and its children so far.
fn tree_cpu_split(pid: u32) -> Option<(Duration, Duration)> {
    let (user, sys) = process_tree(pid)
        .into_iter()
        .map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
            let rest = &stat[stat.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split(' ').collect();
            Some((
                f.get(11)?.parse::<u64>().ok()?,
                f.get(12)?.parse::<u64>().ok()?,
            ))
        })
        .try_fold((0u64, 0u64), |(u, s), t| t.map(|(a, b)| (u + a, s + b)))?;
    // USER_HZ is 100 on every Linux architecture we run on.
    Some((
        Duration::from_millis(user * 10),
        Duration::from_millis(sys * 10),
    ))
}

/// CPU time (user + system) of `pid` and its children so far.
fn tree_cpu(pid: u32) -> Option<Duration> {
    tree_cpu_split(pid).map(|(u, s)| u + s)
}

fn gateway_toml(dir: &Path, upstream: SocketAddr, audit_enabled: bool) -> String {
    let secret = dir.join("ratepay-secret");
    std::fs::write(&secret, "bench-secret").expect("secret file");
    let key_hash = hex::encode(ratepay_gateway::config::sha256(API_KEY.as_bytes()));
    format!(
        r#"
[listen]
proxy = "127.0.0.1:0"
admin = "off"

[credentials.default]
token_url = "http://{upstream}/oauth/token"
client_id = "bench"
client_secret_file = "{secret}"

[upstreams.payment]
url = "http://{upstream}"
audience = "bench-payment"

[upstreams.hpp]
url = "http://{upstream}"
audience = "bench-hpp"

[callers.bench]
api_key_sha256 = "{key_hash}"
operations = ["*"]
partner = "{PARTNER}"

# Limits far above any load this machine can make: the checks run, nothing is refused.
[rate_limits.per_caller]
rate_per_sec = 10000000
burst = 1000000

[rate_limits.upstreams.payment]
rate_per_sec = 10000000
burst = 1000000

[rate_limits.upstreams.hpp]
rate_per_sec = 10000000
burst = 1000000

[cache]
max_bytes = 536870912

[audit]
path = "{audit}"
enabled = {audit_enabled}
"#,
        secret = secret.display(),
        audit = dir.join("audit").join("audit.jsonl").display(),
    )
}

/// Starts `ratepay-gateway serve` on `config` in `dir` (stderr, the access log included, goes
/// to `dir/gateway.log`); returns it and its proxy address once it announced it.
async fn spawn_gateway(dir: &Path, config: String) -> (Proc, SocketAddr) {
    spawn_gateway_bin(&gateway_bin(), dir, config).await
}

/// [`spawn_gateway`] with another build of the gateway (the `baseline` case).
async fn spawn_gateway_bin(bin: &Path, dir: &Path, config: String) -> (Proc, SocketAddr) {
    spawn_gateway_env(bin, dir, config, &[]).await
}

/// [`spawn_gateway_bin`] with extra environment variables (e.g. `RUST_LOG`).
async fn spawn_gateway_env(
    bin: &Path,
    dir: &Path,
    config: String,
    env: &[(&str, &str)],
) -> (Proc, SocketAddr) {
    let (proc, addr, _) = spawn_gateway_admin(bin, dir, config, env, false).await;
    (proc, addr)
}

/// [`spawn_gateway_env`], and with `admin` (the configuration's `[listen] admin` on
/// `127.0.0.1:0`) the admin listener's address as well, for its metrics.
async fn spawn_gateway_admin(
    bin: &Path,
    dir: &Path,
    config: String,
    env: &[(&str, &str)],
    admin: bool,
) -> (Proc, SocketAddr, Option<SocketAddr>) {
    let config = if admin {
        config.replace("admin = \"off\"", "admin = \"127.0.0.1:0\"")
    } else {
        config
    };
    let path = dir.join("gateway.toml");
    std::fs::write(&path, config).expect("config");
    let log = dir.join("gateway.log");
    let mut child = pinned_command(bin)
        .args(["serve", "--config"])
        .envs(gateway_threads().map(|v| ("TOKIO_WORKER_THREADS", v)))
        .envs(env.iter().copied())
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn the gateway");
    let stdout = child.stdout.take().expect("stdout");
    let proc = Proc {
        child,
        name: "the gateway",
    };
    let (addr, admin_addr) = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut listening = |name: &str| {
            let prefix = format!("ratepay-gateway listening {name} ");
            lines.by_ref().map_while(Result::ok).find_map(|l| {
                l.strip_prefix(prefix.as_str())
                    .and_then(|a| a.trim().parse::<SocketAddr>().ok())
            })
        };
        // The proxy is announced first, the admin listener right after it.
        let addr = listening("proxy");
        let admin_addr = if admin && addr.is_some() {
            listening("admin")
        } else {
            None
        };
        // Keep draining stdout so the gateway never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        (addr, admin_addr)
    })
    .await
    .expect("reader");
    let Some(addr) = addr else {
        let tail = std::fs::read_to_string(&log).unwrap_or_default();
        panic!("the gateway did not start:\n{tail}");
    };
    (proc, addr, admin_addr)
}

/// `ratepay_gateway_audit_syncs_total` and `ratepay_gateway_audit_records_total` from the
/// gateway's admin listener (`None` when it cannot be read).
async fn audit_counters(admin: SocketAddr) -> Option<(u64, u64)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(admin).await.ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    let counter = |name: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|v| v.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
    };
    counter("ratepay_gateway_audit_syncs_total").zip(counter("ratepay_gateway_audit_records_total"))
}

/// A `redis-server` on a free loopback port, persistence off. Pinned, it runs on
/// `BENCH_REDIS_CPU` (0: beside the generator and the upstream, like them what the gateway
/// talks to, not what is measured; 1: beside the gateway, away from the generator's load).
fn spawn_redis(dir: &Path) -> Option<(Proc, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .ok()?
        .port();
    let mut cmd = match redis_cpu() {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu, "redis-server"]);
            c
        }
        None => Command::new("redis-server"),
    };
    let mut child = cmd
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let stdout = child.stdout.take()?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("Ready to accept connections"));
    std::thread::spawn(move || for _ in lines {});
    let proc = Proc {
        child,
        name: "redis-server",
    };
    ready.then_some((proc, port))
}

/// The `cluster` cases: gateway E with `[cluster]` (one instance), so each GET spends its caller
/// and upstream budgets in one script call in Redis, and each keyed POST spends its caller's,
/// then takes its idempotency lease with the upstream budgets and completes it after answering. Compared with gateways A (uncached) and B (audit off).
async fn cluster_cases(bench: &mut Bench, upstream: SocketAddr) {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((redis, port)) = spawn_redis(dir.path()) else {
        bench
            .notes
            .push("cluster: redis-server not installed or did not start, skipped".into());
        return;
    };
    std::fs::write(
        dir.path().join("redis-url"),
        format!("redis://127.0.0.1:{port}"),
    )
    .expect("url");
    std::fs::write(dir.path().join("answer-key"), "42".repeat(32)).expect("key");
    let config = format!(
        "{}\n[cluster]\ninstance = \"bench\"\ninstances = 1\nredis_url_file = \"{}\"\nanswer_key_file = \"{}\"\n",
        gateway_toml(dir.path(), upstream, false),
        dir.path().join("redis-url").display(),
        dir.path().join("answer-key").display()
    );
    let (gw, addr) = spawn_gateway(dir.path(), config).await;
    let caller = format!("Bearer {API_KEY}");
    let redis_cpu0 = tree_cpu(redis.pid());
    let t = Target::get(addr, TX_PATH, &caller, false);
    bench.case(CLUSTER_UNCACHED, &t, Some(gw.pid())).await;
    bench
        .case(CLUSTER_POST, &Target::cancellation(addr), Some(gw.pid()))
        .await;
    let requests: u64 = [CLUSTER_UNCACHED, CLUSTER_POST]
        .iter()
        .flat_map(|c| [Mode::Saturation, Mode::FixedRate].map(|m| (*c, m)))
        .filter_map(|(c, m)| bench.row(c, m))
        .map(|r| (r.run.rate() * r.run.elapsed.as_secs_f64()) as u64)
        .sum();
    if let (Some(a), Some(b)) = (redis_cpu0, tree_cpu(redis.pid())) {
        bench.notes.push(format!(
            "cluster: redis-server spent {:.1} µs CPU per request of the cluster cases",
            (b - a).as_secs_f64() * 1e6 / requests.max(1) as f64
        ));
    }
    for (shared, local) in [(CLUSTER_UNCACHED, UNCACHED), (CLUSTER_POST, UNAUDITED)] {
        let fixed = |c| {
            bench
                .row(c, Mode::FixedRate)
                .and_then(|r| r.run.percentile_us(0.5))
        };
        let cpu = |c| {
            bench
                .row(c, Mode::Saturation)
                .and_then(|r| r.cpu_per_request)
        };
        if let (Some(s), Some(l)) = (fixed(shared), fixed(local)) {
            bench.notes.push(format!(
                "cluster vs in-process, {shared}: p50 at {} req/s {s:.0} µs vs {l:.0} µs (+{:.0} µs); \
                 CPU per request {}",
                bench.rate,
                s - l,
                match (cpu(shared), cpu(local)) {
                    (Some(a), Some(b)) => format!(
                        "{:.1} vs {:.1} µs",
                        a.as_secs_f64() * 1e6,
                        b.as_secs_f64() * 1e6
                    ),
                    _ => "n/a".into(),
                }
            ));
        }
    }
    drop(gw);
    drop(redis);
}

/// The gateway's configuration with every upstream (token endpoint included) over HTTPS and
/// the bench CA trusted.
fn over_tls(toml: String, ca: &Path) -> String {
    format!(
        "{}\n[upstream_client]\nca_file = \"{}\"\n",
        toml.replace("http://", "https://"),
        ca.display()
    )
}

/// The `tls` cases: the uncached GET through the gateway, nginx, HAProxy and the hyper floor,
/// each talking TLS to a second static upstream (see `tls.rs`), and the gateway's CPU per
/// request against each.
async fn tls_cases(bench: &mut Bench, caller: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = tls::pki(dir.path());
    let upstream = serve_static(bench.stats.clone(), Some(pki.acceptor.clone())).await;
    let ca = pki.ca_pem.as_path();
    {
        let gdir = tempfile::tempdir().expect("tempdir");
        let config = over_tls(gateway_toml(gdir.path(), upstream, true), ca);
        let (gw, addr) = spawn_gateway(gdir.path(), config).await;
        let t = Target::get(addr, TX_PATH, caller, false);
        bench.case(TLS_GATEWAY, &t, Some(gw.pid())).await;
    }
    let peer = |name: &str| format!("{name}: not installed or did not start, TLS case skipped");
    let ndir = tempfile::tempdir().expect("tempdir");
    match peers::find_program("nginx") {
        Some(nginx) => match peers::spawn_nginx(
            &nginx,
            ndir.path(),
            upstream,
            peers::NginxMode {
                tls: Some(ca),
                quiet: false,
            },
        )
        .await
        {
            Some((proc, addr)) => {
                let t = Target::get(addr, TX_PATH, "Bearer caller-credential", false);
                bench.case(TLS_NGINX, &t, Some(proc.pid())).await;
            }
            None => bench.notes.push(peer("nginx")),
        },
        None => bench.notes.push(peer("nginx")),
    }
    let hdir = tempfile::tempdir().expect("tempdir");
    match peers::find_program("haproxy") {
        Some(bin) => match peers::spawn_haproxy(&bin, hdir.path(), upstream, Some(ca)).await {
            Some((proc, addr)) => {
                let t = Target::get(addr, TX_PATH, "Bearer caller-credential", false);
                bench.case(TLS_HAPROXY, &t, Some(proc.pid())).await;
            }
            None => bench.notes.push(peer("haproxy")),
        },
        None => bench.notes.push(peer("haproxy")),
    }
    match peers::spawn_floor(upstream, Some(ca)).await {
        Some((proc, addr)) => {
            let t = Target::get(addr, TX_PATH, "Bearer caller-credential", false);
            bench.case(TLS_FLOOR, &t, Some(proc.pid())).await;
        }
        None => bench.notes.push(peer("the floor proxy")),
    }
    let cpu = |b: &Bench, c: &str| {
        b.row(c, Mode::Saturation)
            .and_then(|r| r.cpu_per_request)
            .map(|d| d.as_secs_f64() * 1e6)
    };
    if let Some(gw) = cpu(bench, TLS_GATEWAY) {
        let ratios: Vec<String> = [TLS_NGINX, TLS_HAPROXY, TLS_FLOOR]
            .iter()
            .filter_map(|p| cpu(bench, p).map(|c| format!("{:.2} × {p} ({c:.1} µs)", gw / c)))
            .collect();
        bench.notes.push(format!(
            "TLS upstream: the gateway spends {gw:.1} µs CPU per request; {}",
            ratios.join(", ")
        ));
    }
}

/// CPU per request (saturation) of the gateway's uncached case against each peer of the run,
/// and what its access log costs.
fn peer_ratios(bench: &mut Bench) {
    let cpu = |b: &Bench, c: &str| {
        b.row(c, Mode::Saturation)
            .and_then(|r| r.cpu_per_request)
            .map(|d| d.as_secs_f64() * 1e6)
    };
    let Some(gw) = cpu(bench, UNCACHED) else {
        return;
    };
    let mut notes = Vec::new();
    let user = |b: &Bench, c: &str| {
        b.row(c, Mode::Saturation)
            .and_then(|r| r.user_per_request)
            .map(|d| d.as_secs_f64() * 1e6)
    };
    for peer in [NGINX_PASS, HAPROXY_PASS, FLOOR] {
        if let Some(p) = cpu(bench, peer) {
            let users = match (user(bench, UNCACHED), user(bench, peer)) {
                (Some(g), Some(p)) if p > 0.0 => {
                    format!("; user time {g:.1} / {p:.1} µs = {:.2} ×", g / p)
                }
                _ => String::new(),
            };
            notes.push(format!(
                "CPU per request, gateway uncached / {peer}: {gw:.1} / {p:.1} µs = {:.2} ×{users}",
                gw / p
            ));
        }
    }
    if let Some(off) = cpu(bench, UNCACHED_NOLOG) {
        notes.push(format!(
            "access log: {gw:.1} µs per request with it, {off:.1} without: {:+.1} µs",
            gw - off
        ));
    }
    bench.notes.extend(notes);
}

/// The gateway binary under test: `BENCH_GATEWAY_BIN`, else the one `cargo bench` built.
/// That one is not quite the production build: `cargo bench` builds it with the
/// dev-dependencies' features unified in, among them tokio's `test-util`, whose clock takes a
/// mutex at every reading (pinned paired slices against `cargo build --release`'s binary,
/// session 18: uncached +0.4 %, cache hit −0.8 %, audited cancellation +6.7 %).
pub fn gateway_bin() -> PathBuf {
    std::env::var_os("BENCH_GATEWAY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ratepay-gateway")))
}

/// `BENCH_PIN`: the bench (generator and upstream) runs on CPU 0, every measured proxy alone on
/// CPU 1 with one worker, so a proxy's CPU per request is not mixed with scheduler sharing.
fn pinned() -> bool {
    std::env::var_os("BENCH_PIN").is_some_and(|v| v != "0")
}

/// Where redis-server runs when pinned (`BENCH_REDIS_CPU`, default 0); `None` unpinned.
fn redis_cpu() -> Option<String> {
    pinned().then(|| std::env::var("BENCH_REDIS_CPU").unwrap_or_else(|_| "0".into()))
}

/// The measured proxy's command: under `taskset -c 1` when pinned.
fn pinned_command(program: &Path) -> Command {
    if pinned() {
        let mut c = Command::new("taskset");
        c.args(["-c", "1"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// The gateway's worker threads: `BENCH_GW_THREADS`, or one when pinned.
fn gateway_threads() -> Option<String> {
    std::env::var("BENCH_GW_THREADS")
        .ok()
        .or_else(|| pinned().then(|| "1".to_owned()))
}

// ---------------------------------------------------------------------------------------------
// Cases and the report

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Saturation,
    FixedRate,
}

/// One printed line.
struct Row {
    case: &'static str,
    mode: Mode,
    run: Run,
    /// RSS of the measured process (tree) after the phase, and its peak during the phase.
    rss: Option<u64>,
    peak: Option<u64>,
    cpu_per_request: Option<Duration>,
    /// Of which user time (the rest is the kernel's).
    user_per_request: Option<Duration>,
    upstream_calls: u64,
}

struct Bench {
    secs: Duration,
    connections: usize,
    rate: f64,
    cases: Vec<String>,
    perf: Option<PathBuf>,
    /// The case whose saturation phase `perf` records.
    perf_case: &'static str,
    stats: Arc<UpstreamStats>,
    rows: Vec<Row>,
    notes: Vec<String>,
    /// The `paired` case's checks: name, and pass/fail (`None`: context) with the figures.
    paired: Vec<(&'static str, paired::Verdict)>,
}

impl Bench {
    fn wants(&self, case: &str) -> bool {
        self.cases.iter().any(|c| c == case)
    }

    fn row(&self, case: &str, mode: Mode) -> Option<&Row> {
        self.rows.iter().find(|r| r.case == case && r.mode == mode)
    }

    fn direct(&self, mode: Mode) -> Option<&Row> {
        self.row(DIRECT, mode)
    }

    /// Runs one phase of `case` against `target`, measuring the process `pid` when given.
    async fn phase(&mut self, case: &'static str, mode: Mode, target: &Target, pid: Option<u32>) {
        if let Some(p) = pid {
            reset_peak(p);
        }
        let cpu0 = pid.and_then(tree_cpu);
        let user0 = pid.and_then(tree_cpu_split).map(|(u, _)| u);
        let calls0 = self.stats.calls();
        let perf = match &self.perf {
            Some(file) if case == self.perf_case && mode == perf_phase() => {
                pid.and_then(|p| start_perf(file, p))
            }
            _ => None,
        };
        let run = match mode {
            Mode::Saturation => closed_loop(target, self.connections, self.secs).await,
            Mode::FixedRate => open_loop(target, self.connections, self.rate, self.secs).await,
        };
        if let Some(perf) = perf {
            stop_perf(perf);
            if let Some(file) = self.perf.clone().filter(|_| perf_events().is_some()) {
                self.notes.push(per_request_counts(case, &file, run.ok));
            }
        }
        let cpu1 = pid.and_then(tree_cpu);
        let user1 = pid.and_then(tree_cpu_split).map(|(u, _)| u);
        let row = Row {
            case,
            mode,
            rss: pid.and_then(|p| tree_bytes(p, "VmRSS:")),
            peak: pid.and_then(|p| tree_bytes(p, "VmHWM:")),
            cpu_per_request: match (cpu0, cpu1) {
                (Some(a), Some(b)) if run.ok > 0 => Some((b - a) / run.ok as u32),
                _ => None,
            },
            user_per_request: match (user0, user1) {
                (Some(a), Some(b)) if run.ok > 0 => Some((b - a) / run.ok as u32),
                _ => None,
            },
            upstream_calls: self.stats.calls() - calls0,
            run,
        };
        self.print(&row);
        self.rows.push(row);
    }

    /// How a phase of `mode` is named in the report.
    fn phase_label(&self, mode: Mode) -> String {
        match mode {
            Mode::Saturation => "saturation".to_owned(),
            Mode::FixedRate => format!("{:.0}/s", self.rate),
        }
    }

    /// [`case`](Bench::case) for an audited POST, with the audit log's group commit per phase
    /// in the notes: how many records each `fdatasync` carried and how many syncs each
    /// request cost (from the gateway's metrics on its `admin` listener).
    async fn audited_case(
        &mut self,
        case: &'static str,
        target: &Target,
        pid: u32,
        admin: Option<SocketAddr>,
    ) {
        let _ = closed_loop(target, self.connections, Duration::from_millis(300)).await;
        for mode in [Mode::Saturation, Mode::FixedRate] {
            let before = match admin {
                Some(a) => audit_counters(a).await,
                None => None,
            };
            self.phase(case, mode, target, Some(pid)).await;
            let after = match admin {
                Some(a) => audit_counters(a).await,
                None => None,
            };
            let requests = self.rows.last().map_or(0, |r| r.upstream_calls);
            let note = match before.zip(after) {
                Some(((s0, r0), (s1, r1))) if s1 > s0 && requests > 0 => {
                    let (syncs, records) = (s1 - s0, r1 - r0);
                    format!(
                        "{case}, {}: {syncs} syncs for {records} records and {requests} requests: \
                         {:.1} records per sync, {:.2} syncs per request",
                        self.phase_label(mode),
                        records as f64 / syncs as f64,
                        syncs as f64 / requests as f64
                    )
                }
                _ => format!("{case}: audit sync counts not read (admin listener)"),
            };
            self.notes.push(note);
        }
    }

    /// A short unmeasured warm-up, then saturation, then the fixed rate.
    async fn case(&mut self, case: &'static str, target: &Target, pid: Option<u32>) {
        let _ = closed_loop(target, self.connections, Duration::from_millis(300)).await;
        self.phase(case, Mode::Saturation, target, pid).await;
        self.phase(case, Mode::FixedRate, target, pid).await;
    }

    fn print_header(&self) {
        println!(
            "\n{:<44} {:>10} {:>9} {:>8} {:>8} {:>9} {:>6} {:>7} {:>8} {:>8} {:>8} {:>8} {:>7} {:>8}",
            "case",
            "phase",
            "req/s",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
            "errors",
            "×direct",
            "+p50 µs",
            "RSS MiB",
            "peak MiB",
            "cpu µs/r",
            "user",
            "upstream"
        );
    }

    fn print(&self, r: &Row) {
        let opt = |v: Option<f64>, prec: usize| match v {
            Some(v) if v.is_finite() => format!("{v:.prec$}"),
            _ => "-".into(),
        };
        let ratio = match (r.mode, self.direct(Mode::Saturation)) {
            (Mode::Saturation, Some(d)) if r.case != DIRECT => Some(r.run.rate() / d.run.rate()),
            _ => None,
        };
        let added = match (r.mode, self.direct(Mode::FixedRate)) {
            (Mode::FixedRate, Some(d)) if r.case != DIRECT => r
                .run
                .percentile_us(0.5)
                .zip(d.run.percentile_us(0.5))
                .map(|(a, b)| a - b),
            _ => None,
        };
        let phase = self.phase_label(r.mode);
        println!(
            "{:<44} {:>10} {:>9.0} {:>8} {:>8} {:>9} {:>6} {:>7} {:>8} {:>8} {:>8} {:>8} {:>7} {:>8}",
            r.case,
            phase,
            r.run.rate(),
            opt(r.run.percentile_us(0.5), 0),
            opt(r.run.percentile_us(0.99), 0),
            opt(r.run.percentile_us(0.999), 0),
            r.run.errors,
            opt(ratio, 2),
            opt(added, 0),
            opt(r.rss.map(|b| b as f64 / MIB), 1),
            opt(r.peak.map(|b| b as f64 / MIB), 1),
            opt(r.cpu_per_request.map(|d| d.as_nanos() as f64 / 1000.0), 1),
            opt(r.user_per_request.map(|d| d.as_nanos() as f64 / 1000.0), 1),
            r.upstream_calls,
        );
    }
}

const DIRECT: &str = "direct: GET straight to the upstream";
/// The same, with the upstream in a process of its own rather than the generator's (not in the
/// default list; the RSS/CPU columns are the upstream's).
const DIRECT_PROCESS: &str = "direct: upstream in its own process";
const UNCACHED: &str = "gateway uncached: GET transaction";
const UNCACHED_AGAIN: &str = "gateway uncached, again (steady state)";
const CACHED: &str = "gateway cache hit: GET session record";
const AUDITED: &str = "gateway POST cancellation, audited";
const UNAUDITED: &str = "gateway POST cancellation, audit off";
const BASE_UNCACHED: &str = "baseline build uncached: GET transaction";
const BASE_CACHED: &str = "baseline build cache hit: GET session record";
const BASE_AUDITED: &str = "baseline build POST cancellation, audited";
const CLUSTER_UNCACHED: &str = "cluster (redis) uncached: GET transaction";
const CLUSTER_POST: &str = "cluster (redis) POST cancellation, audit off";
const NGINX_PASS: &str = "nginx proxy_pass: GET transaction";
const NGINX_CACHE: &str = "nginx proxy_cache hit: GET session record";
const NGINX_POST: &str = "nginx proxy_pass: POST cancellation";
const NGINX_NOLOG: &str = "nginx proxy_pass, access log off";
const HAPROXY_PASS: &str = "haproxy: GET transaction";
const FLOOR: &str = "hyper floor proxy: GET transaction";
const UNCACHED_NOLOG: &str = "gateway uncached, access log off";
const TLS_GATEWAY: &str = "gateway uncached, TLS upstream";
const TLS_NGINX: &str = "nginx proxy_pass, TLS upstream";
const TLS_HAPROXY: &str = "haproxy, TLS upstream";
const TLS_FLOOR: &str = "hyper floor proxy, TLS upstream";

/// `BENCH_PERF_PHASE`: the phase `perf` watches, `saturation` (the default) or `rate` (the
/// fixed-rate phase, where each request is served alone and wake-ups weigh most).
fn perf_phase() -> Mode {
    match std::env::var("BENCH_PERF_PHASE").as_deref() {
        Ok("rate") => Mode::FixedRate,
        _ => Mode::Saturation,
    }
}

/// `BENCH_PERF_EVENTS`: events for `perf stat` (counted) instead of `perf record` (sampled).
fn perf_events() -> Option<String> {
    std::env::var("BENCH_PERF_EVENTS")
        .ok()
        .filter(|e| !e.is_empty())
}

/// `perf` on the process `pid` and its children (nginx's workers).
fn start_perf(file: &Path, pid: u32) -> Option<Child> {
    let pid: Vec<String> = process_tree(pid).iter().map(u32::to_string).collect();
    let pid = pid.join(",");
    let freq = std::env::var("BENCH_PERF_FREQ").unwrap_or_else(|_| "499".into());
    let mut cmd = Command::new("perf");
    match perf_events() {
        Some(events) => cmd.args(["stat", "-x", ",", "-e", &events, "-p", &pid, "-o"]),
        None => cmd.args([
            "record",
            "--call-graph",
            "dwarf,16384",
            "-F",
            &freq,
            "-p",
            &pid,
            "-o",
        ]),
    };
    cmd.arg(file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| eprintln!("perf did not start: {e}"))
        .ok()
}

/// A note with each event of `perf stat`'s CSV output in `file` divided by `requests`, the
/// events that occurred at least once in a hundred requests, most frequent first.
fn per_request_counts(case: &str, file: &Path, requests: usize) -> String {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut counts: Vec<(f64, &str)> = text
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(',');
            let count = fields.next()?.trim().parse::<f64>().ok()?;
            let event = fields.nth(1)?.trim();
            Some((count / requests.max(1) as f64, event))
        })
        .filter(|(per, _)| *per >= 0.01)
        .collect();
    counts.sort_by(|a, b| b.0.total_cmp(&a.0));
    let listed: Vec<String> = counts
        .iter()
        .map(|(per, event)| format!("{event} {per:.2}"))
        .collect();
    format!("{case}: per request ({requests}): {}", listed.join(", "))
}

fn stop_perf(mut perf: Child) {
    let _ = Command::new("kill")
        .args(["-INT", &perf.id().to_string()])
        .status();
    let _ = perf.wait();
}

/// Fills the cache with `FILL_RECORDS` distinct session records over the bench connections.
async fn fill(addr: SocketAddr, connections: usize) -> (usize, usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let next = next.clone();
        tasks.spawn(async move {
            let (mut ok, mut errors) = (0, 0);
            let Some(mut send) = connect(addr).await else {
                return (0, 1);
            };
            let auth = format!("Bearer {API_KEY}");
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= FILL_RECORDS {
                    break;
                }
                let t = Target::get(
                    addr,
                    &format!("/pps/api/v1/session-record/fill-{i:06}"),
                    &auth,
                    false,
                );
                match exchange(&mut send, t.request(0, 0, 0)).await {
                    Exchange::Ok => ok += 1,
                    Exchange::Failed => errors += 1,
                    Exchange::Closed => {
                        errors += 1;
                        match connect(addr).await {
                            Some(s) => send = s,
                            None => break,
                        }
                    }
                }
            }
            (ok, errors)
        });
    }
    let mut total = (0, 0);
    while let Some(done) = tasks.join_next().await {
        let (ok, errors) = done.expect("fill task");
        total.0 += ok;
        total.1 += errors;
    }
    total
}

/// How many of `sample` filled records (spread over the range) are answered from the cache.
async fn sampled_hits(addr: SocketAddr, sample: usize) -> usize {
    let Some(mut send) = connect(addr).await else {
        return 0;
    };
    let mut hits = 0;
    for k in 0..sample {
        let i = k * (FILL_RECORDS / sample);
        let req = Target::get(
            addr,
            &format!("/pps/api/v1/session-record/fill-{i:06}"),
            &format!("Bearer {API_KEY}"),
            false,
        )
        .request(0, 0, 0);
        if send.ready().await.is_err() {
            break;
        }
        if let Ok(resp) = send.send_request(req).await {
            let hit = resp.headers().get("x-cache").is_some_and(|v| v == "HIT");
            let _ = resp.into_body().collect().await;
            hits += usize::from(hit);
        }
    }
    hits
}

fn mib(b: Option<u64>) -> String {
    b.map_or("-".into(), |b| format!("{:.1} MiB", b as f64 / MIB))
}

async fn run() {
    let mut bench = Bench {
        secs: Duration::from_secs(env_or("BENCH_SECS", 3)),
        connections: env_or("BENCH_CONNECTIONS", 32) as usize,
        rate: env_or("BENCH_RATE", 2000) as f64,
        cases: std::env::var("BENCH_CASES")
            .unwrap_or_else(|_| {
                "direct,uncached,cached,audited,unaudited,cluster,nginx,haproxy,floor,nolog,tls,memory"
                    .into()
            })
            .split(',')
            .map(|s| s.trim().to_owned())
            .collect(),
        perf: std::env::var_os("BENCH_PERF").map(PathBuf::from),
        perf_case: match std::env::var("BENCH_PERF_CASE").as_deref() {
            Ok("cached") => CACHED,
            Ok("audited") => AUDITED,
            Ok("unaudited") => UNAUDITED,
            Ok("cluster") => CLUSTER_UNCACHED,
            Ok("cluster-post") => CLUSTER_POST,
            Ok("floor") => FLOOR,
            Ok("nginx") => NGINX_PASS,
            Ok("nolog") => UNCACHED_NOLOG,
            Ok("tls") => TLS_GATEWAY,
            Ok("tls-floor") => TLS_FLOOR,
            Ok("tls-nginx") => TLS_NGINX,
            _ => UNCACHED,
        },
        stats: Arc::new(UpstreamStats::default()),
        rows: Vec::new(),
        notes: Vec::new(),
        paired: Vec::new(),
    };
    let (upstream, stats) = static_upstream().await;
    bench.stats = stats;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\nload: {} connections (HTTP/1.1 keep-alive, loopback), {} s per phase, fixed rate {} req/s; \
         {} cores; load average before: {}",
        bench.connections,
        bench.secs.as_secs(),
        bench.rate,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!(
        "gateway: {}{}",
        gateway_bin().display(),
        if std::env::var_os("BENCH_GATEWAY_BIN").is_some() {
            ""
        } else {
            " (built by cargo bench, with the dev-dependencies' features: see BENCH_GATEWAY_BIN)"
        }
    );
    bench.print_header();

    let caller = format!("Bearer {API_KEY}");
    if bench.wants("direct") {
        let t = Target::get(upstream, TX_PATH, STATIC_BEARER, true);
        bench.case(DIRECT, &t, None).await;
    }
    if bench.wants("direct_process") {
        let (up, addr) = spawn_upstream_process().await;
        let t = Target::get(addr, TX_PATH, STATIC_BEARER, true);
        bench.case(DIRECT_PROCESS, &t, Some(up.pid())).await;
    }

    // Gateway A: audit on; the GET cases, the steady-state repeat and the audited POSTs.
    let mut idle_rss = None;
    let mut steady = None;
    if ["uncached", "cached", "audited"]
        .iter()
        .any(|c| bench.wants(c))
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = gateway_bin();
        let bin = bin.as_path();
        let config = gateway_toml(dir.path(), upstream, true);
        let (gw, addr, admin) = spawn_gateway_admin(bin, dir.path(), config, &[], true).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        idle_rss = tree_bytes(gw.pid(), "VmRSS:");
        bench.notes.push(format!(
            "gateway A (audit on) pid {}: idle RSS after start {}",
            gw.pid(),
            mib(idle_rss)
        ));
        if bench.wants("uncached") {
            let t = Target::get(addr, TX_PATH, &caller, false);
            bench.case(UNCACHED, &t, Some(gw.pid())).await;
        }
        if bench.wants("cached") {
            let t = Target::get(addr, RECORD_PATH, &caller, false);
            bench.case(CACHED, &t, Some(gw.pid())).await;
        }
        if bench.wants("uncached") {
            let t = Target::get(addr, TX_PATH, &caller, false);
            let before = tree_bytes(gw.pid(), "VmRSS:");
            bench
                .phase(UNCACHED_AGAIN, Mode::Saturation, &t, Some(gw.pid()))
                .await;
            let after = tree_bytes(gw.pid(), "VmRSS:");
            steady = before.zip(after);
        }
        if bench.wants("audited") {
            let t = Target::cancellation(addr);
            bench.audited_case(AUDITED, &t, gw.pid(), admin).await;
        }
        drop(gw);
    }

    // Gateway A': an earlier build (`BENCH_BASELINE_BIN`) on the same configuration, right after
    // this build's cases, so a refactoring is compared before/after within one run.
    if let Some(bin) = std::env::var_os("BENCH_BASELINE_BIN").map(PathBuf::from) {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = gateway_toml(dir.path(), upstream, true);
        let (gw, addr) = spawn_gateway_bin(&bin, dir.path(), config).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        bench.notes.push(format!(
            "baseline build {} pid {}: idle RSS after start {}",
            bin.display(),
            gw.pid(),
            mib(tree_bytes(gw.pid(), "VmRSS:"))
        ));
        if bench.wants("uncached") {
            let t = Target::get(addr, TX_PATH, &caller, false);
            bench.case(BASE_UNCACHED, &t, Some(gw.pid())).await;
        }
        if bench.wants("cached") {
            let t = Target::get(addr, RECORD_PATH, &caller, false);
            bench.case(BASE_CACHED, &t, Some(gw.pid())).await;
        }
        if bench.wants("audited") {
            let t = Target::cancellation(addr);
            bench.case(BASE_AUDITED, &t, Some(gw.pid())).await;
        }
        drop(gw);
    }

    // More before/after rounds (`BENCH_AB_ROUNDS`), alternating which build goes first, so
    // neither always runs on a warmer machine; then the median of each build's rounds.
    if let Some(bin) = std::env::var_os("BENCH_BASELINE_BIN").map(PathBuf::from) {
        let rounds = env_or("BENCH_AB_ROUNDS", 1);
        let head = gateway_bin();
        for round in 2..=rounds {
            let order = if round % 2 == 0 {
                [(&bin, AB_BASE), (&head, AB_HEAD)]
            } else {
                [(&head, AB_HEAD), (&bin, AB_BASE)]
            };
            for (b, build) in order {
                ab_round(&mut bench, b, build, round, upstream, &caller).await;
            }
        }
        ab_summary(&mut bench);
        ab_slices(&mut bench, &bin, upstream, &caller).await;
    }

    // Gateway B: the same configuration with audit off.
    if bench.wants("unaudited") {
        let dir = tempfile::tempdir().expect("tempdir");
        let (gw, addr) = spawn_gateway(dir.path(), gateway_toml(dir.path(), upstream, false)).await;
        bench
            .case(UNAUDITED, &Target::cancellation(addr), Some(gw.pid()))
            .await;
        drop(gw);
    }

    // Gateway E: limits and idempotency in Redis (`[cluster]`), against gateways A and B.
    if bench.wants("cluster") {
        cluster_cases(&mut bench, upstream).await;
    }

    if bench.wants("nginx") {
        match peers::find_program("nginx") {
            None => bench
                .notes
                .push("nginx: not installed, peer cases skipped".into()),
            Some(nginx) => {
                let dir = tempfile::tempdir().expect("tempdir");
                match peers::spawn_nginx(&nginx, dir.path(), upstream, peers::NginxMode::default())
                    .await
                {
                    None => bench.notes.push("nginx: did not start, skipped".into()),
                    Some((proc, addr)) => {
                        let pid = proc.pid();
                        bench.notes.push(format!(
                            "nginx ({}): {} processes (master + workers), idle RSS {}",
                            nginx.display(),
                            process_tree(pid).len(),
                            mib(tree_bytes(pid, "VmRSS:"))
                        ));
                        let t = Target::get(addr, TX_PATH, "Bearer caller-credential", false);
                        bench.case(NGINX_PASS, &t, Some(pid)).await;
                        let t = Target::get(addr, RECORD_PATH, "Bearer caller-credential", false);
                        bench.case(NGINX_CACHE, &t, Some(pid)).await;
                        // The same POST the gateway's cancellation cases send, a fresh key each.
                        let mut t = Target::cancellation(addr);
                        t.headers.insert(
                            header::AUTHORIZATION,
                            HeaderValue::from_static("Bearer caller-credential"),
                        );
                        bench.case(NGINX_POST, &t, Some(pid)).await;
                        drop(proc);
                    }
                }
                // Its access log off, for the log's cost beside the gateway's.
                let quiet = tempfile::tempdir().expect("tempdir");
                let mode = peers::NginxMode {
                    tls: None,
                    quiet: true,
                };
                match peers::spawn_nginx(&nginx, quiet.path(), upstream, mode).await {
                    None => bench
                        .notes
                        .push("nginx (log off): did not start, skipped".into()),
                    Some((proc, addr)) => {
                        let t = Target::get(addr, TX_PATH, "Bearer caller-credential", false);
                        bench.case(NGINX_NOLOG, &t, Some(proc.pid())).await;
                        drop(proc);
                    }
                }
            }
        }
    }

    if bench.wants("haproxy") {
        match peers::find_program("haproxy") {
            None => bench
                .notes
                .push("haproxy: not installed, peer case skipped".into()),
            Some(bin) => {
                let dir = tempfile::tempdir().expect("tempdir");
                match peers::spawn_haproxy(&bin, dir.path(), upstream, None).await {
                    None => bench.notes.push("haproxy: did not start, skipped".into()),
                    Some((proc, addr)) => {
                        let t = Target::get(addr, TX_PATH, "Bearer caller-credential", false);
                        bench.case(HAPROXY_PASS, &t, Some(proc.pid())).await;
                    }
                }
            }
        }
    }
    if bench.wants("floor") {
        match peers::spawn_floor(upstream, None).await {
            None => bench
                .notes
                .push("floor proxy: did not start, skipped".into()),
            Some((proc, addr)) => {
                let t = Target::get(addr, TX_PATH, "Bearer caller-credential", false);
                bench.case(FLOOR, &t, Some(proc.pid())).await;
            }
        }
    }
    // Gateway A without its access log: what the log costs per request.
    if bench.wants("nolog") {
        let dir = tempfile::tempdir().expect("tempdir");
        let (gw, addr) = spawn_gateway_env(
            &gateway_bin(),
            dir.path(),
            gateway_toml(dir.path(), upstream, true),
            &[("RUST_LOG", "info,ratepay_gateway::access=off")],
        )
        .await;
        let t = Target::get(addr, TX_PATH, &caller, false);
        bench.case(UNCACHED_NOLOG, &t, Some(gw.pid())).await;
    }
    peer_ratios(&mut bench);
    if bench.wants("tls") {
        tls_cases(&mut bench, &caller).await;
    }
    if bench.wants("paired") {
        paired::peer_pairs(&mut bench, upstream).await;
    }

    // Gateway D: a long run at a steady rate, RSS sampled every minute.
    let mut drift = None;
    if bench.wants("steady") {
        drift = steady_run(&mut bench, upstream, &caller).await;
    }

    // Gateway C: memory holding many cached records.
    let mut filled = None;
    if bench.wants("memory") {
        let dir = tempfile::tempdir().expect("tempdir");
        let (gw, addr) = spawn_gateway(dir.path(), gateway_toml(dir.path(), upstream, true)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let idle = tree_bytes(gw.pid(), "VmRSS:");
        idle_rss = idle_rss.or(idle);
        reset_peak(gw.pid());
        let gets0 = bench.stats.gets.load(Ordering::Relaxed);
        let started = Instant::now();
        let (ok, errors) = fill(addr, bench.connections).await;
        let took = started.elapsed();
        // Let moka's maintenance settle, then read.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let hits = sampled_hits(addr, 1000).await;
        let rss = tree_bytes(gw.pid(), "VmRSS:");
        let peak = tree_bytes(gw.pid(), "VmHWM:");
        bench.notes.push(format!(
            "gateway C: idle RSS {}; {FILL_RECORDS} distinct session records fetched in {:.1} s \
             ({ok} ok, {errors} errors, {} upstream GETs): RSS {}, peak {}; {hits}/1000 sampled \
             records answered from the cache",
            mib(idle),
            took.as_secs_f64(),
            bench.stats.gets.load(Ordering::Relaxed) - gets0,
            mib(rss),
            mib(peak),
        ));
        filled = rss.map(|r| (r, hits));
        drop(gw);
    }

    println!();
    for n in &bench.notes {
        println!("{n}");
    }
    if let Some(late) = bench.rows.iter().filter_map(|r| r.run.pacer_late_p50).max() {
        println!(
            "open-loop pacer: sends left up to {} µs (p50) after their scheduled time; \
             included in the fixed-rate latencies of every case",
            late.as_micros()
        );
    }
    println!(
        "columns: ×direct = req/s over the direct case's (saturation); +p50 = p50 minus the \
         direct case's p50 at the same fixed rate; RSS/peak/cpu of the gateway (nginx: master + \
         workers) during the phase, user = the user-space part of cpu; upstream = calls the static \
         upstream answered"
    );
    targets(&bench, idle_rss, steady, filled, drift);
}

const AB_HEAD: &str = "this build";
const AB_BASE: &str = "baseline build";
/// The A/B cases: the kind as it appears in round labels, the round-1 labels of this build and of
/// the baseline.
const AB_KINDS: [(&str, &str, &str); 3] = [
    ("uncached", UNCACHED, BASE_UNCACHED),
    ("cached", CACHED, BASE_CACHED),
    ("audited", AUDITED, BASE_AUDITED),
];

fn ab_label(build: &str, kind: &str, round: u64) -> String {
    format!("{build} {kind}, round {round}")
}

/// A gateway of `bin` on the usual configuration (audit on, or off), for the A/B cases; the
/// directory holds its configuration and audit log and must outlive it.
async fn spawn_ab_gateway(
    bin: &Path,
    upstream: SocketAddr,
    audit: bool,
) -> (tempfile::TempDir, Proc, SocketAddr) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = gateway_toml(dir.path(), upstream, audit);
    let (gw, addr) = spawn_gateway_bin(bin, dir.path(), config).await;
    (dir, gw, addr)
}

/// The request of an A/B case (`AB_KINDS`) against the gateway at `addr`.
fn ab_target(kind: &str, addr: SocketAddr, caller: &str) -> Target {
    match kind {
        "uncached" => Target::get(addr, TX_PATH, caller, false),
        "cached" => Target::get(addr, RECORD_PATH, caller, false),
        _ => Target::cancellation(addr),
    }
}

/// One A/B round of `bin`: a fresh gateway on the usual configuration, the wanted A/B cases.
async fn ab_round(
    bench: &mut Bench,
    bin: &Path,
    build: &str,
    round: u64,
    upstream: SocketAddr,
    caller: &str,
) {
    let (_dir, gw, addr) = spawn_ab_gateway(bin, upstream, true).await;
    for (kind, _, _) in AB_KINDS {
        if !bench.wants(kind) {
            continue;
        }
        let target = ab_target(kind, addr, caller);
        // Labels live as long as the rows, which live until the process ends.
        let label: &'static str = Box::leak(ab_label(build, kind, round).into_boxed_str());
        bench.case(label, &target, Some(gw.pid())).await;
    }
    drop(gw);
}

/// The median saturation CPU µs per request of each build over its rounds, as a note.
fn ab_summary(bench: &mut Bench) {
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    for (kind, head_first, base_first) in AB_KINDS {
        let samples = |first: &str, build: &str| {
            let prefix = format!("{build} {kind}, round ");
            bench
                .rows
                .iter()
                .filter(|r| r.mode == Mode::Saturation)
                .filter(|r| r.case == first || r.case.starts_with(&prefix))
                .filter_map(|r| r.cpu_per_request)
                .map(|d| d.as_nanos() as f64 / 1000.0)
                .collect::<Vec<_>>()
        };
        let (head, base) = (samples(head_first, AB_HEAD), samples(base_first, AB_BASE));
        if let (Some(h), Some(b)) = (median(head.clone()), median(base.clone())) {
            let list = |v: &[f64]| v.iter().map(|x| format!("{x:.1}")).collect::<Vec<_>>();
            bench.notes.push(format!(
                "before/after {kind}: CPU µs/request median {h:.1} (this build, {:?}) vs {b:.1} \
                 (baseline, {:?}): {:+.1} %",
                list(&head),
                list(&base),
                (h / b - 1.0) * 100.0
            ));
        }
    }
}

/// `BENCH_AB_SLICES` [paired slices](paired) of this build and the baseline, both on the usual
/// configuration, per A/B kind (and, for `unaudited`, both with audit off): the note gives the
/// median and the quartiles of the ratios of CPU per request, this build over the baseline.
async fn ab_slices(bench: &mut Bench, bin: &Path, upstream: SocketAddr, caller: &str) {
    let slices = env_or("BENCH_AB_SLICES", 0) as usize;
    if slices == 0 {
        return;
    }
    let slice = Duration::from_millis(env_or("BENCH_AB_SLICE_MS", 1000).max(100));
    let head_bin = gateway_bin();
    let (_head_dir, head, head_addr) = spawn_ab_gateway(&head_bin, upstream, true).await;
    let (_base_dir, base, base_addr) = spawn_ab_gateway(bin, upstream, true).await;
    for (kind, _, _) in AB_KINDS {
        if bench.wants(kind) {
            let targets = [
                ab_target(kind, head_addr, caller),
                ab_target(kind, base_addr, caller),
            ];
            ab_pair(
                bench,
                kind,
                &targets,
                [head.pid(), base.pid()],
                slices,
                slice,
            )
            .await;
        }
    }
    drop((head, base));
    // The cancellation with audit off: the money path's own work, without the disk.
    if bench.wants("unaudited") {
        let (_head_dir, head, head_addr) = spawn_ab_gateway(&head_bin, upstream, false).await;
        let (_base_dir, base, base_addr) = spawn_ab_gateway(bin, upstream, false).await;
        let targets = [
            Target::cancellation(head_addr),
            Target::cancellation(base_addr),
        ];
        let pids = [head.pid(), base.pid()];
        ab_pair(bench, "unaudited", &targets, pids, slices, slice).await;
    }
}

/// `slices` pairs of `targets` (this build's, the baseline's, served by `pids`), noted.
async fn ab_pair(
    bench: &mut Bench,
    kind: &str,
    targets: &[Target; 2],
    pids: [u32; 2],
    slices: usize,
    slice: Duration,
) {
    let sides = [
        paired::Side {
            target: &targets[0],
            pid: pids[0],
        },
        paired::Side {
            target: &targets[1],
            pid: pids[1],
        },
    ];
    let got = paired::slices(sides, slices, slice, bench.connections).await;
    let ratios = got.iter().map(|[h, b]| h.cpu / b.cpu).collect();
    match paired::quartiles(ratios) {
        Some([q1, m, q3]) => bench.notes.push(format!(
            "paired slices {kind}: CPU per request this build / baseline, median {m:.3} \
             (quartiles {q1:.3} to {q3:.3}) over {} pairs of {} ms ({:+.1} %)",
            got.len(),
            slice.as_millis(),
            (m - 1.0) * 100.0
        )),
        None => bench
            .notes
            .push(format!("paired slices {kind}: no pair measured")),
    }
}

/// What the steady run saw: RSS after its first minute and at its end, and its errors.
struct Drift {
    first: u64,
    last: u64,
    minutes: usize,
    errors: usize,
}

/// `BENCH_RATE` req/s for `BENCH_STEADY_SECS`, two thirds uncached GETs and one third cache hits
/// (each on its own connections), in one-minute open-loop rounds. Prints a row per minute.
async fn steady_run(bench: &mut Bench, upstream: SocketAddr, caller: &str) -> Option<Drift> {
    let total = Duration::from_secs(env_or("BENCH_STEADY_SECS", 600));
    let round = Duration::from_secs(60).min(total);
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, addr) = spawn_gateway(dir.path(), gateway_toml(dir.path(), upstream, true)).await;
    let pid = gw.pid();
    let uncached = Target::get(addr, TX_PATH, caller, false);
    let cached = Target::get(addr, RECORD_PATH, caller, false);
    let per_kind = (bench.connections / 2).max(1);
    let mut samples = Vec::new();
    let mut errors = 0;
    let started = Instant::now();
    let mut minute = 0;
    while started.elapsed() + round / 2 < total {
        minute += 1;
        let (a, b) = tokio::join!(
            open_loop(&uncached, per_kind, bench.rate * 2.0 / 3.0, round),
            open_loop(&cached, per_kind, bench.rate / 3.0, round),
        );
        errors += a.errors + b.errors;
        let rss = tree_bytes(pid, "VmRSS:");
        println!(
            "steady minute {minute:>2}: {:>6.0} req/s, p50 {:>5.0} µs, p99 {:>6.0} µs (uncached) / \
             p50 {:>5.0} µs (hits), errors {}, RSS {}",
            a.rate() + b.rate(),
            a.percentile_us(0.5).unwrap_or(0.0),
            a.percentile_us(0.99).unwrap_or(0.0),
            b.percentile_us(0.5).unwrap_or(0.0),
            a.errors + b.errors,
            mib(rss)
        );
        samples.extend(rss);
    }
    drop(gw);
    bench.notes.push(format!(
        "gateway D (steady): {} s at {:.0} req/s; RSS per minute: {}",
        total.as_secs(),
        bench.rate,
        samples
            .iter()
            .map(|b| format!("{:.1}", *b as f64 / MIB))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    Some(Drift {
        first: *samples.first()?,
        last: *samples.last()?,
        minutes: samples.len(),
        errors,
    })
}

fn targets(
    bench: &Bench,
    idle_rss: Option<u64>,
    steady: Option<(u64, u64)>,
    filled: Option<(u64, usize)>,
    drift: Option<Drift>,
) {
    let rate = |case: &str| bench.row(case, Mode::Saturation).map(|r| r.run.rate());
    // Saturation req/s of `case` over `base`'s, and whether it reaches `min`.
    let ratio = |case: &str, base: &str, min: f64| {
        rate(case)
            .zip(rate(base))
            .map(|(c, b)| (c >= min * b, format!("{:.2} ×", c / b)))
    };
    let p50 = |case: &str| {
        bench
            .row(case, Mode::FixedRate)
            .and_then(|r| r.run.percentile_us(0.5))
    };
    // A run of the `paired` case alone has no phases: only its own block below.
    let same_run = !bench.rows.is_empty();
    let check = |name: &str, measured: Option<(bool, String)>| {
        if !same_run {
            return;
        }
        let (verdict, detail) = match measured {
            Some((true, d)) => ("PASS", d),
            Some((false, d)) => ("FAIL", d),
            None => ("n/a ", "not measured in this run".into()),
        };
        println!("  {verdict}  {name:<52} {detail}");
    };
    // CPU (or user) µs per request at saturation; the targets of the pinned mode compare these.
    let cpu = |case: &str| {
        bench
            .row(case, Mode::Saturation)
            .and_then(|r| r.cpu_per_request)
            .map(|d| d.as_secs_f64() * 1e6)
    };
    let user = |case: &str| {
        bench
            .row(case, Mode::Saturation)
            .and_then(|r| r.user_per_request)
            .map(|d| d.as_secs_f64() * 1e6)
    };
    // `case`'s CPU over `base`'s, and whether it stays within `max` ×.
    let cpu_ratio = |case: &str, base: &str, max: f64| {
        cpu(case).zip(cpu(base)).map(|(c, b)| {
            (
                c <= max * b,
                format!("{:.2} × ({c:.1} vs {b:.1} µs)", c / b),
            )
        })
    };
    let pin = if pinned() {
        ""
    } else {
        " (meant for BENCH_PIN=1)"
    };
    if same_run {
        println!("\ntargets (same run){pin}:");
    }
    check(
        "uncached CPU/request ≤ nginx proxy_pass (both logging)",
        cpu_ratio(UNCACHED, NGINX_PASS, 1.0),
    );
    check(
        "uncached user time ≤ 1.3 × the hyper floor's",
        user(UNCACHED).zip(user(FLOOR)).map(|(g, f)| {
            (
                g <= 1.3 * f,
                format!("{:.2} × ({g:.1} vs {f:.1} µs)", g / f),
            )
        }),
    );
    check(
        "cache hit CPU/request ≤ 0.8 × nginx proxy_cache",
        cpu_ratio(CACHED, NGINX_CACHE, 0.8),
    );
    check(
        "TLS upstream CPU/request ≤ nginx with TLS upstream",
        cpu_ratio(TLS_GATEWAY, TLS_NGINX, 1.0),
    );
    check(
        "access log ≤ 1 µs CPU/request",
        cpu(UNCACHED)
            .zip(cpu(UNCACHED_NOLOG))
            .map(|(on, off)| (on - off <= 1.0, format!("{:+.1} µs", on - off))),
    );
    check(
        "POST audit off CPU/request ≤ 1.25 × uncached GET",
        cpu_ratio(UNAUDITED, UNCACHED, 1.25),
    );
    check(
        "POST audited CPU/request ≤ 1.3 × audit off",
        cpu_ratio(AUDITED, UNAUDITED, 1.3),
    );
    check(
        "audited ≥ 0.5 × audit-off POST (req/s)",
        ratio(AUDITED, UNAUDITED, 0.5),
    );
    for (shared, local) in [(CLUSTER_UNCACHED, UNCACHED), (CLUSTER_POST, UNAUDITED)] {
        check(
            &format!(
                "redis adds ≤ 100 µs p50 at {:.0} req/s, {}",
                bench.rate,
                if shared == CLUSTER_POST {
                    "POST"
                } else {
                    "GET"
                }
            ),
            p50(shared)
                .zip(p50(local))
                .map(|(s, l)| (s - l <= 100.0, format!("{:+.0} µs", s - l))),
        );
    }
    check(
        "idle RSS ≤ 20 MiB",
        idle_rss.map(|b| (b as f64 <= 20.0 * MIB, mib(Some(b)))),
    );
    check(
        &format!("RSS holding {FILL_RECORDS} cached records ≤ 128 MiB"),
        filled.map(|(b, hits)| {
            (
                b as f64 <= 128.0 * MIB && hits == 1000,
                format!("{} ({hits}/1000 sampled hits)", mib(Some(b))),
            )
        }),
    );
    check(
        "no growth over a steady run (≤ 1 MiB, repeat)",
        steady.map(|(before, after)| {
            let growth = after as f64 - before as f64;
            (
                growth <= MIB,
                format!("{:+.2} MiB over the repeated uncached phase", growth / MIB),
            )
        }),
    );
    check(
        "no growth over the steady run (≤ 1 MiB after minute 1)",
        drift.map(|d| {
            let growth = d.last as f64 - d.first as f64;
            (
                growth <= MIB && d.errors == 0,
                format!(
                    "{:+.2} MiB from minute 1 to minute {}, {} errors",
                    growth / MIB,
                    d.minutes,
                    d.errors
                ),
            )
        }),
    );
    let fixed: Vec<&Row> = bench
        .rows
        .iter()
        .filter(|r| r.mode == Mode::FixedRate)
        .collect();
    check(
        "zero errors below saturation (fixed-rate phases)",
        (!fixed.is_empty()).then(|| {
            let errors: usize = fixed.iter().map(|r| r.run.errors).sum();
            (errors == 0, format!("{errors} errors"))
        }),
    );
    if !bench.paired.is_empty() {
        let load = match paired::offered_rate() {
            Some(r) => format!(", {r:.0} req/s offered to each side"),
            None => ", saturation".to_owned(),
        };
        println!(
            "\ntargets (paired slices{load}: median over the pairs, quartiles, each side's median CPU per request){pin}:"
        );
        for (name, verdict) in &bench.paired {
            let (v, detail) = match verdict {
                Some((Some(true), d)) => ("PASS", d.as_str()),
                Some((Some(false), d)) => ("FAIL", d.as_str()),
                Some((None, d)) => ("    ", d.as_str()),
                None => (
                    "n/a ",
                    "not measured (a peer did not start, or no pair in which both sides kept up: an offered rate above a side's saturation)",
                ),
            };
            println!("  {v}  {name:<52} {detail}");
        }
    }
    println!();
}

fn main() {
    // `benches/h2.sh` takes its gateway's configuration from here, so the two cannot drift.
    if let Some(dir) = std::env::var_os(CONFIG_ROLE) {
        let upstream = std::env::var("BENCH_UPSTREAM_ADDR")
            .ok()
            .and_then(|a| a.parse().ok())
            .expect("BENCH_UPSTREAM_ADDR: the static upstream's address");
        print!("{}", gateway_toml(Path::new(&dir), upstream, true));
        return;
    }
    if let Some(upstream) = std::env::var(peers::FLOOR_ROLE)
        .ok()
        .and_then(|a| a.parse().ok())
    {
        // Pinned (or not) by whoever started it, like every measured proxy.
        peers::floor_proxy(upstream);
        return;
    }
    if pinned() && std::env::var_os(UPSTREAM_ROLE).is_none() {
        // Before the runtime exists, so every thread it starts inherits the mask.
        let ok = Command::new("taskset")
            .args(["-p", "-c", "0", &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "BENCH_PIN needs `taskset` (util-linux) and two CPUs");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if std::env::var_os(UPSTREAM_ROLE).is_some() {
        rt.block_on(upstream_process());
    } else {
        rt.block_on(run());
    }
}

/// Set on the bench binary re-run as the `direct_process` case's upstream.
const UPSTREAM_ROLE: &str = "BENCH_UPSTREAM_PROCESS";

/// Set (to a directory) on the bench binary re-run to print the gateway's configuration for the
/// static upstream at `BENCH_UPSTREAM_ADDR`, its secret file written into that directory.
const CONFIG_ROLE: &str = "BENCH_GATEWAY_CONFIG";

/// The static upstream alone, in this (child) process: prints its address, serves until killed.
async fn upstream_process() {
    let (addr, _) = static_upstream().await;
    println!("{addr}");
    std::future::pending::<()>().await;
}

/// Starts the static upstream as a process of its own (this binary again).
async fn spawn_upstream_process() -> (Proc, SocketAddr) {
    let exe = std::env::current_exe().expect("bench binary");
    let mut child = Command::new(exe)
        .env(UPSTREAM_ROLE, "1")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the upstream");
    let stdout = child.stdout.take().expect("stdout");
    let proc = Proc {
        child,
        name: "the upstream process",
    };
    let addr = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).ok()?;
        line.trim().parse::<SocketAddr>().ok()
    })
    .await
    .expect("reader")
    .expect("the upstream process printed its address");
    (proc, addr)
}
