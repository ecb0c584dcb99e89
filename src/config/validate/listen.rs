//! `[listen]`, `[listen.tls]` and `[sandbox]`.

use std::{path::PathBuf, time::Duration};

use super::{millis, ms, secs, within};
use crate::{
    config::{
        file, problems::Ctx, ConnectionLimits, ListenConfig, SandboxSettings, MAX_TIMEOUT_MS,
    },
    tls::{ClientAuth, TlsSettings},
};

pub(super) fn listen(f: &file::ListenFile, cx: &Ctx<'_>) -> Option<ListenConfig> {
    let d = ListenConfig::default();
    let proxy = match f.proxy.as_deref() {
        None => Some(d.proxy),
        Some(p) => cx.check(cx.addr("listen.proxy", p)),
    };
    let admin = match f.admin.as_deref() {
        None => Some(d.admin),
        Some("off") | Some("") => Some(None),
        Some(a) => cx.check(cx.addr("listen.admin", a)).map(Some),
    };
    let shutdown_grace = ms(f.shutdown_grace_ms, d.shutdown_grace);
    let grace_ok = cx.check(within(
        cx,
        "listen.shutdown_grace_ms",
        millis(shutdown_grace),
        0,
        MAX_TIMEOUT_MS,
        "milliseconds",
    ));
    let connections = connection_limits(f, cx);
    let tls = match &f.tls {
        None => Some(None),
        Some(t) => tls(t, cx).map(Some),
    };
    grace_ok?;
    Some(ListenConfig {
        proxy: proxy?,
        admin: admin?,
        shutdown_grace,
        connections: connections?,
        tls: tls?,
    })
}

fn connection_limits(f: &file::ListenFile, cx: &Ctx<'_>) -> Option<ConnectionLimits> {
    let d = ConnectionLimits::default();
    let bounded = |key: &str, v: Option<u64>, default: Duration| match v {
        None => Some(default),
        Some(ms) if (100..=3_600_000).contains(&ms) => Some(Duration::from_millis(ms)),
        Some(ms) => {
            cx.report(
                format!("listen.{key}"),
                format!("{ms} is out of range; use 100 to 3600000 (milliseconds)"),
            );
            None
        }
    };
    let first_request_timeout = bounded(
        "first_request_timeout_ms",
        f.first_request_timeout_ms,
        d.first_request_timeout,
    );
    let idle_timeout = bounded("idle_timeout_ms", f.idle_timeout_ms, d.idle_timeout);
    let header_timeout = bounded("header_timeout_ms", f.header_timeout_ms, d.header_timeout);
    let send_timeout = bounded("send_timeout_ms", f.send_timeout_ms, d.send_timeout);
    let max = match f.max_connections {
        None => Some(d.max),
        Some(n) if (1..=1_000_000).contains(&n) => Some(n as usize),
        Some(n) => {
            cx.report(
                "listen.max_connections",
                format!(
                    "{n} is out of range; use 1 to 1000000 (and keep it below the open-file limit)"
                ),
            );
            None
        }
    };
    Some(ConnectionLimits {
        first_request_timeout: first_request_timeout?,
        idle_timeout: idle_timeout?,
        header_timeout: header_timeout?,
        send_timeout: send_timeout?,
        max: max?,
    })
}

fn tls(t: &file::ListenTlsFile, cx: &Ctx<'_>) -> Option<TlsSettings> {
    let client_auth = match (t.client_auth.as_deref(), &t.client_ca_file) {
        (None, None) => Some(ClientAuth::Off),
        (None | Some("required"), Some(_)) => Some(ClientAuth::Required),
        (Some("optional"), Some(_)) => Some(ClientAuth::Optional),
        (Some("required" | "optional"), None) => {
            cx.report(
                "listen.tls.client_auth",
                "client_auth needs client_ca_file (the CAs trusted for client certificates)",
            );
            None
        }
        (Some(other), _) => {
            cx.report(
                "listen.tls.client_auth",
                format!("expected \"required\" or \"optional\", got {other:?}"),
            );
            None
        }
    };
    let handshake_timeout = ms(
        t.handshake_timeout_ms,
        TlsSettings::DEFAULT_HANDSHAKE_TIMEOUT,
    );
    let handshake_ok = cx.require(
        !handshake_timeout.is_zero() && handshake_timeout <= Duration::from_secs(300),
        "listen.tls.handshake_timeout_ms",
        "expected 1 to 300000 milliseconds",
    );
    let cert_file = PathBuf::from(&t.cert_file);
    let key_file = PathBuf::from(&t.key_file);
    let client_ca_file = t.client_ca_file.as_ref().map(PathBuf::from);
    // With client_auth unusable, the certificate and its key are still checked (without the
    // client CAs, whose use is what is unclear).
    let (auth, ca) = match client_auth {
        Some(auth) => (auth, client_ca_file.as_deref()),
        None => (ClientAuth::Off, None),
    };
    let server_config = cx.check(
        crate::tls::server_config(&cert_file, &key_file, ca, auth)
            .map_err(|e| cx.err(format!("listen.tls.{}", e.key), e.message)),
    );
    handshake_ok?;
    Some(TlsSettings {
        cert_file,
        key_file,
        client_ca_file,
        client_auth: client_auth?,
        handshake_timeout,
        server_config: server_config?,
    })
}

/// Why `sandbox.embedded = true` is refused by a binary built without the `sandbox` feature.
const WITHOUT_SANDBOX: &str = "this binary was built without the embedded sandbox (cargo \
     feature `sandbox`); set `embedded = false` or remove `[sandbox]` to talk to Ratepay, or \
     build with the default features to run against the sandbox";

/// `Some(None)`: no embedded sandbox; `None`: a problem was reported.
pub(super) fn sandbox(
    f: Option<&file::SandboxFile>,
    cx: &Ctx<'_>,
) -> Option<Option<SandboxSettings>> {
    let Some(s) = f else {
        return Some(None);
    };
    let lifetime_ok = s.token_lifetime_secs.map_or(Some(()), |v| {
        cx.check(within(
            cx,
            "sandbox.token_lifetime_secs",
            v,
            0,
            86_400,
            "seconds",
        ))
    });
    let step_ok = s.session_step_secs.map_or(Some(()), |v| {
        cx.check(within(
            cx,
            "sandbox.session_step_secs",
            v,
            0,
            86_400,
            "seconds",
        ))
    });
    // A binary without the `sandbox` feature has no sandbox to embed.
    let feature_ok = cx.require(
        !s.embedded || cfg!(feature = "sandbox"),
        "sandbox.embedded",
        WITHOUT_SANDBOX,
    );
    lifetime_ok?;
    step_ok?;
    feature_ok?;
    if !s.embedded {
        return Some(None);
    }
    let d = SandboxSettings::default();
    Some(Some(SandboxSettings {
        token_lifetime: secs(s.token_lifetime_secs, d.token_lifetime),
        seed: s.seed,
        session_step: match s.session_step_secs {
            None => d.session_step,
            Some(0) => None,
            Some(n) => Some(Duration::from_secs(n)),
        },
    }))
}
