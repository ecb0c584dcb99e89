//! What the headers say about storing: the caller's and Ratepay's `Cache-Control`, the
//! headers never stored, and Ratepay's `Age` (capped as RFC 9111 section 1.2.2 asks).

use std::time::Duration;

use http::{header, HeaderMap, HeaderName, HeaderValue};

/// What the caller's request asks of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Directive {
    Normal,
    /// Fetch fresh, refresh the entry.
    NoCache,
    /// Fetch fresh, store nothing.
    NoStore,
}

pub(super) fn cache_control_has(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case(token))
}

pub(super) fn directive(headers: &HeaderMap) -> Directive {
    if cache_control_has(headers, &header::CACHE_CONTROL, "no-store") {
        Directive::NoStore
    } else if cache_control_has(headers, &header::CACHE_CONTROL, "no-cache")
        || cache_control_has(headers, &header::CACHE_CONTROL, "max-age=0")
        || cache_control_has(headers, &header::PRAGMA, "no-cache")
    {
        Directive::NoCache
    } else {
        Directive::Normal
    }
}

/// Headers never stored: computed per answer, or not for a shared cache.
pub(super) const UNSTORED: [&str; 5] = [
    "age",
    "x-cache",
    "set-cookie",
    "ratelimit",
    "ratelimit-policy",
];

/// The largest `Age` the cache reads or reports: RFC 9111 section 1.2.2 has a cache send
/// 2^31 for any delta-seconds it cannot hold or that is larger.
pub const MAX_AGE_SECS: u64 = 1 << 31;

/// Ratepay's `Age` (delta-seconds), capped at [`MAX_AGE_SECS`]; not digits → absent.
pub fn parse_age(value: &HeaderValue) -> Option<u64> {
    let digits = value.to_str().ok()?.trim();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(digits.parse::<u64>().unwrap_or(u64::MAX).min(MAX_AGE_SECS))
}

/// The `Age` to send for an entry stored `stored_for` ago that arrived `base_age` old.
pub(super) fn reported_age(stored_for: Duration, base_age: u64) -> u64 {
    stored_for
        .as_secs()
        .saturating_add(base_age)
        .min(MAX_AGE_SECS)
}
