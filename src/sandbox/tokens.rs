//! The sandbox's access tokens: real HS256 JWTs (`iss`, `sub` = client id, `aud`, `iat`,
//! `exp`, `jti`) signed with a key that is random per instance, or derived from the seed so that
//! a seeded sandbox is reproducible. [`TokenIssuer`] signs and checks them with the time passed
//! in, so the rules are tested without a clock; the OAuth endpoint (`oauth.rs`) uses it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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
}
