//! JWTs the gateway issues to internal callers from its own `POST /oauth/token`.
//!
//! `sub` is the caller's name and `aud` the Ratepay audience it asked for, so an unmodified
//! Ratepay client works through the gateway: it fetches a token per audience as it would from
//! Ratepay, and the gateway accepts that token only on routes of that audience.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::{config::IssuerConfig, error::GatewayError};

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    iat: u64,
    exp: u64,
    jti: String,
}

/// Signs and verifies gateway-issued caller tokens.
pub struct Issuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    algorithm: Algorithm,
    issuer: String,
    lifetime: Duration,
}

impl Issuer {
    /// The issuer of its configuration (the keys were parsed at load).
    pub fn new(config: &IssuerConfig) -> Issuer {
        crate::crypto::install_providers();
        Issuer {
            encoding: config.key.encoding().clone(),
            decoding: config.key.decoding().clone(),
            algorithm: config.key.algorithm(),
            issuer: config.issuer.clone(),
            lifetime: config.lifetime,
        }
    }

    /// Issues a token for `caller` and `audience`; returns it with its lifetime in seconds.
    pub fn issue(&self, caller: &str, audience: &str) -> Result<(String, u64), GatewayError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| GatewayError::Internal("system clock before 1970".into()))?
            .as_secs();
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: caller.to_owned(),
            aud: audience.to_owned(),
            iat: now,
            exp: now + self.lifetime.as_secs(),
            jti: uuid::Uuid::new_v4().to_string(),
        };
        let token = jsonwebtoken::encode(&Header::new(self.algorithm), &claims, &self.encoding)
            .map_err(|e| GatewayError::Internal(format!("signing a gateway token failed: {e}")))?;
        Ok((token, self.lifetime.as_secs()))
    }

    /// Verifies a token for `audience` and returns the caller name (`sub`).
    pub fn verify(&self, token: &str, audience: &str) -> Result<String, GatewayError> {
        let mut v = Validation::new(self.algorithm);
        v.set_audience(&[audience]);
        v.set_issuer(&[&self.issuer]);
        v.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        v.leeway = 0;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &v)
            .map(|d| d.claims.sub)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                GatewayError::Unauthenticated(match e.kind() {
                    ErrorKind::ExpiredSignature => {
                        "the gateway token has expired; fetch a new one from /oauth/token"
                    }
                    ErrorKind::InvalidAudience => {
                        "the gateway token was issued for another audience than this API"
                    }
                    _ => "the gateway token is not valid",
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SigningKey;

    fn issuer(lifetime: u64) -> Issuer {
        Issuer::new(&IssuerConfig {
            key: SigningKey::hs256("k".repeat(32).as_bytes()),
            issuer: "gw".into(),
            lifetime: Duration::from_secs(lifetime),
        })
    }

    #[test]
    fn issued_token_verifies_for_its_audience_only() {
        let i = issuer(60);
        let (t, exp) = i.issue("svc", "aud-a").unwrap();
        assert_eq!(exp, 60);
        assert_eq!(i.verify(&t, "aud-a").unwrap(), "svc");
        assert!(i.verify(&t, "aud-b").is_err());
        let other = issuer(60);
        let mut tampered = t.clone();
        tampered.push('x');
        assert!(other.verify(&tampered, "aud-a").is_err());
    }
}
