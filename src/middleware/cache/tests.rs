//! Unit tests of the cache: policy, directives, store and layers on a fake clock.

use std::{sync::Arc, time::Duration};

use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;
use time::Date;

use crate::middleware::{GwRequest, GwResponse, Handler};
use crate::{body, config::CacheSettings, context::Call, error::GatewayError, routes::Api};
use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
};

use governor::clock::FakeRelativeClock;
use time::macros::date;

use super::*;
use crate::middleware::testing::request;

const SID: &str = "sessionAAAAAAAAAAAAA";
const TODAY: Date = date!(2024 - 05 - 10);

fn settings() -> CacheSettings {
    CacheSettings {
        max_bytes: 1 << 20,
        terminal_ttl: Duration::from_secs(600),
        changing_ttl: Duration::from_secs(2),
        list_past_ttl: Duration::from_secs(300),
        list_today_ttl: Duration::from_secs(3),
        not_found_ttl: Duration::from_secs(1),
        stale_if_error: Duration::from_secs(60),
    }
}

fn record(status: &str, tx: Option<&str>) -> String {
    let mut v = serde_json::json!({"session_id": SID, "session_status": status});
    if let Some(t) = tx {
        v["transaction_id"] = t.into();
    }
    v.to_string()
}

#[test]
fn query_normalisation_sorts_and_drops_empty_pieces() {
    assert_eq!(normalise_query("b=2&a=1"), "a=1&b=2");
    assert_eq!(normalise_query("a=1&b=2&"), "a=1&b=2");
    assert_eq!(
        normalise_query("&&createdDate=2024-01-01"),
        "createdDate=2024-01-01"
    );
    assert_eq!(normalise_query("a=2&a=1&flag"), "a=1&a=2&flag");
    let p = "/pps/api/v1/session-record";
    assert_eq!(
        CacheKey::new(Api::Hpp, None, p, Some("x=1&createdDate=2024-01-01")),
        CacheKey::new(Api::Hpp, None, p, Some("createdDate=2024-01-01&x=1&"))
    );
    assert_eq!(CacheKey::new(Api::Hpp, None, p, Some("")).target, p);
}

#[test]
fn keys_separate_partners_and_upstreams() {
    let p = "/pps/api/v1/session-record/abc";
    let a = CacheKey::new(Api::Hpp, Some(Arc::from("p-a")), p, None);
    let b = CacheKey::new(Api::Hpp, Some(Arc::from("p-b")), p, None);
    let none = CacheKey::new(Api::Hpp, None, p, None);
    let empty = CacheKey::new(Api::Hpp, Some(Arc::from("")), p, None);
    assert_ne!(a, b);
    assert_ne!(a, none);
    assert_ne!(none, empty);
    assert_ne!(
        CacheKey::new(Api::Payment, Some(Arc::from("p-a")), p, None),
        a
    );
}

#[test]
fn record_lifetime_follows_its_status() {
    let s = settings();
    let ttl = |status: &str| {
        freshness(
            &s,
            RECORD_GET,
            StatusCode::OK,
            record(status, None).as_bytes(),
            None,
            TODAY,
        )
        .map(|f| f.ttl)
    };
    for t in ["COMPLETED", "ERROR", "EXPIRED", "CANCELED"] {
        assert_eq!(ttl(t), Some(Duration::from_secs(600)), "{t}");
    }
    for t in [
        "CREATED",
        "IN_PROGRESS",
        "OTP_PENDING",
        "FRAUD_CANCELLATION_REQUESTED",
        "SOMETHING_NEW",
    ] {
        assert_eq!(ttl(t), Some(Duration::from_secs(2)), "{t}");
    }
    let f = freshness(
        &s,
        RECORD_GET,
        StatusCode::OK,
        record("COMPLETED", Some("tx-1")).as_bytes(),
        None,
        TODAY,
    )
    .unwrap();
    assert_eq!(f.transaction_ids, ["tx-1"]);
    // Not a record, other statuses, and 5xx are never stored; 404 briefly.
    assert_eq!(
        freshness(&s, RECORD_GET, StatusCode::OK, b"<html>", None, TODAY),
        None
    );
    assert_eq!(
        freshness(&s, RECORD_GET, StatusCode::OK, b"{}", None, TODAY),
        None
    );
    assert_eq!(
        freshness(&s, RECORD_GET, StatusCode::BAD_REQUEST, b"{}", None, TODAY),
        None
    );
    assert_eq!(
        freshness(
            &s,
            RECORD_GET,
            StatusCode::SERVICE_UNAVAILABLE,
            b"{}",
            None,
            TODAY
        ),
        None
    );
    assert_eq!(
        freshness(&s, RECORD_GET, StatusCode::NOT_FOUND, b"{}", None, TODAY).map(|f| f.ttl),
        Some(Duration::from_secs(1))
    );
    // A zero lifetime switches that kind off.
    let off = CacheSettings {
        changing_ttl: Duration::ZERO,
        ..settings()
    };
    assert_eq!(
        freshness(
            &off,
            RECORD_GET,
            StatusCode::OK,
            record("CREATED", None).as_bytes(),
            None,
            TODAY
        ),
        None
    );
}

#[test]
fn list_lifetime_follows_its_day_and_records() {
    let s = settings();
    let done = format!(
        "[{},{}]",
        record("COMPLETED", Some("t1")),
        record("EXPIRED", None)
    );
    let open = format!(
        "[{},{}]",
        record("COMPLETED", Some("t1")),
        record("IN_PROGRESS", None)
    );
    let ttl = |body: &str, q: &str| {
        freshness(
            &s,
            RECORD_LIST,
            StatusCode::OK,
            body.as_bytes(),
            Some(q),
            TODAY,
        )
        .map(|f| f.ttl)
    };
    assert_eq!(
        ttl(&done, "createdDate=2024-05-09"),
        Some(Duration::from_secs(300)),
        "past, settled"
    );
    assert_eq!(
        ttl("[]", "createdDate=2023-01-01"),
        Some(Duration::from_secs(300)),
        "past, empty"
    );
    assert_eq!(
        ttl(&open, "createdDate=2024-05-09"),
        Some(Duration::from_secs(3)),
        "past, still changing"
    );
    assert_eq!(
        ttl(&done, "createdDate=2024-05-10"),
        Some(Duration::from_secs(3)),
        "today"
    );
    assert_eq!(
        ttl(&done, "createdDate=2024-05-11"),
        Some(Duration::from_secs(3)),
        "future"
    );
    assert_eq!(ttl(&done, "createdDate=10.05.2024"), None, "bad date");
    assert_eq!(ttl(&done, "other=1"), None, "no date");
    assert_eq!(ttl("{}", "createdDate=2024-05-09"), None, "not a list");
    let f = freshness(
        &s,
        RECORD_LIST,
        StatusCode::OK,
        done.as_bytes(),
        Some("createdDate=2024-05-09"),
        TODAY,
    )
    .unwrap();
    assert_eq!(f.transaction_ids, ["t1"]);
}

#[test]
fn caller_directives() {
    let h = |pairs: &[(&'static str, &'static str)]| {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        directive(&m)
    };
    assert_eq!(h(&[]), Directive::Normal);
    assert_eq!(h(&[("cache-control", "No-Cache")]), Directive::NoCache);
    assert_eq!(h(&[("cache-control", "max-age=0")]), Directive::NoCache);
    assert_eq!(h(&[("pragma", "no-cache")]), Directive::NoCache);
    assert_eq!(
        h(&[("cache-control", "no-cache, no-store")]),
        Directive::NoStore
    );
    assert_eq!(h(&[("cache-control", "max-age=60")]), Directive::Normal);
}

type Scripted = Result<(u16, String), GatewayError>;

/// A scripted Ratepay: each call takes the next answer (the last one repeats).
#[derive(Clone)]
struct Script {
    answers: Arc<Mutex<VecDeque<Scripted>>>,
    calls: Arc<AtomicUsize>,
    gate: Option<Arc<tokio::sync::Semaphore>>,
}

impl Script {
    fn new(answers: Vec<Scripted>) -> Script {
        Script {
            answers: Arc::new(Mutex::new(answers.into())),
            calls: Arc::new(AtomicUsize::new(0)),
            gate: None,
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Handler for Script {
    async fn handle(&self, _call: &Call, _req: GwRequest) -> Result<GwResponse, GatewayError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let answer = {
            let mut a = self.answers.lock().unwrap();
            if a.len() > 1 {
                a.pop_front().unwrap()
            } else {
                a.front().cloned().unwrap()
            }
        };
        if let Some(g) = &self.gate {
            let _permit = g.acquire().await.unwrap();
        }
        let (status, body) = answer?;
        let mut resp = GwResponse::new(body::full(body));
        *resp.status_mut() = StatusCode::from_u16(status).unwrap();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Ok(resp)
    }
}

fn get(partner: Option<&str>) -> (Call, GwRequest) {
    request(
        Method::GET,
        &format!("/pps/api/v1/session-record/{SID}"),
        partner,
        &[],
    )
}

struct Answer {
    status: u16,
    x_cache: String,
    age: Option<u64>,
    body: String,
}

async fn call<S: Handler>(
    svc: &mut SessionRecordCacheService<S, FakeRelativeClock>,
    (call, req): (Call, GwRequest),
) -> Result<Answer, GatewayError> {
    let resp = svc.handle(&call, req).await?;
    let x_cache = resp
        .headers()
        .get(&X_CACHE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let age = resp
        .headers()
        .get(header::AGE)
        .map(|v| v.to_str().unwrap().parse().unwrap());
    let status = resp.status().as_u16();
    let body = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    Ok(Answer {
        status,
        x_cache,
        age,
        body,
    })
}

fn service(
    script: &Script,
    settings: CacheSettings,
) -> (
    SessionRecordCacheService<Script, FakeRelativeClock>,
    SessionRecordCache<FakeRelativeClock>,
    FakeRelativeClock,
) {
    let clock = FakeRelativeClock::default();
    let cache = SessionRecordCache::with_clock(&settings, clock.clone());
    let svc = tower::Layer::layer(&SessionRecordCacheLayer::new(cache.clone()), script.clone());
    (svc, cache, clock)
}

#[tokio::test]
async fn changing_record_expires_after_its_short_lifetime_and_terminal_one_stays() {
    let script = Script::new(vec![
        Ok((200, record("CREATED", None))),
        Ok((200, record("COMPLETED", Some("tx")))),
    ]);
    let (mut svc, _cache, clock) = service(&script, settings());
    let a = call(&mut svc, get(None)).await.unwrap();
    assert_eq!(
        (a.status, a.x_cache.as_str(), a.age),
        (200, "MISS", Some(0))
    );
    clock.advance(Duration::from_millis(1999));
    let a = call(&mut svc, get(None)).await.unwrap();
    assert_eq!((a.x_cache.as_str(), a.age), ("HIT", Some(1)));
    assert!(a.body.contains("CREATED"));
    assert_eq!(script.calls(), 1);
    // At exactly 2 s the CREATED record is no longer fresh: refetched, now COMPLETED.
    clock.advance(Duration::from_millis(1));
    let a = call(&mut svc, get(None)).await.unwrap();
    assert_eq!(a.x_cache, "MISS");
    assert!(a.body.contains("COMPLETED"));
    assert_eq!(script.calls(), 2);
    clock.advance(Duration::from_secs(599));
    let a = call(&mut svc, get(None)).await.unwrap();
    assert_eq!((a.x_cache.as_str(), a.age), ("HIT", Some(599)));
    clock.advance(Duration::from_secs(1));
    assert_eq!(call(&mut svc, get(None)).await.unwrap().x_cache, "MISS");
    assert_eq!(script.calls(), 3);
}

#[test]
fn age_is_read_and_reported_capped_at_2_pow_31() {
    let v = |s: &'static str| HeaderValue::from_static(s);
    assert_eq!(parse_age(&v("42")), Some(42));
    assert_eq!(parse_age(&v("2147483648")), Some(MAX_AGE_SECS));
    assert_eq!(parse_age(&v("18446744073709551615")), Some(MAX_AGE_SECS));
    assert_eq!(parse_age(&v("99999999999999999999999")), Some(MAX_AGE_SECS));
    for bad in ["", "-1", "+1", "1.5", "soon"] {
        assert_eq!(parse_age(&v(bad)), None, "{bad:?}");
    }
    assert_eq!(reported_age(Duration::from_secs(5), 10), 15);
    assert_eq!(reported_age(Duration::from_secs(5), u64::MAX), MAX_AGE_SECS);
    assert_eq!(reported_age(Duration::MAX, u64::MAX), MAX_AGE_SECS);
    assert_eq!(reported_age(Duration::MAX, 0), MAX_AGE_SECS);
}

#[tokio::test]
async fn partners_never_share_entries() {
    let script = Script::new(vec![Ok((200, record("COMPLETED", None)))]);
    let (mut svc, _cache, _clock) = service(&script, settings());
    assert_eq!(
        call(&mut svc, get(Some("p-a"))).await.unwrap().x_cache,
        "MISS"
    );
    assert_eq!(
        call(&mut svc, get(Some("p-b"))).await.unwrap().x_cache,
        "MISS"
    );
    assert_eq!(call(&mut svc, get(None)).await.unwrap().x_cache, "MISS");
    assert_eq!(
        call(&mut svc, get(Some("p-a"))).await.unwrap().x_cache,
        "HIT"
    );
    assert_eq!(script.calls(), 3);
}

#[tokio::test]
async fn not_found_is_kept_briefly_and_other_answers_not_at_all() {
    let script = Script::new(vec![
        Ok((404, "{}".into())),
        Ok((400, "{}".into())),
        Ok((400, "{}".into())),
        Ok((200, record("COMPLETED", None))),
    ]);
    let (mut svc, _cache, clock) = service(&script, settings());
    assert_eq!(call(&mut svc, get(None)).await.unwrap().status, 404);
    let a = call(&mut svc, get(None)).await.unwrap();
    assert_eq!((a.status, a.x_cache.as_str()), (404, "HIT"));
    clock.advance(Duration::from_secs(1));
    assert_eq!(call(&mut svc, get(None)).await.unwrap().status, 400);
    assert_eq!(call(&mut svc, get(None)).await.unwrap().status, 400);
    assert_eq!(script.calls(), 3);
}

#[tokio::test]
async fn stale_if_error_within_the_window_only() {
    let script = Script::new(vec![
        Ok((200, record("CREATED", None))),
        Ok((503, "{\"error\":\"down\"}".into())),
        Err(GatewayError::UpstreamTimeout {
            upstream: "hpp",
            timeout_ms: 10,
        }),
        Ok((503, "{\"error\":\"down\"}".into())),
    ]);
    let (mut svc, _cache, clock) = service(&script, settings());
    assert_eq!(call(&mut svc, get(None)).await.unwrap().x_cache, "MISS");
    clock.advance(Duration::from_secs(5));
    let a = call(&mut svc, get(None)).await.unwrap();
    assert_eq!(
        (a.status, a.x_cache.as_str(), a.age),
        (200, "STALE", Some(5))
    );
    // Each later request tries Ratepay again; a timeout also falls back to the stale entry.
    let a = call(&mut svc, get(None)).await.unwrap();
    assert_eq!((a.status, a.x_cache.as_str()), (200, "STALE"));
    assert_eq!(script.calls(), 3);
    // 2 s fresh + 60 s stale window: at 62 s the entry can no longer stand in.
    clock.advance(Duration::from_secs(57));
    let a = call(&mut svc, get(None)).await.unwrap();
    assert_eq!((a.status, a.x_cache.as_str()), (503, "MISS"));
}

#[tokio::test]
async fn a_4xx_is_not_an_error_to_hide_behind_a_stale_entry() {
    let script = Script::new(vec![
        Ok((200, record("CREATED", None))),
        Ok((403, "{}".into())),
    ]);
    let (mut svc, _cache, clock) = service(&script, settings());
    call(&mut svc, get(None)).await.unwrap();
    clock.advance(Duration::from_secs(3));
    assert_eq!(call(&mut svc, get(None)).await.unwrap().status, 403);
}

#[tokio::test]
async fn no_cache_refreshes_and_no_store_leaves_the_entry_alone() {
    let script = Script::new(vec![
        Ok((200, record("CREATED", None))),
        Ok((200, record("IN_PROGRESS", None))),
        Ok((200, record("OTP_PENDING", None))),
    ]);
    let (mut svc, _cache, _clock) = service(&script, settings());
    call(&mut svc, get(None)).await.unwrap();
    let no_cache = |v| {
        request(
            Method::GET,
            &format!("/pps/api/v1/session-record/{SID}"),
            None,
            &[("cache-control", v)],
        )
    };
    let a = call(&mut svc, no_cache("no-cache")).await.unwrap();
    assert_eq!(a.x_cache, "BYPASS");
    assert!(a.body.contains("IN_PROGRESS"));
    let a = call(&mut svc, get(None)).await.unwrap();
    assert_eq!(a.x_cache, "HIT");
    assert!(
        a.body.contains("IN_PROGRESS"),
        "no-cache refreshed the entry"
    );
    let a = call(&mut svc, no_cache("no-store")).await.unwrap();
    assert!(a.body.contains("OTP_PENDING"));
    assert!(
        call(&mut svc, get(None))
            .await
            .unwrap()
            .body
            .contains("IN_PROGRESS"),
        "no-store stored nothing"
    );
    assert_eq!(script.calls(), 3);
}

#[tokio::test]
async fn ratepay_no_store_is_obeyed() {
    #[derive(Clone)]
    struct NoStore(Arc<AtomicUsize>);
    impl Handler for NoStore {
        async fn handle(&self, _: &Call, _: GwRequest) -> Result<GwResponse, GatewayError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            let mut resp = GwResponse::new(body::full(record("COMPLETED", None)));
            resp.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, no-store"),
            );
            Ok(resp)
        }
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let cache = SessionRecordCache::with_clock(&settings(), FakeRelativeClock::default());
    let mut svc = tower::Layer::layer(&SessionRecordCacheLayer::new(cache), NoStore(calls.clone()));
    for _ in 0..3 {
        assert_eq!(call(&mut svc, get(None)).await.unwrap().x_cache, "MISS");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn concurrent_misses_share_one_call_even_when_the_leader_hangs_up() {
    let mut script = Script::new(vec![Ok((200, record("COMPLETED", None)))]);
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    script.gate = Some(gate.clone());
    let (svc, _cache, _clock) = service(&script, settings());
    // The first request leads, then hangs up while Ratepay is still answering.
    let mut leader_svc = svc.clone();
    let leader =
        tokio::spawn(async move { call(&mut leader_svc, get(None)).await.map(|a| a.x_cache) });
    while script.calls() == 0 {
        tokio::task::yield_now().await;
    }
    leader.abort();
    let mut waiters = Vec::new();
    for _ in 0..100 {
        let mut s = svc.clone();
        waiters.push(tokio::spawn(async move {
            call(&mut s, get(None)).await.map(|a| (a.status, a.x_cache))
        }));
    }
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    gate.add_permits(1000);
    for w in waiters {
        let (status, x_cache) = w.await.unwrap().unwrap();
        assert_eq!(status, 200);
        assert!(x_cache == "MISS" || x_cache == "HIT", "{x_cache}");
    }
    assert_eq!(script.calls(), 1);
}

#[tokio::test]
async fn bytes_stay_within_capacity() {
    let body = record("COMPLETED", None) + &" ".repeat(900);
    let script = Script::new(vec![Ok((200, body))]);
    let (mut svc, cache, _clock) = service(
        &script,
        CacheSettings {
            max_bytes: 8 * 1024,
            ..settings()
        },
    );
    for i in 0..40 {
        let path = format!("/pps/api/v1/session-record/session{i:0>15}");
        let a = call(&mut svc, request(Method::GET, &path, None, &[]))
            .await
            .unwrap();
        assert_eq!(a.status, 200);
    }
    cache.run_pending_tasks().await;
    assert!(
        cache.weighted_size() <= 8 * 1024,
        "{} bytes",
        cache.weighted_size()
    );
    assert!(
        cache.entry_count() >= 4 && cache.entry_count() < 40,
        "{} entries",
        cache.entry_count()
    );
}

#[tokio::test]
async fn cancellation_invalidates_the_transactions_records_only() {
    let script = Script::new(vec![Ok((
        200,
        record("COMPLETED", Some("txAAAAAAAAAAAAAAAAAAA")),
    ))]);
    let (mut svc, cache, _clock) = service(&script, settings());
    call(&mut svc, get(None)).await.unwrap();
    assert_eq!(call(&mut svc, get(None)).await.unwrap().x_cache, "HIT");
    cache.invalidate_transaction("another-transaction-id");
    assert_eq!(call(&mut svc, get(None)).await.unwrap().x_cache, "HIT");

    // Through the layer: a failed cancellation keeps the entry, a 2xx one drops it.
    let cancel_path = "/transaction/management/v2/transactions/txAAAAAAAAAAAAAAAAAAA/cancellations";
    let outcome = Script::new(vec![Ok((422, "{}".into())), Ok((201, "{}".into()))]);
    let cancel = tower::Layer::layer(
        &InvalidateOnCancellationLayer::new(Some(cache.clone())),
        outcome,
    );
    let (cx, req) = request(Method::POST, cancel_path, None, &[]);
    let resp = cancel.handle(&cx, req).await.unwrap();
    assert_eq!(resp.status(), 422);
    assert_eq!(call(&mut svc, get(None)).await.unwrap().x_cache, "HIT");
    let (cx, req) = request(Method::POST, cancel_path, None, &[]);
    let resp = cancel.handle(&cx, req).await.unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(call(&mut svc, get(None)).await.unwrap().x_cache, "MISS");
    assert_eq!(script.calls(), 2);
}

#[tokio::test]
async fn other_operations_pass_through_untouched() {
    let script = Script::new(vec![Ok((200, "{}".into()))]);
    let (svc, _cache, _clock) = service(&script, settings());
    let path = "/transaction/management/v2/transactions/txAAAAAAAAAAAAAAAAAAA";
    for _ in 0..2 {
        let (cx, req) = request(Method::GET, path, None, &[]);
        let resp = svc.handle(&cx, req).await.unwrap();
        assert!(resp.headers().get(&X_CACHE).is_none());
    }
    assert_eq!(script.calls(), 2);
}
