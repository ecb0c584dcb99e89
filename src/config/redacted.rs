//! `check-config`'s output: the resolved configuration as TOML-like text, every default
//! filled in and every secret redacted (key files by path, secrets as `[REDACTED]`).

use super::{Config, OverLimit, Rate};

impl Config {
    /// The resolved configuration as TOML-like text with every secret redacted (`check-config`).
    pub fn redacted(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "# resolved from {}", self.source.display());
        let _ = writeln!(s, "[listen]\nproxy = \"{}\"", self.listen.proxy);
        match self.listen.admin {
            Some(a) => {
                let _ = writeln!(s, "admin = \"{a}\"");
            }
            None => {
                let _ = writeln!(s, "admin = \"off\"");
            }
        }
        let _ = writeln!(
            s,
            "shutdown_grace_ms = {}\nfirst_request_timeout_ms = {}\nidle_timeout_ms = {}\nheader_timeout_ms = {}\nsend_timeout_ms = {}\nmax_connections = {}",
            self.listen.shutdown_grace.as_millis(),
            self.listen.connections.first_request_timeout.as_millis(),
            self.listen.connections.idle_timeout.as_millis(),
            self.listen.connections.header_timeout.as_millis(),
            self.listen.connections.send_timeout.as_millis(),
            self.listen.connections.max,
        );
        if let Some(t) = &self.listen.tls {
            // Paths only: the key itself is never printed.
            let _ = writeln!(
                s,
                "\n[listen.tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\nclient_auth = \"{}\"\nhandshake_timeout_ms = {}",
                t.cert_file,
                t.key_file,
                t.client_ca_file,
                t.client_auth.name(),
                t.handshake_timeout.as_millis()
            );
        }
        if let Some(sb) = &self.sandbox {
            let _ = writeln!(
                s,
                "\n[sandbox]\nembedded = true\ntoken_lifetime_secs = {}\nseed = {}\nsession_step_secs = {}",
                sb.token_lifetime.as_secs(),
                sb.seed.map_or("\"random\"".to_owned(), |s| s.to_string()),
                sb.session_step.map_or(0, |d| d.as_secs())
            );
        }
        for c in self.credentials.values() {
            let _ = writeln!(
                s,
                "\n[credentials.{}]\ntoken_url = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"[REDACTED]\"",
                c.name, c.token_url, c.client_id
            );
        }
        for u in self.upstreams.values() {
            let _ = writeln!(
                s,
                "\n[upstreams.{}]\nurl = \"{}\"\naudience = \"{}\"\ncredentials = \"{}\"",
                u.api.name(),
                u.url,
                u.audience,
                u.credentials
            );
        }
        let c = &self.upstream_client;
        let _ = writeln!(
            s,
            "\n[upstream_client]\nconnect_timeout_ms = {}\nrequest_timeout_ms = {}\nbody_idle_timeout_ms = {}\npool_idle_timeout_secs = {}\nca_file = {:?}",
            c.connect_timeout.as_millis(),
            c.request_timeout.as_millis(),
            c.body_idle_timeout.as_millis(),
            c.pool_idle_timeout.as_secs(),
            c.ca_file.as_ref().map(|ca| &ca.path)
        );
        let t = &self.tokens;
        let _ = writeln!(
            s,
            "\n[tokens]\nrefresh_at_fraction = {}\nrefresh_margin_secs = {}\nfetch_timeout_ms = {}\nretry_initial_ms = {}\nretry_max_ms = {}",
            t.refresh_at_fraction,
            t.refresh_margin.as_secs(),
            t.fetch_timeout.as_millis(),
            t.retry_initial.as_millis(),
            t.retry_max.as_millis()
        );
        if let Some(i) = &self.callers.issuer {
            let _ = writeln!(
                s,
                "\n[gateway_tokens]\nkey = \"{:?}\"\nissuer = \"{}\"\nlifetime_secs = {}",
                i.key,
                i.issuer,
                i.lifetime.as_secs()
            );
        }
        for c in &self.callers.callers {
            let _ = writeln!(
                s,
                "\n[callers.{}]\napi_key = \"{}\"\nclient_id = {:?}\nclient_secret = \"{}\"\nclient_cert = {:?}\noperations = {:?}\npartner = {:?}",
                c.name,
                if c.api_key_sha256.is_some() { "[REDACTED]" } else { "none" },
                c.client.as_ref().map(|(id, _)| id),
                if c.client.is_some() { "[REDACTED]" } else { "none" },
                c.client_cert.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
                c.operations,
                c.partner
            );
        }
        let _ = writeln!(
            s,
            "\n[limits]\nmax_request_body_bytes = {}\nrequest_timeout_ms = {}\n\
             max_response_body_bytes = {}",
            self.limits.max_request_body_bytes,
            self.limits.request_timeout.as_millis(),
            self.limits.max_response_body_bytes
        );
        let _ = writeln!(
            s,
            "\n[idempotency]\nttl_secs = {}\nmax_bytes = {}",
            self.idempotency.ttl.as_secs(),
            self.idempotency.max_bytes
        );
        let r = &self.retry;
        let _ = writeln!(
            s,
            "\n[retry]\nmax_attempts = {}\ninitial_backoff_ms = {}\nmax_backoff_ms = {}\ndeadline_ms = {}",
            r.max_attempts,
            r.initial_backoff.as_millis(),
            r.max_backoff.as_millis(),
            r.deadline.as_millis()
        );
        let _ = writeln!(
            s,
            "\n[audit]\npath = {:?}\nenabled = {}\noperations = {:?}\nrotate_bytes = {:?}\nrotate_daily = {}",
            self.audit.log.path,
            self.audit.enabled,
            self.audit.operations,
            self.audit.log.rotate_bytes,
            self.audit.log.rotate_daily
        );
        let _ = match self.audit.log.outcome_sync_delay {
            Some(d) => writeln!(
                s,
                "outcome_durability = \"written\"\noutcome_sync_delay_ms = {}",
                d.as_millis()
            ),
            None => writeln!(s, "outcome_durability = \"synced\""),
        };
        if let Some(c) = &self.audit.log.checkpoints {
            // The key by its public key id only, never its bytes.
            let _ = writeln!(
                s,
                "instance = {:?}\ncheckpoint_every_records = {}\ncheckpoint_every_secs = {}\nsigning_key = {}",
                self.audit.log.instance,
                c.every_records,
                c.every.as_secs(),
                c.signing_key.as_ref().map_or("\"none: checkpoints are unsigned\"".to_owned(), |k| {
                    format!("\"[REDACTED] (public key id {})\"", k.public_key().key_id())
                })
            );
        }
        let r = &self.rate_limits;
        let _ = match r.over_limit {
            OverLimit::Reject => writeln!(s, "\n[rate_limits]\nmode = \"reject\""),
            OverLimit::Queue { max_wait } => {
                writeln!(
                    s,
                    "\n[rate_limits]\nmode = \"queue\"\nmax_wait_ms = {}",
                    max_wait.as_millis()
                )
            }
        };
        let _ = writeln!(
            s,
            "upstream_pause_default_secs = {}\nupstream_pause_max_secs = {}",
            r.upstream_pause_default.as_secs(),
            r.upstream_pause_max.as_secs()
        );
        let rate = |s: &mut String, section: &str, rate: &Rate| {
            let _ = writeln!(
                s,
                "[rate_limits.{section}]\nrate_per_sec = {}\nburst = {}",
                rate.per_sec, rate.burst
            );
        };
        if let Some(p) = &r.per_caller {
            rate(&mut s, "per_caller", p);
        }
        for (name, p) in &r.callers {
            rate(&mut s, &format!("callers.{name}"), p);
        }
        for (api, p) in &r.upstreams {
            rate(&mut s, &format!("upstreams.{}", api.name()), p);
        }
        for (op, p) in &r.operations {
            rate(&mut s, &format!("operations.\"{op}\""), p);
        }
        match &self.cache {
            None => {
                let _ = writeln!(s, "\n[cache]\nenabled = false");
            }
            Some(c) => {
                let _ = writeln!(
                    s,
                    "\n[cache]\nenabled = true\nmax_bytes = {}\nterminal_ttl_secs = {}\nchanging_ttl_secs = {}\nlist_past_ttl_secs = {}\nlist_today_ttl_secs = {}\nnot_found_ttl_secs = {}\nstale_if_error_secs = {}",
                    c.max_bytes,
                    c.terminal_ttl.as_secs(),
                    c.changing_ttl.as_secs(),
                    c.list_past_ttl.as_secs(),
                    c.list_today_ttl.as_secs(),
                    c.not_found_ttl.as_secs(),
                    c.stale_if_error.as_secs()
                );
            }
        }
        if let Some(c) = &self.cluster {
            // The URL and the password are secrets; the CA file is printed by path.
            let _ = writeln!(
                s,
                "\n[cluster]\ninstance = \"{}\"\ninstances = {}\nredis_url = \"[REDACTED]\"\nredis_username = {:?}\nredis_password = {}\nredis_ca_file = {:?}\nkey_prefix = {:?}\nredis_timeout_ms = {}\nretry_after_failure_ms = {}\nrate_limit_fallback = \"{}\"\nanswer_key = \"[REDACTED]\"\nprevious_answer_key = {}",
                c.instance,
                c.instances,
                c.redis_username.as_deref().unwrap_or(""),
                if c.redis_password.is_some() { "\"[REDACTED]\"" } else { "\"\"" },
                c.redis_ca_file.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                c.key_prefix,
                c.redis_timeout.as_millis(),
                c.retry_after_failure.as_millis(),
                c.rate_limit_fallback.name(),
                if c.previous_answer_key.is_some() { "\"[REDACTED]\"" } else { "\"\"" },
            );
        }
        s
    }
}
