//! A publication's data as every layer carries it: a JSON value kept as its
//! validated text. It depends on nothing of the gateway, so the broker (the lowest
//! layer) and the shards share one type without the broker knowing about frames.

use serde_json::value::RawValue;
use std::sync::Arc;

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
    /// numbers beyond f64 (`1e400`) and nesting deeper than serde_json's limit of
    /// 128. Both would reach MessagePack subscribers as `null` and break JSON
    /// clients built on serde_json. Only a full parse applies both rules (skipping
    /// a value, as `IgnoredAny` does, checks neither); it runs once per publication.
    pub fn from_raw(raw: Box<RawValue>) -> Result<Payload, serde_json::Error> {
        serde_json::from_str::<serde_json::Value>(raw.get())?;
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
