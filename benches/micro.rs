//! Criterion micro-benchmarks of the per-request work, each piece alone, in-process:
//!
//! ```sh
//! cargo bench --bench micro                  # all groups
//! cargo bench --bench micro -- route_match   # one group (criterion's name filter)
//! ```
//!
//! - `caller_auth`: API key lookup (SHA-256 + map) and gateway JWT verification (HS256).
//! - `route_match`: `routes::match_route` on the paths the load benchmark uses.
//! - `rate_limit`: the caller and upstream GCRA checks with a limit far above the load.
//! - `token`: a warm `TokenSource::bearer()`, and the token layer around a no-op inner service
//!   (bearer, request copy kept for a 401 replay, header insertion).
//! - `cache`: a session-record cache hit through the cache layer (key, lookup, response build).
//! - `audit`: one intent appended and synced (`fdatasync`) to a file on disk, and 32 concurrent
//!   appends that share syncs; the same on tmpfs (`/dev/shm`, where the sync costs nothing)
//!   when present, to separate the sync from the rest.
//! - `access_log`: one access record (the edge's fields) formatted and handed to a discarding
//!   writer: as the edge logs it (`logging::access`, text and JSON), as a `tracing` event through
//!   the same subscriber (`_as_event`, the edge's way until session 16), and through
//!   `tracing_subscriber`'s stock formatter, which wrote access records until session 4.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response};
use ratepay_gateway::{
    audit::{AuditConfig, AuditEntry, AuditLog, Intent},
    body,
    callers::{Callers, Issuer},
    config::{
        sha256, CacheSettings, CallerConfig, CallersConfig, IssuerConfig, OperationMatcher,
        PartnerPolicy, Rate, RateLimitSettings, SigningKey, TokenSettings,
    },
    context::{Authenticated, Call, Peer, RequestContext, RequestFacts},
    error::GatewayError,
    middleware::{
        cache::{SessionRecordCache, SessionRecordCacheLayer},
        rate_limit::{Decision, RateLimits},
        token::InjectTokenLayer,
        GwRequest, GwResponse, Handler,
    },
    routes::{self, Api},
    token::{FetchFuture, FetchToken, Fetched, TokenSource},
};
use secrecy::SecretString;
use tower::Layer;

const API_KEY: &str = "bench-key-0001";
const AUDIENCE: &str = "bench-payment";
const TX_PATH: &str = "/transaction/management/v2/transactions/bench-tx-0001";
const CANCEL_PATH: &str = "/transaction/management/v2/transactions/bench-tx-0001/cancellations";
const RECORD_PATH: &str = "/pps/api/v1/session-record/bench-session-0001";
const RECORD: &str = r#"{"session_id":"bench-session-0001","transaction_id":"bench-tx-record","session_status":"COMPLETED","created_date":"2026-11-21T08:00:00+01:00","updated_date":"2026-11-21T08:01:00+01:00"}"#;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

fn callers() -> (Callers, String) {
    ratepay_gateway::crypto::install_providers();
    let issuer = IssuerConfig {
        key: SigningKey::hs256("k".repeat(32).as_bytes()),
        issuer: "ratepay-gateway".into(),
        lifetime: Duration::from_secs(900),
    };
    let jwt = Issuer::new(&issuer)
        .issue("bench", AUDIENCE)
        .expect("jwt")
        .0;
    let config = CallersConfig {
        callers: vec![CallerConfig {
            name: "bench".into(),
            api_key_sha256: Some(sha256(API_KEY.as_bytes())),
            client: None,
            operations: OperationMatcher::all(),
            partner: PartnerPolicy::Fixed("p-bench".into()),
            client_cert: Vec::new(),
        }],
        issuer: Some(issuer),
        audiences: vec![AUDIENCE.into()],
    };
    (Callers::new(&config).expect("callers"), jwt)
}

fn bearer_headers(credential: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {credential}")).expect("header"),
    );
    h
}

fn caller_auth(c: &mut Criterion) {
    let (callers, jwt) = callers();
    let key = bearer_headers(API_KEY);
    let token = bearer_headers(&jwt);
    let mut g = c.benchmark_group("caller_auth");
    g.bench_function("api_key", |b| {
        b.iter(|| callers.authenticate(&key, AUDIENCE).expect("caller"))
    });
    g.bench_function("gateway_jwt_hs256", |b| {
        b.iter(|| callers.authenticate(&token, AUDIENCE).expect("caller"))
    });
    g.finish();
}

fn route_match(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_match");
    for (name, method, path) in [
        ("get_transaction", Method::GET, TX_PATH),
        ("post_cancellation", Method::POST, CANCEL_PATH),
        ("get_session_record", Method::GET, RECORD_PATH),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                routes::match_route(&method, std::hint::black_box(path))
                    .expect("valid")
                    .expect("known")
            })
        });
    }
    g.finish();
}

fn rate_limit(c: &mut Criterion) {
    let far_above = Rate {
        per_sec: 1e8,
        burst: 1_000_000,
    };
    let settings = RateLimitSettings {
        per_caller: Some(far_above),
        upstreams: [(Api::Payment, far_above)].into_iter().collect(),
        ..RateLimitSettings::default()
    };
    let limits = RateLimits::new(&settings);
    let mut g = c.benchmark_group("rate_limit");
    g.bench_function("caller_keyed", |b| {
        b.iter(|| {
            let d = limits.check_caller("bench", Duration::ZERO);
            assert!(matches!(d, Decision::Allow(_)));
            d
        })
    });
    g.bench_function("upstream_direct", |b| {
        b.iter(|| {
            let d = limits.check_upstream(Api::Payment, "payment.transactions.get", Duration::ZERO);
            assert!(matches!(d, Decision::Allow(_)));
            d
        })
    });
    g.finish();
}

/// Hands out the same JWT-shaped token every time.
struct StaticToken;

impl FetchToken for StaticToken {
    fn fetch(&self) -> FetchFuture {
        Box::pin(async {
            Ok(Fetched {
                access_token: SecretString::from(
                    "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjQxMDI0NDQ4MDB9.c2lnbmF0dXJl".to_owned(),
                ),
                expires_in: Duration::from_secs(3600),
            })
        })
    }
}

/// The innermost service of these benchmarks: answers `body` with 200 at once.
/// The innermost handler: answers `body` at once.
struct Answering(&'static str);

impl Handler for Answering {
    async fn handle(&self, _call: &Call, _req: GwRequest) -> Result<GwResponse, GatewayError> {
        let mut resp = Response::new(body::full(Bytes::from_static(self.0.as_bytes())));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Ok(resp)
    }
}

fn answering(body: &'static str) -> Answering {
    Answering(body)
}

/// A routed, authenticated request and its call, as the inner layers see them.
fn routed(callers: &Callers, method: Method, path: &str) -> (Call, GwRequest) {
    let req = Request::builder()
        .method(method.clone())
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {API_KEY}"))
        .body(Bytes::new())
        .expect("request");
    let caller = callers
        .authenticate(req.headers(), AUDIENCE)
        .expect("caller");
    let partner = caller.partner_for(None).expect("partner");
    let source: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
    let ctx = RequestContext::new(RequestFacts {
        request_id: Arc::from("0193a5f0-0000-7000-8000-000000000000"),
        route: routes::match_route(&method, path)
            .expect("valid")
            .expect("known"),
        peer: Peer::plain(source),
        received: Instant::now(),
        deadline: Instant::now() + std::time::Duration::from_secs(60),
        stats: Arc::default(),
    });
    let call = Call {
        ctx,
        auth: Authenticated { caller, partner },
    };
    (call, req)
}

fn token(c: &mut Criterion) {
    let rt = runtime();
    let (callers, _) = callers();
    let (source, svc) = rt.block_on(async {
        let source = TokenSource::new(
            AUDIENCE.into(),
            Box::new(StaticToken),
            TokenSettings::default(),
        );
        source.bearer().await.expect("first token");
        let sources = Arc::new(BTreeMap::from([(Api::Payment, source.clone())]));
        let svc = InjectTokenLayer::new(sources).layer(answering(RECORD));
        (source, svc)
    });
    let mut g = c.benchmark_group("token");
    g.bench_function("bearer_warm", |b| {
        b.to_async(&rt)
            .iter(|| async { source.bearer().await.expect("bearer") })
    });
    g.bench_function("inject_layer", |b| {
        let svc = &svc;
        b.to_async(&rt).iter_batched(
            || routed(&callers, Method::GET, TX_PATH),
            |(call, req)| async move { svc.handle(&call, req).await.expect("response") },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn cache(c: &mut Criterion) {
    let rt = runtime();
    let (callers, _) = callers();
    let svc = rt.block_on(async {
        let cache = SessionRecordCache::new(&CacheSettings::default());
        let svc = SessionRecordCacheLayer::new(cache).layer(answering(RECORD));
        // The first call stores the record; every later one is a hit.
        let (call, req) = routed(&callers, Method::GET, RECORD_PATH);
        let resp = svc.handle(&call, req).await.expect("miss");
        assert_eq!(resp.headers()["x-cache"], "MISS");
        svc
    });
    let mut g = c.benchmark_group("cache");
    g.bench_function("session_record_hit", |b| {
        let svc = &svc;
        b.to_async(&rt).iter_batched(
            || routed(&callers, Method::GET, RECORD_PATH),
            |(call, req)| async move {
                let resp = svc.handle(&call, req).await.expect("hit");
                debug_assert_eq!(resp.headers()["x-cache"], "HIT");
                resp
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn intent(n: u64) -> AuditEntry {
    AuditEntry::Intent(Intent {
        request_id: format!("0193a5f0-0000-7000-8000-{n:012}"),
        caller: "bench".into(),
        source: "127.0.0.1".parse().expect("ip"),
        operation: "payment.cancellations.create".into(),
        ratepay_transaction_id: "bench-tx-0001".into(),
        partner: Some("p-bench".into()),
        gross_amount: Some("10.00".into()),
        partner_operation_id: Some(format!("op-{n}")),
        partner_shop_id: None,
        body_sha256: "0".repeat(64),
        idempotency_key: Some(format!("{n:064x}")),
    })
}

fn audit_on(c: &mut Criterion, rt: &tokio::runtime::Runtime, label: &str, dir: &Path) {
    let log = rt.block_on(async {
        AuditLog::open(AuditConfig::new(dir.join("audit.jsonl")))
            .await
            .expect("audit log")
            .0
    });
    let mut g = c.benchmark_group("audit");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(4));
    let n = std::sync::atomic::AtomicU64::new(0);
    let next = || n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    g.bench_function(format!("append_sync_{label}"), |b| {
        b.to_async(rt)
            .iter(|| async { log.append(intent(next())).await.expect("append") })
    });
    g.bench_function(format!("append_sync_x32_concurrent_{label}"), |b| {
        b.to_async(rt).iter(|| async {
            let appends: Vec<_> = (0..32).map(|_| log.append(intent(next()))).collect();
            for r in futures_util::future::join_all(appends).await {
                r.expect("append");
            }
        })
    });
    g.finish();
    rt.block_on(log.close());
}

fn audit(c: &mut Criterion) {
    let rt = runtime();
    // On the target directory's file system (a real disk here), not /tmp, which may be tmpfs.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "target".into());
    let disk = tempfile::tempdir_in(&target).expect("tempdir on disk");
    audit_on(c, &rt, "disk", disk.path());
    if Path::new("/dev/shm").is_dir() {
        let shm = tempfile::tempdir_in("/dev/shm").expect("tempdir on tmpfs");
        audit_on(c, &rt, "tmpfs", shm.path());
    }
}

/// One access record with the edge's fields and typical values, as the edge logs it.
fn access_record(request_id: &str, path: &str) {
    ratepay_gateway::logging::access(&ratepay_gateway::logging::AccessRecord {
        request_id,
        method: "GET",
        path,
        operation: "payment.transactions.get",
        caller: "bench",
        status: 200,
        latency_us: 187,
        upstream_attempts: 1,
        cache: "-",
        bytes: Some(233),
        queued_us: 0,
    });
}

/// The same record as a `tracing` event (how the edge logged it until session 16).
fn access_event(request_id: &str, path: &str) {
    tracing::info!(
        target: ratepay_gateway::logging::ACCESS_TARGET,
        request_id,
        method = "GET",
        path,
        operation = "payment.transactions.get",
        caller = "bench",
        status = 200u16,
        latency_us = 187u64,
        upstream_attempts = 1u32,
        cache = "-",
        bytes = Some(233u64),
        queued_us = 0u64,
        "request"
    );
}

fn access_log(c: &mut Criterion) {
    use ratepay_gateway::logging::{subscriber, LogFormat};
    use tracing_subscriber::EnvFilter;
    let request_id = "0193a5c4-7d1e-7c2a-9b8e-2f4d6a1c3e5f";
    let mut g = c.benchmark_group("access_log");
    let mut run = |name: &str, dispatch: tracing::Dispatch, log: fn(&str, &str)| {
        g.bench_function(name, |b| {
            tracing::dispatcher::with_default(&dispatch, || b.iter(|| log(request_id, TX_PATH)))
        });
    };
    for (name, format) in [
        ("gateway_text", LogFormat::Text),
        ("gateway_json", LogFormat::Json),
    ] {
        let s = || subscriber(format, EnvFilter::new("info"), false, std::io::sink);
        run(name, tracing::Dispatch::new(s()), access_record);
        run(
            &format!("{name}_as_event"),
            tracing::Dispatch::new(s()),
            access_event,
        );
    }
    let stock = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new("info"))
        .with_ansi(false)
        .with_writer(std::io::sink);
    run(
        "stock_fmt_text",
        tracing::Dispatch::new(stock.finish()),
        access_event,
    );
    let stock = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new("info"))
        .with_writer(std::io::sink)
        .json()
        .flatten_event(true);
    run(
        "stock_fmt_json",
        tracing::Dispatch::new(stock.finish()),
        access_event,
    );
    g.finish();
}

criterion_group!(
    benches,
    caller_auth,
    route_match,
    rate_limit,
    token,
    cache,
    audit,
    access_log
);
criterion_main!(benches);
