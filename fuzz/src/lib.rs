//! The properties shardcast's decoders must keep on any input, one function per fuzz
//! target. Each takes raw bytes and panics on a violation, so the same code serves
//! libFuzzer (fuzz/fuzz_targets/*) and the main crate's tests, which replay the
//! checked-in corpus (fuzz/corpus/<target>/) and proptest inputs through it
//! (tests/properties.rs includes this file as a module).
//!
//! What is fed where, as the gateway does it:
//! - client frames: `shardcast_proto::decode_client` (JSON and MessagePack);
//! - tokens: the token of a `connect`, `refresh`, `sub_refresh` or `subscribe` frame,
//!   and any input as a token, through `shardcast::auth::TokenVerifier`;
//! - Redis payloads: `shardcast_proto::redis::decode_redis_payload`, then JSON validation;
//! - WebSocket bytes: `shardcast::ws::frame::read_frames`, whole and in pieces;
//! - compressed client messages (permessage-deflate): `shardcast::ws::deflate::Inflater`;
//! - the upgrade request: `shardcast::ws::handshake::parse_request`;
//! - the HTTP publish body: deserialized as src/admin.rs does, then encoded as a
//!   `message` frame in both encodings, as a fan-out does.

use std::sync::OnceLock;

use jsonwebtoken::{Algorithm, EncodingKey};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use shardcast::auth::{TokenVerifier, VerifierSettings};
use shardcast::payload::Payload;
use shardcast::ws::deflate::{deflate_frame, Inflater, RSV1};
use shardcast::ws::frame::{data_frame, read_frames, Flow, Fragments, FrameError, Incoming};
use shardcast::ws::handshake::{parse_request, upgrade_response, PublicRequest, WsPaths};
use shardcast_proto::redis::{decode_redis_payload, encode_redis_payload, raw_payload_json, RedisPayload};
use shardcast_proto::testing::{same_client_frame, same_value};
use shardcast_proto::{
    decode_client, decode_server, encode_client, encode_message, validate_channel, ClientFrame, Encoding, ErrorCode,
    ServerFrame,
};

/// A JSON client frame: decoding never panics, and what decodes survives a round
/// trip through both encodings unchanged (the JSON data model is shared).
pub fn decode_client_json(data: &[u8]) {
    check_client_frame(Encoding::Json, data);
}

/// A MessagePack client frame: as for JSON.
pub fn decode_client_msgpack(data: &[u8]) {
    check_client_frame(Encoding::MsgPack, data);
}

/// Decodes a client frame and checks its properties; returns what decoded.
fn check_client_frame(encoding: Encoding, data: &[u8]) -> Option<ClientFrame> {
    match decode_client(encoding, data) {
        Ok(frame) => {
            // A client publish whose data subscribers could not decode is answered
            // `bad_request` by the gateway (src/shard/session.rs); only what it accepts
            // must survive both encodings.
            if let ClientFrame::Publish { data, .. } = &frame {
                if Payload::from_value(data).is_err() {
                    return Some(frame);
                }
            }
            for target in Encoding::ALL {
                let bytes = encode_client(target, &frame).expect("a decoded frame encodes");
                let back = decode_client(target, &bytes)
                    .unwrap_or_else(|e| panic!("re-encoded {frame:?} in {target:?} does not decode: {e}"));
                // Floats may differ in their last bit after a trip through decimal
                // text (serde_json parses fast, not always correctly rounded).
                assert!(
                    same_client_frame(&frame, &back),
                    "{encoding:?} frame changed through {target:?}: {frame:?} -> {back:?}"
                );
            }
            Some(frame)
        }
        Err(e) => {
            // Only the two documented codes come out of the decoder (PROTOCOL.md 4.3).
            assert!(
                matches!(e.code, ErrorCode::BadRequest | ErrorCode::UnknownOp),
                "unexpected decode error code {:?}",
                e.code
            );
            // The error message goes back to the client in an error frame: it must
            // stay bounded whatever the input (an unknown op is cut to 64 characters).
            assert!(e.message.len() <= 1024, "error message of {} bytes", e.message.len());
            None
        }
    }
}

/// The secret of the token checks' verifier; the valid tokens of the corpus
/// (fuzz/corpus/connect_frames/) are signed with it.
pub const TOKEN_SECRET: &[u8] = b"shardcast-fuzz-secret";

/// The algorithms that verifier accepts: two of one family, so that the token's
/// `alg` selects among them, and not HS384, so that a token rightly signed with
/// HS384 must still be refused.
pub const TOKEN_ALGORITHMS: [Algorithm; 2] = [Algorithm::HS256, Algorithm::HS512];

/// The verifier the token checks use, made once.
pub fn token_verifier() -> &'static TokenVerifier {
    static VERIFIER: OnceLock<TokenVerifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        TokenVerifier::new(&VerifierSettings {
            hmac_secret: Some(TOKEN_SECRET.to_vec()),
            algorithms: TOKEN_ALGORITHMS.iter().map(|a| format!("{a:?}")).collect(),
            leeway_secs: 5,
            ..VerifierSettings::default()
        })
        .expect("the check's verifier settings are valid")
    })
}

/// The frames that carry a token (`connect`, `refresh`, `sub_refresh`, `subscribe`
/// with a token) in either encoding: the frame keeps the client-frame properties
/// and its token those of [`token`]; the whole input, read as a token, too.
pub fn connect_frames(data: &[u8]) {
    for encoding in Encoding::ALL {
        if let Some(
            ClientFrame::Connect { token: t, .. }
            | ClientFrame::Refresh { token: t, .. }
            | ClientFrame::SubRefresh { token: t, .. }
            | ClientFrame::Subscribe { token: Some(t), .. },
        ) = check_client_frame(encoding, data)
        {
            token(&t);
        }
    }
    token(&String::from_utf8_lossy(data));
}

/// Any string as a connection and as a subscription token: verifying never panics;
/// a token is accepted only if it is validly signed, by the check's own reckoning
/// ([`validly_signed`]); and an accepted token with its payload altered anywhere
/// is refused.
pub fn token(token: &str) {
    let verifier = token_verifier();
    let accepted = |t: &str| verifier.connection(t).is_ok() || verifier.subscription(t).is_ok();
    if !accepted(token) {
        return;
    }
    assert!(
        validly_signed(token),
        "accepted a token that is not validly signed: {token:?}"
    );
    let (header, rest) = token.split_once('.').expect("a signed token has three parts");
    let (payload, signature) = rest.split_once('.').expect("a signed token has three parts");
    let step = payload.len().div_ceil(64).max(1);
    for at in (0..payload.len()).step_by(step).chain([payload.len() - 1]) {
        let mut altered = payload.as_bytes().to_vec();
        altered[at] = if altered[at] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).expect("base64url is ASCII");
        let altered_token = format!("{header}.{altered}.{signature}");
        assert!(
            !accepted(&altered_token),
            "accepted with its payload altered: {altered_token:?}"
        );
    }
    let truncated = format!("{header}.{}.{signature}", &payload[..payload.len() - 1]);
    assert!(!accepted(&truncated), "accepted with its payload cut: {truncated:?}");
}

/// Whether `token` is a JWS whose header names an algorithm of [`TOKEN_ALGORITHMS`]
/// and whose signature is that algorithm's over its first two parts with
/// [`TOKEN_SECRET`]: computed by signing, not by the verifier's own path.
pub fn validly_signed(token: &str) -> bool {
    let Some((message, signature)) = token.rsplit_once('.') else {
        return false;
    };
    if message.matches('.').count() != 1 {
        return false;
    }
    let Ok(header) = jsonwebtoken::decode_header(token) else {
        return false;
    };
    TOKEN_ALGORITHMS.contains(&header.alg)
        && jsonwebtoken::crypto::sign(message.as_bytes(), &EncodingKey::from_secret(TOKEN_SECRET), header.alg)
            .is_ok_and(|expected| expected == signature)
}

/// A Redis payload: the three forms are told apart exactly as specified, the
/// gateway's own envelope round-trips, and a raw payload always becomes deliverable
/// JSON whose base64 gives the bytes back.
pub fn redis_payload(data: &[u8]) {
    match decode_redis_payload(data) {
        Ok(RedisPayload::Json {
            origin: Some(origin),
            json,
        }) => {
            assert_eq!(data[0], b'@');
            assert!(!origin.contains(' '), "origin {origin:?} holds the separator");
            assert_eq!(encode_redis_payload(origin, json), data, "envelope does not round-trip");
            let _ = Payload::from_json(json);
        }
        Ok(RedisPayload::Json { origin: None, json }) => {
            assert!(
                !matches!(data[0], b'@' | b'!' | b'^' | b'%'),
                "a marked payload decoded as plain JSON"
            );
            assert_eq!(json.as_bytes(), data);
            let _ = Payload::from_json(json);
        }
        Ok(RedisPayload::Positioned {
            offset,
            epoch,
            origin,
            json,
        }) => {
            assert_eq!(data[0], b'^');
            assert!(offset > 0 && !epoch.is_empty() && !epoch.contains(','));
            assert!(!origin.is_some_and(|o| o.contains(' ')));
            let _ = Payload::from_json(json);
        }
        Ok(RedisPayload::Joined { origin, user, info }) => {
            assert_eq!(&data[..2], b"%+");
            assert!(!user.is_empty() && !origin.is_some_and(|o| o.contains(' ')));
            let _ = Payload::from_json(info);
        }
        Ok(RedisPayload::Left { origin, user }) => {
            assert_eq!(&data[..2], b"%-");
            assert!(!user.is_empty() && !origin.is_some_and(|o| o.contains(' ')));
        }
        Ok(RedisPayload::Raw(raw)) => {
            assert_eq!(data[0], b'!');
            assert_eq!(&data[1..], raw);
            let json = raw_payload_json(raw);
            let payload = Payload::from_json(&json).expect("a raw payload is always deliverable");
            let value: Value = serde_json::from_str(payload.json().get()).expect("valid JSON");
            let b64 = value["$bin"].as_str().expect("$bin is a string");
            assert_eq!(base64_decode(b64).as_deref(), Some(raw), "base64 of a raw payload");
        }
        Err(_) if data.is_empty() => {}
        Err(e) => assert!(
            matches!(data[0], b'@' | b'^' | b'%') || std::str::from_utf8(data).is_err(),
            "{e} for a payload that is neither marked nor invalid UTF-8"
        ),
    }
}

/// RFC 4648 base64 with padding, strict; `None` on anything malformed.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let sextet = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    if text.len() % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    for chunk in text.as_bytes().chunks(4) {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | u32::from(sextet(c)?);
        }
        n <<= 6 * pad as u32;
        out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
    }
    Some(out)
}

/// What `read_frames` handed to its caller, owned, to compare two runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Message { binary: bool, payload: Vec<u8> },
    Ping(Vec<u8>),
    Pong,
    Close { code: Option<u16>, reason: String },
}

impl Event {
    fn from_incoming(ev: Incoming<'_>) -> Event {
        match ev {
            Incoming::Message { binary, payload } => Event::Message {
                binary,
                payload: payload.to_vec(),
            },
            Incoming::Ping(p) => Event::Ping(p.to_vec()),
            Incoming::Pong => Event::Pong,
            Incoming::Close { code, reason } => Event::Close {
                code,
                reason: reason.to_owned(),
            },
        }
    }
}

/// Reads a byte stream the way a shard does (src/shard/task.rs `process_input`):
/// each read is appended to what was left incomplete, complete frames are handed
/// on, the rest is kept. Stops at a close frame or an error.
pub fn read_in_pieces(stream: &[u8], cuts: &[usize], max_message: usize) -> (Vec<Event>, Option<FrameError>) {
    let mut events = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut fragments: Option<Box<Fragments>> = None;
    let mut start = 0;
    let ends = cuts.iter().copied().filter(|&c| c < stream.len()).chain([stream.len()]);
    for end in ends {
        if end <= start {
            continue;
        }
        pending.extend_from_slice(&stream[start..end]);
        start = end;
        let mut closed = false;
        let result = read_frames(&mut pending, &mut fragments, max_message, None, |ev| {
            let ev = Event::from_incoming(ev);
            closed = matches!(ev, Event::Close { .. });
            events.push(ev);
            if closed {
                Flow::Stop
            } else {
                Flow::Continue
            }
        });
        match result {
            Ok(used) => {
                assert!(used <= pending.len(), "consumed {used} of {} bytes", pending.len());
                pending.drain(..used);
            }
            Err(e) => return (events, Some(e)),
        }
        if closed {
            break;
        }
    }
    (events, None)
}

/// WebSocket bytes from a client: the reader never panics, never hands on what the
/// RFC or the size limit forbids, and gives the same messages and the same verdict
/// whether the bytes arrive at once or cut into pieces anywhere.
///
/// Input layout: byte 0 picks the size limit, bytes 1..4 pick up to three cut
/// points, the rest is the stream.
pub fn ws_frames(data: &[u8]) {
    if data.len() < 4 {
        return;
    }
    let max_message = 16 + usize::from(data[0]) * 8;
    let stream = &data[4..];
    let cuts: Vec<usize> = data[1..4]
        .iter()
        .map(|&b| usize::from(b) * stream.len() / 256)
        .collect();
    let mut sorted = cuts.clone();
    sorted.sort_unstable();
    let whole = read_in_pieces(stream, &[], max_message);
    let pieces = read_in_pieces(stream, &sorted, max_message);
    assert_eq!(whole, pieces, "cutting the stream at {sorted:?} changed what was read");
    let one_byte_cuts: Vec<usize> = (1..stream.len().min(64)).collect();
    let bytewise = read_in_pieces(stream, &one_byte_cuts, max_message);
    assert_eq!(
        whole, bytewise,
        "reading the first bytes one at a time changed what was read"
    );
    for ev in &whole.0 {
        match ev {
            Event::Message { binary, payload } => {
                assert!(payload.len() <= max_message, "a message above the limit got through");
                assert!(
                    *binary || std::str::from_utf8(payload).is_ok(),
                    "invalid UTF-8 text got through"
                );
            }
            Event::Ping(p) => assert!(p.len() <= 125, "control frame above 125 bytes"),
            Event::Pong => {}
            Event::Close { code: None, .. } => {}
            Event::Close { code: Some(c), .. } => assert!(
                matches!(c, 1000..=1003 | 1007..=1011 | 3000..=4999),
                "close code {c} accepted"
            ),
        }
    }
}

/// A compressed client message (permessage-deflate), as a shard inflates it: never
/// more than the limit, the same answer from a reused inflater (nothing of one
/// message leaks into the next), and what the gateway compresses inflates back.
///
/// Input layout: byte 0 picks the size limit, the rest is the deflate stream.
pub fn inflate(data: &[u8]) {
    let Some((&limit, stream)) = data.split_first() else {
        return;
    };
    let max_message = 16 + usize::from(limit) * 64;
    let mut inflater = Inflater::new();
    let first = inflater.inflate(stream, max_message).map(<[u8]>::to_vec);
    if let Ok(out) = &first {
        assert!(out.len() <= max_message, "{} bytes inflated past the limit", out.len());
    }
    let again = inflater.inflate(stream, max_message).map(<[u8]>::to_vec);
    assert_eq!(first, again, "a reused inflater answered differently");

    let frame = deflate_frame(&data_frame(Encoding::MsgPack, stream), 15).expect("window 15 compresses");
    let header_len = match frame[1] & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    assert_eq!(frame[0], 0x82 | RSV1);
    let back = inflater.inflate(&frame[header_len..], stream.len());
    assert_eq!(back, Ok(stream), "a compressed frame did not inflate back");
}

/// Paths as the conformance setup configures them: protocol `/ws`, echo `/echo`.
const PATHS: WsPaths<'static> = WsPaths {
    protocol: "/ws",
    echo: Some("/echo"),
};

/// The upgrade request head: parsing never panics; bytes after a complete head do
/// not change the answer (the gateway discards them); an accepted upgrade yields a
/// well-formed 101 whose headers nothing in the request can break.
pub fn upgrade_request(data: &[u8]) {
    let Ok(parsed) = parse_request(data, PATHS) else {
        return;
    };
    let Some(request) = parsed else {
        return;
    };
    let mut longer = data.to_vec();
    longer.extend_from_slice(b"\x81\x85garbage after the head\r\n\r\n");
    assert_eq!(
        parse_request(&longer, PATHS).ok().flatten().as_ref(),
        Some(&request),
        "trailing bytes changed the answer"
    );
    let request = match request {
        // A Pusher upgrade is answered with the same 101, without a subprotocol.
        PublicRequest::PusherUpgrade { key, .. } => PublicRequest::Upgrade {
            echo: false,
            key,
            encoding: shardcast_proto::Encoding::Json,
            subprotocol: None,
            bearer: None,
            deflate: None,
        },
        other => other,
    };
    match request {
        PublicRequest::Upgrade { key, subprotocol, .. } => {
            let response = upgrade_response(&key, subprotocol.as_deref(), None);
            let text = std::str::from_utf8(&response).expect("the 101 response is ASCII");
            assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
            assert!(text.ends_with("\r\n\r\n"));
            assert_eq!(
                text.matches("\r\n\r\n").count(),
                1,
                "the request split the response: {text:?}"
            );
            assert_eq!(
                text.contains("Sec-WebSocket-Protocol"),
                subprotocol.is_some(),
                "subprotocol echoed only when asked"
            );
        }
        PublicRequest::Health { .. } | PublicRequest::TokenInUrl | PublicRequest::PusherUpgrade { .. } => {}
        PublicRequest::Reject { status, .. } => {
            assert!(matches!(status, 400 | 404 | 405 | 426 | 431), "status {status}");
        }
    }
}

/// One item of an HTTP publish body, deserialized exactly as src/admin.rs does.
#[derive(Deserialize)]
struct PublishItem {
    channel: String,
    data: Box<RawValue>,
}

/// The HTTP publish body: parsed like the admin API parses it; every accepted item's
/// data becomes a `message` frame that both encodings decode to the same value.
pub fn publish_body(data: &[u8]) {
    let batch = data.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let items: Vec<PublishItem> = if batch {
        match serde_json::from_slice(data) {
            Ok(items) => items,
            Err(_) => return,
        }
    } else {
        match serde_json::from_slice::<PublishItem>(data) {
            Ok(item) => vec![item],
            Err(_) => return,
        }
    };
    for item in items {
        if validate_channel(&item.channel, shardcast_proto::DEFAULT_MAX_CHANNEL_LEN).is_err() {
            continue;
        }
        // The gateway refuses what subscribers could not decode (numbers beyond f64,
        // nesting past 128); an accepted payload must reach both encodings intact.
        let Ok(payload) = Payload::from_raw(item.data) else {
            continue;
        };
        let expected: Value = serde_json::from_str(payload.json().get()).expect("an accepted payload parses");
        for encoding in Encoding::ALL {
            let frame =
                encode_message(encoding, &item.channel, 7, None, payload.json()).expect("an accepted payload encodes");
            match decode_server(encoding, &frame) {
                Ok(ServerFrame::Message { channel, seq, data, .. }) => {
                    assert_eq!((channel.as_str(), seq), (item.channel.as_str(), 7));
                    assert!(
                        same_value(&data, &expected),
                        "{encoding:?} delivers {data} for {expected}"
                    );
                }
                other => panic!("{encoding:?} message frame decodes as {other:?}"),
            }
        }
    }
}
