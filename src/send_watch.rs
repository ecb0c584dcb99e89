//! A connection's stream, watched for a client that reads nothing of what is written to it.
//!
//! hyper has no write timeout. Once an answer is ready, a client that never reads (a zero TCP
//! window) leaves hyper's flush pending for good, and `server::serve`'s own checks end when it
//! shuts the connection down gracefully, which waits for that flush. A client that pipelines
//! requests and reads nothing holds its connection forever; `listen.max_connections` of them
//! close the listener to everyone. So, like nginx's `send_timeout`, a write that stays blocked
//! for `listen.send_timeout_ms` closes the connection: [`Watched`] notes when a write or flush
//! first returned `Pending` and registers that instant plus the timeout on the connection's
//! clock, whose timer then wakes `serve` to look at [`SendWatch::blocked_for`]. Any write that
//! moves a byte, or a flush that completes, clears it. On the hot path this is one relaxed load
//! per write; the clock is read only when a write blocks.
//!
//! It also notes when the connection's first byte arrived, and whether it opened with the
//! HTTP/2 preface (`PRI`): until a first request is served, `serve` bounds the head begun by
//! that byte by `listen.header_timeout_ms` (HTTP/2: `idle_timeout_ms` for the first stream), as
//! it does every later head, and not only by `first_request_timeout_ms` from the accept, which
//! an operator may raise to an hour for clients that connect ahead of need. One relaxed load per
//! read; the clock is read once, at the first byte.

use std::{
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::conn_clock::ConnClock;

/// How an HTTP/2 connection's preface starts (RFC 9113 §3.4); no HTTP/1 method is `PRI`.
const PREFACE_START: &[u8] = b"PRI ";

/// What [`Watched`] tells the connection's owner.
#[derive(Debug)]
pub struct SendWatch {
    origin: Instant,
    /// Since when writes have been blocked: microseconds since `origin`, plus one (0: they
    /// are not).
    blocked_since: AtomicU64,
    /// When the first byte was read: microseconds since `origin`, plus one (0: none yet).
    first_read: AtomicU64,
    /// The first bytes read were the HTTP/2 preface's.
    h2_preface: AtomicBool,
}

impl SendWatch {
    /// A watch for a connection accepted at `origin`.
    pub fn new(origin: Instant) -> Self {
        SendWatch {
            origin,
            blocked_since: AtomicU64::new(0),
            first_read: AtomicU64::new(0),
            h2_preface: AtomicBool::new(false),
        }
    }

    /// When the connection's first byte was read, and whether it opened with the HTTP/2
    /// preface; `None` before any byte.
    pub fn first_read(&self) -> Option<(Instant, bool)> {
        match self.first_read.load(Ordering::Relaxed) {
            0 => None,
            us => Some((self.at(us), self.h2_preface.load(Ordering::Relaxed))),
        }
    }

    /// Notes the first bytes read, once.
    fn read(&self, bytes: &[u8]) {
        if bytes.is_empty() || self.first_read.load(Ordering::Relaxed) != 0 {
            return;
        }
        // A first read shorter than `PRI ` (a client trickling its bytes) counts as HTTP/1,
        // whose bound is the stricter.
        self.h2_preface
            .store(bytes.starts_with(PREFACE_START), Ordering::Relaxed);
        self.first_read
            .store(self.since_origin(Instant::now()), Ordering::Relaxed);
    }

    /// `now` as microseconds since `origin`, plus one.
    fn since_origin(&self, now: Instant) -> u64 {
        let us = now.saturating_duration_since(self.origin).as_micros();
        u64::try_from(us).unwrap_or(u64::MAX - 1) + 1
    }

    /// How long writes have been blocked at `now`; `None` when they are not.
    pub fn blocked_for(&self, now: Instant) -> Option<Duration> {
        match self.blocked_since.load(Ordering::Relaxed) {
            0 => None,
            us => Some(now.saturating_duration_since(self.at(us))),
        }
    }

    fn at(&self, us_plus_one: u64) -> Instant {
        self.origin + Duration::from_micros(us_plus_one - 1)
    }

    fn moved(&self) {
        if self.blocked_since.load(Ordering::Relaxed) != 0 {
            self.blocked_since.store(0, Ordering::Relaxed);
        }
    }

    /// A write or flush is pending: from the first one on, the connection's timer is due at
    /// the instant it started plus `timeout` (registered again after every firing).
    fn blocked(&self, clock: &ConnClock, timeout: Duration) {
        let since = match self.blocked_since.load(Ordering::Relaxed) {
            0 => {
                let now = Instant::now();
                self.blocked_since
                    .store(self.since_origin(now), Ordering::Relaxed);
                now
            }
            us => self.at(us),
        };
        clock.want(since + timeout);
    }

    fn note<T>(
        &self,
        r: &Poll<io::Result<T>>,
        progress: bool,
        clock: &ConnClock,
        timeout: Duration,
    ) {
        match r {
            Poll::Ready(Ok(_)) if progress => self.moved(),
            Poll::Pending => self.blocked(clock, timeout),
            Poll::Ready(_) => {}
        }
    }
}

pin_project_lite::pin_project! {
    /// `io` with its writes watched, and its first read noted (see the module docs).
    pub struct Watched<I> {
        #[pin]
        io: I,
        watch: Arc<SendWatch>,
        clock: Arc<ConnClock>,
        timeout: Duration,
    }
}

impl<I> Watched<I> {
    /// `io`, reporting to `watch` and due on `clock` once a write has been blocked `timeout`.
    pub fn new(io: I, watch: Arc<SendWatch>, clock: Arc<ConnClock>, timeout: Duration) -> Self {
        Watched {
            io,
            watch,
            clock,
            timeout,
        }
    }
}

impl<I: AsyncRead> AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.io.poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) {
            this.watch.read(&buf.filled()[before..]);
        }
        r
    }
}

impl<I: AsyncWrite> AsyncWrite for Watched<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.io.poll_write(cx, buf);
        let progress = matches!(r, Poll::Ready(Ok(n)) if n > 0);
        this.watch.note(&r, progress, this.clock, *this.timeout);
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.io.poll_write_vectored(cx, bufs);
        let progress = matches!(r, Poll::Ready(Ok(n)) if n > 0);
        this.watch.note(&r, progress, this.clock, *this.timeout);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let r = this.io.poll_flush(cx);
        this.watch.note(&r, true, this.clock, *this.timeout);
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let r = this.io.poll_shutdown(cx);
        this.watch.note(&r, true, this.clock, *this.timeout);
        r
    }
}
