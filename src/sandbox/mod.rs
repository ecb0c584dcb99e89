//! The local Ratepay simulator ("sandbox"): OAuth, Payment API v2, Transaction Status API and
//! Hosted Payment Page on loopback, plus `/_sandbox/*` test endpoints.
//!
//! Used by the tests, the benchmarks and `serve` with `[sandbox] embedded = true`.
//! TODO(sandbox helper): implement.

use std::{future::Future, io, net::SocketAddr, time::Duration};

use secrecy::SecretString;

/// One OAuth client the sandbox accepts.
#[derive(Debug, Clone)]
pub struct SandboxClient {
    /// `client_id`.
    pub client_id: String,
    /// `client_secret`.
    pub client_secret: SecretString,
}

/// The OAuth audience each API requires of its bearer tokens.
#[derive(Debug, Clone)]
pub struct SandboxAudiences {
    /// Payment API v2 (and 2fa).
    pub payment: String,
    /// Transaction Status API.
    pub status: String,
    /// Hosted Payment Page.
    pub hpp: String,
}

/// Settings of one sandbox instance.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Clients accepted by `POST /oauth/token`.
    pub clients: Vec<SandboxClient>,
    /// Audiences per API.
    pub audiences: SandboxAudiences,
    /// Lifetime of issued access tokens (`expires_in`, JWT `exp`).
    pub token_lifetime: Duration,
    /// Seed for deterministic ids; random when `None`.
    pub seed: Option<u64>,
    /// How long an HPP session stays in each non-terminal status before it moves on by itself;
    /// `None` means sessions only change when a test sets their status.
    pub session_step: Option<Duration>,
}

/// Runs the sandbox on `listener` until `shutdown` resolves.
pub async fn serve(
    _listener: tokio::net::TcpListener,
    _config: SandboxConfig,
    _shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    unimplemented!()
}

/// A sandbox running on a background task; stops when dropped.
#[derive(Debug)]
pub struct SandboxHandle {
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        unimplemented!()
    }
}

/// Binds 127.0.0.1:0 and serves on a background task.
pub async fn spawn(_config: SandboxConfig) -> io::Result<SandboxHandle> {
    unimplemented!()
}

impl SandboxHandle {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}
