//! `[credentials.*]`, `[upstreams.*]`, `[upstream_client]` and `[tokens]`: the way to Ratepay.

use std::{collections::BTreeMap, path::PathBuf};

use super::{millis, ms, secs, within};
use crate::{
    config::{
        file::{self, FileConfig},
        problems::Ctx,
        CaBundle, Credentials, TokenSettings, Upstream, UpstreamClientConfig, MAX_TIMEOUT_MS,
    },
    routes::Api,
};

pub(super) fn credentials(
    f: &BTreeMap<String, file::CredentialsFile>,
    cx: &Ctx<'_>,
) -> Option<BTreeMap<String, Credentials>> {
    let mut out = BTreeMap::new();
    let mut all_ok = true;
    for (cname, c) in f {
        let key = format!("credentials.{cname}");
        let token_url = cx.check(
            cx.url(
                &format!("{key}.token_url"),
                c.token_url
                    .as_deref()
                    .unwrap_or(Credentials::DEFAULT_TOKEN_URL),
                false,
            ),
        );
        let id_ok = cx.require(
            !c.client_id.is_empty(),
            format!("{key}.client_id"),
            "must not be empty",
        );
        let client_secret = match cx.check(cx.secret(
            &format!("{key}.client_secret"),
            &c.client_secret_env,
            &c.client_secret_file,
        )) {
            Some(Some(secret)) => Some(secret),
            Some(None) => {
                cx.report(
                    format!("{key}.client_secret"),
                    "missing: set client_secret_env = \"VAR\" or client_secret_file = \"path\"",
                );
                None
            }
            None => None,
        };
        let set = (|| {
            id_ok?;
            Some(Credentials {
                name: cname.clone(),
                token_url: token_url?,
                client_id: c.client_id.clone(),
                client_secret: client_secret?,
            })
        })();
        match set {
            Some(set) => {
                out.insert(cname.clone(), set);
            }
            None => all_ok = false,
        }
    }
    all_ok.then_some(out)
}

pub(super) fn upstreams(f: &FileConfig, cx: &Ctx<'_>) -> Option<BTreeMap<Api, Upstream>> {
    if f.upstreams.is_empty() {
        cx.report(
            "upstreams",
            "at least one of [upstreams.payment], [upstreams.status], [upstreams.hpp] is required",
        );
        return None;
    }
    let mut out = BTreeMap::new();
    let mut all_ok = true;
    for (uname, u) in &f.upstreams {
        let key = format!("upstreams.{uname}");
        let api = Api::from_name(uname);
        if api.is_none() {
            cx.report(
                &key,
                "unknown upstream; expected one of payment, status, hpp",
            );
        }
        let cred = u
            .credentials
            .clone()
            .unwrap_or_else(|| Upstream::DEFAULT_CREDENTIALS.into());
        // The file's sections, not the validated ones: a broken set is reported where it is.
        let cred_ok = cx.require(
            f.credentials.contains_key(&cred),
            format!("{key}.credentials"),
            format!("no [credentials.{cred}] section is defined"),
        );
        let audience_ok = cx.require(
            !u.audience.is_empty(),
            format!("{key}.audience"),
            "must not be empty",
        );
        let url = cx.check(cx.url(&format!("{key}.url"), &u.url, true));
        let upstream = (|| {
            cred_ok?;
            audience_ok?;
            Some(Upstream {
                api: api?,
                url: url?,
                audience: u.audience.clone(),
                credentials: cred,
            })
        })();
        match upstream {
            Some(up) => {
                out.insert(up.api, up);
            }
            None => all_ok = false,
        }
    }
    all_ok.then_some(out)
}

pub(super) fn upstream_client(
    uc: &file::UpstreamClientFile,
    cx: &Ctx<'_>,
) -> Option<UpstreamClientConfig> {
    let d = UpstreamClientConfig::default();
    let connect_timeout = ms(uc.connect_timeout_ms, d.connect_timeout);
    let request_timeout = ms(uc.request_timeout_ms, d.request_timeout);
    let body_idle_timeout = ms(uc.body_idle_timeout_ms, d.body_idle_timeout);
    let pool_idle_timeout = secs(uc.pool_idle_timeout_secs, d.pool_idle_timeout);
    let ca_file = match &uc.ca_file {
        None => Some(None),
        Some(p) => cx.check(ca_bundle(p, cx)).map(Some),
    };
    let timeouts = [
        ("upstream_client.connect_timeout_ms", connect_timeout),
        ("upstream_client.request_timeout_ms", request_timeout),
        ("upstream_client.body_idle_timeout_ms", body_idle_timeout),
    ];
    let mut ok = cx.require(
        timeouts.iter().all(|(_, d)| !d.is_zero()),
        "upstream_client",
        "timeouts must be greater than zero",
    );
    // Zero is reported once, above.
    for (key, d) in timeouts.iter().filter(|(_, d)| !d.is_zero()) {
        if cx
            .check(within(
                cx,
                key,
                millis(*d),
                1,
                MAX_TIMEOUT_MS,
                "milliseconds",
            ))
            .is_none()
        {
            ok = None;
        }
    }
    // The pool adds it to instants when it sweeps idle connections.
    let pool_ok = cx.check(within(
        cx,
        "upstream_client.pool_idle_timeout_secs",
        pool_idle_timeout.as_secs(),
        0,
        86_400,
        "seconds",
    ));
    ok?;
    pool_ok?;
    Some(UpstreamClientConfig {
        connect_timeout,
        request_timeout,
        pool_idle_timeout,
        body_idle_timeout,
        ca_file: ca_file?,
    })
}

/// Reads and parses `upstream_client.ca_file` into trust anchors.
fn ca_bundle(path: &str, cx: &Ctx<'_>) -> Result<CaBundle, crate::config::ConfigProblem> {
    const KEY: &str = "upstream_client.ca_file";
    let path = PathBuf::from(path);
    let certs = crate::tls::pem_certificates(&path).map_err(|m| cx.err(KEY, m))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| {
            cx.err(
                KEY,
                format!("{}: not a usable CA certificate: {e}", path.display()),
            )
        })?;
    }
    Ok(CaBundle {
        path,
        anchors: roots.roots,
    })
}

pub(super) fn tokens(t: &file::TokensFile, cx: &Ctx<'_>) -> Option<TokenSettings> {
    let d = TokenSettings::default();
    let tokens = TokenSettings {
        refresh_at_fraction: t.refresh_at_fraction.unwrap_or(d.refresh_at_fraction),
        refresh_margin: secs(t.refresh_margin_secs, d.refresh_margin),
        fetch_timeout: ms(t.fetch_timeout_ms, d.fetch_timeout),
        retry_initial: ms(t.retry_initial_ms, d.retry_initial),
        retry_max: ms(t.retry_max_ms, d.retry_max),
    };
    let fraction = cx.require(
        (0.5..=0.95).contains(&tokens.refresh_at_fraction),
        "tokens.refresh_at_fraction",
        format!(
            "expected a number from 0.5 to 0.95, got {}",
            tokens.refresh_at_fraction
        ),
    );
    // Token lifetimes count at most 24 h (token::MAX_TOKEN_LIFETIME): a longer margin
    // would only mean "refresh at the fraction".
    let margin = cx.check(within(
        cx,
        "tokens.refresh_margin_secs",
        tokens.refresh_margin.as_secs(),
        0,
        86_400,
        "seconds",
    ));
    let fetch = cx.check(within(
        cx,
        "tokens.fetch_timeout_ms",
        millis(tokens.fetch_timeout),
        1,
        MAX_TIMEOUT_MS,
        "milliseconds",
    ));
    let retry_max = cx.check(within(
        cx,
        "tokens.retry_max_ms",
        millis(tokens.retry_max),
        1,
        MAX_TIMEOUT_MS,
        "milliseconds",
    ));
    let retry_initial = cx.require(
        tokens.retry_initial <= tokens.retry_max && !tokens.retry_initial.is_zero(),
        "tokens.retry_initial_ms",
        "must be above zero and at most tokens.retry_max_ms",
    );
    fraction?;
    margin?;
    fetch?;
    retry_max?;
    retry_initial?;
    Some(tokens)
}
