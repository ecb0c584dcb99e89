//! Route matcher and path validator (`routes::match_route`, `routes::path_known`) on any path.
//!
//! Invariants: never panics; a matched route belongs to the method asked, its ids are the
//! path's own segments and well-formed, and a path with `%`, a dot or an empty segment never
//! matches; `path_known` agrees with `match_route`.
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use ratepay_gateway::routes::{match_route, operation, path_known, PathError};

const METHODS: [Method; 6] = [
    Method::GET,
    Method::POST,
    Method::PATCH,
    Method::PUT,
    Method::DELETE,
    Method::HEAD,
];

fn valid_id(s: &str) -> bool {
    (1..=127).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let method = &METHODS[usize::from(m) % METHODS.len()];
    let path = String::from_utf8_lossy(rest);
    let segs: Vec<&str> = path.strip_prefix('/').unwrap_or(&path).split('/').collect();
    let known = path_known(&path);
    match match_route(method, &path) {
        Ok(Some(m)) => {
            assert_eq!(m.operation.method, *method);
            assert!(known, "matched but not known: {path:?}");
            assert!(std::ptr::eq(
                operation(m.operation.name).unwrap(),
                m.operation
            ));
            assert!(!path.contains('%'));
            assert!(segs
                .iter()
                .all(|s| !s.is_empty() && *s != "." && *s != ".."));
            for id in [
                &m.params.transaction_id,
                &m.params.resource_id,
                &m.params.session_id,
            ]
            .into_iter()
            .flatten()
            {
                assert!(valid_id(id), "bad id {id:?} accepted in {path:?}");
                assert!(segs.contains(&id.as_str()), "id {id:?} not from {path:?}");
            }
        }
        Ok(None) => {
            assert!(!path.contains('%'));
        }
        Err(e) => {
            assert!(!known, "refused but known: {path:?}");
            match e {
                PathError::Encoded => assert!(path.contains('%')),
                PathError::DotSegment => assert!(segs.iter().any(|s| *s == "." || *s == "..")),
                PathError::EmptySegment => assert!(segs.iter().any(|s| s.is_empty())),
                PathError::BadId(_) => assert!(segs.iter().any(|s| !valid_id(s))),
            }
        }
    }
    // Deterministic: the same path routes the same way twice.
    assert_eq!(
        match_route(method, &path).map(|m| m.map(|m| m.operation.name)),
        match_route(method, &path).map(|m| m.map(|m| m.operation.name))
    );
});
