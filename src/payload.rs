//! A publication's data as every layer carries it: a JSON value kept as its
//! validated text. It depends on nothing of the gateway, so the broker (the lowest
//! layer) and the shards share one type without the broker knowing about frames.

use serde_json::value::RawValue;
use std::sync::Arc;

/// Deepest nesting of arrays and objects a payload may have (`[[1]]` is 2): the
/// `message` frame around it adds one level, and serde_json (like many parsers)
/// reads at most 127.
pub const MAX_DEPTH: usize = 126;

/// How deeply arrays and objects nest in a value (a scalar is 0).
fn depth(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(members) => 1 + members.values().map(depth).max().unwrap_or(0),
        _ => 0,
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
    /// serde_json. Only a full parse applies both rules (skipping a value, as
    /// `IgnoredAny` does, checks neither); it runs once per publication.
    pub fn from_raw(raw: Box<RawValue>) -> Result<Payload, serde_json::Error> {
        let value = serde_json::from_str::<serde_json::Value>(raw.get())?;
        if depth(&value) > MAX_DEPTH {
            let msg = format!("data nested deeper than {MAX_DEPTH} levels");
            return Err(<serde_json::Error as serde::de::Error>::custom(msg));
        }
        Ok(Payload(Arc::from(raw)))
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
