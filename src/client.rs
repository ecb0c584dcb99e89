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

/// Builds the client, trusting the webpki roots and the extra CAs parsed at load.
pub fn build(config: &UpstreamClientConfig) -> HttpClient {
    crate::crypto::install_providers();
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = &config.ca_file {
        roots.extend(ca.anchors.iter().cloned());
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
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(config.pool_idle_timeout)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector)
}
