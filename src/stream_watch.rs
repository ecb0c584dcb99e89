//! HTTP/2 streams whose answer the client stops taking.
//!
//! `send_watch` closes a connection whose writes stay blocked, but an HTTP/2 client can stall
//! one stream without blocking any write: it grants the stream no flow-control window, and
//! keeps answering PINGs and opening streams. hyper's h2 then waits for window before it asks
//! the answer's body for its next frame, for good; the stream holds its upstream body, its
//! memory and its connection (whose idle check sees a request in flight) as long as the client
//! likes, and `max_concurrent_streams` of them per connection cost the client nothing.
//!
//! So, like Envoy's `stream_idle_timeout` for this direction, a stream whose answer has handed
//! hyper a frame and not been asked for the next one within `listen.send_timeout_ms` is
//! reset (RST_STREAM CANCEL, by dropping it). [`StreamExec`] is the h2 executor: it runs each
//! stream in a [`Guarded`] future, which scopes a [`StreamWatch`] as a task-local while it
//! polls the stream. The answer's body (`server::UntilEnd`) finds it there ([`StreamWatch::
//! current`]) and tells it [`handed`](StreamWatch::handed) when a frame goes to hyper and
//! [`waiting`](StreamWatch::waiting) when the body itself waits for its source (Ratepay's
//! gaps are `upstream_client.body_idle_timeout_ms`'s business, not the client's). The
//! stream's one timer is armed when the answer starts and re-armed only when it fires.
//!
//! hyper asks for the next frame only once the client has granted window for all of the last
//! one, so `UntilEnd` hands large frames over in 16 KiB pieces: a client that reads slowly but
//! reads shows progress at least every 16 KiB, and a stream whose task has ended holds at most
//! that much beyond its window (what `serve` then gives `send_timeout_ms` to go out once the
//! connection is shut down for idleness).
//!
//! Nothing here runs for HTTP/1, whose stalls `send_watch` sees; on an h2 stream it costs a
//! clock read per answer frame.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::{Instant, Sleep};

tokio::task_local! {
    static STREAM: Arc<StreamWatch>;
}

/// What an h2 stream's answer tells its [`Guarded`] task.
#[derive(Debug)]
pub struct StreamWatch {
    origin: Instant,
    /// Since when the answer has waited for hyper to ask for its next frame: microseconds
    /// since `origin`, plus one (0: it is not waiting on the client).
    handed_at: AtomicU64,
}

impl StreamWatch {
    /// A watch whose answer has not started.
    pub(crate) fn new() -> Self {
        StreamWatch {
            origin: Instant::now(),
            handed_at: AtomicU64::new(0),
        }
    }

    /// The watch of the h2 stream being polled; `None` outside one (HTTP/1).
    pub fn current() -> Option<Arc<StreamWatch>> {
        STREAM.try_with(Arc::clone).ok()
    }

    /// The answer handed hyper its head or a frame: from now on it waits for the client.
    pub fn handed(&self) {
        let us = Instant::now()
            .saturating_duration_since(self.origin)
            .as_micros();
        let us = u64::try_from(us).unwrap_or(u64::MAX - 1) + 1;
        self.handed_at.store(us, Ordering::Relaxed);
    }

    /// The answer waits for its own source, or has ended: not the client's stall.
    pub fn waiting(&self) {
        self.handed_at.store(0, Ordering::Relaxed);
    }

    fn handed_since(&self) -> Option<Instant> {
        match self.handed_at.load(Ordering::Relaxed) {
            0 => None,
            us => Some(self.origin + Duration::from_micros(us - 1)),
        }
    }
}

/// hyper's executor for h2 streams: each runs on a task of its own, reset once its answer has
/// waited `timeout` for the client (see the module docs); `on_stall` counts it.
#[derive(Clone)]
pub struct StreamExec {
    timeout: Duration,
    on_stall: Arc<dyn Fn() + Send + Sync>,
}

impl StreamExec {
    /// Streams reset after `timeout` without the client taking their answer.
    pub fn new(timeout: Duration, on_stall: Arc<dyn Fn() + Send + Sync>) -> Self {
        StreamExec { timeout, on_stall }
    }
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        tokio::spawn(Guarded {
            stream,
            watch: Arc::new(StreamWatch::new()),
            timer: None,
            timeout: self.timeout,
            on_stall: self.on_stall.clone(),
        });
    }
}

pin_project_lite::pin_project! {
    /// One h2 stream's task: the stream, polled with its [`StreamWatch`] in scope, and
    /// dropped (reset) once its answer has waited `timeout` for the client.
    pub struct Guarded<F> {
        #[pin]
        stream: F,
        watch: Arc<StreamWatch>,
        timer: Option<Pin<Box<Sleep>>>,
        timeout: Duration,
        on_stall: Arc<dyn Fn() + Send + Sync>,
    }
}

impl<F: Future<Output = ()>> Future for Guarded<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        let watch = this.watch.clone();
        if STREAM
            .sync_scope(watch, || this.stream.as_mut().poll(cx))
            .is_ready()
        {
            return Poll::Ready(());
        }
        let Some(since) = this.watch.handed_since() else {
            return Poll::Pending;
        };
        let due = since + *this.timeout;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        // Armed for an earlier hand-over: when it fires, look at the latest one.
        while timer.as_mut().poll(cx).is_ready() {
            let Some(since) = this.watch.handed_since() else {
                return Poll::Pending;
            };
            let due = since + *this.timeout;
            if Instant::now() >= due {
                (this.on_stall)();
                tracing::debug!(
                    "an h2 stream's answer waited listen.send_timeout_ms for the client; resetting it"
                );
                return Poll::Ready(());
            }
            timer.as_mut().reset(due);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// An executor whose stalls are counted in the returned counter.
    fn exec(timeout: Duration) -> (StreamExec, Arc<AtomicUsize>) {
        let stalls = Arc::new(AtomicUsize::new(0));
        let counted = stalls.clone();
        let on_stall = Arc::new(move || {
            counted.fetch_add(1, Ordering::Relaxed);
        });
        (StreamExec::new(timeout, on_stall), stalls)
    }

    /// Runs `stream` on `exec`; resolves when its task ends (finished, or reset).
    async fn run<F>(exec: &StreamExec, stream: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (done, ended) = tokio::sync::oneshot::channel::<()>();
        hyper::rt::Executor::execute(exec, async move {
            let _done = done;
            stream.await
        });
        let _ = ended.await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_the_client_stops_taking_is_reset_at_the_timeout() {
        let (exec, stalls) = exec(Duration::from_secs(60));
        let started = Instant::now();
        run(&exec, async {
            let watch = StreamWatch::current().expect("in scope");
            // Frames taken for a while, then one handed and never asked for again.
            for _ in 0..5 {
                watch.handed();
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            std::future::pending::<()>().await;
        })
        .await;
        assert_eq!(stalls.load(Ordering::Relaxed), 1);
        // The last hand-over was at 120 s (the sleeps run on this task: a stream's own wakes).
        assert_eq!(started.elapsed(), Duration::from_secs(120 + 60));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_waiting_for_its_source_is_not_reset() {
        let (exec, stalls) = exec(Duration::from_secs(1));
        run(&exec, async {
            let watch = StreamWatch::current().expect("in scope");
            watch.handed();
            watch.waiting();
            // Ratepay's gap: far longer than the client's timeout.
            tokio::time::sleep(Duration::from_secs(30)).await;
        })
        .await;
        assert_eq!(stalls.load(Ordering::Relaxed), 0, "it ended on its own");
    }

    #[tokio::test]
    async fn there_is_no_watch_outside_an_h2_stream() {
        assert!(StreamWatch::current().is_none());
    }
}
