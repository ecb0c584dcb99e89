//! `[cluster]`: what loads, what is refused (all at once), what `check-config` and `Debug`
//! show of its secrets, and the fallback's share of each rate.

use secrecy::ExposeSecret;

use super::{tests::load, *};

#[test]
fn a_cluster_section_loads_with_defaults_and_hides_its_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("url");
    std::fs::write(&url, "redis://redis.internal.example:6380/2\n").unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "s3cret-redis-password").unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "ab".repeat(32)).unwrap();
    let c = load(&format!(
        "[cluster]\ninstance = \"gw-1\"\ninstances = 3\nredis_url_file = \"{}\"\n\
         redis_username = \"gateway\"\nredis_password_file = \"{}\"\nanswer_key_file = \"{}\"\n",
        url.display(),
        pw.display(),
        key.display()
    ))
    .unwrap();
    let cl = c.cluster.as_ref().unwrap();
    assert_eq!(cl.instance, "gw-1");
    assert_eq!(cl.instances, 3);
    assert_eq!(cl.key_prefix, ClusterSettings::DEFAULT_PREFIX);
    assert_eq!(cl.redis_timeout, ClusterSettings::DEFAULT_TIMEOUT);
    assert_eq!(
        cl.retry_after_failure,
        ClusterSettings::DEFAULT_RETRY_AFTER_FAILURE
    );
    assert_eq!(cl.rate_limit_fallback, RateLimitFallback::Local);
    let shown = format!("{}\n{:?}", c.redacted(), c);
    assert!(shown.contains("[cluster]") && shown.contains("instance = \"gw-1\""));
    assert_eq!(*cl.answer_key.expose_secret(), [0xab; 32]);
    assert!(cl.previous_answer_key.is_none());
    for secret in [
        "s3cret-redis-password",
        "redis.internal.example",
        "abababab",
        "171, 171",
    ] {
        assert!(!shown.contains(secret), "{secret} shown:\n{shown}");
    }
    assert!(load("").unwrap().cluster.is_none());
}

#[test]
fn every_cluster_mistake_is_reported_in_one_pass() {
    let e = load(
        "[cluster]\ninstance = \"gw 1\"\ninstances = 0\nredis_timeout_ms = 0\n\
         rate_limit_fallback = \"maybe\"\nredis_username = \"u\"\n",
    )
    .unwrap_err();
    let keys: Vec<&str> = e.problems().iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "cluster.instance",
            "cluster.instances",
            "cluster.redis_url",
            "cluster.redis_username",
            "cluster.redis_timeout_ms",
            "cluster.rate_limit_fallback",
            "cluster.answer_key"
        ],
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("set redis_url_env or redis_url_file"),
        "{e}"
    );
}

#[test]
fn urls_with_credentials_or_another_scheme_are_refused_without_echoing_them() {
    let dir = tempfile::tempdir().unwrap();
    for (url, says) in [
        ("redis://user:hunter2@127.0.0.1:6379", "carries credentials"),
        ("http://127.0.0.1:6379", "expected a redis://"),
    ] {
        let f = dir.path().join("url");
        std::fs::write(&f, url).unwrap();
        let e = load(&format!(
            "[cluster]\ninstance = \"a\"\ninstances = 2\nredis_url_file = \"{}\"\n",
            f.display()
        ))
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("cluster.redis_url") && text.contains(says),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
    }
}

#[test]
fn the_local_fallback_divides_every_rate_among_the_instances() {
    let r = Rate {
        per_sec: 30.0,
        burst: 10,
    };
    assert_eq!(
        share_of(&r, 3),
        Rate {
            per_sec: 10.0,
            burst: 4
        }
    );
    assert_eq!(
        share_of(
            &Rate {
                per_sec: 1.0,
                burst: 1
            },
            4
        )
        .burst,
        1
    );
    let s = RateLimitSettings {
        per_caller: Some(r),
        upstreams: [(Api::Payment, r)].into(),
        ..Default::default()
    }
    .divided_by(2);
    assert_eq!(s.per_caller.unwrap().per_sec, 15.0);
    assert_eq!(s.upstreams[&Api::Payment].burst, 5);
}
