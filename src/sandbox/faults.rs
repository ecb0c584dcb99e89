//! Injected faults: which call gets a delay, an error status, a dropped connection, or an
//! answer carrying an extreme value (an `Age`, a token's `expires_in`).
//!
//! Consulted right after a call is counted and before anything else (authentication,
//! idempotency, state), so a faulted call changes no state. Tests install faults with
//! `POST /_sandbox/faults`; the selection logic here is a plain struct with the random source
//! passed in, so it is unit-tested without sockets.

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// The fault name that matches `POST /oauth/token`.
pub(crate) const OAUTH_TOKEN: &str = "oauth.token";
/// The fault name that matches every operation, `oauth.token` included.
pub(crate) const ANY: &str = "*";

/// One fault as posted to `POST /_sandbox/faults`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultSpec {
    /// Operation name (see `routes::OPERATIONS`), `oauth.token` or `*`.
    pub operation: String,
    /// Delay before the call proceeds (or before the fault status is sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Answer with this status instead of executing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Fire this many times, then disappear; unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Share of matching calls that fire (0..=1), drawn from the sandbox's seeded RNG.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<f64>,
    /// Value of `Retry-After` (seconds) sent with the fault status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// Drop the connection without any answer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub close_connection: bool,
    /// Send `Age: <seconds>` with the answer (the executed call's, or the fault status').
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age: Option<u64>,
    /// `oauth.token` only: issue the token for this many seconds (`expires_in`, and `exp`
    /// saturating at `u64::MAX`), whatever the configured token lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u64>,
}

/// Why a posted fault was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FaultError {
    /// Unknown operation name.
    #[error("unknown operation {0:?}: use an operation name, \"oauth.token\" or \"*\"")]
    Operation(String),
    /// Status outside 100..=599.
    #[error("status must be between 100 and 599")]
    Status,
    /// Fraction outside 0..=1.
    #[error("fraction must be between 0 and 1")]
    Fraction,
    /// `count` of zero would never fire.
    #[error("count must be at least 1")]
    Count,
    /// `expires_in` on an operation other than the token endpoint.
    #[error("expires_in applies only to operation \"oauth.token\"")]
    ExpiresInOperation,
    /// `expires_in` shapes a successful token answer: no status, no dropped connection.
    #[error("expires_in shapes a successful token answer; it cannot be combined with status or close_connection")]
    ExpiresInWithFailure,
    /// Nothing to do.
    #[error(
        "a fault needs at least one of latency_ms, status, close_connection, age or expires_in"
    )]
    Empty,
}

impl FaultSpec {
    /// Checks the fault against the known operation names.
    pub(crate) fn validate(&self) -> Result<(), FaultError> {
        let op = self.operation.as_str();
        if op != ANY && op != OAUTH_TOKEN && crate::routes::operation(op).is_none() {
            return Err(FaultError::Operation(self.operation.clone()));
        }
        if matches!(self.status, Some(s) if !(100..=599).contains(&s)) {
            return Err(FaultError::Status);
        }
        if matches!(self.fraction, Some(f) if !(0.0..=1.0).contains(&f)) {
            return Err(FaultError::Fraction);
        }
        if self.count == Some(0) {
            return Err(FaultError::Count);
        }
        if self.expires_in.is_some() {
            if op != OAUTH_TOKEN {
                return Err(FaultError::ExpiresInOperation);
            }
            if self.status.is_some() || self.close_connection {
                return Err(FaultError::ExpiresInWithFailure);
            }
        }
        if self.latency_ms.is_none()
            && self.status.is_none()
            && !self.close_connection
            && self.age.is_none()
            && self.expires_in.is_none()
        {
            return Err(FaultError::Empty);
        }
        Ok(())
    }
}

/// What a fired fault asks the HTTP layer to do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct FaultAction {
    /// Wait this long first.
    pub latency: Option<Duration>,
    /// Then drop the connection.
    pub close_connection: bool,
    /// Or answer with this status (and `Retry-After`).
    pub status: Option<u16>,
    /// `Retry-After` seconds.
    pub retry_after: Option<u64>,
    /// `Age` seconds added to the answer.
    pub age: Option<u64>,
    /// Lifetime of the token issued (token endpoint only).
    pub expires_in: Option<u64>,
}

impl FaultAction {
    /// The call still executes (later, or with its answer shaped): no status, no drop.
    pub(crate) fn proceeds(&self) -> bool {
        !self.close_connection && self.status.is_none()
    }
}

/// The installed faults, in the order they were posted.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    faults: Vec<FaultSpec>,
}

impl Faults {
    /// Adds a validated fault.
    pub(crate) fn add(&mut self, spec: FaultSpec) -> Result<(), FaultError> {
        spec.validate()?;
        self.faults.push(spec);
        Ok(())
    }

    /// Removes every fault.
    pub(crate) fn clear(&mut self) {
        self.faults.clear();
    }

    /// The installed faults (for `GET /_sandbox/faults`).
    pub(crate) fn list(&self) -> &[FaultSpec] {
        &self.faults
    }

    /// Picks the fault, if any, for one call of `operation`: the first matching fault whose
    /// fraction draw succeeds fires, and a counted fault is used up.
    pub(crate) fn select(&mut self, operation: &str, rng: &mut impl Rng) -> Option<FaultAction> {
        let idx = self.faults.iter().position(|f| {
            (f.operation == ANY || f.operation == operation)
                // Draw only for fractional faults, so adding a plain fault does not shift the
                // seeded sequence that other faults see.
                && f.fraction.is_none_or(|p| rng.random_bool(p))
        })?;
        let f = &mut self.faults[idx];
        let action = FaultAction {
            latency: f.latency_ms.map(Duration::from_millis),
            close_connection: f.close_connection,
            status: f.status,
            retry_after: f.retry_after,
            age: f.age,
            expires_in: f.expires_in,
        };
        if let Some(n) = f.count.as_mut() {
            *n -= 1;
            if *n == 0 {
                self.faults.remove(idx);
            }
        }
        Some(action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn spec(op: &str) -> FaultSpec {
        FaultSpec {
            operation: op.to_owned(),
            latency_ms: None,
            status: Some(503),
            count: None,
            fraction: None,
            retry_after: None,
            close_connection: false,
            age: None,
            expires_in: None,
        }
    }

    #[test]
    fn counted_fault_fires_n_times_then_disappears() {
        let mut f = Faults::default();
        let mut rng = StdRng::seed_from_u64(1);
        f.add(FaultSpec {
            count: Some(2),
            ..spec("payment.captures.create")
        })
        .unwrap();
        assert!(f.select("payment.refunds.create", &mut rng).is_none());
        assert_eq!(
            f.select("payment.captures.create", &mut rng)
                .unwrap()
                .status,
            Some(503)
        );
        assert!(f.select("payment.captures.create", &mut rng).is_some());
        assert!(f.select("payment.captures.create", &mut rng).is_none());
        assert!(f.list().is_empty());
    }

    #[test]
    fn wildcard_matches_everything_including_the_token_endpoint() {
        let mut f = Faults::default();
        let mut rng = StdRng::seed_from_u64(1);
        f.add(spec("*")).unwrap();
        assert!(f.select("hpp.sessions.create", &mut rng).is_some());
        assert!(f.select(OAUTH_TOKEN, &mut rng).is_some());
    }

    #[test]
    fn fraction_fires_about_that_share_and_is_deterministic_per_seed() {
        let draw = |seed| {
            let mut f = Faults::default();
            let mut rng = StdRng::seed_from_u64(seed);
            f.add(FaultSpec {
                fraction: Some(0.25),
                ..spec("*")
            })
            .unwrap();
            (0..4000)
                .map(|_| f.select("payment.transactions.get", &mut rng).is_some())
                .collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7));
        let fired = a.iter().filter(|x| **x).count();
        assert!((800..1200).contains(&fired), "fired {fired} of 4000");
    }

    #[test]
    fn invalid_faults_are_refused() {
        let mut f = Faults::default();
        assert_eq!(
            f.add(spec("nope")),
            Err(FaultError::Operation("nope".into()))
        );
        assert_eq!(
            f.add(FaultSpec {
                status: Some(600),
                ..spec("*")
            }),
            Err(FaultError::Status)
        );
        assert_eq!(
            f.add(FaultSpec {
                fraction: Some(1.5),
                ..spec("*")
            }),
            Err(FaultError::Fraction)
        );
        assert_eq!(
            f.add(FaultSpec {
                status: None,
                ..spec("*")
            }),
            Err(FaultError::Empty)
        );
        assert_eq!(
            f.add(FaultSpec {
                count: Some(0),
                ..spec("*")
            }),
            Err(FaultError::Count)
        );
        assert!(f.list().is_empty());
    }

    #[test]
    fn latency_only_fault_is_a_delay() {
        let mut f = Faults::default();
        let mut rng = StdRng::seed_from_u64(1);
        f.add(FaultSpec {
            status: None,
            latency_ms: Some(200),
            ..spec("oauth.token")
        })
        .unwrap();
        let a = f.select(OAUTH_TOKEN, &mut rng).unwrap();
        assert!(a.proceeds());
        assert_eq!(a.latency, Some(Duration::from_millis(200)));
    }

    #[test]
    fn age_and_expires_in_shape_an_answer_that_still_executes() {
        let mut f = Faults::default();
        let mut rng = StdRng::seed_from_u64(1);
        f.add(FaultSpec {
            status: None,
            age: Some(u64::MAX),
            ..spec("hpp.session_records.get")
        })
        .unwrap();
        f.add(FaultSpec {
            status: None,
            expires_in: Some(u64::MAX),
            ..spec(OAUTH_TOKEN)
        })
        .unwrap();
        let a = f.select("hpp.session_records.get", &mut rng).unwrap();
        assert!(a.proceeds());
        assert_eq!(a.age, Some(u64::MAX));
        let t = f.select(OAUTH_TOKEN, &mut rng).unwrap();
        assert!(t.proceeds());
        assert_eq!(t.expires_in, Some(u64::MAX));
    }

    #[test]
    fn expires_in_only_on_a_successful_token_answer() {
        let mut f = Faults::default();
        assert_eq!(
            f.add(FaultSpec {
                status: None,
                expires_in: Some(60),
                ..spec("payment.transactions.get")
            }),
            Err(FaultError::ExpiresInOperation)
        );
        assert_eq!(
            f.add(FaultSpec {
                expires_in: Some(60),
                ..spec(OAUTH_TOKEN)
            }),
            Err(FaultError::ExpiresInWithFailure)
        );
        assert_eq!(
            f.add(FaultSpec {
                status: None,
                close_connection: true,
                expires_in: Some(60),
                ..spec(OAUTH_TOKEN)
            }),
            Err(FaultError::ExpiresInWithFailure)
        );
        assert!(f.list().is_empty());
    }
}
