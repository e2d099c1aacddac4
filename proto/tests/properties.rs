//! Property tests of the wire protocol crate: every frame either side can build
//! survives both encodings unchanged, the fan-out's fast `message` encoder agrees
//! with the generic one, the decoders refuse garbage with the documented codes and
//! never panic, and the channel-name, retry-hint and Redis-payload rules hold for
//! any input, not only the vectors.

use proptest::prelude::*;
use serde_json::value::RawValue;
use serde_json::Value;
use shardcast_proto::close::{reason_with_retry, retry_ms};
use shardcast_proto::redis::{base64, decode_redis_payload, encode_redis_payload, RedisPayload};
use shardcast_proto::testing::{self, same_client_frame, same_server_frame};
use shardcast_proto::{
    decode_client, decode_server, encode_client, encode_message, encode_server, validate_channel, ChannelNameError,
    ClientFrame, Encoding, ErrorCode, MessagePosition, ServerFrame, UnsubscribeCode,
};

/// JSON values of every kind, floats within ±1e300 (clear of the edge of f64's range).
fn json_value() -> impl Strategy<Value = Value> {
    testing::json_value(-1e300f64..1e300)
}

/// Every `op` a client may send (PROTOCOL.md section 6).
const KNOWN_OPS: [&str; 7] = [
    "subscribe",
    "unsubscribe",
    "publish",
    "ping",
    "connect",
    "refresh",
    "sub_refresh",
];

fn channel() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.:@/=+-]{1,128}"
}

fn client_frame() -> impl Strategy<Value = ClientFrame> {
    let id = proptest::option::of(any::<u64>());
    prop_oneof![
        (id.clone(), channel(), proptest::option::of("\\PC{0,40}")).prop_map(|(id, channel, token)| {
            ClientFrame::Subscribe {
                id,
                channel,
                token,
                latest: false,
                recover: None,
            }
        }),
        (id.clone(), "\\PC{0,40}").prop_map(|(id, token)| ClientFrame::Refresh { id, token }),
        (id.clone(), channel(), "\\PC{0,40}").prop_map(|(id, channel, token)| ClientFrame::SubRefresh {
            id,
            channel,
            token
        }),
        (
            id.clone(),
            "\\PC{0,40}",
            proptest::option::of("\\PC{0,20}"),
            proptest::option::of("\\PC{0,20}")
        )
            .prop_map(|(id, token, name, version)| ClientFrame::Connect {
                id,
                token,
                name,
                version
            }),
        (id.clone(), "\\PC{0,20}").prop_map(|(id, channel)| ClientFrame::Unsubscribe { id, channel }),
        (id.clone(), channel(), json_value()).prop_map(|(id, channel, data)| ClientFrame::Publish {
            id,
            channel,
            data,
            idempotency_key: None,
        }),
        id.prop_map(|id| ClientFrame::Ping { id }),
    ]
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::BadRequest),
        Just(ErrorCode::UnknownOp),
        Just(ErrorCode::BadChannel),
        Just(ErrorCode::TooManyChannels),
        Just(ErrorCode::NotSubscribed),
        Just(ErrorCode::Forbidden),
        Just(ErrorCode::PayloadTooLarge),
        Just(ErrorCode::Unavailable),
        Just(ErrorCode::Internal),
        Just(ErrorCode::Unauthorized),
        Just(ErrorCode::PermissionDenied),
        Just(ErrorCode::RateLimited),
    ]
}

fn server_frame() -> impl Strategy<Value = ServerFrame> {
    let id = proptest::option::of(any::<u64>());
    prop_oneof![
        (
            (any::<u32>(), "\\PC{0,20}", any::<u32>(), any::<u64>()),
            (
                id.clone(),
                proptest::option::of("\\PC{0,20}"),
                proptest::option::of(any::<u64>())
            )
        )
            .prop_map(|((version, node, shard, ping_interval_ms), (id, user, expires_at))| {
                ServerFrame::Welcome {
                    version,
                    node,
                    shard,
                    ping_interval_ms,
                    id,
                    user,
                    expires_at,
                }
            }),
        (id.clone(), proptest::option::of(any::<u64>())).prop_map(|(id, expires_at)| ServerFrame::Ack {
            id,
            expires_at,
            duplicate: None,
            epoch: None,
            offset: None,
            recovered: None,
        }),
        (channel(), "\\PC{0,40}").prop_map(|(channel, message)| ServerFrame::Unsubscribed {
            channel,
            code: UnsubscribeCode::TokenExpired,
            message
        }),
        (id.clone(), error_code(), "\\PC{0,40}").prop_map(|(id, code, message)| ServerFrame::Error {
            id,
            code,
            message
        }),
        id.prop_map(|id| ServerFrame::Pong { id }),
        (channel(), any::<u64>(), json_value()).prop_map(|(channel, seq, data)| ServerFrame::Message {
            channel,
            seq,
            data,
            epoch: None,
            offset: None,
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn client_frames_survive_both_encodings(frame in client_frame()) {
        for enc in Encoding::ALL {
            let back = decode_client(enc, &encode_client(enc, &frame).expect("encodes")).expect("own encoding decodes");
            prop_assert!(same_client_frame(&frame, &back), "{:?}: {:?} -> {:?}", enc, frame, back);
        }
    }

    #[test]
    fn server_frames_survive_both_encodings(frame in server_frame()) {
        for enc in Encoding::ALL {
            let back = decode_server(enc, &encode_server(enc, &frame).expect("encodes")).expect("own encoding decodes");
            prop_assert!(same_server_frame(&frame, &back), "{:?}: {:?} -> {:?}", enc, frame, back);
        }
    }

    #[test]
    fn fast_message_encoder_agrees_with_the_generic_one(channel in channel(), seq in any::<u64>(), offset in proptest::option::of(1u64..), data in json_value()) {
        // The API hands the publisher's own text on; whitespace in it must not matter.
        let text = serde_json::to_string_pretty(&data).unwrap();
        let raw: Box<RawValue> = serde_json::from_str(&text).unwrap();
        let epoch = offset.map(|o| format!("e{o}"));
        let generic = ServerFrame::Message { channel: channel.clone(), seq, offset, epoch: epoch.clone(), data };
        let position = offset.zip(epoch.as_deref()).map(|(offset, epoch)| MessagePosition { offset, epoch });
        for enc in Encoding::ALL {
            let fast = decode_server(enc, &encode_message(enc, &channel, seq, position, &raw).expect("encodes")).expect("decodes");
            prop_assert!(same_server_frame(&generic, &fast), "{:?}: {:?} vs {:?}", enc, generic, fast);
        }
    }

    #[test]
    fn garbage_is_refused_with_a_documented_code(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        for enc in Encoding::ALL {
            if let Err(e) = decode_client(enc, &bytes) {
                prop_assert!(matches!(e.code, ErrorCode::BadRequest | ErrorCode::UnknownOp));
            }
            let _ = decode_server(enc, &bytes);
        }
    }

    #[test]
    fn unknown_ops_echo_the_id(op in "[a-z_]{1,80}", id in any::<u64>()) {
        prop_assume!(!KNOWN_OPS.contains(&op.as_str()));
        let frame = serde_json::json!({"op": op, "id": id}).to_string();
        let e = decode_client(Encoding::Json, frame.as_bytes()).unwrap_err();
        prop_assert_eq!((e.code, e.id), (ErrorCode::UnknownOp, Some(id)));
        prop_assert!(e.message.len() < 100, "the echoed op is cut: {}", e.message);
    }

    #[test]
    fn token_frames_without_a_token_are_bad_requests(
        op in prop_oneof![Just("connect"), Just("refresh"), Just("sub_refresh")],
        id in any::<u64>(),
        token in prop_oneof![Just(Value::Null), Just(serde_json::json!(7)), Just(serde_json::json!(["t"]))],
    ) {
        // Missing, null or not a string: the frame is refused; where the token is
        // merely absent (or null) the frame got far enough to echo its id.
        let without = serde_json::json!({"op": op, "id": id, "channel": "news"});
        let mut wrong = without.clone();
        let echoed = token.is_null();
        wrong["token"] = token;
        for (frame, echoes) in [(without, true), (wrong, echoed)] {
            let json = decode_client(Encoding::Json, frame.to_string().as_bytes()).unwrap_err();
            let msgpack = decode_client(Encoding::MsgPack, &rmp_serde::to_vec_named(&frame).unwrap()).unwrap_err();
            for e in [json, msgpack] {
                prop_assert_eq!(e.code, ErrorCode::BadRequest);
                if echoes {
                    prop_assert_eq!(e.id, Some(id));
                }
            }
        }
    }

    #[test]
    fn channel_names_follow_the_documented_rule(name in "\\PC{0,140}|[A-Za-z0-9_.:@/=+ -]{0,140}", max in 1usize..140) {
        let allowed = |c: char| c.is_ascii_alphanumeric() || "_.:@/=+-".contains(c);
        let expected = if name.is_empty() {
            Err(ChannelNameError::Empty)
        } else if name.len() > max {
            Err(ChannelNameError::TooLong { max })
        } else if !name.chars().all(allowed) {
            Err(ChannelNameError::BadCharacter)
        } else {
            Ok(())
        };
        prop_assert_eq!(validate_channel(&name, max), expected);
    }

    #[test]
    fn retry_hints_round_trip(text in "\\PC{0,60}", ms in any::<u64>()) {
        prop_assert_eq!(retry_ms(&reason_with_retry(&text, ms)), Some(ms));
    }

    #[test]
    fn gateway_envelopes_round_trip(origin in "[!-~]{1,40}", data in json_value()) {
        let json = data.to_string();
        let bytes = encode_redis_payload(&origin, &json);
        prop_assert_eq!(
            decode_redis_payload(&bytes),
            Ok(RedisPayload::Json { origin: Some(origin.as_str()), json: json.as_str() })
        );
    }

    #[test]
    fn base64_has_the_rfc_length(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let text = base64(&bytes);
        prop_assert_eq!(text.len(), bytes.len().div_ceil(3) * 4);
        prop_assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)));
    }
}
