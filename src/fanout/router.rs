//! The router: the one place that knows which shards want which channel.
//!
//! It runs as a single task, so its channel table needs no lock. Shards tell it when
//! a channel gains its first or loses its last local subscriber; it keeps the
//! broker subscribed to exactly the channels some shard wants (one broker
//! subscription per channel per instance, whatever the subscriber count), numbers
//! each channel's publications, and sends each publication only to the shards that
//! want it.
//!
//! A channel with history goes through its [`HistoryCursor`]: its publications
//! leave the router in offset order, each once, and what the broker lost (a hole,
//! or a whole outage announced by [`BrokerEvent::Gap`]) is read back from the
//! store and delivered before anything later (PROTOCOL.md 19.5).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;
use shardcast_proto::{ErrorCode, GapReason};
use tracing::{debug, warn};

use super::control::UserCommand;
use super::history_cursor::{Action, Entry, HistoryCursor};
use super::publication::{DeliveryReport, Publication};
use super::ChannelHistory;
use crate::broker::history_ring::HistoryRings;
use crate::broker::{
    Broker, BrokerError, BrokerEvent, BrokerSink, HistoryPage, HistoryQuery, Position, PresenceChange, PublishOptions,
    Published,
};
use crate::metrics::Metrics;
use crate::payload::Payload;

/// How long a publication that came early waits for the ones before it, before
/// the router reads them from the store.
const HOLE_WAIT: Duration = Duration::from_millis(100);

/// What the router sends a shard.
pub enum ShardMail {
    /// Write this publication to the shard's subscribers of its channel.
    Publication(Arc<Publication>),
    /// The router registered (or failed to register) the shard's interest in a channel.
    InterestConfirmed {
        /// The channel.
        channel: Arc<str>,
        /// Ok, or the error to answer the waiting subscribers with.
        result: Result<(), ErrorCode>,
        /// On a channel with history: the last position routed before the shard's
        /// first publication of it.
        position: Option<Position>,
    },
    /// Publications may have been missed: tell the subscribers of `channel`, or of
    /// every channel without history (none).
    Gap {
        /// The channel; none for every channel that keeps no history.
        channel: Option<Arc<str>>,
        /// Why history could not cover it.
        reason: GapReason,
    },
    /// Count this shard's subscribers of a channel into the report.
    CountSubscribers {
        /// The channel.
        channel: Arc<str>,
        /// Where the shard's count goes.
        report: Arc<DeliveryReport>,
    },
    /// A presence channel's members changed (announced once per user, cluster-wide).
    Presence {
        /// The channel.
        channel: Arc<str>,
        /// What changed.
        change: Arc<PresenceChange>,
    },
    /// Apply an operator's command to this shard's connections; the report, if
    /// any, is told how many connections it touched.
    Control {
        /// The command.
        command: Arc<UserCommand>,
        /// Where the shard's count goes.
        report: Option<Arc<DeliveryReport>>,
    },
}

/// A shard as the router sees it: somewhere to send [`ShardMail`]. The shard layer
/// implements it, so the router never names the shard's own types.
pub trait ShardMailbox: Send + 'static {
    /// Sends mail; false if the shard has stopped.
    fn send_mail(&self, mail: ShardMail) -> bool;
}

/// Where a publication came from, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The admin HTTP API.
    Api,
    /// A WebSocket client (`op: publish`).
    Client,
    /// Another instance, through the broker.
    Broker,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Source::Api => "api",
            Source::Client => "client",
            Source::Broker => "broker",
        }
    }
}

/// What the router is asked to do.
pub enum RouterCommand {
    /// A shard gained its first (`active`) or lost its last subscriber of a channel.
    Interest {
        /// The shard's index.
        shard: usize,
        /// The channel.
        channel: Arc<str>,
        /// Gained its first subscriber (true) or lost its last (false).
        active: bool,
    },
    /// Deliver a publication to this instance's subscribers; `reply` gets the count.
    Publish {
        /// The channel.
        channel: Arc<str>,
        /// The data.
        payload: Payload,
        /// Its place in the channel's history, if the store numbered it.
        position: Option<Position>,
        /// Who published it.
        source: Source,
        /// Gets the number of local subscribers reached, if the publisher waits for it.
        reply: Option<flume::Sender<usize>>,
    },
    /// Several publications at once (an API batch of channels without history):
    /// one command for the batch, delivered in its order; each item's reply gets
    /// its count.
    PublishBatch {
        /// Channel, data and who waits for the count, in the batch's order.
        items: Vec<(Arc<str>, Payload, flume::Sender<usize>)>,
        /// Who published them.
        source: Source,
    },
    /// The broker may have lost publications: of every channel (none), or of these.
    Gap(Option<Vec<Arc<str>>>),
    /// A presence channel's members changed, here or on another instance.
    Presence {
        /// The channel.
        channel: Arc<str>,
        /// What changed.
        change: PresenceChange,
    },
    /// An operator's command for every shard; `reply` gets the connections touched.
    Control {
        /// The command.
        command: UserCommand,
        /// Gets the number of connections the command touched on this instance.
        reply: Option<flume::Sender<usize>>,
    },
    /// A broker subscription finished.
    BrokerSubscribed {
        /// The channel.
        channel: Arc<str>,
        /// The broker's answer.
        result: Result<(), BrokerError>,
    },
    /// A store read for a channel with history finished: its starting position
    /// (`first`), or publications to fill a hole or catch up.
    HistoryRead {
        /// The channel.
        channel: Arc<str>,
        /// The first read, after the broker subscription.
        first: bool,
        /// The store's answer.
        result: Result<HistoryPage, BrokerError>,
    },
    /// Publications on a standalone gateway that keeps its own history (one, or an
    /// API batch): the router numbers each (and checks its idempotency key), then
    /// delivers it, in the batch's order.
    PublishNumbered {
        /// Each publication, and who waits for its count of local subscribers
        /// (dropped unanswered for a duplicate).
        items: Vec<NumberedItem>,
        /// Who published them.
        source: Source,
        /// Gets what the store did with each, in order, before any is delivered.
        published: flume::Sender<Vec<Published>>,
    },
    /// One publication of a standalone gateway that keeps its own history: as
    /// [`RouterCommand::PublishNumbered`], without a batch's vectors.
    PublishNumberedOne {
        /// The publication, and who waits for its count.
        item: NumberedItem,
        /// Who published it.
        source: Source,
        /// Gets what the store did.
        published: flume::Sender<Published>,
    },
    /// Read a standalone gateway's history, which the router keeps.
    ReadHistory {
        /// The channel.
        channel: Arc<str>,
        /// What to read.
        query: HistoryQuery,
        /// Gets the page.
        reply: flume::Sender<HistoryPage>,
    },
    /// How many local connections subscribe to a channel; `reply` gets the count.
    CountSubscribers {
        /// The channel.
        channel: Arc<str>,
        /// Gets the count.
        reply: flume::Sender<usize>,
    },
    /// A publication came early a while ago: read the store if the hole is still there.
    HoleCheck {
        /// The channel.
        channel: Arc<str>,
    },
}

/// A cheap, cloneable way to reach the router.
#[derive(Clone)]
pub struct RouterHandle {
    tx: flume::Sender<RouterCommand>,
}

impl RouterHandle {
    /// A handle and the receiving end for [`run`].
    pub fn channel() -> (RouterHandle, flume::Receiver<RouterCommand>) {
        let (tx, rx) = flume::unbounded();
        (RouterHandle { tx }, rx)
    }

    /// A shard's interest in a channel changed.
    pub fn interest(&self, shard: usize, channel: Arc<str>, active: bool) {
        let _ = self.tx.send(RouterCommand::Interest { shard, channel, active });
    }

    /// Tells this instance's subscribers of a presence channel that its members changed.
    pub fn presence(&self, channel: Arc<str>, change: PresenceChange) {
        let _ = self.tx.send(RouterCommand::Presence { channel, change });
    }

    /// Applies an operator's command on every shard and waits for the number of
    /// connections it touched.
    pub async fn control(&self, command: UserCommand) -> usize {
        let (reply, done) = flume::bounded(1);
        let cmd = RouterCommand::Control {
            command,
            reply: Some(reply),
        };
        if self.tx.send_async(cmd).await.is_err() {
            return 0;
        }
        done.recv_async().await.unwrap_or(0)
    }

    /// Numbers and delivers publications on a standalone gateway that keeps its
    /// own history, in their order; for each, what the store did and how many local
    /// subscribers it reached.
    pub async fn publish_numbered(
        &self,
        items: Vec<(Arc<str>, Payload, PublishOptions)>,
        source: Source,
    ) -> Result<Vec<(Published, usize)>, BrokerError> {
        let mut waits = Vec::with_capacity(items.len());
        let items = items
            .into_iter()
            .map(|(channel, payload, options)| {
                let (reply, done) = flume::bounded(1);
                waits.push(done);
                NumberedItem {
                    channel,
                    payload,
                    options,
                    reply,
                }
            })
            .collect();
        let (published, stored) = flume::bounded(1);
        let stopped = || BrokerError::Failed("the router stopped".into());
        let cmd = RouterCommand::PublishNumbered {
            items,
            source,
            published,
        };
        self.tx.send_async(cmd).await.map_err(|_| stopped())?;
        // The counts come last (the store's answers are sent as soon as the
        // router has handed every publication on): waiting for them first costs
        // one wake-up, not two.
        let mut reached = Vec::with_capacity(waits.len());
        for done in waits {
            reached.push(done.recv_async().await.unwrap_or(0));
        }
        let published = stored.recv_async().await.map_err(|_| stopped())?;
        Ok(published.into_iter().zip(reached).collect())
    }

    /// [`RouterHandle::publish_numbered`] for one publication.
    pub async fn publish_numbered_one(
        &self,
        channel: Arc<str>,
        payload: Payload,
        options: PublishOptions,
        source: Source,
    ) -> Result<(Published, usize), BrokerError> {
        let (reply, done) = flume::bounded(1);
        let (published, stored) = flume::bounded(1);
        let stopped = || BrokerError::Failed("the router stopped".into());
        let item = NumberedItem {
            channel,
            payload,
            options,
            reply,
        };
        let cmd = RouterCommand::PublishNumberedOne {
            item,
            source,
            published,
        };
        self.tx.send_async(cmd).await.map_err(|_| stopped())?;
        // The count comes last: waiting for it first costs one wake-up, not two.
        let reached = done.recv_async().await.unwrap_or(0);
        let published = stored.recv_async().await.map_err(|_| stopped())?;
        Ok((published, reached))
    }

    /// Reads a standalone gateway's history, which the router keeps.
    pub async fn read_history(&self, channel: Arc<str>, query: HistoryQuery) -> Result<HistoryPage, BrokerError> {
        let (reply, page) = flume::bounded(1);
        let stopped = || BrokerError::Failed("the router stopped".into());
        let cmd = RouterCommand::ReadHistory { channel, query, reply };
        self.tx.send_async(cmd).await.map_err(|_| stopped())?;
        page.recv_async().await.map_err(|_| stopped())
    }

    /// How many connections of this instance subscribe to `channel`.
    pub async fn subscribers(&self, channel: Arc<str>) -> usize {
        let (reply, done) = flume::bounded(1);
        if self
            .tx
            .send_async(RouterCommand::CountSubscribers { channel, reply })
            .await
            .is_err()
        {
            return 0;
        }
        done.recv_async().await.unwrap_or(0)
    }

    /// Delivers publications on channels without history locally, as one command,
    /// and waits for the number of subscribers each reached.
    pub async fn publish_local_batch(&self, items: Vec<(Arc<str>, Payload)>, source: Source) -> Vec<usize> {
        let (items, waits): (Vec<_>, Vec<_>) = items
            .into_iter()
            .map(|(channel, payload)| {
                let (reply, done) = flume::bounded(1);
                ((channel, payload, reply), done)
            })
            .unzip();
        if self
            .tx
            .send_async(RouterCommand::PublishBatch { items, source })
            .await
            .is_err()
        {
            return vec![0; waits.len()];
        }
        let mut reached = Vec::with_capacity(waits.len());
        for done in waits {
            reached.push(done.recv_async().await.unwrap_or(0));
        }
        reached
    }

    /// Delivers a publication locally and waits for the number of subscribers reached.
    pub async fn publish_local(
        &self,
        channel: Arc<str>,
        payload: Payload,
        position: Option<Position>,
        source: Source,
    ) -> usize {
        let (reply, done) = flume::bounded(1);
        let cmd = RouterCommand::Publish {
            channel,
            payload,
            position,
            source,
            reply: Some(reply),
        };
        if self.tx.send_async(cmd).await.is_err() {
            return 0;
        }
        done.recv_async().await.unwrap_or(0)
    }
}

/// The router consumes what the broker emits.
impl BrokerSink for RouterHandle {
    fn event(&self, event: BrokerEvent) {
        let cmd = match event {
            BrokerEvent::Publication {
                channel,
                payload,
                position,
            } => RouterCommand::Publish {
                channel,
                payload,
                position,
                source: Source::Broker,
                reply: None,
            },
            BrokerEvent::Gap => RouterCommand::Gap(None),
            BrokerEvent::ChannelsGap { channels } => RouterCommand::Gap(Some(channels)),
            BrokerEvent::Presence { channel, change } => RouterCommand::Presence { channel, change },
            BrokerEvent::Control { payload } => match UserCommand::from_payload(&payload) {
                Ok(command) => RouterCommand::Control { command, reply: None },
                Err(e) => {
                    warn!(error = %e, "ignored a control message this version does not understand");
                    return;
                }
            },
        };
        let _ = self.tx.send(cmd);
    }
}

enum BrokerState {
    Subscribing,
    /// Subscribed on the broker; a channel with history then waits for its first
    /// store read before it is live.
    Positioning,
    Subscribed,
}

/// What travels with a publication through a history cursor: who waits for its count.
type Reply = Option<flume::Sender<usize>>;

/// One publication of a [`RouterCommand::PublishNumbered`].
#[derive(Debug)]
pub struct NumberedItem {
    channel: Arc<str>,
    payload: Payload,
    options: PublishOptions,
    reply: flume::Sender<usize>,
}

struct Route {
    /// Bit i set: shard i has subscribers.
    shards: u64,
    /// Shards whose subscribers wait for the broker subscription.
    waiting: u64,
    broker: BrokerState,
    seq: u64,
    /// The delivery order of a channel with history.
    history: Option<HistoryCursor<Reply>>,
}

/// The router's state: one task owns it.
struct Router<S> {
    routes: HashMap<Arc<str>, Route>,
    me: RouterHandle,
    shards: Vec<S>,
    broker: Arc<dyn Broker>,
    history: ChannelHistory,
    metrics: Arc<Metrics>,
    /// A standalone gateway's history, kept here: no other instance shares it.
    store: Option<HistoryRings>,
    /// What a history cursor decided for the publication at hand; kept between
    /// publications so that ordering one allocates nothing.
    actions: Vec<Action<Reply>>,
}

/// Runs the router until every handle is dropped.
pub async fn run<S: ShardMailbox>(
    rx: flume::Receiver<RouterCommand>,
    me: RouterHandle,
    shards: Vec<S>,
    broker: Arc<dyn Broker>,
    history: ChannelHistory,
    metrics: Arc<Metrics>,
) {
    let mut router = Router {
        routes: HashMap::new(),
        me,
        shards,
        store: broker.history_is_local().then(HistoryRings::for_this_process),
        actions: Vec::new(),
        broker,
        history,
        metrics: metrics.clone(),
    };
    // Resolved once: a labelled lookup per publication would take the metric's lock.
    let published = [Source::Api, Source::Client, Source::Broker]
        .map(|s| metrics.messages_published.with_label_values(&[s.label()]));
    while let Ok(cmd) = rx.recv_async().await {
        match cmd {
            RouterCommand::Interest { shard, channel, active } => router.interest(shard, channel, active),
            RouterCommand::Gap(channels) => router.broker_gap(channels),
            RouterCommand::Control { command, reply } => router.control(command, reply),
            RouterCommand::Presence { channel, change } => router.presence(channel, change),
            RouterCommand::BrokerSubscribed { channel, result } => router.broker_subscribed(channel, result),
            RouterCommand::HistoryRead { channel, first, result } => router.history_read(channel, first, result),
            RouterCommand::HoleCheck { channel } => router.hole_check(&channel),
            RouterCommand::CountSubscribers { channel, reply } => router.count(channel, reply),
            RouterCommand::ReadHistory { channel, query, reply } => {
                if let Some(store) = router.store.as_mut() {
                    let _ = reply.send(store.read(&channel, &query));
                }
            }
            RouterCommand::PublishNumbered {
                items,
                source,
                published: stored,
            } => router.publish_numbered(items, &published[source as usize], &stored),
            RouterCommand::PublishNumberedOne {
                item,
                source,
                published: stored,
            } => {
                let result = router.number(&item);
                if !result.duplicate {
                    published[source as usize].inc();
                    router.publish(item.channel, item.payload, result.position.clone(), Some(item.reply));
                }
                let _ = stored.try_send(result);
            }
            RouterCommand::Publish {
                channel,
                payload,
                position,
                source,
                reply,
            } => {
                published[source as usize].inc();
                router.publish(channel, payload, position, reply);
            }
            RouterCommand::PublishBatch { items, source } => {
                published[source as usize].inc_by(items.len() as u64);
                for (channel, payload, reply) in items {
                    router.publish(channel, payload, None, Some(reply));
                }
            }
        }
        metrics.channels.set(router.routes.len() as i64);
    }
}

impl<S: ShardMailbox> Router<S> {
    /// Numbers publications in the router's own store, answers what it did with
    /// each, then delivers those that are new.
    fn publish_numbered(
        &mut self,
        items: Vec<NumberedItem>,
        counter: &IntCounter,
        stored: &flume::Sender<Vec<Published>>,
    ) {
        let results: Vec<Published> = items.iter().map(|item| self.number(item)).collect();
        for (item, result) in items.into_iter().zip(&results) {
            if !result.duplicate {
                counter.inc();
                self.publish(item.channel, item.payload, result.position.clone(), Some(item.reply));
            }
        }
        let _ = stored.try_send(results);
    }

    /// Numbers a publication in the router's own store (a standalone gateway's);
    /// one without history or key passes through unnumbered.
    fn number(&mut self, item: &NumberedItem) -> Published {
        let Some(store) = self.store.as_mut() else {
            return Published::default();
        };
        if item.options.history.is_none() && item.options.idempotency.is_none() {
            return Published::default();
        }
        let result = store.publish(&item.channel, &item.payload, &item.options);
        let (channels, publications) = store.size();
        self.metrics.history_channels.set(channels as i64);
        self.metrics.history_publications.set(publications as i64);
        result
    }

    fn interest(&mut self, shard: usize, channel: Arc<str>, active: bool) {
        let bit = 1u64 << shard;
        if !active {
            if let Some(route) = self.routes.get_mut(&channel) {
                route.shards &= !bit;
                route.waiting &= !bit;
                if route.shards == 0 {
                    self.routes.remove(&channel);
                    let fut = self.broker.unsubscribe(channel.clone());
                    tokio::spawn(async move {
                        if let Err(e) = fut.await {
                            warn!(%channel, error = %e, "broker unsubscribe failed");
                        }
                    });
                }
            }
            return;
        }
        match self.routes.get_mut(&channel) {
            Some(route) => {
                route.shards |= bit;
                match route.broker {
                    BrokerState::Subscribed => {
                        let position = route.history.as_ref().and_then(HistoryCursor::position);
                        confirm(&self.shards[shard], channel, Ok(()), position)
                    }
                    BrokerState::Subscribing | BrokerState::Positioning => route.waiting |= bit,
                }
            }
            None => {
                let history = self
                    .history
                    .policy(&channel)
                    .map(|(policy, limit)| HistoryCursor::new(policy, limit));
                self.routes.insert(
                    channel.clone(),
                    Route {
                        shards: bit,
                        waiting: bit,
                        broker: BrokerState::Subscribing,
                        seq: 0,
                        history,
                    },
                );
                let fut = self.broker.subscribe(channel.clone());
                let me = self.me.clone();
                tokio::spawn(async move {
                    let result = fut.await;
                    let _ = me.tx.send(RouterCommand::BrokerSubscribed { channel, result });
                });
            }
        }
    }

    fn broker_subscribed(&mut self, channel: Arc<str>, result: Result<(), BrokerError>) {
        let Some(route) = self.routes.get_mut(&channel) else {
            return;
        };
        if !matches!(route.broker, BrokerState::Subscribing) {
            return;
        }
        if let (Ok(()), Some(cursor)) = (&result, &route.history) {
            // Subscribed first, then read: every publication after the read's top
            // reaches this instance (PROTOCOL.md 19.4).
            route.broker = BrokerState::Positioning;
            let query = HistoryQuery {
                since: None,
                limit: 0,
                policy: cursor.policy,
            };
            self.read(channel, query, true);
            return;
        }
        self.go_live(&channel, result.map_err(|e| e.to_string()));
    }

    /// The route's broker state is settled: answer the waiting shards.
    fn go_live(&mut self, channel: &Arc<str>, result: Result<(), String>) {
        let Some(route) = self.routes.get_mut(channel) else {
            return;
        };
        let waiting = std::mem::take(&mut route.waiting);
        match &result {
            Ok(()) => route.broker = BrokerState::Subscribed,
            Err(e) => {
                warn!(%channel, error = %e, "broker subscribe failed");
                // The waiting shards drop these subscribers, so the route goes too;
                // a later subscribe starts over.
                route.shards &= !waiting;
                if route.shards == 0 {
                    self.routes.remove(channel);
                }
            }
        }
        let position = self
            .routes
            .get(channel)
            .and_then(|r| r.history.as_ref())
            .and_then(HistoryCursor::position);
        let result = result.map_err(|_| ErrorCode::Unavailable);
        for shard in bits(waiting) {
            confirm(&self.shards[shard], channel.clone(), result, position.clone());
        }
    }

    fn read(&mut self, channel: Arc<str>, query: HistoryQuery, first: bool) {
        if let Some(store) = self.store.as_mut() {
            // The store is here: the answer is at hand.
            let page = store.read(&channel, &query);
            self.history_read(channel, first, Ok(page));
            return;
        }
        let fut = self.broker.history(channel.clone(), query);
        let me = self.me.clone();
        tokio::spawn(async move {
            let result = fut.await;
            let _ = me.tx.send(RouterCommand::HistoryRead { channel, first, result });
        });
    }

    fn history_read(&mut self, channel: Arc<str>, first: bool, result: Result<HistoryPage, BrokerError>) {
        let Some(route) = self.routes.get_mut(&channel) else {
            return;
        };
        let Some(cursor) = route.history.as_mut() else {
            return;
        };
        let mut actions = Vec::new();
        if first {
            match result {
                Ok(page) => cursor.start(page.epoch, page.top, &mut actions),
                Err(e) => {
                    // Without a position the channel cannot be live: refuse its subscribers.
                    route.history = None;
                    self.go_live(&channel, Err(format!("history read failed: {e}")));
                    return;
                }
            }
            self.go_live(&channel, Ok(()));
            self.apply(&channel, &mut actions);
            return;
        }
        let again = match result {
            Ok(page) => {
                self.metrics.catchups.with_label_values(&["read"]).inc();
                cursor.filled(page, || None, &mut actions)
            }
            Err(e) => {
                warn!(%channel, error = %e, "cannot read history to fill a hole");
                self.metrics.catchups.with_label_values(&["failed"]).inc();
                cursor.fill_failed(&mut actions);
                false
            }
        };
        let next = again.then(|| cursor.catch_up()).flatten().map(|q| (q, cursor.policy));
        if let Some(((since, limit), policy)) = next {
            cursor.filling = true;
            self.read(
                channel.clone(),
                HistoryQuery {
                    since: Some(since),
                    limit,
                    policy,
                },
                false,
            );
        }
        self.apply(&channel, &mut actions);
    }

    fn hole_check(&mut self, channel: &Arc<str>) {
        let Some(cursor) = self.routes.get_mut(channel).and_then(|r| r.history.as_mut()) else {
            return;
        };
        cursor.check_armed = false;
        if cursor.filling {
            return;
        }
        if let Some((since, limit)) = cursor.hole() {
            cursor.filling = true;
            let query = HistoryQuery {
                since: Some(since),
                limit,
                policy: cursor.policy,
            };
            self.read(channel.clone(), query, false);
        }
    }

    /// The broker may have lost publications of any channel (`None`) or of some:
    /// channels with history catch up from the store; the others get a gap frame.
    fn broker_gap(&mut self, only: Option<Vec<Arc<str>>>) {
        warn!(
            channels = only.as_ref().map_or(self.routes.len(), Vec::len),
            "the broker may have lost publications: catching up from history where channels keep it"
        );
        let only: Option<std::collections::HashSet<Arc<str>>> = only.map(|c| c.into_iter().collect());
        match &only {
            None => {
                for shard in &self.shards {
                    shard.send_mail(ShardMail::Gap {
                        channel: None,
                        reason: GapReason::NoHistory,
                    });
                }
            }
            Some(channels) => {
                for channel in channels {
                    let Some(route) = self.routes.get(channel).filter(|r| r.history.is_none()) else {
                        continue;
                    };
                    for shard in bits(route.shards) {
                        self.shards[shard].send_mail(ShardMail::Gap {
                            channel: Some(channel.clone()),
                            reason: GapReason::NoHistory,
                        });
                    }
                }
            }
        }
        let mut reads = Vec::new();
        for (channel, route) in &mut self.routes {
            if only.as_ref().is_some_and(|o| !o.contains(channel)) {
                continue;
            }
            let Some(cursor) = route.history.as_mut() else {
                continue;
            };
            if let (false, Some((since, limit))) = (cursor.filling, cursor.catch_up()) {
                cursor.filling = true;
                let policy = cursor.policy;
                reads.push((
                    channel.clone(),
                    HistoryQuery {
                        since: Some(since),
                        limit,
                        policy,
                    },
                ));
            }
        }
        self.metrics
            .catchups
            .with_label_values(&["started"])
            .inc_by(reads.len() as u64);
        for (channel, query) in reads {
            self.read(channel, query, false);
        }
    }

    fn count(&self, channel: Arc<str>, reply: flume::Sender<usize>) {
        let Some(route) = self.routes.get(&channel) else {
            let _ = reply.try_send(0);
            return;
        };
        let targets = route.shards;
        let report = Arc::new(DeliveryReport::new(targets.count_ones() as usize, reply));
        for shard in bits(targets) {
            let mail = ShardMail::CountSubscribers {
                channel: channel.clone(),
                report: report.clone(),
            };
            if !self.shards[shard].send_mail(mail) {
                report.shard_done(0);
            }
        }
    }

    /// Sends a presence change to the shards with subscribers of its channel.
    fn presence(&mut self, channel: Arc<str>, change: PresenceChange) {
        let Some(route) = self.routes.get(&channel) else {
            return;
        };
        let change = Arc::new(change);
        for (i, shard) in self.shards.iter().enumerate() {
            if route.shards & (1 << i) != 0 {
                shard.send_mail(ShardMail::Presence {
                    channel: channel.clone(),
                    change: change.clone(),
                });
            }
        }
    }

    fn control(&mut self, command: UserCommand, reply: Reply) {
        let command = Arc::new(command);
        let report = reply.map(|r| Arc::new(DeliveryReport::new(self.shards.len(), r)));
        for shard in &self.shards {
            let mail = ShardMail::Control {
                command: command.clone(),
                report: report.clone(),
            };
            if !shard.send_mail(mail) {
                if let Some(report) = &report {
                    report.shard_done(0);
                }
            }
        }
    }

    fn publish(&mut self, channel: Arc<str>, payload: Payload, position: Option<Position>, reply: Reply) {
        // A channel still waiting for its broker subscription has no acknowledged
        // subscriber yet: nobody to deliver to, no number used. A channel with
        // history holds what comes while it looks up its position.
        let Some(route) = self.routes.get_mut(&channel) else {
            answer(reply, 0);
            return;
        };
        match (route.history.as_mut(), position, &route.broker) {
            (Some(cursor), Some(position), BrokerState::Positioning | BrokerState::Subscribed) => {
                let mut actions = std::mem::take(&mut self.actions);
                cursor.offer(
                    Entry {
                        position,
                        payload,
                        extra: reply,
                    },
                    &mut actions,
                );
                if cursor.hole().is_some() && !cursor.filling && !cursor.check_armed {
                    cursor.check_armed = true;
                    let me = self.me.clone();
                    let channel = channel.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(HOLE_WAIT).await;
                        let _ = me.tx.send(RouterCommand::HoleCheck { channel });
                    });
                }
                let live = matches!(route.broker, BrokerState::Subscribed);
                if live {
                    self.apply(&channel, &mut actions);
                }
                actions.clear();
                self.actions = actions;
            }
            (_, position, BrokerState::Subscribed) => {
                self.deliver(&channel, position, payload, reply);
            }
            _ => answer(reply, 0),
        }
    }

    fn apply(&mut self, channel: &Arc<str>, actions: &mut Vec<Action<Reply>>) {
        for action in actions.drain(..) {
            match action {
                Action::Deliver(entry) => self.deliver(channel, Some(entry.position), entry.payload, entry.extra),
                Action::Duplicate(entry) => {
                    self.metrics.history_duplicates.inc();
                    answer(entry.extra, 0);
                }
                Action::Gap(reason) => {
                    self.metrics.gaps.with_label_values(&[reason.as_str()]).inc();
                    let Some(route) = self.routes.get(channel) else {
                        continue;
                    };
                    for shard in bits(route.shards) {
                        self.shards[shard].send_mail(ShardMail::Gap {
                            channel: Some(channel.clone()),
                            reason,
                        });
                    }
                }
            }
        }
    }

    fn deliver(&mut self, channel: &Arc<str>, position: Option<Position>, payload: Payload, reply: Reply) {
        let Some(route) = self.routes.get_mut(channel) else {
            answer(reply, 0);
            return;
        };
        route.seq += 1;
        let targets = route.shards;
        let report = reply.map(|r| DeliveryReport::new(targets.count_ones() as usize, r));
        let publication = Arc::new(Publication::new(channel.clone(), route.seq, position, payload, report));
        for shard in bits(targets) {
            if !self.shards[shard].send_mail(ShardMail::Publication(publication.clone())) {
                debug!(shard, "shard gone; publication not delivered there");
                publication.shard_done(0);
            }
        }
    }
}

fn answer(reply: Reply, n: usize) {
    if let Some(reply) = reply {
        let _ = reply.try_send(n);
    }
}

fn confirm(shard: &impl ShardMailbox, channel: Arc<str>, result: Result<(), ErrorCode>, position: Option<Position>) {
    shard.send_mail(ShardMail::InterestConfirmed {
        channel,
        result,
        position,
    });
}

fn bits(mask: u64) -> impl Iterator<Item = usize> {
    (0..64).filter(move |i| mask & (1u64 << i) != 0)
}
