//! Ratepay's OAuth 2.0 client-credentials server: `POST /oauth/token` and bearer checks.
//!
//! Tokens are signed and checked by the `TokenIssuer` (`tokens.rs`). Every API call passes
//! [`authenticate`] for its API's audience before anything else happens; a failure is a 401
//! with a JSON body, like Ratepay's gateway.

use std::time::Duration;

use http::{header, HeaderMap, HeaderValue, StatusCode};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{
    call::is_json,
    reply::Reply,
    state::{lock, Sandbox},
    tokens::{unix_now, TokenError},
};

/// Compares secrets without an early exit on the first differing byte: both sides are hashed
/// first, so even the length does not show in the timing.
fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    let (ha, hb) = (Sha256::digest(a), Sha256::digest(b));
    ha.iter()
        .zip(hb.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Reply {
    Reply::json(
        status,
        &json!({"error": error, "error_description": description}),
    )
    // Token answers must never be cached (RFC 6749 5.1), errors included.
    .with_header(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))
}

#[derive(Deserialize)]
struct TokenRequest {
    client_id: Option<String>,
    client_secret: Option<String>,
    audience: Option<String>,
    grant_type: Option<String>,
}

/// `POST /oauth/token`; `lifetime` overrides the configured token lifetime (an `expires_in`
/// fault).
pub(crate) fn token(
    sandbox: &Sandbox,
    headers: &HeaderMap,
    body: &[u8],
    lifetime: Option<Duration>,
) -> Reply {
    if !is_json(headers) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Content-Type must be application/json",
        );
    }
    let Ok(req) = serde_json::from_slice::<TokenRequest>(body) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the body must be a JSON object with client_id, client_secret, audience and grant_type",
        );
    };
    let (Some(client_id), Some(secret), Some(audience), Some(grant_type)) = (
        req.client_id,
        req.client_secret,
        req.audience,
        req.grant_type,
    ) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "client_id, client_secret, audience and grant_type are required",
        );
    };
    if grant_type != "client_credentials" {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only grant_type client_credentials is supported",
        );
    }
    // Look at every client so the time taken does not reveal which ids exist.
    let known = sandbox.config.clients.iter().fold(false, |ok, c| {
        let id_ok = secrets_equal(c.client_id.as_bytes(), client_id.as_bytes());
        let secret_ok = secrets_equal(
            c.client_secret.expose_secret().as_bytes(),
            secret.as_bytes(),
        );
        ok | (id_ok & secret_ok)
    });
    if !known {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "unknown client_id or wrong client_secret",
        );
    }
    let a = &sandbox.config.audiences;
    if ![&a.payment, &a.status, &a.hpp].contains(&&audience) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "access_denied",
            "the audience is not one of this server's APIs",
        );
    }
    let jti = uuid::Uuid::new_v4().simple().to_string();
    let lifetime = lifetime.unwrap_or(sandbox.config.token_lifetime);
    let Some(access_token) =
        sandbox
            .tokens
            .issue(&client_id, &audience, lifetime, unix_now(), jti.clone())
    else {
        return oauth_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "could not sign the token",
        );
    };
    {
        let mut inner = lock(&sandbox.inner);
        inner.issued.push(jti);
        inner.stats.token_issued(&audience);
    }
    let body: Value = json!({
        "access_token": access_token,
        "expires_in": lifetime.as_secs(),
        "token_type": "Bearer",
    });
    Reply::json(StatusCode::OK, &body)
        .with_header(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))
}

/// Checks the bearer token of an API call against `audience`; the client id on success.
pub(crate) fn authenticate(
    sandbox: &Sandbox,
    headers: &HeaderMap,
    audience: &str,
) -> Result<String, TokenError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .filter(|t| !t.is_empty())
        .ok_or(TokenError::Missing)?;
    let claims = sandbox.tokens.verify(token, audience, unix_now())?;
    if lock(&sandbox.inner).revoked.contains(&claims.jti) {
        return Err(TokenError::Revoked);
    }
    Ok(claims.sub)
}

/// The 401 answer for a refused token (RFC 6750 `WWW-Authenticate`).
pub(crate) fn unauthorized(err: &TokenError) -> Reply {
    let (code, challenge) = match err {
        TokenError::Missing => ("unauthorized", "Bearer".to_owned()),
        other => (
            "invalid_token",
            format!("Bearer error=\"invalid_token\", error_description=\"{other}\""),
        ),
    };
    let reply = Reply::json(
        StatusCode::UNAUTHORIZED,
        &json!({"error": code, "error_description": err.to_string()}),
    );
    match HeaderValue::from_str(&challenge) {
        Ok(v) => reply.with_header(header::WWW_AUTHENTICATE, v),
        Err(_) => reply,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_comparison() {
        assert!(secrets_equal(b"abc", b"abc"));
        assert!(!secrets_equal(b"abc", b"abd"));
        assert!(!secrets_equal(b"abc", b"abcd"));
    }
}
