//! What a shard does with a client's frames: the protocol's operations
//! (subscribe, unsubscribe, publish, ping, history) on top of the shard's channel table, and
//! the replies. Decoding is the proto crate's; framing is the ws module's.

use std::sync::Arc;

use bytes::Bytes;
use shardcast_proto::{
    decode_client, valid_idempotency_key, validate_channel, ClientFrame, ErrorCode, ServerFrame, MAX_IDEMPOTENCY_KEY,
};

use super::channel_table::{Emptied, Joined, PendingAck, SubscriptionKey};
use super::connection::{ConnectionFlags, Phase};
use super::pusher::is_pusher;
use super::recovery::HistoryRequest;
use super::{answer_when_live, Shard, ShardState};
use crate::auth::{Refusal, ANONYMOUS};
use crate::broker::Position;
use crate::fanout::router::Source;
use crate::payload::Payload;
use crate::ws::deflate::deflate_frame;
use crate::ws::frame::{pong_frame, server_frame, Flow, Incoming};
use tungstenite::protocol::frame::coding::{Data, OpCode};

impl Shard<'_> {
    /// Handles one frame from connection `key`.
    pub(super) fn on_incoming(&mut self, key: usize, ev: Incoming<'_>) -> Flow {
        match ev {
            Incoming::Message { binary, payload } => {
                let (encoding, echo) = match self.st.conns.get(key) {
                    Some(c) if c.phase == Phase::Open && is_pusher(c) => {
                        self.on_pusher_message(key, binary, payload);
                        return Flow::Continue;
                    }
                    Some(c) if c.phase == Phase::Open => (c.encoding, c.flags.has(ConnectionFlags::ECHO)),
                    // A closing connection's data is ignored (RFC 6455 5.5.1).
                    _ => return Flow::Continue,
                };
                if echo {
                    let opcode = if binary {
                        OpCode::Data(Data::Binary)
                    } else {
                        OpCode::Data(Data::Text)
                    };
                    let mut frame = server_frame(opcode, payload);
                    let window = self.st.conns.get(key).map_or(0, |c| c.deflate_window);
                    let min = self.env.config.compression.min_bytes();
                    if window != 0 && min.is_some_and(|min| frame.len() >= min) {
                        // Compressed for this client alone, with its window.
                        if let Some(compressed) = deflate_frame(&frame, window) {
                            frame = compressed;
                        }
                    }
                    self.reply(key, frame);
                    return Flow::Continue;
                }
                if binary != encoding.is_binary() {
                    let expected = if encoding.is_binary() { "binary" } else { "text" };
                    self.reply_error(
                        key,
                        None,
                        ErrorCode::BadRequest,
                        &format!("this connection's encoding uses {expected} frames"),
                    );
                    return Flow::Continue;
                }
                match decode_client(encoding, payload) {
                    Ok(frame) => self.on_request(key, frame),
                    Err(e) => self.reply_error(key, e.id, e.code, &e.message),
                }
                Flow::Continue
            }
            Incoming::Ping(payload) => {
                self.reply(key, pong_frame(payload));
                Flow::Continue
            }
            Incoming::Pong => Flow::Continue,
            Incoming::Close { code, .. } => {
                let deadline = self.env.close_deadline();
                if let Some(conn) = self.st.conns.get_mut(key) {
                    conn.close_received(code, deadline);
                }
                Flow::Stop
            }
        }
    }

    fn on_request(&mut self, key: usize, frame: ClientFrame) {
        let Some(conn) = self.st.conns.get_mut(key) else {
            return;
        };
        let first = !conn.flags.has(ConnectionFlags::FIRST_FRAME_DONE);
        conn.flags.set(ConnectionFlags::FIRST_FRAME_DONE, true);
        let greeted = conn.flags.greeted();
        match frame {
            ClientFrame::Connect { id, token, .. } => self.connect(key, id, &token, first),
            other if !greeted => {
                self.env.metrics.auth_refusals.with_label_values(&["missing"]).inc();
                self.reply_error(
                    key,
                    other.id(),
                    ErrorCode::Unauthorized,
                    "this gateway requires a token: send op connect first",
                )
            }
            ClientFrame::Refresh { id, token } => self.refresh(key, id, &token),
            ClientFrame::SubRefresh { id, channel, token } => self.sub_refresh(key, id, &channel, &token),
            ClientFrame::Subscribe {
                id,
                channel,
                token,
                recover,
                latest,
            } => self.subscribe(key, id, &channel, token.as_deref(), HistoryRequest { recover, latest }),
            ClientFrame::Unsubscribe { id, channel } => self.unsubscribe(key, id, &channel),
            ClientFrame::Publish {
                id,
                channel,
                data,
                idempotency_key,
            } => self.client_publish(key, id, channel, data, idempotency_key),
            ClientFrame::Ping { id } => self.reply_frame(key, &ServerFrame::Pong { id }),
            ClientFrame::History {
                id,
                channel,
                since,
                limit,
            } => self.history_request(key, id, channel, since, limit),
            ClientFrame::Presence { id, channel } => self.presence_request(key, id, channel),
        }
    }

    fn subscribe(&mut self, key: usize, id: Option<u64>, channel: &str, token: Option<&str>, history: HistoryRequest) {
        let env = self.env;
        if let Err(e) = validate_channel(channel, env.config.max_channel_len) {
            return self.reply_error(key, id, ErrorCode::BadChannel, &e.to_string());
        }
        let ShardState { conns, table, .. } = &mut *self.st;
        let Some(conn) = conns.get_mut(key) else {
            return;
        };
        let pending = PendingAck {
            conn: key as u32,
            conn_id: conn.id,
            request: id,
            unrecoverable: history.recover.is_some(),
        };
        if conn.subs.iter().any(|&s| table.channel_of(s) == Some(channel)) {
            // Already subscribed: the ack must still wait if the channel is pending,
            // since an ack promises that every later publication arrives.
            if !table.add_pending_ack(channel, pending) {
                let ack = self.subscribe_ack(id, self.st.table.position(channel));
                self.reply_frame(key, &ack);
            }
            return;
        }
        if !env.subscribe_allowed_now(conn) {
            env.metrics.auth_refusals.with_label_values(&["rate_limited"]).inc();
            let msg = format!("at most {} subscribes per second", env.config.subscribe_rate);
            return self.reply_error(key, id, ErrorCode::RateLimited, &msg);
        }
        let grant = match env.permit_subscribe(conn.auth.as_deref(), channel, token) {
            Ok(grant) => grant,
            Err((code, why)) => return self.refuse(key, id, code, why),
        };
        if conn.subs.len() >= env.config.max_channels_per_connection {
            let msg = format!(
                "at most {} subscriptions per connection",
                env.config.max_channels_per_connection
            );
            return self.reply_error(key, id, ErrorCode::TooManyChannels, &msg);
        }
        let (sub, joined) = table.subscribe(channel, key as u32, conn.encoding);
        conn.subs.push(sub);
        if let Some(expires_at) = grant {
            conn.auth_mut().sub_tokens.push((sub, expires_at));
        }
        env.shard_metrics.subscriptions.set(table.subscription_count() as i64);
        self.native_presence_join(key, channel);
        let ShardState { table, .. } = &mut *self.st;
        let keeps_history = env.publisher.channel_history().policy(channel).is_some();
        if keeps_history && (history.recover.is_some() || history.latest) {
            if joined == Joined::FirstOnShard {
                env.router.interest(env.id, Arc::from(channel), true);
            }
            return self.begin_recovery(key, sub, id, channel, history, joined == Joined::Active);
        }
        if answer_when_live(env, table, channel, pending, &joined) {
            let mut ack = self.subscribe_ack(id, self.st.table.position(channel));
            if let (ServerFrame::Ack { recovered, .. }, true) = (&mut ack, history.recover.is_some()) {
                // `recover` on a channel without history: nothing to recover from.
                *recovered = Some(false);
            }
            self.reply_frame(key, &ack)
        }
    }

    fn unsubscribe(&mut self, key: usize, id: Option<u64>, channel: &str) {
        let ShardState { conns, table, .. } = &mut *self.st;
        let Some(conn) = conns.get_mut(key) else {
            return;
        };
        let Some(pos) = conn.subs.iter().position(|&s| table.channel_of(s) == Some(channel)) else {
            return self.reply_error(key, id, ErrorCode::NotSubscribed, "not subscribed to this channel");
        };
        let sub = conn.subs[pos];
        self.drop_subscription(key, sub);
        self.native_presence_leave(key, Some(channel));
        self.reply_frame(key, &ServerFrame::ack(id));
    }

    /// Removes one subscription of connection `key` from everywhere it is recorded;
    /// a channel that lost its last local subscriber goes back to the router.
    pub(super) fn drop_subscription(&mut self, key: usize, sub: SubscriptionKey) {
        let ShardState { conns, table, .. } = &mut *self.st;
        if let Some(conn) = conns.get_mut(key) {
            conn.subs.retain(|&s| s != sub);
            if let Some(auth) = &mut conn.auth {
                auth.sub_tokens.retain(|(s, _)| *s != sub);
            }
        }
        let emptied = table.unsubscribe(sub);
        self.env
            .shard_metrics
            .subscriptions
            .set(table.subscription_count() as i64);
        self.forget_recovery(sub);
        if let Some(channel) = emptied {
            self.channel_emptied(channel);
        }
    }

    fn client_publish(
        &mut self,
        key: usize,
        id: Option<u64>,
        channel: String,
        data: serde_json::Value,
        idempotency_key: Option<String>,
    ) {
        let env = self.env;
        if !env.config.allow_client_publish {
            return self.reply_error(
                key,
                id,
                ErrorCode::Forbidden,
                "client publishing is disabled on this gateway",
            );
        }
        if let Err(e) = validate_channel(&channel, env.config.max_channel_len) {
            return self.reply_error(key, id, ErrorCode::BadChannel, &e.to_string());
        }
        let Some(conn) = self.st.conns.get(key) else {
            return;
        };
        let conn_id = conn.id;
        let who = conn.auth.as_ref().map_or(&ANONYMOUS, |a| &a.identity);
        if let Err(Refusal(why)) = env.auth.rules().may_publish(who, &channel) {
            return self.refuse(key, id, ErrorCode::PermissionDenied, why);
        }
        let payload = match Payload::from_value(&data) {
            Ok(p) => p,
            Err(e) => return self.reply_error(key, id, ErrorCode::BadRequest, &format!("unusable data: {e}")),
        };
        if let Some(k) = idempotency_key.as_deref().filter(|k| !valid_idempotency_key(k)) {
            let msg = format!(
                "idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY} characters of [A-Za-z0-9_.:-] (got {} bytes)",
                k.len()
            );
            return self.reply_error(key, id, ErrorCode::BadRequest, &msg);
        }
        let publisher = env.publisher.clone();
        env.spawner.spawn(move |core| async move {
            let idempotency = idempotency_key.map(Arc::from);
            let result = publisher
                .publish(Arc::from(channel), payload, Source::Client, idempotency)
                .await;
            core.with(|shard| {
                if shard.st.conns.get(key).map(|c| c.id) != Some(conn_id) {
                    return;
                }
                match result {
                    Ok(report) => {
                        let mut ack = shard.subscribe_ack(id, report.position.as_ref());
                        if let ServerFrame::Ack { duplicate, .. } = &mut ack {
                            *duplicate = report.duplicate.then_some(true);
                        }
                        shard.reply_frame(key, &ack)
                    }
                    Err(e) if e.outcome_unknown() => shard.reply_error(key, id, ErrorCode::Timeout, &e.to_string()),
                    Err(e) => shard.reply_error(key, id, ErrorCode::Unavailable, &e.to_string()),
                }
            });
        });
    }

    /// The last local subscriber of a channel left: tell the router, and answer any
    /// subscribe still waiting for it (its subscriber has left since, so the ack
    /// only keeps "one reply per request"; it precedes the unsubscribe's ack).
    pub(super) fn channel_emptied(&mut self, channel: Emptied) {
        for ack in channel.pending {
            self.reply_to(ack, &channel.name, &ServerFrame::ack(ack.request));
        }
        self.env.router.interest(self.env.id, channel.name, false);
    }

    /// The router's answer about a channel this shard asked for.
    pub(super) fn interest_confirmed(
        &mut self,
        channel: &str,
        result: Result<(), ErrorCode>,
        position: Option<Position>,
    ) {
        let acks = self.st.table.activate(channel);
        self.st.table.set_position(channel, position.clone());
        self.channel_live(channel, result);
        let code = match result {
            Ok(()) => {
                for ack in acks {
                    let mut frame = self.subscribe_ack(ack.request, position.as_ref());
                    if let ServerFrame::Ack { recovered, .. } = &mut frame {
                        *recovered = ack.unrecoverable.then_some(false);
                    }
                    self.reply_to(ack, channel, &frame);
                }
                return;
            }
            Err(code) => code,
        };
        let ShardState { conns, table, .. } = &mut *self.st;
        for s in table.subscriptions_of(channel) {
            if let Some(conn) = conns.get_mut(s.conn as usize) {
                conn.subs.retain(|&k| k != s.sub);
            }
            table.unsubscribe(s.sub);
        }
        self.env
            .shard_metrics
            .subscriptions
            .set(table.subscription_count() as i64);
        for ack in acks {
            let frame = ServerFrame::Error {
                id: ack.request,
                code,
                message: "the broker could not subscribe this channel; retry later".into(),
            };
            self.reply_to(ack, channel, &frame);
        }
    }

    /// Answers a subscribe that waited for the router (a Pusher socket gets the
    /// Pusher form of the answer).
    fn reply_to(&mut self, ack: PendingAck, channel: &str, frame: &ServerFrame) {
        match self.st.conns.get(ack.conn as usize) {
            Some(c) if c.id == ack.conn_id && is_pusher(c) => {
                let (ok, recovered) = match frame {
                    ServerFrame::Error { .. } => (false, None),
                    ServerFrame::Ack { recovered, .. } => (true, *recovered),
                    _ => (true, None),
                };
                self.pusher_subscribe_answer(ack.conn as usize, channel, ok, recovered);
            }
            Some(c) if c.id == ack.conn_id => self.reply_frame(ack.conn as usize, frame),
            _ => {}
        }
    }

    /// Answers a request refused by the auth layer, counted by reason.
    pub(super) fn refuse(&mut self, key: usize, id: Option<u64>, code: ErrorCode, why: &str) {
        let reason = match code {
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::RateLimited => "rate_limited",
            _ => "invalid",
        };
        self.env.metrics.auth_refusals.with_label_values(&[reason]).inc();
        self.reply_error(key, id, code, why);
    }

    pub(super) fn reply_error(&mut self, key: usize, id: Option<u64>, code: ErrorCode, message: &str) {
        self.env.metrics.client_errors.with_label_values(&[code.as_str()]).inc();
        self.reply_frame(
            key,
            &ServerFrame::Error {
                id,
                code,
                message: message.to_owned(),
            },
        );
    }

    pub(super) fn reply_frame(&mut self, key: usize, frame: &ServerFrame) {
        let Some(encoding) = self.st.conns.get(key).map(|c| c.encoding) else {
            return;
        };
        if let Some(bytes) = self.env.encode(encoding, frame) {
            self.reply(key, bytes);
        }
    }

    /// Queues a reply frame under the same queue limit as publications, so a client
    /// that sends requests without reading the replies is a slow consumer too.
    pub(super) fn reply(&mut self, key: usize, frame: Bytes) {
        let env = self.env;
        if let Some(conn) = self.st.conns.get_mut(key) {
            env.send_or_close(conn, &frame, env.close_deadline());
        }
    }
}
