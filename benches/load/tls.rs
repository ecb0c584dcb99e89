//! The `tls` cases' PKI: Ratepay is only reachable over HTTPS, so the uncached GET is measured
//! again with TLS between each proxy and the static upstream. One test CA (rcgen) signs the
//! upstream's certificate (`ratepay.bench` and `127.0.0.1`); every proxy trusts that CA and
//! verifies the certificate. The upstream offers one suite and one group, so that rustls (the
//! gateway, the hyper floor) and OpenSSL (nginx, HAProxy) negotiate the same thing: TLS 1.3,
//! `TLS_AES_256_GCM_SHA384`, X25519, HTTP/1.1 by ALPN. Connections are kept alive, so what is
//! measured is mostly record encryption, not handshakes.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::{
    crypto::aws_lc_rs,
    pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer},
};

/// The name in the upstream's certificate (besides its IP address).
pub const UPSTREAM_NAME: &str = "ratepay.bench";

/// The test CA (as a PEM file the proxies trust) and the upstream's TLS acceptor.
pub struct Pki {
    /// The CA certificate, PEM.
    pub ca_pem: PathBuf,
    /// The static upstream's side.
    pub acceptor: tokio_rustls::TlsAcceptor,
}

/// The one suite and group every proxy negotiates with the upstream.
fn provider() -> rustls::crypto::CryptoProvider {
    let base = aws_lc_rs::default_provider();
    rustls::crypto::CryptoProvider {
        cipher_suites: vec![aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384],
        kx_groups: vec![aws_lc_rs::kx_group::X25519],
        ..base
    }
}

/// A fresh CA and upstream certificate; the CA's PEM is written to `dir`.
pub fn pki(dir: &Path) -> Pki {
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "ratepay-gateway bench CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("ca key")).expect("ca");
    let mut leaf = CertificateParams::default();
    leaf.distinguished_name
        .push(DnType::CommonName, UPSTREAM_NAME);
    leaf.subject_alt_names = vec![
        SanType::DnsName(UPSTREAM_NAME.try_into().expect("dns name")),
        SanType::IpAddress("127.0.0.1".parse().expect("ip")),
    ];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().expect("leaf key");
    let cert = leaf.signed_by(&key, &ca).expect("leaf");
    let ca_pem = dir.join("bench-ca.pem");
    std::fs::write(&ca_pem, ca.pem()).expect("write the CA");
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone(), ca.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("server config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Pki {
        ca_pem,
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
    }
}

/// The floor proxy's HTTPS connector: the bench CA only, HTTP/1.1.
pub fn floor_connector(
    ca_pem: &Path,
) -> hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca_pem).expect("read the CA");
    for cert in pem_certs(&pem) {
        roots.add(cert).expect("CA certificate");
    }
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocols")
            .with_root_certificates(roots)
            .with_no_client_auth();
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .build()
}

/// The certificates in a PEM file.
fn pem_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}
