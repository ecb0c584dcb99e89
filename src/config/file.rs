//! The TOML file schema, exactly as an operator writes it.
//!
//! Every struct rejects unknown keys, so a typo is an error naming the key rather than a
//! silently ignored setting. Nothing here is validated beyond its type: [`super::Config::from_file`]
//! turns this into the validated configuration. Secrets never sit in the file: each is given as
//! a `*_env` (environment variable name) or `*_file` (path) key.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[listen]`.
    #[serde(default)]
    pub listen: ListenFile,
    /// `[sandbox]`.
    #[serde(default)]
    pub sandbox: Option<SandboxFile>,
    /// `[credentials.<name>]`: Ratepay OAuth client credentials.
    #[serde(default)]
    pub credentials: BTreeMap<String, CredentialsFile>,
    /// `[upstreams.<payment|status|hpp>]`.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamFile>,
    /// `[upstream_client]`: the pooled HTTP client toward Ratepay.
    #[serde(default)]
    pub upstream_client: UpstreamClientFile,
    /// `[tokens]`: Ratepay token refresh behaviour.
    #[serde(default)]
    pub tokens: TokensFile,
    /// `[gateway_tokens]`: JWTs the gateway issues to internal callers.
    #[serde(default)]
    pub gateway_tokens: Option<GatewayTokensFile>,
    /// `[callers.<name>]`.
    #[serde(default)]
    pub callers: BTreeMap<String, CallerFile>,
    /// `[limits]`.
    #[serde(default)]
    pub limits: LimitsFile,
    /// `[idempotency]`.
    #[serde(default)]
    pub idempotency: IdempotencyFile,
    /// `[retry]`.
    #[serde(default)]
    pub retry: RetryFile,
    /// `[audit]`.
    #[serde(default)]
    pub audit: AuditFile,
    /// `[rate_limits]`: per caller, per upstream and per operation; Ratepay's 429 pause.
    #[serde(default)]
    pub rate_limits: RateLimitsFile,
    /// `[cache]`: the session-record cache (absent: no caching).
    #[serde(default)]
    pub cache: Option<CacheFile>,
    /// `[cluster]`: state shared with other instances through Redis (absent: in-process).
    #[serde(default)]
    pub cluster: Option<ClusterFile>,
}

/// `[cluster]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// This instance's name, unique in the fleet (`[A-Za-z0-9_-]`, 1 to 64).
    pub instance: Option<String>,
    /// Environment variable holding the name instead (one file for every instance).
    pub instance_env: Option<String>,
    /// How many instances share the limits (the local fallback divides every rate by it).
    pub instances: u32,
    /// Environment variable holding the `redis://` or `rediss://` URL.
    pub redis_url_env: Option<String>,
    /// File holding the URL.
    pub redis_url_file: Option<String>,
    /// ACL user name.
    pub redis_username: Option<String>,
    /// Environment variable holding the AUTH password.
    pub redis_password_env: Option<String>,
    /// File holding the AUTH password.
    pub redis_password_file: Option<String>,
    /// Extra PEM CA bundle trusted for `rediss://`.
    pub redis_ca_file: Option<String>,
    /// Prefix of every key and channel (default `ratepay-gateway:`).
    pub key_prefix: Option<String>,
    /// Bound of each Redis call on the request path (default 5 ms).
    pub redis_timeout_ms: Option<u64>,
    /// After a failed Redis call, how long the fallback is used before Redis is tried again.
    pub retry_after_failure_ms: Option<u64>,
    /// `local` (default) or `refuse`: shared rate limits while Redis is unreachable.
    pub rate_limit_fallback: Option<String>,
    /// Environment variable holding the AES-256 key (64 hex digits) that seals stored answers.
    pub answer_key_env: Option<String>,
    /// File holding that key.
    pub answer_key_file: Option<String>,
    /// The previous key during a rotation (opens, never seals): environment variable.
    pub previous_answer_key_env: Option<String>,
    /// The previous key: file.
    pub previous_answer_key_file: Option<String>,
}

/// `[idempotency]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct IdempotencyFile {
    /// How long completed answers are kept for replay (Ratepay: 24 h).
    pub ttl_secs: Option<u64>,
    /// Memory bound of the store.
    pub max_bytes: Option<u64>,
}

/// `[retry]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RetryFile {
    /// Attempts in total, the first included (1 disables retries).
    pub max_attempts: Option<u32>,
    /// Delay before the first retry.
    pub initial_backoff_ms: Option<u64>,
    /// Cap of the delay.
    pub max_backoff_ms: Option<u64>,
    /// No retry starts later than this after the first attempt.
    pub deadline_ms: Option<u64>,
}

/// `[audit]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuditFile {
    /// The active log file.
    pub path: Option<String>,
    /// `false`: audit nothing, not even cancellations (the load benchmark's audit-off baseline).
    pub enabled: Option<bool>,
    /// Operations audited (default: cancellations).
    pub operations: Option<Vec<String>>,
    /// Rotate when the active file reaches this size.
    pub rotate_bytes: Option<u64>,
    /// Rotate at UTC midnight.
    pub rotate_daily: Option<bool>,
    /// PKCS#8 Ed25519 private key (PEM or DER) that signs checkpoints; absent: unsigned.
    pub signing_key_file: Option<String>,
    /// A checkpoint after at most this many records (default 1000).
    pub checkpoint_every_records: Option<u64>,
    /// A checkpoint at least this often while records come (default 60).
    pub checkpoint_every_secs: Option<u64>,
    /// When the answer to an audited call may go: `"written"` (default: its outcome is in the
    /// file, synced soon after) or `"synced"` (its outcome is on disk).
    pub outcome_durability: Option<String>,
    /// With `"written"`: longest time an outcome waits for its sync (default 10).
    pub outcome_sync_delay_ms: Option<u64>,
}

/// `[listen]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ListenFile {
    /// Proxy listener address, e.g. `127.0.0.1:8080`.
    pub proxy: Option<String>,
    /// Admin listener address (health, metrics); loopback by default.
    pub admin: Option<String>,
    /// Graceful shutdown deadline for in-flight requests.
    pub shutdown_grace_ms: Option<u64>,
    /// A connection must complete its first request head (HTTP/1 headers, or the h2 preface
    /// and first HEADERS) within this time after it was accepted, or it is closed.
    pub first_request_timeout_ms: Option<u64>,
    /// A connection with no request in flight for this long is closed (HTTP/1 keep-alive and
    /// h2 alike; h2 gets a GOAWAY).
    pub idle_timeout_ms: Option<u64>,
    /// An HTTP/1 connection must send its next complete request head within this time of its
    /// previous answer (keep-alive idle time included), or it is closed.
    pub header_timeout_ms: Option<u64>,
    /// A connection whose client reads nothing of what the gateway writes for this long (two
    /// successive writes this far apart, like nginx's `send_timeout`) is closed.
    pub send_timeout_ms: Option<u64>,
    /// Most connections the proxy listener keeps open; more are closed at accept.
    pub max_connections: Option<u64>,
    /// `[listen.tls]`: TLS (and mTLS) on the proxy listener; absent: plain HTTP.
    pub tls: Option<ListenTlsFile>,
}

/// `[listen.tls]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenTlsFile {
    /// PEM certificate chain, the server certificate first.
    pub cert_file: String,
    /// PEM private key of the certificate (PKCS#8, RSA or SEC1).
    pub key_file: String,
    /// PEM bundle of the CAs trusted for client certificates; set: mTLS.
    pub client_ca_file: Option<String>,
    /// `required` (default with `client_ca_file`) or `optional`.
    pub client_auth: Option<String>,
    /// Longest time a connection may take to complete the handshake.
    pub handshake_timeout_ms: Option<u64>,
}

/// `[sandbox]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxFile {
    /// Start the sandbox in-process and point every upstream and token URL at it.
    pub embedded: bool,
    /// Lifetime of the sandbox's access tokens.
    pub token_lifetime_secs: Option<u64>,
    /// Seed for deterministic ids.
    pub seed: Option<u64>,
    /// Seconds an HPP session stays in each non-terminal status (0: sessions never move alone).
    pub session_step_secs: Option<u64>,
}

/// `[credentials.<name>]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsFile {
    /// Ratepay's token endpoint.
    pub token_url: Option<String>,
    /// OAuth `client_id`.
    pub client_id: String,
    /// Environment variable holding the client secret.
    pub client_secret_env: Option<String>,
    /// File holding the client secret.
    pub client_secret_file: Option<String>,
}

/// `[upstreams.<name>]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    /// Origin of the API, e.g. `https://api-integration.ratepay.com` (no path).
    pub url: String,
    /// OAuth audience for tokens sent to this API.
    pub audience: String,
    /// Name of the `[credentials.<name>]` set to use.
    pub credentials: Option<String>,
}

/// `[upstream_client]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UpstreamClientFile {
    /// TCP + TLS connect timeout.
    pub connect_timeout_ms: Option<u64>,
    /// Time to response headers for one upstream attempt.
    pub request_timeout_ms: Option<u64>,
    /// Idle pooled connections are closed after this.
    pub pool_idle_timeout_secs: Option<u64>,
    /// Fail a streamed upstream answer that sends nothing for this long mid-body.
    pub body_idle_timeout_ms: Option<u64>,
    /// Extra PEM CA bundle trusted in addition to the webpki roots.
    pub ca_file: Option<String>,
}

/// `[tokens]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TokensFile {
    /// Refresh when this fraction of the lifetime has passed (0.5 to 0.95).
    pub refresh_at_fraction: Option<f64>,
    /// Never refresh later than this many seconds before expiry.
    pub refresh_margin_secs: Option<u64>,
    /// Timeout of one token request.
    pub fetch_timeout_ms: Option<u64>,
    /// First retry delay after a failed background refresh.
    pub retry_initial_ms: Option<u64>,
    /// Cap of the retry delay.
    pub retry_max_ms: Option<u64>,
}

/// `[gateway_tokens]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayTokensFile {
    /// `HS256` (shared key) or `EdDSA` / `RS256` (key pair in PEM files).
    pub algorithm: Option<String>,
    /// HS256 key: environment variable.
    pub hs256_key_env: Option<String>,
    /// HS256 key: file.
    pub hs256_key_file: Option<String>,
    /// EdDSA/RS256 private key (PEM) used to sign.
    pub private_key_file: Option<String>,
    /// EdDSA/RS256 public key (PEM) used to verify.
    pub public_key_file: Option<String>,
    /// `iss` of issued tokens.
    pub issuer: Option<String>,
    /// Lifetime of issued tokens.
    pub lifetime_secs: Option<u64>,
}

/// `[callers.<name>]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerFile {
    /// SHA-256 (hex) of the caller's API key.
    pub api_key_sha256: Option<String>,
    /// Environment variable holding the API key.
    pub api_key_env: Option<String>,
    /// File holding the API key.
    pub api_key_file: Option<String>,
    /// Internal OAuth client id for `POST /oauth/token` on the gateway.
    pub client_id: Option<String>,
    /// SHA-256 (hex) of the internal client secret.
    pub client_secret_sha256: Option<String>,
    /// Environment variable holding the internal client secret.
    pub client_secret_env: Option<String>,
    /// File holding the internal client secret.
    pub client_secret_file: Option<String>,
    /// Operations this caller may call: names, `api.*` prefixes, or `*`.
    pub operations: Vec<String>,
    /// A fixed X-Partner always sent for this caller.
    pub partner: Option<String>,
    /// X-Partner values this caller may choose with its own X-Partner header.
    pub partners: Option<Vec<String>>,
    /// Client certificate identities (mTLS) that identify this caller:
    /// `"spiffe://trust-domain/path"` (a URI SAN) or `"dns:host.name"` (a DNS SAN).
    pub client_cert: Option<Vec<String>>,
}

/// `[limits]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Largest request body accepted (bodies are buffered for replay and idempotency).
    pub max_request_body_bytes: Option<usize>,
    /// Deadline for a whole request through the gateway, retries included.
    pub request_timeout_ms: Option<u64>,
    /// Largest upstream answer passed on or buffered (cache, idempotency, audit).
    pub max_response_body_bytes: Option<u64>,
}

/// `[rate_limits]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsFile {
    /// `reject` (answer 429 at once) or `queue` (wait up to `max_wait_ms`, then 429).
    pub mode: Option<String>,
    /// Longest wait for a turn in queue mode.
    pub max_wait_ms: Option<u64>,
    /// Default limit of every caller.
    pub per_caller: Option<RateFile>,
    /// `[rate_limits.callers.<caller>]`: overrides of `per_caller`.
    #[serde(default)]
    pub callers: BTreeMap<String, RateFile>,
    /// `[rate_limits.upstreams.<payment|status|hpp>]`: the budget toward each Ratepay API.
    #[serde(default)]
    pub upstreams: BTreeMap<String, RateFile>,
    /// `[rate_limits.operations."<operation>"]`: the budget toward Ratepay for one operation.
    #[serde(default)]
    pub operations: BTreeMap<String, RateFile>,
    /// Pause after a Ratepay 429 that carries no usable `Retry-After`.
    pub upstream_pause_default_secs: Option<u64>,
    /// Longest pause a Ratepay `Retry-After` can impose.
    pub upstream_pause_max_secs: Option<u64>,
}

/// One limit: a sustained rate and a burst.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateFile {
    /// Sustained requests per second (may be fractional, e.g. 0.5).
    pub rate_per_sec: f64,
    /// Requests allowed at once before the rate applies.
    pub burst: u32,
}

/// `[cache]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheFile {
    /// Switch the cache off without removing the section.
    pub enabled: Option<bool>,
    /// Capacity in bytes (bodies, headers and keys).
    pub max_bytes: Option<u64>,
    /// Lifetime of a record in a terminal status (COMPLETED, ERROR, EXPIRED, CANCELED).
    pub terminal_ttl_secs: Option<u64>,
    /// Lifetime of a record that can still change (CREATED, IN_PROGRESS, ...).
    pub changing_ttl_secs: Option<u64>,
    /// Lifetime of a list for a past day whose records are all terminal.
    pub list_past_ttl_secs: Option<u64>,
    /// Lifetime of a list for today (or one holding records that can still change).
    pub list_today_ttl_secs: Option<u64>,
    /// Lifetime of a 404.
    pub not_found_ttl_secs: Option<u64>,
    /// How long past its lifetime an entry may still be served when Ratepay fails.
    pub stale_if_error_secs: Option<u64>,
}
