//! The in-process broker: the default when no Redis is configured. A single
//! gateway has no other instance to reach; several gateways in one process (tests,
//! the broker contract suite) can share one [`InProcessBus`] and then behave like
//! instances on a Redis.
//!
//! The bus is one thread that owns the members and their channel sets; brokers
//! talk to it over a channel, so a publish takes no lock (the earlier design read
//! an `RwLock` on every publish). One queue for every member also gives the order
//! Redis gives: a subscribe that returned before a publish was sent is in place
//! when that publish is routed.
//!
//! The bus thread also owns the history store ([`HistoryRings`]): a publish with
//! history is numbered there, in the same step that routes it, so every member
//! sees the same offset, as with Redis. A standalone broker leaves history to
//! the gateway's router ([`Broker::history_is_local`]): with no other member to
//! agree with, numbering where the publication already passes costs no thread
//! hop. Its bus then holds only presence (and history for a caller that asks the
//! broker directly, as the contract suite does).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tracing::error;

use super::history_ring::HistoryRings;
use super::presence_book::PresenceBook;
use super::user_counter::LocalUserCounter;
use super::{
    Broker, BrokerCall, BrokerError, BrokerEvent, BrokerFuture, BrokerSink, Forgotten, HistoryFuture, HistoryPage,
    HistoryQuery, PresenceChange, PresenceFuture, PresenceMember, PublishFuture, PublishOptions, Published,
};
use crate::payload::Payload;

/// The history store's size, written by the bus thread, read for metrics.
#[derive(Default)]
struct StoreSize {
    channels: AtomicU64,
    publications: AtomicU64,
}

/// A publish as the bus thread takes it.
struct BusPublish {
    from: u64,
    channel: Arc<str>,
    payload: Payload,
    options: PublishOptions,
    /// Where the outcome goes, for a publish that needs one (history, idempotency).
    reply: Option<flume::Sender<Published>>,
}

/// What the bus thread is asked to do.
enum BusCommand {
    Join(u64, Arc<dyn BrokerSink>),
    Leave(u64),
    Subscribe(u64, Arc<str>),
    Unsubscribe(u64, Arc<str>),
    Publish(BusPublish),
    History(Arc<str>, HistoryQuery, flume::Sender<HistoryPage>),
    Control(u64, Payload),
    PresenceJoin(u64, Arc<str>, PresenceMember, flume::Sender<bool>),
    PresenceLeave(u64, Arc<str>, Arc<str>, flume::Sender<bool>),
    PresenceMembers(Arc<str>, usize, flume::Sender<Vec<PresenceMember>>),
    Occupancy(u64, Arc<str>, bool, flume::Sender<bool>),
}

/// A pub/sub bus shared by the in-process brokers of one process.
pub struct InProcessBus {
    tx: flume::Sender<BusCommand>,
    next_id: AtomicU64,
    /// The history store's size, as the bus thread last wrote it.
    size: Arc<StoreSize>,
    users: Mutex<Option<Arc<LocalUserCounter>>>,
}

impl InProcessBus {
    /// An empty bus, with its thread started. The thread ends when the bus and
    /// every broker on it are dropped.
    pub fn new() -> Result<Arc<InProcessBus>, BrokerError> {
        let (tx, rx) = flume::unbounded();
        let size = Arc::new(StoreSize::default());
        let written = size.clone();
        std::thread::Builder::new()
            .name("inprocess-bus".into())
            .spawn(move || route(rx, HistoryRings::for_this_process(), &written))
            .map_err(|e| BrokerError::Failed(format!("cannot start the in-process bus: {e}")))?;
        Ok(Arc::new(InProcessBus {
            tx,
            next_id: AtomicU64::new(0),
            size,
            users: Mutex::new(None),
        }))
    }

    /// The per-user connection count shared by every instance on this bus (made
    /// with the first caller's `limit`).
    pub fn user_counter(&self, limit: u32) -> Arc<LocalUserCounter> {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        users
            .get_or_insert_with(|| Arc::new(LocalUserCounter::new(limit)))
            .clone()
    }

    /// Joins the bus as a new instance delivering into `sink`.
    pub fn join(self: &Arc<Self>, sink: Arc<dyn BrokerSink>) -> InProcessBroker {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let _ = self.tx.send(BusCommand::Join(id, sink));
        InProcessBroker {
            tx: self.tx.clone(),
            id,
            alone: false,
            size: self.size.clone(),
        }
    }
}

/// A member of the bus: where its events go, and the channels it subscribed.
struct Member {
    sink: Arc<dyn BrokerSink>,
    channels: HashSet<Arc<str>>,
}

/// The bus thread: routes each publication to the other members subscribed to
/// its channel.
fn route(rx: flume::Receiver<BusCommand>, mut history: HistoryRings, size: &StoreSize) {
    let mut members: HashMap<u64, Member> = HashMap::new();
    let mut presence = PresenceBook::default();
    // Which members have subscribers on each channel (PROTOCOL.md 20.7).
    let mut occupancy: HashMap<Arc<str>, HashSet<u64>> = HashMap::new();
    // Tells the members other than `from` that subscribe to `channel`.
    let announce = |members: &HashMap<u64, Member>, from: Option<u64>, channel: &Arc<str>, change: PresenceChange| {
        for (_, member) in members
            .iter()
            .filter(|(id, m)| Some(**id) != from && m.channels.contains(channel))
        {
            member.sink.event(BrokerEvent::Presence {
                channel: channel.clone(),
                change: change.clone(),
            });
        }
    };
    for cmd in rx.iter() {
        match cmd {
            BusCommand::Join(id, sink) => {
                let channels = HashSet::new();
                members.insert(id, Member { sink, channels });
            }
            BusCommand::Leave(id) => {
                members.remove(&id);
                // An instance gone: its users leave, for everyone else.
                for (channel, user) in presence.forget(id) {
                    announce(&members, None, &channel, PresenceChange::Left(user));
                }
            }
            BusCommand::PresenceJoin(from, channel, member, reply) => {
                let first = presence.join(&channel, from, &member);
                if first {
                    announce(&members, Some(from), &channel, PresenceChange::Joined(member));
                }
                let _ = reply.send(first);
            }
            BusCommand::PresenceLeave(from, channel, user, reply) => {
                let last = presence.leave(&channel, from, &user);
                if last {
                    announce(&members, Some(from), &channel, PresenceChange::Left(user));
                }
                let _ = reply.send(last);
            }
            BusCommand::PresenceMembers(channel, limit, reply) => {
                let _ = reply.send(presence.members(&channel, limit));
            }
            BusCommand::Occupancy(from, channel, occupied, reply) => {
                let changed = if occupied {
                    let holders = occupancy.entry(channel).or_default();
                    holders.insert(from) && holders.len() == 1
                } else {
                    let vacated = occupancy
                        .get_mut(&channel)
                        .is_some_and(|h| h.remove(&from) && h.is_empty());
                    if vacated {
                        occupancy.remove(&channel);
                    }
                    vacated
                };
                let _ = reply.send(changed);
            }
            BusCommand::Subscribe(id, channel) => {
                if let Some(member) = members.get_mut(&id) {
                    member.channels.insert(channel);
                }
            }
            BusCommand::Unsubscribe(id, channel) => {
                if let Some(member) = members.get_mut(&id) {
                    member.channels.remove(&channel);
                }
            }
            BusCommand::Control(from, payload) => {
                for (_, member) in members.iter().filter(|(id, _)| **id != from) {
                    member.sink.event(BrokerEvent::Control {
                        payload: payload.clone(),
                    });
                }
            }
            BusCommand::Publish(publish) => {
                let BusPublish {
                    from,
                    channel,
                    payload,
                    options,
                    reply,
                } = publish;
                let published = if options.history.is_some() || options.idempotency.is_some() {
                    history.publish(&channel, &payload, &options)
                } else {
                    Published::default()
                };
                if !published.duplicate {
                    for (_, member) in members
                        .iter()
                        .filter(|(id, m)| **id != from && m.channels.contains(&channel))
                    {
                        member.sink.event(BrokerEvent::Publication {
                            channel: channel.clone(),
                            payload: payload.clone(),
                            position: published.position.clone(),
                        });
                    }
                }
                if let Some(reply) = reply {
                    let _ = reply.send(published);
                }
                let (channels, publications) = history.size();
                size.channels.store(channels as u64, Ordering::Relaxed);
                size.publications.store(publications as u64, Ordering::Relaxed);
            }
            BusCommand::History(channel, query, reply) => {
                let _ = reply.send(history.read(&channel, &query));
            }
        }
    }
}

/// One instance's handle on an [`InProcessBus`], or a broker alone.
pub struct InProcessBroker {
    tx: flume::Sender<BusCommand>,
    id: u64,
    /// A standalone broker: nobody else to reach; the router keeps its history.
    alone: bool,
    size: Arc<StoreSize>,
}

impl InProcessBroker {
    /// A broker with no other instance: the single-gateway default. Plain
    /// operations succeed at once and cost nothing; the history store runs on a
    /// bus thread of its own.
    pub fn standalone() -> Result<InProcessBroker, BrokerError> {
        let bus = InProcessBus::new()?;
        Ok(InProcessBroker {
            tx: bus.tx.clone(),
            id: bus.next_id.fetch_add(1, Ordering::Relaxed),
            alone: true,
            size: bus.size.clone(),
        })
    }

    fn send(&self, cmd: impl FnOnce(u64) -> BusCommand) -> BrokerFuture {
        let sent = if self.alone { Ok(()) } else { self.deliver(cmd(self.id)) };
        Box::pin(std::future::ready(sent))
    }

    /// Sends a command that answers, and waits for the answer.
    fn ask<T: Send + 'static>(&self, cmd: impl FnOnce(u64, flume::Sender<T>) -> BusCommand) -> BrokerCall<T> {
        let (reply, answer) = flume::bounded(1);
        let sent = self.deliver(cmd(self.id, reply));
        Box::pin(async move {
            sent?;
            answer
                .recv_async()
                .await
                .map_err(|_| BrokerError::Failed("in-process bus stopped".into()))
        })
    }

    fn deliver(&self, cmd: BusCommand) -> Result<(), BrokerError> {
        self.tx.send(cmd).map_err(|_| {
            error!("the in-process bus thread is gone");
            BrokerError::Failed("in-process bus stopped".into())
        })
    }
}

impl Drop for InProcessBroker {
    fn drop(&mut self) {
        if !self.alone {
            let _ = self.tx.send(BusCommand::Leave(self.id));
        }
    }
}

impl Broker for InProcessBroker {
    fn subscribe(&self, channel: Arc<str>) -> BrokerFuture {
        self.send(|id| BusCommand::Subscribe(id, channel))
    }

    fn unsubscribe(&self, channel: Arc<str>) -> BrokerFuture {
        self.send(|id| BusCommand::Unsubscribe(id, channel))
    }

    fn publish(&self, channel: Arc<str>, payload: Payload, options: PublishOptions) -> PublishFuture {
        let needs_store = options.history.is_some() || options.idempotency.is_some();
        if !needs_store {
            let sent = self.send(|from| {
                BusCommand::Publish(BusPublish {
                    from,
                    channel,
                    payload,
                    options,
                    reply: None,
                })
            });
            return Box::pin(async move { sent.await.map(|()| Published::default()) });
        }
        self.ask(|from, reply| {
            BusCommand::Publish(BusPublish {
                from,
                channel,
                payload,
                options,
                reply: Some(reply),
            })
        })
    }

    fn history(&self, channel: Arc<str>, query: HistoryQuery) -> HistoryFuture {
        self.ask(|_, reply| BusCommand::History(channel, query, reply))
    }

    fn broadcast_control(&self, payload: Payload) -> BrokerFuture {
        self.send(|id| BusCommand::Control(id, payload))
    }

    fn presence_join(&self, channel: Arc<str>, member: PresenceMember) -> PresenceFuture<bool> {
        self.ask(|id, reply| BusCommand::PresenceJoin(id, channel, member, reply))
    }

    fn presence_leave(&self, channel: Arc<str>, user: Arc<str>) -> PresenceFuture<bool> {
        self.ask(|id, reply| BusCommand::PresenceLeave(id, channel, user, reply))
    }

    fn presence_members(&self, channel: Arc<str>, limit: usize) -> PresenceFuture<Vec<PresenceMember>> {
        self.ask(|_, reply| BusCommand::PresenceMembers(channel, limit, reply))
    }

    fn occupancy(&self, channel: Arc<str>, occupied: bool) -> BrokerCall<bool> {
        self.ask(|id, reply| BusCommand::Occupancy(id, channel, occupied, reply))
    }

    fn forget_instance(&self, _node: Arc<str>) -> BrokerCall<Forgotten> {
        // The instances of one bus live and die with their process: none is ever
        // found dead by another.
        Box::pin(std::future::ready(Ok(Forgotten::default())))
    }

    fn is_ready(&self) -> bool {
        !self.tx.is_disconnected()
    }

    fn history_is_local(&self) -> bool {
        self.alone
    }

    fn history_size(&self) -> Option<(u64, u64)> {
        if self.alone {
            // The router keeps a standalone gateway's history, and its size.
            return None;
        }
        Some((
            self.size.channels.load(Ordering::Relaxed),
            self.size.publications.load(Ordering::Relaxed),
        ))
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}
