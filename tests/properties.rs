//! Property tests of the gateway's input parsers (the short, always-on part of the
//! fuzzing work; fuzz/ has the cargo-fuzz targets for long runs):
//! - the fuzz checks (fuzz/src/lib.rs, included below) over the checked-in corpus,
//!   and over proptest's random and structured inputs;
//! - WebSocket framing: any message sequence, fragmented and masked any way and cut
//!   into reads anywhere, comes out of `read_frames` as sent;
//! - the upgrade request: any valid request, whatever its header order, case and
//!   extra headers, is an upgrade with the subprotocol the client preferred;
//! - tokens: any string is refused unless validly signed, and a signed token altered
//!   after signing (its claims re-encoded, a character changed, another key or an
//!   algorithm not configured) is refused.
//!
//! Inputs that still break a property (gateway bugs, reported, not yet fixed) are
//! in fuzz/regressions/; their tests are ignored until the fix lands.

#[path = "../fuzz/src/lib.rs"]
mod checks;

use std::path::{Path, PathBuf};

use checks::{read_in_pieces, Event, TOKEN_SECRET};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proptest::prelude::*;
use serde_json::{json, Value};
use shardcast::ws::handshake::{parse_request, PublicRequest, WsPaths};
use shardcast_proto::testing;
use shardcast_proto::Encoding;
use shardcast_testkit::ws_frame::{encode_frame, encode_raw, opcode, FIN};

/// A fuzz target's property check.
type Check = fn(&[u8]);

/// Every fuzz target by name, with its check.
const TARGETS: [(&str, Check); 8] = [
    ("decode_client_json", checks::decode_client_json),
    ("decode_client_msgpack", checks::decode_client_msgpack),
    ("redis_payload", checks::redis_payload),
    ("ws_frames", checks::ws_frames),
    ("upgrade_request", checks::upgrade_request),
    ("publish_body", checks::publish_body),
    ("connect_frames", checks::connect_frames),
    ("inflate", checks::inflate),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of one fuzz input directory, sorted; empty if it does not exist.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files
}

fn check_fn(target: &str) -> Check {
    TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("known target")
        .1
}

/// Runs every input of `fuzz/<kind>/<target>` through its check.
fn replay(kind: &str, target: &str) -> usize {
    let files = inputs(&fuzz_dir().join(kind).join(target));
    for file in &files {
        let data = std::fs::read(file).unwrap();
        let outcome = std::panic::catch_unwind(|| check_fn(target)(&data));
        assert!(outcome.is_ok(), "{} breaks its property", file.display());
    }
    files.len()
}

#[test]
fn fuzz_corpus_replays_clean() {
    for (target, _) in TARGETS {
        let n = replay("corpus", target);
        assert!(n >= 5, "fuzz/corpus/{target} has {n} seeds");
    }
}

#[test]
fn the_token_corpus_holds_accepted_tokens() {
    // Else the token property would only ever see refusals.
    let corpus = fuzz_dir().join("corpus").join("connect_frames");
    let read = |name: &str| std::fs::read_to_string(corpus.join(name)).expect("seed");
    let verifier = checks::token_verifier();
    let identity = verifier
        .connection(&read("token-valid"))
        .expect("token-valid is accepted");
    assert_eq!(identity.user, "42");
    let grant = verifier
        .subscription(&read("token-subscription-valid"))
        .expect("token-subscription-valid is accepted");
    assert_eq!(grant.channel, "private:report-9");
    for refused in ["token-payload-forged", "token-alg-none", "token-oversized"] {
        assert!(verifier.connection(&read(refused)).is_err(), "{refused} is accepted");
    }
}

#[test]
fn regression_msgpack_data_deeper_than_json_allows() {
    assert!(replay("regressions", "decode_client_msgpack") > 0);
}

#[test]
fn regression_publish_number_out_of_range() {
    assert!(replay("regressions", "publish_body") > 0);
}

#[test]
fn regression_decode_error_messages_stay_short() {
    assert!(replay("regressions", "decode_client_json") > 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_keep_every_property(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        for (_, check) in TARGETS {
            check(&data);
        }
    }

    #[test]
    fn json_shaped_inputs_keep_every_property(value in json_value(), channel in "[a-z:/]{0,6}|[ -~]{0,4}") {
        let body = json!({"channel": channel, "data": value}).to_string();
        checks::publish_body(body.as_bytes());
        checks::publish_body(format!("[{body},{body}]").as_bytes());
        let frame = json!({"op": "publish", "id": 1, "channel": channel, "data": value}).to_string();
        checks::decode_client_json(frame.as_bytes());
        checks::redis_payload(value.to_string().as_bytes());
        checks::redis_payload(format!("@node-1 {value}").as_bytes());
    }
}

/// Far enough ahead for a test token not to expire: 2100-01-01.
const FAR_FUTURE: u64 = 4_102_444_800;

/// The claims of a connection token, any user and patterns.
fn token_claims() -> impl Strategy<Value = Value> {
    (
        "[ -~]{0,40}",
        proptest::collection::vec("[a-z0-9:.#*]{1,20}", 0..4),
        proptest::option::of("[a-z:.-]{1,20}"),
    )
        .prop_map(|(sub, channels, channel)| {
            let mut claims = json!({"sub": sub, "exp": FAR_FUTURE, "channels": channels});
            if let Some(channel) = channel {
                claims["channel"] = json!(channel);
            }
            claims
        })
}

fn mint(alg: Algorithm, claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret)).expect("mints")
}

/// The three parts of a compact JWS.
fn parts(token: &str) -> [&str; 3] {
    let mut it = token.splitn(3, '.');
    [(); 3].map(|_| it.next().expect("three parts"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_string_as_a_token_is_refused(
        token in "\\PC{0,300}|[A-Za-z0-9_-]{0,60}\\.[A-Za-z0-9_-]{0,200}\\.[A-Za-z0-9_-]{0,90}|eyJ[A-Za-z0-9_=.-]{0,300}"
    ) {
        let verifier = checks::token_verifier();
        prop_assert!(verifier.connection(&token).is_err());
        prop_assert!(verifier.subscription(&token).is_err());
        checks::token(&token);
    }

    #[test]
    fn frames_with_any_token_keep_every_property(
        op in prop_oneof![Just("connect"), Just("refresh"), Just("sub_refresh"), Just("subscribe")],
        id in proptest::option::of(any::<u64>()),
        token in "\\PC{0,200}",
        claims in token_claims(),
        signed in any::<bool>(),
    ) {
        let token = if signed { mint(Algorithm::HS256, &claims, TOKEN_SECRET) } else { token };
        let frame = json!({"op": op, "id": id, "channel": "private:report-9", "token": token});
        checks::connect_frames(frame.to_string().as_bytes());
        checks::connect_frames(&rmp_serde::to_vec_named(&frame).expect("encodes"));
    }

    #[test]
    fn a_token_altered_after_signing_is_refused(
        claims in token_claims(),
        changed in token_claims(),
        alg in prop_oneof![Just(Algorithm::HS256), Just(Algorithm::HS512)],
        at in any::<proptest::sample::Index>(),
        replacement in "[A-Za-z0-9_-]",
    ) {
        let verifier = checks::token_verifier();
        let refused = |t: &str| verifier.connection(t).is_err() && verifier.subscription(t).is_err();
        let token = mint(alg, &claims, TOKEN_SECRET);
        let identity = verifier.connection(&token).expect("a signed token is accepted");
        prop_assert_eq!(Some(identity.user.as_str()), claims["sub"].as_str());
        checks::token(&token);
        let [header, payload, signature] = parts(&token);

        // Other claims under the original signature (the payload of a token that
        // carries them, signed with anything).
        prop_assume!(changed != claims);
        let other = mint(alg, &changed, b"whatever");
        let forged = format!("{header}.{}.{signature}", parts(&other)[1]);
        prop_assert!(refused(&forged), "re-encoded claims accepted: {}", forged);

        // One character of the payload changed.
        let i = at.index(payload.len());
        if payload.as_bytes()[i] != replacement.as_bytes()[0] {
            let altered = format!("{header}.{}{replacement}{}.{signature}", &payload[..i], &payload[i + 1..]);
            prop_assert!(refused(&altered), "altered payload accepted: {}", altered);
        }

        // Another secret; an algorithm the gateway does not accept; no signature.
        prop_assert!(refused(&mint(alg, &claims, b"another secret")), "another secret accepted");
        prop_assert!(refused(&mint(Algorithm::HS384, &claims, TOKEN_SECRET)), "HS384 accepted");
        let unsigned = format!("{header}.{payload}.");
        prop_assert!(refused(&unsigned), "no signature accepted");
        // A header `{"alg":"none"}`, base64url-encoded as the payload of a token.
        let none = parts(&mint(alg, &json!({"alg": "none"}), b"x"))[1].to_owned();
        let alg_none = format!("{none}.{payload}.");
        prop_assert!(refused(&alg_none), "alg none accepted");
    }
}

/// JSON values of every kind, any finite float included: the checks must hold at
/// the edges of f64 too.
fn json_value() -> impl Strategy<Value = Value> {
    testing::json_value(any::<f64>().prop_filter("finite", |f| f.is_finite()))
}

/// One message a client sends: its type, payload, how many frames it is cut into,
/// and whether a ping is slipped between its fragments.
#[derive(Debug, Clone)]
struct Sent {
    binary: bool,
    payload: Vec<u8>,
    fragments: usize,
    ping_inside: bool,
}

fn sent_message() -> impl Strategy<Value = Sent> {
    let text = "\\PC{0,300}".prop_map(|s: String| (false, s.into_bytes()));
    let binary = proptest::collection::vec(any::<u8>(), 0..70_000).prop_map(|b| (true, b));
    (prop_oneof![4 => text, 1 => binary], 1usize..5, any::<bool>()).prop_map(
        |((binary, payload), fragments, ping_inside)| Sent {
            binary,
            payload,
            fragments,
            ping_inside,
        },
    )
}

/// The bytes a client sends for these messages, and the events a server must read.
fn client_stream(messages: &[Sent], mask: [u8; 4]) -> (Vec<u8>, Vec<Event>) {
    let mut bytes = Vec::new();
    let mut expected = Vec::new();
    for m in messages {
        let first_opcode = if m.binary { opcode::BINARY } else { opcode::TEXT };
        // Text may be cut inside a UTF-8 sequence: only the whole message must be valid.
        let size = m.payload.len().div_ceil(m.fragments).max(1);
        let pieces: Vec<&[u8]> = if m.payload.is_empty() {
            vec![&[][..]]
        } else {
            m.payload.chunks(size).collect()
        };
        for (i, piece) in pieces.iter().enumerate() {
            let op = if i == 0 { first_opcode } else { opcode::CONTINUATION };
            let fin = if i + 1 == pieces.len() { FIN } else { 0 };
            bytes.extend(encode_raw(op | fin, piece, Some(mask)));
            if m.ping_inside && i == 0 && pieces.len() > 1 {
                bytes.extend(encode_frame(opcode::PING, b"between", Some(mask)));
                expected.push(Event::Ping(b"between".to_vec()));
            }
        }
        expected.push(Event::Message {
            binary: m.binary,
            payload: m.payload.clone(),
        });
    }
    bytes.extend(encode_frame(opcode::CLOSE, &[0x03, 0xe8, b'o', b'k'], Some(mask)));
    expected.push(Event::Close {
        code: Some(1000),
        reason: "ok".into(),
    });
    (bytes, expected)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn messages_come_out_as_sent_however_the_reads_are_cut(
        messages in proptest::collection::vec(sent_message(), 0..6),
        mask in any::<[u8; 4]>(),
        cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..12),
    ) {
        let (bytes, expected) = client_stream(&messages, mask);
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len().max(1))).collect();
        cuts.sort_unstable();
        let (events, error) = read_in_pieces(&bytes, &cuts, 70_000);
        prop_assert_eq!(error, None);
        prop_assert_eq!(events, expected);
    }

    #[test]
    fn any_valid_upgrade_is_accepted_with_the_preferred_subprotocol(
        order in Just((0..5usize).collect::<Vec<_>>()).prop_shuffle(),
        upper in any::<[bool; 5]>(),
        extra in proptest::collection::vec(("X-[A-Za-z]{1,10}", "[ -~]{0,40}"), 0..8),
        offered in proptest::collection::vec(prop_oneof![
            Just("shardcast.v1.json"), Just("SHARDCAST.V1.MSGPACK"), Just("chat"), Just(" shardcast.v1.msgpack ")
        ], 0..4),
        query in "(\\?[a-z=&]{0,10})?",
    ) {
        let headers = [
            ("Host", "gw.example.com".to_owned()),
            ("Upgrade", "websocket".to_owned()),
            ("Connection", "keep-alive, Upgrade".to_owned()),
            ("Sec-WebSocket-Version", "13".to_owned()),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==".to_owned()),
        ];
        let mut head = format!("GET /ws{query} HTTP/1.1\r\n");
        for (i, &h) in order.iter().enumerate() {
            let (name, value) = &headers[h];
            let name = if upper[i] { name.to_uppercase() } else { name.to_lowercase() };
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        for (name, value) in &extra {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if !offered.is_empty() {
            head.push_str(&format!("Sec-WebSocket-Protocol: {}\r\n", offered.join(",")));
        }
        head.push_str("\r\n");
        let paths = WsPaths { protocol: "/ws", echo: None };
        let chosen = offered.iter().find(|t| Encoding::from_subprotocol(t).is_some());
        let preferred = chosen.and_then(|t| Encoding::from_subprotocol(t));
        let parsed = parse_request(head.as_bytes(), paths).expect("parses").expect("complete");
        match (offered.is_empty(), preferred) {
            (false, None) => {
                let refused = matches!(parsed, PublicRequest::Reject { status: 400, .. });
                prop_assert!(refused, "{:?}", parsed)
            }
            _ => prop_assert_eq!(parsed, PublicRequest::Upgrade {
                echo: false,
                key: "dGhlIHNhbXBsZSBub25jZQ==".into(),
                encoding: preferred.unwrap_or(Encoding::Json),
                subprotocol: chosen.map(|t| t.trim().to_owned()),
                bearer: None,
                deflate: None,
            }),
        }
        checks::upgrade_request(head.as_bytes());
        // Every prefix of the head is incomplete, never a wrong answer.
        for cut in [1, head.len() / 2, head.len() - 1] {
            prop_assert_eq!(parse_request(&head.as_bytes()[..cut], paths).ok(), Some(None));
        }
    }
}
