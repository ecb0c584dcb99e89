//! Inbound TLS on the proxy listener, and the caller identities that mTLS client certificates carry.
//!
//! Sits at the very start of the flow, before HTTP: [`server_config`] turns `[listen.tls]` into a
//! rustls server configuration (checked at configuration load, so `check-config` catches a bad
//! certificate or a key that does not match it); [`ServerTls::handshake`] runs the handshake on
//! the connection's own task under a timeout; [`PeerIdentity::from_connection`] reads the
//! verified client certificate's SPIFFE URI and DNS SANs once per connection. The server hands an
//! `Arc<PeerIdentity>` with every request (in its [`crate::context::Peer`]) and the caller layer
//! maps it to a configured caller ([`crate::callers::Callers::authenticate_with_peer`]).

use std::{fmt, net::SocketAddr, path::Path, sync::Arc, time::Duration};

use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::{ServerConnection, WebPkiClientVerifier},
    RootCertStore, ServerConfig,
};
use secrecy::{ExposeSecret, SecretSlice};
use tokio::net::TcpStream;
use tokio_rustls::{server::TlsStream, TlsAcceptor};

/// Whether the proxy listener asks connecting callers for a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No `client_ca_file`: plain TLS, no certificate is requested.
    Off,
    /// A certificate from a trusted CA is required; a connection without one is refused.
    Required,
    /// A certificate is requested; without one the caller authenticates with an API key or JWT.
    /// A certificate that is presented must still chain to a trusted CA.
    Optional,
}

impl ClientAuth {
    /// The configuration spelling.
    pub fn name(self) -> &'static str {
        match self {
            ClientAuth::Off => "off",
            ClientAuth::Required => "required",
            ClientAuth::Optional => "optional",
        }
    }
}

/// `[listen.tls]`, validated: the file paths (for messages and logs; never the key itself) and
/// the rustls configuration built from them.
#[derive(Clone)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first.
    pub cert_file: std::path::PathBuf,
    /// PEM private key (the path may be logged; the key never is).
    pub key_file: std::path::PathBuf,
    /// PEM bundle of the CAs trusted for client certificates.
    pub client_ca_file: Option<std::path::PathBuf>,
    /// Whether client certificates are requested.
    pub client_auth: ClientAuth,
    /// Longest time a connection may take to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// The rustls configuration, built once at load.
    pub server_config: Arc<ServerConfig>,
}

impl TlsSettings {
    /// `handshake_timeout_ms` when not set.
    pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
}

/// Equal when loaded from the same settings: the rustls configuration is built from these
/// (reload compares them to tell whether `[listen.tls]` changed).
impl PartialEq for TlsSettings {
    fn eq(&self, other: &Self) -> bool {
        self.cert_file == other.cert_file
            && self.key_file == other.key_file
            && self.client_ca_file == other.client_ca_file
            && self.client_auth == other.client_auth
            && self.handshake_timeout == other.handshake_timeout
    }
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The rustls configuration holds the private key: never printed.
        f.debug_struct("TlsSettings")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("client_ca_file", &self.client_ca_file)
            .field("client_auth", &self.client_auth)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

/// A problem with `[listen.tls]`: the key under `listen.tls` and what is wrong.
#[derive(Debug)]
pub struct TlsConfigError {
    /// `cert_file`, `key_file` or `client_ca_file`.
    pub key: &'static str,
    /// What is wrong (never key material).
    pub message: String,
}

fn err(key: &'static str, message: impl Into<String>) -> TlsConfigError {
    TlsConfigError {
        key,
        message: message.into(),
    }
}

/// The certificates of a PEM file, in file order; an error names the file and says whether it
/// could not be read, is not valid PEM or holds no certificate. (Server chains, client CAs and
/// the upstream client's extra CAs are all read this way.)
pub fn pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM CERTIFICATE block", path.display()));
    }
    Ok(certs)
}

/// Builds the rustls server configuration: the certificate chain and its key (which must match),
/// the client certificate verifier for `client_auth`, ALPN `h2` and `http/1.1`.
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
    client_ca_file: Option<&Path>,
    client_auth: ClientAuth,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());

    let chain = pem_certificates(cert_file).map_err(|m| {
        err(
            "cert_file",
            format!("{m} (expected the server certificate, then its intermediates)"),
        )
    })?;

    // Held as a secret so the bytes are zeroized when dropped; parse errors never quote them.
    let key_pem = SecretSlice::from(std::fs::read(key_file).map_err(|e| {
        err(
            "key_file",
            format!("cannot read {}: {e}", key_file.display()),
        )
    })?);
    let key = PrivateKeyDer::from_pem_slice(key_pem.expose_secret()).map_err(|e| {
        let why = match e {
            rustls::pki_types::pem::Error::NoItemsFound => "holds no PEM private key",
            _ => "is not a readable PEM private key",
        };
        err(
            "key_file",
            format!(
                "{} {why} (expected PRIVATE KEY (PKCS#8), RSA PRIVATE KEY or EC PRIVATE KEY)",
                key_file.display()
            ),
        )
    })?;

    let verifier = match (client_auth, client_ca_file) {
        (ClientAuth::Off, _) | (_, None) => WebPkiClientVerifier::no_client_auth(),
        (auth, Some(ca_file)) => {
            let mut roots = RootCertStore::empty();
            for cert in pem_certificates(ca_file).map_err(|m| err("client_ca_file", m))? {
                roots.add(cert).map_err(|e| {
                    err(
                        "client_ca_file",
                        format!("{}: not a usable CA certificate: {e}", ca_file.display()),
                    )
                })?;
            }
            let builder =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let builder = if auth == ClientAuth::Optional {
                builder.allow_unauthenticated()
            } else {
                builder
            };
            builder
                .build()
                .map_err(|e| err("client_ca_file", format!("{}: {e}", ca_file.display())))?
        }
    };

    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err("cert_file", format!("TLS set-up failed: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| {
            let message = match e {
                rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => format!(
                    "the private key in {} does not match the certificate in {}",
                    key_file.display(),
                    cert_file.display()
                ),
                other => format!(
                    "{} and {} cannot be used together: {other}",
                    cert_file.display(),
                    key_file.display()
                ),
            };
            err("key_file", message)
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The proxy listener's TLS: the acceptor and the handshake deadline.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    client_auth: ClientAuth,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("handshake_timeout", &self.handshake_timeout)
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// From the validated `[listen.tls]`.
    pub fn new(settings: &TlsSettings) -> ServerTls {
        ServerTls {
            acceptor: TlsAcceptor::from(settings.server_config.clone()),
            handshake_timeout: settings.handshake_timeout,
            client_auth: settings.client_auth,
        }
    }

    /// Whether client certificates are requested.
    pub fn client_auth(&self) -> ClientAuth {
        self.client_auth
    }

    /// Runs the handshake within the deadline. `None` when it failed or timed out (logged here:
    /// the connection is simply closed, there is no HTTP to answer with). The identity is read
    /// once, here, for every request on the connection.
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> Option<(TlsStream<TcpStream>, Option<Arc<PeerIdentity>>)> {
        match tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(tcp)).await {
            Err(_) => {
                tracing::debug!(peer = %peer, timeout_ms = self.handshake_timeout.as_millis() as u64, "TLS handshake timed out");
                None
            }
            Ok(Err(e)) => {
                let rustls_error = e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>());
                // A refused client certificate is worth an operator's attention; scanners and
                // load-balancer probes that hang up mid-handshake are not.
                match rustls_error {
                    Some(
                        r @ (rustls::Error::InvalidCertificate(_)
                        | rustls::Error::NoCertificatesPresented),
                    ) => {
                        tracing::info!(peer = %peer, error = %r, "TLS handshake refused: client certificate")
                    }
                    _ => tracing::debug!(peer = %peer, error = %e, "TLS handshake failed"),
                }
                None
            }
            Ok(Ok(stream)) => {
                let identity = PeerIdentity::from_connection(stream.get_ref().1).map(Arc::new);
                Some((stream, identity))
            }
        }
    }
}

/// One caller identity a client certificate can carry, as written in `callers.NAME.client_cert`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CertIdentity {
    /// A SPIFFE ID in a URI SAN: `spiffe://trust-domain/path`.
    Spiffe(String),
    /// A DNS SAN (lower case), written `dns:name`.
    Dns(String),
}

impl fmt::Display for CertIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertIdentity::Spiffe(s) => f.write_str(s),
            CertIdentity::Dns(d) => write!(f, "dns:{d}"),
        }
    }
}

impl CertIdentity {
    /// Parses the configuration form: `spiffe://trust-domain/path` or `dns:host.name`.
    pub fn parse(s: &str) -> Result<CertIdentity, String> {
        if let Some(rest) = s.strip_prefix("spiffe://") {
            validate_spiffe(rest)?;
            Ok(CertIdentity::Spiffe(s.to_owned()))
        } else if let Some(name) = s.strip_prefix("dns:") {
            let name = name.to_ascii_lowercase();
            validate_dns(&name)?;
            Ok(CertIdentity::Dns(name))
        } else {
            Err(format!(
                "{s:?}: expected \"spiffe://trust-domain/path\" (a URI SAN) or \"dns:host.name\" (a DNS SAN)"
            ))
        }
    }
}

/// The SPIFFE ID rules: a lower-case trust domain, then `/`-separated non-empty segments of
/// letters, digits, `.`, `-`, `_` (not `.` or `..`), no trailing `/`, at most 2048 bytes.
fn validate_spiffe(rest: &str) -> Result<(), String> {
    let full = format!("spiffe://{rest}");
    if full.len() > 2048 {
        return Err(format!("{full:?}: a SPIFFE ID is at most 2048 bytes"));
    }
    let (domain, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if domain.is_empty()
        || domain.len() > 255
        || !domain.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
    {
        return Err(format!(
            "{full:?}: the trust domain must be 1 to 255 characters of a-z, 0-9, '.', '-', '_'"
        ));
    }
    if path.is_empty() {
        return Ok(());
    }
    for segment in path[1..].split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err(format!(
                "{full:?}: path segments must not be empty, '.' or '..' (and no trailing '/')"
            ));
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        {
            return Err(format!(
                "{full:?}: path segments may hold only A-Z, a-z, 0-9, '.', '-', '_'"
            ));
        }
    }
    Ok(())
}

/// A DNS name as it appears in a DNS SAN: labels of 1 to 63 letters, digits or '-' (not at
/// either end), at most 253 characters. Wildcards are refused: identities are matched exactly.
fn validate_dns(name: &str) -> Result<(), String> {
    if name.contains('*') {
        return Err(format!(
            "\"dns:{name}\": wildcards are not matched; name the exact DNS SAN of the caller's certificate"
        ));
    }
    let ok = (1..=253).contains(&name.len())
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "\"dns:{name}\": expected a host name such as \"dns:checkout.internal\" (labels of a-z, 0-9, '-')"
        ))
    }
}

/// The identities of a connection's verified client certificate (SPIFFE URI SANs and DNS SANs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// In certificate order; possibly empty (a certificate without such SANs).
    pub identities: Vec<CertIdentity>,
}

impl PeerIdentity {
    /// Reads the end-entity certificate rustls verified; `None` when the client sent none.
    pub fn from_connection(conn: &ServerConnection) -> Option<PeerIdentity> {
        let leaf = conn.peer_certificates()?.first()?;
        Some(PeerIdentity::from_der(leaf))
    }

    /// The SPIFFE URI SANs and DNS SANs of a DER certificate (other names are ignored).
    pub fn from_der(der: &[u8]) -> PeerIdentity {
        let mut identities = Vec::new();
        let sans = x509_parser::parse_x509_certificate(der)
            .ok()
            .and_then(|(_, cert)| {
                let san = cert.subject_alternative_name().ok().flatten()?;
                Some(san.value.general_names.clone())
            });
        for name in sans.unwrap_or_default() {
            match name {
                x509_parser::extensions::GeneralName::URI(u) if u.starts_with("spiffe://") => {
                    identities.push(CertIdentity::Spiffe(u.to_owned()))
                }
                x509_parser::extensions::GeneralName::DNSName(d) => {
                    identities.push(CertIdentity::Dns(d.to_ascii_lowercase()))
                }
                _ => {}
            }
        }
        PeerIdentity { identities }
    }

    /// For messages: the identities, comma-separated (at most eight), or a note that there are none.
    pub fn describe(&self) -> String {
        if self.identities.is_empty() {
            return "a certificate with no SPIFFE URI SAN and no DNS SAN".into();
        }
        let mut s = self
            .identities
            .iter()
            .take(8)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        if self.identities.len() > 8 {
            s.push_str(", …");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_parse_and_print_in_config_form() {
        let s = CertIdentity::parse("spiffe://example.org/ns/payments/sa/checkout").unwrap();
        assert_eq!(
            s,
            CertIdentity::Spiffe("spiffe://example.org/ns/payments/sa/checkout".into())
        );
        assert_eq!(
            s.to_string(),
            "spiffe://example.org/ns/payments/sa/checkout"
        );
        assert_eq!(
            CertIdentity::parse("spiffe://example.org")
                .unwrap()
                .to_string(),
            "spiffe://example.org"
        );
        let d = CertIdentity::parse("dns:Checkout.Internal").unwrap();
        assert_eq!(d, CertIdentity::Dns("checkout.internal".into()));
        assert_eq!(d.to_string(), "dns:checkout.internal");
    }

    #[test]
    fn malformed_identities_are_refused() {
        for bad in [
            "checkout.internal",
            "uri:spiffe://x/y",
            "spiffe://",
            "spiffe://Example.org/a",
            "spiffe://example.org/",
            "spiffe://example.org/a//b",
            "spiffe://example.org/a/../b",
            "spiffe://example.org/a?b",
            "spiffe://user@example.org/a",
            "spiffe://example.org:443/a",
            "dns:",
            "dns:*.internal",
            "dns:-bad.internal",
            "dns:a..b",
            "dns:under_score.internal",
        ] {
            assert!(CertIdentity::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn sans_are_read_from_a_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["Checkout.Internal".to_owned()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://example.org/ns/payments/sa/checkout"
                .try_into()
                .unwrap(),
        ));
        params.subject_alt_names.push(rcgen::SanType::URI(
            "https://not-spiffe.example".try_into().unwrap(),
        ));
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        let cert = params.self_signed(&key).unwrap();
        let id = PeerIdentity::from_der(cert.der());
        assert_eq!(
            id.identities,
            vec![
                CertIdentity::Dns("checkout.internal".into()),
                CertIdentity::Spiffe("spiffe://example.org/ns/payments/sa/checkout".into()),
            ]
        );
        assert_eq!(
            id.describe(),
            "dns:checkout.internal, spiffe://example.org/ns/payments/sa/checkout"
        );
        assert!(PeerIdentity::from_der(b"not a certificate")
            .identities
            .is_empty());
    }
}
