//! For tests of code that speaks the protocol (this crate's, the gateway's, the
//! fuzz checks): frame and value equality up to float rounding, and, with the
//! `proptest` feature, a strategy for JSON values of every kind. Behind the
//! `testing` feature, so it is never part of a build that does not ask for it.

use serde_json::Value;

use crate::{ClientFrame, ServerFrame};

/// Decoded equality of JSON values, with floats compared to a relative 1e-15:
/// decimal text is not always rounded back to the same bits by serde_json's fast
/// float parser, so a float may change in its last bit through a JSON round trip.
pub fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x == y || (x - y).abs() <= 1e-15 * x.abs().max(y.abs()),
            _ => false,
        },
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_value(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
        }
        _ => a == b,
    }
}

/// Client frames equal, a publication's data by [`same_value`].
pub fn same_client_frame(a: &ClientFrame, b: &ClientFrame) -> bool {
    match (a, b) {
        (
            ClientFrame::Publish {
                id,
                channel,
                data,
                idempotency_key,
            },
            ClientFrame::Publish {
                id: id2,
                channel: channel2,
                data: data2,
                idempotency_key: key2,
            },
        ) => id == id2 && channel == channel2 && idempotency_key == key2 && same_value(data, data2),
        _ => a == b,
    }
}

/// Server frames equal, a message's data by [`same_value`].
pub fn same_server_frame(a: &ServerFrame, b: &ServerFrame) -> bool {
    match (a, b) {
        (
            ServerFrame::Message {
                channel,
                seq,
                offset,
                epoch,
                data,
            },
            ServerFrame::Message {
                channel: channel2,
                seq: seq2,
                offset: offset2,
                epoch: epoch2,
                data: data2,
            },
        ) => channel == channel2 && seq == seq2 && offset == offset2 && epoch == epoch2 && same_value(data, data2),
        _ => a == b,
    }
}

/// JSON values of every kind, nested up to four levels, with non-integer numbers
/// drawn from `floats` (a test that re-parses decimal text near `f64::MAX` may want
/// to stay below it).
#[cfg(feature = "proptest")]
pub fn json_value(
    floats: impl proptest::strategy::Strategy<Value = f64> + 'static,
) -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        floats.prop_map(Value::from),
        "\\PC{0,16}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map("\\PC{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
