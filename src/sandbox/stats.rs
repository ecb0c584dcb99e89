//! Call counters behind `GET /_sandbox/stats`.
//!
//! Counted first thing for every call, whatever its outcome (401, fault, 404 ...), so the
//! gateway's tests can prove that a request never reached "Ratepay" at all.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

/// How many `Idempotency-Key`s [`Stats::idempotency_keys`] keeps per operation (the latest).
pub(crate) const KEYS_KEPT: usize = 256;

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
    /// The `Idempotency-Key` of every call that carried one, per operation, in arrival order,
    /// as received (counted with `requests`, before faults and authentication), so that a test
    /// can prove which key each attempt sent. The latest [`KEYS_KEPT`] per operation.
    pub idempotency_keys: BTreeMap<&'static str, VecDeque<String>>,
}

impl Stats {
    /// Counts one call of `operation` made over `version`, noting its `Idempotency-Key`.
    pub(crate) fn request(
        &mut self,
        operation: &'static str,
        version: http::Version,
        idempotency_key: Option<&http::HeaderValue>,
    ) {
        if let Some(key) = idempotency_key {
            let keys = self.idempotency_keys.entry(operation).or_default();
            if keys.len() == KEYS_KEPT {
                keys.pop_front();
            }
            keys.push_back(String::from_utf8_lossy(key.as_bytes()).into_owned());
        }
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
        s.request("payment.transactions.get", http::Version::HTTP_11, None);
        s.request("payment.transactions.get", http::Version::HTTP_2, None);
        s.request("hpp.sessions.create", http::Version::HTTP_2, None);
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
        assert!(s.idempotency_keys.is_empty());
    }

    #[test]
    fn idempotency_keys_are_kept_in_order_and_bounded() {
        let mut s = Stats::default();
        let op = "payment.cancellations.create";
        for i in 0..KEYS_KEPT + 2 {
            let key = http::HeaderValue::from_str(&format!("k{i}")).unwrap();
            s.request(op, http::Version::HTTP_11, Some(&key));
        }
        let keys = &s.idempotency_keys[op];
        assert_eq!(keys.len(), KEYS_KEPT);
        assert_eq!(keys.front().map(String::as_str), Some("k2"));
        assert_eq!(keys.back().cloned(), Some(format!("k{}", KEYS_KEPT + 1)));
        assert_eq!(s.requests[op], KEYS_KEPT as u64 + 2);
    }
}
