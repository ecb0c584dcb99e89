//! The production [`FetchToken`]: Ratepay's JSON client-credentials request over the shared client.

use bytes::Bytes;
use http::{header, Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use secrecy::{ExposeSecret, SecretString};
use std::time::Duration;

use super::{FetchError, FetchFuture, FetchToken, Fetched, MAX_TOKEN_LIFETIME};
use crate::client::HttpClient;

/// Token responses are small; anything larger is not a token response.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;

/// Fetches tokens for one credential set and audience.
pub struct HttpFetcher {
    /// Shared upstream client.
    pub client: HttpClient,
    /// Token endpoint.
    pub token_url: Uri,
    /// `client_id`.
    pub client_id: String,
    /// `client_secret`.
    pub client_secret: SecretString,
    /// Requested audience.
    pub audience: String,
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

impl FetchToken for HttpFetcher {
    fn fetch(&self) -> FetchFuture {
        let body = serde_json::json!({
            "client_id": self.client_id,
            "client_secret": self.client_secret.expose_secret(),
            "audience": self.audience,
            "grant_type": "client_credentials",
        });
        let req = serde_json::to_vec(&body)
            .map_err(|e| FetchError::Malformed(e.to_string()))
            .and_then(|bytes| {
                Request::builder()
                    .method(Method::POST)
                    .uri(self.token_url.clone())
                    .header(header::CONTENT_TYPE, "application/json")
                    .header(header::ACCEPT, "application/json")
                    .body(Full::new(Bytes::from(bytes)))
                    .map_err(|e| FetchError::Malformed(e.to_string()))
            });
        let client = self.client.clone();
        Box::pin(async move {
            let resp = client
                .request(req?)
                .await
                .map_err(|e| FetchError::Transport(crate::client::describe_client_error(&e)))?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_TOKEN_RESPONSE)
                .collect()
                .await
                .map_err(|e| FetchError::Transport(e.to_string()))?
                .to_bytes();
            match status.as_u16() {
                200 => {}
                401 | 403 => return Err(FetchError::Refused(status.as_u16())),
                s => return Err(FetchError::Status(s)),
            }
            parse_token_response(&bytes)
        })
    }
}

/// Reads a 200 answer's body from the token endpoint: the token and its remaining life.
pub fn parse_token_response(bytes: &[u8]) -> Result<Fetched, FetchError> {
    let parsed: TokenResponse = serde_json::from_slice(bytes).map_err(|_| {
        FetchError::Malformed("expected {\"access_token\", \"expires_in\", \"token_type\"}".into())
    })?;
    let expires_in = lifetime(&parsed.access_token, parsed.expires_in);
    if expires_in.is_zero() {
        return Err(FetchError::Malformed(
            "the token is already expired (expires_in / exp)".into(),
        ));
    }
    Ok(Fetched {
        access_token: SecretString::from(parsed.access_token),
        expires_in,
    })
}

#[derive(serde::Deserialize)]
struct ExpClaim {
    exp: u64,
}

/// The token's remaining life: `expires_in`, shortened to the JWT's `exp` when that is earlier
/// (`exp` has whole-second precision and is what Ratepay checks), and to
/// [`MAX_TOKEN_LIFETIME`] (an opaque token has no `exp` to bound a huge `expires_in`). The
/// signature is not verified: the gateway only reads when Ratepay will stop accepting the token.
fn lifetime(token: &str, expires_in: u64) -> Duration {
    let announced = Duration::from_secs(expires_in).min(MAX_TOKEN_LIFETIME);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    match jsonwebtoken::dangerous::insecure_decode_claims::<ExpClaim>(token) {
        Ok(c) => Duration::from_secs(c.exp)
            .saturating_sub(now)
            .min(announced),
        Err(_) => announced,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_claim_shortens_announced_lifetime() {
        crate::crypto::install_providers();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = serde_json::json!({"exp": now + 10});
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"k"),
        )
        .unwrap();
        let l = lifetime(&token, 1800);
        assert!(
            l <= Duration::from_secs(10) && l > Duration::from_secs(8),
            "{l:?}"
        );
        assert_eq!(lifetime("opaque", 30), Duration::from_secs(30));
    }

    #[test]
    fn huge_expires_in_and_exp_are_capped_at_a_day() {
        crate::crypto::install_providers();
        let day = Duration::from_secs(86_400);
        assert_eq!(lifetime("opaque", u64::MAX), day);
        assert_eq!(lifetime("opaque", 86_401), day);
        assert_eq!(lifetime("opaque", 86_400), day);
        let far = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &serde_json::json!({"exp": u64::MAX}),
            &jsonwebtoken::EncodingKey::from_secret(b"k"),
        )
        .unwrap();
        assert_eq!(lifetime(&far, u64::MAX), day);
        assert_eq!(lifetime(&far, 60), Duration::from_secs(60));
    }
}
