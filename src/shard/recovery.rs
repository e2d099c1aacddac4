//! History on a shard (PROTOCOL.md 19): subscribes with `recover` or `latest`,
//! which hold the channel's live publications for the subscription while the
//! store is read and then merge the two by offset (19.4); the position in every
//! `ack` of a channel with history; and the `history` operation.

use std::sync::Arc;

use shardcast_proto::{encode_message, ErrorCode, HistoryEntry, MessagePosition, ServerFrame, StreamPosition};
use tracing::debug;

use super::channel_table::SubscriptionKey;
use super::{Shard, ShardState};
use crate::auth::ANONYMOUS;
use crate::broker::{BrokerError, HistoryPage, Position};
use crate::fanout::publication::Publication;
use crate::ws::frame::data_frame;

/// Live publications one recovering subscription may hold; beyond, the client is
/// a slow consumer (it could not take them faster anyway).
const MAX_HELD: usize = 100_000;

/// A subscription waiting for its history read.
pub struct Recovery {
    /// The connection's unique id (slab keys are reused).
    conn_id: u64,
    /// Tells this recovery from a later one on a reused subscription key.
    token: u64,
    request: Option<u64>,
    channel: Arc<str>,
    /// The client's position (`recover`); none for `latest` alone.
    since: Option<StreamPosition>,
    /// The read started (the channel is live on this shard).
    started: bool,
    held: Vec<Arc<Publication>>,
    /// The read came back ahead of this shard's live stream: it waits (holding)
    /// until the live stream reaches the read's top, so no offset comes twice.
    waiting: Option<Outcome>,
}

/// A finished read, waiting for the live stream: the connection's key, what to send.
struct Outcome {
    key: usize,
    read: Option<StoreRead>,
    failure: Option<&'static str>,
}

impl Recovery {
    /// Holds a live publication until the read is merged.
    pub fn hold(&mut self, publication: &Arc<Publication>) {
        if self.held.len() < MAX_HELD {
            self.held.push(publication.clone());
        }
    }
}

/// A store read as a recovery uses it: epoch, top offset, the publications to send.
type StoreRead = (Arc<str>, u64, Vec<(u64, crate::payload::Payload)>);

/// What a subscribe asks of history.
pub(super) struct HistoryRequest {
    pub(super) recover: Option<StreamPosition>,
    pub(super) latest: bool,
}

impl Shard<'_> {
    /// Registers a recovering subscription; the read starts once the channel is
    /// live here (now, if it is).
    pub(super) fn begin_recovery(
        &mut self,
        key: usize,
        sub: SubscriptionKey,
        id: Option<u64>,
        channel: &str,
        request: HistoryRequest,
        live: bool,
    ) {
        let Some(conn) = self.st.conns.get(key) else {
            return;
        };
        self.st.next_id += 1;
        let recovery = Recovery {
            conn_id: conn.id,
            token: self.st.next_id,
            request: id,
            channel: Arc::from(channel),
            since: request.recover,
            started: false,
            held: Vec::new(),
            waiting: None,
        };
        self.st.recovering.insert(sub, recovery);
        if live {
            self.start_recovery(key, sub);
        }
    }

    /// The channel went live on this shard: start the reads of its recoveries.
    pub(super) fn channel_live(&mut self, channel: &str, result: Result<(), ErrorCode>) {
        let ShardState { recovering, conns, .. } = &mut *self.st;
        let subs: Vec<(SubscriptionKey, usize)> = recovering
            .iter()
            .filter(|(_, r)| !r.started && &*r.channel == channel)
            .filter_map(|(sub, r)| {
                conns
                    .iter()
                    .find(|(_, c)| c.id == r.conn_id)
                    .map(|(key, _)| (*sub, key))
            })
            .collect();
        for (sub, key) in subs {
            match result {
                Ok(()) => self.start_recovery(key, sub),
                Err(code) => {
                    if let Some(r) = self.st.recovering.remove(&sub) {
                        let msg = "the broker could not subscribe this channel; retry later";
                        self.reply_error(key, r.request, code, msg);
                    }
                }
            }
        }
    }

    fn start_recovery(&mut self, key: usize, sub: SubscriptionKey) {
        let env = self.env;
        let Some(recovery) = self.st.recovering.get_mut(&sub) else {
            return;
        };
        recovery.started = true;
        let (channel, token) = (recovery.channel.clone(), recovery.token);
        // `latest` alone reads one publication; `recover` everything after the position.
        let (since, limit) = match &recovery.since {
            Some(p) => (Some(p.offset), None),
            None => (None, Some(1)),
        };
        let publisher = env.publisher.clone();
        env.spawner.spawn(move |core| async move {
            let result = publisher.history(channel, since, limit).await;
            core.with(|shard| shard.finish_recovery(key, sub, token, result));
        });
    }

    fn finish_recovery(
        &mut self,
        key: usize,
        sub: SubscriptionKey,
        token: u64,
        result: Option<Result<(HistoryPage, usize), BrokerError>>,
    ) {
        if self.st.recovering.get(&sub).map(|r| r.token) != Some(token) {
            return;
        }
        let Some(recovery) = self.st.recovering.remove(&sub) else {
            return;
        };
        if self.st.conns.get(key).map(|c| c.id) != Some(recovery.conn_id) {
            return;
        }
        let (read, failure) = Self::judge(&recovery, result);
        // The store may be ahead of what this shard has fanned out: the publications
        // in between are on their way here and would come twice (from the store and
        // live). Hold on until the live stream has reached the read's top.
        let behind = read.as_ref().is_some_and(|(epoch, top, _)| {
            self.st
                .table
                .position(&recovery.channel)
                .is_some_and(|p| p.epoch == *epoch && p.offset < *top)
        });
        if behind {
            let mut recovery = recovery;
            recovery.waiting = Some(Outcome { key, read, failure });
            self.st.recovering.insert(sub, recovery);
            return;
        }
        self.conclude(key, recovery, read, failure);
    }

    /// The live stream of `publication`'s channel moved: conclude the recoveries
    /// that were waiting for it.
    pub(super) fn live_moved(&mut self, publication: &Publication) {
        let Some(position) = &publication.position else {
            return;
        };
        let ready: Vec<SubscriptionKey> = self
            .st
            .recovering
            .iter()
            .filter(|(_, r)| r.channel == publication.channel)
            .filter(|(_, r)| {
                r.waiting.as_ref().is_some_and(|o| match &o.read {
                    Some((epoch, top, _)) => *epoch != position.epoch || position.offset >= *top,
                    None => true,
                })
            })
            .map(|(sub, _)| *sub)
            .collect();
        for sub in ready {
            if let Some(mut recovery) = self.st.recovering.remove(&sub) {
                if let Some(outcome) = recovery.waiting.take() {
                    self.conclude(outcome.key, recovery, outcome.read, outcome.failure);
                }
            }
        }
    }

    /// What a read means for a recovery: what to send, and why it failed if it did.
    fn judge(
        recovery: &Recovery,
        result: Option<Result<(HistoryPage, usize), BrokerError>>,
    ) -> (Option<StoreRead>, Option<&'static str>) {
        let (page, max) = match result {
            Some(Ok(read)) => read,
            Some(Err(e)) => {
                debug!(channel = %recovery.channel, error = %e, "history read failed; not recovered");
                return (None, Some("unavailable"));
            }
            None => return (None, Some("no_history")),
        };
        let Some(since) = &recovery.since else {
            // `latest`: the one publication read, if the store still holds the top.
            let latest: Vec<_> = page
                .publications
                .iter()
                .filter(|(o, _)| *o == page.top)
                .cloned()
                .collect();
            return (Some((page.epoch, page.top, latest)), None);
        };
        let reason = if *page.epoch != since.epoch {
            Some("epoch_changed")
        } else if since.offset > page.top {
            Some("ahead_of_store")
        } else if page.top - since.offset > max as u64
            || (since.offset < page.top && page.publications.first().map(|(o, _)| *o) != Some(since.offset + 1))
            || page.publications.len() as u64 != page.top - since.offset
        {
            // More than one recovery may return, or the store no longer holds them.
            Some("too_far")
        } else {
            None
        };
        let publications = if reason.is_none() {
            page.publications
        } else {
            Vec::new()
        };
        (Some((page.epoch, page.top, publications)), reason)
    }

    /// Sends the ack, the publications from the store, then the held live ones past
    /// the store's top; `failure` is why a `recover` did not recover.
    fn conclude(&mut self, key: usize, recovery: Recovery, read: Option<StoreRead>, failure: Option<&'static str>) {
        let env = self.env;
        let asked = recovery.since.is_some();
        if asked {
            let (result, reason) = match failure {
                None => ("recovered", "ok"),
                Some(why) => ("not_recovered", why),
            };
            env.metrics.recoveries.with_label_values(&[result, reason]).inc();
        }
        let top = read.as_ref().map(|(_, top, _)| *top);
        let ack = ServerFrame::Ack {
            id: recovery.request,
            expires_at: None,
            offset: top,
            epoch: read.as_ref().map(|(e, _, _)| e.to_string()),
            recovered: asked.then_some(failure.is_none()),
            duplicate: None,
        };
        self.reply_frame(key, &ack);
        let Some(encoding) = self.st.conns.get(key).map(|c| c.encoding) else {
            return;
        };
        if let Some((epoch, _, publications)) = &read {
            env.metrics.history_served.inc_by(publications.len() as u64);
            for (offset, payload) in publications {
                let position = MessagePosition { offset: *offset, epoch };
                match encode_message(encoding, &recovery.channel, 0, Some(position), payload.json()) {
                    Ok(body) => self.reply(key, data_frame(encoding, &body)),
                    Err(_) => env.shard_metrics.dropped_encode.inc(),
                }
            }
        }
        let after = top.unwrap_or(0);
        for publication in recovery.held {
            let current = match (&publication.position, &read) {
                (Some(p), Some((epoch, _, _))) => p.epoch != *epoch || p.offset > after,
                _ => true,
            };
            if current {
                if let Some(frame) = publication.frame(encoding) {
                    self.reply(key, frame.clone());
                }
            }
        }
    }

    /// Forgets the recovery of a subscription that went away.
    pub(super) fn forget_recovery(&mut self, sub: SubscriptionKey) {
        if !self.st.recovering.is_empty() {
            self.st.recovering.remove(&sub);
        }
    }

    /// The `ack` of a plain subscribe: with the channel's position where it keeps history.
    pub(super) fn subscribe_ack(&self, id: Option<u64>, position: Option<&Position>) -> ServerFrame {
        let mut ack = ServerFrame::ack(id);
        if let (ServerFrame::Ack { offset, epoch, .. }, Some(p)) = (&mut ack, position) {
            *offset = Some(p.offset);
            *epoch = Some(p.epoch.to_string());
        }
        ack
    }

    /// The `history` operation (PROTOCOL.md 19.6).
    pub(super) fn history_request(
        &mut self,
        key: usize,
        id: Option<u64>,
        channel: String,
        since: Option<StreamPosition>,
        limit: Option<u64>,
    ) {
        let env = self.env;
        if let Err(e) = shardcast_proto::validate_channel(&channel, env.config.max_channel_len) {
            return self.reply_error(key, id, ErrorCode::BadChannel, &e.to_string());
        }
        let ShardState { conns, table, .. } = &mut *self.st;
        let Some(conn) = conns.get(key) else {
            return;
        };
        let holds = conn.subs.iter().any(|&s| table.channel_of(s) == Some(channel.as_str()));
        let who = conn.auth.as_ref().map_or(&ANONYMOUS, |a| &a.identity);
        if !holds {
            if let Err(refusal) = env.auth.rules().may_subscribe(who, &channel, false) {
                return self.refuse(key, id, ErrorCode::PermissionDenied, refusal.0);
            }
        }
        let conn_id = conn.id;
        let publisher = env.publisher.clone();
        env.spawner.spawn(move |core| async move {
            let channel: Arc<str> = Arc::from(channel);
            let limit = limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX));
            let result = publisher
                .history(channel.clone(), since.as_ref().map(|p| p.offset), limit)
                .await;
            core.with(|shard| {
                if shard.st.conns.get(key).map(|c| c.id) != Some(conn_id) {
                    return;
                }
                let (page, max) = match result {
                    None => {
                        let msg = format!("{channel} keeps no history");
                        return shard.reply_error(key, id, ErrorCode::NoHistory, &msg);
                    }
                    Some(Err(e)) => return shard.reply_error(key, id, ErrorCode::Unavailable, &e.to_string()),
                    Some(Ok(read)) => read,
                };
                let frame = history_frame(id, &channel, page, since.as_ref(), limit.unwrap_or(max).min(max));
                shard.reply_frame(key, &frame);
            });
        });
    }
}

/// The `history` frame (and the API's answer) for a read.
pub fn history_frame(
    id: Option<u64>,
    channel: &str,
    page: HistoryPage,
    since: Option<&StreamPosition>,
    limit: usize,
) -> ServerFrame {
    let other_epoch = since.is_some_and(|p| *page.epoch != p.epoch);
    let publications: Vec<HistoryEntry> = if other_epoch {
        Vec::new()
    } else {
        page.publications
            .iter()
            .filter_map(|(offset, payload)| {
                serde_json::from_str(payload.json().get())
                    .ok()
                    .map(|data| HistoryEntry { offset: *offset, data })
            })
            .collect()
    };
    let complete = !other_epoch
        && match since {
            Some(p) => {
                let expected = page.top.saturating_sub(p.offset);
                publications.len() as u64 == expected && !publications.first().is_some_and(|e| e.offset != p.offset + 1)
            }
            None => {
                page.top == 0
                    || (publications.len() <= limit
                        && publications.first().is_some_and(|e| e.offset == 1)
                        && publications.last().is_some_and(|e| e.offset == page.top))
            }
        };
    ServerFrame::History {
        id,
        channel: channel.to_owned(),
        offset: page.top,
        epoch: page.epoch.to_string(),
        publications,
        complete,
    }
}
