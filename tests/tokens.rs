//! Ratepay tokens and gateway tokens, the README's promises each tested through the gateway
//! (over loopback, against the sandbox) or on a paused clock where only time is at stake:
//! several credential sets, one replay after a 401, gateway tokens signed with EdDSA and RS256,
//! the capped refresh backoff, and `token_fetch_failures_total`.

mod common;

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{
    config_text,
    custom::{replace_once, upstream_url_line},
    keys, problem, sandbox_config, Harness, Options, HPP_AUD, PAYMENT_AUD, SVC_SECRET, TX_PATH,
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ratepay_gateway::{
    config::Config,
    sandbox::{self, SandboxClient},
    token::{FetchError, FetchFuture, FetchToken, Fetched, TokenSource},
};
use reqwest::Method;
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio::time::Instant;

/// The second credential set's client, known only to the second sandbox.
const HPP_CLIENT: &str = "hpp-client";
const HPP_SECRET: &str = "hpp-client-secret-77d2";

#[tokio::test]
async fn each_upstream_gets_the_token_of_its_own_credential_set() {
    // Two token endpoints, each knowing one client and signing with its own key: a token from
    // the wrong set, or fetched with the wrong client, is refused by the API it is sent to.
    let hpp_sandbox = sandbox::spawn(sandbox::SandboxConfig {
        clients: vec![SandboxClient {
            client_id: HPP_CLIENT.into(),
            client_secret: HPP_SECRET.to_owned().into(),
        }],
        seed: Some(8),
        ..sandbox_config(Duration::from_secs(1800))
    })
    .await
    .unwrap();
    let b = hpp_sandbox.url();
    let h = Harness::edited(
        sandbox_config(Duration::from_secs(1800)),
        &Options::default(),
        |text, a, dir| {
            let secret = dir.join("hpp-secret");
            std::fs::write(&secret, HPP_SECRET).unwrap();
            let text = replace_once(
                &text,
                "[upstreams.payment]",
                &format!(
                    "[credentials.hpp]\ntoken_url = \"{b}/oauth/token\"\nclient_id = \
                     \"{HPP_CLIENT}\"\nclient_secret_file = \"{}\"\n\n[upstreams.payment]",
                    secret.display()
                ),
            );
            replace_once(
                &text,
                &upstream_url_line("hpp", a),
                &format!("{}\ncredentials = \"hpp\"", upstream_url_line("hpp", &b)),
            )
        },
    )
    .await;

    h.authorize(keys::FULL, None, 20.0).await;
    h.session(keys::FULL, None).await;

    let first = h.stats().await;
    assert_eq!(first["token_requests"], 1, "{first}");
    assert_eq!(
        first["tokens_issued_by_audience"],
        json!({ PAYMENT_AUD: 1 }),
        "the default set fetched the payment token only"
    );
    assert_eq!(first["requests_total"], 1);
    assert_eq!(first["requests"]["payment.transactions.create"], 1);
    let second = hpp_sandbox.stats();
    assert_eq!(second["token_requests"], 1, "{second}");
    assert_eq!(
        second["tokens_issued_by_audience"],
        json!({ HPP_AUD: 1 }),
        "the hpp set fetched the HPP token, with its own client id and secret"
    );
    assert_eq!(second["requests_total"], 1);
    assert_eq!(second["requests"]["hpp.sessions.create"], 1);
}

#[tokio::test]
async fn a_second_401_is_not_replayed_again() {
    let h = Harness::start().await;
    let tx = h.authorize(keys::FULL, None, 20.0).await;
    assert_eq!(h.stats().await["token_requests"], 1);
    h.fault(json!({"operation": "payment.transactions.get", "status": 401, "count": 2}))
        .await;
    let get = || {
        h.req(Method::GET, &format!("{TX_PATH}/{tx}"), keys::FULL)
            .send()
    };
    let r = get().await.unwrap();
    assert_eq!(r.status(), 401, "Ratepay's second 401 is the answer");
    assert_eq!(
        h.op_count("payment.transactions.get").await,
        2,
        "the call and one replay, never a second"
    );
    assert_eq!(h.stats().await["token_requests"], 2, "one refresh");
    assert_eq!(
        h.metric("token_fetches_total{upstream=\"payment\"}").await,
        Some(2.0)
    );
    // The refreshed token serves the next call without another fetch.
    let r = get().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(h.op_count("payment.transactions.get").await, 3);
    assert_eq!(h.stats().await["token_requests"], 2);
}

/// A gateway whose `[gateway_tokens]` signs with `algorithm` and the PEM pair `private`/`public`.
async fn with_gateway_tokens(algorithm: &str, private: &str, public: &str) -> Harness {
    Harness::edited(
        sandbox_config(Duration::from_secs(1800)),
        &Options::default(),
        |text, _, dir| {
            std::fs::write(dir.join("gw-private.pem"), private).unwrap();
            std::fs::write(dir.join("gw-public.pem"), public).unwrap();
            replace_once(
                &text,
                &format!(
                    "hs256_key_file = \"{}\"",
                    dir.join("jwt-key").display()
                ),
                &format!(
                    "algorithm = \"{algorithm}\"\nprivate_key_file = \"{}\"\npublic_key_file = \"{}\"",
                    dir.join("gw-private.pem").display(),
                    dir.join("gw-public.pem").display()
                ),
            )
        },
    )
    .await
}

/// Issues a gateway token for `svc`, verifies its signature with `public` alone, refuses it
/// with `other_public`, uses it as the caller's credential, and shows a token with the same
/// claims signed by `other_private` is refused by the gateway.
async fn gateway_token_round_trip(
    algorithm: Algorithm,
    name: &str,
    (private, public): (String, String),
    (other_private, other_public): (String, String),
    decoding: fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>,
    encoding: fn(&[u8]) -> jsonwebtoken::errors::Result<EncodingKey>,
) {
    ratepay_gateway::crypto::install_providers();
    let h = with_gateway_tokens(name, &private, &public).await;
    let r = h
        .http
        .post(h.url("/oauth/token"))
        .json(
            &json!({"client_id": "svc-client", "client_secret": SVC_SECRET,
                      "audience": PAYMENT_AUD, "grant_type": "client_credentials"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let token = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(jsonwebtoken::decode_header(&token).unwrap().alg, algorithm);

    let mut v = Validation::new(algorithm);
    v.set_audience(&[PAYMENT_AUD]);
    v.set_issuer(&["ratepay-gateway"]);
    v.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    let verified = jsonwebtoken::decode::<Value>(&token, &decoding(public.as_bytes()).unwrap(), &v)
        .expect("the signature verifies with the configured public key");
    let claims = verified.claims;
    assert_eq!(claims["sub"], "svc");
    assert_eq!(claims["aud"], PAYMENT_AUD);
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        300
    );
    let wrong =
        jsonwebtoken::decode::<Value>(&token, &decoding(other_public.as_bytes()).unwrap(), &v)
            .expect_err("another key pair's public key does not verify it");
    assert_eq!(
        *wrong.kind(),
        jsonwebtoken::errors::ErrorKind::InvalidSignature
    );

    let authorize = |bearer: String| {
        h.http
            .post(h.url(TX_PATH))
            .bearer_auth(bearer)
            .json(&common::authorize_body(20.0))
            .send()
    };
    let r = authorize(token).await.unwrap();
    assert_eq!(
        r.status(),
        201,
        "the gateway token is the caller's credential"
    );
    // The same claims signed with a key the gateway does not hold are refused before Ratepay.
    let forged = jsonwebtoken::encode(
        &Header::new(algorithm),
        &claims,
        &encoding(other_private.as_bytes()).unwrap(),
    )
    .unwrap();
    let r = authorize(forged).await.unwrap();
    problem(r, 401).await;
    assert_eq!(
        h.upstream_total().await,
        1,
        "only the genuine token reached Ratepay"
    );
}

fn ed25519_pair() -> (String, String) {
    let k = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    (k.serialize_pem(), k.public_key_pem())
}

fn rsa_pair() -> (String, String) {
    let k = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .unwrap();
    (k.serialize_pem(), k.public_key_pem())
}

#[tokio::test]
async fn gateway_tokens_signed_with_eddsa_verify_with_the_public_key_and_authenticate() {
    gateway_token_round_trip(
        Algorithm::EdDSA,
        "EdDSA",
        ed25519_pair(),
        ed25519_pair(),
        DecodingKey::from_ed_pem,
        EncodingKey::from_ed_pem,
    )
    .await;
}

#[tokio::test]
async fn gateway_tokens_signed_with_rs256_verify_with_the_public_key_and_authenticate() {
    gateway_token_round_trip(
        Algorithm::RS256,
        "RS256",
        rsa_pair(),
        rsa_pair(),
        DecodingKey::from_rsa_pem,
        EncodingKey::from_rsa_pem,
    )
    .await;
}

/// A token endpoint that grants the first fetch (a 100 s token) and fails every later one,
/// recording when each fetch started.
struct GrantsOnce {
    starts: Arc<Mutex<Vec<Instant>>>,
}

impl FetchToken for GrantsOnce {
    fn fetch(&self) -> FetchFuture {
        let mut starts = self.starts.lock().unwrap();
        starts.push(Instant::now());
        let first = starts.len() == 1;
        Box::pin(async move {
            if first {
                Ok(Fetched {
                    access_token: SecretString::from("granted-once".to_owned()),
                    expires_in: Duration::from_secs(100),
                })
            } else {
                Err(FetchError::Status(503))
            }
        })
    }
}

#[tokio::test(start_paused = true)]
async fn refresh_retries_back_off_exponentially_and_never_beyond_retry_max() {
    // The settings as the configuration file gives them.
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        tokens_toml: "retry_initial_ms = 200\nretry_max_ms = 1000".into(),
        ..Options::default()
    };
    let text = config_text(dir.path(), "http://127.0.0.1:9", &opts);
    let settings = Config::from_toml(&text, Path::new("t.toml"))
        .unwrap()
        .tokens;
    assert_eq!(settings.retry_max, Duration::from_millis(1000));

    let starts: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let source = TokenSource::new(
        PAYMENT_AUD.into(),
        Box::new(GrantsOnce {
            starts: starts.clone(),
        }),
        settings,
    );
    let t0 = Instant::now();
    assert_eq!(source.bearer().await.unwrap().generation, 1);
    // The 100 s token is refreshed 60 s (the margin) before expiry, at 40 s; that and every
    // retry fail. Run the clock to 98 s, where the token is still valid.
    tokio::time::sleep(Duration::from_secs(98)).await;
    assert_eq!(
        source.bearer().await.unwrap().generation,
        1,
        "the valid token keeps serving while the endpoint fails"
    );
    let starts = starts.lock().unwrap().clone();
    assert_eq!(starts[1] - t0, Duration::from_secs(40), "the refresh point");
    // Retry n waits min(200 ms * 2^(n-1), 1000 ms), scaled by a jitter in [0.5, 1].
    let gaps: Vec<Duration> = starts[1..].windows(2).map(|w| w[1] - w[0]).collect();
    let cap = Duration::from_millis(1000);
    for (n, gap) in gaps.iter().enumerate() {
        let backoff = Duration::from_millis(200 << n.min(3)).min(cap);
        assert!(
            *gap >= backoff / 2 && *gap <= backoff,
            "retry {}: waited {gap:?}, expected {:?} to {backoff:?}; first gaps: {:?}",
            n + 1,
            backoff / 2,
            &gaps[..gaps.len().min(8)]
        );
    }
    assert!(gaps.iter().all(|g| *g <= cap), "never beyond retry_max");
    // It kept retrying to the end: from 40 s to 98 s, 59 retries if every jitter were 1 (200,
    // 400, 800 ms, then 1 s each), 117 if every jitter were 0.5.
    assert!(
        (59..=117).contains(&gaps.len()),
        "{} retries in 58 s",
        gaps.len()
    );
    assert!(*starts.last().unwrap() - t0 >= Duration::from_secs(97));
    let stats = source.stats();
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(stats.fetches.load(Relaxed), 1);
    assert_eq!(stats.failures.load(Relaxed), gaps.len() as u64 + 1);
}

#[tokio::test]
async fn a_failing_token_endpoint_is_a_503_counted_in_token_fetch_failures_total() {
    let h = Harness::start().await;
    h.fault(json!({"operation": "oauth.token", "status": 503, "count": 1}))
        .await;
    let r = h
        .req(
            Method::GET,
            &format!("{TX_PATH}/abcdefghij0123456789"),
            keys::FULL,
        )
        .send()
        .await
        .unwrap();
    let body = problem(r, 503).await;
    assert!(body["type"]
        .as_str()
        .unwrap()
        .ends_with("token-unavailable"));
    assert_eq!(h.upstream_total().await, 0, "nothing went to Ratepay's API");
    let failures = "token_fetch_failures_total{upstream=\"payment\"}";
    let fetches = "token_fetches_total{upstream=\"payment\"}";
    assert_eq!(h.metric(failures).await, Some(1.0));
    assert_eq!(h.metric(fetches).await, Some(0.0));
    assert_eq!(
        h.metric("token_fetch_failures_total{upstream=\"hpp\"}")
            .await,
        Some(0.0),
        "counted for the upstream that failed only"
    );
    // The endpoint is back: the next request fetches once, and nothing else failed meanwhile.
    h.authorize(keys::FULL, None, 20.0).await;
    assert_eq!(h.metric(failures).await, Some(1.0));
    assert_eq!(h.metric(fetches).await, Some(1.0));
    assert_eq!(h.stats().await["token_requests"], 2);
}

/// The gateway's own token endpoint passes through the caller's rate limit: asking for tokens
/// spends the same budget as the caller's Ratepay calls, and a refusal is the usual 429 problem
/// naming the caller, issued before any token is signed.
#[tokio::test]
async fn the_token_endpoint_spends_the_callers_rate_limit() {
    let h = Harness::with(Options {
        extra_toml: "[rate_limits.callers.svc]\nrate_per_sec = 0.01\nburst = 3\n".into(),
        ..Options::default()
    })
    .await;
    let ask = || {
        h.http.post(h.url("/oauth/token")).json(&json!({
            "client_id": "svc-client",
            "client_secret": SVC_SECRET,
            "audience": HPP_AUD,
            "grant_type": "client_credentials",
        }))
    };
    let mut token = String::new();
    for i in 0..2 {
        let resp = ask().send().await.unwrap();
        assert_eq!(resp.status(), 200, "token request {i}");
        assert_eq!(resp.headers()["cache-control"], "no-store");
        token = resp.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
    }
    // The third unit of the budget goes to a Ratepay call with the issued token.
    let resp = h
        .http
        .get(h.url("/pps/api/v1/session-record/nosuchsession"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "forwarded within the budget");
    // Now both the token endpoint and the Ratepay path are over the caller's limit.
    let p = problem(ask().send().await.unwrap(), 429).await;
    assert!(
        p["detail"].as_str().unwrap().contains("caller 'svc'"),
        "{p}"
    );
    let resp = h
        .http
        .get(h.url("/pps/api/v1/session-record/nosuchsession"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(h.op_count("hpp.session_records.get").await, 1);
    // A wrong secret is refused before the budget: 401, not 429.
    let resp = h
        .http
        .post(h.url("/oauth/token"))
        .json(&json!({
            "client_id": "svc-client",
            "client_secret": "wrong",
            "audience": HPP_AUD,
            "grant_type": "client_credentials",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    h.stop().await;
}
