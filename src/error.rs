//! The gateway's own errors and their one conversion into RFC 9457 problem responses.
//!
//! Layers return a typed [`GatewayError`] where something goes wrong; the edge service turns it
//! into `application/problem+json` with a stable `type`, a `title`, the `status`, a `detail`
//! that tells the caller what to fix and the request id. hyper never sees an error, so a caller
//! always gets an answer. Messages never contain a credential: variants carry only names.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::body::{self, Body};

/// Everything the gateway itself can refuse or fail with.
///
/// `Clone` so that one upstream failure can be shared by every request coalesced onto it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    /// The path carries a trick (encoding, dot segments, bad id).
    #[error("{0}")]
    BadPath(#[from] crate::routes::PathError),
    /// No known Ratepay operation has this path.
    #[error("no Ratepay operation is served at {0}; the gateway forwards only the documented Ratepay paths")]
    UnknownRoute(String),
    /// The path exists but not with this method.
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed {
        /// Method used.
        method: String,
        /// Path.
        path: String,
    },
    /// The request body is over the limit.
    #[error("the request body is larger than the limit of {0} bytes")]
    BodyTooLarge(usize),
    /// The request body could not be read.
    #[error("the request body could not be read: {0}")]
    BodyRead(String),
    /// Missing or unknown caller credential.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// A verified client certificate whose identities map to no caller, and no other credential.
    #[error("{0}")]
    UnknownCertificate(String),
    /// The client certificate and the Authorization header name different callers.
    #[error("{0}")]
    CredentialConflict(String),
    /// The caller may not call this operation.
    #[error("caller '{caller}' may not call {operation}")]
    Forbidden {
        /// Caller name.
        caller: String,
        /// Operation name.
        operation: &'static str,
    },
    /// The caller sent an X-Partner its policy does not allow.
    #[error("{0}")]
    PartnerNotAllowed(String),
    /// The caller must choose an X-Partner.
    #[error("{0}")]
    PartnerRequired(String),
    /// A money call whose body is not one JSON object with unique keys (400).
    #[error("the body of {operation} must be one JSON object with unique keys, so that the gateway's audit and Ratepay read the same fields: {reason}")]
    InvalidJson {
        /// Operation name.
        operation: &'static str,
        /// What is wrong, and where.
        reason: String,
    },
    /// A malformed request the caller must fix (400).
    #[error("{0}")]
    BadRequest(String),
    /// `POST /oauth/token` on the gateway failed for the caller.
    #[error("{0}")]
    InvalidClient(&'static str),
    /// No upstream is configured for the route's API.
    #[error("no upstream is configured for the {0} API")]
    NoUpstream(&'static str),
    /// No valid Ratepay token could be obtained.
    #[error("no valid Ratepay token for the {upstream} API could be obtained: {reason}")]
    TokenUnavailable {
        /// Upstream name.
        upstream: &'static str,
        /// Why (never contains the token or secret).
        reason: String,
    },
    /// Connecting to or talking with the upstream failed.
    #[error("the {upstream} API could not be reached: {reason}")]
    UpstreamUnreachable {
        /// Upstream name.
        upstream: &'static str,
        /// Why.
        reason: String,
    },
    /// The upstream did not answer in time.
    #[error("the {upstream} API did not answer within {timeout_ms} ms")]
    UpstreamTimeout {
        /// Upstream name.
        upstream: &'static str,
        /// The timeout that passed.
        timeout_ms: u128,
    },
    /// The whole request took longer than the configured deadline.
    #[error("the request did not complete within {0} ms")]
    Deadline(u128),
    /// The same Idempotency-Key was used for a different request.
    #[error("this Idempotency-Key was already used for a different request (method, path, X-Partner or body differ); use a new key for a new call")]
    IdempotencyConflict,
    /// The audit log cannot record the call, so it is not forwarded (fail closed).
    #[error("the audit log cannot record this call, so it was not sent to Ratepay: {0}")]
    AuditUnavailable(String),
    /// Over a gateway rate limit, or Ratepay's 429 pause on the upstream (429 + Retry-After).
    #[error("{0}")]
    RateLimited(crate::limits::Refusal),
    /// Redis holds the shared rate limits, cannot be reached, and the configured fallback is
    /// to refuse (`cluster.rate_limit_fallback = "refuse"`).
    #[error("the shared rate limits (Redis) cannot be reached and this gateway is configured to refuse rather than limit locally (cluster.rate_limit_fallback = \"refuse\"); retry shortly")]
    SharedLimitsUnavailable,
    /// A bug or an unexpected state; details are logged, not returned.
    #[error("internal error")]
    Internal(String),
}

impl GatewayError {
    /// Status code, stable `type` slug and title.
    pub fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use GatewayError::*;
        match self {
            BadPath(_) => (
                StatusCode::BAD_REQUEST,
                "invalid-path",
                "Invalid request path",
            ),
            UnknownRoute(_) => (
                StatusCode::NOT_FOUND,
                "unknown-operation",
                "Unknown operation",
            ),
            MethodNotAllowed { .. } => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            BodyTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "Request body too large",
            ),
            BodyRead(_) => (
                StatusCode::BAD_REQUEST,
                "body-unreadable",
                "Request body unreadable",
            ),
            Unauthenticated(_) => (
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Caller not authenticated",
            ),
            UnknownCertificate(_) => (
                StatusCode::UNAUTHORIZED,
                "unknown-client-certificate",
                "Client certificate maps to no caller",
            ),
            CredentialConflict(_) => (
                StatusCode::UNAUTHORIZED,
                "credential-conflict",
                "Conflicting caller credentials",
            ),
            Forbidden { .. } => (
                StatusCode::FORBIDDEN,
                "operation-forbidden",
                "Operation not allowed for this caller",
            ),
            PartnerNotAllowed(_) => (
                StatusCode::FORBIDDEN,
                "partner-forbidden",
                "X-Partner not allowed for this caller",
            ),
            PartnerRequired(_) => (
                StatusCode::BAD_REQUEST,
                "partner-required",
                "X-Partner required",
            ),
            BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request", "Bad request"),
            InvalidJson { .. } => (
                StatusCode::BAD_REQUEST,
                "invalid-json",
                "Request body is not one JSON object",
            ),
            InvalidClient(_) => (
                StatusCode::UNAUTHORIZED,
                "invalid-client",
                "Invalid client credentials",
            ),
            NoUpstream(_) => (StatusCode::NOT_FOUND, "no-upstream", "API not configured"),
            TokenUnavailable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "token-unavailable",
                "Ratepay token unavailable",
            ),
            UpstreamUnreachable { .. } => (
                StatusCode::BAD_GATEWAY,
                "upstream-unreachable",
                "Ratepay API unreachable",
            ),
            UpstreamTimeout { .. } => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream-timeout",
                "Ratepay API timed out",
            ),
            Deadline(_) => (
                StatusCode::GATEWAY_TIMEOUT,
                "deadline-exceeded",
                "Request deadline exceeded",
            ),
            IdempotencyConflict => (
                StatusCode::CONFLICT,
                "idempotency-conflict",
                "Idempotency-Key reused",
            ),
            AuditUnavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "audit-unavailable",
                "Audit log unavailable",
            ),
            RateLimited(r) => match r.scope {
                crate::limits::Scope::Paused(_) => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "upstream-paused",
                    "Ratepay asked the gateway to slow down",
                ),
                _ => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate-limited",
                    "Rate limit exceeded",
                ),
            },
            SharedLimitsUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "shared-limits-unavailable",
                "Shared rate limits unavailable",
            ),
            Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal gateway error",
            ),
        }
    }

    /// The problem response for this error.
    pub fn to_response(&self, request_id: &str) -> Response<Body> {
        let (status, slug, title) = self.parts();
        let detail = match self {
            GatewayError::Internal(_) => "an unexpected error occurred in the gateway; the request id identifies it in the gateway's logs".to_owned(),
            other => other.to_string(),
        };
        let mut resp = problem(status, slug, title, &detail, request_id);
        if let GatewayError::Unauthenticated(_)
        | GatewayError::InvalidClient(_)
        | GatewayError::UnknownCertificate(_)
        | GatewayError::CredentialConflict(_) = self
        {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ratepay-gateway\""),
            );
        }
        if let GatewayError::RateLimited(r) = self {
            r.write_headers(resp.headers_mut());
        }
        resp
    }
}

/// Builds an `application/problem+json` response.
pub fn problem(
    status: StatusCode,
    slug: &str,
    title: &str,
    detail: &str,
    request_id: &str,
) -> Response<Body> {
    let value = serde_json::json!({
        "type": format!("https://ratepay-gateway.dev/problems/{slug}"),
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
        "request_id": request_id,
    });
    let bytes = serde_json::to_vec(&value).unwrap_or_default();
    let mut resp = Response::new(body::full(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    resp
}

/// Why a gateway could not be built from a (valid) configuration.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BuildError(pub String);
