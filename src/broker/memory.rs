//! The in-process broker: the default when no Redis is configured. A single
//! gateway has no other instance to reach, so publishing costs nothing; several
//! gateways in one process (tests) can share one [`InProcessBus`] and then behave
//! like instances on a Redis.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::{Broker, BrokerError, BrokerFuture, BrokerSink};
use crate::publication::Payload;

struct Member {
    id: u64,
    sink: BrokerSink,
    channels: HashSet<Arc<str>>,
}

/// A pub/sub bus shared by the in-process brokers of one process.
#[derive(Default)]
pub struct InProcessBus {
    members: RwLock<Vec<Member>>,
    next_id: AtomicU64,
}

impl InProcessBus {
    /// An empty bus.
    pub fn new() -> Arc<InProcessBus> {
        Arc::new(InProcessBus::default())
    }

    /// Joins the bus as a new instance delivering into `sink`.
    pub fn join(self: &Arc<Self>, sink: BrokerSink) -> InProcessBroker {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut members) = self.members.write() {
            members.push(Member {
                id,
                sink,
                channels: HashSet::new(),
            });
        }
        InProcessBroker { bus: self.clone(), id }
    }
}

/// One instance's handle on an [`InProcessBus`].
pub struct InProcessBroker {
    bus: Arc<InProcessBus>,
    id: u64,
}

impl InProcessBroker {
    /// A broker on a bus of its own: the single-gateway default.
    pub fn standalone(sink: BrokerSink) -> InProcessBroker {
        InProcessBus::new().join(sink)
    }

    fn with_member(&self, f: impl FnOnce(&mut Member)) -> Result<(), BrokerError> {
        let mut members = self
            .bus
            .members
            .write()
            .map_err(|_| BrokerError::Failed("in-process bus poisoned".into()))?;
        if let Some(m) = members.iter_mut().find(|m| m.id == self.id) {
            f(m);
        }
        Ok(())
    }
}

impl Drop for InProcessBroker {
    fn drop(&mut self) {
        if let Ok(mut members) = self.bus.members.write() {
            members.retain(|m| m.id != self.id);
        }
    }
}

impl Broker for InProcessBroker {
    fn subscribe(&self, channel: Arc<str>) -> BrokerFuture {
        let r = self.with_member(|m| {
            m.channels.insert(channel);
        });
        Box::pin(std::future::ready(r))
    }

    fn unsubscribe(&self, channel: Arc<str>) -> BrokerFuture {
        let r = self.with_member(|m| {
            m.channels.remove(&channel);
        });
        Box::pin(std::future::ready(r))
    }

    fn publish(&self, channel: Arc<str>, payload: Payload) -> BrokerFuture {
        let r = match self.bus.members.read() {
            Ok(members) => {
                for m in members
                    .iter()
                    .filter(|m| m.id != self.id && m.channels.contains(&channel))
                {
                    m.sink.deliver(channel.clone(), payload.clone());
                }
                Ok(())
            }
            Err(_) => Err(BrokerError::Failed("in-process bus poisoned".into())),
        };
        Box::pin(std::future::ready(r))
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}
