//! Accept loops for the proxy and admin listeners, connection settings, graceful drain.
//!
//! [`run`] takes bound listeners (binding and signals stay in main.rs; tests bind port 0) and
//! serves until `shutdown` resolves: then it stops accepting, lets in-flight requests finish
//! within the grace period, and returns.
//!
//! The proxy listener may serve TLS ([`Listener::tls`]): the handshake runs on the connection's
//! own task under a deadline, so a slow client never holds up the accept loop, and the client
//! certificate's identities (mTLS) are handed with every request on it, in its [`Peer`].
//! A plain-TCP listener takes exactly the path it took before TLS existed.
//!
//! Every connection is bounded (`[listen]`): its first request head must arrive within
//! `first_request_timeout_ms` of the accept, it is closed after `idle_timeout_ms` with no request
//! in flight, and the proxy listener holds at most `max_connections` (the admin listener has a
//! small cap of its own, so it keeps answering while the proxy listener is flooded). A
//! connection refused at the cap is closed at once and counted.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{net::TcpListener, sync::Semaphore};

use crate::{
    body::Body,
    config::ConnectionLimits,
    conn_clock::{ConnClock, ConnTimer},
    context::Peer,
    gateway::READY_TOKEN_WAIT,
    metrics::{ConnectionLabels, ListenerLabels, Metrics},
    reload::LiveGateway,
    send_watch::{SendWatch, Watched},
    stream_watch::{StreamExec, StreamWatch},
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
///
/// Connection bounds (`[listen]` first request, idle, cap) come from the gateway's
/// configuration as it was at start; they are restart-only.
pub async fn run(
    proxy: impl Into<Listener>,
    admin: Option<TcpListener>,
    gateway: impl Into<LiveGateway>,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let gateway: LiveGateway = gateway.into();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (limits, metrics) = {
        let gw = gateway.current();
        (gw.connection_limits(), gw.metrics_handle())
    };
    let mut tasks = tokio::task::JoinSet::new();
    let proxy_conns = Connections::new("proxy", limits, limits.max, metrics.clone());
    {
        let gw = gateway.clone();
        tasks.spawn(accept_loop(
            proxy.into(),
            stop_rx.clone(),
            proxy_conns.clone(),
            move |req, peer| {
                // The gateway current at arrival serves the whole request, reload or not.
                let gw = gw.current();
                async move { gw.handle(req, peer).await }
            },
        ));
    }
    let admin_conns = Connections::new("admin", limits, ConnectionLimits::ADMIN_MAX, metrics);
    if let Some(admin) = admin {
        let gw = gateway.clone();
        tasks.spawn(accept_loop(
            Listener::plain(admin),
            stop_rx.clone(),
            admin_conns.clone(),
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
    // Every connection holds a permit of its listener until it is closed.
    let drained = async {
        let _ = proxy_conns.all_closed().await;
        let _ = admin_conns.all_closed().await;
    };
    match tokio::time::timeout(grace, drained).await {
        Ok(()) => tracing::info!("all connections drained"),
        Err(_) => tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "grace period over; closing remaining connections"
        ),
    }
}

/// One listener's open connections: a permit each (the cap), their bounds, their metrics.
#[derive(Clone)]
struct Connections {
    name: &'static str,
    permits: Arc<Semaphore>,
    max: usize,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    /// When the cap was last logged (milliseconds since `epoch`), so a flood logs once a second.
    last_cap_log: Arc<AtomicU64>,
    epoch: Instant,
}

impl Connections {
    fn new(
        name: &'static str,
        limits: ConnectionLimits,
        max: usize,
        metrics: Arc<Metrics>,
    ) -> Connections {
        Connections {
            name,
            permits: Arc::new(Semaphore::new(max)),
            max,
            limits,
            metrics,
            last_cap_log: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
        }
    }

    /// A permit for a new connection, or `None` at the cap (counted, and logged once a second).
    fn admit(&self) -> Option<OpenConnection> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let gauge = self
                    .metrics
                    .connections_open
                    .get_or_create(&ListenerLabels {
                        listener: self.name,
                    })
                    .clone();
                gauge.inc();
                Some(OpenConnection {
                    _permit: permit,
                    gauge,
                })
            }
            Err(_) => {
                self.closed("cap");
                let now = self.epoch.elapsed().as_millis() as u64;
                let last = self.last_cap_log.load(Ordering::Relaxed);
                if (last == 0 || now.saturating_sub(last) >= 1000)
                    && self
                        .last_cap_log
                        .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    tracing::warn!(
                        listener = self.name,
                        max_connections = self.max,
                        "connection cap reached: new connections are closed at accept until open ones close (listen.max_connections)"
                    );
                }
                None
            }
        }
    }

    fn closed(&self, reason: &'static str) {
        self.metrics
            .connections_closed
            .get_or_create(&ConnectionLabels {
                listener: self.name,
                reason,
            })
            .inc();
    }

    /// hyper's executor for this listener's h2 streams: reset after `send_timeout` without
    /// the client taking their answer (see `stream_watch`), counted here.
    fn stream_exec(&self) -> StreamExec {
        let reset = self
            .metrics
            .streams_reset
            .get_or_create(&ConnectionLabels {
                listener: self.name,
                reason: "send_timeout",
            })
            .clone();
        StreamExec::new(
            self.limits.send_timeout,
            Arc::new(move || {
                reset.inc();
            }),
        )
    }

    /// Resolves once every connection of this listener has closed.
    async fn all_closed(&self) -> Result<(), tokio::sync::AcquireError> {
        let n = u32::try_from(self.max).unwrap_or(u32::MAX);
        self.permits.acquire_many(n).await.map(drop)
    }
}

/// Held by a connection's task while it is open.
struct OpenConnection {
    _permit: tokio::sync::OwnedSemaphorePermit,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

async fn accept_loop<F, Fut>(
    listener: Listener,
    mut stop: tokio::sync::watch::Receiver<bool>,
    conns: Connections,
    handler: F,
) where
    F: Fn(Request<Incoming>, Peer) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let mut builder = auto::Builder::new(conns.stream_exec());
    // No header read timeout of hyper's: it armed a timer (a boxed sleep, registered and
    // removed again) for every request head. `serve`'s own deadline bounds the wait for a head
    // instead (`listen.header_timeout_ms`), one timer per connection.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        // A peer that stops answering PINGs mid-request is gone: close its connection.
        .keep_alive_interval(Some(H2_PING_INTERVAL))
        .keep_alive_timeout(H2_PING_INTERVAL);
    let Listener { tcp: listener, tls } = listener;
    let builder = Arc::new(builder);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, listener = conns.name, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let accepted = Instant::now();
        // At the cap the connection is closed at once: better than EMFILE for everyone.
        let Some(open) = conns.admit() else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (handler, builder, stop) = (handler.clone(), builder.clone(), stop.clone());
        let conns = conns.clone();
        let Some(tls) = &tls else {
            tokio::spawn(async move {
                let _open = open;
                serve(stream, peer, None, builder, stop, handler, &conns, accepted).await;
            });
            continue;
        };
        // The handshake runs on the connection's task, under its own deadline; a shutdown
        // closes a connection still in its handshake (no request was sent on it yet).
        let tls = tls.clone();
        tokio::spawn(async move {
            let _open = open;
            let mut stopping = stop.clone();
            let handshake = tokio::select! {
                h = tls.handshake(stream, peer) => h,
                _ = stopping.wait_for(|stopping| *stopping) => None,
            };
            if let Some((stream, identity)) = handshake {
                serve(
                    stream, peer, identity, builder, stop, handler, &conns, accepted,
                )
                .await;
            }
        });
    }
}

/// h2 keep-alive: a PING this often while a connection is open, and as long to answer it.
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);

/// What a connection's requests tell its timers: requests in flight, whether one ever
/// arrived (and was HTTP/2), and when the last one finished (milliseconds since accept).
#[derive(Default)]
struct Activity {
    in_flight: AtomicUsize,
    served: AtomicBool,
    h2: AtomicBool,
    last_done_ms: AtomicU64,
}

pin_project_lite::pin_project! {
    /// An answer's body, keeping its request in flight until it ends or is dropped.
    struct UntilEnd {
        #[pin]
        body: Body,
        in_flight: Option<InFlightOnConnection>,
        // An h2 stream's: told when a frame goes to hyper (see `stream_watch`).
        stream: Option<Arc<StreamWatch>>,
        // h2: what is left of a data frame handed to hyper in pieces.
        rest: bytes::Bytes,
    }
}

/// The largest piece of an answer handed to hyper's h2 at a time (its default frame size).
/// hyper asks for the next frame only once the client has granted window for all of the last
/// one, so a large upstream chunk (hyper reads up to ~400 KiB at once) would look like a stall
/// to the stream watch from a client that reads slowly but reads, and the last one, buffered
/// whole, would be what a client granting no window holds after its stream's task has ended.
const H2_PIECE: usize = 16 * 1024;

impl http_body::Body for UntilEnd {
    type Data = bytes::Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        let this = self.project();
        let Some(stream) = this.stream else {
            // HTTP/1: passed through.
            let frame = this.body.poll_frame(cx);
            if matches!(frame, Poll::Ready(None | Some(Err(_)))) {
                this.in_flight.take();
            }
            return frame;
        };
        if !this.rest.is_empty() {
            let piece = this.rest.split_to(this.rest.len().min(H2_PIECE));
            stream.handed();
            return Poll::Ready(Some(Ok(http_body::Frame::data(piece))));
        }
        match this.body.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                stream.handed();
                let frame = match frame.into_data() {
                    Ok(mut data) => {
                        if data.len() > H2_PIECE {
                            *this.rest = data.split_off(H2_PIECE);
                        }
                        http_body::Frame::data(data)
                    }
                    Err(trailers) => trailers,
                };
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                stream.waiting();
                Poll::Pending
            }
            end => {
                stream.waiting();
                this.in_flight.take();
                end
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let (inner, rest) = (self.body.size_hint(), self.rest.len() as u64);
        // Upper first: `set_lower` panics above the upper bound, `set_upper` below the lower.
        let mut hint = http_body::SizeHint::new();
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(rest));
        }
        hint.set_lower(inner.lower().saturating_add(rest));
        hint
    }
}

/// Marks a request in flight on its connection until dropped (answered, or cut off).
struct InFlightOnConnection {
    activity: Arc<Activity>,
    accepted: Instant,
}

impl Drop for InFlightOnConnection {
    fn drop(&mut self) {
        self.activity.last_done_ms.store(
            self.accepted.elapsed().as_millis() as u64,
            Ordering::Relaxed,
        );
        self.activity.in_flight.fetch_sub(1, Ordering::Release);
    }
}

/// Serves one connection (plain, or after its TLS handshake) until it closes. The client
/// certificate's identities, when there are any, go with every request in its [`Peer`].
///
/// hyper-util's auto builder has no timer while it sniffs the protocol, and h2 none until the
/// first HEADERS: a connection that sends nothing, or trickles the preface, would stay open for
/// good. So each connection has its own deadline: its first request head must arrive within
/// `first_request_timeout` of the accept (else it is dropped), and once no request has been in
/// flight for `idle_timeout` it is shut down gracefully (h2: GOAWAY). An HTTP/1 connection
/// must also send its next request head within `header_timeout` of the end of its last answer
/// (a request is in flight until its answer's body ends): a
/// graceful shutdown closes an HTTP/1 connection at once when no request head has been read
/// whole, so one trickling a head a byte at a time is closed then too (hyper's own header
/// read timeout, which this replaces, armed a timer per request; this is one per connection,
/// re-armed only when it fires). Any connection whose writes stay blocked for `send_timeout`
/// (the client reads nothing) is dropped: see `send_watch`. One shut down for idleness gets
/// `send_timeout` to send what it still holds (an h2 answer's last piece, which a client
/// granting no window would hold for good), then is dropped; h2 streams whose client takes
/// none of their answer are reset on their own (`stream_watch`).
#[allow(clippy::too_many_arguments)]
async fn serve<I, F, Fut>(
    io: I,
    peer: SocketAddr,
    identity: Option<Arc<PeerIdentity>>,
    builder: Arc<auto::Builder<StreamExec>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    handler: F,
    conns: &Connections,
    accepted: Instant,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>, Peer) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let seen = activity.clone();
    // This task polls the connection and, through hyper, its HTTP/1 requests: the clock serves
    // the deadlines of futures polled by it alone.
    let owner = std::future::poll_fn(|cx| std::task::Poll::Ready(cx.waker().clone())).await;
    let clock = Arc::new(ConnClock::new(accepted, owner));
    let from = Peer {
        addr: peer,
        identity,
        clock: Some(clock.clone()),
    };
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let mut from = from.clone();
        seen.served.store(true, Ordering::Relaxed);
        let h2 = req.version() == http::Version::HTTP_2;
        if h2 {
            seen.h2.store(true, Ordering::Relaxed);
            // Its streams run on tasks of their own, which this connection's task does not
            // poll: tokio timers for their deadlines (see `conn_clock`).
            from.clock = None;
        }
        seen.in_flight.fetch_add(1, Ordering::Acquire);
        let in_flight = InFlightOnConnection {
            activity: seen.clone(),
            accepted,
        };
        let handler = handler.clone();
        async move {
            let resp = handler(req, from).await;
            // h2: from the head on, the answer waits for the client to take it.
            let stream = if h2 { StreamWatch::current() } else { None };
            if let Some(stream) = &stream {
                stream.handed();
            }
            // In flight until its body has been handed to hyper whole, not only until its
            // head: a body that streams for longer than `header_timeout` keeps its connection.
            Ok::<_, Infallible>(resp.map(|body| {
                Body::new(UntilEnd {
                    body,
                    in_flight: Some(in_flight),
                    stream,
                    rest: bytes::Bytes::new(),
                })
            }))
        }
    });
    // A client that reads nothing of its answers is closed after `send_timeout` (see
    // `send_watch`): hyper itself would wait on its flush for good.
    let watch = Arc::new(SendWatch::new(accepted));
    let io = Watched::new(io, watch.clone(), clock.clone(), conns.limits.send_timeout);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .into_owned();
    tokio::pin!(conn);
    let limits = conns.limits;
    let first_deadline = accepted + limits.first_request_timeout;
    // Whichever comes first: the first-request deadline, or the first idle check.
    let deadline = accepted
        + limits
            .first_request_timeout
            .min(limits.idle_timeout)
            .min(limits.header_timeout);
    // One timer for the connection's own checks (below) and its HTTP/1 requests' deadlines;
    // polled after the connection, so it sees what a request registered while polled. Its own
    // checks end (`None`) once a stop shuts the connection down; after an idle shutdown they
    // keep the drain's deadline (below).
    let mut timer = ConnTimer::new(clock, Some(deadline));
    // Shut down for idleness since then: what it still holds has `send_timeout` to go out.
    let mut draining: Option<Instant> = None;
    let mut stopping = false;
    loop {
        tokio::select! {
            biased;
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, peer = %peer, "connection ended with an error");
                }
                return;
            }
            _ = stop.wait_for(|s| *s), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
                // Requests still in flight keep their deadlines; a drain keeps its own.
                if draining.is_none() {
                    timer.set_own(None);
                }
            }
            now = &mut timer => {
                if watch.blocked_for(now).is_some_and(|b| b >= limits.send_timeout) {
                    conns.closed("send_timeout");
                    tracing::debug!(peer = %peer, listener = conns.name, "the client read nothing for listen.send_timeout_ms; closing");
                    return;
                }
                // It may have fired for a request's deadline only: that request sees it when
                // the connection is polled next.
                match timer.own() {
                    Some(own) if own <= now => {}
                    _ => continue,
                }
                // Shut down for idleness, it may only finish sending what it holds: an h2
                // answer's last piece (at most `H2_PIECE` bytes a stream beyond the window the
                // client has granted) that a client granting no window would hold for good.
                // It gets `send_timeout` from the shutdown, or from the end of a request that
                // came in the meantime (h2 takes new streams for a round trip after GOAWAY);
                // progress is not counted, as the client's PINGs would count too.
                if let Some(since) = draining {
                    if activity.in_flight.load(Ordering::Acquire) > 0 {
                        timer.set_own(Some(now + limits.send_timeout));
                        continue;
                    }
                    let last_done = accepted
                        + Duration::from_millis(activity.last_done_ms.load(Ordering::Relaxed));
                    let due = since.max(last_done) + limits.send_timeout;
                    if now < due {
                        timer.set_own(Some(due));
                        continue;
                    }
                    conns.closed("send_timeout");
                    tracing::debug!(peer = %peer, listener = conns.name, "the client took nothing of what its idle connection still held for listen.send_timeout_ms; closing");
                    return;
                }
                if !activity.served.load(Ordering::Relaxed) {
                    // A head once begun must arrive within `header_timeout` of its first byte
                    // (h2: its first stream within `idle_timeout` of the preface), as every
                    // later one must; and within `first_request_timeout` of the accept.
                    let (due, reason) = match watch.first_read() {
                        Some((at, false)) => (at + limits.header_timeout, "header_timeout"),
                        Some((at, true)) => (at + limits.idle_timeout, "idle"),
                        // Looked at again then: a first byte may come meanwhile.
                        None => (now + limits.header_timeout, ""),
                    };
                    let (due, reason) = if first_deadline <= due {
                        (first_deadline, "first_request_timeout")
                    } else {
                        (due, reason)
                    };
                    if now < due || reason.is_empty() {
                        timer.set_own(Some(due));
                        continue;
                    }
                    conns.closed(reason);
                    tracing::debug!(peer = %peer, listener = conns.name, reason, "no first request in time (listen.first_request_timeout_ms, header_timeout_ms or idle_timeout_ms); closing");
                    if reason == "idle" {
                        // An h2 connection made ahead of need: GOAWAY, as for any idle one, so
                        // that a first request racing the close is known to be unprocessed.
                        conn.as_mut().graceful_shutdown();
                        draining = Some(now);
                        timer.set_own(Some(now + limits.send_timeout));
                        continue;
                    }
                    return;
                }
                // HTTP/1 waits at most `header_timeout` for its next head, h2 (whose
                // streams hyper bounds itself) `idle_timeout` for its next stream.
                let (limit, reason) = if activity.h2.load(Ordering::Relaxed)
                    || limits.idle_timeout <= limits.header_timeout
                {
                    (limits.idle_timeout, "idle")
                } else {
                    (limits.header_timeout, "header_timeout")
                };
                let idle_since = accepted
                    + Duration::from_millis(activity.last_done_ms.load(Ordering::Relaxed));
                if activity.in_flight.load(Ordering::Acquire) == 0
                    && now.saturating_duration_since(idle_since) >= limit
                {
                    conns.closed(reason);
                    tracing::debug!(peer = %peer, listener = conns.name, reason, "no request in time; closing");
                    conn.as_mut().graceful_shutdown();
                    draining = Some(now);
                    timer.set_own(Some(now + limits.send_timeout));
                } else if activity.in_flight.load(Ordering::Acquire) == 0 {
                    timer.set_own(Some(idle_since + limit));
                } else {
                    timer.set_own(Some(now + limit));
                }
            }
        }
    }
}

/// `/healthz`, `/readyz`, `/metrics`, `/audit/checkpoint` and `POST /reload` on the admin
/// listener.
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
        // The anchor to copy off the machine: `audit verify --anchor` takes these lines.
        "/audit/checkpoint" => match gw
            .audit_checkpoint()
            .and_then(|c| serde_json::to_vec(&*c).ok())
        {
            Some(mut json) => {
                json.push(b'\n');
                simple(StatusCode::OK, "application/json", json)
            }
            None => crate::error::problem(
                StatusCode::NOT_FOUND,
                "no-audit-checkpoint",
                "No audit checkpoint yet",
                "the audit log has no checkpoint yet; one follows the start record",
                &uuid::Uuid::now_v7().to_string(),
            ),
        },
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
            // Redis away is degraded, not failed: the fallbacks keep the instance serving.
            let redis = match gw.cluster_health() {
                None => "",
                Some(crate::cluster::Health::Up) => "redis: up\n",
                Some(crate::cluster::Health::Degraded) => {
                    "redis: degraded (unreachable; rate limits use their fallback, pauses and \
                     invalidations from other instances resume when it is back)\n"
                }
            };
            if problems.is_empty() {
                simple(StatusCode::OK, "text/plain", format!("ready\n{redis}"))
            } else {
                simple(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready\n{}\n{redis}", problems.join("\n")),
                )
            }
        }
        _ => simple(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /healthz, /readyz, /metrics, /audit/checkpoint or POST /reload\n",
        ),
    }
}

/// A plain-text or JSON response for the admin endpoints.
pub fn simple(
    status: StatusCode,
    content_type: &'static str,
    text: impl Into<bytes::Bytes>,
) -> Response<Body> {
    let mut resp = Response::new(crate::body::full(text.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;

    use http_body::Body as _;

    use super::*;

    /// An h2 answer's body as `serve` wraps it, over one frame of `len` bytes.
    fn h2_answer(len: usize) -> (UntilEnd, Arc<Activity>) {
        let activity = Arc::new(Activity::default());
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        let body = UntilEnd {
            body: crate::body::full(vec![b'x'; len]),
            in_flight: Some(InFlightOnConnection {
                activity: activity.clone(),
                accepted: Instant::now(),
            }),
            stream: Some(Arc::new(StreamWatch::new())),
            rest: bytes::Bytes::new(),
        };
        (body, activity)
    }

    #[tokio::test]
    async fn an_h2_answer_goes_to_hyper_in_pieces_with_its_size_kept() {
        let (mut body, activity) = h2_answer(2 * H2_PIECE + 100);
        assert_eq!(body.size_hint().exact(), Some(2 * H2_PIECE as u64 + 100));
        let mut pieces = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            let data = frame.unwrap().into_data().unwrap();
            pieces.push(data.len());
            let left: usize = 2 * H2_PIECE + 100 - pieces.iter().sum::<usize>();
            // What hyper reads after each piece: the rest, exactly, and the end only at 0.
            assert_eq!(body.size_hint().exact(), Some(left as u64));
            assert_eq!(body.is_end_stream(), left == 0, "after {pieces:?}");
            assert_eq!(activity.in_flight.load(Ordering::Relaxed), 1, "in flight");
        }
        assert_eq!(pieces, [H2_PIECE, H2_PIECE, 100]);
        assert_eq!(activity.in_flight.load(Ordering::Relaxed), 0, "ended");
    }

    #[tokio::test]
    async fn an_http1_answer_passes_through_whole() {
        let (mut body, _activity) = h2_answer(3 * H2_PIECE);
        body.stream = None;
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap().len(), 3 * H2_PIECE);
    }
}
