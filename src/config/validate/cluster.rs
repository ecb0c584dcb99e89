//! `[cluster]`: the Redis URL and credentials, the instance's name and count, the timeouts and
//! the fallback. Secrets come from `*_env` / `*_file` only; a URL with credentials in it is
//! refused (they belong in their own keys, which are redacted).

use std::{sync::Arc, time::Duration};

use secrecy::{ExposeSecret, SecretBox};

use super::{ms, within};
use crate::config::{
    cluster::{ClusterSettings, RateLimitFallback},
    file::ClusterFile,
    problems::Ctx,
};

/// Longest Redis call bound: past this a request path would notice Redis.
const MAX_TIMEOUT_MS: u64 = 1000;

pub(super) fn cluster(f: &ClusterFile, cx: &Ctx<'_>) -> Option<ClusterSettings> {
    let name = match (&f.instance, &f.instance_env) {
        (Some(n), None) => Some(n.clone()),
        (None, Some(var)) => match std::env::var(var) {
            Ok(n) => Some(n),
            Err(_) => {
                cx.report(
                    "cluster.instance_env",
                    format!("environment variable {var} is not set"),
                );
                None
            }
        },
        (Some(_), Some(_)) => {
            cx.report(
                "cluster.instance",
                "set only one of instance and instance_env",
            );
            None
        }
        (None, None) => {
            cx.report(
                "cluster.instance",
                "set instance (or instance_env): this instance's name, unique in the fleet",
            );
            None
        }
    };
    let instance = name.and_then(|n| {
        cx.require(
            !n.is_empty()
                && n.len() <= 64
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "cluster.instance",
            format!(
                "expected 1 to 64 of [A-Za-z0-9_-] (it names this instance in logs, metrics and audit files), got {n:?}"
            ),
        )
        .map(|()| n)
    });
    let instances = cx
        .check(within(
            cx,
            "cluster.instances",
            u64::from(f.instances),
            1,
            64,
            "instances",
        ))
        .map(|()| f.instances);
    let url = match cx.check(cx.secret("cluster.redis_url", &f.redis_url_env, &f.redis_url_file)) {
        Some(Some(url)) => {
            let text = url.expose_secret();
            let ok = cx.require(
                (text.starts_with("redis://") || text.starts_with("rediss://"))
                    && redis::parse_redis_url(text).is_some(),
                "cluster.redis_url",
                "expected a redis://host:port[/db] or rediss://host:port[/db] URL",
            );
            let no_credentials = cx.require(
                !text
                    .split_once("://")
                    .is_some_and(|(_, rest)| rest.split('/').next().is_some_and(|a| a.contains('@'))),
                "cluster.redis_url",
                "the URL carries credentials; give them as redis_username and redis_password_env/_file instead",
            );
            ok.and(no_credentials).map(|()| url)
        }
        Some(None) => {
            cx.report(
                "cluster.redis_url",
                "set redis_url_env or redis_url_file (the URL of the Redis the instances share)",
            );
            None
        }
        None => None,
    };
    let password = cx.check(cx.secret(
        "cluster.redis_password",
        &f.redis_password_env,
        &f.redis_password_file,
    ));
    let username_ok = cx.require(
        f.redis_username.is_none()
            || f.redis_password_env.is_some()
            || f.redis_password_file.is_some(),
        "cluster.redis_username",
        "an ACL user needs its password (redis_password_env or redis_password_file)",
    );
    let ca_ok = match &f.redis_ca_file {
        Some(p) => cx.check(cx.read_file("cluster.redis_ca_file", p).and_then(|pem| {
            if pem.contains("-----BEGIN CERTIFICATE-----") {
                Ok(())
            } else {
                Err(cx.err(
                    "cluster.redis_ca_file",
                    format!("{p} holds no PEM certificate"),
                ))
            }
        })),
        None => Some(()),
    };
    let prefix = f
        .key_prefix
        .clone()
        .unwrap_or_else(|| ClusterSettings::DEFAULT_PREFIX.to_owned());
    let prefix_ok = cx.require(
        !prefix.is_empty() && prefix.len() <= 64 && prefix.bytes().all(|b| b.is_ascii_graphic()),
        "cluster.key_prefix",
        "expected 1 to 64 visible ASCII characters",
    );
    let timeout = ms(f.redis_timeout_ms, ClusterSettings::DEFAULT_TIMEOUT);
    let timeout_ok = cx.check(within(
        cx,
        "cluster.redis_timeout_ms",
        super::millis(timeout),
        1,
        MAX_TIMEOUT_MS,
        "ms",
    ));
    let retry = ms(
        f.retry_after_failure_ms,
        ClusterSettings::DEFAULT_RETRY_AFTER_FAILURE,
    );
    let retry_ok = cx.check(within(
        cx,
        "cluster.retry_after_failure_ms",
        super::millis(retry),
        10,
        60_000,
        "ms",
    ));
    let fallback = match f.rate_limit_fallback.as_deref() {
        None | Some("local") => Some(RateLimitFallback::Local),
        Some("refuse") => Some(RateLimitFallback::Refuse),
        Some(other) => {
            cx.report(
                "cluster.rate_limit_fallback",
                format!("expected \"local\" or \"refuse\", got {other:?}"),
            );
            None
        }
    };
    let key = |base: &str, env: &Option<String>, file: &Option<String>| {
        let secret = cx.check(cx.secret(base, env, file))?;
        match secret {
            None => Some(None),
            Some(hex_key) => {
                let bytes = hex::decode(hex_key.expose_secret().trim())
                    .ok()
                    .and_then(|v| <[u8; 32]>::try_from(v).ok());
                match bytes {
                    Some(b) => Some(Some(Arc::new(SecretBox::new(Box::new(b))))),
                    None => {
                        cx.report(base, "expected 64 hex digits (a 32-byte AES-256 key; e.g. `openssl rand -hex 32`)");
                        None
                    }
                }
            }
        }
    };
    let answer_key = match key("cluster.answer_key", &f.answer_key_env, &f.answer_key_file) {
        Some(Some(k)) => Some(k),
        Some(None) => {
            cx.report(
                "cluster.answer_key",
                "set answer_key_env or answer_key_file: 64 hex digits (`openssl rand -hex 32`) that seal the idempotent answers kept in Redis",
            );
            None
        }
        None => None,
    };
    let previous = key(
        "cluster.previous_answer_key",
        &f.previous_answer_key_env,
        &f.previous_answer_key_file,
    );
    let distinct = match (&answer_key, &previous) {
        (Some(a), Some(Some(p))) => cx.require(
            a.expose_secret() != p.expose_secret(),
            "cluster.previous_answer_key",
            "is the same key as answer_key; after a rotation it holds the key before it",
        ),
        _ => Some(()),
    };
    username_ok?;
    distinct?;
    ca_ok?;
    prefix_ok?;
    timeout_ok?;
    retry_ok?;
    Some(ClusterSettings {
        instance: instance?,
        instances: instances?,
        redis_url: url?,
        redis_username: f.redis_username.clone(),
        redis_password: password?,
        redis_ca_file: f.redis_ca_file.as_ref().map(Into::into),
        key_prefix: prefix,
        redis_timeout: timeout,
        retry_after_failure: retry.max(Duration::from_millis(10)),
        rate_limit_fallback: fallback?,
        answer_key: answer_key?,
        previous_answer_key: previous?,
    })
}
