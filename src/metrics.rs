//! Prometheus metrics (prometheus-client: no global state; one registry per gateway).
//!
//! Layers hold an `Arc<Metrics>` and count what they decide; token and audit state is read at
//! scrape time by a collector. Label values are bounded by construction: operation names from
//! the route table, configured caller names, status classes, upstream names. No ids, no
//! secrets.

use std::{
    collections::BTreeMap,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use arc_swap::ArcSwap;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::{exponential_buckets, Histogram},
        MetricType,
    },
    registry::Registry,
};

use crate::{audit::AuditLog, routes::Api, token::TokenSource};

/// Labels of `ratepay_gateway_config_reloads`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `refused`.
    pub result: &'static str,
}

/// Labels of `ratepay_gateway_requests`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Operation name or `-` (unrouted).
    pub operation: String,
    /// Caller name or `-` (unauthenticated).
    pub caller: String,
    /// `2xx`, `4xx`, ...
    pub status: String,
}

/// Labels with an operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// Operation name.
    pub operation: String,
}

/// Labels with an upstream and a status class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// `payment`, `status`, `hpp`.
    pub upstream: String,
    /// `2xx`, ..., or `error` for transport failures.
    pub status: String,
}

/// Labels with only an upstream.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamOnly {
    /// `payment`, `status`, `hpp`.
    pub upstream: String,
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
    pub request_duration: Family<OperationLabels, Histogram>,
    /// Requests being served now.
    pub in_flight: Gauge,
    /// Upstream attempts by upstream and status class.
    pub upstream_responses: Family<UpstreamLabels, Counter>,
    /// Upstream attempt latency to response headers (seconds).
    pub upstream_duration: Family<UpstreamOnly, Histogram>,
    /// Retries started.
    pub retries: Family<UpstreamOnly, Counter>,
    /// Answers replayed from the idempotency store.
    pub idempotency_replays: Counter,
    /// Idempotency-Key reuse with another request (409).
    pub idempotency_conflicts: Counter,
    /// Configuration reloads by result.
    pub reloads: Family<ResultLabels, Counter>,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~26 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

impl Metrics {
    /// A registry with every metric, plus token and audit state read at scrape time.
    pub fn new(tokens: Arc<BTreeMap<Api, TokenSource>>, audit: AuditLog) -> Arc<Metrics> {
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
        registry.register_collector(Box::new(StateCollector {
            tokens: tokens.clone(),
            audit,
        }));
        Arc::new(Metrics {
            registry,
            tokens,
            requests,
            request_duration,
            in_flight,
            upstream_responses,
            upstream_duration,
            retries,
            idempotency_replays,
            idempotency_conflicts,
            reloads,
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
pub fn status_class(status: u16) -> String {
    format!("{}xx", status / 100)
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
                    upstream: api.name().to_owned(),
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
                upstream: api.name().to_owned(),
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
            "1 when the audit log refuses writes after an I/O error",
            None,
            MetricType::Gauge,
        )?)?;
        Ok(())
    }
}
