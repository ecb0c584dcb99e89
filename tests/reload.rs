//! Live reload: `POST /reload` and SIGHUP re-read the file, swap atomically, refuse bad files,
//! keep in-flight requests on their configuration, rotate secrets without dropping requests,
//! keep unchanged credentials' tokens and the state that must outlive a configuration
//! (idempotency store, audit log, rate-limit budgets, cache), and name restart-only settings.

mod common;

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use common::{
    config_text, keys, metric,
    process::{gateway_config, spawn, KEY},
    sandbox_config, sha, tx_path, Harness, Options, TX_PATH,
};
use ratepay_gateway::{
    config::Config,
    gateway::Gateway,
    reload::{ConfigSource, LiveGateway},
    sandbox::{self, SandboxClient},
};
use reqwest::Method;

const ROTATED_KEY: &str = "full-key-rotated-0009";
const NEW_SECRET: &str = "rotated-ratepay-secret-77aa";

/// Sandbox (accepting the original and the rotated Ratepay secret) and a gateway started from
/// a file in the harness's directory, reloadable through the admin listener.
async fn start_from_file() -> (Harness, PathBuf) {
    start_from_file_with(Options::default()).await
}

/// [`start_from_file`] with `opts`.
async fn start_from_file_with(opts: Options) -> (Harness, PathBuf) {
    let mut sc = sandbox_config(Duration::from_secs(1800));
    sc.clients.push(SandboxClient {
        client_id: "gw-client".into(),
        client_secret: NEW_SECRET.to_owned().into(),
    });
    let sandbox = sandbox::spawn(sc).await.expect("sandbox starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), &sandbox.url(), &opts);
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).expect("write config");
    let config = Config::from_file(&path).expect("valid config");
    let gateway = Gateway::build(&config).await.expect("gateway builds");
    let live = LiveGateway::new(
        gateway,
        Some(ConfigSource {
            path: path.clone(),
            adjust: Box::new(|_| {}),
        }),
    );
    (Harness::serve_gateway(sandbox, dir, live).await, path)
}

/// A problem+json answer of the admin listener (no request id there).
async fn admin_problem(r: reqwest::Response) -> serde_json::Value {
    assert_eq!(r.status(), 422);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let p: serde_json::Value = r.json().await.expect("problem JSON");
    assert_eq!(p["status"], 422);
    p
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).expect("read config");
    assert!(text.contains(from), "config contains {from}");
    std::fs::write(path, text.replace(from, to)).expect("write config");
}

async fn reload(h: &Harness) -> reqwest::Response {
    h.http
        .post(format!("{}/reload", h.admin))
        .send()
        .await
        .expect("reload answers")
}

async fn get_tx(h: &Harness, tx: &str, key: &str) -> u16 {
    h.req(Method::GET, &format!("{TX_PATH}/{tx}"), key)
        .send()
        .await
        .expect("answer")
        .status()
        .as_u16()
}

#[tokio::test]
async fn reload_swaps_a_caller_key_and_refuses_a_broken_file() {
    let (h, path) = start_from_file().await;
    let tx = h.authorize(keys::FULL, None, 50.0).await;
    assert_eq!(get_tx(&h, &tx, keys::FULL).await, 200);
    assert_eq!(get_tx(&h, &tx, ROTATED_KEY).await, 401);

    edit(&path, &sha(keys::FULL), &sha(ROTATED_KEY));
    let r = reload(&h).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.contains("generation 1"), "{text}");
    assert_eq!(get_tx(&h, &tx, keys::FULL).await, 401, "old key refused");
    assert_eq!(get_tx(&h, &tx, ROTATED_KEY).await, 200, "new key accepted");

    // A file that does not parse: refused, said why, old configuration kept.
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{good}\n[callers.broken\n")).unwrap();
    let r = reload(&h).await;
    assert_eq!(r.status(), 422);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let p = admin_problem(r).await;
    let detail = p["detail"].as_str().unwrap();
    assert!(detail.contains("gateway.toml"), "{detail}");
    assert!(detail.contains("running configuration stays"), "{detail}");
    assert_eq!(get_tx(&h, &tx, ROTATED_KEY).await, 200, "still serving");

    // A file that parses but does not validate (unknown operation pattern).
    std::fs::write(
        &path,
        good.replace(
            "operations = [\"hpp.session_records.*\"]",
            "operations = [\"no.such.op\"]",
        ),
    )
    .unwrap();
    let r = reload(&h).await;
    assert_eq!(r.status(), 422);
    assert_eq!(get_tx(&h, &tx, ROTATED_KEY).await, 200);

    let metrics = h.scrape_metrics().await;
    assert!(
        metrics.contains("ratepay_gateway_config_reloads_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("ratepay_gateway_config_reloads_total{result=\"refused\"} 2"));
    // GET /reload does nothing.
    let r = h
        .http
        .get(format!("{}/reload", h.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    h.stop().await;
}

#[tokio::test]
async fn in_flight_requests_finish_on_the_configuration_they_started_with() {
    let (h, path) = start_from_file().await;
    let tx = h.authorize(keys::FULL, None, 50.0).await;
    h.fault(serde_json::json!({
        "operation": "payment.transactions.get", "latency_ms": 400, "count": 1
    }))
    .await;
    let before = h.op_count("payment.transactions.get").await;
    let slow = {
        let req = h.req(Method::GET, &format!("{TX_PATH}/{tx}"), keys::FULL);
        tokio::spawn(async move { req.send().await.expect("answer").status().as_u16() })
    };
    // Wait until the slow call is inside the sandbox (it counts calls before the delay).
    let mut waited = 0;
    while h.op_count("payment.transactions.get").await == before {
        waited += 1;
        assert!(waited < 500, "the slow call never reached the sandbox");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Remove the caller's key while its request is in flight.
    edit(&path, &sha(keys::FULL), &sha(ROTATED_KEY));
    assert_eq!(reload(&h).await.status(), 200);
    assert_eq!(
        slow.await.unwrap(),
        200,
        "in-flight request kept its config"
    );
    assert_eq!(
        get_tx(&h, &tx, keys::FULL).await,
        401,
        "new requests see the new config"
    );
    h.stop().await;
}

#[tokio::test]
async fn rotating_the_ratepay_secret_drops_no_request() {
    let (h, _path) = start_from_file().await;
    let tx = h.authorize(keys::FULL, None, 50.0).await;
    let issued = |v: serde_json::Value| v["tokens_issued"].as_u64().unwrap();
    let before = issued(h.stats().await);

    // Traffic through the gateway during both reloads.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (stop, served) = (stop.clone(), served.clone());
        let req = h.req(Method::GET, &format!("{TX_PATH}/{tx}"), keys::FULL);
        workers.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = req.try_clone().unwrap().send().await;
                statuses.push(r.map(|r| r.status().as_u16()).unwrap_or(0));
                served.fetch_add(1, Ordering::Relaxed);
            }
            statuses
        }));
    }
    let secret_file = h.dir.path().join("ratepay-secret");

    // A wrong secret: the token endpoint refuses it, so the reload is refused.
    std::fs::write(&secret_file, "not-the-secret").unwrap();
    let r = reload(&h).await;
    assert_eq!(r.status(), 422);
    let p = admin_problem(r).await;
    let detail = p["detail"].as_str().unwrap().to_owned();
    assert!(detail.contains("credentials.default"), "{detail}");
    assert!(
        !detail.contains("not-the-secret"),
        "secret leaked: {detail}"
    );

    // The right new secret: accepted after a token was issued for it.
    std::fs::write(&secret_file, NEW_SECRET).unwrap();
    let r = reload(&h).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.contains("issued a token"), "{text}");
    assert!(!text.contains(NEW_SECRET));

    // Let traffic run on the new configuration before stopping it.
    let at_swap = served.load(Ordering::Relaxed);
    while served.load(Ordering::Relaxed) < at_swap + 50 {
        tokio::task::yield_now().await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for w in workers {
        let statuses = w.await.unwrap();
        total += statuses.len();
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    }
    assert!(total >= 50);
    // One token for the refused secret attempt was never issued; one for the new secret was.
    let after = issued(h.stats().await);
    assert!(after > before, "a token was fetched with the new secret");
    h.stop().await;
}

/// Waits until the process counted `n` reloads with `result` (it answers SIGHUP by itself).
async fn wait_for_reloads(http: &reqwest::Client, admin: &str, result: &str, n: f64) {
    let line = format!("ratepay_gateway_config_reloads_total{{result=\"{result}\"}}");
    for _ in 0..1000 {
        let text = http
            .get(format!("http://{admin}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metric(&text, &line) == Some(n) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no {result} reload counted");
}

#[tokio::test]
async fn sighup_reloads_the_file_and_keeps_the_old_config_on_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    let (_sandbox, sb) = spawn(&["sandbox", "--listen", "127.0.0.1:0"], &["sandbox"]);
    let path = gateway_config(dir.path(), &sb["sandbox"]);
    let (gw, addrs) = spawn(
        &["serve", "--config", path.to_str().unwrap()],
        &["proxy", "admin"],
    );
    let (proxy, admin) = (&addrs["proxy"], &addrs["admin"]);
    let http = reqwest::Client::new();
    let status = |key: &'static str| {
        let http = http.clone();
        let url = format!("http://{proxy}{TX_PATH}/tx-that-does-not-exist");
        async move {
            http.get(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let pid = gw.0.id().to_string();
    let hup = || {
        let ok = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -HUP");
    };
    // Known caller: past authentication (the sandbox answers 404 for the unknown id).
    assert_eq!(status(KEY).await, 404);
    assert_eq!(status("sighup-new-key").await, 401);

    edit(&path, &sha(KEY), &sha("sighup-new-key"));
    hup();
    wait_for_reloads(&http, admin, "ok", 1.0).await;
    assert_eq!(status(KEY).await, 401, "old key refused after SIGHUP");
    assert_eq!(status("sighup-new-key").await, 404, "new key accepted");

    std::fs::write(&path, "this is = not [valid toml").unwrap();
    hup();
    wait_for_reloads(&http, admin, "refused", 1.0).await;
    assert_eq!(status("sighup-new-key").await, 404, "old config kept");
}

/// The sandbox's count of tokens issued and token requests.
async fn token_counts(h: &Harness) -> (u64, u64) {
    let s = h.stats().await;
    (
        s["tokens_issued"].as_u64().unwrap(),
        s["token_requests"].as_u64().unwrap(),
    )
}

async fn ready(h: &Harness) -> u16 {
    h.http
        .get(format!("{}/readyz", h.admin))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Reloads and returns the answer's text (asserting 200).
async fn reload_ok(h: &Harness) -> String {
    let r = reload(h).await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

#[tokio::test]
async fn unchanged_credentials_keep_their_token_across_a_reload() {
    let (h, path) = start_from_file().await;
    let tx = h.authorize(keys::FULL, None, 50.0).await;
    // Readiness obtains a token for every upstream: all three audiences hold one now.
    assert_eq!(ready(&h).await, 200);
    let before = token_counts(&h).await;
    assert_eq!(before.0, 3, "one token per audience");

    // A reload that changes a caller's key and nothing about Ratepay's credentials.
    edit(&path, &sha(keys::FULL), &sha(ROTATED_KEY));
    let text = reload_ok(&h).await;
    assert_eq!(get_tx(&h, &tx, ROTATED_KEY).await, 200);
    assert_eq!(ready(&h).await, 200);
    assert_eq!(
        token_counts(&h).await,
        before,
        "no token fetched: the running tokens were kept"
    );
    let metrics = h.scrape_metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "ratepay_gateway_token_fetches_total{upstream=\"payment\"}"
        ),
        Some(1.0)
    );
    assert!(
        !text.contains("credentials") && !text.contains("tokens"),
        "{text}"
    );
    h.stop().await;
}

#[tokio::test]
async fn idempotency_store_audit_log_rate_limits_and_cache_carry_over_a_reload() {
    let (h, path) = start_from_file_with(Options {
        extra_toml: "[cache]\nchanging_ttl_secs = 600\n\
                     [rate_limits.callers.nopartner]\nrate_per_sec = 0.001\nburst = 2\n"
            .into(),
        ..Options::default()
    })
    .await;
    let tx = h.authorize(keys::FULL, None, 50.0).await;
    let cancel = |idem: &'static str| {
        h.req(Method::POST, &tx_path(&tx, "cancellations"), keys::FULL)
            .header("idempotency-key", idem)
            .header("content-type", "application/json")
            .body(r#"{"gross_amount": 1}"#)
            .send()
    };
    assert_eq!(cancel("carry-1").await.unwrap().status(), 201);
    // The caller `nopartner` spends its whole budget of 2.
    let limited = || get_tx(&h, "tx-of-nobody", keys::NOPARTNER);
    for _ in 0..2 {
        assert_ne!(limited().await, 429);
    }
    assert_eq!(limited().await, 429, "the budget is spent");
    let sid = h.session(keys::FULL, None).await;
    let record = format!("/pps/api/v1/session-record/{sid}");
    let x_cache = || async {
        let r = h
            .req(Method::GET, &record, keys::FULL)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.headers()["x-cache"].to_str().unwrap().to_owned()
    };
    assert_eq!(x_cache().await, "MISS");

    // A reload that changes another caller's key, not the settings of any of these.
    edit(&path, &sha(keys::READER), &sha("reader-key-rotated"));
    let text = reload_ok(&h).await;
    assert!(text.contains("generation 1"), "{text}");

    // Idempotency store: the same call is replayed, not executed again.
    let r = cancel("carry-1").await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    assert_eq!(h.op_count("payment.cancellations.create").await, 1);
    // Rate limits: the spent budget stays spent.
    assert_eq!(
        limited().await,
        429,
        "the budget was not refilled by the reload"
    );
    // Cache: the record is still held.
    assert_eq!(x_cache().await, "HIT");
    assert_eq!(h.op_count("hpp.session_records.get").await, 1);
    // Audit log: the chain continues in the same file.
    assert_eq!(cancel("carry-2").await.unwrap().status(), 201);
    let records = h.audit_records();
    let seqs: Vec<_> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    // After the start record and its checkpoint.
    assert_eq!(seqs, [3, 4, 5, 6]);
    assert_eq!(
        ratepay_gateway::audit::verify(&[h.audit_path()])
            .unwrap()
            .records,
        6
    );
    assert!(
        !text.contains("rate_limits") && !text.contains("cache"),
        "{text}"
    );
    h.stop().await;
}

#[tokio::test]
async fn restart_only_settings_are_named_by_the_reload_and_keep_their_running_values() {
    let (h, path) = start_from_file().await;
    let notes = [
        "listen: changed in the file, but takes effect only after a restart; kept",
        "audit (file settings): changed in the file, but takes effect only after a restart; kept",
        "idempotency: changed in the file, but takes effect only after a restart; kept",
    ];
    // A reload without restart-only changes names none.
    edit(&path, &sha(keys::READER), &sha("reader-key-rotated"));
    let text = reload_ok(&h).await;
    assert!(!text.contains("restart"), "{text}");

    let audit = h.audit_path();
    let moved = h.dir.path().join("moved").join("audit.jsonl");
    edit(
        &path,
        "shutdown_grace_ms = 5000",
        "shutdown_grace_ms = 7000",
    );
    edit(
        &path,
        &format!("path = \"{}\"", audit.display()),
        &format!("path = \"{}\"", moved.display()),
    );
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{text}\n[idempotency]\nttl_secs = 60\n")).unwrap();
    let text = reload_ok(&h).await;
    for note in notes {
        assert!(text.contains(note), "{text}");
    }
    // The running values stay: a second reload of the same file names them again.
    let text = reload_ok(&h).await;
    assert!(text.contains("generation 3"), "{text}");
    for note in notes {
        assert!(text.contains(note), "{text}");
    }
    // The audit log is still the one it started with.
    let tx = h.authorize(keys::FULL, None, 50.0).await;
    let r = h
        .post_json(
            &tx_path(&tx, "cancellations"),
            keys::FULL,
            r#"{"gross_amount": 1}"#,
        )
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(h.audit_records().len(), 2);
    assert!(!moved.exists() && !moved.parent().unwrap().exists());
    h.stop().await;
}
