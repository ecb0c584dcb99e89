//! End to end over loopback with TLS on the proxy listener: plain TLS with API keys, mTLS callers
//! identified by their certificate's SPIFFE ID or DNS SAN, refusals at the handshake, the rule
//! when a certificate and an Authorization header both speak, and `[listen.tls]` config errors.
//!
//! Certificates are made at test time with rcgen: a test CA, a server certificate for
//! `localhost`, client certificates with a SPIFFE URI SAN or a DNS SAN, and one from another CA.
//! The client is hyper over tokio-rustls, so a TLS failure and an HTTP answer are told apart.

mod common;

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use common::{authorize_body, keys, LogBuffer, Options, TX_PATH};
use http::{HeaderMap, Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use ratepay_gateway::{
    config::Config,
    gateway::Gateway,
    sandbox::{self, SandboxHandle},
    server::{self, Listener},
    tls::ServerTls,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::Value;
use tokio::{io::AsyncReadExt, net::TcpStream, sync::oneshot, task::JoinHandle};

const CHECKOUT_SPIFFE: &str = "spiffe://example.org/ns/payments/sa/checkout";
const INVENTORY_DNS: &str = "inventory.internal";
const CHECKOUT_KEY: &str = "checkout-key-0005";

/// `[callers]` for the mTLS tests: `checkout` by SPIFFE ID (and an API key of its own),
/// `inventory` by DNS SAN only.
fn mtls_callers() -> String {
    format!(
        r#"
[callers.checkout]
client_cert = ["{CHECKOUT_SPIFFE}"]
api_key_sha256 = "{checkout_key}"
operations = ["payment.transactions.*", "payment.cancellations.*"]
partner = "p-cert"

[callers.inventory]
client_cert = ["dns:{INVENTORY_DNS}"]
operations = ["payment.*"]
partner = "p-dns"
"#,
        checkout_key = hex::encode(ratepay_gateway::config::sha256(CHECKOUT_KEY.as_bytes()))
    )
}

// ---------------------------------------------------------------------------------------------
// Certificates

/// A certificate and its key, in PEM (for the gateway's files) and DER (for the test client).
struct Leaf {
    cert_pem: String,
    key_pem: String,
    cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Leaf {
    fn chain_and_key(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (
            vec![self.cert_der.clone()],
            PrivatePkcs8KeyDer::from(self.key_der.clone()).into(),
        )
    }
}

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

fn leaf(issuer: &CertifiedIssuer<'static, KeyPair>, sans: Vec<SanType>, server: bool) -> Leaf {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "test leaf");
    params.subject_alt_names = sans;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().clone(),
        key_der: key.serialize_der(),
    }
}

fn spiffe(id: &str) -> SanType {
    SanType::URI(id.try_into().unwrap())
}

fn dns(name: &str) -> SanType {
    SanType::DnsName(name.try_into().unwrap())
}

/// The test PKI: one trusted CA with a server and client certificates, and a stranger CA.
struct Pki {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    server: Leaf,
    checkout: Leaf,
    inventory: Leaf,
    /// Trusted CA, identities no caller has.
    unmapped: Leaf,
    /// checkout's SPIFFE ID, but signed by a CA the gateway does not trust.
    foreign: Leaf,
}

fn pki() -> Pki {
    ratepay_gateway::crypto::install_providers();
    let ca = new_ca("ratepay-gateway test CA");
    let other = new_ca("some other CA");
    Pki {
        ca_pem: ca.pem(),
        ca_der: ca.der().clone(),
        server: leaf(&ca, vec![dns("localhost")], true),
        checkout: leaf(&ca, vec![spiffe(CHECKOUT_SPIFFE)], false),
        inventory: leaf(&ca, vec![dns(INVENTORY_DNS)], false),
        unmapped: leaf(
            &ca,
            vec![
                spiffe("spiffe://example.org/ns/payments/sa/stranger"),
                dns("stranger.internal"),
            ],
            false,
        ),
        foreign: leaf(&other, vec![spiffe(CHECKOUT_SPIFFE)], false),
    }
}

/// Writes the PKI's PEM files into `dir` (`server.pem`, `server-key.pem`, `ca.pem`); returns
/// the `[listen.tls]` lines naming the server's certificate and key.
fn write_pki(dir: &Path, pki: &Pki) -> String {
    let path = |name: &str, content: &str| {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        p.display().to_string()
    };
    path("ca.pem", &pki.ca_pem);
    format!(
        "cert_file = \"{}\"\nkey_file = \"{}\"\n",
        path("server.pem", &pki.server.cert_pem),
        path("server-key.pem", &pki.server.key_pem),
    )
}

// ---------------------------------------------------------------------------------------------
// The gateway with TLS

struct TlsGateway {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    _sandbox: SandboxHandle,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl TlsGateway {
    /// Sandbox + gateway whose proxy listener serves TLS. `tls` holds extra `[listen.tls]`
    /// lines (`client_ca` is replaced by the CA file's path); `extra` more sections.
    async fn start(pki: &Pki, tls: &str, extra: &str) -> TlsGateway {
        let sandbox = sandbox::spawn(common::sandbox_config(Duration::from_secs(1800)))
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let files = write_pki(dir.path(), pki);
        let ca_file = dir.path().join("ca.pem").display().to_string();
        let opts = Options {
            extra_toml: format!(
                "[listen.tls]\n{files}{}\n{extra}",
                tls.replace("client_ca", &format!("client_ca_file = \"{ca_file}\""))
            ),
            ..Options::default()
        };
        let text = common::config_text(dir.path(), &sandbox.url(), &opts);
        let config =
            Config::from_toml(&text, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}"));
        let settings = config
            .listen
            .tls
            .clone()
            .expect("[listen.tls] is configured");
        let gateway = Gateway::build(&config).await.unwrap();
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            server::run(
                Listener::tls(tcp, ServerTls::new(&settings)),
                None,
                gateway.clone(),
                Duration::from_secs(5),
                async {
                    let _ = rx.await;
                },
            )
            .await;
            gateway.shutdown().await;
        });
        TlsGateway {
            addr,
            dir,
            _sandbox: sandbox,
            stop: Some(tx),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }

    fn audit_records(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The client: hyper over tokio-rustls, HTTP/1.1 or h2 as ALPN decides

/// A TLS client trusting the test CA, presenting `cert` when given, offering `alpn`.
fn client(pki: &Pki, cert: Option<&Leaf>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match cert {
        Some(leaf) => {
            let (chain, key) = leaf.chain_and_key();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

struct Answer {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// Asserts a problem+json answer with `status` and `type` ending in `slug`; returns its body.
    fn problem(&self, status: u16, slug: &str) -> Value {
        let body = self.json();
        assert_eq!(self.status.as_u16(), status, "{body}");
        assert_eq!(
            self.headers["content-type"], "application/problem+json",
            "{body}"
        );
        assert_eq!(
            body["type"],
            format!("https://ratepay-gateway.dev/problems/{slug}"),
            "{body}"
        );
        body
    }
}

/// The error and every source below it, so an assertion can look for the TLS alert.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(" / ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// Connects, handshakes, sends one request. `Err` holds the failure's whole chain; an `Ok` is
/// an HTTP answer from the gateway.
async fn send(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Result<Answer, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| chain(&e))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {}", chain(&e)))?;
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let mut rb = Request::builder().method(method);
    rb = if h2 {
        rb.uri(format!("https://localhost{path}"))
    } else {
        rb.uri(path).header("host", "localhost")
    };
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let req = match body {
        Some(b) => rb
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(serde_json::to_vec(&b).unwrap()))),
        None => rb.body(Full::new(Bytes::new())),
    }
    .unwrap();
    let io = TokioIo::new(stream);
    let resp = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| chain(&e))?;
        tokio::spawn(conn);
        sender.send_request(req).await
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| chain(&e))?;
        tokio::spawn(conn);
        sender.send_request(req).await
    }
    .map_err(|e| chain(&e))?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| chain(&e))?.to_bytes();
    Ok(Answer {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    })
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// Authorizes a transaction; returns the answer.
async fn authorize(
    gw: &TlsGateway,
    tls: &Arc<rustls::ClientConfig>,
    headers: &[(&str, &str)],
) -> Result<Answer, String> {
    authorize_at(gw.addr, tls, headers).await
}

async fn authorize_at(
    addr: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    headers: &[(&str, &str)],
) -> Result<Answer, String> {
    send(
        addr,
        tls.clone(),
        Method::POST,
        TX_PATH,
        headers,
        Some(authorize_body(100.0)),
    )
    .await
}

/// Authorizes and cancels part of it with the same credentials; asserts both succeed and returns
/// the audit intent of the cancellation (it names the caller and the X-Partner sent).
async fn authorize_and_cancel(
    gw: &TlsGateway,
    tls: &Arc<rustls::ClientConfig>,
    headers: &[(&str, &str)],
) -> Value {
    let a = authorize(gw, tls, headers).await.unwrap();
    assert_eq!(a.status, 201, "authorize: {}", a.json());
    let tx = a.json()["ratepay_transaction_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let c = send(
        gw.addr,
        tls.clone(),
        Method::POST,
        &format!("{TX_PATH}/{tx}/cancellations"),
        headers,
        Some(serde_json::json!({"gross_amount": 1})),
    )
    .await
    .unwrap();
    assert_eq!(c.status, 201, "cancel: {}", c.json());
    gw.audit_records()
        .into_iter()
        .find(|r| r["kind"] == "intent" && r["ratepay_transaction_id"] == tx.as_str())
        .expect("an audit intent for the cancellation")
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn tls_listener_serves_api_key_callers_over_http1_and_h2() {
    let pki = pki();
    let gw = TlsGateway::start(&pki, "", "").await;
    let auth = bearer(keys::FULL);

    let h1 = client(&pki, None, &[b"http/1.1"]);
    let a = authorize(&gw, &h1, &[("authorization", &auth)])
        .await
        .unwrap();
    assert_eq!(a.status, 201, "{}", a.json());
    assert_eq!(a.version, Version::HTTP_11);
    let tx = a.json()["ratepay_transaction_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // ALPN offers h2 first; the gateway takes it.
    let h2 = client(&pki, None, &[b"h2", b"http/1.1"]);
    let g = send(
        gw.addr,
        h2,
        Method::GET,
        &format!("{TX_PATH}/{tx}"),
        &[("authorization", &auth)],
        None,
    )
    .await
    .unwrap();
    assert_eq!(g.status, 200, "{}", g.json());
    assert_eq!(g.version, Version::HTTP_2);

    // Without mTLS, no credential is still 401 and a certificate is not even asked for.
    let none = send(
        gw.addr,
        h1.clone(),
        Method::GET,
        &format!("{TX_PATH}/{tx}"),
        &[],
        None,
    )
    .await
    .unwrap();
    none.problem(401, "unauthenticated");

    // The listener speaks only TLS: plain HTTP gets no HTTP answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{}{TX_PATH}/{tx}", gw.addr))
        .bearer_auth(keys::FULL)
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");
    gw.stop().await;
}

#[tokio::test]
async fn mtls_caller_is_identified_from_its_spiffe_certificate() {
    let pki = pki();
    let gw = TlsGateway::start(&pki, "client_ca", &mtls_callers()).await;
    let tls = client(&pki, Some(&pki.checkout), &[b"h2", b"http/1.1"]);

    // No Authorization header: the certificate alone names the caller, whose policy and
    // fixed X-Partner apply.
    let intent = authorize_and_cancel(&gw, &tls, &[]).await;
    assert_eq!(intent["caller"], "checkout", "{intent}");
    assert_eq!(intent["partner"], "p-cert", "{intent}");

    let forbidden = send(
        gw.addr,
        tls.clone(),
        Method::GET,
        "/pps/api/v1/session-record/abc",
        &[],
        None,
    )
    .await
    .unwrap();
    let body = forbidden.problem(403, "operation-forbidden");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("caller 'checkout'"),
        "{body}"
    );
    let other_partner = authorize(&gw, &tls, &[("x-partner", "p-fixed")])
        .await
        .unwrap();
    other_partner.problem(403, "partner-forbidden");

    // Its own API key alongside the certificate is the same caller: allowed.
    let key = bearer(CHECKOUT_KEY);
    let both = authorize(&gw, &tls, &[("authorization", &key)])
        .await
        .unwrap();
    assert_eq!(both.status, 201, "{}", both.json());
    gw.stop().await;
}

#[tokio::test]
async fn mtls_caller_is_identified_from_its_dns_san_certificate() {
    let pki = pki();
    let gw = TlsGateway::start(&pki, "client_ca", &mtls_callers()).await;
    let tls = client(&pki, Some(&pki.inventory), &[b"http/1.1"]);
    let intent = authorize_and_cancel(&gw, &tls, &[]).await;
    assert_eq!(intent["caller"], "inventory", "{intent}");
    assert_eq!(intent["partner"], "p-dns", "{intent}");
    gw.stop().await;
}

#[tokio::test]
async fn certificate_from_an_unknown_ca_is_refused_at_the_handshake() {
    let pki = pki();
    let gw = TlsGateway::start(&pki, "client_ca", &mtls_callers()).await;
    // The foreign certificate even carries checkout's SPIFFE ID: the CA decides, not the name.
    let tls = client(&pki, Some(&pki.foreign), &[b"http/1.1"]);
    let err = authorize(&gw, &tls, &[])
        .await
        .err()
        .expect("no HTTP answer");
    assert!(err.contains("UnknownCA"), "{err}");
    // An API key does not help either: the connection never gets to HTTP.
    let auth = bearer(keys::FULL);
    let err = authorize(&gw, &tls, &[("authorization", &auth)])
        .await
        .err()
        .expect("no HTTP answer");
    assert!(err.contains("UnknownCA"), "{err}");
    // The same request with checkout's real certificate is served, so the refusal above is
    // about the CA.
    let tls = client(&pki, Some(&pki.checkout), &[b"http/1.1"]);
    assert_eq!(authorize(&gw, &tls, &[]).await.unwrap().status, 201);
    gw.stop().await;
}

#[tokio::test]
async fn no_certificate_is_refused_at_the_handshake_when_client_auth_is_required() {
    let pki = pki();
    let gw = TlsGateway::start(
        &pki,
        "client_ca\nclient_auth = \"required\"",
        &mtls_callers(),
    )
    .await;
    let tls = client(&pki, None, &[b"http/1.1"]);
    let auth = bearer(keys::FULL);
    let err = authorize(&gw, &tls, &[("authorization", &auth)])
        .await
        .err()
        .expect("no HTTP answer");
    assert!(err.contains("CertificateRequired"), "{err}");
    gw.stop().await;
}

#[tokio::test]
async fn with_client_auth_optional_api_keys_work_without_a_certificate() {
    let pki = pki();
    let gw = TlsGateway::start(
        &pki,
        "client_ca\nclient_auth = \"optional\"",
        &mtls_callers(),
    )
    .await;
    let no_cert = client(&pki, None, &[b"http/1.1"]);
    let auth = bearer(keys::FULL);
    let intent = authorize_and_cancel(&gw, &no_cert, &[("authorization", &auth)]).await;
    assert_eq!(intent["caller"], "full", "{intent}");

    let nothing = authorize(&gw, &no_cert, &[]).await.unwrap();
    nothing.problem(401, "unauthenticated");

    // Certificate callers still work on the same listener.
    let cert = client(&pki, Some(&pki.checkout), &[b"http/1.1"]);
    let intent = authorize_and_cancel(&gw, &cert, &[]).await;
    assert_eq!(intent["caller"], "checkout", "{intent}");

    // A presented certificate must still come from the trusted CA.
    let foreign = client(&pki, Some(&pki.foreign), &[b"http/1.1"]);
    let err = authorize(&gw, &foreign, &[("authorization", &auth)])
        .await
        .err()
        .expect("no HTTP answer");
    assert!(err.contains("UnknownCA"), "{err}");
    gw.stop().await;
}

#[tokio::test]
async fn a_certificate_no_caller_maps_to_gets_401_naming_its_identities() {
    let pki = pki();
    let gw = TlsGateway::start(&pki, "client_ca", &mtls_callers()).await;
    let tls = client(&pki, Some(&pki.unmapped), &[b"http/1.1"]);
    let r = authorize(&gw, &tls, &[]).await.unwrap();
    let body = r.problem(401, "unknown-client-certificate");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("spiffe://example.org/ns/payments/sa/stranger")
            && detail.contains("dns:stranger.internal"),
        "{detail}"
    );
    assert!(r.headers.contains_key("www-authenticate"));

    // With an API key as well, the key decides (the certificate only proved a trusted CA).
    let auth = bearer(keys::FULL);
    let intent = authorize_and_cancel(&gw, &tls, &[("authorization", &auth)]).await;
    assert_eq!(intent["caller"], "full", "{intent}");
    gw.stop().await;
}

#[tokio::test]
async fn a_certificate_and_an_api_key_of_different_callers_conflict() {
    let pki = pki();
    let gw = TlsGateway::start(&pki, "client_ca", &mtls_callers()).await;
    let tls = client(&pki, Some(&pki.checkout), &[b"http/1.1"]);
    let auth = bearer(keys::FULL);
    let r = authorize(&gw, &tls, &[("authorization", &auth)])
        .await
        .unwrap();
    let body = r.problem(401, "credential-conflict");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("'checkout'") && detail.contains("'full'"),
        "{detail}"
    );
    // A wrong key with a good certificate is not quietly ignored either.
    let wrong = bearer("no-such-key");
    let r = authorize(&gw, &tls, &[("authorization", &wrong)])
        .await
        .unwrap();
    r.problem(401, "unauthenticated");
    gw.stop().await;
}

#[tokio::test]
async fn a_stalled_handshake_does_not_block_the_accept_loop() {
    let pki = pki();
    // A deadline far beyond the test's patience: only a handshake off the accept loop lets the
    // second caller in while the first stalls.
    let gw = TlsGateway::start(&pki, "handshake_timeout_ms = 60000", "").await;
    // Connects and never sends a ClientHello.
    let _stalled = TcpStream::connect(gw.addr).await.unwrap();
    let tls = client(&pki, None, &[b"http/1.1"]);
    let auth = bearer(keys::FULL);
    let a = tokio::time::timeout(
        Duration::from_secs(10),
        authorize(&gw, &tls, &[("authorization", &auth)]),
    )
    .await
    .expect("served while another connection stalls in its handshake")
    .unwrap();
    assert_eq!(a.status, 201);
    // Shutting down does not wait for the stalled handshake (the drain grace is 5 s).
    tokio::time::timeout(Duration::from_secs(3), gw.stop())
        .await
        .expect("shutdown closes connections still in their handshake");
}

#[tokio::test]
async fn a_stalled_handshake_is_closed_at_its_deadline() {
    let pki = pki();
    // 300 ms, far from the 10 s default of this setting and of
    // listen.first_request_timeout_ms, the other deadline a silent connection meets: a gateway
    // ignoring the setting would close it only after 10 s, past the bound below.
    let gw = TlsGateway::start(&pki, "handshake_timeout_ms = 300", "").await;
    let connecting = std::time::Instant::now();
    let mut stalled = TcpStream::connect(gw.addr).await.unwrap();
    // The gateway closes it once the deadline passes (EOF or reset).
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut buf))
        .await
        .expect("closed within 5 s: the configured 300 ms applies, not a 10 s default");
    let closed_after = connecting.elapsed();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(
        closed_after >= Duration::from_millis(300),
        "closed after {closed_after:?}, before its deadline"
    );
    gw.stop().await;
}

#[tokio::test]
async fn the_binary_serves_mtls_from_its_configuration_file() {
    use common::process::{gateway_config, spawn, BIN, KEY};
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let (_sandbox, addrs) = spawn(&["sandbox", "--listen", "127.0.0.1:0"], &["sandbox"]);
    let cfg = gateway_config(dir.path(), &addrs["sandbox"]);
    let files = write_pki(dir.path(), &pki);
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "\n[listen.tls]\n{files}client_ca_file = \"{}\"\nclient_auth = \"optional\"\n\n{}",
        dir.path().join("ca.pem").display(),
        "[callers.checkout]\nclient_cert = [\"spiffe://example.org/ns/payments/sa/checkout\"]\noperations = [\"*\"]\npartner = \"p-cert\"\n"
    ));
    std::fs::write(&cfg, text).unwrap();

    let check = std::process::Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        out.contains("server-key.pem") && out.contains("client_auth = \"optional\""),
        "{out}"
    );
    assert!(!out.contains(&key_body(&pki.server.key_pem)[..40]), "{out}");

    let (_gateway, addrs) = spawn(&["serve", "--config", cfg.to_str().unwrap()], &["proxy"]);
    let addr: SocketAddr = addrs["proxy"].parse().unwrap();
    let by_cert = client(&pki, Some(&pki.checkout), &[b"h2", b"http/1.1"]);
    let r = authorize_at(addr, &by_cert, &[]).await.unwrap();
    assert_eq!(r.status, 201, "{}", r.json());
    let by_key = client(&pki, None, &[b"http/1.1"]);
    let auth = bearer(KEY);
    let r = authorize_at(addr, &by_key, &[("authorization", &auth)])
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.json());
    let foreign = client(&pki, Some(&pki.foreign), &[b"http/1.1"]);
    let err = authorize_at(addr, &foreign, &[("authorization", &auth)])
        .await
        .err()
        .expect("no HTTP answer");
    assert!(err.contains("UnknownCA"), "{err}");
}

/// TRACE logs of TLS traffic (refusals included) name what was refused, never the key.
/// `#[tokio::test]` runs on one thread, so the thread's default subscriber sees every task.
#[tokio::test]
async fn tls_logs_name_refusals_but_never_the_key() {
    // tracing caches each callsite's interest process-wide, computed by the first thread to
    // reach it. While a single dispatcher exists, that thread asks only its own default: a
    // sibling test's thread, with none, caches "never" and this test's events are dropped
    // (tokio-rs/tracing#3611; 19 of 60 runs of this binary failed so). With a second
    // dispatcher alive, interest is the union over every live dispatcher, this test's included.
    let _second_dispatcher = tracing::Dispatch::new(tracing_subscriber::registry());
    let buf = LogBuffer::default();
    let writer = buf.clone();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish(),
    );
    let pki = pki();
    let gw = TlsGateway::start(&pki, "client_ca", &mtls_callers()).await;
    let ok = client(&pki, Some(&pki.checkout), &[b"h2"]);
    assert_eq!(authorize(&gw, &ok, &[]).await.unwrap().status, 201);
    let foreign = client(&pki, Some(&pki.foreign), &[b"http/1.1"]);
    assert!(authorize(&gw, &foreign, &[]).await.is_err());
    let none = client(&pki, None, &[b"http/1.1"]);
    assert!(authorize(&gw, &none, &[]).await.is_err());
    gw.stop().await;

    let logs = buf.text();
    assert!(
        logs.matches("TLS handshake refused: client certificate")
            .count()
            >= 2,
        "{logs}"
    );
    assert!(
        logs.contains("caller=\"checkout\"") || logs.contains("caller=checkout"),
        "{logs}"
    );
    assert!(!logs.contains("PRIVATE KEY"));
    for leaf in [&pki.server, &pki.checkout, &pki.foreign] {
        let body = key_body(&leaf.key_pem);
        for start in (0..body.len() - 24).step_by(12) {
            assert!(
                !logs.contains(&body[start..start + 24]),
                "key material in logs"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration

const BASE: &str = r#"
[credentials.default]
client_id = "c"
client_secret_env = "PATH"
[upstreams.payment]
url = "https://api-integration.ratepay.com"
audience = "a"
"#;

struct Files {
    dir: tempfile::TempDir,
    pki: Pki,
}

impl Files {
    fn new() -> Files {
        let pki = pki();
        let dir = tempfile::tempdir().unwrap();
        write_pki(dir.path(), &pki);
        std::fs::write(dir.path().join("other-key.pem"), &pki.checkout.key_pem).unwrap();
        Files { dir, pki }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn load(&self, text: &str) -> Result<Config, String> {
        Config::from_toml(&format!("{BASE}\n{text}"), Path::new("tls.toml"))
            .map_err(|e| e.to_string())
    }

    fn listen_tls(&self, cert: &str, key: &str, more: &str) -> String {
        format!(
            "[listen.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n{more}\n",
            self.path(cert),
            self.path(key)
        )
    }
}

#[test]
fn tls_config_errors_name_the_file_the_key_and_the_problem() {
    let f = Files::new();
    let ok = f.listen_tls("server.pem", "server-key.pem", "");
    f.load(&ok).expect("a matching certificate and key load");

    let e = f
        .load(&f.listen_tls("missing.pem", "server-key.pem", ""))
        .unwrap_err();
    assert!(
        e.starts_with("tls.toml: listen.tls.cert_file: cannot read ") && e.contains("missing.pem"),
        "{e}"
    );
    let e = f
        .load(&f.listen_tls("server.pem", "missing-key.pem", ""))
        .unwrap_err();
    assert!(
        e.starts_with("tls.toml: listen.tls.key_file: cannot read "),
        "{e}"
    );

    // A key that belongs to another certificate.
    let e = f
        .load(&f.listen_tls("server.pem", "other-key.pem", ""))
        .unwrap_err();
    assert!(
        e.starts_with("tls.toml: listen.tls.key_file: ") && e.contains("does not match"),
        "{e}"
    );
    // Files swapped: no key where the key should be, no certificate where the chain should be.
    let e = f
        .load(&f.listen_tls("server.pem", "server.pem", ""))
        .unwrap_err();
    assert!(
        e.contains("listen.tls.key_file") && e.contains("holds no PEM private key"),
        "{e}"
    );
    let e = f
        .load(&f.listen_tls("server-key.pem", "server-key.pem", ""))
        .unwrap_err();
    assert!(
        e.contains("listen.tls.cert_file") && e.contains("no PEM CERTIFICATE"),
        "{e}"
    );
    // No error message ever quotes the key.
    let key_body = key_body(&f.pki.server.key_pem);
    for text in [
        f.listen_tls("server.pem", "other-key.pem", ""),
        f.listen_tls("server-key.pem", "server-key.pem", ""),
    ] {
        let e = f.load(&text).unwrap_err();
        assert!(!e.contains(&key_body[..40]), "{e}");
    }

    let e = f
        .load(&f.listen_tls(
            "server.pem",
            "server-key.pem",
            "client_ca_file = \"/nonexistent/ca.pem\"",
        ))
        .unwrap_err();
    assert!(
        e.contains("listen.tls.client_ca_file") && e.contains("cannot read"),
        "{e}"
    );
    let e = f
        .load(&f.listen_tls(
            "server.pem",
            "server-key.pem",
            &format!("client_ca_file = \"{}\"", f.path("server-key.pem")),
        ))
        .unwrap_err();
    assert!(
        e.contains("listen.tls.client_ca_file") && e.contains("no PEM CERTIFICATE"),
        "{e}"
    );
    let e = f
        .load(&f.listen_tls("server.pem", "server-key.pem", "client_auth = \"optional\""))
        .unwrap_err();
    assert!(
        e.contains("listen.tls.client_auth") && e.contains("client_ca_file"),
        "{e}"
    );
    let ca = format!("client_ca_file = \"{}\"\n", f.path("ca.pem"));
    let e = f
        .load(&f.listen_tls(
            "server.pem",
            "server-key.pem",
            &format!("{ca}client_auth = \"sometimes\""),
        ))
        .unwrap_err();
    assert!(
        e.contains("listen.tls.client_auth") && e.contains("\"sometimes\""),
        "{e}"
    );
    let e = f
        .load(&f.listen_tls("server.pem", "server-key.pem", "certfile = \"x\""))
        .unwrap_err();
    assert!(e.contains("certfile"), "{e}");
}

fn key_body(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

#[test]
fn caller_client_cert_identities_are_checked() {
    let f = Files::new();
    let mtls = f.listen_tls(
        "server.pem",
        "server-key.pem",
        &format!("client_ca_file = \"{}\"", f.path("ca.pem")),
    );
    let caller = |name: &str, ids: &str| {
        format!("[callers.{name}]\nclient_cert = [{ids}]\noperations = [\"*\"]\n")
    };

    // A certificate identity alone is a credential.
    let c = f
        .load(&format!(
            "{mtls}{}{}",
            caller("a", "\"spiffe://example.org/ns/x/sa/a\""),
            caller("b", "\"dns:B.Internal\"")
        ))
        .unwrap();
    let ids: Vec<String> = c
        .callers
        .callers
        .iter()
        .flat_map(|c| c.client_cert.iter().map(|i| i.to_string()))
        .collect();
    assert_eq!(ids, ["spiffe://example.org/ns/x/sa/a", "dns:b.internal"]);

    let e = f
        .load(&format!("{mtls}{}", caller("a", "\"checkout.internal\"")))
        .unwrap_err();
    assert!(
        e.starts_with("tls.toml: callers.a.client_cert: ") && e.contains("dns:host.name"),
        "{e}"
    );
    let e = f
        .load(&format!(
            "{mtls}{}",
            caller("a", "\"spiffe://example.org/a/\"")
        ))
        .unwrap_err();
    assert!(
        e.contains("callers.a.client_cert") && e.contains("trailing"),
        "{e}"
    );
    let e = f
        .load(&format!("{mtls}{}", caller("a", "\"dns:*.internal\"")))
        .unwrap_err();
    assert!(
        e.contains("callers.a.client_cert") && e.contains("wildcard"),
        "{e}"
    );

    // One identity, one caller (DNS names compare without case).
    let e = f
        .load(&format!(
            "{mtls}{}{}",
            caller("a", "\"dns:svc.internal\""),
            caller("b", "\"dns:SVC.internal\"")
        ))
        .unwrap_err();
    assert!(
        e.contains("callers.b.client_cert") && e.contains("caller 'a'"),
        "{e}"
    );

    // Identities without mTLS could never be presented.
    let plain_tls = f.listen_tls("server.pem", "server-key.pem", "");
    for listen in ["", plain_tls.as_str()] {
        let e = f
            .load(&format!("{listen}{}", caller("a", "\"dns:svc.internal\"")))
            .unwrap_err();
        assert!(
            e.contains("callers.a.client_cert") && e.contains("client_ca_file"),
            "{e}"
        );
    }
}

#[test]
fn check_config_shows_tls_paths_but_never_the_key() {
    let f = Files::new();
    let c = f
        .load(&format!(
            "{}[callers.a]\nclient_cert = [\"dns:a.internal\"]\noperations = [\"*\"]\n",
            f.listen_tls(
                "server.pem",
                "server-key.pem",
                &format!(
                    "client_ca_file = \"{}\"\nclient_auth = \"optional\"",
                    f.path("ca.pem")
                )
            )
        ))
        .unwrap();
    let text = c.redacted();
    assert!(text.contains("[listen.tls]"), "{text}");
    assert!(text.contains(&f.path("server-key.pem")), "{text}");
    assert!(text.contains("client_auth = \"optional\""), "{text}");
    assert!(
        text.contains("client_cert = [\"dns:a.internal\"]"),
        "{text}"
    );
    let key_body = key_body(&f.pki.server.key_pem);
    for printed in [text, format!("{c:?}")] {
        assert!(!printed.contains("PRIVATE KEY"), "{printed}");
        // Any 40-character run of the key's base64 would show a leak.
        for start in (0..key_body.len() - 40).step_by(20) {
            assert!(!printed.contains(&key_body[start..start + 40]));
        }
    }
}
