//! ratepay-gateway: a merchant-side egress gateway in front of Ratepay's APIs.
//!
//! Internal services send Ratepay's own paths to the gateway; it authenticates them, applies
//! their policy, injects Ratepay's OAuth tokens and forwards to Ratepay. The request's way:
//!
//! ```text
//! listener (server; TLS/mTLS: tls) → edge: request id, deadline, body limit, route
//!   (edge, request_id, routes); POST /oauth/token → its own stack (middleware::token_endpoint)
//!   → caller: authenticate, policy, X-Partner (middleware::caller, callers)
//!   → caller rate limit (middleware::rate_limit, limits), strict JSON body
//!     (middleware::json_body, json), session-record cache and cancellation invalidation
//!     (middleware::cache)
//!   → idempotency keys (middleware::idempotency)
//!   → upstream rate limit and Ratepay 429 pause (middleware::rate_limit)
//!   → audit intent/outcome for cancellations (middleware::audit, audit)
//!   → header hygiene + X-Partner (middleware::headers)
//!   → Ratepay token, 401 → refresh + one replay (middleware::token, token)
//!   → retry: GETs and keyed POSTs (middleware::retry)
//!   → upstream client over rustls (proxy, client) → Ratepay or the sandbox (sandbox)
//! ```
//!
//! Module map: [`config`] file schema and validated config; [`server`] listeners and drain;
//! [`tls`] inbound TLS/mTLS and client-certificate identities; [`edge`] the edge;
//! [`gateway`] build and reload; [`stack`] the layer order; [`routes`] the operation table;
//! [`callers`] caller auth and gateway-issued JWTs; [`token`] Ratepay token source;
//! [`middleware`] one file or folder per layer; [`proxy`] the innermost forwarder; [`error`]
//! problem responses; [`limits`] what a rate-limit refusal says; [`sched`] how the background
//! threads are scheduled; [`audit`] the hash-chained
//! audit log; [`metrics`] Prometheus metrics; [`cluster`] state shared with other instances through Redis; `sandbox` the local Ratepay simulator (cargo
//! feature `sandbox`, on by default). `tests/module_order.rs` holds the modules' order: each
//! imports only from those below it.

#![forbid(unsafe_code)]

pub mod audit;
pub mod body;
pub mod callers;
pub mod client;
pub mod cluster;
pub mod config;
pub mod conn_clock;
pub mod context;
pub mod crypto;
pub mod edge;
pub mod error;
pub mod gateway;
pub mod json;
pub mod limits;
pub mod log_writer;
pub mod logging;
pub mod metrics;
pub mod middleware;
pub mod proxy;
pub mod recovery;
pub mod reload;
pub mod request_id;
pub mod routes;
#[cfg(feature = "sandbox")]
pub mod sandbox;
pub mod sched;
pub mod send_watch;
pub mod server;
pub mod stack;
pub mod stream_watch;
pub mod tls;
pub mod token;
