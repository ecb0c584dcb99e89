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

use super::decision::{over, Decision, RateLimits};
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

    pub(super) fn caller_rate(&self, caller: &str) -> Option<Rate> {
        self.settings
            .callers
            .get(caller)
            .or(self.settings.per_caller.as_ref())
            .copied()
    }

    /// The caller's bucket, then the operation's and the API's, as configured.
    fn buckets(
        &self,
        caller: Option<&str>,
        upstream: Option<(Api, &'static str)>,
    ) -> (Vec<Bucket>, Vec<Scope>) {
        let mut buckets = Vec::with_capacity(3);
        let mut scopes = Vec::with_capacity(3);
        if let Some((caller, rate)) = caller.and_then(|c| Some((c, self.caller_rate(c)?))) {
            buckets.push(Bucket {
                key: self.cluster.key(&format!("rl:caller:{caller}")),
                rate,
            });
            scopes.push(Scope::Caller(caller.to_owned()));
        }
        if let Some((api, operation)) = upstream {
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
        }
        (buckets, scopes)
    }

    /// The buckets a call to `operation` of `api` spends toward Ratepay (for the idempotency
    /// lease, which spends them in its own round trip).
    pub fn upstream_buckets(&self, api: Api, operation: &'static str) -> Vec<Bucket> {
        self.buckets(None, Some((api, operation))).0
    }

    /// The caller's bucket, when the caller has a limit: a keyed call's lease spends it in its
    /// own round trip (see [`crate::context::RequestStats::caller_deferred`]).
    pub fn caller_bucket(&self, caller: &str) -> Option<Bucket> {
        self.buckets(Some(caller), None).0.pop()
    }

    /// The headroom of a caller's `bucket` that admitted a request in another script's round
    /// trip with `room` requests left at once.
    pub fn caller_admitted(&self, bucket: &Bucket, room: u32) -> Headroom {
        Headroom::new("caller", bucket.rate, room)
    }

    /// A caller's `bucket` refused a request in another script's round trip until `wait` has
    /// passed: 429, or a wait in queue mode.
    pub fn caller_refused<T>(
        &self,
        caller: &str,
        bucket: &Bucket,
        wait: Duration,
        waited: Duration,
    ) -> Decision<T> {
        over(
            self.settings.over_limit,
            wait,
            waited,
            Scope::Caller(caller.to_owned()),
            Some(bucket.rate),
        )
    }

    /// The caller's budget when Redis could not be reached for it: the configured fallback.
    pub fn caller_fallback(&self, caller: &str, waited: Duration) -> Decision {
        self.fell_back();
        self.refuse_or(|l| l.check_caller(caller, waited))
    }

    /// Spends from `buckets` in one call; `Err` when Redis is unreachable. The headroom is the
    /// caller's when its bucket is first (`caller_first`), else the tightest bucket's.
    async fn spend<C: Clock + Clone>(
        &self,
        local: &RateLimits<C>,
        buckets: Vec<Bucket>,
        mut scopes: Vec<Scope>,
        caller_first: bool,
        waited: Duration,
    ) -> Result<Decision, ()> {
        if buckets.is_empty() {
            return Ok(Decision::Allow(None));
        }
        match self.cluster.spend(&buckets).await {
            Ok(Verdict::Admitted {
                bucket,
                remaining,
                first,
            }) => Ok(Decision::Allow(Some(if caller_first {
                Headroom::new("caller", buckets[0].rate, first)
            } else {
                Headroom::new(
                    scopes[bucket].policy_name(),
                    buckets[bucket].rate,
                    remaining,
                )
            }))),
            Ok(Verdict::Refused { bucket, wait }) => {
                let rate = buckets[bucket].rate;
                Ok(local.over(wait, waited, scopes.swap_remove(bucket), Some(rate)))
            }
            Err(_) => {
                self.fell_back();
                Err(())
            }
        }
    }

    fn refuse_or<F: FnOnce(&RateLimits) -> Decision>(&self, local: F) -> Decision {
        match &self.fallback {
            Fallback::Local(l) => local(l),
            Fallback::Refuse => Decision::Unavailable,
        }
    }

    /// The caller's budget; `local` decides the refusal's form (queue mode).
    pub async fn check_caller<C: Clock + Clone>(
        &self,
        local: &RateLimits<C>,
        caller: &str,
        waited: Duration,
    ) -> Decision {
        let (buckets, scopes) = self.buckets(Some(caller), None);
        match self.spend(local, buckets, scopes, true, waited).await {
            Ok(d) => d,
            Err(()) => self.refuse_or(|l| l.check_caller(caller, waited)),
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
        if let held @ (Decision::Wait(_) | Decision::Refuse(_)) = local.check_pause(api, waited) {
            return held;
        }
        let (buckets, scopes) = self.buckets(None, Some((api, operation)));
        match self.spend(local, buckets, scopes, false, waited).await {
            Ok(d) => d,
            Err(()) => self.refuse_or(|l| l.check_upstream(api, operation, waited)),
        }
    }

    /// Both at once, for a request that will reach Ratepay whatever happens between the two
    /// layers (neither the cache nor idempotency can answer it): one round trip instead of two.
    /// All or nothing: a refusal by the API's budget spends nothing from the caller's.
    pub async fn check_caller_and_upstream<C: Clock + Clone>(
        &self,
        local: &RateLimits<C>,
        caller: &str,
        api: Api,
        operation: &'static str,
        waited: Duration,
    ) -> Decision {
        if let held @ (Decision::Wait(_) | Decision::Refuse(_)) = local.check_pause(api, waited) {
            return held;
        }
        let caller_first = self.caller_rate(caller).is_some();
        let (buckets, scopes) = self.buckets(Some(caller), Some((api, operation)));
        match self
            .spend(local, buckets, scopes, caller_first, waited)
            .await
        {
            // Without a caller limit there is no caller headroom to announce.
            Ok(Decision::Allow(_)) if !caller_first => Decision::Allow(None),
            Ok(d) => d,
            Err(()) => self.refuse_or(|l| match l.check_caller(caller, waited) {
                Decision::Allow(h) => match l.check_upstream(api, operation, waited) {
                    Decision::Allow(_) => Decision::Allow(h),
                    other => other,
                },
                other => other,
            }),
        }
    }
}
