//! `[limits]`, `[idempotency]`, `[retry]`, `[rate_limits]` and `[cache]`: how much, how often
//! and for how long.

use std::{collections::BTreeMap, time::Duration};

use super::{millis, ms, secs, within};
use crate::{
    config::{
        file::{self, FileConfig},
        problems::Ctx,
        CacheSettings, IdempotencySettings, Limits, OverLimit, Rate, RateLimitSettings,
        RetrySettings, MAX_BURST, MAX_RATE_PER_SEC, MAX_RATE_WINDOW, MAX_TIMEOUT_MS,
        MIN_RATE_PER_SEC,
    },
    routes::{self, Api},
};

pub(super) fn limits(f: &file::LimitsFile, cx: &Ctx<'_>) -> Option<Limits> {
    let d = Limits::default();
    let limits = Limits {
        max_request_body_bytes: f.max_request_body_bytes.unwrap_or(d.max_request_body_bytes),
        request_timeout: ms(f.request_timeout_ms, d.request_timeout),
        max_response_body_bytes: f
            .max_response_body_bytes
            .unwrap_or(d.max_response_body_bytes),
    };
    let nonzero = cx.require(
        limits.max_request_body_bytes != 0
            && !limits.request_timeout.is_zero()
            && limits.max_response_body_bytes != 0,
        "limits",
        "max_request_body_bytes, max_response_body_bytes and request_timeout_ms must be \
         greater than zero",
    );
    // Zero is reported once, above.
    let timeout_ok = if limits.request_timeout.is_zero() {
        Some(())
    } else {
        cx.check(within(
            cx,
            "limits.request_timeout_ms",
            millis(limits.request_timeout),
            1,
            MAX_TIMEOUT_MS,
            "milliseconds",
        ))
    };
    nonzero?;
    timeout_ok?;
    Some(limits)
}

pub(super) fn idempotency(f: &file::IdempotencyFile, cx: &Ctx<'_>) -> Option<IdempotencySettings> {
    let d = IdempotencySettings::default();
    let idempotency = IdempotencySettings {
        ttl: secs(f.ttl_secs, d.ttl),
        max_bytes: f.max_bytes.unwrap_or(d.max_bytes),
    };
    let ttl_ok = cx.require(
        !idempotency.ttl.is_zero() && idempotency.ttl <= Duration::from_secs(7 * 86_400),
        "idempotency.ttl_secs",
        "expected 1 to 604800 seconds (Ratepay keeps keys 86400 s)",
    );
    let bytes_ok = cx.require(
        idempotency.max_bytes >= 1 << 20,
        "idempotency.max_bytes",
        "expected at least 1048576 bytes",
    );
    ttl_ok?;
    bytes_ok?;
    Some(idempotency)
}

pub(super) fn retry(f: &file::RetryFile, cx: &Ctx<'_>) -> Option<RetrySettings> {
    let d = RetrySettings::default();
    let retry = RetrySettings {
        max_attempts: f.max_attempts.unwrap_or(d.max_attempts),
        initial_backoff: ms(f.initial_backoff_ms, d.initial_backoff),
        max_backoff: ms(f.max_backoff_ms, d.max_backoff),
        deadline: ms(f.deadline_ms, d.deadline),
    };
    let attempts = cx.require(
        (1..=10).contains(&retry.max_attempts),
        "retry.max_attempts",
        "expected 1 to 10 (1 disables retries)",
    );
    let initial = cx.require(
        !retry.initial_backoff.is_zero() && retry.initial_backoff <= retry.max_backoff,
        "retry.initial_backoff_ms",
        "must be above zero and at most retry.max_backoff_ms",
    );
    let max_backoff = cx.check(within(
        cx,
        "retry.max_backoff_ms",
        millis(retry.max_backoff),
        1,
        MAX_TIMEOUT_MS,
        "milliseconds",
    ));
    let deadline = cx.check(within(
        cx,
        "retry.deadline_ms",
        millis(retry.deadline),
        1,
        MAX_TIMEOUT_MS,
        "milliseconds",
    ));
    attempts?;
    initial?;
    max_backoff?;
    deadline?;
    Some(retry)
}

/// `request_timeout` is the validated `limits.request_timeout` (`None`: it was refused, and
/// the queue's wait is then checked against nothing more).
pub(super) fn rate_limits(
    file: &FileConfig,
    request_timeout: Option<Duration>,
    cx: &Ctx<'_>,
) -> Option<RateLimitSettings> {
    let f = &file.rate_limits;
    let d = RateLimitSettings::default();
    let over_limit = match f.mode.as_deref().unwrap_or("reject") {
        "reject" => cx
            .require(
                f.max_wait_ms.is_none(),
                "rate_limits.max_wait_ms",
                "applies only with mode = \"queue\"",
            )
            .map(|()| OverLimit::Reject),
        "queue" => {
            let max_wait = ms(f.max_wait_ms, OverLimit::DEFAULT_MAX_WAIT);
            let (below, bound) = match request_timeout {
                Some(t) => (max_wait < t, format!(" ({})", t.as_millis())),
                None => (true, String::new()),
            };
            cx.require(
                !max_wait.is_zero() && below,
                "rate_limits.max_wait_ms",
                format!("expected above 0 and below limits.request_timeout_ms{bound}"),
            )
            .map(|()| OverLimit::Queue { max_wait })
        }
        other => {
            cx.report(
                "rate_limits.mode",
                format!("expected \"reject\" or \"queue\", got {other:?}"),
            );
            None
        }
    };
    let per_caller = match &f.per_caller {
        None => Some(None),
        Some(r) => rate(r, "rate_limits.per_caller", cx).map(Some),
    };
    let mut all_ok = true;
    let mut by_caller = BTreeMap::new();
    for (name, r) in &f.callers {
        let key = format!("rate_limits.callers.{name}");
        let known = cx.require(
            file.callers.contains_key(name),
            &key,
            format!("no [callers.{name}] section is configured"),
        );
        match (known, rate(r, &key, cx)) {
            (Some(()), Some(rate)) => {
                by_caller.insert(name.clone(), rate);
            }
            _ => all_ok = false,
        }
    }
    let mut by_upstream = BTreeMap::new();
    for (name, r) in &f.upstreams {
        let key = format!("rate_limits.upstreams.{name}");
        let api = Api::from_name(name);
        let known = match api {
            None => {
                cx.report(
                    &key,
                    "unknown upstream; expected one of payment, status, hpp",
                );
                None
            }
            Some(_) => cx.require(
                file.upstreams.contains_key(name),
                &key,
                format!("no [upstreams.{name}] section is configured"),
            ),
        };
        match (api, known, rate(r, &key, cx)) {
            (Some(api), Some(()), Some(rate)) => {
                by_upstream.insert(api, rate);
            }
            _ => all_ok = false,
        }
    }
    let mut by_operation = BTreeMap::new();
    for (name, r) in &f.operations {
        let key = format!("rate_limits.operations.\"{name}\"");
        let op = routes::operation(name);
        if op.is_none() {
            cx.report(
                &key,
                "unknown operation; expected a name such as \"payment.cancellations.create\"",
            );
        }
        match (op, rate(r, &key, cx)) {
            (Some(op), Some(rate)) => {
                by_operation.insert(op.name, rate);
            }
            _ => all_ok = false,
        }
    }
    let pause = |v: Option<u64>, default: Duration, key: &str| {
        let d = secs(v, default);
        cx.require(
            !d.is_zero() && d <= Duration::from_secs(86_400),
            key,
            "expected 1 to 86400 seconds",
        )
        .map(|()| d)
    };
    let upstream_pause_default = pause(
        f.upstream_pause_default_secs,
        d.upstream_pause_default,
        "rate_limits.upstream_pause_default_secs",
    );
    let upstream_pause_max = pause(
        f.upstream_pause_max_secs,
        d.upstream_pause_max,
        "rate_limits.upstream_pause_max_secs",
    );
    let (upstream_pause_default, upstream_pause_max) =
        (upstream_pause_default?, upstream_pause_max?);
    cx.require(
        upstream_pause_default <= upstream_pause_max,
        "rate_limits.upstream_pause_default_secs",
        "must be at most rate_limits.upstream_pause_max_secs",
    )?;
    all_ok.then_some(())?;
    Some(RateLimitSettings {
        over_limit: over_limit?,
        per_caller: per_caller?,
        callers: by_caller,
        upstreams: by_upstream,
        operations: by_operation,
        upstream_pause_default,
        upstream_pause_max,
    })
}

fn rate(r: &file::RateFile, key: &str, cx: &Ctx<'_>) -> Option<Rate> {
    // Above 1e9/s the period would be below one nanosecond, which GCRA cannot represent;
    // below one a day it overflows the period's Duration long before it means anything.
    let per_sec = cx.require(
        r.rate_per_sec.is_finite()
            && (MIN_RATE_PER_SEC..=MAX_RATE_PER_SEC).contains(&r.rate_per_sec),
        format!("{key}.rate_per_sec"),
        format!(
            "expected requests per second from 0.0000116 (one a day) to 1e9 (e.g. 0.5 or 50), got {:?}",
            r.rate_per_sec
        ),
    );
    let burst = cx.require(
        (1..=MAX_BURST).contains(&r.burst),
        format!("{key}.burst"),
        format!(
            "expected 1 to {MAX_BURST} (requests allowed at once), got {}",
            r.burst
        ),
    );
    per_sec?;
    burst?;
    let window = f64::from(r.burst) / r.rate_per_sec;
    cx.require(
        window <= MAX_RATE_WINDOW.as_secs_f64(),
        format!("{key}.burst"),
        format!(
            "burst / rate_per_sec (the time to earn the whole burst back) must be at most {} s (a year), got {window:.0} s",
            MAX_RATE_WINDOW.as_secs(),
        ),
    )?;
    Some(Rate {
        per_sec: r.rate_per_sec,
        burst: r.burst,
    })
}

pub(super) fn cache(c: &file::CacheFile, cx: &Ctx<'_>) -> Option<CacheSettings> {
    let d = CacheSettings::default();
    // Zero switches one kind of entry off; a week bounds every deadline the cache computes.
    let ttl = |v: Option<u64>, default: Duration, key: &str| match v {
        None => Some(default),
        Some(s) if s <= 7 * 86_400 => Some(Duration::from_secs(s)),
        Some(_) => {
            cx.report(
                format!("cache.{key}"),
                "expected 0 (do not cache) to 604800 seconds",
            );
            None
        }
    };
    let max_bytes = c.max_bytes.unwrap_or(d.max_bytes);
    let bytes_ok = cx.require(
        max_bytes >= 1024,
        "cache.max_bytes",
        "expected at least 1024 bytes",
    );
    let terminal_ttl = ttl(c.terminal_ttl_secs, d.terminal_ttl, "terminal_ttl_secs");
    let changing_ttl = ttl(c.changing_ttl_secs, d.changing_ttl, "changing_ttl_secs");
    let list_past_ttl = ttl(c.list_past_ttl_secs, d.list_past_ttl, "list_past_ttl_secs");
    let list_today_ttl = ttl(
        c.list_today_ttl_secs,
        d.list_today_ttl,
        "list_today_ttl_secs",
    );
    let not_found_ttl = ttl(c.not_found_ttl_secs, d.not_found_ttl, "not_found_ttl_secs");
    let stale_if_error = ttl(
        c.stale_if_error_secs,
        d.stale_if_error,
        "stale_if_error_secs",
    );
    bytes_ok?;
    Some(CacheSettings {
        max_bytes,
        terminal_ttl: terminal_ttl?,
        changing_ttl: changing_ttl?,
        list_past_ttl: list_past_ttl?,
        list_today_ttl: list_today_ttl?,
        not_found_ttl: not_found_ttl?,
        stale_if_error: stale_if_error?,
    })
}
