//! One timer per HTTP/1 connection for the deadlines of its requests.
//!
//! A request through the gateway has two deadlines: the whole request's
//! (`limits.request_timeout_ms`, at the edge) and its upstream attempt's
//! (`upstream_client.request_timeout_ms`, in the proxy). As `tokio::time::timeout`s they were two
//! timers per request, each registered in tokio's timer wheel when first polled and removed
//! again when the request finished, almost always long before it fired. Measured pinned to one
//! core (paired one-second slices, issue 18), dropping both cut an uncached GET's CPU by about
//! 3 %: more than all of the gateway's routing.
//!
//! An HTTP/1 connection serves one request at a time, and hyper polls that request's future
//! from the connection's own task, which `server::serve` already wakes for its idle and header
//! deadlines. So the connection keeps one [`ConnTimer`], and a request's deadline is a
//! [`Deadline`]: when its future is pending, it writes its instant into the connection's
//! [`ConnClock`] (an atomic minimum) unless the timer already fired past it, in which case it
//! ends with [`Expired`]. `serve` polls the connection first and its timer after (a biased
//! select), so the timer sees every deadline registered during that poll, re-arms only when one
//! is earlier than what it waits for, and when it fires, the next poll of the connection polls
//! the request, which finds its deadline passed. A request that finishes leaves its deadline
//! behind; the timer fires for it once, for nothing, and forgets it. The timer is reset about
//! once per firing instead of twice per request.
//!
//! Only the connection's own task is served so. HTTP/2 streams run on tasks of their own: their
//! requests keep tokio's timers ([`within`] without a clock), as do requests that did not come
//! through `serve`. And a layer may move the rest of a call onto a task of its own (a keyed
//! call, so that it completes when its caller hangs up; a session-record fetch that others
//! join): the connection's timer never polls that task, and the task may outlive the
//! connection. So the clock knows its owner's waker, and a [`Deadline`] polled from any other
//! task keeps a tokio timer of its own instead (`tests/proxy.rs`,
//! `calls_on_tasks_of_their_own_time_out_per_attempt_too`).

use std::{
    future::Future,
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering},
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

/// What a connection's requests and its timer share. Instants are kept as microseconds since
/// `origin` (the accept).
#[derive(Debug)]
pub struct ConnClock {
    origin: Instant,
    /// The waker of the task that polls the connection, and so its HTTP/1 requests: the one
    /// task whose deadlines the connection's timer serves.
    owner: Waker,
    /// The earliest deadline a pending request registered since the timer last fired
    /// (`u64::MAX`: none).
    wanted_us: AtomicU64,
    /// When the timer last fired.
    fired_us: AtomicU64,
}

/// A deadline passed before its future finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired;

impl ConnClock {
    /// The clock of a connection accepted at `origin` and polled by the task of `owner`.
    pub fn new(origin: Instant, owner: Waker) -> Self {
        ConnClock {
            origin,
            owner,
            wanted_us: AtomicU64::new(u64::MAX),
            fired_us: AtomicU64::new(0),
        }
    }

    /// `at` in microseconds since the origin, rounded up (a deadline never counts as passed
    /// early).
    fn micros(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.origin);
        let us = since.as_micros() + u128::from(!since.subsec_nanos().is_multiple_of(1000));
        u64::try_from(us).unwrap_or(u64::MAX - 1)
    }

    /// `fut`, ended with [`Expired`] once `at` has passed: on the connection's timer while the
    /// connection's own task polls it (HTTP/1 requests), on a tokio timer otherwise.
    pub fn deadline<F: Future>(&self, at: Instant, fut: F) -> Deadline<'_, F> {
        Deadline {
            fut,
            at_us: self.micros(at),
            clock: self,
            fallback: None,
        }
    }

    /// Wakes the connection's timer at `at` at the latest, for a deadline of the connection's
    /// own (see `send_watch`): it fires then, and its owner looks.
    pub fn want(&self, at: Instant) {
        self.wanted_us.fetch_min(self.micros(at), Ordering::AcqRel);
    }

    /// The instant `us` microseconds after the origin.
    fn instant(&self, us: u64) -> Instant {
        self.origin + Duration::from_micros(us)
    }

    /// The earliest deadline registered since the timer last fired.
    fn wanted(&self) -> Option<Instant> {
        match self.wanted_us.load(Ordering::Acquire) {
            u64::MAX => None,
            us => Some(self.instant(us)),
        }
    }

    /// The timer fired at `now`: every deadline up to it has passed; pending requests register
    /// again when next polled.
    fn fire(&self, now: Instant) {
        let us = u64::try_from(now.saturating_duration_since(self.origin).as_micros())
            .unwrap_or(u64::MAX - 1);
        self.fired_us.fetch_max(us, Ordering::AcqRel);
        self.wanted_us.store(u64::MAX, Ordering::Release);
    }
}

pin_project_lite::pin_project! {
    /// See [`ConnClock::deadline`].
    pub struct Deadline<'a, F> {
        #[pin]
        fut: F,
        at_us: u64,
        clock: &'a ConnClock,
        // Polled from another task than the connection's: its own timer.
        fallback: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

impl<F: Future> Future for Deadline<'_, F> {
    type Output = Result<F::Output, Expired>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.fut.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        let clock = *this.clock;
        if this.fallback.is_none() && cx.waker().will_wake(&clock.owner) {
            if clock.fired_us.load(Ordering::Acquire) >= *this.at_us {
                return Poll::Ready(Err(Expired));
            }
            clock.wanted_us.fetch_min(*this.at_us, Ordering::AcqRel);
            return Poll::Pending;
        }
        let at = clock.instant(*this.at_us);
        let sleep = this
            .fallback
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at.into())));
        sleep.as_mut().poll(cx).map(|()| Err(Expired))
    }
}

pin_project_lite::pin_project! {
    /// See [`within`].
    #[project = WithinProj]
    pub enum Within<'a, F> {
        Clock { #[pin] deadline: Deadline<'a, F> },
        Timer { #[pin] timeout: tokio::time::Timeout<F> },
    }
}

/// `fut` within `at`: on the connection's clock when there is one, on a tokio timer otherwise.
/// A plain function, not an `async fn`: the edge's `fut` is the whole stack's future, several
/// KB, and an `async fn` would copy it once more into its own state (measured: memmove 3.3 →
/// 5.8 % of an uncached GET's samples).
pub fn within<F: Future>(clock: Option<&ConnClock>, at: Instant, fut: F) -> Within<'_, F> {
    match clock {
        Some(clock) => Within::Clock {
            deadline: clock.deadline(at, fut),
        },
        None => Within::Timer {
            timeout: tokio::time::timeout_at(at.into(), fut),
        },
    }
}

impl<F: Future> Future for Within<'_, F> {
    type Output = Result<F::Output, Expired>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            WithinProj::Clock { deadline } => deadline.poll(cx),
            WithinProj::Timer { timeout } => timeout.poll(cx).map(|r| r.map_err(|_| Expired)),
        }
    }
}

/// The connection's one timer: it fires at the earlier of the connection's own next check
/// (`own`, set by its owner) and the earliest deadline its requests registered. Poll it after
/// the connection (see the module docs).
pub struct ConnTimer {
    clock: std::sync::Arc<ConnClock>,
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// The instant `sleep` is set to, while it has not fired.
    armed: Option<Instant>,
    own: Option<Instant>,
}

impl ConnTimer {
    pub fn new(clock: std::sync::Arc<ConnClock>, own: Option<Instant>) -> Self {
        let start = own.unwrap_or(clock.origin);
        ConnTimer {
            sleep: Box::pin(tokio::time::sleep_until(start.into())),
            clock,
            armed: None,
            own,
        }
    }

    /// The owner's next check (`None`: none).
    pub fn set_own(&mut self, own: Option<Instant>) {
        self.own = own;
    }

    /// The owner's next check, as last set.
    pub fn own(&self) -> Option<Instant> {
        self.own
    }
}

impl Future for ConnTimer {
    /// When it fired.
    type Output = Instant;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Instant> {
        let this = &mut *self;
        // Nothing to wait for: a request that registers a deadline does so while the
        // connection is polled, just before this is.
        let Some(target) = this.own.into_iter().chain(this.clock.wanted()).min() else {
            return Poll::Pending;
        };
        if this.armed != Some(target) {
            this.sleep.as_mut().reset(target.into());
            this.armed = Some(target);
        }
        match this.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.armed = None;
                let now = Instant::now().max(target);
                this.clock.fire(now);
                Poll::Ready(now)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Polls `f` once; the timer after the requests, like `serve`'s biased select.
    fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        let waker = futures_util::task::noop_waker();
        Pin::new(f).poll(&mut Context::from_waker(&waker))
    }

    /// A connection accepted now, its own next check `own` from now, owned by the task whose
    /// waker [`poll_once`] polls with.
    fn connection(own: Duration) -> (Instant, Arc<ConnClock>, ConnTimer) {
        let start = Instant::now();
        let clock = Arc::new(ConnClock::new(start, futures_util::task::noop_waker()));
        let timer = ConnTimer::new(clock.clone(), Some(start + own));
        (start, clock, timer)
    }

    #[tokio::test(start_paused = true)]
    async fn a_pending_request_expires_when_the_timer_fires_at_its_deadline() {
        let (start, clock, mut timer) = connection(Duration::from_secs(60));
        let mut req = Box::pin(clock.deadline(
            start + Duration::from_millis(1500),
            std::future::pending::<()>(),
        ));
        assert_eq!(poll_once(&mut req), Poll::Pending);
        assert_eq!(poll_once(&mut timer), Poll::Pending);
        assert_eq!(timer.armed, Some(start + Duration::from_millis(1500)));
        // The timer fires at the request's deadline, not at its own check.
        let fired = (&mut timer).await;
        assert_eq!(fired, start + Duration::from_millis(1500));
        assert_eq!(poll_once(&mut req), Poll::Ready(Err(Expired)));
        // Forgotten once fired: the timer waits for its own check again.
        assert_eq!(poll_once(&mut timer), Poll::Pending);
        assert_eq!(timer.armed, Some(start + Duration::from_secs(60)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_deadline_or_a_finished_request_does_not_expire_early() {
        let (start, clock, mut timer) = connection(Duration::from_secs(1));
        let mut late =
            Box::pin(clock.deadline(start + Duration::from_secs(3), std::future::pending::<()>()));
        let mut done = Box::pin(clock.deadline(start, async { 7 }));
        assert_eq!(poll_once(&mut done), Poll::Ready(Ok(7)), "ready wins");
        assert_eq!(poll_once(&mut late), Poll::Pending);
        assert_eq!(poll_once(&mut timer), Poll::Pending);
        assert_eq!(
            timer.armed,
            Some(start + Duration::from_secs(1)),
            "own first"
        );
        let fired = (&mut timer).await;
        assert_eq!(fired, start + Duration::from_secs(1));
        // Fired for its own check: the later request is still pending and registers again.
        assert_eq!(poll_once(&mut late), Poll::Pending);
        timer.set_own(None);
        assert_eq!(poll_once(&mut timer), Poll::Pending);
        assert_eq!(timer.armed, Some(start + Duration::from_secs(3)));
        let fired = (&mut timer).await;
        assert_eq!(fired, start + Duration::from_secs(3));
        assert_eq!(poll_once(&mut late), Poll::Ready(Err(Expired)));
        // Nothing left to wait for.
        assert_eq!(poll_once(&mut timer), Poll::Pending);
        assert_eq!(timer.armed, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_polled_from_another_task_keeps_a_timer_of_its_own() {
        // A call a layer moved onto a task of its own: the connection's timer never polls that
        // task, and here the connection is gone before the deadline.
        let t0 = tokio::time::Instant::now();
        let (start, clock, timer) = connection(Duration::from_secs(60));
        drop(timer);
        let on_task = clock.clone();
        let task = tokio::spawn(async move {
            on_task
                .deadline(
                    start + Duration::from_millis(1500),
                    std::future::pending::<()>(),
                )
                .await
        });
        // Bounded, so that a deadline nothing wakes fails the test instead of hanging it.
        let ended = tokio::time::timeout(Duration::from_secs(10), task).await;
        assert_eq!(
            ended.expect("woken by its own timer").unwrap(),
            Err(Expired)
        );
        assert!(
            t0.elapsed() >= Duration::from_millis(1500),
            "{:?}",
            t0.elapsed()
        );
        // It left nothing for the connection's timer.
        assert_eq!(clock.wanted(), None);
        // And a finished call on another task answers as on the connection's.
        let on_task = clock.clone();
        let done = tokio::spawn(async move { on_task.deadline(start, async { 3 }).await });
        assert_eq!(done.await.unwrap(), Ok(3));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_clock_a_tokio_timer_bounds_the_future() {
        let start = Instant::now();
        let r = within(
            None,
            start + Duration::from_millis(10),
            std::future::pending::<()>(),
        )
        .await;
        assert_eq!(r, Err(Expired));
        assert_eq!(within(None, start, async { 1 }).await, Ok(1));
    }

    #[test]
    fn deadlines_round_up_to_the_microsecond() {
        let start = Instant::now();
        let clock = ConnClock::new(start, futures_util::task::noop_waker());
        assert_eq!(clock.micros(start + Duration::from_nanos(1_001)), 2);
        assert_eq!(clock.micros(start + Duration::from_micros(5)), 5);
        assert_eq!(clock.micros(start), 0);
    }
}
