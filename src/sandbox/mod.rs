//! The local Ratepay simulator ("sandbox"): OAuth, Payment API v2 (with One Time Passcode),
//! Transaction Status API and Hosted Payment Page on loopback, plus `/_sandbox/*` test
//! endpoints (stats, faults, token revocation, session status, reset).
//!
//! Used by the tests, the benchmarks and `serve` with `[sandbox] embedded = true`, in place of
//! Ratepay (this project's machines have no network). It serves Ratepay's own paths, names
//! operations with the gateway's route table ([`crate::routes`]) and follows Ratepay's
//! documented rules for tokens, idempotency, amounts and statuses. See `docs/sandbox.md`.
//!
//! Module map, bottom first (each file imports only files above it; `tests/module_order.rs`
//! checks it): `config` (settings) · `reply` + `call` (what an operation answers and
//! receives) · `ledger` (amount bookkeeping) · `sessions` (HPP sessions) · `tokens` (JWTs) ·
//! `faults` · `stats` · `idempotency` · `state` (the shared `Arc` state) · the operations:
//! `oauth`, `payment/` (Payment, OTP and Status APIs), `hpp`, `control` (`/_sandbox/*`) ·
//! `dispatch` (operation → code) · [`http`] (request flow).

mod call;
mod config;
mod control;
mod dispatch;
mod faults;
mod hpp;
pub(crate) mod http;
mod idempotency;
mod ledger;
mod oauth;
mod payment;
mod reply;
mod sessions;
mod state;
mod stats;
mod tokens;

use std::{future::Future, io, net::SocketAddr, sync::Arc, time::Duration};

use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto::Builder,
};
use tokio::{sync::Notify, task::JoinSet};
use tokio_rustls::TlsAcceptor;

pub use config::{
    SandboxAudiences, SandboxClient, SandboxConfig, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET,
};
pub use payment::{MAX_EXPIRY_DAYS, OTP_CODE};

/// How long `serve` lets open connections finish after `shutdown` resolved.
const DRAIN: Duration = Duration::from_secs(5);

/// How long a TLS client may take to finish its handshake before the connection is dropped.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// Runs the sandbox on `listener` until `shutdown` resolves, then lets open connections finish
/// their current requests (up to 5 s) and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: SandboxConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    crate::crypto::install_providers();
    let sandbox = Arc::new(state::Sandbox::new(config));
    serve_state(listener, sandbox, None, shutdown).await
}

/// [`serve`] over TLS: every connection is a TLS handshake with `tls` first. The protocol
/// follows ALPN as `tls.alpn_protocols` offers it (`h2` and/or `http/1.1`), so a test can
/// stand for a Ratepay that offers HTTP/2 or one that offers only HTTP/1.1.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    config: SandboxConfig,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    crate::crypto::install_providers();
    let sandbox = Arc::new(state::Sandbox::new(config));
    serve_state(listener, sandbox, Some(TlsAcceptor::from(tls)), shutdown).await
}

async fn serve_state(
    listener: tokio::net::TcpListener,
    sandbox: Arc<state::Sandbox>,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let builder = Builder::new(TokioExecutor::new());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            _ = &mut shutdown => break,
            // Reap finished connection tasks so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Per-connection accept errors (e.g. the peer reset) must not stop the server;
                // back off briefly in case it is resource exhaustion (EMFILE).
                Err(e) => {
                    tracing::debug!(error = %e, "sandbox accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let sandbox = sandbox.clone();
        let builder = builder.clone();
        let stop = stop_rx.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            match tls {
                None => serve_connection(stream, sandbox, builder, stop).await,
                // The handshake runs in the connection's own task so that a slow or refused
                // client never holds up the accept loop.
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => serve_connection(stream, sandbox, builder, stop).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "sandbox TLS handshake failed"),
                        Err(_) => tracing::debug!("sandbox TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(DRAIN, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.abort_all();
    Ok(())
}

/// Serves HTTP/1.1 or h2 (told apart by the h2 preface) on one connection until it ends, a
/// `close_connection` fault drops it, or `stop` asks for a graceful close.
async fn serve_connection<S>(
    stream: S,
    sandbox: Arc<state::Sandbox>,
    builder: Builder<TokioExecutor>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let kill = Arc::new(Notify::new());
    let service = {
        let kill = kill.clone();
        service_fn(move |req| {
            let sandbox = sandbox.clone();
            let kill = kill.clone();
            async move { Ok::<_, std::convert::Infallible>(http::handle(sandbox, req, kill).await) }
        })
    };
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .into_owned();
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "sandbox connection ended with an error");
                }
                break;
            }
            // A close_connection fault: dropping `conn` closes the socket unanswered.
            _ = kill.notified() => break,
            changed = stop.changed(), if !draining => {
                draining = true;
                if changed.is_ok() {
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Starts a sandbox on `127.0.0.1:0` in a background task.
pub async fn spawn(config: SandboxConfig) -> io::Result<SandboxHandle> {
    spawn_with(config, None).await
}

/// Starts a sandbox serving HTTPS with `tls` on `127.0.0.1:0` in a background task; its
/// [`SandboxHandle::url`] is `https://127.0.0.1:PORT`, so the certificate needs that IP (or
/// the test uses `localhost` and a DNS SAN). See [`serve_tls`] for ALPN.
pub async fn spawn_tls(
    config: SandboxConfig,
    tls: Arc<rustls::ServerConfig>,
) -> io::Result<SandboxHandle> {
    spawn_with(config, Some(tls)).await
}

async fn spawn_with(
    config: SandboxConfig,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> io::Result<SandboxHandle> {
    crate::crypto::install_providers();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let state = Arc::new(state::Sandbox::new(config));
    let scheme = if tls.is_some() { "https" } else { "http" };
    let task = tokio::spawn(serve_state(
        listener,
        state.clone(),
        tls.map(TlsAcceptor::from),
        async move {
            let _ = rx.await;
        },
    ));
    Ok(SandboxHandle {
        addr,
        scheme,
        state,
        stop: Some(tx),
        task,
    })
}

/// A sandbox answering requests in-process, without a socket (for the fuzz targets in `fuzz/`).
#[doc(hidden)]
pub struct InProcess(Arc<state::Sandbox>);

impl InProcess {
    /// A fresh sandbox with `config`.
    pub fn new(config: SandboxConfig) -> InProcess {
        crate::crypto::install_providers();
        InProcess(Arc::new(state::Sandbox::new(config)))
    }

    /// Answers `req` exactly as the sandbox's HTTP server would (a `close_connection` fault
    /// never resolves).
    pub async fn handle(
        &self,
        req: ::http::Request<http_body_util::Full<bytes::Bytes>>,
    ) -> ::http::Response<http_body_util::Full<bytes::Bytes>> {
        http::handle(self.0.clone(), req, Arc::new(Notify::new())).await
    }
}

/// A sandbox running on a background task; stops when dropped.
pub struct SandboxHandle {
    /// Where it listens.
    pub addr: SocketAddr,
    scheme: &'static str,
    state: Arc<state::Sandbox>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<io::Result<()>>,
}

impl std::fmt::Debug for SandboxHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxHandle")
            .field("addr", &self.addr)
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

impl SandboxHandle {
    /// Base URL, e.g. `http://127.0.0.1:41234` or `https://127.0.0.1:41234` (no trailing
    /// slash).
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// The counters `GET /_sandbox/stats` answers, read in process (no HTTP call, so a test
    /// needs no client that trusts a TLS sandbox's certificate).
    pub fn stats(&self) -> serde_json::Value {
        serde_json::json!(state::lock(&self.state.inner).stats.clone())
    }

    /// Stops accepting, lets open requests finish (up to 5 s) and waits for the server task.
    pub async fn shutdown(mut self) -> io::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match (&mut self.task).await {
            Ok(r) => r,
            Err(e) => Err(io::Error::other(e)),
        }
    }
}

impl Drop for SandboxHandle {
    fn drop(&mut self) {
        // Aborting the server task drops its JoinSet, which aborts every connection task, so
        // nothing of this sandbox outlives the handle.
        self.task.abort();
    }
}
