//! Audit body field extraction (`audit::CancellationFields::from_body`,
//! `audit::ratepay_cancellation_id`) on any request or response body.
//!
//! Invariants: never panics; kept values respect their length caps; nothing is taken from a
//! body that is not a JSON object; and for an object with unique keys the audit records
//! exactly what a plain JSON parser sees (a string's content, a number's text), never less.
#![no_main]

use std::fmt;

use libfuzzer_sys::fuzz_target;
use ratepay_gateway::audit::{ratepay_cancellation_id, CancellationFields};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// A JSON object's members in order, duplicates kept (serde_json's `Map` keeps the last).
struct Members(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Members, A::Error> {
                let mut v = Vec::new();
                while let Some(e) = m.next_entry::<String, Box<RawValue>>()? {
                    v.push(e);
                }
                Ok(Members(v))
            }
        }
        d.deserialize_map(V)
    }
}

/// What the audit should keep of one member: a string's content or a number's text verbatim
/// (no float parse: `1e400` or `0.1000000000000000055` stay as written), capped.
fn expected(raw: &RawValue, max: usize) -> Option<String> {
    let t = raw.get();
    let text = match t.as_bytes().first()? {
        b'"' => serde_json::from_str::<String>(t).ok()?,
        b'-' | b'0'..=b'9' => t.to_owned(),
        _ => return None,
    };
    (text.len() <= max).then_some(text)
}

fuzz_target!(|data: &[u8]| {
    let f = CancellationFields::from_body(data);
    let id = ratepay_cancellation_id(data);
    assert!(f.gross_amount.as_ref().is_none_or(|a| a.len() <= 32));
    assert!(f
        .partner_operation_id
        .as_ref()
        .is_none_or(|a| a.len() <= 255));
    assert!(f.partner_shop_id.as_ref().is_none_or(|a| a.len() <= 255));
    assert!(id.as_ref().is_none_or(|a| a.len() <= 255));

    // Not UTF-8, so not JSON (RFC 8259); serde_json's typed parse still reads the wanted
    // fields when the bad bytes sit in a member it skips, which only ever keeps more.
    if std::str::from_utf8(data).is_err() {
        return;
    }
    let first = data.iter().find(|b| !b.is_ascii_whitespace());
    let members = serde_json::from_slice::<Members>(data)
        .ok()
        .filter(|_| first == Some(&b'{'));
    let Some(Members(members)) = members else {
        assert_eq!(
            f,
            CancellationFields::default(),
            "fields taken from a non-object"
        );
        assert_eq!(id, None);
        return;
    };
    let mut names: Vec<&str> = members.iter().map(|(k, _)| k.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        // Duplicated keys: the request path refuses such bodies before auditing (issue 13).
        return;
    }
    let member = |name: &str| members.iter().find(|(k, _)| k == name).map(|(_, v)| &**v);
    assert_eq!(
        f.gross_amount,
        member("gross_amount").and_then(|v| expected(v, 32))
    );
    assert_eq!(
        f.partner_operation_id,
        member("partner_operation_id").and_then(|v| expected(v, 255))
    );
    assert_eq!(
        f.partner_shop_id,
        member("partner_shop_id").and_then(|v| expected(v, 255))
    );
    let want_id = member("ratepay_cancellation_id")
        .and_then(|v| {
            serde_json::from_str::<Option<String>>(v.get())
                .ok()
                .flatten()
        })
        .filter(|s| s.len() <= 255);
    // A non-string id makes the typed response parse fail as a whole: nothing is kept.
    assert_eq!(id, want_id);
});
