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

use std::{
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::conn_clock::ConnClock;

/// What [`Watched`] tells the connection's owner.
#[derive(Debug)]
pub struct SendWatch {
    origin: Instant,
    /// Since when writes have been blocked: microseconds since `origin`, plus one (0: they
    /// are not).
    blocked_since: AtomicU64,
}

impl SendWatch {
    /// A watch for a connection accepted at `origin`.
    pub fn new(origin: Instant) -> Self {
        SendWatch {
            origin,
            blocked_since: AtomicU64::new(0),
        }
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
                let us = now.saturating_duration_since(self.origin).as_micros();
                let us = u64::try_from(us).unwrap_or(u64::MAX - 1);
                self.blocked_since.store(us + 1, Ordering::Relaxed);
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
    /// `io` with its writes watched (see the module docs); reads pass straight through.
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
        self.project().io.poll_read(cx, buf)
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
