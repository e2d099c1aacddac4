//! History on a shard (PROTOCOL.md 19): subscribes with `recover` or `latest`,
//! which hold the channel's live publications for the subscription while the
//! store is read and then merge the two by offset (19.4); the position in every
//! `ack` of a channel with history; and the `history` operation.

use std::sync::Arc;
use std::time::Duration;

use shardcast_proto::{encode_message, ErrorCode, HistoryEntry, MessagePosition, ServerFrame, StreamPosition};
use tracing::debug;

use super::channel_table::SubscriptionKey;
use super::pusher::is_pusher;
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
    /// The read is done, but the client is ahead of what this shard has fanned
    /// out (it comes from an instance that had delivered more): the recovery
    /// waits, holding, until the live stream reaches the client's offset.
    waiting: Option<(usize, Option<StoreRead>, Option<&'static str>)>,
}

/// How long a recovery waits for the live stream to reach a client that is ahead
/// (normally milliseconds: those publications are on their way here).
const AHEAD_WAIT: Duration = Duration::from_secs(2);

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
                        if self.st.conns.get(key).is_some_and(is_pusher) {
                            self.pusher_subscribe_answer(key, channel, false, None);
                            continue;
                        }
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
        // Publications up to the client's offset that this shard has not fanned out
        // yet would reach the client live, a second time: wait for them to pass.
        let ahead = match (&recovery.since, &read, failure) {
            (Some(since), Some((epoch, _, _)), None) => self
                .st
                .table
                .position(&recovery.channel)
                .is_some_and(|p| p.epoch == *epoch && p.offset < since.offset),
            _ => false,
        };
        if !ahead {
            return self.conclude(key, recovery, read, failure);
        }
        let mut recovery = recovery;
        recovery.waiting = Some((key, read, failure));
        self.st.recovering.insert(sub, recovery);
        self.env.spawner.spawn(move |core| async move {
            tokio::time::sleep(AHEAD_WAIT).await;
            core.with(|shard| shard.stop_waiting(sub, token, None));
        });
    }

    /// Concludes a recovery that waits for the live stream: once `position` (the
    /// channel's latest on this shard) reaches the client, or at the deadline (none).
    fn stop_waiting(&mut self, sub: SubscriptionKey, token: u64, position: Option<&Position>) {
        let Some(recovery) = self.st.recovering.get(&sub).filter(|r| r.token == token) else {
            return;
        };
        let reached = match (position, &recovery.since) {
            (None, _) => true,
            (Some(p), Some(since)) => *p.epoch != since.epoch || p.offset >= since.offset,
            (Some(_), None) => true,
        };
        if !reached || recovery.waiting.is_none() {
            return;
        }
        if let Some(mut recovery) = self.st.recovering.remove(&sub) {
            if let Some((key, read, failure)) = recovery.waiting.take() {
                self.conclude(key, recovery, read, failure);
            }
        }
    }

    /// A publication of a channel was fanned out: recoveries waiting for the live
    /// stream to reach their client may conclude.
    pub(super) fn live_moved(&mut self, publication: &Publication) {
        let Some(position) = &publication.position else {
            return;
        };
        let waiting: Vec<(SubscriptionKey, u64)> = self
            .st
            .recovering
            .iter()
            .filter(|(_, r)| r.waiting.is_some() && r.channel == publication.channel)
            .map(|(sub, r)| (*sub, r.token))
            .collect();
        for (sub, token) in waiting {
            self.stop_waiting(sub, token, Some(position));
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

    /// Sends the ack, the publications from the store, then the held live ones;
    /// `failure` is why a `recover` did not recover.
    ///
    /// The merge is exact (PROTOCOL.md 19.4). The store was read after the
    /// subscription began holding, so its top is at or past every offset this shard
    /// had delivered then; the held publications continue from there without a
    /// hole (the router delivers each channel in offset order). So the store gives
    /// what comes before the first held one, the held ones follow, and the store's
    /// publications this shard has not fanned out yet (past its own position) are
    /// left to arrive live: nothing twice, nothing missing, no waiting.
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
        let epoch = read.as_ref().map(|(e, _, _)| e.clone());
        let same_epoch = |p: &Position| epoch.as_ref() == Some(&p.epoch);
        let first_held = recovery
            .held
            .iter()
            .find_map(|p| p.position.as_ref().filter(|p| same_epoch(p)).map(|p| p.offset));
        let shard_position = self
            .st
            .table
            .position(&recovery.channel)
            .filter(|p| same_epoch(p))
            .map(|p| p.offset);
        // Everything after `live_from` comes live (held now, or later).
        let live_from = match (first_held, shard_position, &read) {
            (Some(first), _, _) => Some(first - 1),
            (None, Some(position), _) => Some(position),
            (None, None, Some((_, top, _))) => Some(*top),
            (None, None, None) => None,
        };
        // A client may be ahead of this instance (it came from one that had
        // delivered more): what it already has is not sent again.
        let had = |p: &Position| {
            recovery
                .since
                .as_ref()
                .is_some_and(|s| *p.epoch == s.epoch && p.offset <= s.offset)
        };
        if self.st.conns.get(key).is_some_and(is_pusher) {
            let store = match (&read, live_from) {
                (Some((epoch, _, publications)), Some(live_from)) => {
                    let missed = publications.iter().filter(|(o, _)| *o <= live_from).cloned().collect();
                    Some((&**epoch, missed))
                }
                _ => None,
            };
            let held = recovery
                .held
                .iter()
                .filter(|p| !p.position.as_ref().is_some_and(had))
                .cloned()
                .collect();
            let recovered = asked.then_some(failure.is_none());
            return self.conclude_pusher_recovery(key, &recovery.channel, recovered, store, held);
        }
        let ack = ServerFrame::Ack {
            id: recovery.request,
            expires_at: None,
            offset: live_from,
            epoch: epoch.as_ref().map(|e| e.to_string()),
            recovered: asked.then_some(failure.is_none()),
            duplicate: None,
        };
        self.reply_frame(key, &ack);
        let Some(encoding) = self.st.conns.get(key).map(|c| c.encoding) else {
            return;
        };
        if let (Some((epoch, _, publications)), Some(live_from)) = (&read, live_from) {
            for (offset, payload) in publications.iter().filter(|(o, _)| *o <= live_from) {
                let position = MessagePosition { offset: *offset, epoch };
                match encode_message(encoding, &recovery.channel, 0, Some(position), payload.json()) {
                    Ok(body) => {
                        env.metrics.history_served.inc();
                        self.reply(key, data_frame(encoding, &body));
                    }
                    Err(_) => env.shard_metrics.dropped_encode.inc(),
                }
            }
        }
        for publication in recovery.held {
            if publication.position.as_ref().is_some_and(had) {
                continue;
            }
            if let Some(frame) = publication.frame(encoding) {
                self.reply(key, frame.clone());
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
    /// Whether connection `key` may read `channel` (its history or its presence):
    /// it subscribes to it, or the rules would let it (PROTOCOL.md 19.6, 21). Its
    /// id if so; none once the refusal is answered (or the connection is gone).
    pub(super) fn may_read(&mut self, key: usize, id: Option<u64>, channel: &str) -> Option<u64> {
        let env = self.env;
        let ShardState { conns, table, .. } = &mut *self.st;
        let conn = conns.get(key)?;
        let holds = conn.subs.iter().any(|&s| table.channel_of(s) == Some(channel));
        let who = conn.auth.as_ref().map_or(&ANONYMOUS, |a| &a.identity);
        if !holds {
            if let Err(refusal) = env.auth.rules().may_subscribe(who, channel, false) {
                self.refuse(key, id, ErrorCode::PermissionDenied, refusal.0);
                return None;
            }
        }
        Some(conn.id)
    }

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
        let Some(conn_id) = self.may_read(key, id, &channel) else {
            return;
        };
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
