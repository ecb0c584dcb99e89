//! The session-record cache's header handling: Ratepay's `Age` and `Cache-Control` on the
//! answer, the caller's `Cache-Control` and `Pragma` on the request, and the age arithmetic
//! when an entry is served later, driven through `SessionRecordCacheService` on a fake clock.
//!
//! Invariants: never panics; every answer is Ratepay's 200 with one `X-Cache` and at most one
//! numeric `Age`, never less than the `Age` Ratepay sent (RFC 9111 section 5.1) and never
//! going down as the entry is served later; an answer Ratepay marked `no-store`, or a request
//! with `no-store`, is never served from memory.
#![no_main]

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use bytes::Bytes;
use governor::clock::FakeRelativeClock;
use http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use ratepay_gateway::{
    body,
    callers::Callers,
    config::{
        sha256, CacheSettings, CallerConfig, CallersConfig, OperationMatcher, PartnerPolicy,
    },
    context::{Authenticated, Call, Peer, RequestContext, RequestFacts},
    error::GatewayError,
    middleware::{
        cache::{SessionRecordCache, SessionRecordCacheLayer, X_CACHE},
        GwRequest, GwResponse, Handler,
    },
    routes,
};

const PATH: &str = "/pps/api/v1/session-record/sessionAAAAAAAAAAAAA";

/// Ratepay answering every call with the same headers.
struct Upstream {
    headers: Vec<(header::HeaderName, HeaderValue)>,
    terminal: bool,
}

impl Handler for Upstream {
    async fn handle(&self, _call: &Call, _req: GwRequest) -> Result<GwResponse, GatewayError> {
        let status = if self.terminal {
            "COMPLETED"
        } else {
            "CREATED"
        };
        let body = format!(
            r#"{{"session_id":"sessionAAAAAAAAAAAAA","session_status":"{status}","transaction_id":"tx1"}}"#
        );
        let mut resp = GwResponse::new(body::full(body));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for (k, v) in &self.headers {
            resp.headers_mut().append(k.clone(), v.clone());
        }
        Ok(resp)
    }
}

fn authenticated() -> Authenticated {
    static C: OnceLock<Callers> = OnceLock::new();
    let callers = C.get_or_init(|| {
        Callers::new(&CallersConfig {
            callers: vec![CallerConfig {
                name: "svc".into(),
                api_key_sha256: Some(sha256(b"k")),
                client: None,
                operations: OperationMatcher::all(),
                partner: PartnerPolicy::None,
                client_cert: vec![],
            }],
            issuer: None,
            audiences: vec![],
        })
        .unwrap()
    });
    let mut h = HeaderMap::new();
    h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer k"));
    Authenticated {
        caller: callers.authenticate(&h, "aud").unwrap(),
        partner: None,
    }
}

/// A routed session-record read with `headers`, and its call from caller `svc`.
fn request(headers: &[(header::HeaderName, HeaderValue)]) -> (Call, GwRequest) {
    let route = routes::match_route(&Method::GET, PATH).unwrap().unwrap();
    let mut req = Request::builder()
        .method(Method::GET)
        .uri(PATH)
        .body(Bytes::new())
        .unwrap();
    for (k, v) in headers {
        req.headers_mut().append(k.clone(), v.clone());
    }
    let ctx = RequestContext::new(RequestFacts {
        request_id: Arc::from("fuzz"),
        route,
        peer: Peer::plain("127.0.0.1:1".parse().unwrap()),
        received: std::time::Instant::now(),
        deadline: std::time::Instant::now() + std::time::Duration::from_secs(60),
        stats: Arc::default(),
    });
    let call = Call {
        ctx,
        auth: authenticated(),
    };
    (call, req)
}

/// Splits the input into header values at `\n` (at most `n`), dropping bytes no header takes.
fn values(data: &[u8], n: usize) -> Vec<Option<HeaderValue>> {
    let mut parts = data.splitn(n, |b| *b == b'\n');
    (0..n)
        .map(|_| {
            parts
                .next()
                .and_then(|p| HeaderValue::from_bytes(p).ok())
                .filter(|v| !v.is_empty())
        })
        .collect()
}

fn has(
    headers: &[(header::HeaderName, HeaderValue)],
    name: &header::HeaderName,
    token: &str,
) -> bool {
    headers
        .iter()
        .filter(|(k, _)| k == name)
        .filter_map(|(_, v)| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case(token))
}

struct Seen {
    x_cache: String,
    age: Option<u64>,
}

fn seen(resp: &GwResponse) -> Seen {
    assert_eq!(resp.status(), StatusCode::OK);
    let x: Vec<_> = resp.headers().get_all(&X_CACHE).iter().collect();
    assert_eq!(x.len(), 1, "X-Cache: {x:?}");
    let ages: Vec<_> = resp.headers().get_all(header::AGE).iter().collect();
    assert!(ages.len() <= 1, "several Age headers: {ages:?}");
    let age = ages.first().map(|v| {
        v.to_str()
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("Age is not a number: {v:?}"))
    });
    Seen {
        x_cache: x[0].to_str().unwrap().to_owned(),
        age,
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&[flags, t0, t1, t2], rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let v = values(rest, 5);
    let mut upstream_headers = Vec::new();
    if let Some(age) = &v[0] {
        upstream_headers.push((header::AGE, age.clone()));
    }
    if let Some(cc) = &v[1] {
        upstream_headers.push((header::CACHE_CONTROL, cc.clone()));
    }
    let mut second = Vec::new();
    if let Some(cc) = &v[2] {
        second.push((header::CACHE_CONTROL, cc.clone()));
    }
    if let Some(p) = &v[3] {
        second.push((header::PRAGMA, p.clone()));
    }
    let mut first = Vec::new();
    if flags & 2 != 0 {
        if let Some(cc) = &v[4] {
            first.push((header::CACHE_CONTROL, cc.clone()));
        }
    }
    let later = Duration::from_secs(u64::from_le_bytes([t0, t1, t2, 0, 0, 0, 0, 0]));
    let upstream_age = v[0]
        .as_ref()
        .filter(|a| a.as_bytes().iter().all(u8::is_ascii_digit))
        .and_then(|a| a.to_str().ok()?.parse::<u64>().ok());
    let ratepay_no_store = has(&upstream_headers, &header::CACHE_CONTROL, "no-store");
    let caller_no_store = has(&second, &header::CACHE_CONTROL, "no-store");

    let clock = FakeRelativeClock::default();
    let cache = SessionRecordCache::with_clock(&CacheSettings::default(), clock.clone());
    let svc = tower::Layer::layer(
        &SessionRecordCacheLayer::new(cache),
        Upstream {
            headers: upstream_headers,
            terminal: flags & 1 != 0,
        },
    );
    runtime().block_on(async {
        let (call, req) = request(&first);
        let a = svc.handle(&call, req).await.expect("first answer");
        let a_seen = seen(&a);
        let _ = a.into_body().collect().await.unwrap();
        clock.advance(later);
        let (call, req) = request(&second);
        let b = svc.handle(&call, req).await.expect("second answer");
        let b_seen = seen(&b);
        let _ = b.into_body().collect().await.unwrap();
        if ratepay_no_store || caller_no_store {
            assert_ne!(b_seen.x_cache, "HIT", "served from memory despite no-store");
        }
        // RFC 9111 section 5.1: a cache adds its own holding time to the Age it received (an
        // overflowing value may be taken as 2^31).
        for s in [&a_seen, &b_seen] {
            if let (Some(sent), Some(served)) = (upstream_age, s.age) {
                assert!(
                    served >= sent.min(1 << 31),
                    "Ratepay's Age {sent} served as {served}"
                );
            }
        }
        if b_seen.x_cache == "HIT" {
            let (a_age, b_age) = (
                a_seen.age.expect("a stored answer has an Age"),
                b_seen.age.expect("a hit has an Age"),
            );
            assert!(b_age >= a_age, "Age went down: {a_age} then {b_age}");
        }
    });
});
