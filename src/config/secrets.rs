//! Values that come from outside the file or need parsing: secrets given as `*_env` / `*_file`
//! (or as a SHA-256), URLs, socket addresses and the files that keys are read from.
//!
//! Each helper returns the parsed value or one [`ConfigProblem`] naming the key; the caller
//! hands it to [`Ctx::check`] so that validation goes on.

use std::net::SocketAddr;

use http::Uri;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::problems::{ConfigProblem, Ctx};

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn parse_sha256(hex_str: &str) -> Option<[u8; 32]> {
    let v = hex::decode(hex_str.trim()).ok()?;
    v.try_into().ok()
}

impl Ctx<'_> {
    /// Resolves a secret given as `<base>_env` or `<base>_file`; at most one may be set.
    pub(super) fn secret(
        &self,
        base: &str,
        env: &Option<String>,
        path: &Option<String>,
    ) -> Result<Option<SecretString>, ConfigProblem> {
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

    /// Resolves a secret kept only as its SHA-256: `<key>_sha256`, `<key>_env` or `<key>_file`.
    pub(super) fn hash_or_secret(
        &self,
        key: &str,
        hash: &Option<String>,
        env: &Option<String>,
        path: &Option<String>,
    ) -> Result<Option<[u8; 32]>, ConfigProblem> {
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

    /// An `ip:port`.
    pub(super) fn addr(&self, key: &str, value: &str) -> Result<SocketAddr, ConfigProblem> {
        value
            .parse()
            .map_err(|_| self.err(key, format!("expected ip:port, got {value:?}")))
    }

    /// An `http(s)://host` URL without a query; with `origin_only`, without a path either.
    pub(super) fn url(
        &self,
        key: &str,
        value: &str,
        origin_only: bool,
    ) -> Result<Uri, ConfigProblem> {
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

    /// The text of the file at `path`.
    pub(super) fn read_file(&self, key: &str, path: &str) -> Result<String, ConfigProblem> {
        std::fs::read_to_string(path).map_err(|e| self.err(key, format!("cannot read {path}: {e}")))
    }
}
