//! Rate limits shared by the instances of a fleet ([`crate::cluster`]): the same budgets as
//! [`RateLimits`], kept in Redis so that N instances admit the configured rate between them.
//!
//! One script call per layer per request spends from every bucket that layer checks (the
//! caller's; or the operation's and the API's), all or nothing. Ratepay's 429 pause stays in
//! the local [`RateLimits`] (every instance learns of it through the cluster's messages), so
//! a paused API is refused without a round trip. While Redis is unreachable the configured
//! fallback decides: local buckets at the rates divided by `cluster.instances`, or 503.

use std::{sync::atomic::Ordering, sync::Arc, time::Duration};

use governor::clock::Clock;

use super::decision::{Decision, RateLimits};
use crate::{
    cluster::{
        gcra::{Bucket, Verdict},
        Cluster,
    },
    config::{Rate, RateLimitFallback, RateLimitSettings},
    limits::{Headroom, Scope},
    routes::Api,
};

/// The shared budgets of one configuration.
pub struct SharedRateLimits {
    cluster: Arc<Cluster>,
    settings: RateLimitSettings,
    fallback: Fallback,
}

enum Fallback {
    /// Local buckets at the shared rates divided among the instances.
    Local(Box<RateLimits>),
    /// 503 while Redis is away.
    Refuse,
}

impl std::fmt::Debug for SharedRateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedRateLimits").finish_non_exhaustive()
    }
}

fn headroom(name: &'static str, rate: Rate, remaining: u32) -> Headroom {
    Headroom {
        name,
        rate,
        remaining,
        reset: rate
            .period()
            .saturating_mul(rate.burst.saturating_sub(remaining)),
    }
}

impl SharedRateLimits {
    /// The budgets of `settings`, in the Redis of `cluster`.
    pub fn new(cluster: Arc<Cluster>, settings: &RateLimitSettings) -> SharedRateLimits {
        let fallback = match cluster.settings().rate_limit_fallback {
            RateLimitFallback::Local => Fallback::Local(Box::new(RateLimits::new(
                &settings.divided_by(cluster.settings().instances),
            ))),
            RateLimitFallback::Refuse => Fallback::Refuse,
        };
        SharedRateLimits {
            cluster,
            settings: settings.clone(),
            fallback,
        }
    }

    fn fell_back(&self) {
        self.cluster
            .stats
            .rate_limit_fallbacks
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The caller's budget; `local` decides the refusal's form (queue mode).
    pub async fn check_caller<C: Clock + Clone>(
        &self,
        local: &RateLimits<C>,
        caller: &str,
        waited: Duration,
    ) -> Decision {
        let Some(rate) = self
            .settings
            .callers
            .get(caller)
            .or(self.settings.per_caller.as_ref())
            .copied()
        else {
            return Decision::Allow(None);
        };
        let buckets = [Bucket {
            key: self.cluster.key(&format!("rl:caller:{caller}")),
            rate,
        }];
        match self.cluster.spend(&buckets).await {
            Ok(Verdict::Admitted { remaining, .. }) => {
                Decision::Allow(Some(headroom("caller", rate, remaining)))
            }
            Ok(Verdict::Refused { wait, .. }) => {
                local.over(wait, waited, Scope::Caller(caller.to_owned()), Some(rate))
            }
            Err(_) => {
                self.fell_back();
                match &self.fallback {
                    Fallback::Local(l) => l.check_caller(caller, waited),
                    Fallback::Refuse => Decision::Unavailable,
                }
            }
        }
    }

    /// Ratepay's pause on `api` (local), then the operation's and the API's shared budgets.
    pub async fn check_upstream<C: Clock + Clone>(
        &self,
        local: &RateLimits<C>,
        api: Api,
        operation: &'static str,
        waited: Duration,
    ) -> Decision {
        if let Some(left) = local.paused_for(api) {
            return local.over(left, waited, Scope::Paused(api), None);
        }
        let mut buckets = Vec::with_capacity(2);
        let mut scopes = Vec::with_capacity(2);
        if let Some(rate) = self.settings.operations.get(operation) {
            buckets.push(Bucket {
                key: self.cluster.key(&format!("rl:operation:{operation}")),
                rate: *rate,
            });
            scopes.push(Scope::Operation(operation));
        }
        if let Some(rate) = self.settings.upstreams.get(&api) {
            buckets.push(Bucket {
                key: self.cluster.key(&format!("rl:upstream:{}", api.name())),
                rate: *rate,
            });
            scopes.push(Scope::Upstream(api));
        }
        if buckets.is_empty() {
            return Decision::Allow(None);
        }
        match self.cluster.spend(&buckets).await {
            Ok(Verdict::Admitted { bucket, remaining }) => {
                let (b, s) = (&buckets[bucket], &scopes[bucket]);
                Decision::Allow(Some(headroom(s.policy_name(), b.rate, remaining)))
            }
            Ok(Verdict::Refused { bucket, wait }) => {
                let rate = buckets[bucket].rate;
                local.over(wait, waited, scopes.swap_remove(bucket), Some(rate))
            }
            Err(_) => {
                self.fell_back();
                match &self.fallback {
                    Fallback::Local(l) => l.check_upstream(api, operation, waited),
                    Fallback::Refuse => Decision::Unavailable,
                }
            }
        }
    }
}
