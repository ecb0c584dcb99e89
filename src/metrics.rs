//! Prometheus metrics (prometheus-client: no global state; one registry per gateway).
//!
//! Layers hold an `Arc<Metrics>` and count what they decide; token and audit state is read at
//! scrape time by a collector. Label values are bounded by construction: operation names from
//! the route table, configured caller names, status classes, upstream names. No ids, no
//! secrets.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use arc_swap::ArcSwap;
use prometheus_client::{
    collector::Collector,
    encoding::{
        DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
    },
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::{exponential_buckets, Histogram},
        MetricType,
    },
    registry::Registry,
};

use crate::{
    audit::AuditLog,
    cluster::{Cluster, Health},
    routes::Api,
    token::TokenSource,
};

/// Labels of `ratepay_gateway_config_reloads`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `refused`.
    pub result: &'static str,
}

/// A configured name as a label value, shared rather than copied on every request.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Name(pub Arc<str>);

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

/// Labels of `ratepay_gateway_requests`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Operation name or `-` (unrouted).
    pub operation: &'static str,
    /// Caller name or `-` (unauthenticated).
    pub caller: Name,
    /// `2xx`, `4xx`, ...
    pub status: &'static str,
}

/// Labels with an operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// Operation name.
    pub operation: &'static str,
}

/// Labels with an upstream and a status class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// `payment`, `status`, `hpp`.
    pub upstream: &'static str,
    /// `2xx`, ..., or `error` for transport failures.
    pub status: &'static str,
}

/// Labels of the rate-limit rejections.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScopeLabels {
    /// `caller`, `upstream`, `operation` or `paused` (Ratepay's 429 pause).
    pub scope: &'static str,
}

/// Labels with only an upstream.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamOnly {
    /// `payment`, `status`, `hpp`.
    pub upstream: &'static str,
}

/// Every metric the gateway records.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// The token sources the gauges read (swapped on reload).
    tokens: Arc<ArcSwap<BTreeMap<Api, TokenSource>>>,
    /// Requests answered, by operation, caller and status class.
    pub requests: Family<RequestLabels, Counter>,
    /// Gateway latency per operation (seconds).
    pub request_duration: Memo<OperationLabels, Histogram>,
    /// Requests being served now.
    pub in_flight: Gauge,
    /// Upstream attempts by upstream and status class.
    pub upstream_responses: Memo<UpstreamLabels, Counter>,
    /// Upstream attempt latency to response headers (seconds).
    pub upstream_duration: Memo<UpstreamOnly, Histogram>,
    /// Retries started.
    pub retries: Family<UpstreamOnly, Counter>,
    /// Answers replayed from the idempotency store.
    pub idempotency_replays: Counter,
    /// Idempotency-Key reuse with another request (409).
    pub idempotency_conflicts: Counter,
    /// Configuration reloads by result.
    pub reloads: Family<ResultLabels, Counter>,
    /// Requests refused by a rate limit, by scope.
    pub rate_limit_rejections: Family<ScopeLabels, Counter>,
    /// Time requests spent queued by the rate limits (queue mode; only requests that waited).
    pub rate_limit_queue_wait: Histogram,
    /// Session-record cache answers by result (`hit`, `miss`, `stale`, `bypass`).
    pub cache_lookups: Memo<ResultLabels, Counter>,
    /// Bytes held by the session-record cache (set when scraped).
    pub cache_bytes: Gauge,
    /// Entries in the session-record cache (set when scraped).
    pub cache_entries: Gauge,
    /// Panics caught while serving a request (each answered 500).
    pub panics: Counter,
    /// Connections open now, by listener.
    pub connections_open: Family<ListenerLabels, Gauge>,
    /// Connections closed by the gateway, by listener and reason (`cap`: refused at accept
    /// because `listen.max_connections` were open; `first_request_timeout`; `idle`).
    pub connections_closed: Family<ConnectionLabels, Counter>,
    /// HTTP/2 streams reset by the gateway, by listener and reason (`send_timeout`: the
    /// client took none of the answer for `listen.send_timeout_ms`).
    pub streams_reset: Family<ConnectionLabels, Counter>,
}

/// Labels: listener.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// `proxy` or `admin`.
    pub listener: &'static str,
}

/// Labels: listener and why the gateway closed a connection.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    /// `proxy` or `admin`.
    pub listener: &'static str,
    /// `cap`, `first_request_timeout` or `idle`.
    pub reason: &'static str,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~26 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// A family's series found again without hashing: the label sets seen so far, each with its
/// series, in a short list read without a lock and compared field by field.
///
/// For the families on every request whose labels come from small fixed sets (operation names,
/// upstreams, status classes). `Family::get_or_create` took the family's lock and hashed the
/// labels with SipHash each time: four times per request, 1.6k of an uncached GET's instructions;
/// with the list, an uncached GET went 140.2k → 139.4k and a cache hit 39.1k → 38.8k
/// (benches/instructions.sh). The family stays the one registered, so the exposition is
/// unchanged; a label set is added to the list on its first use, up to [`Memo::MAX`] of them
/// (past that, lookups go to the family as before).
#[derive(Debug)]
pub struct Memo<L, M> {
    family: Family<L, M>,
    seen: ArcSwap<Vec<(L, M)>>,
}

impl<L, M> Memo<L, M>
where
    L: Clone + std::hash::Hash + Eq + Send + Sync + 'static,
    M: Clone + Send + Sync + 'static,
{
    /// The most label sets listed; the families it serves have a few dozen at most.
    pub const MAX: usize = 64;

    fn new(family: Family<L, M>) -> Self {
        Memo {
            family,
            seen: ArcSwap::from_pointee(Vec::new()),
        }
    }

    /// Runs `f` on the series of `labels`, creating it in the family on first use.
    pub fn with<R>(&self, labels: &L, f: impl FnOnce(&M) -> R) -> R {
        if let Some((_, m)) = self.seen.load().iter().find(|(l, _)| l == labels) {
            return f(m);
        }
        let series = self.family.get_or_create(labels).clone();
        self.seen.rcu(|seen| {
            let mut next = Vec::clone(seen);
            if next.len() < Self::MAX && !next.iter().any(|(l, _)| l == labels) {
                next.push((labels.clone(), series.clone()));
            }
            next
        });
        f(&series)
    }
}

impl Metrics {
    /// A registry with every metric, plus token and audit state read at scrape time.
    pub fn new(
        tokens: Arc<BTreeMap<Api, TokenSource>>,
        audit: AuditLog,
        cluster: Option<Arc<Cluster>>,
    ) -> Arc<Metrics> {
        let tokens = Arc::new(ArcSwap::new(tokens));
        let mut registry = Registry::with_prefix("ratepay_gateway");
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration = Family::<OperationLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let in_flight = Gauge::default();
        let upstream_responses = Family::<UpstreamLabels, Counter>::default();
        let upstream_duration = Family::<UpstreamOnly, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let retries = Family::<UpstreamOnly, Counter>::default();
        let idempotency_replays = Counter::default();
        let idempotency_conflicts = Counter::default();
        registry.register(
            "requests",
            "Requests answered by the gateway",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request received to response headers",
            request_duration.clone(),
        );
        registry.register(
            "in_flight_requests",
            "Requests being served",
            in_flight.clone(),
        );
        registry.register(
            "upstream_responses",
            "Upstream attempts by status class (error: transport failure)",
            upstream_responses.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Upstream attempt time to response headers",
            upstream_duration.clone(),
        );
        registry.register("retries", "Upstream retries started", retries.clone());
        registry.register(
            "idempotency_replays",
            "Answers replayed from the idempotency store",
            idempotency_replays.clone(),
        );
        registry.register(
            "idempotency_conflicts",
            "Idempotency-Key reused for another request",
            idempotency_conflicts.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads (SIGHUP, POST /reload) by result",
            reloads.clone(),
        );
        let rate_limit_rejections = Family::<ScopeLabels, Counter>::default();
        registry.register(
            "rate_limit_rejections",
            "Requests refused by a rate limit (429), by scope",
            rate_limit_rejections.clone(),
        );
        let rate_limit_queue_wait = latency_histogram();
        registry.register(
            "rate_limit_queue_wait_seconds",
            "Time requests waited for a rate-limit slot (queue mode)",
            rate_limit_queue_wait.clone(),
        );
        let cache_lookups = Family::<ResultLabels, Counter>::default();
        registry.register(
            "cache_lookups",
            "Session-record reads by cache result (hit, miss, stale, bypass)",
            cache_lookups.clone(),
        );
        let cache_bytes = Gauge::default();
        registry.register(
            "cache_bytes",
            "Bytes held by the session-record cache",
            cache_bytes.clone(),
        );
        let cache_entries = Gauge::default();
        registry.register(
            "cache_entries",
            "Entries in the session-record cache",
            cache_entries.clone(),
        );
        let panics = Counter::default();
        registry.register(
            "panics",
            "Panics caught while serving a request (each answered 500 internal)",
            panics.clone(),
        );
        let connections_open = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "connections_open",
            "Client connections open, by listener",
            connections_open.clone(),
        );
        let connections_closed = Family::<ConnectionLabels, Counter>::default();
        registry.register(
            "connections_closed",
            "Client connections closed by the gateway: cap (refused at accept), first_request_timeout, idle",
            connections_closed.clone(),
        );
        let streams_reset = Family::<ConnectionLabels, Counter>::default();
        registry.register(
            "streams_reset",
            "HTTP/2 streams reset by the gateway: send_timeout (the client took none of the answer)",
            streams_reset.clone(),
        );
        registry.register_collector(Box::new(StateCollector {
            tokens: tokens.clone(),
            audit,
        }));
        if let Some(cluster) = cluster {
            registry.register_collector(Box::new(ClusterCollector(cluster)));
        }
        Arc::new(Metrics {
            registry,
            tokens,
            requests,
            request_duration: Memo::new(request_duration),
            in_flight,
            upstream_responses: Memo::new(upstream_responses),
            upstream_duration: Memo::new(upstream_duration),
            retries,
            idempotency_replays,
            idempotency_conflicts,
            reloads,
            rate_limit_rejections,
            rate_limit_queue_wait,
            cache_lookups: Memo::new(cache_lookups),
            cache_bytes,
            cache_entries,
            panics,
            connections_open,
            connections_closed,
            streams_reset,
        })
    }

    /// Points the token gauges at the token sources of a reloaded configuration.
    pub fn set_token_sources(&self, tokens: Arc<BTreeMap<Api, TokenSource>>) {
        self.tokens.store(tokens);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// `2xx`, `4xx`, ...
pub fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

/// Token and audit state, read when scraped.
#[derive(Debug)]
struct StateCollector {
    tokens: Arc<ArcSwap<BTreeMap<Api, TokenSource>>>,
    audit: AuditLog,
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        type Read = fn(&TokenSource) -> u64;
        let counters: [(&str, &str, Read); 2] = [
            (
                "token_fetches",
                "Ratepay token fetches that succeeded",
                |t| t.stats().fetches.load(Ordering::Relaxed),
            ),
            (
                "token_fetch_failures",
                "Ratepay token fetches that failed",
                |t| t.stats().failures.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, read) in counters {
            let mut e = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (api, t) in self.tokens.load().iter() {
                let labels = UpstreamOnly {
                    upstream: api.name(),
                };
                ConstCounter::new(read(t)).encode(e.encode_family(&labels)?)?;
            }
        }
        let mut e = encoder.encode_descriptor(
            "token_expiry_seconds",
            "Seconds until the current Ratepay token expires (0: none)",
            None,
            MetricType::Gauge,
        )?;
        for (api, t) in self.tokens.load().iter() {
            let labels = UpstreamOnly {
                upstream: api.name(),
            };
            let secs = t.expires_in().unwrap_or(Duration::ZERO).as_secs() as i64;
            ConstGauge::new(secs).encode(e.encode_family(&labels)?)?;
        }
        let s = self.audit.stats();
        ConstCounter::new(s.records_written).encode(encoder.encode_descriptor(
            "audit_records",
            "Audit records written and synced",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(s.syncs).encode(encoder.encode_descriptor(
            "audit_syncs",
            "Audit log fdatasync calls (group commits)",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(s.failed_appends).encode(encoder.encode_descriptor(
            "audit_failures",
            "Audit appends that failed (calls refused)",
            None,
            MetricType::Counter,
        )?)?;
        ConstGauge::new(s.last_sync.as_secs_f64()).encode(encoder.encode_descriptor(
            "audit_last_sync_seconds",
            "Duration of the last audit sync",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(s.avg_sync.as_secs_f64()).encode(encoder.encode_descriptor(
            "audit_avg_sync_seconds",
            "Average audit sync duration",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(i64::from(s.poisoned)).encode(encoder.encode_descriptor(
            "audit_poisoned",
            "1 when the audit log refuses writes until restart (failed sync or rotation)",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(i64::from(s.write_failed)).encode(encoder.encode_descriptor(
            "audit_write_failed",
            "1 while the audit log refuses writes after a failed write, until a probe succeeds",
            None,
            MetricType::Gauge,
        )?)?;
        ConstCounter::new(s.write_errors).encode(encoder.encode_descriptor(
            "audit_write_errors",
            "Times the audit log started refusing writes after a failed write (e.g. disk full)",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(s.recoveries).encode(encoder.encode_descriptor(
            "audit_recoveries",
            "Times the audit log accepted writes again after a failed write",
            None,
            MetricType::Counter,
        )?)?;
        let latest = self.audit.latest_checkpoint();
        ConstGauge::new(latest.as_ref().map_or(0, |c| c.seq as i64)).encode(
            encoder.encode_descriptor(
                "audit_checkpoint_seq",
                "Seq of the latest durable audit checkpoint (0: none yet)",
                None,
                MetricType::Gauge,
            )?,
        )?;
        let age = latest.map_or(0.0, |c| {
            c.age(time::OffsetDateTime::now_utc()).as_secs_f64()
        });
        ConstGauge::new(age).encode(encoder.encode_descriptor(
            "audit_checkpoint_age_seconds",
            "Seconds since the latest audit checkpoint was written (0: none yet); alert when it exceeds checkpoint_every_secs by far while cancellations flow",
            None,
            MetricType::Gauge,
        )?)?;
        Ok(())
    }
}

/// The fleet's Redis link (`[cluster]`), read when scraped.
#[derive(Debug)]
struct ClusterCollector(Arc<Cluster>);

impl Collector for ClusterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let c = &self.0;
        ConstGauge::new(i64::from(c.health() == Health::Up)).encode(encoder.encode_descriptor(
            "cluster_redis_up",
            "1 while Redis answers and the events subscription is up; 0: degraded, fallbacks in use",
            None,
            MetricType::Gauge,
        )?)?;
        let counters: [(&str, &str, &std::sync::atomic::AtomicU64); 6] = [
            (
                "cluster_redis_failures",
                "Redis calls on the request path that failed or timed out",
                &c.stats.failures,
            ),
            (
                "cluster_rate_limit_fallbacks",
                "Rate-limit decisions taken by the fallback because Redis was unreachable",
                &c.stats.rate_limit_fallbacks,
            ),
            (
                "cluster_idempotency_fallbacks",
                "Keyed calls decided by this instance's idempotency store alone because Redis was unreachable",
                &c.stats.idempotency_fallbacks,
            ),
            (
                "cluster_answers_not_shared",
                "Completed idempotent answers that could not be stored in Redis",
                &c.stats.answers_not_shared,
            ),
            (
                "cluster_events_received",
                "Pause and invalidation messages received from the fleet",
                &c.stats.events_received,
            ),
            (
                "cluster_events_lost",
                "Pause and invalidation messages that could not be sent",
                &c.stats.events_lost,
            ),
        ];
        for (name, help, value) in counters {
            ConstCounter::new(value.load(Ordering::Relaxed)).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memo_counts_into_the_registered_family_and_stops_listing_at_its_bound() {
        let family = Family::<UpstreamLabels, Counter>::default();
        let memo = Memo::new(family.clone());
        let payment = UpstreamLabels {
            upstream: "payment",
            status: "2xx",
        };
        memo.with(&payment, |c| c.inc());
        memo.with(&payment, |c| c.inc());
        assert_eq!(family.get_or_create(&payment).get(), 2);
        assert_eq!(memo.seen.load().len(), 1);
        // More label sets than the list holds: the rest still count, through the family.
        let max = Memo::<UpstreamLabels, Counter>::MAX;
        let statuses: Vec<&'static str> = (0..max + 5)
            .map(|i| &*Box::leak(format!("s{i}").into_boxed_str()))
            .collect();
        for _ in 0..2 {
            for status in &statuses {
                memo.with(
                    &UpstreamLabels {
                        upstream: "hpp",
                        status,
                    },
                    |c| c.inc(),
                );
            }
        }
        assert_eq!(memo.seen.load().len(), max);
        for status in &statuses {
            let labels = UpstreamLabels {
                upstream: "hpp",
                status,
            };
            assert_eq!(family.get_or_create(&labels).get(), 2, "{status}");
        }
    }
}
