//! What a shard does with a client's frames: the protocol's operations
//! (subscribe, unsubscribe, publish, ping) on top of the shard's channel table, and
//! the replies. Decoding is the proto crate's; framing is the ws module's.

use std::sync::Arc;

use bytes::Bytes;
use shardcast_proto::{decode_client, validate_channel, ClientFrame, ErrorCode, ServerFrame};

use super::channel_table::{Emptied, Joined, PendingAck};
use super::connection::Phase;
use super::{Shard, ShardState};
use crate::fanout::router::Source;
use crate::payload::Payload;
use crate::ws::frame::{pong_frame, server_frame, Flow, Incoming};
use tungstenite::protocol::frame::coding::{Data, OpCode};

impl Shard<'_> {
    /// Handles one frame from connection `key`.
    pub(super) fn on_incoming(&mut self, key: usize, ev: Incoming<'_>) -> Flow {
        match ev {
            Incoming::Message { binary, payload } => {
                let (encoding, echo) = match self.st.conns.get(key) {
                    Some(c) if c.phase == Phase::Open => (c.encoding, c.echo),
                    // A closing connection's data is ignored (RFC 6455 5.5.1).
                    _ => return Flow::Continue,
                };
                if echo {
                    let opcode = if binary {
                        OpCode::Data(Data::Binary)
                    } else {
                        OpCode::Data(Data::Text)
                    };
                    self.reply(key, server_frame(opcode, payload));
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
        match frame {
            ClientFrame::Subscribe { id, channel, .. } => self.subscribe(key, id, &channel),
            ClientFrame::Unsubscribe { id, channel } => self.unsubscribe(key, id, &channel),
            ClientFrame::Publish { id, channel, data } => self.client_publish(key, id, channel, data),
            ClientFrame::Ping { id } => self.reply_frame(key, &ServerFrame::Pong { id }),
            ClientFrame::Connect { id, .. } | ClientFrame::Refresh { id, .. } | ClientFrame::SubRefresh { id, .. } => {
                self.reply_error(
                    key,
                    id,
                    ErrorCode::Unauthorized,
                    "this gateway has no token key configured",
                )
            }
        }
    }

    fn subscribe(&mut self, key: usize, id: Option<u64>, channel: &str) {
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
        };
        if conn.subs.iter().any(|&s| table.channel_of(s) == Some(channel)) {
            // Already subscribed: the ack must still wait if the channel is pending,
            // since an ack promises that every later publication arrives.
            if !table.add_pending_ack(channel, pending) {
                self.reply_frame(key, &ServerFrame::ack(id));
            }
            return;
        }
        if conn.subs.len() >= env.config.max_channels_per_connection {
            let msg = format!(
                "at most {} subscriptions per connection",
                env.config.max_channels_per_connection
            );
            return self.reply_error(key, id, ErrorCode::TooManyChannels, &msg);
        }
        let (sub, joined) = table.subscribe(channel, key as u32, conn.encoding);
        conn.subs.push(sub);
        env.shard_metrics.subscriptions.set(table.subscription_count() as i64);
        match joined {
            Joined::FirstOnShard => {
                table.add_pending_ack(channel, pending);
                env.router.interest(env.id, Arc::from(channel), true);
            }
            Joined::Pending => {
                table.add_pending_ack(channel, pending);
            }
            Joined::Active => self.reply_frame(key, &ServerFrame::ack(id)),
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
        let sub = conn.subs.swap_remove(pos);
        let emptied = table.unsubscribe(sub);
        self.env
            .shard_metrics
            .subscriptions
            .set(table.subscription_count() as i64);
        if let Some(channel) = emptied {
            self.channel_emptied(channel);
        }
        self.reply_frame(key, &ServerFrame::ack(id));
    }

    fn client_publish(&mut self, key: usize, id: Option<u64>, channel: String, data: serde_json::Value) {
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
        let Some(conn_id) = self.st.conns.get(key).map(|c| c.id) else {
            return;
        };
        let payload = match Payload::from_value(&data) {
            Ok(p) => p,
            Err(e) => return self.reply_error(key, id, ErrorCode::BadRequest, &format!("unusable data: {e}")),
        };
        let publisher = env.publisher.clone();
        env.spawner.spawn(move |core| async move {
            let result = publisher.publish(Arc::from(channel), payload, Source::Client).await;
            core.with(|shard| {
                if shard.st.conns.get(key).map(|c| c.id) != Some(conn_id) {
                    return;
                }
                match result {
                    Ok(_) => shard.reply_frame(key, &ServerFrame::ack(id)),
                    Err(e) => shard.reply_error(key, id, ErrorCode::Unavailable, &e.to_string()),
                }
            });
        });
    }

    /// The last local subscriber of a channel left: tell the router, and answer any
    /// subscribe still waiting for it (its subscriber has left since, so the ack
    /// only keeps "one reply per request"; it precedes the unsubscribe's ack).
    pub(super) fn channel_emptied(&mut self, channel: Emptied) {
        self.env.router.interest(self.env.id, channel.name, false);
        for ack in channel.pending {
            self.reply_to(ack, &ServerFrame::ack(ack.request));
        }
    }

    /// The router's answer about a channel this shard asked for.
    pub(super) fn interest_confirmed(&mut self, channel: &str, result: Result<(), ErrorCode>) {
        let acks = self.st.table.activate(channel);
        let code = match result {
            Ok(()) => {
                for ack in acks {
                    self.reply_to(ack, &ServerFrame::ack(ack.request));
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
            self.reply_to(ack, &frame);
        }
    }

    fn reply_to(&mut self, ack: PendingAck, frame: &ServerFrame) {
        if self.st.conns.get(ack.conn as usize).map(|c| c.id) == Some(ack.conn_id) {
            self.reply_frame(ack.conn as usize, frame);
        }
    }

    fn reply_error(&mut self, key: usize, id: Option<u64>, code: ErrorCode, message: &str) {
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

    fn reply_frame(&mut self, key: usize, frame: &ServerFrame) {
        let Some(encoding) = self.st.conns.get(key).map(|c| c.encoding) else {
            return;
        };
        if let Some(bytes) = self.env.encode(encoding, frame) {
            self.reply(key, bytes);
        }
    }

    /// Queues a reply frame under the same queue limit as publications, so a client
    /// that sends requests without reading the replies is a slow consumer too.
    fn reply(&mut self, key: usize, frame: Bytes) {
        let env = self.env;
        if let Some(conn) = self.st.conns.get_mut(key) {
            env.send_or_close(conn, &frame, env.close_deadline());
        }
    }
}
