//! What identifies an entry ([`CacheKey`]): upstream, X-Partner and the path with its query
//! sorted, so partners never share one.

use std::sync::Arc;

use crate::routes::Api;

/// What identifies an entry: never shared across upstreams or partners.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// The upstream API.
    pub upstream: Api,
    /// The X-Partner sent to Ratepay (`None`: no X-Partner).
    pub partner: Option<Arc<str>>,
    /// Path, plus `?` and the sorted query when there is one.
    pub target: String,
}

impl CacheKey {
    /// A key for `path` and `query` (normalised) as seen by `partner` on `upstream`.
    pub fn new(
        upstream: Api,
        partner: Option<Arc<str>>,
        path: &str,
        query: Option<&str>,
    ) -> CacheKey {
        let query = query.map(normalise_query).unwrap_or_default();
        let target = if query.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{query}")
        };
        CacheKey {
            upstream,
            partner,
            target,
        }
    }

    pub(super) fn bytes(&self) -> usize {
        self.target.len() + self.partner.as_ref().map_or(0, |p| p.len())
    }
}

/// The query's parameters in sorted order, empty pieces dropped: `b=2&a=1` and `a=1&b=2&`
/// name the same entry. Values are kept byte for byte (no decoding).
pub fn normalise_query(query: &str) -> String {
    let mut pairs: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    pairs.sort_unstable_by(|a, b| {
        let (ka, va) = a.split_once('=').unwrap_or((a, ""));
        let (kb, vb) = b.split_once('=').unwrap_or((b, ""));
        (ka, va).cmp(&(kb, vb))
    });
    pairs.join("&")
}

pub(super) fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}
