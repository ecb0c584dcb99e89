//! Safe retries toward Ratepay: only what cannot double-execute, with capped exponential backoff
//! and jitter, within a total deadline.
//!
//! Sits between the token layer and the upstream client, so every attempt carries the same
//! Ratepay token and the same `Idempotency-Key`. Retried: GETs, and POSTs that carry an
//! `Idempotency-Key` (Ratepay executes a keyed call once), after a connect error, a timeout or a
//! 5xx; after a 429 only once its `Retry-After` has passed. Never retried: a POST without a key,
//! PATCH, OTP calls, and any 2xx/3xx/4xx other than 429
//! (which operations may be sent twice is [`crate::routes::Operation::retry_safe`]). The decision is [`RetryPolicy::decide`], a plain
//! function of the attempt's outcome and the time spent, unit-tested without sockets.
//!
//! `Retry-After` comes from outside: it is capped at [`MAX_RETRY_AFTER`] when parsed, and the
//! decision adds it to the time spent with saturating arithmetic, so no value can overflow.

use std::{sync::Arc, time::Duration};

use http::{header::RETRY_AFTER, StatusCode};
use tokio::time::Instant;

use super::{clone_request, idempotency::IDEMPOTENCY_KEY, GwRequest, GwResponse, Handler};
use crate::{
    config::RetrySettings,
    context::Call,
    error::GatewayError,
    metrics::{Metrics, UpstreamOnly},
};

/// The longest `Retry-After` the gateway reads from Ratepay (one day); a larger value counts as
/// this. Anything beyond the retry deadline already means "do not retry", and the upstream
/// rate-limit layer caps its pause lower still (`rate_limits.upstream_pause_max_secs`).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

/// What one attempt produced, as far as retrying cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// An answer with this status and, for 429/503, its `Retry-After`.
    Status(StatusCode, Option<Duration>),
    /// Connect failure or no answer in time.
    Transport,
}

/// The decision after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep this outcome.
    Done,
    /// Try again after this delay.
    RetryAfter(Duration),
}

/// The retry rules.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    settings: RetrySettings,
}

impl RetryPolicy {
    /// Rules from settings.
    pub fn new(settings: RetrySettings) -> Self {
        RetryPolicy { settings }
    }

    /// Decides after attempt number `attempt` (1-based), `elapsed` since the first began.
    /// `jitter` in [0.5, 1.0] scales the backoff (full jitter over its upper half).
    pub fn decide(
        &self,
        attempt: u32,
        outcome: AttemptOutcome,
        elapsed: Duration,
        jitter: f64,
    ) -> Verdict {
        let s = &self.settings;
        if attempt >= s.max_attempts {
            return Verdict::Done;
        }
        // `clamp` keeps a NaN, which `mul_f64` would panic on.
        let jitter = if jitter.is_nan() {
            1.0
        } else {
            jitter.clamp(0.5, 1.0)
        };
        let backoff = || {
            let exp = s
                .initial_backoff
                .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
            exp.min(s.max_backoff).mul_f64(jitter)
        };
        let wait = match outcome {
            AttemptOutcome::Transport => backoff(),
            // Ratepay asks to slow down: only after its Retry-After, never sooner.
            AttemptOutcome::Status(StatusCode::TOO_MANY_REQUESTS, Some(after)) => after,
            AttemptOutcome::Status(StatusCode::TOO_MANY_REQUESTS, None) => return Verdict::Done,
            AttemptOutcome::Status(st, after) if st.is_server_error() => {
                after.map_or_else(backoff, |a| a.max(backoff()))
            }
            AttemptOutcome::Status(..) => return Verdict::Done,
        };
        if elapsed.saturating_add(wait) > s.deadline {
            return Verdict::Done;
        }
        Verdict::RetryAfter(wait)
    }
}

/// `Retry-After` in delta-seconds (Ratepay's form), capped at [`MAX_RETRY_AFTER`]; HTTP dates
/// are not honoured. Digits beyond `u64` are still a (capped) delay, not a missing header.
pub fn parse_retry_after_secs(value: &str) -> Option<Duration> {
    let digits = value.trim();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs = digits.parse::<u64>().unwrap_or(u64::MAX);
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// The capped `Retry-After` of an answer.
pub fn retry_after(resp: &GwResponse) -> Option<Duration> {
    parse_retry_after_secs(resp.headers().get(RETRY_AFTER)?.to_str().ok()?)
}

/// Layer for [`Retry`].
#[derive(Clone, Debug)]
pub struct RetryLayer {
    policy: Arc<RetryPolicy>,
    metrics: Arc<Metrics>,
}
impl RetryLayer {
    /// A layer with these rules.
    pub fn new(settings: RetrySettings, metrics: Arc<Metrics>) -> Self {
        RetryLayer {
            policy: Arc::new(RetryPolicy::new(settings)),
            metrics,
        }
    }
}

impl<S> tower::Layer<S> for RetryLayer {
    type Service = Retry<S>;
    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            policy: self.policy.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// See the module docs.
#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
    policy: Arc<RetryPolicy>,
    metrics: Arc<Metrics>,
}
impl<S: Handler> Handler for Retry<S> {
    async fn handle(&self, call: &Call, req: GwRequest) -> Result<GwResponse, GatewayError> {
        // One rule for every operation (routes::Keys): GETs, and calls carrying a scoped key.
        let keyed = req.headers().contains_key(&IDEMPOTENCY_KEY);
        let operation = call.ctx.route.operation;
        if !operation.retry_safe(keyed) {
            return self.inner.handle(call, req).await;
        }
        let started = Instant::now();
        let upstream = operation.api.name();
        let mut attempt = 0u32;
        let mut this = req;
        loop {
            attempt += 1;
            let spare = clone_request(&this);
            let result = self.inner.handle(call, this).await;
            let outcome = match &result {
                Ok(resp) => AttemptOutcome::Status(resp.status(), retry_after(resp)),
                Err(
                    GatewayError::UpstreamUnreachable { .. } | GatewayError::UpstreamTimeout { .. },
                ) => AttemptOutcome::Transport,
                Err(_) => return result,
            };
            let jitter: f64 = rand::random_range(0.5..=1.0);
            match self
                .policy
                .decide(attempt, outcome, started.elapsed(), jitter)
            {
                Verdict::Done => return result,
                Verdict::RetryAfter(wait) => {
                    tracing::info!(attempt, wait_ms = wait.as_millis() as u64, outcome = ?outcome, "retrying upstream call");
                    // The failed answer's body is dropped: only the last attempt is returned.
                    drop(result);
                    self.metrics
                        .retries
                        .get_or_create(&UpstreamOnly { upstream })
                        .inc();
                    tokio::time::sleep(wait).await;
                    this = spare;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::new(RetrySettings {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(250),
            deadline: Duration::from_secs(2),
        })
    }

    #[test]
    fn server_errors_back_off_exponentially_with_a_cap() {
        let p = policy();
        let e503 = AttemptOutcome::Status(StatusCode::SERVICE_UNAVAILABLE, None);
        let z = Duration::ZERO;
        assert_eq!(
            p.decide(1, e503, z, 1.0),
            Verdict::RetryAfter(Duration::from_millis(100))
        );
        assert_eq!(
            p.decide(2, e503, z, 1.0),
            Verdict::RetryAfter(Duration::from_millis(200))
        );
        assert_eq!(
            p.decide(3, e503, z, 1.0),
            Verdict::RetryAfter(Duration::from_millis(250)),
            "capped"
        );
        assert_eq!(p.decide(4, e503, z, 1.0), Verdict::Done, "max attempts");
        assert_eq!(
            p.decide(1, e503, z, 0.5),
            Verdict::RetryAfter(Duration::from_millis(50)),
            "jitter"
        );
        assert_eq!(
            p.decide(1, AttemptOutcome::Transport, z, 1.0),
            Verdict::RetryAfter(Duration::from_millis(100))
        );
    }

    #[test]
    fn client_errors_are_final_and_429_waits_for_retry_after() {
        let p = policy();
        let z = Duration::ZERO;
        for st in [
            StatusCode::OK,
            StatusCode::CREATED,
            StatusCode::BAD_REQUEST,
            StatusCode::CONFLICT,
            StatusCode::UNPROCESSABLE_ENTITY,
        ] {
            assert_eq!(
                p.decide(1, AttemptOutcome::Status(st, None), z, 1.0),
                Verdict::Done,
                "{st}"
            );
        }
        let s429 = |a| AttemptOutcome::Status(StatusCode::TOO_MANY_REQUESTS, a);
        assert_eq!(
            p.decide(1, s429(Some(Duration::from_secs(1))), z, 1.0),
            Verdict::RetryAfter(Duration::from_secs(1))
        );
        assert_eq!(p.decide(1, s429(None), z, 1.0), Verdict::Done);
    }

    #[test]
    fn retry_after_is_capped_at_a_day_when_parsed() {
        let day = Duration::from_secs(86_400);
        assert_eq!(parse_retry_after_secs("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after_secs(" 86400 "), Some(day));
        assert_eq!(parse_retry_after_secs("86401"), Some(day));
        assert_eq!(parse_retry_after_secs("18446744073709551615"), Some(day));
        assert_eq!(parse_retry_after_secs("99999999999999999999999"), Some(day));
        assert_eq!(parse_retry_after_secs(""), None);
        assert_eq!(parse_retry_after_secs("-1"), None);
        assert_eq!(parse_retry_after_secs("+1"), None);
        assert_eq!(parse_retry_after_secs("1.5"), None);
        assert_eq!(
            parse_retry_after_secs("Sun, 06 Nov 1994 08:49:37 GMT"),
            None
        );
    }

    #[test]
    fn extreme_waits_and_elapsed_times_never_overflow() {
        let p = policy();
        let max = Duration::MAX;
        for st in [
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::SERVICE_UNAVAILABLE,
        ] {
            let o = AttemptOutcome::Status(st, Some(max));
            assert_eq!(
                p.decide(1, o, Duration::from_millis(1500), 1.0),
                Verdict::Done
            );
            assert_eq!(p.decide(1, o, max, 1.0), Verdict::Done, "{st}");
        }
        let e503 = AttemptOutcome::Status(StatusCode::SERVICE_UNAVAILABLE, None);
        assert_eq!(p.decide(1, e503, max, 1.0), Verdict::Done);
        for jitter in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1.0, 0.0, 2.0] {
            match p.decide(
                u32::MAX - 1,
                AttemptOutcome::Transport,
                Duration::ZERO,
                jitter,
            ) {
                Verdict::Done => {}
                v => panic!("attempt {} past max_attempts: {v:?}", u32::MAX - 1),
            }
            let Verdict::RetryAfter(w) =
                p.decide(1, AttemptOutcome::Transport, Duration::ZERO, jitter)
            else {
                panic!("a first transport failure is retried");
            };
            assert!(
                w >= Duration::from_millis(50) && w <= Duration::from_millis(100),
                "{jitter}: {w:?}"
            );
        }
        let wide = RetryPolicy::new(RetrySettings {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(3600),
            deadline: Duration::from_secs(86_400),
        });
        assert_eq!(
            wide.decide(9, AttemptOutcome::Transport, Duration::ZERO, 1.0),
            Verdict::RetryAfter(Duration::from_millis(25_600))
        );
    }

    #[test]
    fn nothing_starts_past_the_deadline() {
        let p = policy();
        let e = AttemptOutcome::Status(StatusCode::BAD_GATEWAY, None);
        assert_eq!(
            p.decide(1, e, Duration::from_millis(1950), 1.0),
            Verdict::Done
        );
        let s429 =
            AttemptOutcome::Status(StatusCode::TOO_MANY_REQUESTS, Some(Duration::from_secs(5)));
        assert_eq!(
            p.decide(1, s429, Duration::ZERO, 1.0),
            Verdict::Done,
            "Retry-After beyond the deadline"
        );
    }
}
