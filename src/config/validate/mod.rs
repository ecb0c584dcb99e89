//! The file schema turned into a [`Config`], one section at a time, every problem reported.
//!
//! Each section has its validator in a file of its own; each returns its settings, or `None`
//! after reporting what is wrong into the [`Ctx`]. A check whose input another section holds
//! (an upstream's credential set, a rate limit's caller) looks at the file, not at the other
//! section's result, so one mistake is reported once, where it is.

mod audit;
mod callers;
mod cluster;
mod limits;
mod listen;
mod upstreams;

use std::{path::Path, time::Duration};

use super::{
    file::FileConfig,
    problems::{ConfigProblem, Ctx},
    CallersConfig, Config,
};

/// Validates the parsed file; `path` is recorded as the configuration's source.
pub(super) fn config(f: &FileConfig, cx: &Ctx<'_>, path: &Path) -> Option<Config> {
    let listen = listen::listen(&f.listen, cx);
    let sandbox = listen::sandbox(f.sandbox.as_ref(), cx);
    let credentials = upstreams::credentials(&f.credentials, cx);
    let upstreams = upstreams::upstreams(f, cx);
    let upstream_client = upstreams::upstream_client(&f.upstream_client, cx);
    let tokens = upstreams::tokens(&f.tokens, cx);
    let issuer = match &f.gateway_tokens {
        None => Some(None),
        Some(g) => callers::issuer(g, cx).map(Some),
    };
    let callers = callers::callers(f, cx);
    let limits = limits::limits(&f.limits, cx);
    let idempotency = limits::idempotency(&f.idempotency, cx);
    let retry = limits::retry(&f.retry, cx);
    let audit = audit::audit(&f.audit, cx);
    let request_timeout = limits.as_ref().map(|l| l.request_timeout);
    let rate_limits = limits::rate_limits(f, request_timeout, cx);
    let cache = match &f.cache {
        // A `[cache]` section switches the cache on unless it says `enabled = false`.
        Some(c) if c.enabled.unwrap_or(true) => limits::cache(c, cx).map(Some),
        _ => Some(None),
    };
    let cluster = match &f.cluster {
        Some(c) => cluster::cluster(c, cx).map(Some),
        None => Some(None),
    };

    // `{instance}` in the audit path: each instance of a fleet keeps its own chain.
    let instance = cluster
        .as_ref()
        .and_then(|c| c.as_ref().map(|c| c.instance.clone()))
        .unwrap_or_else(|| "gateway".to_owned());
    let audit = audit.map(|mut a| {
        if let Some(p) = a.log.path.to_str().filter(|p| p.contains("{instance}")) {
            a.log.path = p.replace("{instance}", &instance).into();
        }
        // Start, stop and checkpoint records name the instance whose chain they close.
        a.log.instance = instance.clone();
        a
    });
    let upstreams = upstreams?;
    let audiences = upstreams.values().map(|u| u.audience.clone()).collect();
    Some(Config {
        source: path.to_path_buf(),
        listen: listen?,
        sandbox: sandbox?,
        credentials: credentials?,
        upstreams,
        upstream_client: upstream_client?,
        tokens: tokens?,
        callers: CallersConfig {
            callers: callers?,
            issuer: issuer?,
            audiences,
        },
        limits: limits?,
        idempotency: idempotency?,
        retry: retry?,
        audit: audit?,
        rate_limits: rate_limits?,
        cache: cache?,
        cluster: cluster?,
    })
}

/// `v` milliseconds, or `default`.
fn ms(v: Option<u64>, default: Duration) -> Duration {
    v.map(Duration::from_millis).unwrap_or(default)
}

/// `v` seconds, or `default`.
fn secs(v: Option<u64>, default: Duration) -> Duration {
    v.map(Duration::from_secs).unwrap_or(default)
}

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
) -> Result<(), ConfigProblem> {
    if (lo..=hi).contains(&value) {
        Ok(())
    } else {
        Err(cx.err(key, format!("expected {lo} to {hi} {unit}, got {value}")))
    }
}
