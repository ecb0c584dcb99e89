//! Rate limits: each caller's budget, the budget toward each Ratepay API and operation, and
//! the pause that a 429 from Ratepay imposes on that API.
//!
//! Two layers share one decision struct, [`RateLimits`]:
//! - [`CallerRateLimitLayer`] sits right after the caller policy, before the cache: a caller's
//!   budget counts every request it makes, cache hits included. With shared limits a keyed
//!   call's caller budget is spent by its idempotency lease, in the same Redis round trip
//!   (`RequestStats::caller_deferred`), and a keyed request answered before any lease spends
//!   it afterwards.
//! - [`UpstreamRateLimitLayer`] sits after the cache, before idempotency: only requests that are
//!   about to reach Ratepay spend the upstream and operation budgets, and cache hits are still
//!   served while Ratepay has asked the gateway to back off.
//!
//! Over a limit a request is refused with 429, `Retry-After` (seconds, rounded up) and the
//! IETF draft's `RateLimit-Policy` / `RateLimit` headers, or, in queue mode, waits for its turn
//! up to `max_wait` first. Decisions are synchronous calls on a governor GCRA limiter with an
//! injectable clock ([`governor::clock::FakeRelativeClock`] in tests); the services only sleep.
//!
//! Files: `decision.rs` the GCRA decisions and the 429 pauses (plain synchronous calls, clock
//! injected); `shared.rs` the same budgets kept in Redis for a fleet (`[cluster]`), with their
//! fallback; `layers.rs` the two tower layers and the queue-mode wait; what a refusal says to
//! the caller lives in [`crate::limits`].

mod decision;
mod layers;
mod shared;

pub use decision::{parse_retry_after, Decision, RateLimits};
pub use layers::{
    admit, CallerRateLimit, CallerRateLimitLayer, UpstreamRateLimit, UpstreamRateLimitLayer,
};
pub use shared::SharedRateLimits;
