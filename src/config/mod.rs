//! Configuration: the TOML schema ([`file`]) turned into one validated [`Config`].
//!
//! Loading reads the file, resolves every secret from its `*_env` variable or `*_file` path,
//! and checks URLs, addresses, names and ranges. Any problem is a [`ConfigError`] naming the
//! file, the key and what was expected, so `check-config` and start-up fail precisely. Each
//! layer later receives only its own section of the result. Relative paths resolve against the
//! working directory.

pub mod file;

use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use http::Uri;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::{
    routes::{self, Api},
    tls::{CertIdentity, ClientAuth, TlsSettings},
};
use file::FileConfig;

/// A configuration problem: where it is and what was expected.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {message}")]
pub struct ConfigError {
    /// The configuration file.
    pub file: String,
    /// The dotted key, e.g. `callers.demo.api_key_sha256`.
    pub key: String,
    /// What is wrong and what was expected.
    pub message: String,
}

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
}

/// `[audit]`, validated.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// Log file settings.
    pub log: crate::audit::AuditConfig,
    /// `false` only for the load benchmark's baseline: nothing is audited, cancellations included.
    pub enabled: bool,
    /// Audited operations (ignored when not `enabled`).
    pub operations: Vec<&'static str>,
}

/// `[listen]`, validated.
#[derive(Debug, Clone)]
pub struct ListenConfig {
    /// Proxy listener.
    pub proxy: SocketAddr,
    /// Admin listener (`None`: disabled).
    pub admin: Option<SocketAddr>,
    /// How long in-flight requests get to finish on shutdown.
    pub shutdown_grace: Duration,
    /// How each accepted connection is bounded.
    pub connections: ConnectionLimits,
    /// TLS on the proxy listener (`None`: plain HTTP).
    pub tls: Option<TlsSettings>,
}

/// `[listen]` bounds on client connections: a connection that sends nothing, or trickles its
/// first request, or sits idle, is closed; the proxy listener holds at most `max` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Deadline from accept to the first complete request head.
    pub first_request_timeout: Duration,
    /// No request in flight for this long: the connection is closed.
    pub idle_timeout: Duration,
    /// Most open connections on the proxy listener.
    pub max: usize,
}

impl ConnectionLimits {
    /// The admin listener's cap: small, and separate, so a flood on the proxy listener never
    /// keeps an operator from `/metrics` or `/healthz`.
    pub const ADMIN_MAX: usize = 64;
}

/// Settings of the idempotency layer.
#[derive(Debug, Clone, PartialEq)]
pub struct IdempotencySettings {
    /// How long a completed answer is kept (Ratepay: 24 h).
    pub ttl: Duration,
    /// Memory bound of the store (bodies, headers and keys).
    pub max_bytes: u64,
}

impl Default for IdempotencySettings {
    fn default() -> Self {
        IdempotencySettings {
            ttl: Duration::from_secs(24 * 3600),
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// `[retry]` settings.
#[derive(Debug, Clone)]
pub struct RetrySettings {
    /// Attempts in total, the first included (1 disables retries).
    pub max_attempts: u32,
    /// Delay before the first retry.
    pub initial_backoff: Duration,
    /// Cap of the delay.
    pub max_backoff: Duration,
    /// No retry starts later than this after the first attempt began.
    pub deadline: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            deadline: Duration::from_secs(10),
        }
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            first_request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max: 4096,
        }
    }
}

/// Why `sandbox.embedded = true` is refused by a binary built without the `sandbox` feature.
const WITHOUT_SANDBOX: &str = "this binary was built without the embedded sandbox (cargo \
     feature `sandbox`); set `embedded = false` or remove `[sandbox]` to talk to Ratepay, or \
     build with the default features to run against the sandbox";

/// `[sandbox]`, validated.
#[derive(Debug, Clone)]
pub struct SandboxSettings {
    /// Token lifetime of the embedded sandbox.
    pub token_lifetime: Duration,
    /// Id seed.
    pub seed: Option<u64>,
    /// Session status step (`None`: never moves alone).
    pub session_step: Option<Duration>,
}

/// One Ratepay OAuth client.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// Name of the set.
    pub name: String,
    /// Token endpoint.
    pub token_url: Uri,
    /// `client_id`.
    pub client_id: String,
    /// `client_secret` (never printed).
    pub client_secret: SecretString,
}

/// One upstream API.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Which API.
    pub api: Api,
    /// Origin (`scheme://host[:port]`).
    pub url: Uri,
    /// OAuth audience.
    pub audience: String,
    /// Credential set name.
    pub credentials: String,
}

/// `[upstream_client]`, validated.
#[derive(Debug, Clone)]
pub struct UpstreamClientConfig {
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Time to response headers for one attempt.
    pub request_timeout: Duration,
    /// Pool idle timeout.
    pub pool_idle_timeout: Duration,
    /// Longest silence from an upstream mid-body.
    pub body_idle_timeout: Duration,
    /// Extra CA bundle.
    pub ca_file: Option<PathBuf>,
}

/// `[tokens]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenSettings {
    /// Fraction of the lifetime after which to refresh.
    pub refresh_at_fraction: f64,
    /// Latest refresh before expiry.
    pub refresh_margin: Duration,
    /// Timeout of one token request.
    pub fetch_timeout: Duration,
    /// First retry delay.
    pub retry_initial: Duration,
    /// Retry delay cap.
    pub retry_max: Duration,
}

impl Default for TokenSettings {
    fn default() -> Self {
        TokenSettings {
            refresh_at_fraction: 0.8,
            refresh_margin: Duration::from_secs(60),
            fetch_timeout: Duration::from_secs(5),
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(10),
        }
    }
}

/// How a gateway-issued JWT is signed.
#[derive(Clone)]
pub enum SigningKey {
    /// Shared HMAC key.
    Hs256(SecretString),
    /// EdDSA key pair, PEM.
    EdDsa {
        /// Private key PEM.
        private_pem: SecretString,
        /// Public key PEM.
        public_pem: String,
    },
    /// RS256 key pair, PEM.
    Rs256 {
        /// Private key PEM.
        private_pem: SecretString,
        /// Public key PEM.
        public_pem: String,
    },
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SigningKey::Hs256(_) => "Hs256([REDACTED])",
            SigningKey::EdDsa { .. } => "EdDsa([REDACTED])",
            SigningKey::Rs256 { .. } => "Rs256([REDACTED])",
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
    /// Allowed operation patterns (`*`, `payment.*`, exact names).
    pub operations: Vec<String>,
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

/// `[limits]`, validated.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body.
    pub max_request_body_bytes: usize,
    /// Whole-request deadline.
    pub request_timeout: Duration,
    /// Largest upstream answer (declared or streamed).
    pub max_response_body_bytes: u64,
}

/// One limit: a sustained rate and a burst (a GCRA bucket).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Sustained requests per second.
    pub per_sec: f64,
    /// Requests allowed at once.
    pub burst: u32,
}

/// The slowest configurable rate: one request a day.
pub const MIN_RATE_PER_SEC: f64 = 1.0 / 86_400.0;
/// The fastest configurable rate: a period below one nanosecond cannot be represented.
pub const MAX_RATE_PER_SEC: f64 = 1e9;
/// The largest configurable burst.
pub const MAX_BURST: u32 = 1_000_000;
/// The longest time a bucket may take to earn its whole burst back (`burst / rate_per_sec`):
/// a year, far inside the u64 nanoseconds a GCRA bucket counts in.
pub const MAX_RATE_WINDOW: Duration = Duration::from_secs(365 * 86_400);

impl Rate {
    /// Time to earn one request, within 1 ns and [`MAX_RATE_WINDOW`] whatever `per_sec` holds
    /// (validation keeps it within 1 ns and a day).
    pub fn period(&self) -> Duration {
        Duration::try_from_secs_f64(1.0 / self.per_sec)
            .unwrap_or(MAX_RATE_WINDOW)
            .clamp(Duration::from_nanos(1), MAX_RATE_WINDOW)
    }
}

/// What happens to a request over a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverLimit {
    /// 429 at once.
    Reject,
    /// Wait for a turn up to `max_wait`, then 429 (shaping egress traffic).
    Queue {
        /// Longest wait.
        max_wait: Duration,
    },
}

/// `[rate_limits]`, validated. No limit configured means no limiting; the 429 pause always applies.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitSettings {
    /// Reject or queue.
    pub over_limit: OverLimit,
    /// Default limit of every caller.
    pub per_caller: Option<Rate>,
    /// Per-caller overrides by caller name.
    pub callers: BTreeMap<String, Rate>,
    /// Budget toward each Ratepay API.
    pub upstreams: BTreeMap<Api, Rate>,
    /// Budget toward Ratepay per operation.
    pub operations: BTreeMap<&'static str, Rate>,
    /// Pause after a Ratepay 429 without a usable `Retry-After`.
    pub upstream_pause_default: Duration,
    /// Cap of a pause that Ratepay's `Retry-After` asks for.
    pub upstream_pause_max: Duration,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        RateLimitSettings {
            over_limit: OverLimit::Reject,
            per_caller: None,
            callers: BTreeMap::new(),
            upstreams: BTreeMap::new(),
            operations: BTreeMap::new(),
            upstream_pause_default: Duration::from_secs(1),
            upstream_pause_max: Duration::from_secs(300),
        }
    }
}

/// `[cache]`, validated: lifetimes of session-record entries by content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// Capacity in bytes.
    pub max_bytes: u64,
    /// A record in a terminal status.
    pub terminal_ttl: Duration,
    /// A record that can still change.
    pub changing_ttl: Duration,
    /// A list for a past day whose records are all terminal.
    pub list_past_ttl: Duration,
    /// A list for today, or one holding records that can still change.
    pub list_today_ttl: Duration,
    /// A 404.
    pub not_found_ttl: Duration,
    /// How long past its lifetime an entry may be served when Ratepay fails.
    pub stale_if_error: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            max_bytes: 64 << 20,
            terminal_ttl: Duration::from_secs(600),
            changing_ttl: Duration::from_secs(2),
            list_past_ttl: Duration::from_secs(600),
            list_today_ttl: Duration::from_secs(2),
            not_found_ttl: Duration::from_secs(2),
            stale_if_error: Duration::from_secs(300),
        }
    }
}

/// Builds errors that name the file.
struct Ctx<'a> {
    file: &'a str,
}

impl Ctx<'_> {
    fn err(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            key: key.into(),
            message: message.into(),
        }
    }

    /// Resolves a secret given as `<base>_env` or `<base>_file`; exactly one must be set.
    fn secret(
        &self,
        base: &str,
        env: &Option<String>,
        path: &Option<String>,
    ) -> Result<Option<SecretString>, ConfigError> {
        match (env, path) {
            (Some(_), Some(_)) => {
                Err(self.err(base, format!("set only one of {base}_env and {base}_file")))
            }
            (Some(var), None) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(Some(SecretString::from(v))),
                _ => Err(self.err(
                    format!("{base}_env"),
                    format!("environment variable {var} is not set or empty"),
                )),
            },
            (None, Some(p)) => match std::fs::read_to_string(p) {
                // A trailing newline from `echo secret > file` is not part of the secret.
                Ok(v) if !v.trim_end_matches(['\n', '\r']).is_empty() => Ok(Some(
                    SecretString::from(v.trim_end_matches(['\n', '\r']).to_owned()),
                )),
                Ok(_) => Err(self.err(format!("{base}_file"), format!("file {p} is empty"))),
                Err(e) => Err(self.err(
                    format!("{base}_file"),
                    format!("cannot read secret file {p}: {e}"),
                )),
            },
            (None, None) => Ok(None),
        }
    }

    fn hash_or_secret(
        &self,
        key: &str,
        hash: &Option<String>,
        env: &Option<String>,
        path: &Option<String>,
    ) -> Result<Option<[u8; 32]>, ConfigError> {
        let secret = self.secret(key, env, path)?;
        match (hash, secret) {
            (Some(_), Some(_)) => Err(self.err(
                key,
                format!("set only one of {key}_sha256, {key}_env and {key}_file"),
            )),
            (Some(h), None) => parse_sha256(h).map(Some).ok_or_else(|| {
                self.err(
                    format!("{key}_sha256"),
                    "expected 64 hex characters (the SHA-256 of the secret)",
                )
            }),
            (None, Some(s)) => Ok(Some(sha256(s.expose_secret().as_bytes()))),
            (None, None) => Ok(None),
        }
    }

    fn addr(&self, key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
        value
            .parse()
            .map_err(|_| self.err(key, format!("expected ip:port, got {value:?}")))
    }

    fn url(&self, key: &str, value: &str, origin_only: bool) -> Result<Uri, ConfigError> {
        let uri: Uri = value
            .parse()
            .map_err(|e| self.err(key, format!("expected an http(s) URL, got {value:?}: {e}")))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => {
                return Err(self.err(
                    key,
                    format!("expected an http:// or https:// URL, got {value:?}"),
                ))
            }
        }
        if uri.host().is_none() {
            return Err(self.err(key, format!("the URL {value:?} has no host")));
        }
        if origin_only && !matches!(uri.path(), "" | "/") {
            return Err(self.err(
                key,
                format!("expected an origin without a path (scheme://host[:port]), got {value:?}; the gateway keeps Ratepay's paths"),
            ));
        }
        if uri.query().is_some() {
            return Err(self.err(key, "the URL must not have a query"));
        }
        Ok(uri)
    }

    fn read_file(&self, key: &str, path: &str) -> Result<String, ConfigError> {
        std::fs::read_to_string(path).map_err(|e| self.err(key, format!("cannot read {path}: {e}")))
    }
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn parse_sha256(hex_str: &str) -> Option<[u8; 32]> {
    let v = hex::decode(hex_str.trim()).ok()?;
    v.try_into().ok()
}

fn ms(v: Option<u64>, default: u64) -> Duration {
    Duration::from_millis(v.unwrap_or(default))
}

/// The longest timeout, backoff or deadline in milliseconds (an hour): every one of them is
/// added to a clock reading somewhere, and nothing the gateway waits for takes longer.
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// A duration in whole milliseconds, saturating (for bounds checks).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Refuses `value` outside `lo..=hi`, naming the key, the range and the value.
fn within(
    cx: &Ctx<'_>,
    key: &str,
    value: u64,
    lo: u64,
    hi: u64,
    unit: &str,
) -> Result<(), ConfigError> {
    if (lo..=hi).contains(&value) {
        Ok(())
    } else {
        Err(cx.err(key, format!("expected {lo} to {hi} {unit}, got {value}")))
    }
}

/// Caller names appear in logs, metrics labels, audit records and idempotency scopes.
pub fn valid_caller_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Validates that a value fits an X-Partner header.
fn valid_partner(p: &str) -> bool {
    !p.is_empty() && p.len() <= 128 && p.bytes().all(|b| b.is_ascii_graphic())
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: name.clone(),
            key: "(file)".into(),
            message: format!("cannot read the configuration file: {e}"),
        })?;
        Self::from_toml(&text, path)
    }

    /// Parses and validates configuration text; `path` names it in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let cx = Ctx { file: &name };
        let parsed: FileConfig = toml::from_str(text).map_err(|e| {
            let key = e
                .span()
                .and_then(|s| text.get(..s.start))
                .map(|before| format!("line {}", before.lines().count().max(1)))
                .unwrap_or_else(|| "(syntax)".into());
            cx.err(key, e.message().to_owned())
        })?;
        Self::validate(parsed, &cx, path)
    }

    fn connection_limits(
        f: &file::ListenFile,
        cx: &Ctx<'_>,
    ) -> Result<ConnectionLimits, ConfigError> {
        let d = ConnectionLimits::default();
        let bounded = |key: &str, v: Option<u64>, default: Duration| match v {
            None => Ok(default),
            Some(ms) if (100..=3_600_000).contains(&ms) => Ok(Duration::from_millis(ms)),
            Some(ms) => Err(cx.err(
                format!("listen.{key}"),
                format!("{ms} is out of range; use 100 to 3600000 (milliseconds)"),
            )),
        };
        let max = match f.max_connections {
            None => d.max,
            Some(n) if (1..=1_000_000).contains(&n) => n as usize,
            Some(n) => {
                return Err(cx.err(
                    "listen.max_connections",
                    format!(
                    "{n} is out of range; use 1 to 1000000 (and keep it below the open-file limit)"
                ),
                ))
            }
        };
        Ok(ConnectionLimits {
            first_request_timeout: bounded(
                "first_request_timeout_ms",
                f.first_request_timeout_ms,
                d.first_request_timeout,
            )?,
            idle_timeout: bounded("idle_timeout_ms", f.idle_timeout_ms, d.idle_timeout)?,
            max,
        })
    }

    fn validate(f: FileConfig, cx: &Ctx<'_>, path: &Path) -> Result<Config, ConfigError> {
        let listen = ListenConfig {
            proxy: cx.addr(
                "listen.proxy",
                f.listen.proxy.as_deref().unwrap_or("127.0.0.1:8080"),
            )?,
            admin: match f.listen.admin.as_deref() {
                None => Some(cx.addr("listen.admin", "127.0.0.1:9091")?),
                Some("off") | Some("") => None,
                Some(a) => Some(cx.addr("listen.admin", a)?),
            },
            shutdown_grace: ms(f.listen.shutdown_grace_ms, 10_000),
            connections: Self::connection_limits(&f.listen, cx)?,
            tls: f
                .listen
                .tls
                .as_ref()
                .map(|t| Self::listen_tls(t, cx))
                .transpose()?,
        };

        within(
            cx,
            "listen.shutdown_grace_ms",
            millis(listen.shutdown_grace),
            0,
            MAX_TIMEOUT_MS,
            "milliseconds",
        )?;

        if let Some(s) = &f.sandbox {
            if s.embedded && !cfg!(feature = "sandbox") {
                return Err(cx.err("sandbox.embedded", WITHOUT_SANDBOX));
            }
            if let Some(v) = s.token_lifetime_secs {
                within(cx, "sandbox.token_lifetime_secs", v, 0, 86_400, "seconds")?;
            }
            if let Some(v) = s.session_step_secs {
                within(cx, "sandbox.session_step_secs", v, 0, 86_400, "seconds")?;
            }
        }
        let sandbox = match f.sandbox {
            Some(s) if s.embedded => Some(SandboxSettings {
                token_lifetime: Duration::from_secs(s.token_lifetime_secs.unwrap_or(1800)),
                seed: s.seed,
                session_step: match s.session_step_secs.unwrap_or(10) {
                    0 => None,
                    n => Some(Duration::from_secs(n)),
                },
            }),
            _ => None,
        };

        let mut credentials = BTreeMap::new();
        for (cname, c) in &f.credentials {
            let key = format!("credentials.{cname}");
            let token_url = cx.url(
                &format!("{key}.token_url"),
                c.token_url
                    .as_deref()
                    .unwrap_or("https://oauth.ratepay.com/oauth/token"),
                false,
            )?;
            if c.client_id.is_empty() {
                return Err(cx.err(format!("{key}.client_id"), "must not be empty"));
            }
            let client_secret = cx
                .secret(
                    &format!("{key}.client_secret"),
                    &c.client_secret_env,
                    &c.client_secret_file,
                )?
                .ok_or_else(|| {
                    cx.err(
                        format!("{key}.client_secret"),
                        "missing: set client_secret_env = \"VAR\" or client_secret_file = \"path\"",
                    )
                })?;
            credentials.insert(
                cname.clone(),
                Credentials {
                    name: cname.clone(),
                    token_url,
                    client_id: c.client_id.clone(),
                    client_secret,
                },
            );
        }

        let mut upstreams = BTreeMap::new();
        for (uname, u) in &f.upstreams {
            let key = format!("upstreams.{uname}");
            let api = Api::from_name(uname).ok_or_else(|| {
                cx.err(
                    &key,
                    "unknown upstream; expected one of payment, status, hpp",
                )
            })?;
            let cred = u.credentials.clone().unwrap_or_else(|| "default".into());
            if !credentials.contains_key(&cred) {
                return Err(cx.err(
                    format!("{key}.credentials"),
                    format!("no [credentials.{cred}] section is defined"),
                ));
            }
            if u.audience.is_empty() {
                return Err(cx.err(format!("{key}.audience"), "must not be empty"));
            }
            upstreams.insert(
                api,
                Upstream {
                    api,
                    url: cx.url(&format!("{key}.url"), &u.url, true)?,
                    audience: u.audience.clone(),
                    credentials: cred,
                },
            );
        }
        if upstreams.is_empty() {
            return Err(cx.err("upstreams", "at least one of [upstreams.payment], [upstreams.status], [upstreams.hpp] is required"));
        }

        let uc = &f.upstream_client;
        let upstream_client = UpstreamClientConfig {
            connect_timeout: ms(uc.connect_timeout_ms, 2_000),
            request_timeout: ms(uc.request_timeout_ms, 10_000),
            pool_idle_timeout: Duration::from_secs(uc.pool_idle_timeout_secs.unwrap_or(90)),
            body_idle_timeout: ms(uc.body_idle_timeout_ms, 10_000),
            ca_file: match &uc.ca_file {
                Some(p) => {
                    cx.read_file("upstream_client.ca_file", p)?;
                    Some(PathBuf::from(p))
                }
                None => None,
            },
        };
        if upstream_client.connect_timeout.is_zero()
            || upstream_client.request_timeout.is_zero()
            || upstream_client.body_idle_timeout.is_zero()
        {
            return Err(cx.err("upstream_client", "timeouts must be greater than zero"));
        }
        for (key, d) in [
            (
                "upstream_client.connect_timeout_ms",
                upstream_client.connect_timeout,
            ),
            (
                "upstream_client.request_timeout_ms",
                upstream_client.request_timeout,
            ),
            (
                "upstream_client.body_idle_timeout_ms",
                upstream_client.body_idle_timeout,
            ),
        ] {
            within(cx, key, millis(d), 1, MAX_TIMEOUT_MS, "milliseconds")?;
        }
        // The pool adds it to instants when it sweeps idle connections.
        within(
            cx,
            "upstream_client.pool_idle_timeout_secs",
            upstream_client.pool_idle_timeout.as_secs(),
            0,
            86_400,
            "seconds",
        )?;

        let t = &f.tokens;
        let d = TokenSettings::default();
        let tokens = TokenSettings {
            refresh_at_fraction: t.refresh_at_fraction.unwrap_or(d.refresh_at_fraction),
            refresh_margin: t
                .refresh_margin_secs
                .map(Duration::from_secs)
                .unwrap_or(d.refresh_margin),
            fetch_timeout: t
                .fetch_timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(d.fetch_timeout),
            retry_initial: t
                .retry_initial_ms
                .map(Duration::from_millis)
                .unwrap_or(d.retry_initial),
            retry_max: t
                .retry_max_ms
                .map(Duration::from_millis)
                .unwrap_or(d.retry_max),
        };
        if !(0.5..=0.95).contains(&tokens.refresh_at_fraction) {
            return Err(cx.err(
                "tokens.refresh_at_fraction",
                format!(
                    "expected a number from 0.5 to 0.95, got {}",
                    tokens.refresh_at_fraction
                ),
            ));
        }
        // Token lifetimes count at most 24 h (token::MAX_TOKEN_LIFETIME): a longer margin
        // would only mean "refresh at the fraction".
        within(
            cx,
            "tokens.refresh_margin_secs",
            tokens.refresh_margin.as_secs(),
            0,
            86_400,
            "seconds",
        )?;
        within(
            cx,
            "tokens.fetch_timeout_ms",
            millis(tokens.fetch_timeout),
            1,
            MAX_TIMEOUT_MS,
            "milliseconds",
        )?;
        within(
            cx,
            "tokens.retry_max_ms",
            millis(tokens.retry_max),
            1,
            MAX_TIMEOUT_MS,
            "milliseconds",
        )?;
        if tokens.retry_initial > tokens.retry_max || tokens.retry_initial.is_zero() {
            return Err(cx.err(
                "tokens.retry_initial_ms",
                "must be above zero and at most tokens.retry_max_ms",
            ));
        }

        let issuer = match &f.gateway_tokens {
            None => None,
            Some(g) => Some(Self::issuer(g, cx)?),
        };

        let mut callers = Vec::new();
        let mut seen_keys = HashSet::new();
        let mut seen_clients = HashSet::new();
        let mut seen_identities: BTreeMap<CertIdentity, &str> = BTreeMap::new();
        let mtls = listen
            .tls
            .as_ref()
            .is_some_and(|t| t.client_auth != ClientAuth::Off);
        for (name, c) in &f.callers {
            let key = format!("callers.{name}");
            if !valid_caller_name(name) {
                return Err(cx.err(
                    &key,
                    "caller names must be 1 to 64 characters of A-Z, a-z, 0-9, '_' or '-'",
                ));
            }
            let api_key_sha256 = cx.hash_or_secret(
                &format!("{key}.api_key"),
                &c.api_key_sha256,
                &c.api_key_env,
                &c.api_key_file,
            )?;
            if let Some(h) = api_key_sha256 {
                if !seen_keys.insert(h) {
                    return Err(cx.err(
                        format!("{key}.api_key"),
                        "the same API key is configured for two callers",
                    ));
                }
            }
            let secret = cx.hash_or_secret(
                &format!("{key}.client_secret"),
                &c.client_secret_sha256,
                &c.client_secret_env,
                &c.client_secret_file,
            )?;
            let client = match (&c.client_id, secret) {
                (Some(id), Some(s)) => {
                    if issuer.is_none() {
                        return Err(cx.err(format!("{key}.client_id"), "callers with a client_id need a [gateway_tokens] section"));
                    }
                    if !seen_clients.insert(id.clone()) {
                        return Err(cx.err(format!("{key}.client_id"), format!("client_id {id:?} is used by two callers")));
                    }
                    Some((id.clone(), s))
                }
                (None, None) => None,
                (Some(_), None) => return Err(cx.err(format!("{key}.client_secret"), "a client_id needs client_secret_sha256, client_secret_env or client_secret_file")),
                (None, Some(_)) => return Err(cx.err(format!("{key}.client_id"), "a client secret is set but no client_id")),
            };
            let mut client_cert = Vec::new();
            for text in c.client_cert.iter().flatten() {
                let id = CertIdentity::parse(text)
                    .map_err(|e| cx.err(format!("{key}.client_cert"), e))?;
                if let Some(other) = seen_identities.insert(id.clone(), name.as_str()) {
                    return Err(cx.err(
                        format!("{key}.client_cert"),
                        if other == name {
                            format!("{id} is listed twice")
                        } else {
                            format!("{id} is already the identity of caller '{other}'; one certificate identity maps to one caller")
                        },
                    ));
                }
                client_cert.push(id);
            }
            if !client_cert.is_empty() && !mtls {
                return Err(cx.err(
                    format!("{key}.client_cert"),
                    "client certificate identities need mTLS on the proxy listener: set [listen.tls] with client_ca_file",
                ));
            }
            if api_key_sha256.is_none() && client.is_none() && client_cert.is_empty() {
                return Err(cx.err(&key, "the caller has no credential: set api_key_sha256/_env/_file, client_id with a client secret, or client_cert"));
            }
            for op in &c.operations {
                let ok = op == "*"
                    || routes::operation(op).is_some()
                    || op.strip_suffix(".*").is_some_and(|p| {
                        routes::OPERATIONS
                            .iter()
                            .any(|o| o.name.starts_with(&format!("{p}.")))
                    });
                if !ok {
                    return Err(cx.err(format!("{key}.operations"), format!("unknown operation {op:?}; expected \"*\", an API prefix such as \"payment.*\", or a name such as \"payment.cancellations.create\"")));
                }
            }
            let partner = match (&c.partner, &c.partners) {
                (Some(_), Some(_)) => {
                    return Err(cx.err(
                        format!("{key}.partner"),
                        "set either partner (fixed) or partners (caller chooses), not both",
                    ))
                }
                (Some(p), None) => PartnerPolicy::Fixed(p.clone()),
                (None, Some(ps)) if ps.is_empty() => {
                    return Err(cx.err(format!("{key}.partners"), "must list at least one partner"))
                }
                (None, Some(ps)) => PartnerPolicy::OneOf(ps.clone()),
                (None, None) => PartnerPolicy::None,
            };
            if let PartnerPolicy::Fixed(p) = &partner {
                if !valid_partner(p) {
                    return Err(cx.err(
                        format!("{key}.partner"),
                        "expected 1 to 128 visible ASCII characters",
                    ));
                }
            }
            if let PartnerPolicy::OneOf(ps) = &partner {
                if let Some(bad) = ps.iter().find(|p| !valid_partner(p)) {
                    return Err(cx.err(
                        format!("{key}.partners"),
                        format!("{bad:?}: expected 1 to 128 visible ASCII characters"),
                    ));
                }
            }
            callers.push(CallerConfig {
                name: name.clone(),
                api_key_sha256,
                client,
                operations: c.operations.clone(),
                partner,
                client_cert,
            });
        }

        let limits = Limits {
            max_request_body_bytes: f.limits.max_request_body_bytes.unwrap_or(1 << 20),
            request_timeout: ms(f.limits.request_timeout_ms, 30_000),
            max_response_body_bytes: f.limits.max_response_body_bytes.unwrap_or(4 << 20),
        };
        if limits.max_request_body_bytes == 0
            || limits.request_timeout.is_zero()
            || limits.max_response_body_bytes == 0
        {
            return Err(cx.err(
                "limits",
                "max_request_body_bytes, max_response_body_bytes and request_timeout_ms must be \
                 greater than zero",
            ));
        }
        within(
            cx,
            "limits.request_timeout_ms",
            millis(limits.request_timeout),
            1,
            MAX_TIMEOUT_MS,
            "milliseconds",
        )?;

        let idem_default = IdempotencySettings::default();
        let idempotency = IdempotencySettings {
            ttl: f
                .idempotency
                .ttl_secs
                .map(Duration::from_secs)
                .unwrap_or(idem_default.ttl),
            max_bytes: f.idempotency.max_bytes.unwrap_or(idem_default.max_bytes),
        };
        if idempotency.ttl.is_zero() || idempotency.ttl > Duration::from_secs(7 * 86_400) {
            return Err(cx.err(
                "idempotency.ttl_secs",
                "expected 1 to 604800 seconds (Ratepay keeps keys 86400 s)",
            ));
        }
        if idempotency.max_bytes < 1 << 20 {
            return Err(cx.err("idempotency.max_bytes", "expected at least 1048576 bytes"));
        }

        let rd = RetrySettings::default();
        let retry = RetrySettings {
            max_attempts: f.retry.max_attempts.unwrap_or(rd.max_attempts),
            initial_backoff: f
                .retry
                .initial_backoff_ms
                .map(Duration::from_millis)
                .unwrap_or(rd.initial_backoff),
            max_backoff: f
                .retry
                .max_backoff_ms
                .map(Duration::from_millis)
                .unwrap_or(rd.max_backoff),
            deadline: f
                .retry
                .deadline_ms
                .map(Duration::from_millis)
                .unwrap_or(rd.deadline),
        };
        if !(1..=10).contains(&retry.max_attempts) {
            return Err(cx.err(
                "retry.max_attempts",
                "expected 1 to 10 (1 disables retries)",
            ));
        }
        if retry.initial_backoff.is_zero() || retry.initial_backoff > retry.max_backoff {
            return Err(cx.err(
                "retry.initial_backoff_ms",
                "must be above zero and at most retry.max_backoff_ms",
            ));
        }
        within(
            cx,
            "retry.max_backoff_ms",
            millis(retry.max_backoff),
            1,
            MAX_TIMEOUT_MS,
            "milliseconds",
        )?;
        within(
            cx,
            "retry.deadline_ms",
            millis(retry.deadline),
            1,
            MAX_TIMEOUT_MS,
            "milliseconds",
        )?;

        let mut audit_ops = Vec::new();
        for name in f
            .audit
            .operations
            .clone()
            .unwrap_or_else(|| vec!["payment.cancellations.create".into()])
        {
            match routes::operation(&name) {
                Some(op) if op.creating() => audit_ops.push(op.name),
                Some(_) => {
                    return Err(cx.err(
                        "audit.operations",
                        format!(
                        "{name} is not a creating POST; only money-moving creates can be audited"
                    ),
                    ))
                }
                None => {
                    return Err(cx.err("audit.operations", format!("unknown operation {name:?}")))
                }
            }
        }
        let audit_enabled = f.audit.enabled.unwrap_or(true);
        if audit_enabled && !audit_ops.contains(&"payment.cancellations.create") {
            return Err(cx.err(
                "audit.operations",
                "payment.cancellations.create is always audited; list it too",
            ));
        }
        let mut log = crate::audit::AuditConfig::new(
            f.audit
                .path
                .clone()
                .unwrap_or_else(|| "var/audit/audit.jsonl".into()),
        );
        log.rotate_bytes = f.audit.rotate_bytes;
        log.rotate_daily = f.audit.rotate_daily.unwrap_or(true);
        if log.rotate_bytes.is_some_and(|b| b < 4096) {
            return Err(cx.err("audit.rotate_bytes", "expected at least 4096 bytes"));
        }
        let audit = AuditSettings {
            log,
            enabled: audit_enabled,
            operations: audit_ops,
        };

        let rate_limits = Self::rate_limits(&f.rate_limits, cx, &upstreams, &callers, &limits)?;
        let cache = match &f.cache {
            Some(c) if c.enabled.unwrap_or(true) => Some(Self::cache(c, cx)?),
            _ => None,
        };

        let audiences = upstreams.values().map(|u| u.audience.clone()).collect();
        Ok(Config {
            source: path.to_path_buf(),
            listen,
            sandbox,
            credentials,
            upstreams,
            upstream_client,
            tokens,
            callers: CallersConfig {
                callers,
                issuer,
                audiences,
            },
            limits,
            idempotency,
            retry,
            audit,
            rate_limits,
            cache,
        })
    }

    fn rate(r: &file::RateFile, key: &str, cx: &Ctx<'_>) -> Result<Rate, ConfigError> {
        // Above 1e9/s the period would be below one nanosecond, which GCRA cannot represent;
        // below one a day it overflows the period's Duration long before it means anything.
        if !r.rate_per_sec.is_finite()
            || !(MIN_RATE_PER_SEC..=MAX_RATE_PER_SEC).contains(&r.rate_per_sec)
        {
            return Err(cx.err(
                format!("{key}.rate_per_sec"),
                format!(
                    "expected requests per second from 0.0000116 (one a day) to 1e9 (e.g. 0.5 or 50), got {:?}",
                    r.rate_per_sec
                ),
            ));
        }
        if !(1..=MAX_BURST).contains(&r.burst) {
            return Err(cx.err(
                format!("{key}.burst"),
                format!(
                    "expected 1 to {MAX_BURST} (requests allowed at once), got {}",
                    r.burst
                ),
            ));
        }
        let rate = Rate {
            per_sec: r.rate_per_sec,
            burst: r.burst,
        };
        if f64::from(r.burst) / r.rate_per_sec > MAX_RATE_WINDOW.as_secs_f64() {
            return Err(cx.err(
                format!("{key}.burst"),
                format!(
                    "burst / rate_per_sec (the time to earn the whole burst back) must be at most {} s (a year), got {:.0} s",
                    MAX_RATE_WINDOW.as_secs(),
                    f64::from(r.burst) / r.rate_per_sec
                ),
            ));
        }
        Ok(rate)
    }

    fn rate_limits(
        f: &file::RateLimitsFile,
        cx: &Ctx<'_>,
        upstreams: &BTreeMap<Api, Upstream>,
        callers: &[CallerConfig],
        limits: &Limits,
    ) -> Result<RateLimitSettings, ConfigError> {
        let d = RateLimitSettings::default();
        let over_limit = match f.mode.as_deref().unwrap_or("reject") {
            "reject" => {
                if f.max_wait_ms.is_some() {
                    return Err(cx.err(
                        "rate_limits.max_wait_ms",
                        "applies only with mode = \"queue\"",
                    ));
                }
                OverLimit::Reject
            }
            "queue" => {
                let max_wait = ms(f.max_wait_ms, 500);
                if max_wait.is_zero() || max_wait >= limits.request_timeout {
                    return Err(cx.err(
                        "rate_limits.max_wait_ms",
                        format!(
                            "expected above 0 and below limits.request_timeout_ms ({})",
                            limits.request_timeout.as_millis()
                        ),
                    ));
                }
                OverLimit::Queue { max_wait }
            }
            other => {
                return Err(cx.err(
                    "rate_limits.mode",
                    format!("expected \"reject\" or \"queue\", got {other:?}"),
                ))
            }
        };
        let per_caller = f
            .per_caller
            .as_ref()
            .map(|r| Self::rate(r, "rate_limits.per_caller", cx))
            .transpose()?;
        let mut by_caller = BTreeMap::new();
        for (name, r) in &f.callers {
            let key = format!("rate_limits.callers.{name}");
            if !callers.iter().any(|c| &c.name == name) {
                return Err(cx.err(&key, format!("no [callers.{name}] section is configured")));
            }
            by_caller.insert(name.clone(), Self::rate(r, &key, cx)?);
        }
        let mut by_upstream = BTreeMap::new();
        for (name, r) in &f.upstreams {
            let key = format!("rate_limits.upstreams.{name}");
            let api = Api::from_name(name).ok_or_else(|| {
                cx.err(
                    &key,
                    "unknown upstream; expected one of payment, status, hpp",
                )
            })?;
            if !upstreams.contains_key(&api) {
                return Err(cx.err(&key, format!("no [upstreams.{name}] section is configured")));
            }
            by_upstream.insert(api, Self::rate(r, &key, cx)?);
        }
        let mut by_operation = BTreeMap::new();
        for (name, r) in &f.operations {
            let key = format!("rate_limits.operations.\"{name}\"");
            let op = routes::operation(name).ok_or_else(|| {
                cx.err(
                    &key,
                    "unknown operation; expected a name such as \"payment.cancellations.create\"",
                )
            })?;
            by_operation.insert(op.name, Self::rate(r, &key, cx)?);
        }
        let secs =
            |v: Option<u64>, default: Duration, key: &str| -> Result<Duration, ConfigError> {
                let d = v.map(Duration::from_secs).unwrap_or(default);
                if d.is_zero() || d > Duration::from_secs(86_400) {
                    return Err(cx.err(key, "expected 1 to 86400 seconds"));
                }
                Ok(d)
            };
        let upstream_pause_default = secs(
            f.upstream_pause_default_secs,
            d.upstream_pause_default,
            "rate_limits.upstream_pause_default_secs",
        )?;
        let upstream_pause_max = secs(
            f.upstream_pause_max_secs,
            d.upstream_pause_max,
            "rate_limits.upstream_pause_max_secs",
        )?;
        if upstream_pause_default > upstream_pause_max {
            return Err(cx.err(
                "rate_limits.upstream_pause_default_secs",
                "must be at most rate_limits.upstream_pause_max_secs",
            ));
        }
        Ok(RateLimitSettings {
            over_limit,
            per_caller,
            callers: by_caller,
            upstreams: by_upstream,
            operations: by_operation,
            upstream_pause_default,
            upstream_pause_max,
        })
    }

    fn listen_tls(t: &file::ListenTlsFile, cx: &Ctx<'_>) -> Result<TlsSettings, ConfigError> {
        let client_auth =
            match (t.client_auth.as_deref(), &t.client_ca_file) {
                (None, None) => ClientAuth::Off,
                (None | Some("required"), Some(_)) => ClientAuth::Required,
                (Some("optional"), Some(_)) => ClientAuth::Optional,
                (Some("required" | "optional"), None) => return Err(cx.err(
                    "listen.tls.client_auth",
                    "client_auth needs client_ca_file (the CAs trusted for client certificates)",
                )),
                (Some(other), _) => {
                    return Err(cx.err(
                        "listen.tls.client_auth",
                        format!("expected \"required\" or \"optional\", got {other:?}"),
                    ))
                }
            };
        let handshake_timeout = ms(t.handshake_timeout_ms, 10_000);
        if handshake_timeout.is_zero() || handshake_timeout > Duration::from_secs(300) {
            return Err(cx.err(
                "listen.tls.handshake_timeout_ms",
                "expected 1 to 300000 milliseconds",
            ));
        }
        let cert_file = PathBuf::from(&t.cert_file);
        let key_file = PathBuf::from(&t.key_file);
        let client_ca_file = t.client_ca_file.as_ref().map(PathBuf::from);
        let server_config = crate::tls::server_config(
            &cert_file,
            &key_file,
            client_ca_file.as_deref(),
            client_auth,
        )
        .map_err(|e| cx.err(format!("listen.tls.{}", e.key), e.message))?;
        Ok(TlsSettings {
            cert_file,
            key_file,
            client_ca_file,
            client_auth,
            handshake_timeout,
            server_config,
        })
    }

    fn cache(c: &file::CacheFile, cx: &Ctx<'_>) -> Result<CacheSettings, ConfigError> {
        let d = CacheSettings::default();
        // Zero switches one kind of entry off; a week bounds every deadline the cache computes.
        let ttl = |v: Option<u64>, default: Duration, key: &str| -> Result<Duration, ConfigError> {
            match v {
                None => Ok(default),
                Some(s) if s <= 7 * 86_400 => Ok(Duration::from_secs(s)),
                Some(_) => Err(cx.err(
                    format!("cache.{key}"),
                    "expected 0 (do not cache) to 604800 seconds",
                )),
            }
        };
        let max_bytes = c.max_bytes.unwrap_or(d.max_bytes);
        if max_bytes < 1024 {
            return Err(cx.err("cache.max_bytes", "expected at least 1024 bytes"));
        }
        Ok(CacheSettings {
            max_bytes,
            terminal_ttl: ttl(c.terminal_ttl_secs, d.terminal_ttl, "terminal_ttl_secs")?,
            changing_ttl: ttl(c.changing_ttl_secs, d.changing_ttl, "changing_ttl_secs")?,
            list_past_ttl: ttl(c.list_past_ttl_secs, d.list_past_ttl, "list_past_ttl_secs")?,
            list_today_ttl: ttl(
                c.list_today_ttl_secs,
                d.list_today_ttl,
                "list_today_ttl_secs",
            )?,
            not_found_ttl: ttl(c.not_found_ttl_secs, d.not_found_ttl, "not_found_ttl_secs")?,
            stale_if_error: ttl(
                c.stale_if_error_secs,
                d.stale_if_error,
                "stale_if_error_secs",
            )?,
        })
    }

    fn issuer(g: &file::GatewayTokensFile, cx: &Ctx<'_>) -> Result<IssuerConfig, ConfigError> {
        let alg = g.algorithm.as_deref().unwrap_or("HS256");
        let key = match alg {
            "HS256" => {
                let k = cx
                    .secret(
                        "gateway_tokens.hs256_key",
                        &g.hs256_key_env,
                        &g.hs256_key_file,
                    )?
                    .ok_or_else(|| {
                        cx.err(
                            "gateway_tokens.hs256_key",
                            "missing: set hs256_key_env or hs256_key_file",
                        )
                    })?;
                if k.expose_secret().len() < 32 {
                    return Err(cx.err(
                        "gateway_tokens.hs256_key",
                        "the key must be at least 32 bytes",
                    ));
                }
                SigningKey::Hs256(k)
            }
            "EdDSA" | "RS256" => {
                let (Some(private), Some(public)) = (&g.private_key_file, &g.public_key_file)
                else {
                    return Err(cx.err(
                        "gateway_tokens",
                        format!("{alg} needs private_key_file and public_key_file"),
                    ));
                };
                let private_pem =
                    SecretString::from(cx.read_file("gateway_tokens.private_key_file", private)?);
                let public_pem = cx.read_file("gateway_tokens.public_key_file", public)?;
                let checked = if alg == "EdDSA" {
                    jsonwebtoken::EncodingKey::from_ed_pem(private_pem.expose_secret().as_bytes())
                        .is_ok()
                        && jsonwebtoken::DecodingKey::from_ed_pem(public_pem.as_bytes()).is_ok()
                } else {
                    jsonwebtoken::EncodingKey::from_rsa_pem(private_pem.expose_secret().as_bytes())
                        .is_ok()
                        && jsonwebtoken::DecodingKey::from_rsa_pem(public_pem.as_bytes()).is_ok()
                };
                if !checked {
                    return Err(cx.err(
                        "gateway_tokens.private_key_file",
                        format!("not a valid {alg} PEM key pair"),
                    ));
                }
                if alg == "EdDSA" {
                    SigningKey::EdDsa {
                        private_pem,
                        public_pem,
                    }
                } else {
                    SigningKey::Rs256 {
                        private_pem,
                        public_pem,
                    }
                }
            }
            other => {
                return Err(cx.err(
                    "gateway_tokens.algorithm",
                    format!("expected HS256, EdDSA or RS256, got {other:?}"),
                ))
            }
        };
        let lifetime = Duration::from_secs(g.lifetime_secs.unwrap_or(900));
        if lifetime.is_zero() || lifetime > Duration::from_secs(86_400) {
            return Err(cx.err(
                "gateway_tokens.lifetime_secs",
                "expected 1 to 86400 seconds",
            ));
        }
        Ok(IssuerConfig {
            key,
            issuer: g.issuer.clone().unwrap_or_else(|| "ratepay-gateway".into()),
            lifetime,
        })
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

    /// The resolved configuration as TOML-like text with every secret redacted (`check-config`).
    pub fn redacted(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "# resolved from {}", self.source.display());
        let _ = writeln!(s, "[listen]\nproxy = \"{}\"", self.listen.proxy);
        match self.listen.admin {
            Some(a) => {
                let _ = writeln!(s, "admin = \"{a}\"");
            }
            None => {
                let _ = writeln!(s, "admin = \"off\"");
            }
        }
        let _ = writeln!(
            s,
            "shutdown_grace_ms = {}\nfirst_request_timeout_ms = {}\nidle_timeout_ms = {}\nmax_connections = {}",
            self.listen.shutdown_grace.as_millis(),
            self.listen.connections.first_request_timeout.as_millis(),
            self.listen.connections.idle_timeout.as_millis(),
            self.listen.connections.max,
        );
        if let Some(t) = &self.listen.tls {
            // Paths only: the key itself is never printed.
            let _ = writeln!(
                s,
                "\n[listen.tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\nclient_auth = \"{}\"\nhandshake_timeout_ms = {}",
                t.cert_file,
                t.key_file,
                t.client_ca_file,
                t.client_auth.name(),
                t.handshake_timeout.as_millis()
            );
        }
        if let Some(sb) = &self.sandbox {
            let _ = writeln!(
                s,
                "\n[sandbox]\nembedded = true\ntoken_lifetime_secs = {}\nseed = {}\nsession_step_secs = {}",
                sb.token_lifetime.as_secs(),
                sb.seed.map_or("\"random\"".to_owned(), |s| s.to_string()),
                sb.session_step.map_or(0, |d| d.as_secs())
            );
        }
        for c in self.credentials.values() {
            let _ = writeln!(
                s,
                "\n[credentials.{}]\ntoken_url = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"[REDACTED]\"",
                c.name, c.token_url, c.client_id
            );
        }
        for u in self.upstreams.values() {
            let _ = writeln!(
                s,
                "\n[upstreams.{}]\nurl = \"{}\"\naudience = \"{}\"\ncredentials = \"{}\"",
                u.api.name(),
                u.url,
                u.audience,
                u.credentials
            );
        }
        let c = &self.upstream_client;
        let _ = writeln!(
            s,
            "\n[upstream_client]\nconnect_timeout_ms = {}\nrequest_timeout_ms = {}\nbody_idle_timeout_ms = {}\npool_idle_timeout_secs = {}\nca_file = {:?}",
            c.connect_timeout.as_millis(),
            c.request_timeout.as_millis(),
            c.body_idle_timeout.as_millis(),
            c.pool_idle_timeout.as_secs(),
            c.ca_file
        );
        let t = &self.tokens;
        let _ = writeln!(
            s,
            "\n[tokens]\nrefresh_at_fraction = {}\nrefresh_margin_secs = {}\nfetch_timeout_ms = {}\nretry_initial_ms = {}\nretry_max_ms = {}",
            t.refresh_at_fraction,
            t.refresh_margin.as_secs(),
            t.fetch_timeout.as_millis(),
            t.retry_initial.as_millis(),
            t.retry_max.as_millis()
        );
        if let Some(i) = &self.callers.issuer {
            let _ = writeln!(
                s,
                "\n[gateway_tokens]\nkey = \"{:?}\"\nissuer = \"{}\"\nlifetime_secs = {}",
                i.key,
                i.issuer,
                i.lifetime.as_secs()
            );
        }
        for c in &self.callers.callers {
            let _ = writeln!(
                s,
                "\n[callers.{}]\napi_key = \"{}\"\nclient_id = {:?}\nclient_secret = \"{}\"\nclient_cert = {:?}\noperations = {:?}\npartner = {:?}",
                c.name,
                if c.api_key_sha256.is_some() { "[REDACTED]" } else { "none" },
                c.client.as_ref().map(|(id, _)| id),
                if c.client.is_some() { "[REDACTED]" } else { "none" },
                c.client_cert.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
                c.operations,
                c.partner
            );
        }
        let _ = writeln!(
            s,
            "\n[limits]\nmax_request_body_bytes = {}\nrequest_timeout_ms = {}\n\
             max_response_body_bytes = {}",
            self.limits.max_request_body_bytes,
            self.limits.request_timeout.as_millis(),
            self.limits.max_response_body_bytes
        );
        let _ = writeln!(
            s,
            "\n[idempotency]\nttl_secs = {}\nmax_bytes = {}",
            self.idempotency.ttl.as_secs(),
            self.idempotency.max_bytes
        );
        let r = &self.retry;
        let _ = writeln!(
            s,
            "\n[retry]\nmax_attempts = {}\ninitial_backoff_ms = {}\nmax_backoff_ms = {}\ndeadline_ms = {}",
            r.max_attempts,
            r.initial_backoff.as_millis(),
            r.max_backoff.as_millis(),
            r.deadline.as_millis()
        );
        let _ = writeln!(
            s,
            "\n[audit]\npath = {:?}\nenabled = {}\noperations = {:?}\nrotate_bytes = {:?}\nrotate_daily = {}",
            self.audit.log.path,
            self.audit.enabled,
            self.audit.operations,
            self.audit.log.rotate_bytes,
            self.audit.log.rotate_daily
        );
        let r = &self.rate_limits;
        let _ = match r.over_limit {
            OverLimit::Reject => writeln!(s, "\n[rate_limits]\nmode = \"reject\""),
            OverLimit::Queue { max_wait } => {
                writeln!(
                    s,
                    "\n[rate_limits]\nmode = \"queue\"\nmax_wait_ms = {}",
                    max_wait.as_millis()
                )
            }
        };
        let _ = writeln!(
            s,
            "upstream_pause_default_secs = {}\nupstream_pause_max_secs = {}",
            r.upstream_pause_default.as_secs(),
            r.upstream_pause_max.as_secs()
        );
        let rate = |s: &mut String, section: &str, rate: &Rate| {
            let _ = writeln!(
                s,
                "[rate_limits.{section}]\nrate_per_sec = {}\nburst = {}",
                rate.per_sec, rate.burst
            );
        };
        if let Some(p) = &r.per_caller {
            rate(&mut s, "per_caller", p);
        }
        for (name, p) in &r.callers {
            rate(&mut s, &format!("callers.{name}"), p);
        }
        for (api, p) in &r.upstreams {
            rate(&mut s, &format!("upstreams.{}", api.name()), p);
        }
        for (op, p) in &r.operations {
            rate(&mut s, &format!("operations.\"{op}\""), p);
        }
        match &self.cache {
            None => {
                let _ = writeln!(s, "\n[cache]\nenabled = false");
            }
            Some(c) => {
                let _ = writeln!(
                    s,
                    "\n[cache]\nenabled = true\nmax_bytes = {}\nterminal_ttl_secs = {}\nchanging_ttl_secs = {}\nlist_past_ttl_secs = {}\nlist_today_ttl_secs = {}\nnot_found_ttl_secs = {}\nstale_if_error_secs = {}",
                    c.max_bytes,
                    c.terminal_ttl.as_secs(),
                    c.changing_ttl.as_secs(),
                    c.list_past_ttl.as_secs(),
                    c.list_today_ttl.as_secs(),
                    c.not_found_ttl.as_secs(),
                    c.stale_if_error.as_secs()
                );
            }
        }
        s
    }
}
