//! The router: the one place that knows which shards want which channel.
//!
//! It runs as a single task, so its channel table needs no lock. Shards tell it when
//! a channel gains its first or loses its last local subscriber; it keeps the
//! broker subscribed to exactly the channels some shard wants (one broker
//! subscription per channel per instance, whatever the subscriber count), numbers
//! each channel's publications, and sends each publication only to the shards that
//! want it.

use std::collections::HashMap;
use std::sync::Arc;

use shardcast_proto::ErrorCode;
use tracing::{debug, warn};

use super::control::UserCommand;
use super::publication::{DeliveryReport, Publication};
use crate::broker::{Broker, BrokerError, BrokerEvent, BrokerSink};
use crate::metrics::Metrics;
use crate::payload::Payload;

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
    },
    /// Publications may have been missed on every channel: tell every subscriber.
    Gap,
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
        /// Who published it.
        source: Source,
        /// Gets the number of local subscribers reached, if the publisher waits for it.
        reply: Option<flume::Sender<usize>>,
    },
    /// The broker may have lost publications of every channel.
    Gap,
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

    /// Delivers a publication locally and waits for the number of subscribers reached.
    pub async fn publish_local(&self, channel: Arc<str>, payload: Payload, source: Source) -> usize {
        let (reply, done) = flume::bounded(1);
        let cmd = RouterCommand::Publish {
            channel,
            payload,
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
            BrokerEvent::Publication { channel, payload } => RouterCommand::Publish {
                channel,
                payload,
                source: Source::Broker,
                reply: None,
            },
            BrokerEvent::Gap => RouterCommand::Gap,
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
    Subscribed,
}

struct Route {
    /// Bit i set: shard i has subscribers.
    shards: u64,
    /// Shards whose subscribers wait for the broker subscription.
    waiting: u64,
    broker: BrokerState,
    seq: u64,
}

/// Runs the router until every handle is dropped.
pub async fn run<S: ShardMailbox>(
    rx: flume::Receiver<RouterCommand>,
    me: RouterHandle,
    shards: Vec<S>,
    broker: Arc<dyn Broker>,
    metrics: Arc<Metrics>,
) {
    let mut routes: HashMap<Arc<str>, Route> = HashMap::new();
    // Resolved once: a labelled lookup per publication would take the metric's lock.
    let published = [Source::Api, Source::Client, Source::Broker]
        .map(|s| metrics.messages_published.with_label_values(&[s.label()]));
    while let Ok(cmd) = rx.recv_async().await {
        match cmd {
            RouterCommand::Interest {
                shard,
                channel,
                active: true,
            } => {
                let bit = 1u64 << shard;
                match routes.get_mut(&channel) {
                    Some(route) => {
                        route.shards |= bit;
                        match route.broker {
                            BrokerState::Subscribed => confirm(&shards[shard], channel, Ok(())),
                            BrokerState::Subscribing => route.waiting |= bit,
                        }
                    }
                    None => {
                        routes.insert(
                            channel.clone(),
                            Route {
                                shards: bit,
                                waiting: bit,
                                broker: BrokerState::Subscribing,
                                seq: 0,
                            },
                        );
                        let fut = broker.subscribe(channel.clone());
                        let me = me.clone();
                        tokio::spawn(async move {
                            let result = fut.await;
                            let _ = me.tx.send(RouterCommand::BrokerSubscribed { channel, result });
                        });
                    }
                }
            }
            RouterCommand::Interest {
                shard,
                channel,
                active: false,
            } => {
                let bit = 1u64 << shard;
                if let Some(route) = routes.get_mut(&channel) {
                    route.shards &= !bit;
                    route.waiting &= !bit;
                    if route.shards == 0 {
                        routes.remove(&channel);
                        let fut = broker.unsubscribe(channel.clone());
                        tokio::spawn(async move {
                            if let Err(e) = fut.await {
                                warn!(%channel, error = %e, "broker unsubscribe failed");
                            }
                        });
                    }
                }
            }
            RouterCommand::Gap => {
                warn!(
                    channels = routes.len(),
                    "telling subscribers that publications may have been missed"
                );
                for shard in &shards {
                    shard.send_mail(ShardMail::Gap);
                }
            }
            RouterCommand::Control { command, reply } => {
                let command = Arc::new(command);
                let report = reply.map(|r| Arc::new(DeliveryReport::new(shards.len(), r)));
                for shard in &shards {
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
            RouterCommand::BrokerSubscribed { channel, result } => {
                let Some(route) = routes.get_mut(&channel) else {
                    continue;
                };
                if !matches!(route.broker, BrokerState::Subscribing) {
                    continue;
                }
                let waiting = std::mem::take(&mut route.waiting);
                match &result {
                    Ok(()) => route.broker = BrokerState::Subscribed,
                    Err(e) => {
                        warn!(%channel, error = %e, "broker subscribe failed");
                        // The waiting shards drop these subscribers, so the route goes too;
                        // a later subscribe starts over.
                        route.shards &= !waiting;
                        if route.shards == 0 {
                            routes.remove(&channel);
                        }
                    }
                }
                let result = result.map_err(|_| ErrorCode::Unavailable);
                for shard in bits(waiting) {
                    confirm(&shards[shard], channel.clone(), result);
                }
            }
            RouterCommand::Publish {
                channel,
                payload,
                source,
                reply,
            } => {
                published[source as usize].inc();
                // A channel still waiting for its broker subscription has no
                // acknowledged subscriber yet: nobody to deliver to, no number used.
                let Some(route) = routes
                    .get_mut(&channel)
                    .filter(|r| matches!(r.broker, BrokerState::Subscribed))
                else {
                    if let Some(reply) = reply {
                        let _ = reply.try_send(0);
                    }
                    continue;
                };
                route.seq += 1;
                let targets = route.shards;
                let report = reply.map(|r| DeliveryReport::new(targets.count_ones() as usize, r));
                let publication = Arc::new(Publication::new(channel, route.seq, payload, report));
                for shard in bits(targets) {
                    if !shards[shard].send_mail(ShardMail::Publication(publication.clone())) {
                        debug!(shard, "shard gone; publication not delivered there");
                        publication.shard_done(0);
                    }
                }
            }
        }
        metrics.channels.set(routes.len() as i64);
    }
}

fn confirm(shard: &impl ShardMailbox, channel: Arc<str>, result: Result<(), ErrorCode>) {
    shard.send_mail(ShardMail::InterestConfirmed { channel, result });
}

fn bits(mask: u64) -> impl Iterator<Item = usize> {
    (0..64).filter(move |i| mask & (1u64 << i) != 0)
}
