//! Ratepay's OAuth 2.0 client-credentials server: `POST /oauth/token` and bearer checks.
//!
//! Tokens are real HS256 JWTs (`iss`, `sub` = client id, `aud`, `iat`, `exp`, `jti`) signed with
//! a key that is random per instance, or derived from the seed so that a seeded sandbox is
//! reproducible. Every API call passes [`TokenIssuer::verify`] for its API's audience before
//! anything else happens; a failure is a 401 with a JSON body, like Ratepay's gateway.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{header, HeaderMap, HeaderValue, StatusCode};
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{
    http::{is_json, Reply},
    state::{lock, Sandbox},
};

/// `iss` of every token.
pub(crate) const ISSUER: &str = "ratepay-sandbox";

/// The claims of a sandbox access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Claims {
    /// Issuer.
    pub iss: String,
    /// OAuth client id.
    pub sub: String,
    /// Audience (the API).
    pub aud: String,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Token id (revocation works on it).
    pub jti: String,
}

/// Why a bearer token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TokenError {
    /// No `Authorization: Bearer` header.
    #[error("missing bearer token")]
    Missing,
    /// Not a JWT signed by this sandbox.
    #[error("invalid token signature or format")]
    Invalid,
    /// Audience of another API.
    #[error("token audience does not match this API")]
    Audience,
    /// `exp` reached.
    #[error("token expired")]
    Expired,
    /// Revoked with `POST /_sandbox/tokens/revoke`.
    #[error("token revoked")]
    Revoked,
}

/// Signs and checks tokens with this instance's key.
pub(crate) struct TokenIssuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl TokenIssuer {
    /// A key derived from `seed`, or random.
    pub(crate) fn new(seed: Option<u64>) -> TokenIssuer {
        let key: [u8; 32] = match seed {
            Some(s) => Sha256::new()
                .chain_update(b"ratepay-sandbox-jwt-key")
                .chain_update(s.to_be_bytes())
                .finalize()
                .into(),
            None => {
                let mut k = [0u8; 32];
                rand::rng().fill_bytes(&mut k);
                k
            }
        };
        TokenIssuer {
            encoding: EncodingKey::from_secret(&key),
            decoding: DecodingKey::from_secret(&key),
        }
    }

    /// Signs a token for `sub` and `aud` valid from `now` for `lifetime`.
    pub(crate) fn issue(
        &self,
        sub: &str,
        aud: &str,
        lifetime: Duration,
        now: u64,
        jti: String,
    ) -> Option<String> {
        let claims = Claims {
            iss: ISSUER.to_owned(),
            sub: sub.to_owned(),
            aud: aud.to_owned(),
            iat: now,
            exp: now.saturating_add(lifetime.as_secs()),
            jti,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).ok()
    }

    /// Checks signature, issuer, audience and expiry (zero leeway; `exp` itself is already
    /// expired, as RFC 7519 says "on or after").
    pub(crate) fn verify(&self, token: &str, aud: &str, now: u64) -> Result<Claims, TokenError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 0;
        v.set_audience(&[aud]);
        v.set_issuer(&[ISSUER]);
        v.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        // jsonwebtoken reads the clock itself and accepts `exp == now`; check expiry ourselves
        // against the passed clock after the signature is known to be good.
        v.validate_exp = false;
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.decoding, &v).map_err(|e| {
                match e.kind() {
                    ErrorKind::InvalidAudience => TokenError::Audience,
                    ErrorKind::ExpiredSignature => TokenError::Expired,
                    _ => TokenError::Invalid,
                }
            })?;
        if now >= data.claims.exp {
            return Err(TokenError::Expired);
        }
        Ok(data.claims)
    }
}

/// Seconds since the epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

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

    fn issuer() -> TokenIssuer {
        crate::crypto::install_providers();
        TokenIssuer::new(Some(1))
    }

    #[test]
    fn issued_token_verifies_for_its_audience_only() {
        let t = issuer();
        let now = unix_now();
        let tok = t
            .issue("client", "aud-a", Duration::from_secs(60), now, "j".into())
            .unwrap();
        let c = t.verify(&tok, "aud-a", now).unwrap();
        assert_eq!(c.sub, "client");
        assert_eq!(c.exp, now + 60);
        assert_eq!(
            t.verify(&tok, "aud-b", now).unwrap_err(),
            TokenError::Audience
        );
    }

    #[test]
    fn expiry_has_zero_leeway_and_exp_itself_is_expired() {
        let t = issuer();
        let now = unix_now();
        let tok = t
            .issue("c", "a", Duration::from_secs(10), now, "j".into())
            .unwrap();
        assert!(t.verify(&tok, "a", now + 9).is_ok());
        assert_eq!(
            t.verify(&tok, "a", now + 10).unwrap_err(),
            TokenError::Expired
        );
        let born_expired = t.issue("c", "a", Duration::ZERO, now, "j".into()).unwrap();
        assert_eq!(
            t.verify(&born_expired, "a", now).unwrap_err(),
            TokenError::Expired
        );
    }

    #[test]
    fn a_lifetime_beyond_the_epoch_range_saturates_exp_and_still_verifies() {
        let t = issuer();
        let now = unix_now();
        let tok = t
            .issue("c", "a", Duration::from_secs(u64::MAX), now, "j".into())
            .unwrap();
        assert_eq!(t.verify(&tok, "a", now).unwrap().exp, u64::MAX);
    }

    #[test]
    fn other_keys_and_garbage_are_invalid() {
        crate::crypto::install_providers();
        let now = unix_now();
        let other = TokenIssuer::new(Some(2))
            .issue("c", "a", Duration::from_secs(60), now, "j".into())
            .unwrap();
        assert_eq!(
            issuer().verify(&other, "a", now).unwrap_err(),
            TokenError::Invalid
        );
        assert_eq!(
            issuer().verify("not.a.jwt", "a", now).unwrap_err(),
            TokenError::Invalid
        );
    }

    #[test]
    fn secret_comparison() {
        assert!(secrets_equal(b"abc", b"abc"));
        assert!(!secrets_equal(b"abc", b"abd"));
        assert!(!secrets_equal(b"abc", b"abcd"));
    }
}
