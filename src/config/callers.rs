//! `[callers.*]` and `[gateway_tokens]`, validated: who the internal callers are, what each
//! may call, and the parsed keys that sign and verify the gateway's own JWTs.

use std::{fmt, time::Duration};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};

use super::operations::OperationMatcher;
use crate::tls::CertIdentity;

/// How a gateway-issued JWT is signed and verified: the keys, parsed once at load. Never
/// printed: `Debug` names the algorithm only.
#[derive(Clone)]
pub struct SigningKey {
    algorithm: Algorithm,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl SigningKey {
    /// A shared HMAC key (HS256).
    pub fn hs256(secret: &[u8]) -> SigningKey {
        SigningKey {
            algorithm: Algorithm::HS256,
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }

    /// An Ed25519 key pair (EdDSA) from PEM; `None` when either half does not parse.
    pub fn ed_dsa_pem(private_pem: &[u8], public_pem: &[u8]) -> Option<SigningKey> {
        Some(SigningKey {
            algorithm: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_pem(private_pem).ok()?,
            decoding: DecodingKey::from_ed_pem(public_pem).ok()?,
        })
    }

    /// An RSA key pair (RS256) from PEM; `None` when either half does not parse.
    pub fn rs256_pem(private_pem: &[u8], public_pem: &[u8]) -> Option<SigningKey> {
        Some(SigningKey {
            algorithm: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_pem(private_pem).ok()?,
            decoding: DecodingKey::from_rsa_pem(public_pem).ok()?,
        })
    }

    /// The JWT `alg`.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The key that signs.
    pub fn encoding(&self) -> &EncodingKey {
        &self.encoding
    }

    /// The key that verifies.
    pub fn decoding(&self) -> &DecodingKey {
        &self.decoding
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.algorithm {
            Algorithm::HS256 => "Hs256([REDACTED])",
            Algorithm::EdDSA => "EdDsa([REDACTED])",
            Algorithm::RS256 => "Rs256([REDACTED])",
            _ => "[REDACTED]",
        })
    }
}

/// `[gateway_tokens]`, validated.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// Signing key.
    pub key: SigningKey,
    /// `iss`.
    pub issuer: String,
    /// Lifetime of issued tokens.
    pub lifetime: Duration,
}

impl IssuerConfig {
    /// `algorithm` when not set.
    pub const DEFAULT_ALGORITHM: &'static str = "HS256";
    /// `iss` when `issuer` is not set.
    pub const DEFAULT_ISSUER: &'static str = "ratepay-gateway";
    /// `lifetime_secs` when not set.
    pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(900);
}

/// Which X-Partner a caller acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartnerPolicy {
    /// No X-Partner is sent; a caller-supplied one is refused.
    None,
    /// Always this value; a different caller-supplied one is refused.
    Fixed(String),
    /// The caller chooses one of these with its own X-Partner header.
    OneOf(Vec<String>),
}

/// One internal caller.
#[derive(Debug, Clone)]
pub struct CallerConfig {
    /// Caller name (logs, metrics, audit `caller`).
    pub name: String,
    /// SHA-256 of the API key, when the caller has one.
    pub api_key_sha256: Option<[u8; 32]>,
    /// Internal OAuth client id and SHA-256 of its secret.
    pub client: Option<(String, [u8; 32])>,
    /// Allowed operations (`*`, `payment.*`, exact names), resolved against the route table.
    pub operations: OperationMatcher,
    /// X-Partner policy.
    pub partner: PartnerPolicy,
    /// Client certificate identities (mTLS) that identify this caller.
    pub client_cert: Vec<CertIdentity>,
}

/// Callers and the gateway's JWT issuer.
#[derive(Debug, Clone)]
pub struct CallersConfig {
    /// All callers.
    pub callers: Vec<CallerConfig>,
    /// JWT issuer (`None`: only API keys are accepted and `/oauth/token` answers 404).
    pub issuer: Option<IssuerConfig>,
    /// Audiences a caller may request a gateway JWT for (the upstreams' audiences).
    pub audiences: Vec<String>,
}

/// Caller names appear in logs, metrics labels, audit records and idempotency scopes.
pub fn valid_caller_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Validates that a value fits an X-Partner header.
pub(super) fn valid_partner(p: &str) -> bool {
    !p.is_empty() && p.len() <= 128 && p.bytes().all(|b| b.is_ascii_graphic())
}
