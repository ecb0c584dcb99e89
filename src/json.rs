//! Strict JSON for the bodies of money calls: one object, no duplicated key at any depth.
//!
//! Ratepay and the gateway must read the same body the same way. With a duplicated key the
//! readers disagree (serde takes the first `gross_amount` or fails, Ratepay's parser may take
//! the last), so the audit could record one amount while Ratepay executes another. Such a body
//! is refused before anything leaves the gateway. serde_json's recursion limit (128) bounds the
//! depth; keys are compared after unescaping (`"a"` and `"\u0061"` are the same key).

use std::{collections::HashSet, fmt};

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// Checks that `body` is exactly one JSON object whose objects (at every depth) have unique
/// keys. The error says what is wrong and where (line and column).
pub fn check_object(body: &[u8]) -> Result<(), String> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        None => return Err("the body is empty".into()),
        Some(_) => return Err("the body is not a JSON object".into()),
    }
    serde_json::from_slice::<Strict>(body)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A JSON value walked for duplicated keys and dropped.
struct Strict;

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Strict, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if seen.contains(&key) {
                let shown: String = key.chars().take(64).collect();
                return Err(de::Error::custom(format_args!("duplicate key \"{shown}\"")));
            }
            seen.insert(key);
            map.next_value::<Strict>()?;
        }
        Ok(Strict)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        while seq.next_element::<Strict>()?.is_some() {}
        Ok(Strict)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_str<E>(self, _: &str) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_none<E>(self) -> Result<Strict, E> {
        Ok(Strict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_object_with_unique_keys_passes() {
        assert!(check_object(
            br#" {"gross_amount":1.00,"items":[{"a":1},{"a":2}],"x":{"a":null}} "#
        )
        .is_ok());
        assert!(check_object(b"{}").is_ok());
    }

    #[test]
    fn duplicates_at_any_depth_and_non_objects_are_refused() {
        let e = check_object(
            br#"{"gross_amount":1.00,"partner_operation_id":"op","gross_amount":400.00}"#,
        )
        .unwrap_err();
        assert!(e.contains("duplicate key \"gross_amount\""), "{e}");
        assert!(e.contains("column"), "{e}");
        let e = check_object(br#"{"items":[{"name":"a","name":"b"}]}"#).unwrap_err();
        assert!(e.contains("\"name\""), "{e}");
        // The same key once escaped is still the same key.
        assert!(check_object(br#"{"gross_amount":1,"gross\u005famount":2}"#).is_err());
        for bad in [
            &b""[..],
            b"  ",
            b"[]",
            b"1",
            b"\"x\"",
            b"{\"a\":1} {}",
            b"{\"a\":",
            b"null",
        ] {
            assert!(
                check_object(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let mut body = b"{\"a\":".to_vec();
        body.extend(std::iter::repeat_n(b'[', 100_000));
        assert!(check_object(&body).is_err());
    }
}
