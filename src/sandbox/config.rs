//! The sandbox's settings: the OAuth clients it accepts, the audience of each API, token
//! lifetime, id seed and HPP session progression. Plain data, read by everything else.

use std::time::Duration;

use secrecy::SecretString;

/// One OAuth client the sandbox accepts.
#[derive(Debug, Clone)]
pub struct SandboxClient {
    /// `client_id`.
    pub client_id: String,
    /// `client_secret`.
    pub client_secret: SecretString,
}

/// The OAuth audience each API requires of its bearer tokens.
#[derive(Debug, Clone)]
pub struct SandboxAudiences {
    /// Payment API v2 (and 2fa).
    pub payment: String,
    /// Transaction Status API.
    pub status: String,
    /// Hosted Payment Page.
    pub hpp: String,
}

impl SandboxAudiences {
    /// Ratepay's integration-environment audiences (ratepay-api.md), which the default
    /// configuration uses so that a gateway configured for integration works unchanged.
    pub fn integration() -> SandboxAudiences {
        SandboxAudiences {
            payment: "https://api-integration.ratepay.com/transaction/management".to_owned(),
            status: "https://api-integration.ratepay.com/transaction/status/v2/transactions"
                .to_owned(),
            hpp: "https://payment-integration.ratepay.com".to_owned(),
        }
    }
}

/// Settings of one sandbox instance.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Clients accepted by `POST /oauth/token`.
    pub clients: Vec<SandboxClient>,
    /// Audiences per API.
    pub audiences: SandboxAudiences,
    /// Lifetime of issued access tokens (`expires_in`, JWT `exp`).
    pub token_lifetime: Duration,
    /// Seed for deterministic ids; random when `None`.
    pub seed: Option<u64>,
    /// How long an HPP session stays in each non-terminal status before it moves on by itself;
    /// `None` means sessions only change when a test sets their status. `Some(ZERO)` means
    /// every read of a session record advances it one step (for tests that must not sleep).
    pub session_step: Option<Duration>,
}

/// Client id of the default configuration.
pub const DEFAULT_CLIENT_ID: &str = "local-client";
/// Client secret of the default configuration (a well-known test value, not a secret).
pub const DEFAULT_CLIENT_SECRET: &str = "local-sandbox-secret";

impl Default for SandboxConfig {
    /// One client `local-client` / `local-sandbox-secret`, Ratepay's integration audiences,
    /// 1800 s tokens (Ratepay's `expires_in`), random ids, sessions advancing every 10 s.
    fn default() -> SandboxConfig {
        SandboxConfig {
            clients: vec![SandboxClient {
                client_id: DEFAULT_CLIENT_ID.to_owned(),
                client_secret: SecretString::from(DEFAULT_CLIENT_SECRET),
            }],
            audiences: SandboxAudiences::integration(),
            token_lifetime: Duration::from_secs(1800),
            seed: None,
            session_step: Some(Duration::from_secs(10)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_client_secrets() {
        let cfg = SandboxConfig::default();
        let shown = format!("{cfg:?}");
        assert!(shown.contains(DEFAULT_CLIENT_ID));
        assert!(!shown.contains(DEFAULT_CLIENT_SECRET), "{shown}");
    }

    #[test]
    fn default_config_uses_ratepay_integration_audiences() {
        let cfg = SandboxConfig::default();
        assert_eq!(
            cfg.audiences.payment,
            "https://api-integration.ratepay.com/transaction/management"
        );
        assert_eq!(cfg.token_lifetime, Duration::from_secs(1800));
        assert_eq!(cfg.clients.len(), 1);
    }
}
