//! Checks this crate against the vectors in `proto/vectors/`. With
//! `SHARDCAST_WRITE_VECTORS=1` it writes them instead (after a deliberate protocol
//! change; every client must then pass the new files).

use super::*;
use serde_json::json;
use std::path::PathBuf;

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("vector hex"))
        .collect()
}

fn client_frames() -> Vec<(&'static str, ClientFrame)> {
    vec![
        (
            "subscribe",
            ClientFrame::Subscribe {
                id: Some(1),
                channel: "news".into(),
                token: None,
                latest: false,
                recover: None,
            },
        ),
        (
            "subscribe_without_id",
            ClientFrame::Subscribe {
                id: None,
                channel: "chat:room-42".into(),
                token: None,
                latest: false,
                recover: None,
            },
        ),
        (
            "unsubscribe",
            ClientFrame::Unsubscribe {
                id: Some(2),
                channel: "news".into(),
            },
        ),
        (
            "publish",
            ClientFrame::Publish {
                id: Some(3),
                channel: "news".into(),
                data: json!({"text": "hello", "n": 1}),
                idempotency_key: None,
            },
        ),
        ("ping", ClientFrame::Ping { id: Some(4) }),
        (
            "subscribe_with_token",
            ClientFrame::Subscribe {
                id: Some(5),
                channel: "private:report-9".into(),
                token: Some("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiIsImNoYW5uZWwiOiJwcml2YXRlOnJlcG9ydC05In0.c2ln".into()),
                latest: false,
                recover: None,
            },
        ),
        (
            "connect",
            ClientFrame::Connect {
                id: Some(1),
                token: "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9.c2ln".into(),
                name: Some("shardcast-js".into()),
                version: Some("0.2.0".into()),
            },
        ),
        (
            "connect_token_only",
            ClientFrame::Connect {
                id: None,
                token: "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9.c2ln".into(),
                name: None,
                version: None,
            },
        ),
        (
            "refresh",
            ClientFrame::Refresh {
                id: Some(7),
                token: "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9.bmV3".into(),
            },
        ),
        (
            "subscribe_recover",
            ClientFrame::Subscribe {
                id: Some(3),
                channel: "news".into(),
                token: None,
                recover: Some(StreamPosition {
                    offset: 41,
                    epoch: "q7Bf2".into(),
                }),
                latest: false,
            },
        ),
        (
            "subscribe_latest",
            ClientFrame::Subscribe {
                id: Some(4),
                channel: "prices:eur".into(),
                token: None,
                recover: None,
                latest: true,
            },
        ),
        (
            "publish_idempotent",
            ClientFrame::Publish {
                id: Some(6),
                channel: "news".into(),
                data: json!("hi"),
                idempotency_key: Some("order-7781:shipped".into()),
            },
        ),
        (
            "history_latest",
            ClientFrame::History {
                id: Some(9),
                channel: "prices:eur".into(),
                since: None,
                limit: Some(1),
            },
        ),
        (
            "history_since",
            ClientFrame::History {
                id: Some(10),
                channel: "news".into(),
                since: Some(StreamPosition {
                    offset: 41,
                    epoch: "q7Bf2".into(),
                }),
                limit: None,
            },
        ),
        (
            "presence",
            ClientFrame::Presence {
                id: Some(11),
                channel: "room:lobby".into(),
            },
        ),
        (
            "sub_refresh",
            ClientFrame::SubRefresh {
                id: Some(8),
                channel: "private:report-9".into(),
                token: "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9.bmV3".into(),
            },
        ),
    ]
}

fn server_frames() -> Vec<(&'static str, ServerFrame)> {
    vec![
        (
            "welcome",
            ServerFrame::Welcome {
                version: 1,
                node: "node-1".into(),
                shard: 0,
                ping_interval_ms: 25000,
                id: None,
                user: None,
                expires_at: None,
            },
        ),
        (
            "welcome_authenticated",
            ServerFrame::Welcome {
                version: 1,
                node: "node-1".into(),
                shard: 0,
                ping_interval_ms: 25000,
                id: Some(1),
                user: Some("42".into()),
                expires_at: Some(1_798_761_600),
            },
        ),
        ("ack", ServerFrame::ack(Some(1))),
        (
            "ack_refresh",
            ServerFrame::Ack {
                id: Some(7),
                expires_at: Some(1_798_761_900),
                duplicate: None,
                epoch: None,
                offset: None,
                recovered: None,
            },
        ),
        (
            "error_permission_denied",
            ServerFrame::Error {
                id: Some(5),
                code: ErrorCode::PermissionDenied,
                message: "notifications:#43 belongs to another user".into(),
            },
        ),
        (
            "unsubscribed",
            ServerFrame::Unsubscribed {
                channel: "private:report-9".into(),
                code: UnsubscribeCode::TokenExpired,
                message: "subscription token expired".into(),
            },
        ),
        (
            "error_bad_channel",
            ServerFrame::Error {
                id: Some(1),
                code: ErrorCode::BadChannel,
                message: "channel name is empty".into(),
            },
        ),
        ("pong", ServerFrame::Pong { id: Some(4) }),
        (
            "message",
            ServerFrame::Message {
                channel: "news".into(),
                seq: 1,
                data: json!({"text": "hello", "n": 1}),
                epoch: None,
                offset: None,
            },
        ),
        (
            "gap",
            ServerFrame::Gap {
                channel: "news".into(),
                reason: None,
            },
        ),
        (
            "message_positioned",
            ServerFrame::Message {
                channel: "news".into(),
                seq: 2,
                offset: Some(17),
                epoch: Some("q7Bf2".into()),
                data: json!("hi"),
            },
        ),
        (
            "ack_subscribe_recovered",
            ServerFrame::Ack {
                id: Some(3),
                expires_at: None,
                offset: Some(44),
                epoch: Some("q7Bf2".into()),
                recovered: Some(true),
                duplicate: None,
            },
        ),
        (
            "ack_publish_duplicate",
            ServerFrame::Ack {
                id: Some(6),
                expires_at: None,
                offset: Some(45),
                epoch: Some("q7Bf2".into()),
                recovered: None,
                duplicate: Some(true),
            },
        ),
        (
            "gap_epoch_changed",
            ServerFrame::Gap {
                channel: "news".into(),
                reason: Some(GapReason::EpochChanged),
            },
        ),
        (
            "history",
            ServerFrame::History {
                id: Some(9),
                channel: "prices:eur".into(),
                offset: 1200,
                epoch: "q7Bf2".into(),
                publications: vec![HistoryEntry {
                    offset: 1200,
                    data: json!(1.0825),
                }],
                complete: false,
            },
        ),
        (
            "presence",
            ServerFrame::Presence {
                id: Some(11),
                channel: "room:lobby".into(),
                count: 2,
                members: vec![
                    PresenceEntry {
                        user: "42".into(),
                        info: json!({"name": "Ann"}),
                    },
                    PresenceEntry {
                        user: "43".into(),
                        info: Value::Null,
                    },
                ],
            },
        ),
        (
            "join",
            ServerFrame::Join {
                channel: "room:lobby".into(),
                user: "42".into(),
                info: json!({"name": "Ann"}),
            },
        ),
        (
            "leave",
            ServerFrame::Leave {
                channel: "room:lobby".into(),
                user: "42".into(),
            },
        ),
        (
            "error_no_history",
            ServerFrame::Error {
                id: Some(9),
                code: ErrorCode::NoHistory,
                message: "news keeps no history".into(),
            },
        ),
        (
            "message_scalar",
            ServerFrame::Message {
                channel: "prices/eur-usd".into(),
                seq: 70000,
                data: json!(1.0825),
                epoch: None,
                offset: None,
            },
        ),
    ]
}

fn vector_entry<T: Serialize>(name: &str, value: &T) -> Value {
    json!({
        "name": name,
        "value": serde_json::to_value(value).expect("value"),
        "json": String::from_utf8(encode(Encoding::Json, value).expect("encodes")).expect("utf8"),
        "msgpack_hex": hex(&encode(Encoding::MsgPack, value).expect("encodes")),
    })
}

fn invalid_client_frames() -> Value {
    json!([
        {"name": "not_json", "encoding": "json", "hex": hex(b"{\"op\":\"subscribe\""), "code": "bad_request"},
        {"name": "not_an_object", "encoding": "json", "hex": hex(b"[1,2,3]"), "code": "bad_request"},
        {"name": "missing_op", "encoding": "json", "hex": hex(b"{\"id\":9}"), "code": "bad_request", "id": 9},
        {"name": "missing_channel", "encoding": "json", "hex": hex(b"{\"op\":\"subscribe\",\"id\":5}"), "code": "bad_request", "id": 5},
        {"name": "unknown_op", "encoding": "json", "hex": hex(b"{\"op\":\"teleport\",\"id\":7}"), "code": "unknown_op", "id": 7},
        {"name": "connect_without_token", "encoding": "json", "hex": hex(b"{\"op\":\"connect\",\"id\":1}"), "code": "bad_request", "id": 1},
        {"name": "refresh_without_token", "encoding": "json", "hex": hex(b"{\"op\":\"refresh\",\"id\":2}"), "code": "bad_request", "id": 2},
        {"name": "recover_offset_not_a_number", "encoding": "json", "hex": hex(b"{\"op\":\"subscribe\",\"id\":3,\"channel\":\"news\",\"recover\":{\"offset\":\"41\",\"epoch\":\"e\"}}"), "code": "bad_request"},
        {"name": "history_without_channel", "encoding": "json", "hex": hex(b"{\"op\":\"history\",\"id\":4}"), "code": "bad_request", "id": 4},
        {"name": "presence_without_channel", "encoding": "json", "hex": hex(b"{\"op\":\"presence\",\"id\":6}"), "code": "bad_request", "id": 6},
        {"name": "truncated_msgpack", "encoding": "msgpack", "hex": "83a26f70", "code": "bad_request"},
        {"name": "msgpack_not_a_map", "encoding": "msgpack", "hex": "93010203", "code": "bad_request"},
        {"name": "msgpack_unknown_op", "encoding": "msgpack",
         "hex": hex(&rmp_serde::to_vec_named(&json!({"op": "teleport", "id": 7})).expect("mp")), "code": "unknown_op", "id": 7},
    ])
}

fn channel_names() -> Value {
    json!({
        "max_len": DEFAULT_MAX_CHANNEL_LEN,
        "valid": ["news", "chat:room-42", "user@example.com/inbox", "a.b_c=d+e", "notifications:#42", "x".repeat(DEFAULT_MAX_CHANNEL_LEN)],
        "invalid": ["", "has space", "emoji-😀", "semi;colon", "#probe#node", "x".repeat(DEFAULT_MAX_CHANNEL_LEN + 1)],
    })
}

fn close_codes() -> Value {
    json!([
        {"code": close::GOING_AWAY, "name": "going_away", "reconnect": true},
        {"code": close::PROTOCOL_ERROR, "name": "protocol_error", "reconnect": false},
        {"code": close::INVALID_PAYLOAD, "name": "invalid_payload", "reconnect": false},
        {"code": close::POLICY_VIOLATION, "name": "policy_violation", "reconnect": false},
        {"code": close::MESSAGE_TOO_BIG, "name": "message_too_big", "reconnect": false},
        {"code": close::INTERNAL_ERROR, "name": "internal_error", "reconnect": true},
        {"code": close::TRY_AGAIN_LATER, "name": "try_again_later", "reconnect": true},
        {"code": close::SLOW_CONSUMER, "name": "slow_consumer", "reconnect": true},
        {"code": close::IDLE_TIMEOUT, "name": "idle_timeout", "reconnect": true},
        {"code": close::TOKEN_EXPIRED, "name": "token_expired", "reconnect": true},
        {"code": close::UNAUTHORIZED, "name": "unauthorized", "reconnect": false},
        {"code": close::DISCONNECTED, "name": "disconnected", "reconnect": false},
        {"code": close::TOO_MANY_CONNECTIONS, "name": "too_many_connections", "reconnect": true},
    ])
}

fn all_vectors() -> Vec<(&'static str, Value)> {
    vec![
        (
            "client_frames.json",
            Value::Array(client_frames().iter().map(|(n, f)| vector_entry(n, f)).collect()),
        ),
        (
            "server_frames.json",
            Value::Array(server_frames().iter().map(|(n, f)| vector_entry(n, f)).collect()),
        ),
        ("invalid_client_frames.json", invalid_client_frames()),
        ("channel_names.json", channel_names()),
        ("close_codes.json", close_codes()),
    ]
}

#[test]
fn vectors_match_this_crate() {
    for (file, expected) in all_vectors() {
        let path = vectors_dir().join(file);
        let text = serde_json::to_string_pretty(&expected).expect("pretty") + "\n";
        if std::env::var_os("SHARDCAST_WRITE_VECTORS").is_some() {
            std::fs::write(&path, text).expect("write vector");
            continue;
        }
        let on_disk: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read vector")).expect("vector is JSON");
        assert_eq!(on_disk, expected, "{file} differs from what this crate produces");
    }
}

#[test]
fn client_vectors_decode_in_both_encodings() {
    for (name, frame) in client_frames() {
        for enc in Encoding::ALL {
            let bytes = encode_client(enc, &frame).expect("encodes");
            assert_eq!(decode_client(enc, &bytes).as_ref(), Ok(&frame), "{name} {enc:?}");
        }
    }
}

#[test]
fn server_vectors_decode_in_both_encodings() {
    for (name, frame) in server_frames() {
        for enc in Encoding::ALL {
            let bytes = encode_server(enc, &frame).expect("encodes");
            assert_eq!(decode_server(enc, &bytes).as_ref(), Ok(&frame), "{name} {enc:?}");
        }
    }
}

#[test]
fn encode_message_matches_the_generic_encoder() {
    for (_, frame) in server_frames() {
        if let ServerFrame::Message {
            channel,
            seq,
            offset,
            epoch,
            data,
        } = &frame
        {
            let raw = RawValue::from_string(data.to_string()).expect("raw");
            let position = offset
                .zip(epoch.as_deref())
                .map(|(offset, epoch)| MessagePosition { offset, epoch });
            for enc in Encoding::ALL {
                assert_eq!(
                    encode_message(enc, channel, *seq, position, &raw).ok(),
                    encode_server(enc, &frame).ok()
                );
            }
        }
    }
}

#[test]
fn invalid_frames_get_their_codes() {
    for case in invalid_client_frames().as_array().expect("array") {
        let enc = if case["encoding"] == "json" {
            Encoding::Json
        } else {
            Encoding::MsgPack
        };
        let err = decode_client(enc, &unhex(case["hex"].as_str().expect("hex"))).expect_err("must fail");
        assert_eq!(err.code.as_str(), case["code"], "{}", case["name"]);
        assert_eq!(err.id, case["id"].as_u64(), "{}", case["name"]);
    }
}

#[test]
fn channel_name_rules() {
    let names = channel_names();
    for v in names["valid"].as_array().expect("valid") {
        assert_eq!(
            validate_channel(v.as_str().expect("str"), DEFAULT_MAX_CHANNEL_LEN),
            Ok(())
        );
    }
    for v in names["invalid"].as_array().expect("invalid") {
        assert!(
            validate_channel(v.as_str().expect("str"), DEFAULT_MAX_CHANNEL_LEN).is_err(),
            "{v}"
        );
    }
}

#[test]
fn retry_hint_round_trips() {
    let reason = close::reason_with_retry("going away", 1500);
    assert_eq!(close::retry_ms(&reason), Some(1500));
    assert_eq!(close::retry_ms("going away"), None);
    assert!(!close::should_reconnect(close::POLICY_VIOLATION));
    assert!(close::should_reconnect(close::SLOW_CONSUMER));
}

#[test]
fn null_data_is_data() {
    let frame = decode_client(Encoding::Json, br#"{"op":"publish","channel":"c","data":null}"#).expect("decodes");
    assert_eq!(
        frame,
        ClientFrame::Publish {
            id: None,
            channel: "c".into(),
            data: Value::Null,
            idempotency_key: None,
        }
    );
    let err = decode_client(Encoding::Json, br#"{"op":"publish","channel":"c"}"#).expect_err("missing");
    assert_eq!(err.code, ErrorCode::BadRequest);
}

#[test]
fn unknown_frame_types_decode_as_unknown() {
    let frame = decode_server(Encoding::Json, br#"{"type":"from_the_future","x":1}"#).expect("decodes");
    assert_eq!(frame, ServerFrame::Unknown);
}

#[test]
fn unknown_error_codes_decode_as_unknown() {
    let frame = decode_server(
        Encoding::Json,
        br#"{"type":"error","code":"from_the_future","message":"x"}"#,
    )
    .expect("decodes");
    assert!(matches!(
        frame,
        ServerFrame::Error {
            code: ErrorCode::Unknown,
            ..
        }
    ));
}
