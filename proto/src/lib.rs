//! The shardcast wire protocol: the frames a client and the gateway exchange over
//! one WebSocket, in either of the two encodings, plus the close codes and the
//! channel-name rules. `proto/PROTOCOL.md` is the normative text; this crate is
//! its executable form and `proto/vectors/` pins both down byte for byte.
//!
//! The gateway, the Rust client and the test vectors all go through this crate,
//! so an encoding change shows up as a vector mismatch instead of a silent
//! incompatibility between the two ends.

#![warn(missing_docs)]

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

pub mod close;
pub mod redis;
#[cfg(feature = "testing")]
pub mod testing;

/// Protocol version carried by the subprotocol names and the welcome frame.
pub const PROTOCOL_VERSION: u32 = 1;

/// How frames are encoded on one connection, chosen once by WebSocket subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// UTF-8 JSON in text frames; the default when the client names no subprotocol.
    Json,
    /// MessagePack maps (named fields) in binary frames.
    MsgPack,
}

impl Encoding {
    /// Both encodings, in index order (see [`Encoding::index`]).
    pub const ALL: [Encoding; 2] = [Encoding::Json, Encoding::MsgPack];

    /// The `Sec-WebSocket-Protocol` token that selects this encoding.
    pub const fn subprotocol(self) -> &'static str {
        match self {
            Encoding::Json => "shardcast.v1.json",
            Encoding::MsgPack => "shardcast.v1.msgpack",
        }
    }

    /// Looks a subprotocol token up; `None` for anything this version does not speak.
    pub fn from_subprotocol(token: &str) -> Option<Encoding> {
        Encoding::ALL
            .into_iter()
            .find(|e| e.subprotocol().eq_ignore_ascii_case(token.trim()))
    }

    /// A dense index (0 for JSON, 1 for MessagePack) for per-encoding arrays.
    pub const fn index(self) -> usize {
        match self {
            Encoding::Json => 0,
            Encoding::MsgPack => 1,
        }
    }

    /// Whether frames of this encoding travel as WebSocket binary frames.
    pub const fn is_binary(self) -> bool {
        matches!(self, Encoding::MsgPack)
    }
}

/// Machine-readable error codes carried by `error` frames and HTTP API errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame could not be decoded or lacks a required field.
    BadRequest,
    /// The `op` is not one this protocol version knows.
    UnknownOp,
    /// The channel name is empty, too long or has characters outside the allowed set.
    BadChannel,
    /// The connection already holds the maximum number of subscriptions.
    TooManyChannels,
    /// `unsubscribe` for a channel this connection is not subscribed to.
    NotSubscribed,
    /// The operation is not allowed on this gateway (client publish disabled, bad API key).
    Forbidden,
    /// A publish payload above the configured maximum.
    PayloadTooLarge,
    /// A dependency (the broker) cannot take the request right now; retry later.
    Unavailable,
    /// A bug or unexpected failure on the gateway.
    Internal,
    /// The request needs an identity the connection lacks, or its token was refused.
    Unauthorized,
    /// The channel rules do not let this identity subscribe or publish here.
    PermissionDenied,
    /// Too many requests of this kind in a short time.
    RateLimited,
    /// `history` of a channel that keeps no history.
    NoHistory,
    /// The broker did not answer in time: the publication may or may not have gone out.
    Timeout,
    /// A code this version of the crate does not know (sent by a newer gateway).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// Every code a gateway of this version sends.
    pub const ALL_SENT: [ErrorCode; 14] = [
        ErrorCode::BadRequest,
        ErrorCode::UnknownOp,
        ErrorCode::BadChannel,
        ErrorCode::TooManyChannels,
        ErrorCode::NotSubscribed,
        ErrorCode::Forbidden,
        ErrorCode::PayloadTooLarge,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
        ErrorCode::Unauthorized,
        ErrorCode::PermissionDenied,
        ErrorCode::RateLimited,
        ErrorCode::NoHistory,
        ErrorCode::Timeout,
    ];

    /// The snake_case name used on the wire and as a metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::BadChannel => "bad_channel",
            ErrorCode::TooManyChannels => "too_many_channels",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::NoHistory => "no_history",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Unknown => "unknown",
        }
    }
}

/// A place in a channel's history: an offset within an epoch (PROTOCOL.md 19.2).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StreamPosition {
    /// The offset of a publication (0: before the first).
    pub offset: u64,
    /// The epoch the offset belongs to.
    pub epoch: String,
}

/// One publication read from history (`history` frame).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Its offset.
    pub offset: u64,
    /// The payload.
    pub data: Value,
}

/// One member of a channel's presence (`presence` frame): a user, however many
/// connections it has (PROTOCOL.md 21).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceEntry {
    /// The user id.
    pub user: String,
    /// What its connection's token says of it (the `info` claim), or null.
    #[serde(default)]
    pub info: Value,
}

/// Why a `gap` frame was sent: what history could not cover (PROTOCOL.md 19.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GapReason {
    /// The channel keeps no history.
    NoHistory,
    /// The store lost the channel's history; offsets restart under a new epoch.
    EpochChanged,
    /// More was missed than the store holds or one recovery may return.
    TooFar,
    /// The store could not be read.
    Unavailable,
    /// A reason this version of the crate does not know (sent by a newer gateway).
    #[serde(other)]
    Unknown,
}

impl GapReason {
    /// The snake_case name used on the wire and as a metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            GapReason::NoHistory => "no_history",
            GapReason::EpochChanged => "epoch_changed",
            GapReason::TooFar => "too_far",
            GapReason::Unavailable => "unavailable",
            GapReason::Unknown => "unknown",
        }
    }
}

/// Longest idempotency key (PROTOCOL.md 19.9).
pub const MAX_IDEMPOTENCY_KEY: usize = 64;

/// Whether an idempotency key has the shape PROTOCOL.md 19.9 allows.
pub fn valid_idempotency_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_IDEMPOTENCY_KEY
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A request from a client, after validation of its shape (not of its channel name,
/// whose limits are the gateway's configuration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Start receiving `message` frames of a channel; answered by `ack` or `error`.
    Subscribe {
        /// The request id, echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The channel.
        channel: String,
        /// A subscription token for a channel the connection token does not grant.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// Recover what was published after this position (PROTOCOL.md 19.3).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recover: Option<StreamPosition>,
        /// Deliver the channel's latest publication at once (a state channel).
        #[serde(default, skip_serializing_if = "is_false")]
        latest: bool,
    },
    /// Stop receiving a channel; answered by `ack` or `error`.
    Unsubscribe {
        /// The request id, echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The channel.
        channel: String,
    },
    /// Publish `data` to a channel, where the gateway allows client publishing.
    Publish {
        /// The request id, echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The channel.
        channel: String,
        /// The payload, any JSON value.
        data: Value,
        /// Publish at most once per key (PROTOCOL.md 19.9).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<String>,
    },
    /// Reads a channel's history; answered by a `history` frame.
    History {
        /// The request id, echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The channel.
        channel: String,
        /// Publications after this position; without it, the latest ones.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<StreamPosition>,
        /// At most this many publications.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u64>,
    },
    /// Reads a channel's presence; answered by a `presence` frame (PROTOCOL.md 21).
    Presence {
        /// The request id, echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The channel.
        channel: String,
    },
    /// Application-level heartbeat (browsers cannot see WebSocket pings); answered by `pong`.
    Ping {
        /// The request id, echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// Authenticates the connection (the client's first frame); answered by `welcome`.
    Connect {
        /// The request id, echoed in the welcome.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The connection token.
        token: String,
        /// The client library's name, for logs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// The client library's version, for logs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<String>,
    },
    /// Replaces the connection token (same user) before it expires; answered by `ack`.
    Refresh {
        /// The request id, echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The new connection token.
        token: String,
    },
    /// Replaces a subscription token before it expires; answered by `ack`.
    SubRefresh {
        /// The request id, echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The channel held by subscription token.
        channel: String,
        /// The new subscription token.
        token: String,
    },
}

impl ClientFrame {
    /// The request id the client chose, echoed in the reply.
    pub fn id(&self) -> Option<u64> {
        match self {
            ClientFrame::Subscribe { id, .. }
            | ClientFrame::Unsubscribe { id, .. }
            | ClientFrame::Publish { id, .. }
            | ClientFrame::Ping { id }
            | ClientFrame::Connect { id, .. }
            | ClientFrame::Refresh { id, .. }
            | ClientFrame::SubRefresh { id, .. }
            | ClientFrame::History { id, .. }
            | ClientFrame::Presence { id, .. } => *id,
        }
    }
}

/// Every field any operation may carry. Decoding goes through this flat shape first so
/// that an unknown `op` or a missing field is told apart from an undecodable frame and
/// the error can still echo the request id.
#[derive(Deserialize)]
struct LooseClientFrame {
    op: Option<String>,
    id: Option<u64>,
    channel: Option<String>,
    #[serde(default, deserialize_with = "present")]
    data: Option<Value>,
    token: Option<String>,
    name: Option<String>,
    version: Option<String>,
    recover: Option<StreamPosition>,
    #[serde(default)]
    latest: bool,
    idempotency_key: Option<String>,
    since: Option<StreamPosition>,
    limit: Option<u64>,
}

/// Reads a field that is present, so that `"data": null` is `Some(Null)`, not missing.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// Why a client frame was refused; `id` is the request id when it could be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct DecodeError {
    /// The request id, echoed in the error frame where the frame got that far.
    pub id: Option<u64>,
    /// What went wrong, for the client's code.
    pub code: ErrorCode,
    /// What went wrong, for a person.
    pub message: String,
}

/// Longest error message sent back: decoders quote the input they choke on, and an
/// error frame must not echo a client's whole message back to it.
const MAX_ERROR_MESSAGE: usize = 160;

impl DecodeError {
    fn new(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_ERROR_MESSAGE {
            let mut end = MAX_ERROR_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        DecodeError { id, code, message }
    }
}

/// Decodes one client frame (a whole WebSocket message) in the given encoding.
pub fn decode_client(encoding: Encoding, bytes: &[u8]) -> Result<ClientFrame, DecodeError> {
    let loose: LooseClientFrame = match encoding {
        Encoding::Json => serde_json::from_slice(bytes)
            .map_err(|e| DecodeError::new(None, ErrorCode::BadRequest, format!("invalid JSON frame: {e}")))?,
        Encoding::MsgPack => rmp_serde::from_slice(bytes)
            .map_err(|e| DecodeError::new(None, ErrorCode::BadRequest, format!("invalid MessagePack frame: {e}")))?,
    };
    let id = loose.id;
    let op = loose
        .op
        .ok_or_else(|| DecodeError::new(id, ErrorCode::BadRequest, "missing field `op`"))?;
    let channel =
        |c: Option<String>| c.ok_or_else(|| DecodeError::new(id, ErrorCode::BadRequest, "missing field `channel`"));
    let token =
        |t: Option<String>| t.ok_or_else(|| DecodeError::new(id, ErrorCode::BadRequest, "missing field `token`"));
    match op.as_str() {
        "subscribe" => Ok(ClientFrame::Subscribe {
            id,
            channel: channel(loose.channel)?,
            token: loose.token,
            recover: loose.recover,
            latest: loose.latest,
        }),
        "connect" => Ok(ClientFrame::Connect {
            id,
            token: token(loose.token)?,
            name: loose.name,
            version: loose.version,
        }),
        "refresh" => Ok(ClientFrame::Refresh {
            id,
            token: token(loose.token)?,
        }),
        "sub_refresh" => Ok(ClientFrame::SubRefresh {
            id,
            channel: channel(loose.channel)?,
            token: token(loose.token)?,
        }),
        "unsubscribe" => Ok(ClientFrame::Unsubscribe {
            id,
            channel: channel(loose.channel)?,
        }),
        "publish" => Ok(ClientFrame::Publish {
            id,
            channel: channel(loose.channel)?,
            data: loose
                .data
                .ok_or_else(|| DecodeError::new(id, ErrorCode::BadRequest, "missing field `data`"))?,
            idempotency_key: loose.idempotency_key,
        }),
        "history" => Ok(ClientFrame::History {
            id,
            channel: channel(loose.channel)?,
            since: loose.since,
            limit: loose.limit,
        }),
        "presence" => Ok(ClientFrame::Presence {
            id,
            channel: channel(loose.channel)?,
        }),
        "ping" => Ok(ClientFrame::Ping { id }),
        other => Err(DecodeError::new(
            id,
            ErrorCode::UnknownOp,
            format!("unknown op `{}`", other.chars().take(64).collect::<String>()),
        )),
    }
}

/// Encodes a client frame (what a client library sends).
pub fn encode_client(encoding: Encoding, frame: &ClientFrame) -> Result<Vec<u8>, EncodeError> {
    encode(encoding, frame)
}

/// A frame that could not be encoded. Never an empty frame on the wire instead:
/// the caller counts and logs it and sends nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode a {encoding:?} frame: {message}")]
pub struct EncodeError {
    /// The encoding that failed.
    pub encoding: Encoding,
    /// The serializer's message.
    pub message: String,
}

/// Why the gateway ended one subscription (`unsubscribed` frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnsubscribeCode {
    /// The subscription token expired without a `sub_refresh`.
    TokenExpired,
    /// An operator ended it, or a refreshed connection token no longer grants it.
    PermissionDenied,
    /// A code this version of the crate does not know (sent by a newer gateway).
    #[serde(other)]
    Unknown,
}

/// A frame the gateway sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// First frame on every connection.
    Welcome {
        /// Protocol version the gateway speaks on this connection.
        version: u32,
        /// The gateway instance's id (stable for the process's life).
        node: String,
        /// Which shard (core) of that instance owns this connection.
        shard: u32,
        /// How often the gateway pings, so a client can size its own dead-peer timeout.
        ping_interval_ms: u64,
        /// The `connect` request this answers, if it answers one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The connection's user (the token's `sub`); none when anonymous.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        /// When the connection's token expires (Unix seconds); none when it does not.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<u64>,
    },
    /// A request succeeded.
    Ack {
        /// The id of the request this answers, if it had one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// For `refresh` and `sub_refresh`: when the new token expires (Unix seconds).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<u64>,
        /// For `subscribe` on a channel with history: the position the subscription
        /// starts after; for `publish` there: the publication's offset.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        /// With `offset`: the channel's epoch.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
        /// For `subscribe` with `recover`: whether every missed publication follows.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        /// For `publish`: the idempotency key was used already; nothing was published.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duplicate: Option<bool>,
    },
    /// A request failed; the connection stays open.
    Error {
        /// The id of the request this answers, if it had one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// What failed, for code.
        code: ErrorCode,
        /// What failed, for a person.
        message: String,
    },
    /// Reply to a client `ping`.
    Pong {
        /// The id of the request this answers, if it had one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// A publication on a subscribed channel.
    Message {
        /// The channel it was published to.
        channel: String,
        /// Per channel and gateway instance, +1 for each publication delivered
        /// live; 0 for one delivered from history.
        seq: u64,
        /// On a channel with history: the publication's offset.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        /// With `offset`: the channel's epoch.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
        /// The payload.
        data: Value,
    },
    /// Publications of a subscribed channel may have been missed just before this
    /// frame, on an open connection: the gateway instance lost its broker (Redis)
    /// subscription for a while. A client that must not miss messages re-reads its
    /// source of truth for the channel.
    Gap {
        /// The channel that may have a gap.
        channel: String,
        /// Why history could not cover it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<GapReason>,
    },
    /// The answer to a `history` request.
    History {
        /// The id of the request this answers, if it had one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The channel.
        channel: String,
        /// The channel's top offset.
        offset: u64,
        /// The channel's epoch.
        epoch: String,
        /// The publications, in offset order.
        publications: Vec<HistoryEntry>,
        /// Whether they reach from the requested position to the top with no hole.
        complete: bool,
    },
    /// The answer to a `presence` request (PROTOCOL.md 21).
    Presence {
        /// The id of the request this answers, if it had one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The channel.
        channel: String,
        /// How many members the channel has.
        count: u64,
        /// Its members, at most the channel's limit.
        members: Vec<PresenceEntry>,
    },
    /// A user became a member of a channel with presence the connection subscribes.
    Join {
        /// The channel.
        channel: String,
        /// The user id.
        user: String,
        /// What its connection's token says of it (the `info` claim), or null.
        #[serde(default)]
        info: Value,
    },
    /// A user stopped being a member.
    Leave {
        /// The channel.
        channel: String,
        /// The user id.
        user: String,
    },
    /// The gateway ended one subscription; the connection stays open.
    Unsubscribed {
        /// The channel.
        channel: String,
        /// Why.
        code: UnsubscribeCode,
        /// Why, for a person.
        message: String,
    },
    /// A frame type this version does not know (sent by a newer gateway); clients ignore it.
    #[serde(other)]
    Unknown,
}

impl ServerFrame {
    /// A plain `ack` of the request `id`.
    pub fn ack(id: Option<u64>) -> ServerFrame {
        ServerFrame::Ack {
            id,
            expires_at: None,
            offset: None,
            epoch: None,
            recovered: None,
            duplicate: None,
        }
    }
}

/// Encodes a server frame. Message frames on the gateway's hot path go through
/// [`encode_message`] instead, which does not need the payload parsed.
pub fn encode_server(encoding: Encoding, frame: &ServerFrame) -> Result<Vec<u8>, EncodeError> {
    encode(encoding, frame)
}

/// Decodes a server frame (what a client library receives).
pub fn decode_server(encoding: Encoding, bytes: &[u8]) -> Result<ServerFrame, DecodeError> {
    match encoding {
        Encoding::Json => serde_json::from_slice(bytes)
            .map_err(|e| DecodeError::new(None, ErrorCode::BadRequest, format!("invalid JSON frame: {e}"))),
        Encoding::MsgPack => rmp_serde::from_slice(bytes)
            .map_err(|e| DecodeError::new(None, ErrorCode::BadRequest, format!("invalid MessagePack frame: {e}"))),
    }
}

#[derive(Serialize)]
struct MessageFrameJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    channel: &'a str,
    seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<&'a str>,
    data: &'a RawValue,
}

/// Where a publication sits in its channel's history, for [`encode_message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessagePosition<'a> {
    /// The publication's offset.
    pub offset: u64,
    /// The channel's epoch.
    pub epoch: &'a str,
}

/// Encodes a `message` frame from a payload that is already valid JSON text.
///
/// For JSON the payload bytes are copied verbatim, never re-parsed; for MessagePack they
/// are parsed once and transcoded. The result is identical to encoding
/// [`ServerFrame::Message`] with the same fields.
pub fn encode_message(
    encoding: Encoding,
    channel: &str,
    seq: u64,
    position: Option<MessagePosition<'_>>,
    data: &RawValue,
) -> Result<Vec<u8>, EncodeError> {
    match encoding {
        Encoding::Json => encode(
            encoding,
            &MessageFrameJson {
                kind: "message",
                channel,
                seq,
                offset: position.map(|p| p.offset),
                epoch: position.map(|p| p.epoch),
                data,
            },
        ),
        Encoding::MsgPack => {
            let data: Value = serde_json::from_str(data.get()).map_err(|e| EncodeError {
                encoding,
                message: e.to_string(),
            })?;
            encode(
                encoding,
                &ServerFrame::Message {
                    channel: channel.to_owned(),
                    seq,
                    offset: position.map(|p| p.offset),
                    epoch: position.map(|p| p.epoch.to_owned()),
                    data,
                },
            )
        }
    }
}

fn encode<T: Serialize>(encoding: Encoding, value: &T) -> Result<Vec<u8>, EncodeError> {
    let fail = |message: String| EncodeError { encoding, message };
    match encoding {
        Encoding::Json => serde_json::to_vec(value).map_err(|e| fail(e.to_string())),
        Encoding::MsgPack => rmp_serde::to_vec_named(value).map_err(|e| fail(e.to_string())),
    }
}

/// Why a channel name is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChannelNameError {
    /// The name is the empty string.
    #[error("channel name is empty")]
    Empty,
    /// The name is longer than the gateway's limit (in bytes).
    #[error("channel name is longer than {max} bytes")]
    TooLong {
        /// The limit.
        max: usize,
    },
    /// The name contains a byte outside `[A-Za-z0-9_.:@/=+#-]`, or starts with `#`.
    #[error("channel name has a character outside [A-Za-z0-9_.:@/=+#-] or starts with #")]
    BadCharacter,
}

/// Default and recommended maximum channel-name length in bytes.
pub const DEFAULT_MAX_CHANNEL_LEN: usize = 128;

/// Checks a channel name against the protocol's charset and a length limit.
pub fn validate_channel(name: &str, max_len: usize) -> Result<(), ChannelNameError> {
    if name.is_empty() {
        return Err(ChannelNameError::Empty);
    }
    if name.len() > max_len {
        return Err(ChannelNameError::TooLong { max: max_len });
    }
    // `#` is the user boundary of the channel rules; never first, so no channel can
    // collide with the gateway's internal Redis probe channel (`#probe#...`).
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"_.:@/=+#-".contains(&b);
    if !name.starts_with('#') && name.bytes().all(allowed) {
        Ok(())
    } else {
        Err(ChannelNameError::BadCharacter)
    }
}

#[cfg(test)]
mod tests;
