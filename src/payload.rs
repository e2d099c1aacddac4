//! A publication's data as every layer carries it: a JSON value kept as its
//! validated text. It depends on nothing of the gateway, so the broker (the lowest
//! layer) and the shards share one type without the broker knowing about frames.

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::sync::Arc;

/// Deepest nesting of arrays and objects a payload may have (`[[1]]` is 2): the
/// `message` frame around it adds one level, and serde_json (like many parsers)
/// reads at most 127.
pub const MAX_DEPTH: usize = 126;

/// Reads a JSON value without building it and answers how deeply its arrays and
/// objects nest (a scalar is 0). Numbers still go through serde_json's own parsing,
/// which refuses those beyond an f64 (`1e400`), and serde_json's recursion limit
/// still guards the stack; nothing is allocated per value (keys are skipped,
/// strings borrowed or dropped).
struct NestingDepth;

impl<'de> Visitor<'de> for NestingDepth {
    type Value = usize;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<usize, E> {
        Ok(0)
    }

    fn visit_i64<E>(self, _: i64) -> Result<usize, E> {
        Ok(0)
    }

    fn visit_u64<E>(self, _: u64) -> Result<usize, E> {
        Ok(0)
    }

    fn visit_f64<E>(self, _: f64) -> Result<usize, E> {
        Ok(0)
    }

    fn visit_str<E>(self, _: &str) -> Result<usize, E> {
        Ok(0)
    }

    fn visit_unit<E>(self) -> Result<usize, E> {
        Ok(0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<usize, A::Error> {
        let mut deepest = 0;
        while let Some(depth) = items.next_element_seed(NestingDepth)? {
            deepest = deepest.max(depth);
        }
        Ok(deepest + 1)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut members: A) -> Result<usize, A::Error> {
        let mut deepest = 0;
        while members.next_key::<IgnoredAny>()?.is_some() {
            deepest = deepest.max(members.next_value_seed(NestingDepth)?);
        }
        Ok(deepest + 1)
    }
}

impl<'de> DeserializeSeed<'de> for NestingDepth {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        deserializer.deserialize_any(self)
    }
}

/// A publication's data: a JSON value kept as its validated text, so relaying it
/// never re-parses it (only the MessagePack encoding parses it, once).
#[derive(Clone, Debug)]
pub struct Payload(Arc<RawValue>);

impl Payload {
    /// Validates JSON text and wraps it.
    pub fn from_json(text: &str) -> Result<Payload, serde_json::Error> {
        Payload::from_raw(serde_json::from_str(text)?)
    }

    /// Wraps a value that is already parsed (from a MessagePack client, whose nesting
    /// serde_json's own limit has not seen).
    pub fn from_value(value: &serde_json::Value) -> Result<Payload, serde_json::Error> {
        Payload::from_raw(serde_json::value::to_raw_value(value)?)
    }

    /// Wraps a raw JSON value taken from a larger document.
    ///
    /// Refuses what subscribers could not decode although it is valid JSON text:
    /// numbers beyond f64 (`1e400`) and nesting deeper than [`MAX_DEPTH`]. Both
    /// would reach MessagePack subscribers as `null` or break JSON clients built on
    /// serde_json. Only a parse of every number applies the first rule (skipping a
    /// value, as `IgnoredAny` does, does not), but no tree is built: it runs once
    /// per publication.
    pub fn from_raw(raw: Box<RawValue>) -> Result<Payload, serde_json::Error> {
        let mut reader = serde_json::Deserializer::from_str(raw.get());
        let depth = NestingDepth.deserialize(&mut reader)?;
        reader.end()?;
        if depth > MAX_DEPTH {
            let msg = format!("data nested deeper than {MAX_DEPTH} levels");
            return Err(<serde_json::Error as serde::de::Error>::custom(msg));
        }
        Ok(Payload(Arc::from(raw)))
    }

    /// Wraps text taken from a payload before (the history store keeps its
    /// publications as text): it is checked to be JSON again, but not held to
    /// [`Payload::from_raw`]'s rules, which it passed when it was published.
    pub fn from_stored(text: String) -> Result<Payload, serde_json::Error> {
        RawValue::from_string(text).map(|raw| Payload(Arc::from(raw)))
    }

    /// The JSON text.
    pub fn json(&self) -> &RawValue {
        &self.0
    }

    /// Length of the JSON text in bytes (what size limits apply to).
    pub fn len(&self) -> usize {
        self.0.get().len()
    }

    /// Whether the JSON text is empty (never, for a valid value).
    pub fn is_empty(&self) -> bool {
        self.0.get().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::{Payload, MAX_DEPTH};

    fn nested(depth: usize) -> String {
        format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn the_limits_hold_without_building_a_tree() {
        for ok in [
            "null",
            "true",
            "-0",
            "1e308",
            "-1.7976931348623157e308",
            "18446744073709551615",
            "-9223372036854775808",
            r#""\u00e9 \" \\""#,
            r#"{"a":[1,{"b":null}],"c":{}}"#,
            &nested(MAX_DEPTH),
            &format!(r#"{{"k":{}}}"#, nested(MAX_DEPTH - 1)),
        ] {
            assert!(Payload::from_json(ok).is_ok(), "{ok}");
        }
        for bad in [
            "1e400",
            "-1.8e308",
            &format!("1{}", "0".repeat(400)),
            &nested(MAX_DEPTH + 1),
            &format!(r#"{{"k":{}}}"#, nested(MAX_DEPTH)),
            "[1,]",
            "{\"a\":1} 2",
        ] {
            assert!(Payload::from_json(bad).is_err(), "{bad}");
        }
    }
}
