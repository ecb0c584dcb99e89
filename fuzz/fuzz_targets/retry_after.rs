//! `Retry-After` from an upstream answer (`middleware::retry::retry_after`) and the retry
//! decision made with it (`RetryPolicy::decide`), for any header bytes, status, attempt number
//! and time already spent.
//!
//! Invariants: never panics; a parsed value is the header's delta-seconds; a retry is only
//! decided while attempts remain and only if it starts within the deadline; after a 429 the
//! wait is exactly Ratepay's Retry-After, after a 5xx never shorter than it; 2xx/3xx/4xx other
//! than 429 are never retried.
#![no_main]

use std::time::Duration;

use http::{header::RETRY_AFTER, HeaderValue, StatusCode};
use libfuzzer_sys::fuzz_target;
use ratepay_gateway::{
    body,
    config::RetrySettings,
    middleware::{
        retry::{retry_after, AttemptOutcome, RetryPolicy, Verdict},
        GwResponse,
    },
};

/// Reads fixed-size numbers off the front of the input (zeros once it runs out).
struct Take<'a>(&'a [u8]);

impl Take<'_> {
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.bytes())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut t = Take(data);
    let status = StatusCode::from_u16(100 + t.u16() % 500).unwrap();
    // Attempts are numbered from 1 (the caller's loop starts there).
    let attempt = t.u32().max(1);
    // Any elapsed time: `Instant::elapsed` bounds it in practice, the policy must not rely on it.
    let elapsed = Duration::new(t.u64(), t.u32() % 1_000_000_000);
    let jitter = 0.5 + f64::from(t.u16()) / f64::from(u16::MAX) / 2.0;
    let custom = RetrySettings {
        max_attempts: u32::from(t.u16() % 16),
        initial_backoff: Duration::from_millis(u64::from(t.u32())),
        max_backoff: Duration::from_millis(u64::from(t.u32())),
        deadline: Duration::from_millis(u64::from(t.u32())),
    };
    let header = t.0;

    let mut resp = GwResponse::new(body::full(bytes::Bytes::new()));
    *resp.status_mut() = status;
    let Ok(v) = HeaderValue::from_bytes(header) else {
        return;
    };
    resp.headers_mut().insert(RETRY_AFTER, v);
    let after = retry_after(&resp);
    if let Some(d) = after {
        let text = std::str::from_utf8(header).unwrap().trim();
        let digits = text.strip_prefix('+').unwrap_or(text);
        assert!(
            !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()),
            "{text:?}"
        );
        assert_eq!(d.subsec_nanos(), 0);
    }

    for settings in [RetrySettings::default(), custom] {
        let policy = RetryPolicy::new(settings.clone());
        for outcome in [
            AttemptOutcome::Status(status, after),
            AttemptOutcome::Transport,
        ] {
            let verdict = policy.decide(attempt, outcome, elapsed, jitter);
            let Verdict::RetryAfter(wait) = verdict else {
                continue;
            };
            assert!(attempt < settings.max_attempts);
            assert!(
                elapsed
                    .checked_add(wait)
                    .is_some_and(|end| end <= settings.deadline),
                "retry past the deadline"
            );
            if let AttemptOutcome::Status(st, _) = outcome {
                assert!(st == StatusCode::TOO_MANY_REQUESTS || st.is_server_error());
                if st == StatusCode::TOO_MANY_REQUESTS {
                    assert_eq!(Some(wait), after);
                } else if let Some(a) = after {
                    assert!(wait >= a);
                }
            }
        }
    }
});
