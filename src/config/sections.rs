//! The validated settings of each section, and their defaults.
//!
//! Every default lives here, once: a `Default` impl (or an associated constant where a section
//! has no default as a whole), which validation fills absent keys from. Each layer receives only
//! its own section. The callers' section has its own file ([`super::callers`]).

use std::{collections::BTreeMap, fmt, net::SocketAddr, path::PathBuf, time::Duration};

use http::Uri;
use rustls::pki_types::TrustAnchor;
use secrecy::SecretString;

use crate::{routes::Api, tls::TlsSettings};

/// The longest timeout, backoff or deadline in milliseconds (an hour): every one of them is
/// added to a clock reading somewhere, and nothing the gateway waits for takes longer.
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// `[listen]`, validated.
#[derive(Debug, Clone, PartialEq)]
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

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            proxy: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin: Some(SocketAddr::from(([127, 0, 0, 1], 9091))),
            shutdown_grace: Duration::from_secs(10),
            connections: ConnectionLimits::default(),
            tls: None,
        }
    }
}

/// `[listen]` bounds on client connections: a connection that sends nothing, or trickles its
/// first request, or sits idle, is closed; the proxy listener holds at most `max` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Deadline from accept to the first complete request head.
    pub first_request_timeout: Duration,
    /// No request in flight for this long: the connection is closed.
    pub idle_timeout: Duration,
    /// HTTP/1: from an answer to the next complete request head; longer, and the connection
    /// is closed.
    pub header_timeout: Duration,
    /// A write to the client blocked this long (the client reads nothing): the connection is
    /// closed.
    pub send_timeout: Duration,
    /// Most open connections on the proxy listener.
    pub max: usize,
}

impl ConnectionLimits {
    /// The admin listener's cap: small, and separate, so a flood on the proxy listener never
    /// keeps an operator from `/metrics` or `/healthz`.
    pub const ADMIN_MAX: usize = 64;
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            first_request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(60),
            max: 4096,
        }
    }
}

/// `[sandbox]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSettings {
    /// Token lifetime of the embedded sandbox.
    pub token_lifetime: Duration,
    /// Id seed.
    pub seed: Option<u64>,
    /// Session status step (`None`: never moves alone).
    pub session_step: Option<Duration>,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        SandboxSettings {
            token_lifetime: Duration::from_secs(1800),
            seed: None,
            session_step: Some(Duration::from_secs(10)),
        }
    }
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

impl Credentials {
    /// Ratepay's token endpoint, when `token_url` is not set.
    pub const DEFAULT_TOKEN_URL: &'static str = "https://oauth.ratepay.com/oauth/token";
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

impl Upstream {
    /// The credential set an upstream uses when it names none.
    pub const DEFAULT_CREDENTIALS: &'static str = "default";
}

/// `[upstream_client]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamClientConfig {
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Time to response headers for one attempt.
    pub request_timeout: Duration,
    /// Pool idle timeout.
    pub pool_idle_timeout: Duration,
    /// Longest silence from an upstream mid-body.
    pub body_idle_timeout: Duration,
    /// Extra CAs trusted besides the webpki roots, parsed at load.
    pub ca_file: Option<CaBundle>,
}

impl Default for UpstreamClientConfig {
    fn default() -> Self {
        UpstreamClientConfig {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            pool_idle_timeout: Duration::from_secs(90),
            body_idle_timeout: Duration::from_secs(10),
            ca_file: None,
        }
    }
}

/// `upstream_client.ca_file`: the file and the trust anchors read from it at load.
#[derive(Clone, PartialEq)]
pub struct CaBundle {
    /// The PEM file (for messages and `check-config`).
    pub path: PathBuf,
    /// Its certificates as trust anchors, in file order (at least one).
    pub anchors: Vec<TrustAnchor<'static>>,
}

impl fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaBundle")
            .field("path", &self.path)
            .field("certificates", &self.anchors.len())
            .finish()
    }
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

/// `[limits]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body.
    pub max_request_body_bytes: usize,
    /// Whole-request deadline.
    pub request_timeout: Duration,
    /// Largest upstream answer (declared or streamed).
    pub max_response_body_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_body_bytes: 1 << 20,
            request_timeout: Duration::from_secs(30),
            max_response_body_bytes: 4 << 20,
        }
    }
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
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// `[audit]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    /// Log file settings.
    pub log: crate::audit::AuditConfig,
    /// `false` only for the load benchmark's baseline: nothing is audited, cancellations included.
    pub enabled: bool,
    /// Audited operations (ignored when not `enabled`).
    pub operations: Vec<&'static str>,
}

impl AuditSettings {
    /// The operation that is always audited while auditing is on.
    pub const ALWAYS_AUDITED: &'static str = "payment.cancellations.create";
    /// The longest an outcome answered once written waits for its sync, by default.
    pub const DEFAULT_OUTCOME_SYNC_DELAY: Duration = Duration::from_millis(10);
}

impl Default for AuditSettings {
    fn default() -> Self {
        let mut log = crate::audit::AuditConfig::new("var/audit/audit.jsonl");
        log.rotate_daily = true;
        log.checkpoints = Some(crate::audit::CheckpointConfig::default());
        log.outcome_sync_delay = Some(AuditSettings::DEFAULT_OUTCOME_SYNC_DELAY);
        AuditSettings {
            log,
            enabled: true,
            operations: vec![AuditSettings::ALWAYS_AUDITED],
        }
    }
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

impl OverLimit {
    /// `max_wait` of `mode = "queue"` when `max_wait_ms` is not set.
    pub const DEFAULT_MAX_WAIT: Duration = Duration::from_millis(500);
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
