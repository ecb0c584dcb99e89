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
    let window = quota_window(rate);
    if let (Some(p), Some(s)) = (
        policy_value(name, (b"q", rate.burst.into()), (b"w", window)),
        policy_value(name, (b"r", remaining.into()), (b"t", reset_secs)),
    ) {
        headers.insert(RATELIMIT_POLICY.clone(), p);
        headers.insert(RATELIMIT.clone(), s);
    }
}

/// `"<name>";<k1>=<v1>;<k2>=<v2>`, written into a buffer on the stack: these two headers go out
/// on every admitted request, and `format!` plus `HeaderValue::from_str` cost about 3,500
/// instructions per request where this costs a few hundred (callgrind, benches/instructions.sh).
/// `None` when the name does not fit (policy names are short constants).
fn policy_value(name: &str, (k1, v1): (&[u8], u64), (k2, v2): (&[u8], u64)) -> Option<HeaderValue> {
    let mut buf = [0u8; 96];
    let mut len = 0;
    let (mut i1, mut i2) = (itoa::Buffer::new(), itoa::Buffer::new());
    let (v1, v2) = (i1.format(v1).as_bytes(), i2.format(v2).as_bytes());
    for part in [
        b"\"",
        name.as_bytes(),
        b"\";",
        k1,
        b"=",
        v1,
        b";",
        k2,
        b"=",
        v2,
    ] {
        buf.get_mut(len..len + part.len())?.copy_from_slice(part);
        len += part.len();
    }
    HeaderValue::from_bytes(&buf[..len]).ok()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_values_fit_the_longest_name_and_the_largest_numbers() {
        let v = policy_value("upstream-pause", (b"q", u64::MAX), (b"w", u64::MAX));
        assert_eq!(
            v.as_ref().and_then(|v| v.to_str().ok()),
            Some("\"upstream-pause\";q=18446744073709551615;w=18446744073709551615")
        );
        let v = policy_value("caller", (b"r", 0), (b"t", 7));
        assert_eq!(v.unwrap(), "\"caller\";r=0;t=7");
        // A name longer than the buffer is refused, never truncated.
        assert!(policy_value(&"x".repeat(100), (b"q", 1), (b"w", 1)).is_none());
    }
}
