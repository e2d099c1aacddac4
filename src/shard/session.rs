//! What a shard does with a client's frames: the protocol's operations
//! (subscribe, unsubscribe, publish, ping) on top of the shard's channel table, and
//! the replies. Decoding is the proto crate's; framing is the ws module's.

use std::sync::Arc;

use bytes::Bytes;
use shardcast_proto::{decode_client, encode_server, validate_channel, ClientFrame, ErrorCode, ServerFrame};

use super::ShardCore;
use crate::channel_table::{Joined, PendingAck};
use crate::connection::{Phase, Sent};
use crate::publication::Payload;
use crate::router::Source;
use crate::ws::frame::{data_frame, pong_frame, server_frame, Flow, Incoming};
use tungstenite::protocol::frame::coding::{Data, OpCode};

impl ShardCore {
    /// Handles one frame from connection `key`.
    pub(super) fn on_incoming(&self, key: usize, ev: Incoming<'_>) -> Flow {
        match ev {
            Incoming::Message { binary, payload } => {
                let (encoding, echo) = {
                    let conns = self.conns.borrow();
                    match conns.get(key) {
                        Some(c) if c.phase == Phase::Open => (c.encoding, c.echo),
                        // A closing connection's data is ignored (RFC 6455 5.5.1).
                        _ => return Flow::Continue,
                    }
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
                let deadline = self.after(self.config.close_timeout);
                if let Some(conn) = self.conns.borrow_mut().get_mut(key) {
                    conn.close_received(code, deadline);
                }
                Flow::Stop
            }
        }
    }

    fn on_request(&self, key: usize, frame: ClientFrame) {
        match frame {
            ClientFrame::Subscribe { id, channel } => self.subscribe(key, id, &channel),
            ClientFrame::Unsubscribe { id, channel } => self.unsubscribe(key, id, &channel),
            ClientFrame::Publish { id, channel, data } => self.client_publish(key, id, channel, data),
            ClientFrame::Ping { id } => self.reply_frame(key, &ServerFrame::Pong { id }),
        }
    }

    fn subscribe(&self, key: usize, id: Option<u64>, channel: &str) {
        if let Err(e) = validate_channel(channel, self.config.max_channel_len) {
            return self.reply_error(key, id, ErrorCode::BadChannel, &e.to_string());
        }
        let mut conns = self.conns.borrow_mut();
        let mut table = self.table.borrow_mut();
        let Some(conn) = conns.get_mut(key) else {
            return;
        };
        if conn.subs.iter().any(|&s| table.channel_of(s) == Some(channel)) {
            // Already subscribed: the ack must still wait if the channel is pending,
            // since an ack promises that every later publication arrives.
            let pending = PendingAck {
                conn: key as u32,
                conn_id: conn.id,
                request: id,
            };
            if !table.add_pending_ack(channel, pending) {
                drop((conns, table));
                self.reply_frame(key, &ServerFrame::Ack { id });
            }
            return;
        }
        if conn.subs.len() >= self.config.max_channels_per_connection {
            drop((conns, table));
            let msg = format!(
                "at most {} subscriptions per connection",
                self.config.max_channels_per_connection
            );
            return self.reply_error(key, id, ErrorCode::TooManyChannels, &msg);
        }
        let (sub, joined) = table.subscribe(channel, key as u32, conn.encoding);
        conn.subs.push(sub);
        let conn_id = conn.id;
        self.shard_metrics.subscriptions.set(table.subscription_count() as i64);
        let pending = PendingAck {
            conn: key as u32,
            conn_id,
            request: id,
        };
        match joined {
            Joined::FirstOnShard => {
                table.add_pending_ack(channel, pending);
                self.router.interest(self.id, Arc::from(channel), true);
            }
            Joined::Pending => {
                table.add_pending_ack(channel, pending);
            }
            Joined::Active => {
                drop((conns, table));
                self.reply_frame(key, &ServerFrame::Ack { id });
            }
        }
    }

    fn unsubscribe(&self, key: usize, id: Option<u64>, channel: &str) {
        let mut conns = self.conns.borrow_mut();
        let mut table = self.table.borrow_mut();
        let Some(conn) = conns.get_mut(key) else {
            return;
        };
        let Some(pos) = conn.subs.iter().position(|&s| table.channel_of(s) == Some(channel)) else {
            drop((conns, table));
            return self.reply_error(key, id, ErrorCode::NotSubscribed, "not subscribed to this channel");
        };
        let sub = conn.subs.swap_remove(pos);
        let emptied = table.unsubscribe(sub);
        self.shard_metrics.subscriptions.set(table.subscription_count() as i64);
        drop((conns, table));
        if let Some(channel) = emptied {
            self.channel_emptied(channel);
        }
        self.reply_frame(key, &ServerFrame::Ack { id });
    }

    fn client_publish(&self, key: usize, id: Option<u64>, channel: String, data: serde_json::Value) {
        if !self.config.allow_client_publish {
            return self.reply_error(
                key,
                id,
                ErrorCode::Forbidden,
                "client publishing is disabled on this gateway",
            );
        }
        if let Err(e) = validate_channel(&channel, self.config.max_channel_len) {
            return self.reply_error(key, id, ErrorCode::BadChannel, &e.to_string());
        }
        let Some(conn_id) = self.conns.borrow().get(key).map(|c| c.id) else {
            return;
        };
        let payload = match Payload::from_value(&data) {
            Ok(p) => p,
            Err(e) => return self.reply_error(key, id, ErrorCode::BadRequest, &format!("unusable data: {e}")),
        };
        let publisher = self.publisher.clone();
        let Some(core) = self.me.upgrade() else {
            return;
        };
        tokio::task::spawn_local(async move {
            let result = publisher.publish(Arc::from(channel), payload, Source::Client).await;
            if core.conns.borrow().get(key).map(|c| c.id) != Some(conn_id) {
                return;
            }
            match result {
                Ok(_) => core.reply_frame(key, &ServerFrame::Ack { id }),
                Err(e) => core.reply_error(key, id, ErrorCode::Unavailable, &e.to_string()),
            }
        });
    }

    /// The last local subscriber of a channel left: tell the router, and answer any
    /// subscribe still waiting for it (its subscriber has left since, so the ack
    /// only keeps "one reply per request"; it precedes the unsubscribe's ack).
    pub(super) fn channel_emptied(&self, channel: crate::channel_table::Emptied) {
        self.router.interest(self.id, channel.name, false);
        for ack in channel.pending {
            self.reply_to(ack, &ServerFrame::Ack { id: ack.request });
        }
    }

    /// The router's answer about a channel this shard asked for.
    pub(super) fn interest_confirmed(&self, channel: &str, result: Result<(), ErrorCode>) {
        match result {
            Ok(()) => {
                let acks = self.table.borrow_mut().activate(channel);
                for ack in acks {
                    self.reply_to(ack, &ServerFrame::Ack { id: ack.request });
                }
            }
            Err(code) => {
                let acks = self.table.borrow_mut().activate(channel);
                let subs = self.table.borrow().subscriptions_of(channel);
                {
                    let mut conns = self.conns.borrow_mut();
                    let mut table = self.table.borrow_mut();
                    for s in subs {
                        if let Some(conn) = conns.get_mut(s.conn as usize) {
                            conn.subs.retain(|&k| k != s.sub);
                        }
                        table.unsubscribe(s.sub);
                    }
                    self.shard_metrics.subscriptions.set(table.subscription_count() as i64);
                }
                for ack in acks {
                    let frame = ServerFrame::Error {
                        id: ack.request,
                        code,
                        message: "the broker could not subscribe this channel; retry later".into(),
                    };
                    self.reply_to(ack, &frame);
                }
            }
        }
    }

    fn reply_to(&self, ack: PendingAck, frame: &ServerFrame) {
        let matches = self.conns.borrow().get(ack.conn as usize).map(|c| c.id) == Some(ack.conn_id);
        if matches {
            self.reply_frame(ack.conn as usize, frame);
        }
    }

    fn reply_error(&self, key: usize, id: Option<u64>, code: ErrorCode, message: &str) {
        self.metrics.client_errors.with_label_values(&[code.as_str()]).inc();
        self.reply_frame(
            key,
            &ServerFrame::Error {
                id,
                code,
                message: message.to_owned(),
            },
        );
    }

    fn reply_frame(&self, key: usize, frame: &ServerFrame) {
        let encoding = match self.conns.borrow().get(key) {
            Some(c) => c.encoding,
            None => return,
        };
        self.reply(key, data_frame(encoding, &encode_server(encoding, frame)));
    }

    /// Queues a reply frame under the same queue limit as publications, so a client
    /// that sends requests without reading the replies is a slow consumer too.
    fn reply(&self, key: usize, frame: Bytes) {
        let deadline = self.after(self.config.close_timeout);
        let mut conns = self.conns.borrow_mut();
        let Some(conn) = conns.get_mut(key) else {
            return;
        };
        if conn.send(&frame, self.config.max_queue_bytes) == Sent::Overflow {
            self.close_slow_consumer(conn, deadline);
        }
    }
}
