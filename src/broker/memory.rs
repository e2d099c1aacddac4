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

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tracing::error;

use super::user_counter::LocalUserCounter;
use super::{Broker, BrokerError, BrokerEvent, BrokerFuture, BrokerSink};
use crate::payload::Payload;

/// What the bus thread is asked to do.
enum BusCommand {
    Join(u64, Arc<dyn BrokerSink>),
    Leave(u64),
    Subscribe(u64, Arc<str>),
    Unsubscribe(u64, Arc<str>),
    Publish(u64, Arc<str>, Payload),
    Control(u64, Payload),
}

/// A pub/sub bus shared by the in-process brokers of one process.
pub struct InProcessBus {
    tx: flume::Sender<BusCommand>,
    next_id: AtomicU64,
    users: Mutex<Option<Arc<LocalUserCounter>>>,
}

impl InProcessBus {
    /// An empty bus, with its thread started. The thread ends when the bus and
    /// every broker on it are dropped.
    pub fn new() -> Result<Arc<InProcessBus>, BrokerError> {
        let (tx, rx) = flume::unbounded();
        std::thread::Builder::new()
            .name("inprocess-bus".into())
            .spawn(move || route(rx))
            .map_err(|e| BrokerError::Failed(format!("cannot start the in-process bus: {e}")))?;
        Ok(Arc::new(InProcessBus {
            tx,
            next_id: AtomicU64::new(0),
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
            tx: Some(self.tx.clone()),
            id,
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
fn route(rx: flume::Receiver<BusCommand>) {
    let mut members: HashMap<u64, Member> = HashMap::new();
    for cmd in rx.iter() {
        match cmd {
            BusCommand::Join(id, sink) => {
                let channels = HashSet::new();
                members.insert(id, Member { sink, channels });
            }
            BusCommand::Leave(id) => {
                members.remove(&id);
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
            BusCommand::Publish(from, channel, payload) => {
                for (_, member) in members
                    .iter()
                    .filter(|(id, m)| **id != from && m.channels.contains(&channel))
                {
                    member.sink.event(BrokerEvent::Publication {
                        channel: channel.clone(),
                        payload: payload.clone(),
                    });
                }
            }
        }
    }
}

/// One instance's handle on an [`InProcessBus`], or a broker alone.
pub struct InProcessBroker {
    /// The bus; none for a standalone broker, which has nobody to reach.
    tx: Option<flume::Sender<BusCommand>>,
    id: u64,
}

impl InProcessBroker {
    /// A broker with no other instance: the single-gateway default. Every
    /// operation succeeds at once and costs nothing.
    pub fn standalone() -> InProcessBroker {
        InProcessBroker { tx: None, id: 0 }
    }

    fn send(&self, cmd: impl FnOnce(u64) -> BusCommand) -> BrokerFuture {
        let sent = match &self.tx {
            None => Ok(()),
            Some(tx) => tx.send(cmd(self.id)).map_err(|_| {
                error!("the in-process bus thread is gone");
                BrokerError::Failed("in-process bus stopped".into())
            }),
        };
        Box::pin(std::future::ready(sent))
    }
}

impl Drop for InProcessBroker {
    fn drop(&mut self) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(BusCommand::Leave(self.id));
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

    fn publish(&self, channel: Arc<str>, payload: Payload) -> BrokerFuture {
        self.send(|id| BusCommand::Publish(id, channel, payload))
    }

    fn broadcast_control(&self, payload: Payload) -> BrokerFuture {
        self.send(|id| BusCommand::Control(id, payload))
    }

    fn is_ready(&self) -> bool {
        match &self.tx {
            None => true,
            Some(tx) => !tx.is_disconnected(),
        }
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}
