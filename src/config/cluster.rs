//! `[cluster]`'s validated settings: the Redis that several gateway instances share their rate
//! limits, Ratepay's 429 pauses and cache invalidations through, and what each instance does
//! while Redis cannot be reached.

use std::{fmt, path::PathBuf, sync::Arc, time::Duration};

use secrecy::{ExposeSecret, SecretBox, SecretString};

use super::{Rate, RateLimitSettings};

/// What a shared rate limit does while Redis is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitFallback {
    /// Each instance enforces the configured rates divided by `instances` on its own.
    Local,
    /// Requests that need a shared budget are refused with 503 until Redis is back.
    Refuse,
}

impl RateLimitFallback {
    /// The configuration spelling.
    pub fn name(self) -> &'static str {
        match self {
            RateLimitFallback::Local => "local",
            RateLimitFallback::Refuse => "refuse",
        }
    }
}

/// `[cluster]`: shared state in Redis.
#[derive(Clone)]
pub struct ClusterSettings {
    /// This instance's name (unique in the fleet; logs and metrics carry it).
    pub instance: String,
    /// How many instances share the limits (the local fallback divides by it).
    pub instances: u32,
    /// `redis://` or `rediss://` URL, without credentials (those come from their own keys).
    pub redis_url: SecretString,
    /// ACL user name, if any.
    pub redis_username: Option<String>,
    /// AUTH password, if any.
    pub redis_password: Option<SecretString>,
    /// Extra PEM CA bundle for `rediss://`.
    pub redis_ca_file: Option<PathBuf>,
    /// Prefix of every key and channel the gateway uses.
    pub key_prefix: String,
    /// Bound of each Redis call on the request path.
    pub redis_timeout: Duration,
    /// How long Redis is left alone after a failed call before the next try.
    pub retry_after_failure: Duration,
    /// What shared rate limits do while Redis is unreachable.
    pub rate_limit_fallback: RateLimitFallback,
    /// AES-256 key sealing the idempotent answers stored in Redis.
    pub answer_key: AnswerKey,
    /// The key before the last rotation: still opens answers, never seals.
    pub previous_answer_key: Option<AnswerKey>,
}

/// A 32-byte key, never printed.
pub type AnswerKey = Arc<SecretBox<[u8; 32]>>;

impl fmt::Debug for ClusterSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a host an operator considers private, and the password is a secret.
        f.debug_struct("ClusterSettings")
            .field("instance", &self.instance)
            .field("instances", &self.instances)
            .field("redis_url", &"[REDACTED]")
            .field("redis_username", &self.redis_username)
            .field(
                "redis_password",
                &self.redis_password.as_ref().map(|_| "[REDACTED]"),
            )
            .field("redis_ca_file", &self.redis_ca_file)
            .field("key_prefix", &self.key_prefix)
            .field("redis_timeout", &self.redis_timeout)
            .field("retry_after_failure", &self.retry_after_failure)
            .field("rate_limit_fallback", &self.rate_limit_fallback)
            .field("answer_key", &"[REDACTED]")
            .field(
                "previous_answer_key",
                &self.previous_answer_key.as_ref().map(|_| "[REDACTED]"),
            )
            .finish()
    }
}

/// Secrets compared by value (a reload compares the running settings with the file's).
impl PartialEq for ClusterSettings {
    fn eq(&self, o: &Self) -> bool {
        let secret = |a: &SecretString, b: &SecretString| a.expose_secret() == b.expose_secret();
        self.instance == o.instance
            && self.instances == o.instances
            && secret(&self.redis_url, &o.redis_url)
            && self.redis_username == o.redis_username
            && match (&self.redis_password, &o.redis_password) {
                (Some(a), Some(b)) => secret(a, b),
                (None, None) => true,
                _ => false,
            }
            && self.redis_ca_file == o.redis_ca_file
            && self.key_prefix == o.key_prefix
            && self.redis_timeout == o.redis_timeout
            && self.retry_after_failure == o.retry_after_failure
            && self.rate_limit_fallback == o.rate_limit_fallback
            && self.answer_key.expose_secret() == o.answer_key.expose_secret()
            && self
                .previous_answer_key
                .as_ref()
                .map(|k| *k.expose_secret())
                == o.previous_answer_key.as_ref().map(|k| *k.expose_secret())
    }
}

impl ClusterSettings {
    /// Default Redis call bound.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(5);
    /// Default pause after a failed Redis call.
    pub const DEFAULT_RETRY_AFTER_FAILURE: Duration = Duration::from_millis(1000);
    /// Default key prefix.
    pub const DEFAULT_PREFIX: &'static str = "ratepay-gateway:";
}

/// `rate` shared by `n` instances: each gets `1/n` of the rate and of the burst (at least 1).
pub fn share_of(rate: &Rate, n: u32) -> Rate {
    let n = n.max(1);
    Rate {
        per_sec: rate.per_sec / f64::from(n),
        burst: rate.burst.div_ceil(n).max(1),
    }
}

impl RateLimitSettings {
    /// Every limit divided among `n` instances (the local fallback of shared limits).
    pub fn divided_by(&self, n: u32) -> RateLimitSettings {
        let mut s = self.clone();
        s.per_caller = s.per_caller.map(|r| share_of(&r, n));
        for r in s.callers.values_mut() {
            *r = share_of(r, n);
        }
        for r in s.upstreams.values_mut() {
            *r = share_of(r, n);
        }
        for r in s.operations.values_mut() {
            *r = share_of(r, n);
        }
        s
    }
}
