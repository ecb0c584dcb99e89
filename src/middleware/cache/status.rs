//! Where an answer came from ([`CacheStatus`]) and its `X-Cache` header codec.

use http::{HeaderName, HeaderValue};

/// `X-Cache`: `HIT`, `MISS`, `BYPASS` or `STALE`.
pub static X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// A fresh entry.
    Hit,
    /// Fetched from Ratepay (possibly by a concurrent request this one waited for).
    Miss,
    /// Fetched from Ratepay because the caller asked for `no-cache` or `no-store`.
    Bypass,
    /// Ratepay failed; an expired entry within the stale-if-error window.
    Stale,
}

impl CacheStatus {
    const ALL: [CacheStatus; 4] = [
        CacheStatus::Hit,
        CacheStatus::Miss,
        CacheStatus::Bypass,
        CacheStatus::Stale,
    ];

    pub(super) fn header_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Bypass => "BYPASS",
            CacheStatus::Stale => "STALE",
        }
    }

    pub(super) fn header(self) -> HeaderValue {
        HeaderValue::from_static(self.header_str())
    }

    /// The status an `X-Cache` value this layer wrote stands for.
    pub fn from_header(value: &HeaderValue) -> Option<CacheStatus> {
        Self::ALL
            .into_iter()
            .find(|s| s.header_str().as_bytes() == value.as_bytes())
    }

    /// The name in metrics and access records.
    pub fn label(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Bypass => "bypass",
            CacheStatus::Stale => "stale",
        }
    }
}
