//! A caller's `operations`, resolved against the route table once, at load.
//!
//! The file lists patterns (`*`, an API or group prefix such as `payment.*`, or an exact name
//! such as `payment.cancellations.create`); a pattern that names no operation is refused at
//! load. Each pattern becomes the operations it names, so the policy check on the request path
//! ([`OperationMatcher::allows`]) compares references into [`routes::OPERATIONS`] and does no
//! string work.

use std::fmt;

use crate::routes::{self, Operation};

/// One entry of a caller's `operations`.
#[derive(Clone)]
pub enum OperationPattern {
    /// `*`: every operation.
    All,
    /// `<prefix>.*`, e.g. `payment.*` or `hpp.session_records.*`: every operation whose name
    /// starts with `<prefix>.`; holds the prefix with its dot and the operations it names.
    Prefix(String, Vec<&'static Operation>),
    /// One operation by name.
    Exact(&'static Operation),
}

impl OperationPattern {
    /// Resolves `text` against the route table; the message says what was expected.
    pub fn parse(text: &str) -> Result<OperationPattern, String> {
        if text == "*" {
            return Ok(OperationPattern::All);
        }
        if let Some(op) = routes::operation(text) {
            return Ok(OperationPattern::Exact(op));
        }
        if let Some(group) = text.strip_suffix(".*") {
            let prefix = format!("{group}.");
            let ops: Vec<_> = routes::OPERATIONS
                .iter()
                .filter(|o| o.name.starts_with(&prefix))
                .collect();
            if !ops.is_empty() {
                return Ok(OperationPattern::Prefix(prefix, ops));
            }
        }
        Err(format!("unknown operation {text:?}; expected \"*\", an API prefix such as \"payment.*\", or a name such as \"payment.cancellations.create\""))
    }

    /// Whether the pattern names `op`.
    fn names(&self, op: &Operation) -> bool {
        match self {
            OperationPattern::All => true,
            OperationPattern::Prefix(_, ops) => ops.iter().any(|o| std::ptr::eq(*o, op)),
            OperationPattern::Exact(o) => std::ptr::eq(*o, op),
        }
    }
}

impl fmt::Display for OperationPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OperationPattern::All => f.write_str("*"),
            OperationPattern::Prefix(prefix, _) => write!(f, "{prefix}*"),
            OperationPattern::Exact(op) => f.write_str(op.name),
        }
    }
}

impl fmt::Debug for OperationPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_string(), f)
    }
}

/// A caller's operation policy: its patterns, and every operation they name.
#[derive(Clone)]
pub struct OperationMatcher {
    patterns: Vec<OperationPattern>,
    /// `*` was listed: every operation, the gateway's own included.
    all: bool,
    /// The route-table operations some pattern names.
    allowed: Vec<&'static Operation>,
}

impl OperationMatcher {
    /// The policy of these patterns.
    pub fn new(patterns: Vec<OperationPattern>) -> OperationMatcher {
        let all = patterns.iter().any(|p| matches!(p, OperationPattern::All));
        let allowed = routes::OPERATIONS
            .iter()
            .filter(|op| patterns.iter().any(|p| p.names(op)))
            .collect();
        OperationMatcher {
            patterns,
            all,
            allowed,
        }
    }

    /// `*`: every operation.
    pub fn all() -> OperationMatcher {
        OperationMatcher::new(vec![OperationPattern::All])
    }

    /// Parses every pattern; the error lists each unknown one.
    pub fn parse<S: AsRef<str>>(texts: &[S]) -> Result<OperationMatcher, Vec<String>> {
        let mut patterns = Vec::new();
        let mut unknown = Vec::new();
        for t in texts {
            match OperationPattern::parse(t.as_ref()) {
                Ok(p) => patterns.push(p),
                Err(e) => unknown.push(e),
            }
        }
        if unknown.is_empty() {
            Ok(OperationMatcher::new(patterns))
        } else {
            Err(unknown)
        }
    }

    /// Whether the policy allows `op`.
    pub fn allows(&self, op: &Operation) -> bool {
        self.all || self.allowed.iter().any(|o| std::ptr::eq(*o, op))
    }

    /// The patterns as configured.
    pub fn patterns(&self) -> &[OperationPattern] {
        &self.patterns
    }
}

impl fmt::Debug for OperationMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.patterns).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(name: &str) -> &'static Operation {
        routes::operation(name).unwrap()
    }

    fn allowed(m: &OperationMatcher) -> Vec<&'static str> {
        routes::OPERATIONS
            .iter()
            .filter(|o| m.allows(o))
            .map(|o| o.name)
            .collect()
    }

    #[test]
    fn star_allows_every_operation_the_gateways_own_included() {
        let m = OperationMatcher::parse(&["*"]).unwrap();
        assert_eq!(allowed(&m).len(), routes::OPERATIONS.len());
        assert!(m.allows(&routes::GATEWAY_OAUTH_TOKEN));
        assert_eq!(format!("{m:?}"), r#"["*"]"#);
    }

    #[test]
    fn a_prefix_allows_exactly_the_operations_under_it() {
        let m = OperationMatcher::parse(&["payment.*"]).unwrap();
        let expected: Vec<_> = routes::OPERATIONS
            .iter()
            .filter(|o| o.api == routes::Api::Payment)
            .map(|o| o.name)
            .collect();
        assert_eq!(allowed(&m), expected);
        assert!(!m.allows(op("status.transactions.get")));
        assert!(!m.allows(&routes::GATEWAY_OAUTH_TOKEN));

        let m = OperationMatcher::parse(&["hpp.session_records.*"]).unwrap();
        assert_eq!(
            allowed(&m),
            ["hpp.session_records.list", "hpp.session_records.get"]
        );
        assert_eq!(format!("{m:?}"), r#"["hpp.session_records.*"]"#);
    }

    #[test]
    fn an_exact_name_allows_that_operation_only() {
        let m = OperationMatcher::parse(&["payment.cancellations.create"]).unwrap();
        assert_eq!(allowed(&m), ["payment.cancellations.create"]);
        let both = OperationMatcher::parse(&["payment.refunds.create", "status.transactions.get"])
            .unwrap();
        assert_eq!(
            allowed(&both),
            ["payment.refunds.create", "status.transactions.get"]
        );
    }

    #[test]
    fn unknown_names_and_prefixes_are_refused_each_named() {
        let e = OperationMatcher::parse(&[
            "payment.nope",
            "*",
            "billing.*",
            "payment.transactions.create.*",
            ".*",
            "payment.",
        ])
        .unwrap_err();
        assert_eq!(e.len(), 5, "{e:?}");
        for (msg, name) in e.iter().zip([
            "payment.nope",
            "billing.*",
            "payment.transactions.create.*",
            ".*",
            "payment.",
        ]) {
            assert!(
                msg.starts_with(&format!("unknown operation {name:?}; expected \"*\"")),
                "{msg}"
            );
        }
        // A prefix names operations whose name continues after a dot, not any string prefix.
        assert!(OperationPattern::parse("payment.refund.*").is_err());
    }
}
