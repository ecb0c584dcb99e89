//! Configuration: the TOML schema ([`file`]) turned into one validated, parsed [`Config`].
//!
//! Loading reads the file, resolves every secret from its `*_env` variable or `*_file` path,
//! checks URLs, addresses, names and ranges, and parses what later code would otherwise parse
//! again: the gateway's JWT keys, the upstream client's extra CAs, the listener's TLS
//! configuration and each caller's operation patterns. Every problem found is reported at once
//! in a [`ConfigError`], each naming the file, the key and what was expected, so `check-config`
//! and start-up fail precisely. Each layer later receives only its own section of the result.
//! Relative paths resolve against the working directory.
//!
//! The files: [`file`] (the schema), `sections` and `callers` (the validated types and their
//! defaults), `operations` (caller operation patterns), `secrets` (secrets, URLs, addresses),
//! `cluster` (the `[cluster]` settings), `validate/` (one file per group of sections), `problems` (the problem collector) and
//! `redacted` (the `check-config` printer).

mod callers;
mod cluster;
pub mod file;
mod operations;
mod problems;
mod redacted;
mod secrets;
mod sections;
mod validate;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use http::Uri;

use crate::routes::Api;
use file::FileConfig;

pub use callers::{
    valid_caller_name, CallerConfig, CallersConfig, IssuerConfig, PartnerPolicy, SigningKey,
};
pub use cluster::{share_of, ClusterSettings, RateLimitFallback};
pub use operations::{OperationMatcher, OperationPattern};
pub use problems::{ConfigError, ConfigProblem};
pub use secrets::sha256;
pub use sections::{
    AuditSettings, CaBundle, CacheSettings, ConnectionLimits, Credentials, IdempotencySettings,
    Limits, ListenConfig, OverLimit, Rate, RateLimitSettings, RetrySettings, SandboxSettings,
    TokenSettings, Upstream, UpstreamClientConfig, MAX_BURST, MAX_RATE_PER_SEC, MAX_RATE_WINDOW,
    MAX_TIMEOUT_MS, MIN_RATE_PER_SEC,
};

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the file was read from (for reload and messages).
    pub source: PathBuf,
    /// Listeners.
    pub listen: ListenConfig,
    /// The embedded sandbox, when enabled.
    pub sandbox: Option<SandboxSettings>,
    /// Ratepay credential sets by name.
    pub credentials: BTreeMap<String, Credentials>,
    /// Upstream APIs.
    pub upstreams: BTreeMap<Api, Upstream>,
    /// The pooled client toward Ratepay.
    pub upstream_client: UpstreamClientConfig,
    /// Ratepay token refresh behaviour.
    pub tokens: TokenSettings,
    /// Internal callers and gateway-issued JWTs.
    pub callers: CallersConfig,
    /// Request limits.
    pub limits: Limits,
    /// Idempotency store.
    pub idempotency: IdempotencySettings,
    /// Upstream retries.
    pub retry: RetrySettings,
    /// Audit log.
    pub audit: AuditSettings,
    /// Rate limits and Ratepay's 429 pause.
    pub rate_limits: RateLimitSettings,
    /// The session-record cache (`None`: off).
    pub cache: Option<CacheSettings>,
    /// State shared with other instances through Redis (`None`: in-process only).
    pub cluster: Option<ClusterSettings>,
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigProblem {
            file: path.display().to_string(),
            key: "(file)".into(),
            message: format!("cannot read the configuration file: {e}"),
        })?;
        Self::from_toml(&text, path)
    }

    /// Parses and validates configuration text; `path` names it in errors. A syntax error or
    /// an unknown key stops there; past that, every problem in the file is reported.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let cx = problems::Ctx::new(&name);
        let parsed: FileConfig = toml::from_str(text).map_err(|e| {
            let key = e
                .span()
                .and_then(|s| text.get(..s.start))
                .map(|before| format!("line {}", before.lines().count().max(1)))
                .unwrap_or_else(|| "(syntax)".into());
            cx.err(key, e.message().to_owned())
        })?;
        let config = validate::config(&parsed, &cx, path);
        cx.finish(config)
    }

    /// Points every upstream and token endpoint at an embedded sandbox at `base`.
    pub fn point_at_sandbox(&mut self, base: &Uri) {
        for u in self.upstreams.values_mut() {
            u.url = base.clone();
        }
        for c in self.credentials.values_mut() {
            let url = format!("{}/oauth/token", base.to_string().trim_end_matches('/'));
            if let Ok(uri) = url.parse() {
                c.token_url = uri;
            }
        }
    }
}

#[cfg(test)]
mod cluster_tests;
#[cfg(test)]
mod tests;
