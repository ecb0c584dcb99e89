//! What a rate limit tells the caller: which limit refused ([`Scope`]), when to come back
//! ([`Refusal`]), the room left under the tightest limit ([`Headroom`]) and the IETF httpapi
//! draft's `RateLimit-Policy` / `RateLimit` header codec.
//!
//! It sits below [`crate::error`] (a refusal is a [`crate::error::GatewayError`]) and below the
//! rate-limit layers that make the decisions (`middleware::rate_limit`).

use std::{fmt, time::Duration};

use http::{header, HeaderMap, HeaderName, HeaderValue};

use crate::{config::Rate, routes::Api};

/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers).
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (draft-ietf-httpapi-ratelimit-headers).
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Which limit refused (or paced) a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// A caller's own budget.
    Caller(String),
    /// The gateway's budget toward one Ratepay API.
    Upstream(Api),
    /// The gateway's budget toward Ratepay for one operation.
    Operation(&'static str),
    /// Ratepay answered 429 on this API; the gateway holds calls until its Retry-After passed.
    Paused(Api),
}

impl Scope {
    /// The policy name in `RateLimit-Policy` / `RateLimit` (never caller data).
    pub fn policy_name(&self) -> &'static str {
        match self {
            Scope::Caller(_) => "caller",
            Scope::Upstream(_) => "upstream",
            Scope::Operation(_) => "operation",
            Scope::Paused(_) => "upstream-pause",
        }
    }
}

/// A refused request: which limit, how long until a retry can succeed, and the limit's rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The limit that refused.
    pub scope: Scope,
    /// Earliest time a retry can be admitted.
    pub retry_after: Duration,
    /// The configured rate (`None` for a pause).
    pub rate: Option<Rate>,
}

/// Whole seconds, rounded up (`Retry-After` must not invite a retry that is still too early).
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// `q` and `w` of a GCRA bucket: the burst, and the seconds it takes to earn it all back.
fn quota_window(rate: &Rate) -> u64 {
    ceil_secs(rate.period().saturating_mul(rate.burst)).max(1)
}

impl Refusal {
    /// `Retry-After` in seconds, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        ceil_secs(self.retry_after).max(1)
    }

    /// `Retry-After`, and for a configured limit `RateLimit-Policy` and `RateLimit` (`r=0`).
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        let secs = self.retry_after_secs();
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        if let Some(rate) = &self.rate {
            let name = self.scope.policy_name();
            write_policy(headers, name, rate, 0, secs);
        }
    }
}

fn write_policy(headers: &mut HeaderMap, name: &str, rate: &Rate, remaining: u32, reset_secs: u64) {
    let policy = format!("\"{name}\";q={};w={}", rate.burst, quota_window(rate));
    let state = format!("\"{name}\";r={remaining};t={reset_secs}");
    if let (Ok(p), Ok(s)) = (
        HeaderValue::from_str(&policy),
        HeaderValue::from_str(&state),
    ) {
        headers.insert(RATELIMIT_POLICY.clone(), p);
        headers.insert(RATELIMIT.clone(), s);
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.retry_after_secs();
        let rate = |f: &mut fmt::Formatter<'_>| match &self.rate {
            Some(r) => write!(f, " of {} requests/s (burst {})", r.per_sec, r.burst),
            None => Ok(()),
        };
        match &self.scope {
            Scope::Caller(c) => write!(f, "caller '{c}' is over its rate limit")?,
            Scope::Upstream(a) => write!(f, "the gateway's budget toward the {} API is used up", a.name())?,
            Scope::Operation(o) => write!(f, "the gateway's budget toward Ratepay for {o} is used up")?,
            Scope::Paused(a) => {
                return write!(
                    f,
                    "Ratepay answered 429 on the {} API; the gateway holds calls to it for {secs} more s instead of adding load",
                    a.name()
                )
            }
        }
        rate(f)?;
        write!(f, "; retry after {secs} s")
    }
}

/// Room left under the tightest limit that admitted a request (for the `RateLimit` headers).
#[derive(Debug, Clone, PartialEq)]
pub struct Headroom {
    /// Policy name.
    pub name: &'static str,
    /// The configured rate.
    pub rate: Rate,
    /// Requests that could still go at once.
    pub remaining: u32,
    /// Time until the whole burst is available again.
    pub reset: Duration,
}

impl Headroom {
    /// The headroom of policy `name` at `rate` with `remaining` requests left at once: the
    /// whole burst is back after one period per spent request.
    pub fn new(name: &'static str, rate: Rate, remaining: u32) -> Headroom {
        Headroom {
            name,
            rate,
            remaining,
            reset: rate
                .period()
                .saturating_mul(rate.burst.saturating_sub(remaining)),
        }
    }

    /// Sets `RateLimit-Policy` and `RateLimit`.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        write_policy(
            headers,
            self.name,
            &self.rate,
            self.remaining,
            ceil_secs(self.reset),
        );
    }
}
