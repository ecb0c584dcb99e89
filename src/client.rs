//! The pooled HTTP client toward Ratepay: hyper's connection API over rustls, with a pool of
//! its own per origin.
//!
//! One client serves every upstream and the token endpoints. TLS trusts the webpki roots plus an
//! optional extra CA bundle (a corporate egress proxy or a test CA); ALPN offers HTTP/2 and
//! HTTP/1.1, so HTTP/2 is used where Ratepay offers it. Plain `http://` is allowed for the
//! embedded sandbox on loopback. Connections are opened by hyper-rustls's connector over
//! hyper-util's `HttpConnector` (DNS, connect timeout, `TCP_NODELAY`).
//!
//! Why a pool of our own instead of hyper-util's legacy `Client` (issue 18, measured): per
//! HTTP/1 request the legacy client clones itself, hashes its pool key twice (checkout and
//! return), builds a lazy connect future it rarely starts, and spawns a task that waits for the
//! connection to become ready again before putting it back. Here the proxy resolves each
//! upstream's [`Origin`] once, at build time; a request pops the most recently used idle
//! connection from that origin's list (one uncontended lock, no hash), and the connection goes
//! back to the list from the response body the moment its last frame is read, with no task of
//! its own. HTTP/2 origins share one multiplexed connection. Semantics kept from the legacy
//! client: a request that was never written on a reused connection (the upstream closed it
//! while idle) is sent again on another connection, never one that may have reached Ratepay;
//! idle connections close after `pool_idle_timeout`; errors say whether the connection failed
//! or the request did.

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{header::HOST, uri::Scheme, HeaderValue, Request, Response, Uri, Version};
use http_body_util::Full;
use hyper::{
    body::Incoming,
    client::conn::{http1, http2},
};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::{
    client::legacy::connect::{Connection, HttpConnector},
    rt::{TokioExecutor, TokioIo, TokioTimer},
};

use crate::config::UpstreamClientConfig;

/// The request body every upstream call carries: buffered bytes.
type ReqBody = Full<Bytes>;
type Connector = HttpsConnector<HttpConnector>;
type Io = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;

/// Idle HTTP/1 connections kept per origin; past this a returned connection is closed.
const MAX_IDLE_PER_ORIGIN: usize = 1024;
/// Origins pooled per client (every configured upstream and token endpoint is one); a request
/// to any other origin gets a connection of its own that is closed after its answer.
const MAX_ORIGINS: usize = 64;

/// Why a request to Ratepay got no answer. Never carries headers or bodies.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection could be opened (DNS, TCP, TLS).
    #[error("connection failed")]
    Connect(#[source] crate::body::BoxError),
    /// The connection was open but the exchange failed.
    #[error("request failed")]
    Request(#[source] hyper::Error),
    /// The URI has no scheme or host the client can connect to.
    #[error("the upstream URI {0} has no http or https origin")]
    Uri(String),
}

/// A client error described without anything secret: the kind, then every source in turn.
pub fn describe_client_error(e: &ClientError) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// The pooled client toward Ratepay; cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct HttpClient {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient").finish_non_exhaustive()
    }
}

struct Shared {
    connector: Connector,
    idle_timeout: Duration,
    origins: Mutex<Vec<Arc<OriginPool>>>,
    reaper: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(reaper) = self.reaper.get_mut().ok().and_then(Option::take) {
            reaper.abort();
        }
    }
}

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
    HttpClient {
        shared: Arc::new(Shared {
            connector,
            idle_timeout: config.pool_idle_timeout,
            origins: Mutex::new(Vec::new()),
            reaper: Mutex::new(None),
        }),
    }
}

impl HttpClient {
    /// The pool of `uri`'s origin (scheme and authority), made on first use. Resolve it once
    /// and keep it where requests go to one origin again and again.
    pub fn origin(&self, uri: &Uri) -> Result<Origin, ClientError> {
        let (scheme, authority) = match (uri.scheme(), uri.authority()) {
            (Some(s), Some(a)) if *s == Scheme::HTTP || *s == Scheme::HTTPS => (s, a),
            _ => return Err(ClientError::Uri(redacted(uri))),
        };
        // As browsers and the legacy client send it: the scheme's default port is left out.
        let default_port = if *scheme == Scheme::HTTPS { 443 } else { 80 };
        let host = match authority.port_u16() {
            Some(port) if port == default_port => HeaderValue::from_str(authority.host()),
            _ => HeaderValue::from_str(authority.as_str()),
        }
        .map_err(|_| ClientError::Uri(redacted(uri)))?;
        let mut origins = lock(&self.shared.origins);
        if let Some(pool) = origins
            .iter()
            .find(|p| p.scheme == *scheme && p.authority == *authority)
        {
            return Ok(Origin(pool.clone()));
        }
        let pool = Arc::new(OriginPool {
            scheme: scheme.clone(),
            authority: authority.clone(),
            host,
            connector: self.shared.connector.clone(),
            pooled: origins.len() < MAX_ORIGINS,
            idle_timeout: self.shared.idle_timeout,
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
        });
        if pool.pooled {
            origins.push(pool.clone());
            drop(origins);
            self.start_reaper();
        }
        Ok(Origin(pool))
    }

    /// Sends `req` (an absolute URI) on a pooled connection to its origin.
    pub async fn request(
        &self,
        req: Request<ReqBody>,
    ) -> Result<Response<PooledBody>, ClientError> {
        let origin = self.origin(req.uri())?;
        origin.send(req).await
    }

    /// One task per client closes connections idle for longer than `pool_idle_timeout`, so a
    /// quiet origin does not keep its sockets open for good. It holds the client weakly and ends
    /// with it.
    fn start_reaper(&self) {
        let mut reaper = lock(&self.shared.reaper);
        if reaper.is_some() || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let weak = Arc::downgrade(&self.shared);
        let every = (self.shared.idle_timeout / 2).max(Duration::from_millis(100));
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else { return };
                let origins = lock(&shared.origins).clone();
                drop(shared);
                for pool in origins {
                    pool.close_expired(Instant::now());
                }
            }
        });
        *reaper = Some(task.abort_handle());
    }
}

/// A URI for an error message: scheme, authority and path only (a query may carry anything).
fn redacted(uri: &Uri) -> String {
    format!(
        "{}{}",
        uri.authority().map_or("", |a| a.as_str()),
        uri.path()
    )
}

/// A poisoned lock still holds a consistent list (every critical section is a push, a pop or
/// a truncation), so it is used as it is.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One origin's connections; see [`HttpClient::origin`].
#[derive(Clone)]
pub struct Origin(Arc<OriginPool>);

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Origin").field(&self.0.authority).finish()
    }
}

struct OriginPool {
    scheme: Scheme,
    authority: http::uri::Authority,
    /// `Host` for HTTP/1 requests that have none.
    host: HeaderValue,
    connector: Connector,
    /// False past [`MAX_ORIGINS`]: every request opens and closes a connection of its own.
    pooled: bool,
    idle_timeout: Duration,
    /// Idle HTTP/1 connections, oldest first; taken from the end (the warmest).
    idle: Mutex<Vec<Idle>>,
    /// The shared connection once the origin negotiated HTTP/2.
    h2: Mutex<Option<http2::SendRequest<ReqBody>>>,
}

struct Idle {
    tx: http1::SendRequest<ReqBody>,
    since: Instant,
}

/// A connection ready for one request.
enum Conn {
    H1(http1::SendRequest<ReqBody>),
    H2(http2::SendRequest<ReqBody>),
}

impl OriginPool {
    /// An idle connection that is still open, or none.
    fn take_idle(&self, now: Instant) -> Option<http1::SendRequest<ReqBody>> {
        if !self.pooled {
            return None;
        }
        let mut idle = lock(&self.idle);
        while let Some(c) = idle.pop() {
            if now.saturating_duration_since(c.since) >= self.idle_timeout {
                // Everything before it is older still.
                idle.clear();
                return None;
            }
            if !c.tx.is_closed() {
                return Some(c.tx);
            }
        }
        None
    }

    fn shared_h2(&self) -> Option<http2::SendRequest<ReqBody>> {
        let mut h2 = lock(&self.h2);
        match &*h2 {
            Some(tx) if !tx.is_closed() => Some(tx.clone()),
            Some(_) => {
                *h2 = None;
                None
            }
            None => None,
        }
    }

    /// Puts a connection whose answer was read in full back at the warm end of the list.
    fn give_back(&self, tx: http1::SendRequest<ReqBody>) {
        if !self.pooled || tx.is_closed() {
            return;
        }
        let mut idle = lock(&self.idle);
        if idle.len() < MAX_IDLE_PER_ORIGIN {
            idle.push(Idle {
                tx,
                since: Instant::now(),
            });
        }
    }

    fn close_expired(&self, now: Instant) {
        let mut idle = lock(&self.idle);
        let fresh = idle
            .iter()
            .position(|c| now.saturating_duration_since(c.since) < self.idle_timeout)
            .unwrap_or(idle.len());
        idle.drain(..fresh);
        idle.retain(|c| !c.tx.is_closed());
    }

    /// Opens a connection: TCP (and TLS, whose ALPN picks the protocol), then hyper's handshake;
    /// its connection task runs on its own until the connection closes.
    async fn connect(&self) -> Result<Conn, ClientError> {
        use tower::Service;
        let uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| ClientError::Connect(e.into()))?;
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(ClientError::Connect)?;
        let io: Io = connector.call(uri).await.map_err(ClientError::Connect)?;
        if io.connected().is_negotiated_h2() {
            let (tx, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(ClientError::Request)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                }
            });
            if self.pooled {
                *lock(&self.h2) = Some(tx.clone());
            }
            Ok(Conn::H2(tx))
        } else {
            let (tx, conn) = http1::handshake(io).await.map_err(ClientError::Request)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream connection ended");
                }
            });
            Ok(Conn::H1(tx))
        }
    }
}

impl Origin {
    /// Sends `req` to this origin. Its URI may be absolute or only a path and query; the origin
    /// decides the scheme and authority (and `Host`, over HTTP/1).
    pub async fn send(&self, req: Request<ReqBody>) -> Result<Response<PooledBody>, ClientError> {
        let pool = &self.0;
        let mut req = req;
        loop {
            let (conn, reused) = match pool.shared_h2() {
                Some(tx) => (Conn::H2(tx), true),
                None => match pool.take_idle(Instant::now()) {
                    Some(tx) => (Conn::H1(tx), true),
                    None => (pool.connect().await?, false),
                },
            };
            match conn {
                Conn::H1(mut tx) => {
                    if tx.ready().await.is_err() {
                        // Closed while idle, before anything was written: take another.
                        if reused {
                            continue;
                        }
                        return Err(ClientError::Connect(
                            "the upstream closed the connection before the request".into(),
                        ));
                    }
                    let uri = std::mem::take(req.uri_mut());
                    *req.uri_mut() = match uri.path_and_query() {
                        Some(pq) if uri.scheme().is_some() => Uri::from(pq.clone()),
                        Some(_) => uri,
                        None => Uri::from_static("/"),
                    };
                    *req.version_mut() = Version::HTTP_11;
                    req.headers_mut()
                        .entry(HOST)
                        .or_insert_with(|| pool.host.clone());
                    match tx.try_send_request(req).await {
                        Ok(resp) => {
                            let back = pool.pooled.then(|| (tx, self.0.clone()));
                            return Ok(resp.map(|body| PooledBody::new(body, back)));
                        }
                        Err(mut e) => match e.take_message() {
                            // Never written: safe to send on another connection, once the
                            // connection was one that had been idle (a fresh one failing is
                            // the upstream's answer).
                            Some(unsent) if reused => {
                                req = unsent;
                                continue;
                            }
                            _ => return Err(ClientError::Request(e.into_error())),
                        },
                    }
                }
                Conn::H2(mut tx) => {
                    if tx.ready().await.is_err() {
                        lock(&pool.h2).take();
                        if reused {
                            continue;
                        }
                        return Err(ClientError::Connect(
                            "the upstream closed the connection before the request".into(),
                        ));
                    }
                    let pq = req
                        .uri()
                        .path_and_query()
                        .cloned()
                        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
                    let mut parts = http::uri::Parts::default();
                    parts.scheme = Some(pool.scheme.clone());
                    parts.authority = Some(pool.authority.clone());
                    parts.path_and_query = Some(pq);
                    *req.uri_mut() = Uri::from_parts(parts)
                        .map_err(|_| ClientError::Uri(pool.authority.to_string()))?;
                    *req.version_mut() = Version::HTTP_2;
                    req.headers_mut().remove(HOST);
                    match tx.try_send_request(req).await {
                        Ok(resp) => return Ok(resp.map(|body| PooledBody::new(body, None))),
                        Err(mut e) => match e.take_message() {
                            Some(unsent) if reused => {
                                lock(&pool.h2).take();
                                req = unsent;
                                continue;
                            }
                            _ => return Err(ClientError::Request(e.into_error())),
                        },
                    }
                }
            }
        }
    }
}

/// An upstream answer's body. Over HTTP/1 it holds its connection, which goes back to the pool
/// once the last frame is read (or the body is dropped having been read to its end); a body
/// dropped earlier closes the connection with it.
pub struct PooledBody {
    inner: Incoming,
    back: Option<(http1::SendRequest<ReqBody>, Arc<OriginPool>)>,
}

impl PooledBody {
    fn new(inner: Incoming, back: Option<(http1::SendRequest<ReqBody>, Arc<OriginPool>)>) -> Self {
        let mut body = PooledBody { inner, back };
        if http_body::Body::is_end_stream(&body.inner) {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some((tx, pool)) = self.back.take() {
            pool.give_back(tx);
        }
    }
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody").finish_non_exhaustive()
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            None => self.release(),
            Some(Ok(_)) if self.inner.is_end_stream() => self.release(),
            // A failed body leaves its connection in no known state.
            Some(Err(_)) => self.back = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use hyper::service::service_fn;

    /// An upstream on 127.0.0.1:0 that counts its connections and answers every request with
    /// the `Host` it got and how many requests its connection served; `/close` answers with
    /// `Connection: close`, `/big` with 64 KiB.
    async fn upstream() -> (Uri, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let served = Arc::new(AtomicUsize::new(0));
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let n = served.fetch_add(1, Ordering::SeqCst) + 1;
                        async move {
                            let host = req.headers().get(HOST).cloned();
                            let body = match req.uri().path() {
                                "/big" => Bytes::from(vec![b'x'; 64 * 1024]),
                                _ => Bytes::from(format!("{host:?} {n}")),
                            };
                            let mut resp = Response::new(Full::new(body));
                            if req.uri().path() == "/close" {
                                resp.headers_mut()
                                    .insert("connection", HeaderValue::from_static("close"));
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (format!("http://{addr}").parse().unwrap(), accepted)
    }

    fn client(idle: Duration) -> HttpClient {
        build(&UpstreamClientConfig {
            pool_idle_timeout: idle,
            ..UpstreamClientConfig::default()
        })
    }

    async fn get(origin: &Origin, path: &str) -> String {
        let req = Request::get(path).body(Full::new(Bytes::new())).unwrap();
        let resp = origin.send(req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn one_connection_serves_requests_in_turn_with_the_origins_host() {
        let (base, accepted) = upstream().await;
        let c = client(Duration::from_secs(90));
        let origin = c.origin(&base).unwrap();
        let host = base.authority().unwrap().as_str().to_owned();
        for n in 1..=5 {
            assert_eq!(get(&origin, "/tx?a=1").await, format!("Some({host:?}) {n}"));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // The same origin asked for by URI is the same pool.
        let resp = c
            .request(
                Request::get(base.to_string() + "x")
                    .body(Full::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, format!("Some({host:?}) 6"));
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_open_what_they_need_and_every_connection_is_reused_after() {
        let (base, accepted) = upstream().await;
        let origin = client(Duration::from_secs(90)).origin(&base).unwrap();
        let calls: Vec<_> = (0..32)
            .map(|_| {
                let origin = origin.clone();
                tokio::spawn(async move { get(&origin, "/").await })
            })
            .collect();
        for call in calls {
            assert!(call.await.unwrap().starts_with("Some("));
        }
        let opened = accepted.load(Ordering::SeqCst);
        assert!((1..=32).contains(&opened), "{opened}");
        assert_eq!(lock(&origin.0.idle).len(), opened, "every one went back");
        // In turn, the idle ones serve: no new connection.
        for _ in 0..64 {
            get(&origin, "/").await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), opened);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closes_or_whose_body_was_dropped_is_not_reused() {
        let (base, accepted) = upstream().await;
        let origin = client(Duration::from_secs(90)).origin(&base).unwrap();
        get(&origin, "/close").await;
        // The next request never fails for it: a new connection.
        assert!(get(&origin, "/").await.ends_with(" 1"));
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // An answer dropped unread takes its connection with it.
        let req = Request::get("/big").body(Full::default()).unwrap();
        drop(origin.send(req).await.unwrap());
        assert!(get(&origin, "/").await.ends_with(" 1"));
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        // One read to its end goes back.
        assert_eq!(get(&origin, "/big").await.len(), 64 * 1024);
        assert!(get(&origin, "/").await.ends_with(" 3"));
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn connections_idle_past_the_timeout_are_closed_not_reused() {
        let (base, accepted) = upstream().await;
        let idle = Duration::from_secs(30);
        let origin = client(idle).origin(&base).unwrap();
        get(&origin, "/").await;
        // Within the timeout it is taken again; at the timeout it is not.
        let tx = origin
            .0
            .take_idle(Instant::now())
            .expect("the idle connection");
        origin.0.give_back(tx);
        let returned = Instant::now();
        assert!(origin.0.take_idle(returned + idle).is_none());
        get(&origin, "/").await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // The reaper's sweep closes what has been idle for the timeout.
        origin.0.close_expired(Instant::now() + idle);
        assert!(lock(&origin.0.idle).is_empty());
        get(&origin, "/").await;
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error_and_a_non_http_uri_is_refused() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let c = client(Duration::from_secs(90));
        let uri: Uri = format!("http://{addr}/").parse().unwrap();
        let e = c
            .request(Request::get(uri).body(Full::default()).unwrap())
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Connect(_)), "{e:?}");
        assert!(
            describe_client_error(&e).starts_with("connection failed: "),
            "{e}"
        );
        let e = c
            .origin(&"ftp://example.com/x?secret=1".parse().unwrap())
            .unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(c.origin(&"/relative".parse().unwrap()).is_err());
    }
}
