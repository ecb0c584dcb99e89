//! Accept loops for the proxy and admin listeners, connection settings, graceful drain.
//!
//! [`run`] takes bound listeners (binding and signals stay in main.rs; tests bind port 0) and
//! serves until `shutdown` resolves: then it stops accepting, lets in-flight requests finish
//! within the grace period, and returns.
//!
//! The proxy listener may serve TLS ([`Listener::tls`]): the handshake runs on the connection's
//! own task under a deadline, so a slow client never holds up the accept loop, and the client
//! certificate's identities (mTLS) ride in every request's extensions as `Arc<PeerIdentity>`.
//! A plain-TCP listener takes exactly the path it took before TLS existed.

use std::{convert::Infallible, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{
        conn::auto,
        graceful::{GracefulShutdown, Watcher},
    },
};
use tokio::net::TcpListener;

use crate::{
    body::Body,
    reload::LiveGateway,
    stack::{simple, READY_TOKEN_WAIT},
    tls::{PeerIdentity, ServerTls},
};

/// A bound listener and, when it serves TLS, its acceptor. A `TcpListener` converts into a
/// plain one, so `run(tcp_listener, ...)` keeps working.
#[derive(Debug)]
pub struct Listener {
    tcp: TcpListener,
    tls: Option<Arc<ServerTls>>,
}

impl Listener {
    /// Plain HTTP/1.1 and h2c.
    pub fn plain(tcp: TcpListener) -> Listener {
        Listener { tcp, tls: None }
    }

    /// TLS (and mTLS, as `tls` was configured); HTTP/1.1 and h2 by ALPN.
    pub fn tls(tcp: TcpListener, tls: ServerTls) -> Listener {
        Listener {
            tcp,
            tls: Some(Arc::new(tls)),
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

impl From<TcpListener> for Listener {
    fn from(tcp: TcpListener) -> Listener {
        Listener::plain(tcp)
    }
}

/// Serves the proxy (and admin) listeners until `shutdown`, then drains for up to `grace`.
pub async fn run(
    proxy: impl Into<Listener>,
    admin: Option<TcpListener>,
    gateway: impl Into<LiveGateway>,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let gateway: LiveGateway = gateway.into();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let graceful = Arc::new(GracefulShutdown::new());
    let mut tasks = tokio::task::JoinSet::new();
    {
        let gw = gateway.clone();
        tasks.spawn(accept_loop(
            proxy.into(),
            stop_rx.clone(),
            graceful.clone(),
            move |req, peer| {
                // The gateway current at arrival serves the whole request, reload or not.
                let gw = gw.current();
                async move { gw.handle(req, peer).await }
            },
        ));
    }
    if let Some(admin) = admin {
        let gw = gateway.clone();
        tasks.spawn(accept_loop(
            Listener::plain(admin),
            stop_rx.clone(),
            graceful.clone(),
            move |req, _peer| {
                let gw = gw.clone();
                async move { admin_handle(&gw, req).await }
            },
        ));
    }
    shutdown.await;
    tracing::info!("shutting down: no new connections; draining in-flight requests");
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    let Ok(graceful) = Arc::try_unwrap(graceful) else {
        tracing::warn!("connections still referenced; exiting without drain");
        return;
    };
    match tokio::time::timeout(grace, graceful.shutdown()).await {
        Ok(()) => tracing::info!("all connections drained"),
        Err(_) => tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "grace period over; closing remaining connections"
        ),
    }
}

async fn accept_loop<F, Fut>(
    listener: Listener,
    mut stop: tokio::sync::watch::Receiver<bool>,
    graceful: Arc<GracefulShutdown>,
    handler: F,
) where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256);
    let Listener { tcp: listener, tls } = listener;
    let builder = Arc::new(builder);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let (handler, builder, watcher) = (handler.clone(), builder.clone(), graceful.watcher());
        let Some(tls) = &tls else {
            tokio::spawn(serve(stream, peer, None, builder, watcher, handler));
            continue;
        };
        // The handshake runs on the connection's task, under its own deadline; a shutdown
        // closes a connection still in its handshake (no request was sent on it yet).
        let tls = tls.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let handshake = tokio::select! {
                h = tls.handshake(stream, peer) => h,
                _ = stop.wait_for(|stopping| *stopping) => None,
            };
            if let Some((stream, identity)) = handshake {
                serve(stream, peer, identity, builder, watcher, handler).await;
            }
        });
    }
}

/// Serves one connection (plain, or after its TLS handshake) until it closes. The client
/// certificate's identities, when there are any, ride in every request's extensions.
async fn serve<I, F, Fut>(
    io: I,
    peer: SocketAddr,
    identity: Option<Arc<PeerIdentity>>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
    handler: F,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        if let Some(identity) = &identity {
            req.extensions_mut().insert(identity.clone());
        }
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(handler(req, peer).await) }
    });
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(error = %e, peer = %peer, "connection ended with an error");
    }
}

/// `/healthz`, `/readyz`, `/metrics` and `POST /reload` on the admin listener.
async fn admin_handle(live: &LiveGateway, req: Request<Incoming>) -> Response<Body> {
    if req.uri().path() == "/reload" {
        if req.method() != http::Method::POST {
            return simple(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "use POST /reload\n",
            );
        }
        return match live.reload_and_log().await {
            Ok(report) => simple(StatusCode::OK, "text/plain", format!("{report}\n")),
            Err(reason) => crate::error::problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "reload-refused",
                "Configuration reload refused",
                &format!(
                    "{reason}; the running configuration stays. Fix the file and reload again."
                ),
                &uuid::Uuid::now_v7().to_string(),
            ),
        };
    }
    let gw = live.current();
    match req.uri().path() {
        "/healthz" => simple(StatusCode::OK, "text/plain", "ok\n"),
        "/metrics" => {
            let m = gw.metrics();
            if let Some(cache) = gw.session_record_cache() {
                // moka counts lazily; settle pending inserts so the gauges are current.
                cache.run_pending_tasks().await;
                m.cache_bytes.set(cache.weighted_size() as i64);
                m.cache_entries.set(cache.entry_count() as i64);
            }
            simple(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                m.encode(),
            )
        }
        "/readyz" => {
            let mut problems = Vec::new();
            for (api, source) in gw.token_sources() {
                match tokio::time::timeout(READY_TOKEN_WAIT, source.bearer()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => problems.push(format!("{}: {e}", api.name())),
                    Err(_) => problems.push(format!(
                        "{}: no token within {} ms",
                        api.name(),
                        READY_TOKEN_WAIT.as_millis()
                    )),
                }
            }
            if problems.is_empty() {
                simple(StatusCode::OK, "text/plain", "ready\n")
            } else {
                simple(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready\n{}\n", problems.join("\n")),
                )
            }
        }
        _ => simple(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /healthz, /readyz, /metrics or POST /reload\n",
        ),
    }
}
