//! Loading as a whole: every problem reported in one pass, defaults from one place, operation
//! patterns and keys parsed at load.

use super::*;
use crate::routes;

pub(super) const BASE: &str = r#"
[credentials.default]
client_id = "c"
client_secret_env = "PATH"
[upstreams.payment]
url = "https://api-integration.ratepay.com"
audience = "a"
"#;

pub(super) fn load(extra: &str) -> Result<Config, ConfigError> {
    Config::from_toml(&format!("{BASE}\n{extra}"), Path::new("broken.toml"))
}

fn keys(e: &ConfigError) -> Vec<&str> {
    e.problems().iter().map(|p| p.key.as_str()).collect()
}

/// An `api_key_sha256` line for a caller (distinct per `seed`).
fn api_key(seed: &str) -> String {
    format!(
        "api_key_sha256 = \"{}\"\n",
        hex::encode(sha256(seed.as_bytes()))
    )
}

#[test]
fn three_independent_mistakes_are_all_reported_in_file_order() {
    let e = load(&format!(
        "[listen]\nproxy = \"nonsense\"\n\
         [tokens]\nrefresh_at_fraction = 1.5\n\
         [callers.x]\n{}operations = [\"payment.nope\"]\n",
        api_key("x")
    ))
    .unwrap_err();
    assert_eq!(
        keys(&e),
        [
            "listen.proxy",
            "tokens.refresh_at_fraction",
            "callers.x.operations"
        ],
        "{e}"
    );
    // One line per problem, each in the `file: key: message` form.
    let text = e.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].starts_with("broken.toml: listen.proxy: expected ip:port"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("broken.toml: tokens.refresh_at_fraction: expected a number"),
        "{text}"
    );
    assert!(
        lines[2]
            .starts_with("broken.toml: callers.x.operations: unknown operation \"payment.nope\""),
        "{text}"
    );
}

#[test]
fn several_mistakes_in_one_section_are_all_reported() {
    let e = load("[retry]\nmax_attempts = 0\ndeadline_ms = 0\n[cache]\nmax_bytes = 1\nterminal_ttl_secs = 999999999\n")
        .unwrap_err();
    assert_eq!(
        keys(&e),
        [
            "retry.max_attempts",
            "retry.deadline_ms",
            "cache.max_bytes",
            "cache.terminal_ttl_secs"
        ],
        "{e}"
    );
}

/// A broken section is reported where it is, not again by every section that refers to it.
#[test]
fn one_mistake_is_one_problem_not_a_cascade() {
    // The credential set's secret is missing: the upstream naming the set is fine.
    let e = Config::from_toml(
        &BASE.replace("client_secret_env = \"PATH\"", ""),
        Path::new("broken.toml"),
    )
    .unwrap_err();
    assert_eq!(keys(&e), ["credentials.default.client_secret"], "{e}");

    // A malformed API key hash: the caller still has a credential, and its rate limit still
    // names a configured caller.
    let e = load(
        "[callers.x]\napi_key_sha256 = \"abc\"\noperations = [\"*\"]\n\
         [rate_limits.callers.x]\nrate_per_sec = 1\nburst = 1\n",
    )
    .unwrap_err();
    assert_eq!(keys(&e), ["callers.x.api_key_sha256"], "{e}");

    // A refused request timeout: the queue's wait is not also refused for it.
    let e =
        load("[limits]\nrequest_timeout_ms = 0\n[rate_limits]\nmode = \"queue\"\n").unwrap_err();
    assert_eq!(keys(&e), ["limits"], "{e}");

    // A syntax error stops there: nothing else can be read.
    let e = load("[listen\n").unwrap_err();
    assert_eq!(e.problems().len(), 1, "{e}");
}

/// The idempotency window and bound as the file gives them: the store's expiry itself is
/// tested on a paused clock in `middleware::idempotency`.
#[test]
fn the_idempotency_window_and_bound_come_from_the_file() {
    let c = load("[idempotency]\nttl_secs = 2\nmax_bytes = 2000000\n").unwrap();
    assert_eq!(
        c.idempotency,
        IdempotencySettings {
            ttl: std::time::Duration::from_secs(2),
            max_bytes: 2_000_000,
        }
    );
}

/// Every section's defaults come from its `Default` impl: an empty section, and an absent one,
/// validate to exactly that.
#[test]
fn empty_and_absent_sections_validate_to_their_default_impls() {
    let empty = load(
        "[listen]\n[sandbox]\nembedded = true\n[upstream_client]\n[tokens]\n[limits]\n\
         [idempotency]\n[retry]\n[audit]\n[rate_limits]\n[cache]\n",
    )
    .unwrap();
    let absent = load("").unwrap();
    for c in [&empty, &absent] {
        assert_eq!(c.listen, ListenConfig::default());
        assert_eq!(c.upstream_client, UpstreamClientConfig::default());
        assert_eq!(c.tokens, TokenSettings::default());
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.idempotency, IdempotencySettings::default());
        assert_eq!(c.retry, RetrySettings::default());
        assert_eq!(c.audit, AuditSettings::default());
        assert_eq!(c.rate_limits, RateLimitSettings::default());
        assert_eq!(
            c.credentials["default"].token_url.to_string(),
            Credentials::DEFAULT_TOKEN_URL
        );
        assert_eq!(
            c.upstreams[&Api::Payment].credentials,
            Upstream::DEFAULT_CREDENTIALS
        );
    }
    assert_eq!(empty.sandbox, Some(SandboxSettings::default()));
    assert_eq!(empty.cache, Some(CacheSettings::default()));
    assert_eq!(absent.sandbox, None);
    assert_eq!(absent.cache, None);
    let queue = load("[rate_limits]\nmode = \"queue\"\n").unwrap();
    assert_eq!(
        queue.rate_limits.over_limit,
        OverLimit::Queue {
            max_wait: OverLimit::DEFAULT_MAX_WAIT
        }
    );

    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    std::fs::write(&key, "k".repeat(32)).unwrap();
    let c = load(&format!(
        "[gateway_tokens]\nhs256_key_file = \"{}\"\n",
        key.display()
    ))
    .unwrap();
    let issuer = c.callers.issuer.unwrap();
    assert_eq!(issuer.issuer, IssuerConfig::DEFAULT_ISSUER);
    assert_eq!(issuer.lifetime, IssuerConfig::DEFAULT_LIFETIME);
    assert_eq!(issuer.key.algorithm(), jsonwebtoken::Algorithm::HS256);
}

#[test]
fn operation_patterns_are_resolved_at_load() {
    let c = load(&format!(
        "[callers.all]\n{}operations = [\"*\"]\n\
         [callers.pay]\n{}operations = [\"payment.*\"]\n\
         [callers.one]\n{}operations = [\"payment.cancellations.create\"]\n",
        api_key("all"),
        api_key("pay"),
        api_key("one")
    ))
    .unwrap();
    let allowed = |name: &str| -> Vec<&str> {
        let caller = c.callers.callers.iter().find(|c| c.name == name).unwrap();
        routes::OPERATIONS
            .iter()
            .filter(|op| caller.operations.allows(op))
            .map(|op| op.name)
            .collect()
    };
    assert_eq!(allowed("all").len(), routes::OPERATIONS.len());
    let payment: Vec<&str> = routes::OPERATIONS
        .iter()
        .filter(|op| op.name.starts_with("payment."))
        .map(|op| op.name)
        .collect();
    assert!(!payment.is_empty());
    assert_eq!(allowed("pay"), payment);
    assert_eq!(allowed("one"), ["payment.cancellations.create"]);
    assert!(c.redacted().contains("operations = [\"payment.*\"]"));

    // Unknown names and prefixes are refused at load, each named.
    let e = load(&format!(
        "[callers.x]\n{}operations = [\"payment.nope\", \"payment.*\", \"billing.*\"]\n",
        api_key("x")
    ))
    .unwrap_err();
    assert_eq!(keys(&e), ["callers.x.operations", "callers.x.operations"]);
    assert!(e.problems()[0].message.contains("\"payment.nope\""), "{e}");
    assert!(e.problems()[1].message.contains("\"billing.*\""), "{e}");
}

#[test]
fn jwt_keys_are_parsed_at_load_and_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let (private, public) = (dir.path().join("ed.pem"), dir.path().join("ed.pub"));
    std::fs::write(&private, pair.serialize_pem()).unwrap();
    std::fs::write(&public, pair.public_key_pem()).unwrap();
    let c = load(&format!(
        "[gateway_tokens]\nalgorithm = \"EdDSA\"\nprivate_key_file = \"{}\"\npublic_key_file = \"{}\"\n",
        private.display(),
        public.display()
    ))
    .unwrap();
    // The files are not needed any more: the keys in the configuration sign and verify.
    drop(dir);
    crate::crypto::install_providers();
    let key = &c.callers.issuer.as_ref().unwrap().key;
    let header = jsonwebtoken::Header::new(key.algorithm());
    let claims = serde_json::json!({"sub": "x", "exp": 4_102_444_800_u64});
    let token = jsonwebtoken::encode(&header, &claims, key.encoding()).unwrap();
    let v = jsonwebtoken::Validation::new(key.algorithm());
    let decoded = jsonwebtoken::decode::<serde_json::Value>(&token, key.decoding(), &v).unwrap();
    assert_eq!(decoded.claims["sub"], "x");

    let printed = format!("{c:?}\n{}", c.redacted());
    assert!(printed.contains("EdDsa([REDACTED])"), "{printed}");
    let private_body: String = pair
        .serialize_pem()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(!printed.contains(&private_body[..40]), "{printed}");
    // Nor as hex or as a byte list (how a derived Debug would show the parsed key).
    let der = pair.serialize_der();
    assert!(!printed.contains(&hex::encode(&der)[..40]), "{printed}");
    let bytes = format!("{:?}", &der[..12]);
    assert!(
        !printed.contains(bytes.trim_matches(['[', ']'])),
        "{printed}"
    );

    // A pair that does not parse is refused at load.
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a key").unwrap();
    let e = load(&format!(
        "[gateway_tokens]\nalgorithm = \"EdDSA\"\nprivate_key_file = \"{0}\"\npublic_key_file = \"{0}\"\n",
        junk.display()
    ))
    .unwrap_err();
    assert_eq!(keys(&e), ["gateway_tokens.private_key_file"], "{e}");
}

#[test]
fn the_upstream_ca_file_is_parsed_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap(),
        rcgen::generate_simple_self_signed(vec!["b.test".into()]).unwrap(),
    );
    let bundle = dir.path().join("ca.pem");
    std::fs::write(&bundle, format!("{}{}", a.cert.pem(), b.cert.pem())).unwrap();
    let c = load(&format!(
        "[upstream_client]\nca_file = \"{}\"\n",
        bundle.display()
    ))
    .unwrap();
    let ca = c.upstream_client.ca_file.as_ref().unwrap();
    assert_eq!(ca.path, bundle);
    assert_eq!(ca.anchors.len(), 2);

    // A file that holds no certificate is refused at load, not when the client is built.
    let key = dir.path().join("key.pem");
    std::fs::write(&key, a.signing_key.serialize_pem()).unwrap();
    let e = load(&format!(
        "[upstream_client]\nca_file = \"{}\"\n",
        key.display()
    ))
    .unwrap_err();
    assert_eq!(keys(&e), ["upstream_client.ca_file"], "{e}");
    assert!(e.to_string().contains("holds no PEM CERTIFICATE"), "{e}");
}

/// Reload keeps the running listeners unless these settings differ.
#[test]
fn listen_settings_compare_equal_when_loaded_from_the_same_file() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert_file, key_file) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
    let tls = |more: &str| {
        load(&format!(
            "[listen.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n{more}",
            cert_file.display(),
            key_file.display()
        ))
        .unwrap()
    };
    assert_eq!(tls("").listen, tls("").listen);
    assert_ne!(tls("").listen, tls("handshake_timeout_ms = 5000\n").listen);
    assert_ne!(tls("").listen, load("").unwrap().listen);
    assert_ne!(
        load("[listen]\nmax_connections = 5\n").unwrap().listen,
        load("").unwrap().listen
    );
    let sandbox = |step: u64| {
        load(&format!(
            "[sandbox]\nembedded = true\nsession_step_secs = {step}\n"
        ))
        .unwrap()
        .sandbox
    };
    assert_eq!(sandbox(3), sandbox(3));
    assert_ne!(sandbox(3), sandbox(0));
}
