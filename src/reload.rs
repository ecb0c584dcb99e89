//! Live reload: the serving gateway sits behind an [`ArcSwap`]; a reload re-reads the
//! configuration file (and the secret files it names), builds a new [`Gateway`] that takes over
//! the audit log, metrics, idempotency store and unchanged token sources, and swaps it in.
//!
//! Each request takes the gateway current when it arrives and keeps it to the end, so in-flight
//! requests finish on the configuration they started with. A file that does not validate, or
//! new Ratepay credentials that get no token, leave the running configuration in place.
//! Reloads are serialised (SIGHUP and `POST /reload` may race).

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use arc_swap::ArcSwap;

use crate::{config::Config, gateway::Gateway};

/// Where a reload reads its configuration from, and what to change in it after reading (the
/// binary points an embedded sandbox's upstreams at the sandbox's address).
pub struct ConfigSource {
    /// The configuration file.
    pub path: PathBuf,
    /// Applied to every freshly read configuration before it is validated against the
    /// running one.
    pub adjust: Box<dyn Fn(&mut Config) + Send + Sync>,
}

/// The gateway that is serving now, swappable at run time. Cheap to clone.
#[derive(Clone)]
pub struct LiveGateway {
    inner: Arc<Live>,
}

struct Live {
    current: ArcSwap<Gateway>,
    source: Option<ConfigSource>,
    lock: tokio::sync::Mutex<()>,
    generation: AtomicU64,
}

/// A successful reload.
#[derive(Debug, Clone)]
pub struct ReloadReport {
    /// Counts reloads since start (the first configuration is generation 0).
    pub generation: u64,
    /// Settings kept, caches emptied, credentials checked.
    pub notes: Vec<String>,
}

impl std::fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "configuration reloaded (generation {})", self.generation)?;
        for n in &self.notes {
            write!(f, "\n- {n}")?;
        }
        Ok(())
    }
}

impl From<Gateway> for LiveGateway {
    fn from(gateway: Gateway) -> Self {
        LiveGateway::new(gateway, None)
    }
}

impl LiveGateway {
    /// Serves `gateway`; reloads read `source` (without one, only [`Self::reload_with`] works).
    pub fn new(gateway: Gateway, source: Option<ConfigSource>) -> Self {
        LiveGateway {
            inner: Arc::new(Live {
                current: ArcSwap::from_pointee(gateway),
                source,
                lock: tokio::sync::Mutex::new(()),
                generation: AtomicU64::new(0),
            }),
        }
    }

    /// The gateway serving now; hold it for the whole request.
    pub fn current(&self) -> Arc<Gateway> {
        self.inner.current.load_full()
    }

    /// Re-reads the configuration file and swaps in a gateway built from it. On error the
    /// running configuration stays and the error says why.
    pub async fn reload(&self) -> Result<ReloadReport, String> {
        let Some(source) = &self.inner.source else {
            return Err("this gateway was not started from a configuration file".into());
        };
        let mut config = Config::from_file(&source.path).map_err(|e| e.to_string())?;
        (source.adjust)(&mut config);
        self.reload_with(&config).await
    }

    /// Swaps in a gateway built from `config` (already validated).
    pub async fn reload_with(&self, config: &Config) -> Result<ReloadReport, String> {
        let _one_at_a_time = self.inner.lock.lock().await;
        let running = self.current();
        let reloaded = running.reload(config).await.map_err(|e| e.0)?;
        self.inner.current.store(Arc::new(reloaded.gateway));
        let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(ReloadReport {
            generation,
            notes: reloaded.notes,
        })
    }

    /// Reloads and logs the outcome (for SIGHUP and the admin endpoint); counts it in metrics.
    pub async fn reload_and_log(&self) -> Result<ReloadReport, String> {
        let result = self.reload().await;
        let metrics = self.current();
        let metrics = metrics.metrics();
        match &result {
            Ok(report) => {
                metrics.reloads.get_or_create(&RELOAD_OK).inc();
                tracing::info!(
                    generation = report.generation,
                    notes = %report.notes.join("; "),
                    "configuration reloaded"
                );
            }
            Err(reason) => {
                metrics.reloads.get_or_create(&RELOAD_REFUSED).inc();
                tracing::error!(
                    reason = %reason,
                    "configuration reload refused; the running configuration stays"
                );
            }
        }
        result
    }
}

const RELOAD_OK: crate::metrics::ResultLabels = crate::metrics::ResultLabels { result: "ok" };
const RELOAD_REFUSED: crate::metrics::ResultLabels =
    crate::metrics::ResultLabels { result: "refused" };
