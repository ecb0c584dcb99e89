//! Several gateway processes sharing one Redis (`[cluster]`): global rate limits, Ratepay's 429
//! pause and cache invalidation reach every instance, Redis killed and restarted, one instance
//! SIGKILLed mid-burst, and nothing secret written to Redis. Each test starts its own
//! `redis-server` and sandbox on loopback and three `ratepay-gateway serve` processes.

mod common;

use std::{process::Command, time::Duration};

use common::{
    authorize_body, config_text,
    custom::eventually,
    keys,
    process::{sandbox_fault, sandbox_stats, spawn_command, Running, BIN},
    redis_server::Redis,
    sandbox_config, Options, RATEPAY_SECRET, SVC_SECRET, TX_PATH,
};
use ratepay_gateway::sandbox::{self, SandboxHandle};
use serde_json::{json, Value};

/// The variable the instances read the Redis URL from.
const URL_ENV: &str = "RG_TEST_REDIS_URL";
/// The key sealing the answers the fleet stores in Redis.
const ANSWER_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
/// Another key, for rotations.
const NEW_ANSWER_KEY: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

struct Instance {
    process: Option<Running>,
    proxy: String,
    admin: String,
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    redis_url: String,
}

impl Instance {
    fn start(sandbox: &str, redis_url: &str, name: &str, extra: &str) -> Instance {
        Instance::start_keyed(sandbox, redis_url, name, extra, ANSWER_KEY, None)
    }

    /// An instance sealing answers with `key` (and opening those of `previous`).
    fn start_keyed(
        sandbox: &str,
        redis_url: &str,
        name: &str,
        extra: &str,
        key: &str,
        previous: Option<&str>,
    ) -> Instance {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("answer-key"), key).expect("key");
        let previous = match previous {
            Some(p) => {
                std::fs::write(dir.path().join("previous-answer-key"), p).expect("key");
                format!(
                    "previous_answer_key_file = \"{}\"\n",
                    dir.path().join("previous-answer-key").display()
                )
            }
            None => String::new(),
        };
        // Lines after a `[cluster_extra]` marker in `extra` go into the `[cluster]` section.
        let (extra, cluster_extra) = extra.split_once("[cluster_extra]\n").unwrap_or((extra, ""));
        // 100 ms unless `extra` sets its own (a test that must not fall back to local state
        // on a loaded machine).
        let timeout = if cluster_extra.contains("redis_timeout_ms") {
            ""
        } else {
            "redis_timeout_ms = 100\n"
        };
        let opts = Options {
            extra_toml: format!(
                "{extra}\n[cluster]\n{cluster_extra}instance = \"{name}\"\ninstances = 3\nredis_url_env = \"{URL_ENV}\"\n\
                 retry_after_failure_ms = 100\n{timeout}answer_key_file = \"{}\"\n{previous}",
                dir.path().join("answer-key").display()
            ),
            ..Options::default()
        };
        let config = dir.path().join("gateway.toml");
        std::fs::write(&config, config_text(dir.path(), sandbox, &opts)).expect("config");
        let mut i = Instance {
            process: None,
            proxy: String::new(),
            admin: String::new(),
            dir,
            config,
            redis_url: redis_url.to_owned(),
        };
        i.launch();
        i
    }

    fn launch(&mut self) {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config"])
            .arg(&self.config)
            .env(URL_ENV, &self.redis_url)
            .current_dir(self.dir.path());
        let (process, addrs) = spawn_command(cmd, &["proxy", "admin"]);
        self.process = Some(process);
        self.proxy = format!("http://{}", addrs["proxy"]);
        self.admin = format!("http://{}", addrs["admin"]);
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.proxy)
    }

    async fn metric(&self, http: &reqwest::Client, name: &str) -> f64 {
        let text = http
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        common::metric(&text, &format!("ratepay_gateway_{name} ")).unwrap_or(0.0)
    }

    async fn ready(&self, http: &reqwest::Client) -> (u16, String) {
        let r = http
            .get(format!("{}/readyz", self.admin))
            .send()
            .await
            .expect("readyz");
        (r.status().as_u16(), r.text().await.expect("text"))
    }
}

/// One fleet at a time: three gateways each already share the two cores with the test, and
/// the rate test measures real time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Fleet {
    _serial: tokio::sync::MutexGuard<'static, ()>,
    sandbox: SandboxHandle,
    redis: Redis,
    gw: Vec<Instance>,
    http: reqwest::Client,
}

impl Fleet {
    async fn start(extra: &str) -> Fleet {
        let serial = SERIAL.lock().await;
        let redis = Redis::start();
        let sandbox = sandbox::spawn(sandbox_config(Duration::from_secs(1800)))
            .await
            .expect("sandbox");
        let gw = ["gw-a", "gw-b", "gw-c"]
            .iter()
            .map(|n| Instance::start(&sandbox.url(), &redis.url(), n, extra))
            .collect();
        let fleet = Fleet {
            _serial: serial,
            sandbox,
            redis,
            gw,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client"),
        };
        for g in &fleet.gw {
            eventually(
                "every instance connected to redis and subscribed",
                || async { g.ready(&fleet.http).await.1.contains("redis: up") },
            )
            .await;
        }
        fleet
    }

    async fn get(&self, i: usize, path: &str) -> reqwest::Response {
        self.http
            .get(self.gw[i].url(path))
            .bearer_auth(keys::FULL)
            .send()
            .await
            .expect("answered")
    }

    async fn op_count(&self, op: &str) -> u64 {
        let sandbox = self.sandbox.url();
        let stats = sandbox_stats(&self.http, sandbox.trim_start_matches("http://")).await;
        stats["requests"][op].as_u64().unwrap_or(0)
    }

    async fn fault(&self, fault: Value) {
        let sandbox = self.sandbox.url();
        sandbox_fault(&self.http, sandbox.trim_start_matches("http://"), fault).await;
    }

    async fn authorize(&self, i: usize) -> String {
        let r = self
            .http
            .post(self.gw[i].url(TX_PATH))
            .bearer_auth(keys::FULL)
            .json(&authorize_body(10.0))
            .send()
            .await
            .expect("authorize");
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.expect("json")["ratepay_transaction_id"]
            .as_str()
            .expect("id")
            .to_owned()
    }
}

const MISSING_TX: &str = "/transaction/management/v2/transactions/tx-not-there";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_admit_the_global_caller_rate_however_the_load_is_spread() {
    // 40 requests/s and a burst of 10 for the caller, across the fleet.
    let fleet = Fleet::start("[rate_limits.per_caller]\nrate_per_sec = 40.0\nburst = 10\n").await;
    // Twice the rate, 60 % / 30 % / 10 % over the instances, for 5 s, open loop.
    let total = 400usize;
    let mut tick = tokio::time::interval(Duration::from_micros(12_500));
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..total {
        tick.tick().await;
        let which = match i % 10 {
            0..=5 => 0,
            6..=8 => 1,
            _ => 2,
        };
        let rb = fleet
            .http
            .get(fleet.gw[which].url(MISSING_TX))
            .bearer_auth(keys::FULL);
        tasks.push(tokio::spawn(async move {
            let r = rb.send().await.expect("answered");
            let headers = r.headers().clone();
            (r.status().as_u16(), headers)
        }));
    }
    let elapsed = started.elapsed();
    let mut admitted = 0.0;
    let mut refused = None;
    for t in tasks {
        let (status, headers) = t.await.expect("task");
        match status {
            429 => refused = Some(headers),
            404 => admitted += 1.0,
            other => panic!("unexpected status {other}"),
        }
    }
    // GCRA admits the burst plus one request per emission interval of the window.
    let expected = 10.0 + 40.0 * elapsed.as_secs_f64();
    assert!(
        (admitted - expected).abs() <= 0.05 * expected,
        "admitted {admitted}, expected {expected:.1} ± 5 % (per-instance limits would admit about 3 ×)"
    );
    let h = refused.expect("some requests were refused");
    let retry_after: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=1).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(h["ratelimit-policy"], "\"caller\";q=10;w=1");
    assert!(h["ratelimit"]
        .to_str()
        .unwrap()
        .starts_with("\"caller\";r=0;t="));
    // Every decision went through Redis.
    for g in &fleet.gw {
        assert_eq!(
            g.metric(&fleet.http, "cluster_rate_limit_fallbacks_total")
                .await,
            0.0
        );
    }
    assert_nothing_secret_in(&fleet.redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ratepay_429_on_one_instance_pauses_the_api_on_all() {
    let fleet = Fleet::start("").await;
    fleet
        .fault(json!({"operation": "payment.transactions.get", "status": 429, "retry_after": 30, "count": 1}))
        .await;
    let r = fleet.get(0, MISSING_TX).await;
    assert_eq!(r.status(), 429);
    assert_eq!(fleet.op_count("payment.transactions.get").await, 1);
    for i in [1, 2] {
        let g = &fleet.gw[i];
        eventually("the pause reached the instance", || async {
            g.metric(&fleet.http, "cluster_events_received_total").await >= 1.0
        })
        .await;
        let r = fleet.get(i, MISSING_TX).await;
        assert_eq!(r.status(), 429);
        let retry_after: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            (25..=30).contains(&retry_after),
            "Retry-After {retry_after}"
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            body["type"],
            "https://ratepay-gateway.dev/problems/upstream-paused"
        );
    }
    // The paused instances never called Ratepay; another API is not paused.
    assert_eq!(fleet.op_count("payment.transactions.get").await, 1);
    let r = fleet
        .get(1, "/pps/api/v1/session-record/no-such-session")
        .await;
    assert_ne!(r.status(), 429);
    // An instance started later learns the pause in force from Redis.
    let late = Instance::start(&fleet.sandbox.url(), &fleet.redis.url(), "gw-d", "");
    eventually("the late instance holds the pause", || async {
        let r = fleet
            .http
            .get(late.url(MISSING_TX))
            .bearer_auth(keys::FULL)
            .send()
            .await
            .unwrap();
        r.status() == 429
    })
    .await;
    assert_eq!(fleet.op_count("payment.transactions.get").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_on_one_instance_drops_the_cached_records_on_all() {
    let fleet = Fleet::start("[cache]\n").await;
    // A completed HPP session whose record is cached on instance b.
    let r = fleet
        .http
        .post(fleet.gw[1].url("/pps/api/v1/session"))
        .bearer_auth(keys::FULL)
        .json(
            &json!({"order_data": {"shop_baskets": [{"gross_amount": 10.0}], "currency": "EUR",
                      "buyer": {"contact": {"email": "b@example.com"}}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let sid = r.json::<Value>().await.unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = fleet
        .http
        .post(format!("{}/_sandbox/sessions/{sid}", fleet.sandbox.url()))
        .json(&json!({"session_status": "COMPLETED"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let record = format!("/pps/api/v1/session-record/{sid}");
    let x_cache = |r: &reqwest::Response| r.headers()["x-cache"].to_str().unwrap().to_owned();
    let first = fleet.get(1, &record).await;
    assert_eq!(x_cache(&first), "MISS");
    let tx = first.json::<Value>().await.unwrap()["transaction_id"]
        .as_str()
        .expect("a completed record names its transaction")
        .to_owned();
    assert_eq!(x_cache(&fleet.get(1, &record).await), "HIT");
    // The cancellation goes through instance a.
    fleet
        .fault(json!({"operation": "payment.cancellations.create", "status": 201, "count": 1}))
        .await;
    let before = fleet.gw[1]
        .metric(&fleet.http, "cluster_events_received_total")
        .await;
    let r = fleet
        .http
        .post(fleet.gw[0].url(&format!("{TX_PATH}/{tx}/cancellations")))
        .bearer_auth(keys::FULL)
        .json(&json!({"gross_amount": 10.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let g = &fleet.gw[1];
    eventually("the invalidation reached instance b", || async {
        g.metric(&fleet.http, "cluster_events_received_total").await > before
    })
    .await;
    assert_eq!(x_cache(&fleet.get(1, &record).await), "MISS");
    assert_eq!(fleet.op_count("hpp.session_records.get").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_then_restarted_the_fleet_keeps_answering_and_shares_again() {
    // 3/s and a burst of 3 across the fleet: each instance alone gets 1/s and a burst of 1.
    let mut fleet = Fleet::start("[rate_limits.per_caller]\nrate_per_sec = 3.0\nburst = 3\n").await;
    fleet.redis.kill();
    for g in &fleet.gw {
        let mut statuses = Vec::new();
        for _ in 0..4 {
            let sent = tokio::time::Instant::now();
            let r = fleet
                .http
                .get(g.url(MISSING_TX))
                .bearer_auth(keys::FULL)
                .send()
                .await
                .unwrap();
            assert!(
                sent.elapsed() < Duration::from_secs(2),
                "answered promptly without redis"
            );
            statuses.push(r.status().as_u16());
        }
        // The local fallback: a third of the burst, so one admitted and the rest refused.
        assert_eq!(
            statuses.iter().filter(|s| **s == 404).count(),
            1,
            "{statuses:?}"
        );
        assert!(
            statuses.iter().all(|s| [404, 429].contains(s)),
            "{statuses:?}"
        );
        let (status, text) = g.ready(&fleet.http).await;
        assert_eq!(status, 200, "degraded, not failed");
        assert!(text.contains("redis: degraded"), "{text}");
        assert!(
            g.metric(&fleet.http, "cluster_rate_limit_fallbacks_total")
                .await
                >= 4.0
        );
        assert_eq!(g.metric(&fleet.http, "cluster_redis_up").await, 0.0);
    }
    fleet.redis.restart();
    for g in &fleet.gw {
        eventually("the instance uses redis again", || async {
            // Each try lets the breaker retry; readiness follows the subscription.
            let _ = fleet
                .http
                .get(g.url(MISSING_TX))
                .bearer_auth(keys::FULL)
                .send()
                .await;
            g.ready(&fleet.http).await.1.contains("redis: up")
        })
        .await;
    }
    // Shared again: one fresh bucket of 3 for the whole fleet, whichever instance is asked.
    eventually("the shared bucket is back to full", || async {
        let mut c = fleet.redis.connection().await;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*rl:caller:*")
            .query_async(&mut c)
            .await
            .unwrap();
        if keys.is_empty() {
            return true;
        }
        let _: () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut c)
            .await
            .unwrap();
        false
    })
    .await;
    let before: f64 = {
        let mut sum = 0.0;
        for g in &fleet.gw {
            sum += g
                .metric(&fleet.http, "cluster_rate_limit_fallbacks_total")
                .await;
        }
        sum
    };
    let mut admitted = 0;
    for i in 0..6 {
        admitted += u32::from(fleet.get(i % 3, MISSING_TX).await.status() == 404);
    }
    assert_eq!(admitted, 3, "the fleet's one burst of 3");
    let mut after = 0.0;
    for g in &fleet.gw {
        after += g
            .metric(&fleet.http, "cluster_rate_limit_fallbacks_total")
            .await;
    }
    assert_eq!(after, before, "no fallback once redis is back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_sigkilled_mid_burst_the_others_serve_and_its_chain_verifies() {
    let mut fleet = Fleet::start("").await;
    let mut txs = Vec::new();
    for i in 0..6 {
        txs.push(fleet.authorize(i % 3).await);
    }
    // Cancellations held by Ratepay for a while, so the kill lands with calls in flight.
    fleet
        .fault(json!({"operation": "payment.cancellations.create", "latency_ms": 300}))
        .await;
    let mut tasks = Vec::new();
    for n in 0..60 {
        let i = n % 3;
        let rb = fleet
            .http
            .post(fleet.gw[i].url(&format!("{TX_PATH}/{}/cancellations", txs[n % txs.len()])))
            .bearer_auth(keys::FULL)
            .json(&json!({"gross_amount": 0.01}));
        tasks.push((
            i,
            tokio::spawn(async move { rb.send().await.map(|r| r.status().as_u16()) }),
        ));
    }
    eventually("cancellations reached ratepay", || async {
        fleet.op_count("payment.cancellations.create").await >= 10
    })
    .await;
    drop(fleet.gw[1].process.take());
    for (i, t) in tasks {
        let outcome = t.await.expect("task");
        if i != 1 {
            assert_eq!(outcome.ok(), Some(201), "instance {i} kept serving");
        }
    }
    // Restarted, instance b closes its own open intents and its chain verifies.
    fleet.gw[1].launch();
    let r = fleet.get(1, MISSING_TX).await;
    assert_eq!(r.status(), 404);
    for g in &fleet.gw {
        let out = Command::new(BIN)
            .args(["audit", "verify"])
            .arg(g.dir.path().join("audit.jsonl"))
            .output()
            .expect("audit verify");
        assert!(
            out.status.success(),
            "{}: {}",
            g.dir.path().display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_nothing_secret_in(&fleet.redis).await;
}

/// Every key and string value in `redis`: no API key, client secret or Ratepay token.
async fn assert_nothing_secret_in(redis: &Redis) {
    let mut c = redis.connection().await;
    let names: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut c)
        .await
        .unwrap();
    let mut seen = String::new();
    for k in &names {
        seen.push_str(k);
        seen.push('\n');
        let kind: String = redis::cmd("TYPE").arg(k).query_async(&mut c).await.unwrap();
        if kind == "string" {
            let v: Option<String> = redis::cmd("GET").arg(k).query_async(&mut c).await.unwrap();
            seen.push_str(&v.unwrap_or_default());
            seen.push('\n');
        }
    }
    for secret in [
        keys::FULL,
        keys::CHOOSER,
        keys::READER,
        keys::NOPARTNER,
        RATEPAY_SECRET,
        SVC_SECRET,
        ANSWER_KEY,
        NEW_ANSWER_KEY,
        // Any JWT (the sandbox's tokens are JWTs).
        "eyJ",
    ] {
        assert!(!seen.contains(secret), "redis holds {secret:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_duplicates_over_three_instances_reach_ratepay_once_with_one_answer() {
    // Every Redis call must reach Redis here (a timeout would fall back to local state and let a
    // duplicate execute): the longest timeout, for a machine busy with other tests.
    let fleet = Fleet::start("[cluster_extra]\nredis_timeout_ms = 1000\n").await;
    let tx = fleet.authorize(0).await;
    // Ratepay takes a while, so the duplicates arrive while the first is executing.
    fleet
        .fault(json!({"operation": "payment.cancellations.create", "latency_ms": 300}))
        .await;
    let path = format!("{TX_PATH}/{tx}/cancellations");
    let send = |i: usize, body: Value| {
        fleet
            .http
            .post(fleet.gw[i % 3].url(&path))
            .bearer_auth(keys::FULL)
            .header("idempotency-key", "cancel-once-7")
            .json(&body)
    };
    let mut tasks = Vec::new();
    for i in 0..50 {
        let rb = send(i, json!({"gross_amount": 1.5}));
        tasks.push(tokio::spawn(async move {
            let r = rb.send().await.expect("answered");
            let replayed = r.headers().contains_key("idempotent-replayed");
            (r.status().as_u16(), replayed, r.text().await.expect("body"))
        }));
    }
    let mut bodies = std::collections::BTreeSet::new();
    let mut replays = 0;
    for t in tasks {
        let (status, replayed, body) = t.await.expect("task");
        assert_eq!(status, 201, "{body}");
        replays += usize::from(replayed);
        bodies.insert(body);
    }
    for g in &fleet.gw {
        assert_eq!(
            g.metric(&fleet.http, "cluster_redis_failures_total").await,
            0.0,
            "redis calls failed (timeout?)"
        );
    }
    assert_eq!(fleet.op_count("payment.cancellations.create").await, 1);
    assert_eq!(
        bodies.len(),
        1,
        "one answer for every duplicate: {bodies:?}"
    );
    assert_eq!(replays, 49);
    // Later: replayed by every instance; the same key for another body is 409 on every one.
    for i in 0..3 {
        let r = send(i, json!({"gross_amount": 1.5})).send().await.unwrap();
        assert_eq!(r.headers()["idempotent-replayed"], "true");
        assert!(bodies.contains(&r.text().await.unwrap()));
        let r = send(i, json!({"gross_amount": 2.5})).send().await.unwrap();
        assert_eq!(r.status(), 409, "instance {i}");
    }
    assert_eq!(fleet.op_count("payment.cancellations.create").await, 1);
    // The stored answer is sealed: Redis holds neither the transaction id nor the amount.
    let mut c = fleet.redis.connection().await;
    let record = format!(
        "ratepay-gateway:idem:{}",
        common::scoped_key("full", "cancel-once-7")
    );
    let fields: Vec<Vec<u8>> = redis::cmd("HVALS")
        .arg(&record)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(fields.len(), 3, "state, fingerprint and the sealed answer");
    let all: Vec<u8> = fields.concat();
    for plain in [tx.as_bytes(), b"gross_amount", b"cancel-once-7"] {
        assert!(
            !all.windows(plain.len()).any(|w| w == plain),
            "redis holds {}",
            String::from_utf8_lossy(plain)
        );
    }
    assert_nothing_secret_in(&fleet.redis).await;

    // Rotation: an instance with a new key and the old one as previous still replays.
    let again = |previous: Option<&str>, name: &str| {
        // A fresh instance's first Redis calls must not time out into the local fallback (which
        // would execute again) on a machine busy with other tests.
        let g = Instance::start_keyed(
            &fleet.sandbox.url(),
            &fleet.redis.url(),
            name,
            "[cluster_extra]\nredis_timeout_ms = 1000\n",
            NEW_ANSWER_KEY,
            previous,
        );
        let rb = fleet
            .http
            .post(g.url(&path))
            .bearer_auth(keys::FULL)
            .header("idempotency-key", "cancel-once-7")
            .json(&json!({"gross_amount": 1.5}));
        async move {
            let r = rb.send().await.unwrap();
            drop(g);
            r
        }
    };
    let r = again(Some(ANSWER_KEY), "gw-d").await;
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    assert!(bodies.contains(&r.text().await.unwrap()));
    // Without the old key the answer cannot be opened: the call executes again, with the same
    // upstream Idempotency-Key (Ratepay deduplicates it), and answers the same.
    let r = again(None, "gw-e").await;
    assert_eq!(r.status(), 201);
    assert!(!r.headers().contains_key("idempotent-replayed"));
    assert_eq!(fleet.op_count("payment.cancellations.create").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_calls_keep_working_while_redis_is_away() {
    let mut fleet = Fleet::start("").await;
    let tx = fleet.authorize(0).await;
    fleet.redis.kill();
    let path = format!("{TX_PATH}/{tx}/cancellations");
    for i in 0..3 {
        for _ in 0..2 {
            let r = fleet
                .http
                .post(fleet.gw[i].url(&path))
                .bearer_auth(keys::FULL)
                .header("idempotency-key", format!("away-{i}"))
                .json(&json!({"gross_amount": 0.5}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
        }
        // The second was replayed by the instance's own store.
        assert!(
            fleet.gw[i]
                .metric(&fleet.http, "cluster_idempotency_fallbacks_total")
                .await
                >= 1.0
        );
        assert!(
            fleet.gw[i]
                .metric(&fleet.http, "idempotency_replays_total")
                .await
                >= 1.0
        );
    }
    assert_eq!(fleet.op_count("payment.cancellations.create").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_executes_again_once_the_dead_instances_lease_expires() {
    let mut fleet = Fleet::start("").await;
    let tx = fleet.authorize(0).await;
    // Ratepay holds the first call long enough for its instance to be killed meanwhile.
    fleet
        .fault(
            json!({"operation": "payment.cancellations.create", "latency_ms": 30_000, "count": 1}),
        )
        .await;
    let path = format!("{TX_PATH}/{tx}/cancellations");
    let urls: Vec<String> = fleet.gw.iter().map(|g| g.url(&path)).collect();
    let http = fleet.http.clone();
    let post = |i: usize| {
        http.post(&urls[i])
            .bearer_auth(keys::FULL)
            .header("idempotency-key", "lease-1")
            .json(&json!({"gross_amount": 0.5}))
    };
    let first = post(0);
    let held = tokio::spawn(async move { first.send().await.map(|r| r.status().as_u16()) });
    eventually("the first call reached ratepay", || async {
        fleet.op_count("payment.cancellations.create").await >= 1
    })
    .await;
    // While its owner lives, a duplicate elsewhere waits rather than executing.
    let waiting = tokio::time::timeout(Duration::from_millis(1500), post(1).send()).await;
    assert!(
        waiting.is_err(),
        "the duplicate waited for the running call"
    );
    assert_eq!(fleet.op_count("payment.cancellations.create").await, 1);
    drop(fleet.gw[0].process.take());
    assert!(held.await.expect("task").is_err(), "its instance died");
    // The lease expires (3 s, no longer renewed): the duplicate executes, with the same key.
    let r = post(2).send().await.expect("answered");
    assert_eq!(r.status(), 201);
    assert_eq!(fleet.op_count("payment.cancellations.create").await, 2);
    let stats: Value = fleet
        .http
        .get(format!("{}/_sandbox/stats", fleet.sandbox.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sent = stats["idempotency_keys"]["payment.cancellations.create"]
        .as_array()
        .expect("keys")
        .clone();
    assert_eq!(sent.len(), 2);
    assert_eq!(
        sent[0], sent[1],
        "the same upstream Idempotency-Key both times"
    );
    assert_eq!(sent[0], common::scoped_key("full", "lease-1"));
}

/// `config/cluster.toml` as shipped: two instances from the one file (names from the
/// environment), one sandbox process, one Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_cluster_toml_runs_a_fleet_as_documented() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start();
    let (_sandbox, addrs) = common::process::spawn(
        &["sandbox", "--listen", "127.0.0.1:0", "--seed", "5"],
        &["sandbox"],
    );
    let sandbox = &addrs["sandbox"];
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("config/local")).unwrap();
    for f in [
        "ratepay-client-secret",
        "gateway-hs256-key",
        "demo-client-secret",
    ] {
        std::fs::copy(
            format!("config/local/{f}"),
            root.path().join("config/local").join(f),
        )
        .unwrap();
    }
    let text = std::fs::read_to_string("config/cluster.toml")
        .unwrap()
        .replace("127.0.0.1:9400", sandbox);
    std::fs::write(root.path().join("config/cluster.toml"), text).unwrap();
    let mut gw = Vec::new();
    for name in ["gw-1", "gw-2"] {
        let mut cmd = Command::new(BIN);
        cmd.current_dir(root.path())
            .args(["serve", "--config", "config/cluster.toml"])
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .env("GATEWAY_INSTANCE", name)
            .env("GATEWAY_REDIS_URL", redis.url())
            .env("GATEWAY_ANSWER_KEY", ANSWER_KEY);
        gw.push(spawn_command(cmd, &["proxy", "admin"]));
    }
    let http = reqwest::Client::new();
    for (_, a) in &gw {
        let text = http
            .get(format!("http://{}/readyz", a["admin"]))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(text.contains("redis: up"), "{text}");
    }
    let r = http
        .post(format!("http://{}{TX_PATH}", gw[0].1["proxy"]))
        .bearer_auth("demo-key")
        .json(&authorize_body(5.0))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let tx = r.json::<Value>().await.unwrap()["ratepay_transaction_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut answers = Vec::new();
    for (_, a) in &gw {
        let r = http
            .post(format!("http://{}{TX_PATH}/{tx}/cancellations", a["proxy"]))
            .bearer_auth("demo-key")
            .header("idempotency-key", "doc-example")
            .json(&json!({"gross_amount": 1.0}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        answers.push(r.headers().contains_key("idempotent-replayed"));
    }
    assert_eq!(
        answers,
        [false, true],
        "the second instance replayed the first's answer"
    );
    for name in ["gw-1", "gw-2"] {
        let out = Command::new(BIN)
            .args(["audit", "verify"])
            .arg(root.path().join("var/audit").join(name))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Only the first instance forwarded the cancellation, so only its chain holds it.
    let audit = |name: &str| {
        std::fs::read_to_string(root.path().join("var/audit").join(name).join("audit.jsonl"))
            .unwrap_or_default()
    };
    assert!(audit("gw-1").contains(&tx));
    assert!(!audit("gw-2").contains(&tx));
    // Each chain's start and checkpoint records name its instance.
    for name in ["gw-1", "gw-2"] {
        assert!(
            audit(name).contains(&format!("\"instance\":\"{name}\"")),
            "{name}"
        );
    }
    // `audit verify` of the parent directory verifies every instance's chain, naming each;
    // a chain broken in one instance fails the whole, naming that instance.
    let verify_all = || {
        Command::new(BIN)
            .args(["audit", "verify"])
            .arg(root.path().join("var/audit"))
            .output()
            .unwrap()
    };
    let all = verify_all();
    let out = String::from_utf8_lossy(&all.stdout).into_owned();
    assert!(all.status.success(), "{out}");
    assert!(out.contains("gw-1: ") && out.contains("gw-2: "), "{out}");
    let forged = audit("gw-2").replacen("\"instance\":\"gw-2\"", "\"instance\":\"gw-9\"", 1);
    std::fs::write(root.path().join("var/audit/gw-2/audit.jsonl"), forged).unwrap();
    let all = verify_all();
    let err = String::from_utf8_lossy(&all.stderr);
    assert_eq!(all.status.code(), Some(1), "{err}");
    assert!(err.contains("gw-2") && !err.contains("gw-1"), "{err}");
}

/// `rediss://` (rustls, the gateway's own crypto provider) with the test CA given as
/// `redis_ca_file`, and AUTH with a password from a file: the fleet shares its budget over it;
/// an instance with a wrong password is degraded (fallback), not failed, and never shows the
/// password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_auth_to_redis_work_and_a_wrong_password_only_degrades() {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose, SanType,
    };
    let _serial = SERIAL.lock().await;
    let pki = tempfile::tempdir().unwrap();
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "redis test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let mut server = CertificateParams::default();
    server.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
    let key = KeyPair::generate().unwrap();
    let cert = server.signed_by(&key, &ca).unwrap();
    let files = ["cert.pem", "key.pem", "ca.pem"].map(|n| pki.path().join(n));
    std::fs::write(&files[0], cert.pem()).unwrap();
    std::fs::write(&files[1], key.serialize_pem()).unwrap();
    std::fs::write(&files[2], ca.pem()).unwrap();
    let password = "redis-pw-8c1e";
    let redis = Redis::start_tls(Some(password), files.clone());
    std::fs::write(pki.path().join("pw"), password).unwrap();
    std::fs::write(pki.path().join("bad-pw"), "not-the-password").unwrap();
    let sandbox = sandbox::spawn(sandbox_config(Duration::from_secs(1800)))
        .await
        .unwrap();
    let tls = |pw: &str| {
        format!(
            "[rate_limits.per_caller]\nrate_per_sec = 0.01\nburst = 2\n[cluster_extra]\n\
             redis_ca_file = \"{}\"\nredis_password_file = \"{}\"\n",
            files[2].display(),
            pki.path().join(pw).display()
        )
    };
    let gw: Vec<Instance> = ["t-a", "t-b"]
        .iter()
        .map(|n| Instance::start(&sandbox.url(), &redis.url(), n, &tls("pw")))
        .collect();
    let wrong = Instance::start(&sandbox.url(), &redis.url(), "t-c", &tls("bad-pw"));
    let http = reqwest::Client::new();
    for g in &gw {
        eventually("connected over TLS with AUTH", || async {
            g.ready(&http).await.1.contains("redis: up")
        })
        .await;
    }
    // One burst of 2 for both: two on a, then b refuses (local shares would admit on b).
    let mut statuses = Vec::new();
    for i in [0, 0, 1] {
        let r = http
            .get(gw[i].url(MISSING_TX))
            .bearer_auth(keys::FULL)
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [404, 404, 429]);
    let (status, text) = wrong.ready(&http).await;
    assert_eq!(status, 200);
    assert!(text.contains("redis: degraded"), "{text}");
    assert!(!text.contains("not-the-password") && !text.contains(password));
    // It still serves, on its local share (burst 2 / 3 instances, rounded up: 1).
    let r = http
        .get(wrong.url(MISSING_TX))
        .bearer_auth(keys::FULL)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// Queue mode over the shared budget: a request over the fleet's budget waits its turn (on any
/// instance) instead of being refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_mode_waits_for_the_fleets_budget() {
    let fleet = Fleet::start(
        "[rate_limits]\nmode = \"queue\"\nmax_wait_ms = 5000\n\
         [rate_limits.per_caller]\nrate_per_sec = 20.0\nburst = 1\n",
    )
    .await;
    let mut tasks = Vec::new();
    for i in 0..6 {
        let rb = fleet
            .http
            .get(fleet.gw[i % 3].url(MISSING_TX))
            .bearer_auth(keys::FULL);
        tasks.push(tokio::spawn(async move {
            rb.send().await.unwrap().status().as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 404, "queued, then admitted");
    }
    // One request at once for the fleet: five of the six waited.
    let mut queued = 0.0;
    for g in &fleet.gw {
        queued += g
            .metric(&fleet.http, "rate_limit_queue_wait_seconds_count")
            .await;
    }
    assert!(queued >= 5.0, "{queued} requests queued");
    // Keyed calls queue on the budget their lease spends, too.
    let mut tasks = Vec::new();
    for i in 0..3 {
        let rb = fleet
            .http
            .post(fleet.gw[i].url(TX_PATH))
            .bearer_auth(keys::FULL)
            .json(&authorize_body(1.0));
        tasks.push(tokio::spawn(async move {
            rb.send().await.unwrap().status().as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 201, "queued, then admitted");
    }
    let mut after = 0.0;
    for g in &fleet.gw {
        after += g
            .metric(&fleet.http, "rate_limit_queue_wait_seconds_count")
            .await;
    }
    assert!(
        after >= queued + 2.0,
        "{} keyed calls queued",
        after - queued
    );
}

/// A call that ends without a final answer (here Ratepay's 5xx after every retry) gives its
/// lease up at once: the record is gone from Redis and a duplicate executes on another
/// instance without waiting for the lease to expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_without_a_final_answer_gives_its_lease_up() {
    let fleet = Fleet::start("").await;
    let tx = fleet.authorize(0).await;
    fleet
        .fault(json!({"operation": "payment.cancellations.create", "status": 503, "count": 3}))
        .await;
    let path = format!("{TX_PATH}/{tx}/cancellations");
    let post = |i: usize| {
        fleet
            .http
            .post(fleet.gw[i].url(&path))
            .bearer_auth(keys::FULL)
            .header("idempotency-key", "no-final-answer")
            .json(&json!({"gross_amount": 0.5}))
            .send()
    };
    assert_eq!(post(0).await.unwrap().status(), 503);
    let record = format!(
        "ratepay-gateway:idem:{}",
        common::scoped_key("full", "no-final-answer")
    );
    eventually("the lease was given up", || async {
        let mut c = fleet.redis.connection().await;
        let exists: i64 = redis::cmd("EXISTS")
            .arg(&record)
            .query_async(&mut c)
            .await
            .unwrap();
        exists == 0
    })
    .await;
    assert_eq!(post(1).await.unwrap().status(), 201);
}

/// A keyed call's caller budget is spent in the same Redis round trip as its idempotency
/// lease, and still counts every request the caller makes on any instance: one executed on
/// another instance, a fleet replay, a malformed body (answered before any lease) and a refusal
/// that never reaches Ratepay. The RateLimit headers are the fleet's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_calls_spend_the_fleets_caller_budget_with_their_lease() {
    // Four requests at once for the caller, then one per 100 s: no refill during the test.
    let fleet = Fleet::start("[rate_limits.per_caller]\nrate_per_sec = 0.01\nburst = 4\n").await;
    let post = |i: usize, key: &str, body: Value| {
        fleet
            .http
            .post(fleet.gw[i].url(TX_PATH))
            .bearer_auth(keys::FULL)
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let room = |r: &reqwest::Response| {
        r.headers()["ratelimit"]
            .to_str()
            .unwrap()
            .split(';')
            .nth(1)
            .unwrap()
            .to_owned()
    };
    let first = post(0, "k-1", authorize_body(10.0)).await.unwrap();
    assert_eq!(first.status(), 201);
    assert_eq!(
        room(&first),
        "r=3",
        "the fleet's bucket, spent with the lease"
    );
    assert_eq!(first.headers()["ratelimit-policy"], "\"caller\";q=4;w=400");
    // Replayed from the fleet's record by another instance: counted too.
    let replay = post(1, "k-1", authorize_body(10.0)).await.unwrap();
    assert_eq!(replay.status(), 201);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(room(&replay), "r=2");
    // Refused before any lease (not one JSON object): counted afterwards.
    let bad = fleet
        .http
        .post(fleet.gw[2].url(TX_PATH))
        .bearer_auth(keys::FULL)
        .header("idempotency-key", "k-2")
        .header("content-type", "application/json")
        .body("[1, 2]")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let last = post(2, "k-3", authorize_body(10.0)).await.unwrap();
    assert_eq!(last.status(), 201);
    assert_eq!(room(&last), "r=0");
    let before = fleet.op_count("payment.transactions.create").await;
    assert_eq!(before, 2, "k-1 once and k-3");
    // The budget is used up on every instance, for new keys and replays alike.
    for (i, key) in [(0, "k-4"), (1, "k-1")] {
        let r = post(i, key, authorize_body(10.0)).await.unwrap();
        assert_eq!(r.status(), 429, "instance {i}, key {key}");
        assert_eq!(r.headers()["ratelimit-policy"], "\"caller\";q=4;w=400");
        assert!(
            r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
                > 1
        );
    }
    assert_eq!(fleet.op_count("payment.transactions.create").await, before);
    // A refused key took no lease: nothing in Redis for k-4.
    let mut c = fleet.redis.connection().await;
    let exists: i64 = redis::cmd("EXISTS")
        .arg(format!(
            "ratepay-gateway:idem:{}",
            common::scoped_key("full", "k-4")
        ))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(exists, 0);
    for g in &fleet.gw {
        assert_eq!(
            g.metric(&fleet.http, "cluster_rate_limit_fallbacks_total")
                .await,
            0.0
        );
    }
}

/// A Redis that hangs with its connections open (SIGSTOP) sends no error: the subscription's
/// PING notices it, /readyz says degraded without any request having tried Redis, and the
/// fleet is up again once Redis goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_is_noticed_by_the_subscription_and_readiness_says_so() {
    let fleet = Fleet::start("").await;
    fleet.redis.freeze();
    for g in &fleet.gw {
        eventually("the hung redis is noticed without any request", || async {
            let (status, text) = g.ready(&fleet.http).await;
            status == 200 && text.contains("redis: degraded")
        })
        .await;
    }
    fleet.redis.thaw();
    for g in &fleet.gw {
        eventually("subscribed again", || async {
            g.ready(&fleet.http).await.1.contains("redis: up")
        })
        .await;
    }
    // Events flow again: a pause announced now reaches the others.
    fleet
        .fault(json!({"operation": "payment.transactions.get", "status": 429, "retry_after": 30, "count": 1}))
        .await;
    assert_eq!(fleet.get(0, MISSING_TX).await.status(), 429);
    for i in 1..3 {
        let g = &fleet.gw[i];
        eventually("the pause reached the other instances", || async {
            g.metric(&fleet.http, "cluster_events_received_total").await >= 1.0
        })
        .await;
        assert_eq!(fleet.get(i, MISSING_TX).await.status(), 429);
    }
    assert_eq!(fleet.op_count("payment.transactions.get").await, 1);
}
