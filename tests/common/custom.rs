//! Harnesses a test shapes itself: its own sandbox configuration and an edited gateway
//! configuration text; polling for a condition; reading one metric.

use std::{future::Future, path::Path, time::Duration};

use ratepay_gateway::{config::Config, sandbox, sandbox::SandboxConfig};

use super::{config_text, Harness, Options};

/// `text` with the one occurrence of `from` replaced by `to`; panics when `from` is not there
/// exactly once, so an edit can never silently miss.
pub fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "exactly one {from:?} to replace"
    );
    text.replacen(from, to, 1)
}

/// The `url = ...` line of `[upstreams.<api>]` in [`config_text`], to point that API elsewhere.
pub fn upstream_url_line(api: &str, url: &str) -> String {
    format!("[upstreams.{api}]\nurl = \"{url}\"")
}

impl Harness {
    /// A sandbox started from `sandbox_config`, and a gateway on [`config_text`] with `opts`
    /// after `edit` changed it; `edit` gets the text, the sandbox's URL and the harness's
    /// directory (to write key files the edited text names).
    pub async fn edited(
        sandbox_config: SandboxConfig,
        opts: &Options,
        edit: impl FnOnce(String, &str, &Path) -> String,
    ) -> Harness {
        let sandbox = sandbox::spawn(sandbox_config)
            .await
            .expect("sandbox starts");
        let dir = tempfile::tempdir().expect("tempdir");
        let text = edit(
            config_text(dir.path(), &sandbox.url(), opts),
            &sandbox.url(),
            dir.path(),
        );
        let config =
            Config::from_toml(&text, Path::new("test.toml")).expect("edited config is valid");
        Harness::serve(sandbox, dir, config).await
    }

    /// The value of one metric from the admin `/metrics`, by its name without the
    /// `ratepay_gateway_` prefix and with its labels, e.g. `retries_total{upstream="payment"}`;
    /// `None` when no such line exists.
    pub async fn metric(&self, name_and_labels: &str) -> Option<f64> {
        let text = self.scrape_metrics().await;
        let line_start = format!("ratepay_gateway_{name_and_labels} ");
        text.lines()
            .find(|l| l.starts_with(&line_start))
            .and_then(|l| l[line_start.len()..].trim().parse().ok())
    }
}

/// Polls `check` every 20 ms until it holds; panics naming `what` after 10 s. For a condition
/// that another task makes true at an unknown moment (never as a fixed sleep).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < until,
            "not within 10 s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The path of a transaction's cancellations.
pub fn cancel_path(tx: &str) -> String {
    super::tx_path(tx, "cancellations")
}

impl Harness {
    /// A cancellation of `tx` through the gateway as `key` with the JSON `body`, keyed with
    /// `idem` and sent with `partner` when given.
    pub fn cancel(
        &self,
        key: &str,
        tx: &str,
        body: &serde_json::Value,
        idem: Option<&str>,
        partner: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let mut rb = self
            .req(reqwest::Method::POST, &cancel_path(tx), key)
            .json(body);
        if let Some(k) = idem {
            rb = rb.header("idempotency-key", k);
        }
        if let Some(p) = partner {
            rb = rb.header("x-partner", p);
        }
        rb
    }

    /// How many cancellations Ratepay holds for `tx` (read through the gateway as `key`, with
    /// `partner` when given).
    pub async fn cancellations(&self, key: &str, tx: &str, partner: Option<&str>) -> usize {
        let mut rb = self.req(reqwest::Method::GET, &cancel_path(tx), key);
        if let Some(p) = partner {
            rb = rb.header("x-partner", p);
        }
        let r = rb.send().await.expect("list cancellations");
        assert_eq!(r.status(), 200);
        let body: serde_json::Value = r.json().await.expect("cancellations json");
        body["_embedded"]["cancellations"]
            .as_array()
            .map_or(0, Vec::len)
    }
}
