//! JSON parsing that refuses an object naming a member twice.
//!
//! RFC 8259 leaves duplicate names to the parser, and parsers disagree:
//! serde_json keeps the last, others the first or fail. A batch item
//! `{"op":"put",…,"op":"delete"}` would then mean one thing to a proxy or
//! audit log and another to us. I-JSON (RFC 7493 §2.3) forbids duplicates,
//! so a request body that has them is refused instead of guessed at; the
//! token parser refuses duplicate claims for the same reason.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Parse `bytes` as one JSON value; an object with a repeated member name
/// is an error, like a syntax error.
pub fn parse(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Strict.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// Builds a [`Value`] as `Value`'s own `Deserialize` does, checking each
/// object's member names on the way.
struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // The JSON grammar has no NaN or infinity, and serde_json turns
        // out-of-range literals into an error, so this never yields null.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element_seed(Strict)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            if members.contains_key(&name) {
                let shown: String = name.chars().take(64).collect();
                return Err(de::Error::custom(format_args!(
                    "the member name {shown:?} appears twice in one object"
                )));
            }
            let value = map.next_value_seed(Strict)?;
            members.insert(name, value);
        }
        Ok(Value::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn duplicate_names_are_refused_at_any_depth() {
        for body in [
            r#"{"a":1,"a":1}"#,
            r#"{"op":"put","value":1,"op":"delete"}"#,
            r#"[{"x":{"y":1,"y":2}}]"#,
            // Escapes spell the same name: still a duplicate.
            r#"{"a":1,"\u0061":2}"#,
        ] {
            let err = parse(body.as_bytes()).unwrap_err();
            assert!(err.to_string().contains("appears twice"), "{body}: {err}");
        }
    }

    #[test]
    fn everything_else_parses_as_serde_json_does() {
        for body in [
            r#"{"a":1,"b":{"a":2},"c":[{"a":3},{"a":4}]}"#,
            r#"[1,-2,3.5,1e300,18446744073709551615,-9223372036854775808]"#,
            r#""text with \"escapes\" \u00e9""#,
            "null",
            " true ",
            "{}",
            "[]",
        ] {
            let ours = parse(body.as_bytes()).unwrap();
            let theirs: Value = serde_json::from_str(body).unwrap();
            assert_eq!(ours, theirs, "{body}");
        }
        for bad in ["", "{", "[1,]", "1 2", "{\"a\":1}x", "nul", "1e999"] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad:?}");
            assert!(serde_json::from_str::<Value>(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn nesting_is_bounded_like_serde_json() {
        for depth in [127, 128, 129, 100_000] {
            let body = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            assert_eq!(
                parse(body.as_bytes()).is_ok(),
                serde_json::from_str::<Value>(&body).is_ok(),
                "{depth}"
            );
        }
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| Value::Number(n.into())),
            any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
            ".{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(".{0,4}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn parses_what_serde_json_parses(value in json_value()) {
            // Compared with serde_json's own reading rather than `value`:
            // both read floats the same (not always to the bit written).
            let bytes = serde_json::to_vec(&value).unwrap();
            let theirs: Value = serde_json::from_slice(&bytes).unwrap();
            prop_assert_eq!(parse(&bytes).unwrap(), theirs);
        }
    }
}
