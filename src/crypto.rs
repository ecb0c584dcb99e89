//! One crypto provider (aws-lc-rs) for rustls and jsonwebtoken, installed once at start-up.
//!
//! With no provider or two providers in the graph, the first TLS handshake or JWT operation
//! panics; every entry point (server, sandbox, tests) calls [`install_providers`] first.

/// Installs aws-lc-rs as the process-wide provider for rustls and jsonwebtoken. Idempotent.
pub fn install_providers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another provider was installed first (e.g. by an embedding program): keep it.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    });
}
