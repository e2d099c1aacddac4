//! The Pusher Channels protocol, version 7 (PROTOCOL.md 20), on a shard's
//! connections: what a Pusher socket carries, its greeting, its requests
//! (subscribe and unsubscribe, ping, client events) and its share of a
//! publication's fan-out. The frames and signatures are the `pusher` module's;
//! subscriptions go into the same channel table as native ones, in the Pusher
//! subscriber list, so one publication reaches both.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;
use shardcast_proto::{validate_channel, Encoding};
use slab::Slab;

use super::channel_table::{Joined, PendingAck, Subscriber};
use super::connection::{Connection, ConnectionFlags, Phase, Sent};
use super::cork::Cork;
use super::{Shard, ShardEnv, ShardState};
use crate::fanout::publication::{Publication, PusherFrame};
use crate::fanout::router::Source;
use crate::payload::Payload;
use crate::pusher::apps::PusherApp;
use crate::pusher::protocol::{self, code, decode_request, PusherRequest};
use crate::pusher::signature::verify_channel_auth;
use crate::ws::deflate::FULL_WINDOW;
use crate::ws::frame::data_frame;

/// Client events one connection may send per second (Pusher's limit).
const CLIENT_EVENTS_PER_SECOND: u16 = 10;

/// The Pusher sockets of a shard, by connection slab key: what they carry beyond
/// the native record, kept beside it so that no record grows for them.
pub type PusherSockets = HashMap<usize, PusherSocket>;

/// What a Pusher-protocol connection carries beyond the native record.
#[derive(Debug)]
pub struct PusherSocket {
    /// The app its URL named.
    pub app: Arc<PusherApp>,
    /// Start (shard clock) of the current one-second client-event window, and
    /// the client events in it.
    client_events: (u32, u16),
}

impl PusherSocket {
    /// A socket of `app`.
    pub fn new(app: Arc<PusherApp>) -> PusherSocket {
        PusherSocket {
            app,
            client_events: (0, 0),
        }
    }
}

/// A Pusher text frame.
pub(super) fn text_frame(text: &str) -> Bytes {
    data_frame(Encoding::Json, text.as_bytes())
}

/// The kind of a Pusher channel (PROTOCOL.md 20.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChannelKind {
    Public,
    Private,
    Presence,
}

fn kind_of(channel: &str) -> ChannelKind {
    if channel.starts_with("private-") {
        ChannelKind::Private
    } else if channel.starts_with("presence-") {
        ChannelKind::Presence
    } else {
        ChannelKind::Public
    }
}

impl ShardEnv {
    /// The socket id of this shard's connection `conn_id`: `<instance>.<number>`,
    /// the number naming the shard and the connection in it.
    pub(super) fn pusher_socket_id(&self, conn_id: u64) -> String {
        protocol::socket_id(self.pusher_instance, self.pusher_number(conn_id))
    }

    fn pusher_number(&self, conn_id: u64) -> u64 {
        conn_id
            .saturating_mul(self.state.shard_count() as u64)
            .saturating_add(self.id as u64)
    }

    /// The id of this shard's connection a publication must not reach, if it
    /// excludes one of them.
    fn excluded_here(&self, excluded: Option<(u32, u64)>) -> Option<u64> {
        let (instance, number) = excluded?;
        let shards = self.state.shard_count() as u64;
        (instance == self.pusher_instance && number % shards == self.id as u64).then(|| number / shards)
    }

    /// The `pusher:connection_established` frame for a new connection.
    pub(super) fn pusher_established(&self, conn_id: u64) -> Bytes {
        let activity_timeout = self.config.ping_interval.as_secs().max(1);
        text_frame(&protocol::connection_established(
            &self.pusher_socket_id(conn_id),
            activity_timeout,
        ))
    }
}

/// Writes a publication's Pusher channel event to the Pusher subscribers in
/// `list`: one frame per app prefix, built once per publication. Returns the
/// subscribers reached.
pub(super) fn fan_out(
    env: &ShardEnv,
    publication: &Publication,
    list: &[Subscriber],
    conns: &mut Slab<Connection>,
    pushers: &PusherSockets,
    cork: &mut Cork,
    deadline: u32,
) -> usize {
    // Usually one app can own the channel (its prefix starts the name), and every
    // subscriber gets the shared frame; only apps with nested prefixes make the
    // fan-out look up each subscriber's app.
    let mut owners = env
        .pusher_apps
        .values()
        .filter(|app| publication.channel.starts_with(app.channel_prefix.as_str()));
    let only_prefix = match (owners.next(), owners.next()) {
        (Some(app), None) => Some(app.channel_prefix.len()),
        _ => None,
    };
    let mut reached = 0;
    // Built here only for subscribers of an app whose prefix differs from the
    // one the shared frame was built for.
    let mut own: Option<PusherFrame> = None;
    let mut excluded = None;
    let mut checked_exclusion = false;
    let min = env.config.compression.min_bytes();
    for s in list {
        let Some(conn) = conns.get_mut(s.conn as usize) else {
            continue;
        };
        let prefix_len = match only_prefix {
            Some(len) => len,
            None => match pushers.get(&(s.conn as usize)) {
                Some(socket) => socket.app.channel_prefix.len(),
                None => continue,
            },
        };
        let frame = match publication.pusher_frame(prefix_len) {
            Some(frame) => frame,
            None => {
                if own.as_ref().map(PusherFrame::prefix_len) != Some(prefix_len) {
                    own = Some(PusherFrame::new(publication, prefix_len));
                }
                let Some(frame) = own.as_ref() else {
                    continue;
                };
                frame
            }
        };
        if !checked_exclusion {
            excluded = env.excluded_here(frame.excluded);
            checked_exclusion = true;
        }
        if excluded == Some(conn.id) {
            continue;
        }
        let bytes = if conn.deflate_window == FULL_WINDOW && min.is_some_and(|min| frame.frame.len() >= min) {
            frame.compressed()
        } else {
            &frame.frame
        };
        if matches!(
            env.deliver(cork, s.conn as usize, conn, bytes, deadline),
            Sent::Written | Sent::Queued
        ) {
            reached += 1;
        }
    }
    reached
}

impl Shard<'_> {
    /// Handles one message from a Pusher connection.
    pub(super) fn on_pusher_message(&mut self, key: usize, binary: bool, payload: &[u8]) {
        let text = match (binary, std::str::from_utf8(payload)) {
            (false, Ok(text)) => text,
            _ => return self.pusher_bad_request(key, "Pusher events are JSON text frames"),
        };
        match decode_request(text) {
            Ok(PusherRequest::Ping) => self.reply(key, text_frame(&protocol::pong())),
            Ok(PusherRequest::Pong) => {}
            Ok(PusherRequest::Subscribe {
                channel,
                auth,
                channel_data,
            }) => self.pusher_subscribe(key, &channel, auth.as_deref(), channel_data.as_deref()),
            Ok(PusherRequest::Unsubscribe { channel }) => self.pusher_unsubscribe(key, &channel),
            Ok(PusherRequest::ClientEvent { event, channel, data }) => {
                self.pusher_client_event(key, event, &channel, &data)
            }
            Ok(PusherRequest::Signin { .. }) => self.reply(
                key,
                text_frame(&protocol::error(
                    Some(code::UNAUTHORIZED),
                    "user sign-in is not supported by this server yet",
                )),
            ),
            Err(e) => self.pusher_bad_request(key, &e.0),
        }
    }

    /// Answers a frame that is not a Pusher event: `pusher:error` without a code.
    fn pusher_bad_request(&mut self, key: usize, message: &str) {
        self.env.metrics.client_errors.with_label_values(&["bad_request"]).inc();
        self.reply(key, text_frame(&protocol::error(None, message)));
    }

    /// The app of Pusher connection `key`.
    fn pusher_app(&self, key: usize) -> Option<Arc<PusherApp>> {
        self.st.conns.get(key).filter(|c| c.phase == Phase::Open)?;
        self.st.pushers.get(&key).map(|p| p.app.clone())
    }

    /// Refuses a subscription: `pusher:error` 4009 naming the channel, and
    /// `pusher:subscription_error` on it for the channel's error callbacks; counted.
    fn pusher_refuse(&mut self, key: usize, channel: &str, reason: &'static str, message: &str) {
        self.env.metrics.pusher_refusals.with_label_values(&[reason]).inc();
        let text = format!("{message} (channel {channel})");
        self.reply(key, text_frame(&protocol::error(Some(code::UNAUTHORIZED), &text)));
        let status = if reason == "signature" { 401 } else { 400 };
        self.reply(key, text_frame(&protocol::subscription_error(channel, message, status)));
    }

    fn pusher_subscribe(&mut self, key: usize, channel: &str, auth: Option<&str>, channel_data: Option<&str>) {
        let env = self.env;
        let Some(app) = self.pusher_app(key) else {
            return;
        };
        let name = app.shardcast_channel(channel);
        if let Err(e) = validate_channel(&name, env.config.max_channel_len) {
            return self.pusher_refuse(key, channel, "channel", &format!("invalid channel name: {e}"));
        }
        let ShardState { conns, table, .. } = &mut *self.st;
        let Some(conn) = conns.get_mut(key) else {
            return;
        };
        match kind_of(channel) {
            ChannelKind::Public => {}
            ChannelKind::Private => {
                let socket_id = env.pusher_socket_id(conn.id);
                let signed = auth.is_some_and(|auth| verify_channel_auth(&app, &socket_id, channel, None, auth));
                if !signed {
                    return self.pusher_refuse(key, channel, "signature", "invalid channel auth signature");
                }
            }
            ChannelKind::Presence => {
                let _ = channel_data;
                return self.pusher_refuse(key, channel, "channel", "presence channels are not served yet");
            }
        }
        let pending = PendingAck {
            conn: key as u32,
            conn_id: conn.id,
            request: None,
            unrecoverable: false,
        };
        if conn.subs.iter().any(|&s| table.channel_of(s) == Some(name.as_str())) {
            if !table.add_pending_ack(&name, pending) {
                self.reply(key, text_frame(&protocol::subscription_succeeded(channel, None)));
            }
            return;
        }
        if conn.subs.len() >= env.config.max_channels_per_connection {
            let msg = format!(
                "at most {} subscriptions per connection",
                env.config.max_channels_per_connection
            );
            return self.pusher_refuse(key, channel, "channel", &msg);
        }
        let (sub, joined) = table.subscribe(&name, key as u32, super::channel_table::Wire::Pusher);
        conn.subs.push(sub);
        env.shard_metrics.subscriptions.set(table.subscription_count() as i64);
        match joined {
            Joined::FirstOnShard => {
                table.add_pending_ack(&name, pending);
                env.router.interest(env.id, Arc::from(name.as_str()), true);
            }
            Joined::Pending => {
                table.add_pending_ack(&name, pending);
            }
            Joined::Active => self.reply(key, text_frame(&protocol::subscription_succeeded(channel, None))),
        }
    }

    /// The router's answer for a subscription of Pusher connection `key` to the
    /// shardcast channel `name`.
    pub(super) fn pusher_subscribe_answer(&mut self, key: usize, name: &str, ok: bool) {
        let Some(app) = self.pusher_app(key) else {
            return;
        };
        let channel = name.get(app.channel_prefix.len()..).unwrap_or(name);
        let frame = if ok {
            protocol::subscription_succeeded(channel, None)
        } else {
            protocol::subscription_error(channel, "the broker could not subscribe this channel; retry later", 503)
        };
        self.reply(key, text_frame(&frame));
    }

    /// `pusher:unsubscribe`: Pusher answers nothing, and nothing for a channel
    /// the socket had not subscribed.
    fn pusher_unsubscribe(&mut self, key: usize, channel: &str) {
        let Some(app) = self.pusher_app(key) else {
            return;
        };
        let name = app.shardcast_channel(channel);
        let ShardState { conns, table, .. } = &mut *self.st;
        let Some(conn) = conns.get(key) else {
            return;
        };
        if let Some(&sub) = conn.subs.iter().find(|&&s| table.channel_of(s) == Some(name.as_str())) {
            self.drop_subscription(key, sub);
        }
    }

    /// A `client-*` event (PROTOCOL.md 20.3): published to the channel with the
    /// sender's socket id, so it reaches every other subscriber but not the sender.
    fn pusher_client_event(&mut self, key: usize, event: String, channel: &str, data: &str) {
        let env = self.env;
        let Some(app) = self.pusher_app(key) else {
            return;
        };
        let name = app.shardcast_channel(channel);
        let now = env.now();
        let ShardState {
            conns, table, pushers, ..
        } = &mut *self.st;
        let Some(conn) = conns.get_mut(key) else {
            return;
        };
        let subscribed = conn.subs.iter().any(|&s| table.channel_of(s) == Some(name.as_str()));
        let refusal = if !app.client_events {
            Some("client events are not enabled for this app")
        } else if kind_of(channel) == ChannelKind::Public {
            Some("client events are accepted on private and presence channels only")
        } else if !subscribed {
            Some("client events are accepted on subscribed channels only")
        } else {
            let allowed = pushers
                .get_mut(&key)
                .is_some_and(|socket| within_rate(&mut socket.client_events, now));
            (!allowed).then_some("at most 10 client events per second")
        };
        if let Some(message) = refusal {
            env.metrics.pusher_refusals.with_label_values(&["client_event"]).inc();
            let text = format!("{message} (channel {channel})");
            return self.reply(
                key,
                text_frame(&protocol::error(Some(code::CLIENT_EVENT_REJECTED), &text)),
            );
        }
        let conn_id = conn.id;
        // Pusher carries data as a string: a JSON string stays one, anything else
        // becomes its JSON text.
        let data = serde_json::from_str::<String>(data).unwrap_or_else(|_| data.to_owned());
        let body = json!({"event": event, "data": data, "socket_id": env.pusher_socket_id(conn_id)});
        let payload = match Payload::from_value(&body) {
            Ok(p) => p,
            Err(e) => return self.pusher_bad_request(key, &format!("unusable data: {e}")),
        };
        let publisher = env.publisher.clone();
        env.spawner.spawn(move |core| async move {
            let result = publisher.publish(Arc::from(name), payload, Source::Client, None).await;
            if let Err(e) = result {
                core.with(|shard| {
                    if shard.st.conns.get(key).map(|c| c.id) == Some(conn_id) {
                        shard.reply(key, text_frame(&protocol::error(None, &e.to_string())));
                    }
                });
            }
        });
    }
}

/// Counts one client event into a one-second window (shard clock, deciseconds);
/// false when the window is full.
fn within_rate(window: &mut (u32, u16), now: u32) -> bool {
    if now.saturating_sub(window.0) >= 10 {
        *window = (now, 0);
    }
    if window.1 >= CLIENT_EVENTS_PER_SECOND {
        return false;
    }
    window.1 += 1;
    true
}

/// Whether connection `conn` speaks the Pusher protocol.
pub(super) fn is_pusher(conn: &Connection) -> bool {
    conn.flags.has(ConnectionFlags::PUSHER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_events_are_limited_per_second() {
        let mut window = (0, 0);
        assert!((0..10).all(|_| within_rate(&mut window, 5)));
        assert!(!within_rate(&mut window, 9));
        assert!(within_rate(&mut window, 15));
    }

    #[test]
    fn channel_kinds_follow_the_prefix() {
        assert_eq!(kind_of("private-encrypted-x"), ChannelKind::Private);
        assert_eq!(kind_of("presence-room"), ChannelKind::Presence);
        assert_eq!(kind_of("news"), ChannelKind::Public);
    }
}
