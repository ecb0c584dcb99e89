//! Live reload: `POST /reload` and SIGHUP re-read the file, swap atomically, refuse bad files,
//! keep in-flight requests on their configuration, and rotate secrets without dropping requests.

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
    sandbox_config, sha, Harness, Options, TX_PATH,
};
use ratepay_gateway::{
    config::Config,
    reload::{ConfigSource, LiveGateway},
    sandbox::{self, SandboxClient},
    stack::Gateway,
};
use reqwest::Method;

const ROTATED_KEY: &str = "full-key-rotated-0009";
const NEW_SECRET: &str = "rotated-ratepay-secret-77aa";

/// Sandbox (accepting the original and the rotated Ratepay secret) and a gateway started from
/// a file in the harness's directory, reloadable through the admin listener.
async fn start_from_file() -> (Harness, PathBuf) {
    let mut sc = sandbox_config(Duration::from_secs(1800));
    sc.clients.push(SandboxClient {
        client_id: "gw-client".into(),
        client_secret: NEW_SECRET.to_owned().into(),
    });
    let sandbox = sandbox::spawn(sc).await.expect("sandbox starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), &sandbox.url(), &Options::default());
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
