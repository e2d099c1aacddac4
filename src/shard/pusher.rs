//! The Pusher Channels protocol, version 7 (PROTOCOL.md 20), on a shard's
//! connections: what a Pusher socket carries, its greeting, its requests
//! (subscribe and unsubscribe, ping, sign-in, client events), presence (joins
//! and leaves through the publisher, member changes to the subscribers), the end
//! of a recovering subscription, and its share of a publication's fan-out. The
//! frames and signatures are the `pusher` module's; subscriptions go into the
//! same channel table as native ones, in the Pusher subscriber list, so one
//! publication reaches both.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;
use shardcast_proto::{validate_channel, Encoding, StreamPosition};
use slab::Slab;

use super::channel_table::{Joined, PendingAck, Subscriber, SubscriptionKey};
use super::connection::{Connection, ConnectionFlags, Phase, Sent};
use super::cork::Cork;
use super::recovery::{HistoryRequest, Recovery};
use super::{answer_when_live, Shard, ShardEnv, ShardState};
use crate::broker::{PresenceChange, PresenceMember};
use crate::fanout::publication::{Publication, PusherFrame};
use crate::fanout::router::Source;
use crate::payload::Payload;
use crate::pusher::apps::PusherApp;
use crate::pusher::protocol::{self, code, decode_request, PusherRequest};
use crate::pusher::signature::{verify_channel_auth, verify_signin};
use crate::pusher::webhooks::WebhookEvent;
use crate::ws::deflate::FULL_WINDOW;
use crate::ws::frame::data_frame;

/// Client events one connection may send per second (Pusher's limit).
const CLIENT_EVENTS_PER_SECOND: u16 = 10;

/// The Pusher sockets of a shard, by connection slab key: what they carry beyond
/// the native record, kept beside it so that no record grows for them.
pub type PusherSockets = HashMap<usize, PusherSocket>;

/// What a Pusher-protocol connection carries beyond the native record: its app,
/// and what only some sockets need, boxed (an idle socket's entry is two pointers).
#[derive(Debug)]
pub struct PusherSocket {
    /// The app its URL named.
    pub app: Arc<PusherApp>,
    extras: Option<Box<SocketExtras>>,
}

/// What a socket that sent client events or joined a presence channel carries.
#[derive(Debug, Default)]
struct SocketExtras {
    /// Start (shard clock) of the current one-second client-event window, and
    /// the client events in it.
    client_events: (u32, u16),
    /// Its presence channels (shardcast names) and the user it is on each.
    presence: Vec<(Arc<str>, Arc<str>)>,
    /// Presence subscriptions' answers (with the member list) waiting for their
    /// channel to go live on the shard, since an answer promises every later event.
    presence_answers: Vec<(Arc<str>, Bytes)>,
}

impl PusherSocket {
    /// A socket of `app`.
    pub fn new(app: Arc<PusherApp>) -> PusherSocket {
        PusherSocket { app, extras: None }
    }

    /// Its presence channels and the user it is on each.
    fn presence(&self) -> &[(Arc<str>, Arc<str>)] {
        self.extras.as_ref().map_or(&[], |e| &e.presence)
    }

    /// Its extras, made at first use.
    fn extras(&mut self) -> &mut SocketExtras {
        self.extras.get_or_insert_with(Box::default)
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
    publication: &Arc<Publication>,
    list: &[Subscriber],
    conns: &mut Slab<Connection>,
    pushers: &PusherSockets,
    recovering: &mut HashMap<SubscriptionKey, Recovery>,
    cork: &mut Cork,
) -> usize {
    let deadline = env.close_deadline();
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
        if !recovering.is_empty() {
            if let Some(recovery) = recovering.get_mut(&s.sub) {
                recovery.hold(publication);
                continue;
            }
        }
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
                recover,
            }) => self.pusher_subscribe(key, &channel, auth.as_deref(), channel_data.as_deref(), recover),
            Ok(PusherRequest::Unsubscribe { channel }) => self.pusher_unsubscribe(key, &channel),
            Ok(PusherRequest::ClientEvent { event, channel, data }) => {
                self.pusher_client_event(key, event, &channel, &data)
            }
            Ok(PusherRequest::Signin { user_data, auth }) => self.pusher_signin(key, &user_data, &auth),
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

    fn pusher_subscribe(
        &mut self,
        key: usize,
        channel: &str,
        auth: Option<&str>,
        channel_data: Option<&str>,
        recover: Option<(u64, String)>,
    ) {
        let env = self.env;
        let Some(app) = self.pusher_app(key) else {
            return;
        };
        let name = app.shardcast_channel(channel);
        if let Err(e) = validate_channel(&name, env.config.max_channel_len) {
            return self.pusher_refuse(key, channel, "channel", &format!("invalid channel name: {e}"));
        }
        if channel.contains('#') {
            // Pusher reserves `#` (server-to-user channels); in shardcast it is the
            // user boundary of the channel rules, which a public Pusher channel
            // would otherwise walk around.
            return self.pusher_refuse(key, channel, "channel", "invalid channel name: `#` is reserved");
        }
        let Some(conn) = self.st.conns.get(key) else {
            return;
        };
        let conn_id = conn.id;
        match kind_of(channel) {
            ChannelKind::Public => {
                // Nobody's backend vouches for a public channel, so it is only as
                // open as the native rules leave its shardcast channel: with an
                // empty channel_prefix, `team:7.chat` is a native channel that may
                // need a grant (PROTOCOL.md 20.2).
                if let Err((_, why)) = env.permit_subscribe(conn.auth.as_deref(), &name, None) {
                    return self.pusher_refuse(key, channel, "permission", why);
                }
            }
            ChannelKind::Private => {
                let socket_id = env.pusher_socket_id(conn_id);
                let signed = auth.is_some_and(|auth| verify_channel_auth(&app, &socket_id, channel, None, auth));
                if !signed {
                    return self.pusher_refuse(key, channel, "signature", "invalid channel auth signature");
                }
            }
            ChannelKind::Presence => {
                let socket_id = env.pusher_socket_id(conn_id);
                let signed = match (auth, channel_data) {
                    (Some(auth), Some(data)) => verify_channel_auth(&app, &socket_id, channel, Some(data), auth),
                    _ => false,
                };
                if !signed {
                    return self.pusher_refuse(key, channel, "signature", "invalid channel auth signature");
                }
            }
        }
        let member = match (kind_of(channel), channel_data) {
            (ChannelKind::Presence, Some(data)) => match protocol::presence_member(data) {
                Ok(member) => Some(member),
                Err(e) => return self.pusher_refuse(key, channel, "channel", &e.0),
            },
            _ => None,
        };
        let ShardState {
            conns, table, pushers, ..
        } = &mut *self.st;
        let Some(conn) = conns.get_mut(key) else {
            return;
        };
        let pending = PendingAck {
            conn: key as u32,
            conn_id: conn.id,
            request: None,
            unrecoverable: recover.is_some(),
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
        if let Some((user, info)) = member {
            // Answered with the member list once both the join and the channel
            // (live on this shard) are done, whichever comes last.
            answer_when_live(env, table, &name, pending, &joined);
            let name: Arc<str> = Arc::from(name);
            let user: Arc<str> = Arc::from(user);
            if let Some(socket) = pushers.get_mut(&key) {
                socket.extras().presence.push((name.clone(), user.clone()));
            }
            let member = match Payload::from_json(&info) {
                Ok(info) => PresenceMember { user, info },
                Err(e) => {
                    self.drop_subscription(key, sub);
                    self.forget_presence(key, &name);
                    return self.pusher_refuse(key, channel, "channel", &format!("user_info: {e}"));
                }
            };
            let limit = app.max_presence_members as usize;
            return self.presence_join(key, conn_id, channel, name, member, limit);
        }
        let keeps_history = env.publisher.channel_history().policy(&name).is_some();
        if let (Some((offset, epoch)), true) = (recover.clone(), keeps_history) {
            // The missed events follow subscription_succeeded (PROTOCOL.md 20.6).
            if joined == Joined::FirstOnShard {
                env.router.interest(env.id, Arc::from(name.as_str()), true);
            }
            let request = HistoryRequest {
                recover: Some(StreamPosition { offset, epoch }),
                latest: false,
            };
            return self.begin_recovery(key, sub, None, &name, request, joined == Joined::Active);
        }
        if answer_when_live(env, table, &name, pending, &joined) {
            // `recover` on a channel without history: nothing to recover from.
            let recovered = recover.is_some().then_some(false);
            self.pusher_subscribe_answer(key, &name, true, recovered);
        }
    }

    /// `pusher:signin` (user authentication): with the app's signature, the
    /// connection is the user's, so an operator's disconnect of the user (and the
    /// Pusher API's terminate_connections) closes it.
    fn pusher_signin(&mut self, key: usize, user_data: &str, auth: &str) {
        let env = self.env;
        let (Some(app), Some(conn_id)) = (self.pusher_app(key), self.st.conns.get(key).map(|c| c.id)) else {
            return;
        };
        let user = match protocol::signin_user(user_data) {
            Ok(user) if verify_signin(&app, &env.pusher_socket_id(conn_id), user_data, auth) => user,
            Ok(_) => {
                env.metrics.pusher_refusals.with_label_values(&["signature"]).inc();
                let error = protocol::error(Some(code::UNAUTHORIZED), "invalid sign-in signature");
                return self.reply(key, text_frame(&error));
            }
            Err(e) => {
                env.metrics.pusher_refusals.with_label_values(&["signature"]).inc();
                return self.reply(key, text_frame(&protocol::error(Some(code::UNAUTHORIZED), &e.0)));
            }
        };
        if let Some(conn) = self.st.conns.get_mut(key) {
            conn.auth_mut().identity.user = user;
        }
        self.reply(key, text_frame(&protocol::signin_success(user_data)));
    }

    /// The answer to a subscription of Pusher connection `key` to the shardcast
    /// channel `name`; `recovered` when it asked to recover (PROTOCOL.md 20.6).
    pub(super) fn pusher_subscribe_answer(&mut self, key: usize, name: &str, ok: bool, recovered: Option<bool>) {
        let Some(app) = self.pusher_app(key) else {
            return;
        };
        let channel = name.get(app.channel_prefix.len()..).unwrap_or(name);
        if ok && kind_of(channel) == ChannelKind::Presence {
            // Live now: the member list answers, if the join is done (else the
            // join's end answers).
            let socket = self.st.pushers.get_mut(&key);
            let waiting = socket.and_then(|socket| {
                let answers = &mut socket.extras.as_deref_mut()?.presence_answers;
                let at = answers.iter().position(|(c, _)| **c == *name)?;
                Some(answers.swap_remove(at).1)
            });
            if let Some(answer) = waiting {
                self.reply(key, answer);
            }
            return;
        }
        let frame = if ok {
            match recovered {
                Some(recovered) => protocol::recovery_succeeded(channel, recovered),
                None => protocol::subscription_succeeded(channel, None),
            }
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
        self.presence_leave(key, Some(&name));
    }

    /// Joins a presence channel's members, then answers the subscription with
    /// the member list (PROTOCOL.md 20.4), or refuses it past the app's limit.
    fn presence_join(
        &mut self,
        key: usize,
        conn_id: u64,
        channel: &str,
        name: Arc<str>,
        member: PresenceMember,
        limit: usize,
    ) {
        let user = member.user.clone();
        let channel = channel.to_owned();
        let publisher = self.env.publisher.clone();
        self.env.spawner.spawn(move |core| async move {
            let joined = publisher.presence_join(name.clone(), member).await;
            let did_join = joined.is_ok();
            let members = match joined {
                Ok(_) => publisher.presence_members(name.clone(), limit + 1).await,
                Err(e) => Err(e),
            };
            core.with(|shard| {
                let still_here = shard.st.conns.get(key).map(|c| c.id) == Some(conn_id)
                    && shard
                        .st
                        .pushers
                        .get(&key)
                        .is_some_and(|p| p.presence().iter().any(|(c, u)| *c == name && *u == user));
                if !still_here {
                    return;
                }
                let refusal = match &members {
                    Err(e) => Some((code::OVER_CAPACITY, e.to_string(), 503)),
                    Ok(list) if list.len() > limit => Some((
                        code::OVER_CAPACITY,
                        format!("at most {limit} members on a presence channel"),
                        403,
                    )),
                    Ok(_) => None,
                };
                if let Some((code, message, status)) = refusal {
                    shard.env.metrics.pusher_refusals.with_label_values(&["channel"]).inc();
                    let text = format!("{message} (channel {channel})");
                    shard.reply(key, text_frame(&protocol::error(Some(code), &text)));
                    shard.reply(
                        key,
                        text_frame(&protocol::subscription_error(&channel, &message, status)),
                    );
                    let sub = shard.st.conns.get(key).and_then(|c| {
                        c.subs
                            .iter()
                            .copied()
                            .find(|&s| shard.st.table.channel_of(s) == Some(&*name))
                    });
                    if let Some(sub) = sub {
                        shard.drop_subscription(key, sub);
                    }
                    if did_join {
                        shard.presence_leave(key, Some(&name));
                    } else {
                        shard.forget_presence(key, &name);
                    }
                    return;
                }
                let members = members.unwrap_or_default();
                let answer = text_frame(&protocol::subscription_succeeded(
                    &channel,
                    Some(presence_data(&members)),
                ));
                if shard.st.table.subscribers(&name).is_some() {
                    shard.reply(key, answer);
                } else if let Some(socket) = shard.st.pushers.get_mut(&key) {
                    socket.extras().presence_answers.push((name.clone(), answer));
                }
            });
        });
    }

    /// Leaves the members of presence channel `name` (of every presence channel
    /// with none) for Pusher connection `key`; the broker says whether the user
    /// left (its last connection) and the publisher tells the subscribers.
    fn presence_leave(&mut self, key: usize, name: Option<&str>) {
        let Some(socket) = self.st.pushers.get_mut(&key).and_then(|s| s.extras.as_deref_mut()) else {
            return;
        };
        socket
            .presence_answers
            .retain(|(channel, _)| name.is_some_and(|n| **channel != *n));
        let mut leaving = Vec::new();
        socket.presence.retain(|(channel, user)| {
            let leaves = name.map_or(true, |n| **channel == *n);
            if leaves {
                leaving.push((channel.clone(), user.clone()));
            }
            !leaves
        });
        for (channel, user) in leaving {
            let publisher = self.env.publisher.clone();
            self.env.spawner.spawn(move |_| async move {
                if let Err(e) = publisher.presence_leave(channel.clone(), user).await {
                    tracing::warn!(%channel, error = %e, "presence leave failed; the instance TTL will remove the member");
                }
            });
        }
    }

    /// Forgets connection `key`'s place on presence channel `name`, which the
    /// broker never took.
    fn forget_presence(&mut self, key: usize, name: &str) {
        if let Some(socket) = self.st.pushers.get_mut(&key).and_then(|s| s.extras.as_deref_mut()) {
            socket.presence.retain(|(channel, _)| **channel != *name);
            socket.presence_answers.retain(|(channel, _)| **channel != *name);
        }
    }

    /// Ends a Pusher subscription's recovery (PROTOCOL.md 20.6): the answer, the
    /// missed events from the store up to `live_from` (`store`: epoch and
    /// publications), then the live ones held meanwhile.
    pub(super) fn conclude_pusher_recovery(
        &mut self,
        key: usize,
        name: &str,
        recovered: Option<bool>,
        store: Option<(&str, Vec<(u64, Payload)>)>,
        held: Vec<Arc<Publication>>,
    ) {
        let env = self.env;
        let Some(app) = self.pusher_app(key) else {
            return;
        };
        self.pusher_subscribe_answer(key, name, true, recovered);
        let prefix_len = app.channel_prefix.len();
        let channel = name.get(prefix_len..).unwrap_or(name);
        if let Some((epoch, publications)) = store {
            for (offset, payload) in publications {
                let (text, _) = protocol::publication_event(channel, payload.json().get(), Some((offset, epoch)));
                env.metrics.history_served.inc();
                self.reply(key, text_frame(&text));
            }
        }
        let conn_id = self.st.conns.get(key).map_or(0, |c| c.id);
        for publication in held {
            let own;
            let frame = match publication.pusher_frame(prefix_len) {
                Some(frame) => frame,
                None => {
                    own = PusherFrame::new(&publication, prefix_len);
                    &own
                }
            };
            if env.excluded_here(frame.excluded) != Some(conn_id) {
                self.reply(key, frame.frame.clone());
            }
        }
    }

    /// Connection `key` is being removed: it leaves its presence channels, and
    /// its Pusher record goes.
    pub(super) fn pusher_closing(&mut self, key: usize) {
        self.presence_leave(key, None);
        self.st.pushers.remove(&key);
    }

    /// A presence channel's members changed: `pusher_internal:member_added` or
    /// `member_removed` to this shard's Pusher subscribers of it, one frame per
    /// app prefix.
    pub(super) fn presence_changed(&mut self, name: &str, change: &PresenceChange) {
        let env = self.env;
        let ShardState {
            table,
            conns,
            pushers,
            cork,
            ..
        } = &mut *self.st;
        let Some(lists) = table.subscribers(name) else {
            return;
        };
        let deadline = env.close_deadline();
        let mut frames: Vec<(usize, Bytes)> = Vec::new();
        for s in &lists[super::channel_table::Wire::Pusher.index()] {
            let Some(socket) = pushers.get(&(s.conn as usize)) else {
                continue;
            };
            // The user's own sockets are not told of its own join (it has its
            // member list) or leave (it has none left).
            let user = match change {
                PresenceChange::Joined(member) => &member.user,
                PresenceChange::Left(user) => user,
            };
            if socket.presence().iter().any(|(c, u)| **c == *name && u == user) {
                continue;
            }
            let prefix_len = socket.app.channel_prefix.len();
            let Some(conn) = conns.get_mut(s.conn as usize) else {
                continue;
            };
            let frame = match frames.iter().find(|(len, _)| *len == prefix_len) {
                Some((_, frame)) => frame.clone(),
                None => {
                    let channel = name.get(prefix_len..).unwrap_or(name);
                    let text = match change {
                        PresenceChange::Joined(member) => {
                            protocol::member_added(channel, &member.user, member.info.json().get())
                        }
                        PresenceChange::Left(user) => protocol::member_removed(channel, user),
                    };
                    let frame = text_frame(&text);
                    frames.push((prefix_len, frame.clone()));
                    frame
                }
            };
            env.deliver(cork, s.conn as usize, conn, &frame, deadline);
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
                .is_some_and(|socket| within_rate(&mut socket.extras().client_events, now));
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
        let socket_id = env.pusher_socket_id(conn_id);
        let mut body = json!({"event": &event, "data": &data, "socket_id": &socket_id});
        let user = pushers
            .get(&key)
            .and_then(|p| p.presence().iter().find(|(c, _)| **c == *name))
            .map(|(_, user)| user.clone());
        if let Some(user) = &user {
            body["user_id"] = json!(&**user);
        }
        // The sender's instance is the one that reports it (PROTOCOL.md 20.7).
        let hook = env.publisher.webhooks().map(|hooks| {
            let event = WebhookEvent::ClientEvent {
                channel: Arc::from(name.as_str()),
                event,
                data,
                socket_id,
                user_id: user.map(|u| u.to_string()),
            };
            (hooks.clone(), event)
        });
        let payload = match Payload::from_value(&body) {
            Ok(p) => p,
            Err(e) => return self.pusher_bad_request(key, &format!("unusable data: {e}")),
        };
        let publisher = env.publisher.clone();
        env.spawner.spawn(move |core| async move {
            let result = publisher.publish(Arc::from(name), payload, Source::Client, None).await;
            if let (Ok(_), Some((hooks, event))) = (&result, hook) {
                hooks.send(&event);
            }
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

/// `subscription_succeeded`'s presence data: `{"ids", "hash", "count"}`.
fn presence_data(members: &[PresenceMember]) -> serde_json::Value {
    let ids: Vec<&str> = members.iter().map(|m| &*m.user).collect();
    let hash: serde_json::Map<String, serde_json::Value> = members
        .iter()
        .map(|m| {
            let info = serde_json::from_str(m.info.json().get()).unwrap_or(serde_json::Value::Null);
            (m.user.to_string(), info)
        })
        .collect();
    json!({"ids": ids, "hash": hash, "count": members.len()})
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
