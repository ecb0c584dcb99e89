//! `[gateway_tokens]` and `[callers.*]`: the gateway's own JWT keys, and each internal
//! caller's credentials, operations and X-Partner policy.

use std::{
    collections::{BTreeMap, HashSet},
    time::Duration,
};

use secrecy::ExposeSecret;

use super::secs;
use crate::{
    config::{
        callers::valid_partner,
        file::{self, FileConfig},
        problems::Ctx,
        valid_caller_name, CallerConfig, IssuerConfig, OperationMatcher, PartnerPolicy, SigningKey,
    },
    tls::CertIdentity,
};

pub(super) fn issuer(g: &file::GatewayTokensFile, cx: &Ctx<'_>) -> Option<IssuerConfig> {
    let key = signing_key(g, cx);
    let lifetime = secs(g.lifetime_secs, IssuerConfig::DEFAULT_LIFETIME);
    let lifetime_ok = cx.require(
        !lifetime.is_zero() && lifetime <= Duration::from_secs(86_400),
        "gateway_tokens.lifetime_secs",
        "expected 1 to 86400 seconds",
    );
    lifetime_ok?;
    Some(IssuerConfig {
        key: key?,
        issuer: g
            .issuer
            .clone()
            .unwrap_or_else(|| IssuerConfig::DEFAULT_ISSUER.into()),
        lifetime,
    })
}

/// Reads and parses the key (pair) once; the issuer signs and verifies with the parsed keys.
fn signing_key(g: &file::GatewayTokensFile, cx: &Ctx<'_>) -> Option<SigningKey> {
    let alg = g
        .algorithm
        .as_deref()
        .unwrap_or(IssuerConfig::DEFAULT_ALGORITHM);
    match alg {
        "HS256" => {
            let k = match cx.check(cx.secret(
                "gateway_tokens.hs256_key",
                &g.hs256_key_env,
                &g.hs256_key_file,
            ))? {
                Some(k) => k,
                None => {
                    cx.report(
                        "gateway_tokens.hs256_key",
                        "missing: set hs256_key_env or hs256_key_file",
                    );
                    return None;
                }
            };
            cx.require(
                k.expose_secret().len() >= 32,
                "gateway_tokens.hs256_key",
                "the key must be at least 32 bytes",
            )?;
            Some(SigningKey::hs256(k.expose_secret().as_bytes()))
        }
        "EdDSA" | "RS256" => {
            let (Some(private), Some(public)) = (&g.private_key_file, &g.public_key_file) else {
                cx.report(
                    "gateway_tokens",
                    format!("{alg} needs private_key_file and public_key_file"),
                );
                return None;
            };
            let private_pem = cx
                .check(cx.read_file("gateway_tokens.private_key_file", private))
                .map(secrecy::SecretString::from);
            let public_pem = cx.check(cx.read_file("gateway_tokens.public_key_file", public));
            let (private_pem, public_pem) = (private_pem?, public_pem?);
            let (private_pem, public_pem) = (
                private_pem.expose_secret().as_bytes(),
                public_pem.as_bytes(),
            );
            let key = if alg == "EdDSA" {
                SigningKey::ed_dsa_pem(private_pem, public_pem)
            } else {
                SigningKey::rs256_pem(private_pem, public_pem)
            };
            if key.is_none() {
                cx.report(
                    "gateway_tokens.private_key_file",
                    format!("not a valid {alg} PEM key pair"),
                );
            }
            key
        }
        other => {
            cx.report(
                "gateway_tokens.algorithm",
                format!("expected HS256, EdDSA or RS256, got {other:?}"),
            );
            None
        }
    }
}

/// Every `[callers.*]`. Cross-checks (a client_id needs `[gateway_tokens]`, a certificate
/// identity needs mTLS) look at the file's sections, so a broken one is reported once.
pub(super) fn callers(f: &FileConfig, cx: &Ctx<'_>) -> Option<Vec<CallerConfig>> {
    let mut callers = Vec::new();
    let mut all_ok = true;
    let mut seen = Seen::default();
    let mtls = f
        .listen
        .tls
        .as_ref()
        .is_some_and(|t| t.client_ca_file.is_some() || t.client_auth.is_some());
    for (name, c) in &f.callers {
        match caller(name, c, f.gateway_tokens.is_some(), mtls, &mut seen, cx) {
            Some(c) => callers.push(c),
            None => all_ok = false,
        }
    }
    all_ok.then_some(callers)
}

/// Credentials already taken by an earlier caller.
#[derive(Default)]
struct Seen<'f> {
    keys: HashSet<[u8; 32]>,
    clients: HashSet<String>,
    identities: BTreeMap<CertIdentity, &'f str>,
}

fn caller<'f>(
    name: &'f str,
    c: &file::CallerFile,
    issuer: bool,
    mtls: bool,
    seen: &mut Seen<'f>,
    cx: &Ctx<'_>,
) -> Option<CallerConfig> {
    let key = format!("callers.{name}");
    let name_ok = cx.require(
        valid_caller_name(name),
        &key,
        "caller names must be 1 to 64 characters of A-Z, a-z, 0-9, '_' or '-'",
    );
    let api_key_sha256 = cx
        .check(cx.hash_or_secret(
            &format!("{key}.api_key"),
            &c.api_key_sha256,
            &c.api_key_env,
            &c.api_key_file,
        ))
        .and_then(|h| match h {
            Some(h) if !seen.keys.insert(h) => {
                cx.report(
                    format!("{key}.api_key"),
                    "the same API key is configured for two callers",
                );
                None
            }
            h => Some(h),
        });
    let secret = cx.check(cx.hash_or_secret(
        &format!("{key}.client_secret"),
        &c.client_secret_sha256,
        &c.client_secret_env,
        &c.client_secret_file,
    ));
    let secret_set = c.client_secret_sha256.is_some()
        || c.client_secret_env.is_some()
        || c.client_secret_file.is_some();
    let client = match (&c.client_id, secret_set) {
        (Some(id), true) => {
            let issuer_ok = cx.require(
                issuer,
                format!("{key}.client_id"),
                "callers with a client_id need a [gateway_tokens] section",
            );
            let unique = cx.require(
                seen.clients.insert(id.clone()),
                format!("{key}.client_id"),
                format!("client_id {id:?} is used by two callers"),
            );
            match (issuer_ok, unique, secret.flatten()) {
                (Some(()), Some(()), Some(hash)) => Some(Some((id.clone(), hash))),
                _ => None,
            }
        }
        (None, false) => Some(None),
        (Some(_), false) => {
            cx.report(
                format!("{key}.client_secret"),
                "a client_id needs client_secret_sha256, client_secret_env or client_secret_file",
            );
            None
        }
        (None, true) => {
            cx.report(
                format!("{key}.client_id"),
                "a client secret is set but no client_id",
            );
            None
        }
    };
    let client_cert = client_cert(name, &key, c, seen, cx);
    let has_cert = c.client_cert.as_ref().is_some_and(|ids| !ids.is_empty());
    let cert_ok = cx.require(
        !has_cert || mtls,
        format!("{key}.client_cert"),
        "client certificate identities need mTLS on the proxy listener: set [listen.tls] with client_ca_file",
    );
    let has_api_key =
        c.api_key_sha256.is_some() || c.api_key_env.is_some() || c.api_key_file.is_some();
    let credential_ok = cx.require(
        has_api_key || c.client_id.is_some() || secret_set || has_cert,
        &key,
        "the caller has no credential: set api_key_sha256/_env/_file, client_id with a client secret, or client_cert",
    );
    let operations = match OperationMatcher::parse(&c.operations) {
        Ok(m) => Some(m),
        Err(unknown) => {
            for message in unknown {
                cx.report(format!("{key}.operations"), message);
            }
            None
        }
    };
    let partner = partner(&key, c, cx);
    name_ok?;
    cert_ok?;
    credential_ok?;
    Some(CallerConfig {
        name: name.to_owned(),
        api_key_sha256: api_key_sha256?,
        client: client?,
        operations: operations?,
        partner: partner?,
        client_cert: client_cert?,
    })
}

fn client_cert<'f>(
    name: &'f str,
    key: &str,
    c: &file::CallerFile,
    seen: &mut Seen<'f>,
    cx: &Ctx<'_>,
) -> Option<Vec<CertIdentity>> {
    let mut ids = Some(Vec::new());
    for text in c.client_cert.iter().flatten() {
        let id = match CertIdentity::parse(text) {
            Ok(id) => id,
            Err(e) => {
                cx.report(format!("{key}.client_cert"), e);
                ids = None;
                continue;
            }
        };
        if let Some(other) = seen.identities.insert(id.clone(), name) {
            cx.report(
                format!("{key}.client_cert"),
                if other == name {
                    format!("{id} is listed twice")
                } else {
                    format!("{id} is already the identity of caller '{other}'; one certificate identity maps to one caller")
                },
            );
            ids = None;
            continue;
        }
        if let Some(ids) = ids.as_mut() {
            ids.push(id);
        }
    }
    ids
}

fn partner(key: &str, c: &file::CallerFile, cx: &Ctx<'_>) -> Option<PartnerPolicy> {
    let partner = match (&c.partner, &c.partners) {
        (Some(_), Some(_)) => {
            cx.report(
                format!("{key}.partner"),
                "set either partner (fixed) or partners (caller chooses), not both",
            );
            return None;
        }
        (Some(p), None) => PartnerPolicy::Fixed(p.clone()),
        (None, Some(ps)) if ps.is_empty() => {
            cx.report(format!("{key}.partners"), "must list at least one partner");
            return None;
        }
        (None, Some(ps)) => PartnerPolicy::OneOf(ps.clone()),
        (None, None) => PartnerPolicy::None,
    };
    match &partner {
        PartnerPolicy::Fixed(p) => cx.require(
            valid_partner(p),
            format!("{key}.partner"),
            "expected 1 to 128 visible ASCII characters",
        )?,
        PartnerPolicy::OneOf(ps) => {
            if let Some(bad) = ps.iter().find(|p| !valid_partner(p)) {
                cx.report(
                    format!("{key}.partners"),
                    format!("{bad:?}: expected 1 to 128 visible ASCII characters"),
                );
                return None;
            }
        }
        PartnerPolicy::None => {}
    }
    Some(partner)
}
