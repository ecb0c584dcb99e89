//! Call counters behind `GET /_sandbox/stats`.
//!
//! Counted first thing for every call, whatever its outcome (401, fault, 404 ...), so the
//! gateway's tests can prove that a request never reached "Ratepay" at all.

use std::collections::BTreeMap;

use serde::Serialize;

/// Counters since start or the last reset.
#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct Stats {
    /// Calls per operation name (`routes::OPERATIONS` names).
    pub requests: BTreeMap<&'static str, u64>,
    /// Sum of `requests`: every API call (not `/oauth/token`, not `/_sandbox/*`).
    pub requests_total: u64,
    /// The same API calls by HTTP version (`HTTP/1.1`, `HTTP/2`), so that a test can prove
    /// which protocol the gateway's client negotiated.
    pub requests_by_version: BTreeMap<&'static str, u64>,
    /// Successful token grants.
    pub tokens_issued: u64,
    /// Successful token grants per audience.
    pub tokens_issued_by_audience: BTreeMap<String, u64>,
    /// Every `POST /oauth/token`, whatever its outcome.
    pub token_requests: u64,
}

impl Stats {
    /// Counts one call of `operation` made over `version`.
    pub(crate) fn request(&mut self, operation: &'static str, version: http::Version) {
        *self.requests.entry(operation).or_default() += 1;
        self.requests_total += 1;
        *self
            .requests_by_version
            .entry(version_name(version))
            .or_default() += 1;
    }

    /// Counts one call of the token endpoint.
    pub(crate) fn token_request(&mut self) {
        self.token_requests += 1;
    }

    /// Counts one issued token.
    pub(crate) fn token_issued(&mut self, audience: &str) {
        self.tokens_issued += 1;
        *self
            .tokens_issued_by_audience
            .entry(audience.to_owned())
            .or_default() += 1;
    }
}

/// The name `requests_by_version` uses for `version`.
fn version_name(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up() {
        let mut s = Stats::default();
        s.request("payment.transactions.get", http::Version::HTTP_11);
        s.request("payment.transactions.get", http::Version::HTTP_2);
        s.request("hpp.sessions.create", http::Version::HTTP_2);
        s.token_request();
        s.token_request();
        s.token_issued("aud");
        assert_eq!(s.requests["payment.transactions.get"], 2);
        assert_eq!(s.requests_total, 3);
        assert_eq!(s.token_requests, 2);
        assert_eq!(s.tokens_issued, 1);
        assert_eq!(s.tokens_issued_by_audience["aud"], 1);
        assert_eq!(s.requests_by_version["HTTP/1.1"], 1);
        assert_eq!(s.requests_by_version["HTTP/2"], 2);
        assert_eq!(s.requests_by_version.len(), 2);
    }
}
