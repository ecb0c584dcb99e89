//! The messages instances send each other on the `<prefix>events` channel, as plain text:
//! `pause <api> <ms>` (Ratepay answered 429 on that API: hold calls for this long) and
//! `invalidate <transaction id>` (a cancellation succeeded: drop that transaction's cached
//! session records). Anything else is ignored with a warning, never trusted further.

use std::time::Duration;

use crate::routes::{self, Api};

/// Longest pause a message may impose (Ratepay's `Retry-After` is capped the same way).
const MAX_PAUSE: Duration = Duration::from_secs(86_400);

/// One message between instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Hold calls to `api` for this long.
    Pause(Api, Duration),
    /// Drop the cached records of this transaction.
    Invalidate(String),
}

impl Event {
    /// The wire text.
    pub fn encode(&self) -> String {
        match self {
            Event::Pause(api, d) => format!("pause {} {}", api.name(), d.as_millis()),
            Event::Invalidate(tx) => format!("invalidate {tx}"),
        }
    }

    /// Parses the wire text; `None` for anything malformed.
    pub fn parse(text: &str) -> Option<Event> {
        let mut parts = text.split(' ');
        let event = match (parts.next()?, parts.next()?, parts.next()) {
            ("pause", api, Some(ms)) => {
                let api = Api::ALL.into_iter().find(|a| a.name() == api)?;
                let ms: u64 = ms.parse().ok()?;
                Event::Pause(api, Duration::from_millis(ms).min(MAX_PAUSE))
            }
            ("invalidate", tx, None) if routes::valid_id(tx) => Event::Invalidate(tx.to_owned()),
            _ => return None,
        };
        parts.next().is_none().then_some(event)
    }
}

/// What an instance does with its peers' messages (the gateway applies them to the rate
/// limits and the cache it is currently running).
pub trait EventSink: Send + Sync {
    /// Another instance saw Ratepay's 429 on `api`.
    fn pause(&self, api: Api, pause: Duration);
    /// Another instance saw a cancellation of `transaction` succeed.
    fn invalidate(&self, transaction: &str);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_the_malformed() {
        for e in [
            Event::Pause(Api::Payment, Duration::from_millis(1500)),
            Event::Invalidate("tx-123_A".into()),
        ] {
            assert_eq!(Event::parse(&e.encode()), Some(e));
        }
        assert_eq!(
            Event::parse("pause payment 999999999999"),
            Some(Event::Pause(Api::Payment, MAX_PAUSE))
        );
        for bad in [
            "",
            "pause",
            "pause nowhere 10",
            "pause payment -1",
            "pause payment 10 extra",
            "invalidate",
            "invalidate a/b",
            "invalidate a b",
            "flush all",
        ] {
            assert_eq!(Event::parse(bad), None, "{bad:?}");
        }
    }
}
