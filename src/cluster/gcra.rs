//! Shared GCRA buckets in Redis: one Lua script checks every bucket a request spends from (the
//! caller's, or the operation's and the API's) against Redis's own clock (`TIME`, so instances
//! need no synchronised clocks), and spends from all of them or from none. One round trip per
//! layer per request, whatever the number of buckets.
//!
//! Chosen over leased local budgets because it is exact: N instances see one bucket, so the
//! fleet admits the configured rate (±0 beyond the round trip's reordering) however unevenly the
//! load is spread, where a lease scheme trades accuracy for round trips. Its cost is one
//! loopback round trip (tens of µs; see the README's cluster benchmark) per limited layer.
//!
//! Each bucket stores its theoretical arrival time (µs since the epoch, Redis's clock) and
//! expires when it is indistinguishable from a fresh bucket, so idle callers cost nothing.

use std::time::Duration;

use redis::Script;

use crate::config::Rate;

/// The GCRA function, shared by [`script`] and the idempotency lease (which spends the
/// upstream buckets in the same round trip as it takes the lease). `spend(keys, args)` takes
/// bucket i's key from `keys[i]`, its emission interval in µs (may be fractional) from
/// `args[2i-1]` and its burst from `args[2i]`. Returns `{1, i, remaining, first}` (admitted;
/// `i` the bucket with the least headroom, `first` the headroom of bucket 1) or
/// `{0, i, wait_us, 0}` (bucket `i` refused; nothing was spent).
pub const SPEND_FN: &str = r#"
local function spend(keys, args)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local tats = {}
  local best_i, best_rem, first = 0, -1, 0
  for i = 1, #keys do
    local interval = tonumber(args[2 * i - 1])
    local burst = tonumber(args[2 * i])
    local tat = tonumber(redis.call('GET', keys[i]) or now) or now
    if tat < now then tat = now end
    local new_tat = tat + interval
    local allow_at = new_tat - interval * burst
    if now < allow_at then
      return {0, i, math.ceil(allow_at - now), 0}
    end
    tats[i] = new_tat
    local rem = math.floor((now - allow_at) / interval)
    if i == 1 then first = rem end
    if best_rem < 0 or rem < best_rem then best_i, best_rem = i, rem end
  end
  for i = 1, #keys do
    local ttl_ms = math.ceil((tats[i] - now) / 1000) + 1
    redis.call('SET', keys[i], string.format('%.3f', tats[i]), 'PX', ttl_ms)
  end
  return {1, best_i, best_rem, first}
end
"#;

/// The compiled script (its SHA is computed once; `EVALSHA`, `EVAL` on a cold server).
pub fn script() -> Script {
    Script::new(&format!("{SPEND_FN}\nreturn spend(KEYS, ARGV)"))
}

/// One bucket to spend from.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// The full Redis key.
    pub key: String,
    /// Its rate.
    pub rate: Rate,
}

/// What the script decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted; `bucket` (an index into the buckets given) has the least headroom left.
    Admitted {
        /// Index of the tightest bucket.
        bucket: usize,
        /// Requests it admits at once now.
        remaining: u32,
        /// Requests the first bucket admits at once now.
        first: u32,
    },
    /// Refused by `bucket`, which admits again after `wait`.
    Refused {
        /// Index of the refusing bucket.
        bucket: usize,
        /// Time until it admits one request.
        wait: Duration,
    },
}

/// The script's arguments for `buckets`.
pub fn args(buckets: &[Bucket]) -> Vec<String> {
    let mut out = Vec::with_capacity(buckets.len() * 2);
    for b in buckets {
        let interval_us = 1e6 / b.rate.per_sec.max(f64::MIN_POSITIVE);
        out.push(format!("{interval_us:.6}"));
        out.push(b.rate.burst.max(1).to_string());
    }
    out
}

/// Reads the script's reply; `None` when it is not what the script returns.
pub fn verdict(reply: &[i64], buckets: usize) -> Option<Verdict> {
    let [ok, i, n, first] = *reply else {
        return None;
    };
    let count = |v: i64| u32::try_from(v.max(0)).unwrap_or(u32::MAX);
    let bucket = usize::try_from(i).ok()?.checked_sub(1)?;
    if bucket >= buckets {
        return None;
    }
    match ok {
        1 => Some(Verdict::Admitted {
            bucket,
            remaining: count(n),
            first: count(first),
        }),
        0 => Some(Verdict::Refused {
            bucket,
            // A day at most: no configurable rate waits longer for one request.
            wait: Duration::from_micros(u64::try_from(n.max(0)).unwrap_or(0))
                .min(Duration::from_secs(86_400)),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_read_and_bounded() {
        assert_eq!(
            verdict(&[1, 2, 5, 7], 2),
            Some(Verdict::Admitted {
                bucket: 1,
                remaining: 5,
                first: 7
            })
        );
        assert_eq!(
            verdict(&[0, 1, 250_000, 0], 1),
            Some(Verdict::Refused {
                bucket: 0,
                wait: Duration::from_millis(250)
            })
        );
        assert_eq!(
            verdict(&[0, 1, i64::MAX, 0], 1),
            Some(Verdict::Refused {
                bucket: 0,
                wait: Duration::from_secs(86_400)
            })
        );
        for bad in [
            &[][..],
            &[1, 0, 1, 0],
            &[1, 3, 1, 0],
            &[2, 1, 1, 0],
            &[1, 1, 1],
        ] {
            assert_eq!(verdict(bad, 2), None, "{bad:?}");
        }
        let a = args(&[Bucket {
            key: "k".into(),
            rate: Rate {
                per_sec: 4.0,
                burst: 3,
            },
        }]);
        assert_eq!(a, ["250000.000000", "3"]);
    }
}
