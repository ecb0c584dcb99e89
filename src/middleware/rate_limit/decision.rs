//! The rate-limit decisions: GCRA buckets per caller, per upstream API and per operation
//! (governor, clock injected), and the pauses that Ratepay's 429s impose on an API.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use governor::{
    clock::{Clock, DefaultClock, Reference},
    middleware::{StateInformationMiddleware, StateSnapshot},
    state::{keyed::DashMapStateStore, InMemoryState, NotKeyed},
    Quota, RateLimiter,
};
use http::HeaderValue;
use time::{macros::format_description, OffsetDateTime, PrimitiveDateTime};

use crate::{
    config::{OverLimit, Rate, RateLimitSettings, MAX_BURST, MAX_RATE_WINDOW},
    limits::{Headroom, Refusal, Scope},
    middleware::retry::{parse_retry_after_secs, MAX_RETRY_AFTER},
    routes::Api,
};

type Direct<C> = RateLimiter<NotKeyed, InMemoryState, C, StateInformationMiddleware>;
type Keyed<C> = RateLimiter<String, DashMapStateStore<String>, C, StateInformationMiddleware>;

fn from_snapshot(name: &'static str, rate: Rate, snap: &StateSnapshot) -> Headroom {
    Headroom::new(name, rate, snap.remaining_burst_capacity())
}

/// What to do with one request now. `T` is what an admission carries: the headroom of the
/// tightest limit checked, or (for a check made inside another Redis call) that call's result.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision<T = Option<Headroom>> {
    /// Go ahead; headroom of the tightest limit checked, if any was configured.
    Allow(T),
    /// Queue mode: sleep this long and ask again (nothing was spent).
    Wait(Duration),
    /// Refuse with 429.
    Refuse(Refusal),
    /// The shared limits cannot be reached and their fallback is to refuse (503).
    Unavailable,
}

impl<T> Decision<T> {
    /// The same decision with `f` applied to what an admission carries.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Decision<U> {
        match self {
            Decision::Allow(t) => Decision::Allow(f(t)),
            Decision::Wait(d) => Decision::Wait(d),
            Decision::Refuse(r) => Decision::Refuse(r),
            Decision::Unavailable => Decision::Unavailable,
        }
    }
}

/// Refused by `scope` for `wait` under `over_limit`: in queue mode within the budget a wait,
/// else a refusal.
pub(super) fn over<T>(
    over_limit: OverLimit,
    wait: Duration,
    waited: Duration,
    scope: Scope,
    rate: Option<Rate>,
) -> Decision<T> {
    match over_limit {
        OverLimit::Queue { max_wait } if waited.saturating_add(wait) <= max_wait => {
            Decision::Wait(wait)
        }
        _ => Decision::Refuse(Refusal {
            scope,
            retry_after: wait,
            rate,
        }),
    }
}

/// One configured limit.
struct Limit<L> {
    limiter: L,
    rate: Rate,
}

fn quota(rate: &Rate) -> Quota {
    // Validation keeps these bounds already; they are restated because governor's GCRA counts
    // in u64 nanoseconds with unchecked arithmetic (period × burst must fit, with room).
    let burst = std::num::NonZeroU32::new(rate.burst.clamp(1, MAX_BURST))
        .unwrap_or(std::num::NonZeroU32::MIN);
    let period = rate
        .period()
        .min(MAX_RATE_WINDOW / burst.get())
        .max(Duration::from_nanos(1));
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(burst))
        .allow_burst(burst)
}

/// The rate-limit decisions of one gateway: GCRA buckets per caller, per upstream API and per
/// operation, and the pauses Ratepay's 429s impose. Synchronous and clock-injectable.
pub struct RateLimits<C: Clock = DefaultClock> {
    clock: C,
    over_limit: OverLimit,
    per_caller: Option<Limit<Keyed<C>>>,
    callers: HashMap<String, Limit<Direct<C>>>,
    upstreams: BTreeMap<Api, Limit<Direct<C>>>,
    operations: HashMap<&'static str, Limit<Direct<C>>>,
    pause_default: Duration,
    pause_max: Duration,
    paused_until: Mutex<BTreeMap<Api, C::Instant>>,
}

impl<C: Clock> fmt::Debug for RateLimits<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimits")
            .field("over_limit", &self.over_limit)
            .finish_non_exhaustive()
    }
}

impl RateLimits<DefaultClock> {
    /// Limits on the monotonic clock.
    pub fn new(settings: &RateLimitSettings) -> Self {
        RateLimits::with_clock(settings, DefaultClock::default())
    }
}

impl<C> RateLimits<C>
where
    C: Clock + Clone,
{
    /// Limits on `clock` (tests pass a `FakeRelativeClock`).
    pub fn with_clock(settings: &RateLimitSettings, clock: C) -> Self {
        let direct = |rate: &Rate| Limit {
            limiter: RateLimiter::direct_with_clock(quota(rate), clock.clone())
                .with_middleware::<StateInformationMiddleware>(),
            rate: *rate,
        };
        RateLimits {
            over_limit: settings.over_limit,
            per_caller: settings.per_caller.as_ref().map(|rate| Limit {
                limiter: RateLimiter::dashmap_with_clock(quota(rate), clock.clone())
                    .with_middleware::<StateInformationMiddleware>(),
                rate: *rate,
            }),
            callers: settings
                .callers
                .iter()
                .map(|(n, r)| (n.clone(), direct(r)))
                .collect(),
            upstreams: settings
                .upstreams
                .iter()
                .map(|(a, r)| (*a, direct(r)))
                .collect(),
            operations: settings
                .operations
                .iter()
                .map(|(o, r)| (*o, direct(r)))
                .collect(),
            pause_default: settings.upstream_pause_default,
            pause_max: settings.upstream_pause_max,
            paused_until: Mutex::new(BTreeMap::new()),
            clock,
        }
    }

    /// Whether any caller limit is configured (else the caller layer is a pass-through).
    pub fn limits_callers(&self) -> bool {
        self.per_caller.is_some() || !self.callers.is_empty()
    }

    fn elapsed_until(&self, later: C::Instant) -> Duration {
        later.duration_since(self.clock.now()).into()
    }

    /// Refused for `wait`: in queue mode within the budget a wait, else a refusal.
    pub(super) fn over(
        &self,
        wait: Duration,
        waited: Duration,
        scope: Scope,
        rate: Option<Rate>,
    ) -> Decision {
        over(self.over_limit, wait, waited, scope, rate)
    }

    /// Checks (and on success spends from) the caller's budget. `waited`: time already queued.
    pub fn check_caller(&self, caller: &str, waited: Duration) -> Decision {
        let outcome = match self.callers.get(caller) {
            Some(l) => l
                .limiter
                .check()
                .map(|s| (s, l.rate))
                .map_err(|n| (n.earliest_possible(), l.rate)),
            None => match &self.per_caller {
                Some(l) => l
                    .limiter
                    .check_key(&caller.to_owned())
                    .map(|s| (s, l.rate))
                    .map_err(|n| (n.earliest_possible(), l.rate)),
                None => return Decision::Allow(None),
            },
        };
        match outcome {
            Ok((snap, rate)) => Decision::Allow(Some(from_snapshot("caller", rate, &snap))),
            Err((at, rate)) => self.over(
                self.elapsed_until(at),
                waited,
                Scope::Caller(caller.to_owned()),
                Some(rate),
            ),
        }
    }

    /// Checks the pause on `api`, then spends from the operation's and the API's budgets.
    ///
    /// Governor spends on success only, so a refusal by the API's budget after the operation's
    /// admitted costs that one operation cell: a refused request still counts as an attempt.
    pub fn check_upstream(&self, api: Api, operation: &'static str, waited: Duration) -> Decision {
        if let held @ (Decision::Wait(_) | Decision::Refuse(_)) = self.check_pause(api, waited) {
            return held;
        }
        let mut tightest: Option<Headroom> = None;
        let checks = [
            self.operations
                .get(operation)
                .map(|l| (l, Scope::Operation(operation))),
            self.upstreams.get(&api).map(|l| (l, Scope::Upstream(api))),
        ];
        for (limit, scope) in checks.into_iter().flatten() {
            match limit.limiter.check() {
                Ok(snap) => {
                    let h = from_snapshot(scope.policy_name(), limit.rate, &snap);
                    if tightest.as_ref().is_none_or(|t| h.remaining < t.remaining) {
                        tightest = Some(h);
                    }
                }
                Err(n) => {
                    return self.over(
                        self.elapsed_until(n.earliest_possible()),
                        waited,
                        scope,
                        Some(limit.rate),
                    )
                }
            }
        }
        Decision::Allow(tightest)
    }

    /// Only the pause on `api` (for a call whose budgets were already spent in the fleet's
    /// Redis).
    pub fn check_pause(&self, api: Api, waited: Duration) -> Decision {
        match self.paused_for(api) {
            Some(left) => self.over(left, waited, Scope::Paused(api), None),
            None => Decision::Allow(None),
        }
    }

    /// Ratepay answered 429 on `api`: hold calls to it for `retry_after` (capped at
    /// `upstream_pause_max`, a day at most; a default when absent). A shorter pause never
    /// shortens a longer one in force. Returns the pause applied.
    pub fn pause_upstream(&self, api: Api, retry_after: Option<Duration>) -> Duration {
        // The cap comes before the addition: the clock's instants are u64 nanoseconds.
        let pause = retry_after
            .unwrap_or(self.pause_default)
            .min(self.pause_max)
            .min(MAX_RETRY_AFTER);
        let until = self.clock.now() + pause.into();
        let mut paused = self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        let slot = paused.entry(api).or_insert(until);
        if *slot < until {
            *slot = until;
        }
        pause
    }

    /// Time left on a pause of `api`, if one is in force.
    pub fn paused_for(&self, api: Api) -> Option<Duration> {
        let mut paused = self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        let until = *paused.get(&api)?;
        let now = self.clock.now();
        if until <= now {
            paused.remove(&api);
            return None;
        }
        Some(until.duration_since(now).into())
    }

    /// Drops caller states indistinguishable from fresh ones and returns their memory.
    pub fn housekeep(&self) {
        if let Some(l) = &self.per_caller {
            l.limiter.retain_recent();
            l.limiter.shrink_to_fit();
        }
    }

    /// Callers with state in the default per-caller limiter.
    pub fn tracked_callers(&self) -> usize {
        self.per_caller.as_ref().map_or(0, |l| l.limiter.len())
    }
}

impl<C> RateLimits<C>
where
    C: Clock + Clone + Send + Sync + 'static,
{
    /// Runs [`RateLimits::housekeep`] every `every` while the limits are alive (needs a runtime;
    /// without one it does nothing).
    pub fn spawn_housekeeping(self: &Arc<Self>, every: Duration) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak: Weak<Self> = Arc::downgrade(self);
        rt.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(limits) => limits.housekeep(),
                    None => return,
                }
            }
        });
    }
}

/// Ratepay's `Retry-After`: delta-seconds or an HTTP date (IMF-fixdate), relative to `now`,
/// capped at [`MAX_RETRY_AFTER`] (one day) like the retry layer's reading of it.
pub fn parse_retry_after(value: &HeaderValue, now: OffsetDateTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if let Some(d) = parse_retry_after_secs(text) {
        return Some(d);
    }
    let fmt = format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let at = PrimitiveDateTime::parse(text, fmt).ok()?.assume_utc();
    // A date in the past asks for no wait; `time::Duration` saturates instead of overflowing.
    let wait = Duration::try_from(at - now).unwrap_or(Duration::ZERO);
    Some(wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;
    use http::{header, HeaderMap};

    use super::*;
    use crate::limits::{ceil_secs, RATELIMIT, RATELIMIT_POLICY};

    fn rate(per_sec: f64, burst: u32) -> Rate {
        Rate { per_sec, burst }
    }

    fn limits(settings: RateLimitSettings) -> (RateLimits<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (RateLimits::with_clock(&settings, clock.clone()), clock)
    }

    fn refusal(d: Decision) -> Refusal {
        match d {
            Decision::Refuse(r) => r,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn allowed(d: &Decision) -> bool {
        matches!(d, Decision::Allow(_))
    }

    #[test]
    fn burst_then_exact_retry_after() {
        // 2 per second, burst 3: three go at once, the fourth must wait one period (500 ms).
        let (l, clock) = limits(RateLimitSettings {
            per_caller: Some(rate(2.0, 3)),
            ..Default::default()
        });
        for i in 0..3 {
            assert!(allowed(&l.check_caller("a", Duration::ZERO)), "request {i}");
        }
        let r = refusal(l.check_caller("a", Duration::ZERO));
        assert_eq!(r.scope, Scope::Caller("a".into()));
        assert_eq!(r.retry_after, Duration::from_millis(500));
        assert_eq!(r.retry_after_secs(), 1);
        // 300 ms later the wait is 200 ms; at 500 ms one more goes, then the next waits 500 ms.
        clock.advance(Duration::from_millis(300));
        assert_eq!(
            refusal(l.check_caller("a", Duration::ZERO)).retry_after,
            Duration::from_millis(200)
        );
        clock.advance(Duration::from_millis(200));
        assert!(allowed(&l.check_caller("a", Duration::ZERO)));
        assert_eq!(
            refusal(l.check_caller("a", Duration::ZERO)).retry_after,
            Duration::from_millis(500)
        );
    }

    #[test]
    fn slow_rates_round_retry_after_up_to_whole_seconds() {
        // One per 10 s, burst 1: after 2.5 s the wait is 7.5 s, announced as 8.
        let (l, clock) = limits(RateLimitSettings {
            per_caller: Some(rate(0.1, 1)),
            ..Default::default()
        });
        assert!(allowed(&l.check_caller("a", Duration::ZERO)));
        clock.advance(Duration::from_millis(2500));
        let r = refusal(l.check_caller("a", Duration::ZERO));
        assert_eq!(r.retry_after, Duration::from_millis(7500));
        assert_eq!(r.retry_after_secs(), 8);
        let mut h = HeaderMap::new();
        r.write_headers(&mut h);
        assert_eq!(h[header::RETRY_AFTER], "8");
        assert_eq!(h[&RATELIMIT_POLICY], "\"caller\";q=1;w=10");
        assert_eq!(h[&RATELIMIT], "\"caller\";r=0;t=8");
        assert_eq!(ceil_secs(Duration::from_secs(3)), 3);
        assert_eq!(ceil_secs(Duration::from_nanos(3_000_000_001)), 4);
    }

    #[test]
    fn callers_are_independent_and_overrides_apply() {
        let (l, _clock) = limits(RateLimitSettings {
            per_caller: Some(rate(1.0, 2)),
            callers: [("reporting".to_owned(), rate(1.0, 1))].into(),
            ..Default::default()
        });
        assert!(allowed(&l.check_caller("a", Duration::ZERO)));
        assert!(allowed(&l.check_caller("a", Duration::ZERO)));
        refusal(l.check_caller("a", Duration::ZERO));
        // b has its own bucket; reporting its own smaller one.
        assert!(allowed(&l.check_caller("b", Duration::ZERO)));
        assert!(allowed(&l.check_caller("b", Duration::ZERO)));
        assert!(allowed(&l.check_caller("reporting", Duration::ZERO)));
        let r = refusal(l.check_caller("reporting", Duration::ZERO));
        assert_eq!(r.rate, Some(rate(1.0, 1)));
        assert_eq!(
            l.tracked_callers(),
            2,
            "overridden callers live outside the keyed limiter"
        );
    }

    #[test]
    fn no_limits_configured_means_no_limiting() {
        let (l, _clock) = limits(RateLimitSettings::default());
        assert!(!l.limits_callers());
        for _ in 0..10_000 {
            assert_eq!(l.check_caller("a", Duration::ZERO), Decision::Allow(None));
            assert_eq!(
                l.check_upstream(Api::Payment, "payment.transactions.get", Duration::ZERO),
                Decision::Allow(None)
            );
        }
    }

    #[test]
    fn upstream_and_operation_budgets_are_independent_of_callers_and_each_other() {
        let (l, clock) = limits(RateLimitSettings {
            per_caller: Some(rate(1.0, 1)),
            upstreams: [(Api::Payment, rate(1.0, 2))].into(),
            operations: [("payment.cancellations.create", rate(1.0, 1))].into(),
            ..Default::default()
        });
        let op = "payment.cancellations.create";
        // The operation's budget (1) refuses first and names itself.
        assert!(allowed(&l.check_upstream(Api::Payment, op, Duration::ZERO)));
        assert_eq!(
            refusal(l.check_upstream(Api::Payment, op, Duration::ZERO)).scope,
            Scope::Operation(op)
        );
        // Another payment operation still has the API's second cell; then the API refuses.
        assert!(allowed(&l.check_upstream(
            Api::Payment,
            "payment.transactions.get",
            Duration::ZERO
        )));
        let r = refusal(l.check_upstream(Api::Payment, "payment.transactions.get", Duration::ZERO));
        assert_eq!(r.scope, Scope::Upstream(Api::Payment));
        assert_eq!(r.retry_after, Duration::from_secs(1));
        // Other APIs and the callers' budgets are untouched.
        assert_eq!(
            l.check_upstream(Api::Hpp, "hpp.session_records.get", Duration::ZERO),
            Decision::Allow(None)
        );
        assert!(allowed(&l.check_caller("a", Duration::ZERO)));
        clock.advance(Duration::from_secs(1));
        assert!(allowed(&l.check_upstream(
            Api::Payment,
            "payment.transactions.get",
            Duration::ZERO
        )));
    }

    #[test]
    fn headroom_reports_the_tightest_limit() {
        let (l, _clock) = limits(RateLimitSettings {
            upstreams: [(Api::Payment, rate(10.0, 10))].into(),
            operations: [("payment.captures.create", rate(1.0, 3))].into(),
            ..Default::default()
        });
        let Decision::Allow(Some(h)) =
            l.check_upstream(Api::Payment, "payment.captures.create", Duration::ZERO)
        else {
            panic!("allowed with headroom")
        };
        assert_eq!((h.name, h.remaining), ("operation", 2));
        assert_eq!(h.reset, Duration::from_secs(1));
        let mut headers = HeaderMap::new();
        h.write_headers(&mut headers);
        assert_eq!(headers[&RATELIMIT_POLICY], "\"operation\";q=3;w=3");
        assert_eq!(headers[&RATELIMIT], "\"operation\";r=2;t=1");
    }

    #[test]
    fn queue_mode_waits_within_max_wait_and_refuses_beyond_it() {
        let (l, clock) = limits(RateLimitSettings {
            over_limit: OverLimit::Queue {
                max_wait: Duration::from_millis(500),
            },
            per_caller: Some(rate(5.0, 1)),
            ..Default::default()
        });
        assert!(allowed(&l.check_caller("a", Duration::ZERO)));
        // Next slot in 200 ms: within the 500 ms budget, so wait (and spend nothing).
        assert_eq!(
            l.check_caller("a", Duration::ZERO),
            Decision::Wait(Duration::from_millis(200))
        );
        assert_eq!(
            l.check_caller("a", Duration::ZERO),
            Decision::Wait(Duration::from_millis(200))
        );
        // Having waited 400 ms already, another 200 ms would exceed the budget: refuse.
        let r = refusal(l.check_caller("a", Duration::from_millis(400)));
        assert_eq!(r.retry_after, Duration::from_millis(200));
        clock.advance(Duration::from_millis(200));
        assert!(allowed(&l.check_caller("a", Duration::from_millis(200))));
    }

    #[test]
    fn ratepay_429_pauses_one_upstream_until_its_retry_after() {
        let (l, clock) = limits(RateLimitSettings::default());
        assert_eq!(
            l.pause_upstream(Api::Payment, Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
        clock.advance(Duration::from_millis(2500));
        let r = refusal(l.check_upstream(Api::Payment, "payment.transactions.get", Duration::ZERO));
        assert_eq!(r.scope, Scope::Paused(Api::Payment));
        assert_eq!(r.retry_after, Duration::from_millis(27_500));
        assert_eq!(r.retry_after_secs(), 28);
        assert_eq!(r.rate, None);
        // Other APIs go on; a shorter pause does not shorten the longer one.
        assert!(allowed(&l.check_upstream(
            Api::Hpp,
            "hpp.session_records.get",
            Duration::ZERO
        )));
        l.pause_upstream(Api::Payment, Some(Duration::from_secs(1)));
        assert_eq!(
            l.paused_for(Api::Payment),
            Some(Duration::from_millis(27_500))
        );
        clock.advance(Duration::from_millis(27_500));
        assert_eq!(l.paused_for(Api::Payment), None);
        assert!(allowed(&l.check_upstream(
            Api::Payment,
            "payment.transactions.get",
            Duration::ZERO
        )));
    }

    #[test]
    fn pauses_use_the_default_without_retry_after_and_are_capped() {
        let (l, _clock) = limits(RateLimitSettings {
            upstream_pause_default: Duration::from_secs(2),
            upstream_pause_max: Duration::from_secs(60),
            ..Default::default()
        });
        assert_eq!(l.pause_upstream(Api::Status, None), Duration::from_secs(2));
        assert_eq!(
            l.pause_upstream(Api::Hpp, Some(Duration::from_secs(86_400))),
            Duration::from_secs(60)
        );
        assert_eq!(l.paused_for(Api::Hpp), Some(Duration::from_secs(60)));
    }

    #[test]
    fn idle_callers_are_dropped_by_housekeeping() {
        let (l, clock) = limits(RateLimitSettings {
            per_caller: Some(rate(10.0, 5)),
            ..Default::default()
        });
        for i in 0..1000 {
            assert!(allowed(
                &l.check_caller(&format!("caller-{i}"), Duration::ZERO)
            ));
        }
        assert_eq!(l.tracked_callers(), 1000);
        l.housekeep();
        assert_eq!(l.tracked_callers(), 1000, "recent states stay");
        // Once their buckets have refilled, the states are indistinguishable from fresh ones.
        clock.advance(Duration::from_secs(1));
        l.housekeep();
        assert_eq!(l.tracked_callers(), 0);
    }

    #[test]
    fn retry_after_parses_seconds_and_http_dates() {
        let now = OffsetDateTime::from_unix_timestamp(784_111_777).unwrap(); // Sun, 06 Nov 1994 08:49:37 GMT
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(
            parse_retry_after(&v("30"), now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after(&v("Sun, 06 Nov 1994 08:50:07 GMT"), now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after(&v("Sun, 06 Nov 1994 08:49:00 GMT"), now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after(&v("soon"), now), None);
        assert_eq!(parse_retry_after(&v("-5"), now), None);
    }

    #[test]
    fn extreme_rates_never_panic_the_limiter() {
        for (per_sec, burst) in [
            (1e-20, 1),
            (1e-20, u32::MAX),
            (0.0, 3),
            (-1.0, 3),
            (f64::NAN, 3),
            (f64::INFINITY, 3),
            (f64::NEG_INFINITY, 3),
            (f64::MIN_POSITIVE, u32::MAX),
            (1e300, u32::MAX),
            (1.0 / 86_400.0, MAX_BURST),
        ] {
            let (l, clock) = limits(RateLimitSettings {
                per_caller: Some(rate(per_sec, burst)),
                ..Default::default()
            });
            assert!(
                allowed(&l.check_caller("a", Duration::ZERO)),
                "{per_sec} {burst}"
            );
            for _ in 0..3 {
                let _ = l.check_caller("a", Duration::ZERO);
            }
            clock.advance(Duration::from_secs(365 * 86_400));
            let _ = l.check_caller("a", Duration::ZERO);
            let mut h = HeaderMap::new();
            if let Decision::Refuse(r) = l.check_caller("b", Duration::ZERO) {
                r.write_headers(&mut h);
            }
        }
        // The slowest valid rate keeps its exact period.
        let (l, _clock) = limits(RateLimitSettings {
            per_caller: Some(rate(1.0 / 86_400.0, 1)),
            ..Default::default()
        });
        assert!(allowed(&l.check_caller("a", Duration::ZERO)));
        let r = refusal(l.check_caller("a", Duration::ZERO));
        assert_eq!(r.retry_after_secs(), 86_400);
    }

    #[test]
    fn huge_retry_after_values_are_capped_at_a_day_and_pause_at_most_the_cap() {
        let now = OffsetDateTime::from_unix_timestamp(784_111_777).unwrap();
        let day = Some(Duration::from_secs(86_400));
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(parse_retry_after(&v("18446744073709551615"), now), day);
        assert_eq!(parse_retry_after(&v("184467440737095516150"), now), day);
        assert_eq!(
            parse_retry_after(&v("Fri, 31 Dec 9999 23:59:59 GMT"), now),
            day
        );
        let (l, clock) = limits(RateLimitSettings {
            upstream_pause_max: Duration::from_secs(120),
            ..Default::default()
        });
        assert_eq!(
            l.pause_upstream(Api::Payment, Some(Duration::MAX)),
            Duration::from_secs(120)
        );
        clock.advance(Duration::from_secs(1));
        assert_eq!(l.paused_for(Api::Payment), Some(Duration::from_secs(119)));
    }
}
