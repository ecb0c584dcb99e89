//! The session-record cache: `hpp.session_records.get` and `hpp.session_records.list` answered
//! from memory while their content cannot have changed, one upstream call for many callers.
//!
//! Sits after the caller policy and the caller's rate limit (a caller only gets a cached answer
//! for an operation it may call, and hits count against its budget) and before the budget
//! toward Ratepay, idempotency and the token. Entries are keyed by upstream, X-Partner and path
//! with sorted query, so partners never share one.
//!
//! - Lifetime by content ([`freshness`]): terminal records long, changing ones briefly, a list
//!   for a past day whose records are all terminal long, other lists briefly, 404s briefly; only
//!   200 and 404 are stored, never an answer with `Cache-Control: no-store`.
//! - Concurrent misses share one upstream call: moka's `try_get_with`, itself run in
//!   `tokio::spawn` so a caller hanging up never cancels the call others wait for.
//! - `Cache-Control: no-cache` from the caller fetches fresh and refreshes the entry,
//!   `no-store` fetches fresh and stores nothing (`X-Cache: BYPASS`).
//! - Stale-if-error: an entry stays in memory `stale_if_error` past its freshness; when Ratepay
//!   fails (5xx, unreachable, timeout, paused) it is served with `X-Cache: STALE`.
//! - Freshness is decided on an injectable governor clock; moka's own expiry only reclaims
//!   memory once an entry is past freshness and the stale window, and the weigher bounds bytes.
//! - [`SessionRecordCache::invalidate_transaction`] drops the records of a cancelled
//!   transaction; [`InvalidateOnCancellationLayer`] calls it after a 2xx cancellation.
//!
//! Files, one concern each: `status.rs` (X-Cache), `key.rs` (entry keys), `freshness.rs`
//! (lifetime by content), `directives.rs` (Cache-Control and Age), `entry.rs` (stored answers
//! and expiry), `store.rs` (lookups, coalesced fetch, invalidation), `layers.rs` (the layers).

mod directives;
mod entry;
mod freshness;
mod key;
mod layers;
mod named;
mod status;
mod store;
#[cfg(test)]
mod tests;

pub use directives::*;
pub use entry::*;
pub use freshness::*;
pub use key::*;
pub use layers::*;
pub use status::*;
pub use store::*;

/// The one-record read.
pub const RECORD_GET: &str = "hpp.session_records.get";
/// The records-of-a-day read.
pub const RECORD_LIST: &str = "hpp.session_records.list";
/// The operation whose success invalidates a transaction's records.
pub const CANCELLATION: &str = "payment.cancellations.create";
