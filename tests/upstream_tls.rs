//! TLS from the gateway toward Ratepay, end to end over loopback: the sandbox serves HTTPS with
//! a test PKI made by rcgen, and the gateway trusts the test CA through
//! `upstream_client.ca_file`.
//!
//! Proves: a certificate from that CA is accepted (payment and HPP calls succeed); an untrusted,
//! expired or wrong-host certificate is refused with 502 `upstream-unreachable` naming the
//! reason while nothing (no request, so no bearer token) reaches the sandbox; HTTP/2 is used by
//! ALPN for every kind of operation, HTTP/1.1 when only that is offered; a bad certificate on
//! the token endpoint gives 503 `token-unavailable` and no token is issued.

mod common;

use std::{path::Path, sync::Arc, time::Duration};

use common::{authorize_body, keys, problem, Harness, Options, TX_PATH};
use ratepay_gateway::{
    config::Config,
    sandbox::{self, SandboxHandle},
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use reqwest::Method;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// What is wrong with a server certificate, if anything.
#[derive(Clone, Copy)]
enum Flaw {
    None,
    Expired,
    WrongHost,
}

/// A server certificate for `127.0.0.1` (the sandbox's URL) signed by `ca`.
fn server_cert(
    ca: &CertifiedIssuer<'static, KeyPair>,
    flaw: Flaw,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "sandbox");
    params.subject_alt_names = match flaw {
        Flaw::WrongHost => vec![SanType::DnsName("elsewhere.example".try_into().unwrap())],
        _ => vec![SanType::IpAddress("127.0.0.1".parse().unwrap())],
    };
    if let Flaw::Expired = flaw {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    (
        vec![cert.der().clone()],
        PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
    )
}

/// The protocols the TLS sandbox offers by ALPN.
const H2_AND_H1: &[&[u8]] = &[b"h2", b"http/1.1"];
const H1_ONLY: &[&[u8]] = &[b"http/1.1"];

/// A sandbox serving HTTPS with a certificate from `ca` (with `flaw`), offering `alpn`.
async fn tls_sandbox(
    ca: &CertifiedIssuer<'static, KeyPair>,
    flaw: Flaw,
    alpn: &[&[u8]],
) -> SandboxHandle {
    ratepay_gateway::crypto::install_providers();
    let (chain, key) = server_cert(ca, flaw);
    let mut tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    sandbox::spawn_tls(
        common::sandbox_config(Duration::from_secs(1800)),
        Arc::new(tls),
    )
    .await
    .unwrap()
}

/// A gateway whose upstreams are `upstream`, whose token endpoint is `token` (the upstream
/// itself when `None`), trusting `trusted` by `upstream_client.ca_file`.
async fn gateway(
    upstream: SandboxHandle,
    token: Option<&SandboxHandle>,
    trusted: &CertifiedIssuer<'static, KeyPair>,
) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("upstream-ca.pem");
    std::fs::write(&ca_file, trusted.pem()).unwrap();
    let up = upstream.url();
    let mut text = common::config_text(dir.path(), &up, &Options::default()).replace(
        "[upstream_client]\n",
        &format!("[upstream_client]\nca_file = \"{}\"\n", ca_file.display()),
    );
    if let Some(t) = token {
        text = text.replace(
            &format!("token_url = \"{up}/oauth/token\""),
            &format!("token_url = \"{}/oauth/token\"", t.url()),
        );
    }
    assert!(text.contains("ca_file = "), "ca_file set");
    let config = Config::from_toml(&text, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}"));
    Harness::serve(upstream, dir, config).await
}

fn count(stats: &Value, key: &str) -> u64 {
    stats[key].as_u64().unwrap_or(0)
}

/// Runs one call of every kind through the gateway: creating POST, GET, PATCH, keyed POST
/// (cancellation), HPP session create and session record GET. Each must succeed.
async fn every_operation(h: &Harness) {
    let tx = h.authorize(keys::FULL, None, 100.0).await;
    let r = h
        .req(Method::GET, &format!("{TX_PATH}/{tx}"), keys::FULL)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let later = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap()
        + time::Duration::days(30);
    let later = later
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let r = h
        .req(Method::PATCH, &format!("{TX_PATH}/{tx}"), keys::FULL)
        .json(&json!({ "authorization_expires": later }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let r = h
        .req(
            Method::POST,
            &format!("{TX_PATH}/{tx}/cancellations"),
            keys::FULL,
        )
        .header("idempotency-key", "tls-cancel-0001")
        .json(&json!({"gross_amount": 10.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let sid = h.session(keys::FULL, None).await;
    let r = h
        .req(
            Method::GET,
            &format!("/pps/api/v1/session-record/{sid}"),
            keys::FULL,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

/// The six calls [`every_operation`] makes, by operation name.
const OPERATIONS: &[&str] = &[
    "payment.transactions.create",
    "payment.transactions.get",
    "payment.transactions.update",
    "payment.cancellations.create",
    "hpp.sessions.create",
    "hpp.session_records.get",
];

fn assert_every_operation_over(stats: &Value, version: &str) {
    for op in OPERATIONS {
        assert_eq!(
            stats["requests"][op], 1,
            "{op} reached the sandbox: {stats}"
        );
    }
    assert_eq!(count(stats, "requests_total"), OPERATIONS.len() as u64);
    assert_eq!(
        stats["requests_by_version"],
        json!({ version: OPERATIONS.len() }),
        "every call over {version}: {stats}"
    );
}

#[tokio::test]
async fn a_certificate_from_the_configured_ca_is_accepted_and_h2_is_used_for_every_operation() {
    let ca = new_ca("upstream test CA");
    let h = gateway(tls_sandbox(&ca, Flaw::None, H2_AND_H1).await, None, &ca).await;
    every_operation(&h).await;
    let stats = h.sandbox.stats();
    assert_every_operation_over(&stats, "HTTP/2");
    assert!(count(&stats, "tokens_issued") >= 1, "{stats}");
}

#[tokio::test]
async fn http1_is_used_when_the_upstream_offers_only_http1() {
    let ca = new_ca("upstream test CA");
    let h = gateway(tls_sandbox(&ca, Flaw::None, H1_ONLY).await, None, &ca).await;
    every_operation(&h).await;
    assert_every_operation_over(&h.sandbox.stats(), "HTTP/1.1");
}

/// The token comes from a good TLS sandbox; the upstream's certificate has `flaw` (or is from
/// a CA the gateway does not trust). Each call is refused with 502 naming `reason`, and the bad
/// upstream sees no request at all, so the bearer token was never sent over that connection.
async fn refused_upstream(flaw: Flaw, trusted_ca: bool, reason: &str) {
    let ca = new_ca("upstream test CA");
    let stranger = new_ca("some other CA");
    let tokens = tls_sandbox(&ca, Flaw::None, H2_AND_H1).await;
    let signer = if trusted_ca { &ca } else { &stranger };
    let h = gateway(
        tls_sandbox(signer, flaw, H2_AND_H1).await,
        Some(&tokens),
        &ca,
    )
    .await;

    let calls = [
        h.req(
            Method::GET,
            &format!("{TX_PATH}/abcdefghij0123456789"),
            keys::FULL,
        ),
        h.req(Method::POST, TX_PATH, keys::FULL)
            .json(&authorize_body(10.0)),
        h.req(
            Method::GET,
            "/pps/api/v1/session-record/abcdefghij0123456789",
            keys::FULL,
        ),
    ];
    for call in calls {
        let body = problem(call.send().await.unwrap(), 502).await;
        assert!(
            body["type"]
                .as_str()
                .unwrap()
                .ends_with("upstream-unreachable"),
            "{body}"
        );
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains("invalid peer certificate"), "{detail}");
        assert!(detail.contains(reason), "{detail}");
    }
    let bad = h.sandbox.stats();
    assert_eq!(count(&bad, "requests_total"), 0, "{bad}");
    assert_eq!(count(&bad, "token_requests"), 0, "{bad}");
    // The token was fetched from the good endpoint: the refusal is the upstream's certificate.
    assert!(count(&tokens.stats(), "tokens_issued") >= 1);
}

#[tokio::test]
async fn an_untrusted_ca_is_refused_and_nothing_reaches_the_upstream() {
    refused_upstream(Flaw::None, false, "UnknownIssuer").await;
}

#[tokio::test]
async fn an_expired_certificate_is_refused_and_nothing_reaches_the_upstream() {
    refused_upstream(Flaw::Expired, true, "certificate expired").await;
}

#[tokio::test]
async fn a_wrong_host_certificate_is_refused_and_nothing_reaches_the_upstream() {
    refused_upstream(Flaw::WrongHost, true, "certificate not valid for name").await;
}

/// The upstream is a good TLS sandbox; the token endpoint's certificate has `flaw`. The call
/// gets 503 `token-unavailable` naming `reason`; no token is issued and nothing is forwarded.
async fn refused_token_endpoint(flaw: Flaw, trusted_ca: bool, reason: &str) {
    let ca = new_ca("upstream test CA");
    let stranger = new_ca("some other CA");
    let signer = if trusted_ca { &ca } else { &stranger };
    let tokens = tls_sandbox(signer, flaw, H2_AND_H1).await;
    let h = gateway(
        tls_sandbox(&ca, Flaw::None, H2_AND_H1).await,
        Some(&tokens),
        &ca,
    )
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
    assert!(
        body["type"]
            .as_str()
            .unwrap()
            .ends_with("token-unavailable"),
        "{body}"
    );
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains(reason), "{detail}");
    let t = tokens.stats();
    assert_eq!(count(&t, "token_requests"), 0, "{t}");
    assert_eq!(count(&t, "tokens_issued"), 0, "{t}");
    assert_eq!(count(&h.sandbox.stats(), "requests_total"), 0);
}

#[tokio::test]
async fn a_token_endpoint_with_an_untrusted_ca_gives_no_token() {
    refused_token_endpoint(Flaw::None, false, "UnknownIssuer").await;
}

#[tokio::test]
async fn a_token_endpoint_with_an_expired_certificate_gives_no_token() {
    refused_token_endpoint(Flaw::Expired, true, "certificate expired").await;
}

#[tokio::test]
async fn a_token_endpoint_with_a_wrong_host_certificate_gives_no_token() {
    refused_token_endpoint(Flaw::WrongHost, true, "certificate not valid for name").await;
}
