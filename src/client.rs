//! The pooled HTTP client toward Ratepay: hyper-util's legacy client over rustls.
//!
//! One client serves every upstream and the token endpoints. TLS trusts the webpki roots plus an
//! optional extra CA bundle (a corporate egress proxy or a test CA); ALPN offers HTTP/2 and
//! HTTP/1.1, so HTTP/2 is used where Ratepay offers it. Plain `http://` is allowed for the
//! embedded sandbox on loopback.

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioTimer},
};

use crate::config::UpstreamClientConfig;

/// A client error described without anything secret (hyper errors never carry headers).
pub fn describe_client_error(e: &hyper_util::client::legacy::Error) -> String {
    let mut msg = if e.is_connect() {
        "connection failed".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// The upstream client type.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Builds the client; fails when the extra CA file is unreadable or holds no certificate.
pub fn build(config: &UpstreamClientConfig) -> Result<HttpClient, String> {
    crate::crypto::install_providers();
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &config.ca_file {
        let certs = crate::tls::pem_certificates(path)
            .map_err(|e| format!("upstream_client.ca_file: {e}"))?;
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("CA file {}: {e}", path.display()))?;
        }
    }
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(config.connect_timeout));
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(config.pool_idle_timeout)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector))
}
