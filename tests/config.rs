//! Every shipped configuration file parses and validates; broken files fail with the key named.

use std::{path::Path, time::Duration};

use ratepay_gateway::{config::Config, routes::Api};

#[test]
fn local_toml_is_valid_and_embeds_the_sandbox() {
    let c = Config::from_file(Path::new("config/local.toml")).expect("config/local.toml is valid");
    assert!(c.sandbox.is_some());
    assert_eq!(c.upstreams.len(), 3);
    assert!(c.callers.callers.iter().any(|c| c.name == "demo"));
}

/// integration.toml and production.toml take secrets from the environment and /run/secrets;
/// give them test values and validate the whole file.
#[test]
fn integration_and_production_toml_are_valid_with_their_secrets_present() {
    let dir = tempfile::tempdir().unwrap();
    for (var, value) in [
        ("RATEPAY_CLIENT_SECRET", "s"),
        ("GATEWAY_JWT_KEY", "0123456789abcdef0123456789abcdef"),
        ("GATEWAY_KEY_CHECKOUT", "k1"),
        ("GATEWAY_KEY_ORDERS", "k2"),
        ("GATEWAY_KEY_REPORTING", "k3"),
    ] {
        // SAFETY: this test binary's tests do not read these variables concurrently.
        unsafe { std::env::set_var(var, value) };
    }
    std::fs::write(
        dir.path().join("gateway-jwt-key"),
        "0123456789abcdef0123456789abcdef",
    )
    .unwrap();
    std::fs::write(dir.path().join("ratepay-client-secret"), "s").unwrap();
    for name in ["integration", "production"] {
        let path = format!("config/{name}.toml");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("/run/secrets/", &format!("{}/", dir.path().display()));
        let c = Config::from_toml(&text, Path::new(&path)).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.sandbox.is_none(), "{name} must talk to Ratepay");
        let host = if name == "production" {
            "https://api.ratepay.com"
        } else {
            "https://api-integration.ratepay.com"
        };
        assert!(
            c.upstreams[&Api::Payment].audience.starts_with(host),
            "{name}"
        );
    }
}

#[test]
fn every_file_in_config_dir_is_checked_above() {
    let mut names: Vec<String> = std::fs::read_dir("config")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "cluster.toml",
            "integration.toml",
            "local.toml",
            "production.toml"
        ]
    );
}

/// cluster.toml takes its instance name, Redis URL and answer key from the environment; with
/// them set it validates, and `check-config` shows none of the secrets (tests/cluster.rs runs
/// the file as a fleet).
#[test]
fn cluster_toml_is_valid_with_its_environment_and_redacts_it() {
    for (var, value) in [
        ("GATEWAY_INSTANCE", "gw-7"),
        ("GATEWAY_REDIS_URL", "redis://redis-host.internal:6379"),
        ("GATEWAY_ANSWER_KEY", &"5a".repeat(32)),
    ] {
        // SAFETY: this test binary's tests do not read these variables concurrently.
        unsafe { std::env::set_var(var, value) };
    }
    let c = Config::from_file(Path::new("config/cluster.toml")).unwrap_or_else(|e| panic!("{e}"));
    let cl = c.cluster.as_ref().expect("a [cluster] section");
    assert_eq!(cl.instance, "gw-7");
    assert_eq!(c.audit.log.path, Path::new("var/audit/gw-7/audit.jsonl"));
    let shown = c.redacted();
    assert!(shown.contains("instance = \"gw-7\""), "{shown}");
    for secret in ["redis-host.internal", "5a5a5a"] {
        assert!(!shown.contains(secret), "{secret} in:\n{shown}");
    }
}

fn err(text: &str) -> String {
    Config::from_toml(text, Path::new("broken.toml"))
        .unwrap_err()
        .to_string()
}

const BASE: &str = r#"
[credentials.default]
client_id = "c"
client_secret_env = "PATH"
[upstreams.payment]
url = "https://api-integration.ratepay.com"
audience = "a"
"#;

#[test]
fn broken_files_name_the_file_and_key() {
    let e = err(&format!("{BASE}\n[listen]\nproxi = \"127.0.0.1:1\"\n"));
    assert!(e.starts_with("broken.toml: "), "{e}");
    assert!(e.contains("proxi"), "{e}");

    let e = err(&format!("{BASE}\n[listen]\nproxy = \"nonsense\"\n"));
    assert!(e.contains("listen.proxy") && e.contains("ip:port"), "{e}");

    let e = err(&BASE.replace("https://api-integration.ratepay.com", "ftp://x"));
    assert!(e.contains("upstreams.payment.url"), "{e}");

    let e = err(&BASE.replace("https://api-integration.ratepay.com", "https://h/some/path"));
    assert!(
        e.contains("upstreams.payment.url") && e.contains("origin"),
        "{e}"
    );

    let e = err(&BASE.replace(
        "client_secret_env = \"PATH\"",
        "client_secret_env = \"RPGW_SURELY_UNSET_VAR\"",
    ));
    assert!(
        e.contains("credentials.default.client_secret_env") && e.contains("RPGW_SURELY_UNSET_VAR"),
        "{e}"
    );

    let e = err(&BASE.replace("client_secret_env = \"PATH\"", ""));
    assert!(
        e.contains("credentials.default.client_secret") && e.contains("missing"),
        "{e}"
    );

    let e = err(&format!(
        "{BASE}\n[callers.x]\napi_key_sha256 = \"abc\"\noperations = [\"*\"]\n"
    ));
    assert!(e.contains("callers.x.api_key_sha256"), "{e}");

    let e = err(&format!(
        "{BASE}\n[callers.x]\napi_key_env = \"PATH\"\noperations = [\"payment.nope\"]\n"
    ));
    assert!(
        e.contains("callers.x.operations") && e.contains("payment.nope"),
        "{e}"
    );

    let e = err(&format!(
        "{BASE}\n[upstreams.billing]\nurl = \"https://x\"\naudience = \"a\"\n"
    ));
    assert!(e.contains("upstreams.billing"), "{e}");

    let e = err(&format!("{BASE}\n[tokens]\nrefresh_at_fraction = 1.5\n"));
    assert!(e.contains("tokens.refresh_at_fraction"), "{e}");
}

#[test]
fn redacted_output_never_contains_secrets() {
    let c = Config::from_file(Path::new("config/local.toml")).unwrap();
    let text = c.redacted();
    for secret_file in [
        "config/local/ratepay-client-secret",
        "config/local/gateway-hs256-key",
        "config/local/demo-client-secret",
    ] {
        let secret = std::fs::read_to_string(secret_file).unwrap();
        assert!(!text.contains(secret.trim()), "{secret_file} leaked");
        assert!(
            !format!("{c:?}").contains(secret.trim()),
            "{secret_file} leaked in Debug"
        );
    }
    assert!(text.contains("[REDACTED]"));
}

#[test]
fn cancellations_are_audited_unless_audit_is_switched_off() {
    let e = err(&format!("{BASE}\n[audit]\noperations = []\n"));
    assert!(e.contains("audit.operations"), "{e}");
    let c = Config::from_toml(
        &format!("{BASE}\n[audit]\nenabled = false\n"),
        Path::new("bench.toml"),
    )
    .expect("audit.enabled = false is accepted");
    assert!(!c.audit.enabled);
    let c = Config::from_toml(BASE, Path::new("default.toml")).unwrap();
    assert!(c.audit.enabled);
    assert_eq!(c.audit.operations, ["payment.cancellations.create"]);
}

#[test]
fn audit_outcome_durability_is_written_by_default_and_checked() {
    let c = Config::from_toml(BASE, Path::new("default.toml")).unwrap();
    assert_eq!(
        c.audit.log.outcome_sync_delay,
        Some(Duration::from_millis(10))
    );
    assert!(c
        .redacted()
        .contains("outcome_durability = \"written\"\noutcome_sync_delay_ms = 10"));
    let c = Config::from_toml(
        &format!("{BASE}\n[audit]\noutcome_durability = \"synced\"\n"),
        Path::new("synced.toml"),
    )
    .unwrap();
    assert_eq!(c.audit.log.outcome_sync_delay, None);
    assert!(c.redacted().contains("outcome_durability = \"synced\""));
    let c = Config::from_toml(
        &format!("{BASE}\n[audit]\noutcome_sync_delay_ms = 250\n"),
        Path::new("delay.toml"),
    )
    .unwrap();
    assert_eq!(
        c.audit.log.outcome_sync_delay,
        Some(Duration::from_millis(250))
    );
    for (text, key, says) in [
        (
            "outcome_durability = \"later\"",
            "audit.outcome_durability",
            "\"written\" or \"synced\", got \"later\"",
        ),
        (
            "outcome_sync_delay_ms = 0",
            "audit.outcome_sync_delay_ms",
            "1 to 1000 ms",
        ),
        (
            "outcome_sync_delay_ms = 5000",
            "audit.outcome_sync_delay_ms",
            "1 to 1000 ms",
        ),
        (
            "outcome_durability = \"synced\"\noutcome_sync_delay_ms = 5",
            "audit.outcome_sync_delay_ms",
            "only with outcome_durability = \"written\"",
        ),
    ] {
        let e = err(&format!("{BASE}\n[audit]\n{text}\n"));
        assert!(e.contains(key) && e.contains(says), "{text}: {e}");
    }
}

/// Every number that ends up added to a clock reading or fed to the rate limiter is bounded,
/// and check-config says which key, the allowed range and the value given.
#[test]
fn numeric_settings_out_of_their_bounds_are_refused_naming_key_and_range() {
    let rate = |per_sec: &str, burst: &str| {
        err(&format!(
            "{BASE}\n[rate_limits.upstreams.payment]\nrate_per_sec = {per_sec}\nburst = {burst}\n"
        ))
    };
    let e = rate("1e-20", "1");
    assert!(
        e.starts_with("broken.toml: ")
            && e.contains("rate_limits.upstreams.payment.rate_per_sec")
            && e.contains("0.0000116 (one a day) to 1e9")
            && e.contains("1e-20"),
        "{e}"
    );
    for bad in ["0", "-1", "nan", "inf", "1e10"] {
        let e = rate(bad, "1");
        assert!(e.contains("rate_per_sec"), "{bad}: {e}");
    }
    let e = rate("10", "0");
    assert!(
        e.contains("rate_limits.upstreams.payment.burst") && e.contains("1 to 1000000"),
        "{e}"
    );
    let e = rate("10", "4294967295");
    assert!(e.contains("burst") && e.contains("got 4294967295"), "{e}");
    // One a day with a burst of 1000 takes 1000 days to earn back.
    let e = rate("0.0000116", "1000");
    assert!(
        e.contains("rate_limits.upstreams.payment.burst") && e.contains("at most 31536000 s"),
        "{e}"
    );
    let ok = |extra: &str| {
        Config::from_toml(&format!("{BASE}\n{extra}"), Path::new("ok.toml"))
            .unwrap_or_else(|e| panic!("{extra}: {e}"))
    };
    let c = ok("[rate_limits.per_caller]\nrate_per_sec = 0.0000116\nburst = 1\n");
    assert!(c.rate_limits.per_caller.is_some());
    ok("[rate_limits.per_caller]\nrate_per_sec = 1e9\nburst = 1000000\n");

    for (section, key, value, range) in [
        (
            "tokens",
            "refresh_margin_secs",
            "18446744073709551615",
            "0 to 86400 seconds",
        ),
        (
            "tokens",
            "fetch_timeout_ms",
            "0",
            "1 to 3600000 milliseconds",
        ),
        (
            "tokens",
            "retry_max_ms",
            "18446744073709551615",
            "1 to 3600000 milliseconds",
        ),
        (
            "retry",
            "deadline_ms",
            "18446744073709551615",
            "1 to 3600000 milliseconds",
        ),
        (
            "retry",
            "max_backoff_ms",
            "3600001",
            "1 to 3600000 milliseconds",
        ),
        (
            "limits",
            "request_timeout_ms",
            "18446744073709551615",
            "1 to 3600000 milliseconds",
        ),
        (
            "upstream_client",
            "request_timeout_ms",
            "3600001",
            "1 to 3600000 milliseconds",
        ),
        (
            "upstream_client",
            "connect_timeout_ms",
            "3600001",
            "1 to 3600000 milliseconds",
        ),
        (
            "upstream_client",
            "body_idle_timeout_ms",
            "3600001",
            "1 to 3600000 milliseconds",
        ),
        (
            "upstream_client",
            "pool_idle_timeout_secs",
            "18446744073709551615",
            "0 to 86400 seconds",
        ),
        (
            "listen",
            "shutdown_grace_ms",
            "18446744073709551615",
            "0 to 3600000 milliseconds",
        ),
        (
            "listen",
            "header_timeout_ms",
            "99",
            "100 to 3600000 (milliseconds)",
        ),
        (
            "listen",
            "send_timeout_ms",
            "0",
            "100 to 3600000 (milliseconds)",
        ),
        (
            "listen",
            "idle_timeout_ms",
            "3600001",
            "100 to 3600000 (milliseconds)",
        ),
        (
            "rate_limits",
            "upstream_pause_max_secs",
            "18446744073709551615",
            "1 to 86400 seconds",
        ),
    ] {
        let e = err(&format!("{BASE}\n[{section}]\n{key} = {value}\n"));
        assert!(
            e.contains(&format!("{section}.{key}")) && e.contains(range),
            "{section}.{key} = {value}: {e}"
        );
    }
    let e = err(&format!("{BASE}\n[tokens]\nrefresh_at_fraction = nan\n"));
    assert!(
        e.contains("tokens.refresh_at_fraction") && e.contains("0.5 to 0.95"),
        "{e}"
    );
    let e = err(&format!(
        "{BASE}\n[sandbox]\nembedded = true\ntoken_lifetime_secs = 18446744073709551615\n"
    ));
    assert!(
        e.contains("sandbox.token_lifetime_secs") && e.contains("0 to 86400"),
        "{e}"
    );
}

/// `[audit] signing_key_file`: parsed at load (a bad key is refused naming the key and the
/// file), shown by its public key id only, and never in Debug, `check-config` or an error.
#[test]
fn the_audit_signing_key_is_checked_at_load_and_never_printed() {
    use ratepay_gateway::audit::SigningKey;
    use secrecy::ExposeSecret;
    let dir = tempfile::tempdir().unwrap();
    let (der, key) = SigningKey::generate().unwrap();
    let der = der.expose_secret().to_vec();
    let key_file = dir.path().join("audit-signing.key");
    std::fs::write(&key_file, &der).unwrap();
    let text = format!(
        "{BASE}\n[audit]\nsigning_key_file = {:?}\ncheckpoint_every_records = 50\ncheckpoint_every_secs = 5\n",
        key_file.display().to_string()
    );
    let c = Config::from_toml(&text, Path::new("signed.toml")).unwrap();
    let checkpoints = c.audit.log.checkpoints.as_ref().unwrap();
    assert_eq!(checkpoints.every_records, 50);
    assert_eq!(checkpoints.every, std::time::Duration::from_secs(5));
    assert_eq!(checkpoints.signing_key.as_ref(), Some(&key));
    assert_eq!(c.audit.log.instance, "gateway");

    // The seed is bytes 16..48 of a PKCS#8 v2 Ed25519 key (after `04 20`).
    assert_eq!(&der[14..16], &[0x04, 0x20]);
    let seed = &der[16..48];
    let forms = [
        hex::encode(seed),
        hex::encode_upper(seed),
        hex::encode(&der),
        format!("{seed:?}"),
        format!("{:?}", &seed[..8]),
    ];
    let redacted = c.redacted();
    assert!(
        redacted.contains(&format!(
            "[REDACTED] (public key id {})",
            key.public_key().key_id()
        )),
        "{redacted}"
    );
    let debug = format!("{c:?}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ratepay-gateway"))
        .args(["check-config", "--config"])
        .arg({
            let p = dir.path().join("signed.toml");
            std::fs::write(&p, &text).unwrap();
            p
        })
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for form in &forms {
        for (what, text) in [
            ("redacted", &redacted),
            ("Debug", &debug),
            ("check-config", &printed),
        ] {
            assert!(!text.contains(form.as_str()), "the key leaked in {what}");
        }
    }

    // Refused at load: a file that is no key, a missing file, intervals out of range.
    let not_a_key = dir.path().join("not-a-key");
    std::fs::write(&not_a_key, "secret-looking-content-0123").unwrap();
    let e = err(&text.replace(
        &key_file.display().to_string(),
        &not_a_key.display().to_string(),
    ));
    assert!(
        e.contains("audit.signing_key_file")
            && e.contains(&not_a_key.display().to_string())
            && e.contains("Ed25519"),
        "{e}"
    );
    assert!(!e.contains("secret-looking-content"), "{e}");
    let e = err(&text.replace(&key_file.display().to_string(), "/nonexistent/k"));
    assert!(
        e.contains("audit.signing_key_file") && e.contains("cannot read /nonexistent/k"),
        "{e}"
    );
    let e = err(&text.replace(
        "checkpoint_every_records = 50",
        "checkpoint_every_records = 0",
    ));
    assert!(
        e.contains("audit.checkpoint_every_records") && e.contains("1 to 1000000"),
        "{e}"
    );
    let e = err(&text.replace("checkpoint_every_secs = 5", "checkpoint_every_secs = 0"));
    assert!(
        e.contains("audit.checkpoint_every_secs") && e.contains("1 to 86400"),
        "{e}"
    );

    // Without a key, checkpoints are still written, unsigned, at the default interval.
    let c = Config::from_toml(BASE, Path::new("plain.toml")).unwrap();
    let checkpoints = c.audit.log.checkpoints.as_ref().unwrap();
    assert_eq!(
        (
            checkpoints.every_records,
            checkpoints.every.as_secs(),
            checkpoints.signing_key.is_none()
        ),
        (1000, 60, true)
    );
    assert!(c.redacted().contains("checkpoints are unsigned"));
}
