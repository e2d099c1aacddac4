//! Keeps the subscriber connection subscribed to exactly the channels this instance
//! wants, verifies it with probe publications, and re-subscribes after reconnects.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use tokio::sync::broadcast::error::RecvError;
use tracing::{error, info, warn};

use super::CONTROL_CHANNEL;
use crate::broker::{BrokerEvent, BrokerMetrics, BrokerSink};

/// Which channels a lost subscription concerns, for the gap it announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GapScope {
    /// Every channel (the instance's one Redis).
    All,
    /// The keeper's own channels (one master of a cluster).
    Wanted,
}

/// A change to the set of wanted channels.
pub(super) enum SubscriptionCommand {
    Subscribe(Arc<str>),
    Unsubscribe(Arc<str>),
}

/// Most channels in one SUBSCRIBE, so a re-subscribe of 100k channels is a few
/// hundred commands, not 100k round trips, nor one enormous frame.
const SUBSCRIBE_BATCH: usize = 500;

/// How often the reconciler checks that the subscriptions match the connection.
const RECONCILE_PERIOD: Duration = Duration::from_millis(200);

/// A probe slower than this counts as failed, so the keeper is never stuck long.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// What a probe publication found out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// Our subscriber got it: the subscriptions are in place.
    Received,
    /// Redis delivered it to nobody: our subscriber connection has lost them.
    NotReceived,
    /// No answer (timeout, error): nothing learned.
    Failed,
}

/// Owns the set of wanted channels and keeps the subscriber connection subscribed
/// to exactly that set. One task, so SUBSCRIBE and UNSUBSCRIBE of a channel are
/// never reordered.
///
/// Whether the connection really holds the subscriptions is checked, not assumed:
/// besides the wanted channels it subscribes a private probe channel (its name is
/// outside the protocol's channel charset, so no client can collide with it), and
/// every tick it publishes an empty probe there. PUBLISH answers how many
/// subscribers got it: zero means this connection lost its subscriptions (a
/// reconnect the events have not told us about yet), and everything is
/// re-subscribed before the instance reports ready again.
pub(super) struct SubscriptionKeeper {
    pub(super) subscriber: SubscriberClient,
    pub(super) publisher: Client,
    pub(super) cluster: bool,
    pub(super) prefix: String,
    pub(super) probe_channel: Arc<str>,
    /// Whether this connection carries the control channel.
    pub(super) control: bool,
    pub(super) wanted: HashSet<Arc<str>>,
    /// Every (UN)SUBSCRIBE since the last full re-subscribe went through.
    pub(super) complete: bool,
    /// Set by the reconnect listener: some connection is new, re-subscribe all.
    pub(super) resync: Arc<AtomicBool>,
    /// Whether the subscriptions were ever verified (the first sync is no gap).
    pub(super) synced_once: bool,
    /// The subscriptions were lost since the last verification: what other instances
    /// published meanwhile never reached this one, and subscribers must be told.
    pub(super) lost: bool,
    /// Which channels a gap concerns.
    pub(super) gap: GapScope,
    /// Where the gap is announced.
    pub(super) sink: Arc<dyn BrokerSink>,
    pub(super) in_sync: Arc<AtomicBool>,
    pub(super) metrics: BrokerMetrics,
}

impl SubscriptionKeeper {
    pub(super) async fn run(mut self, rx: flume::Receiver<SubscriptionCommand>) {
        let mut tick = tokio::time::interval(RECONCILE_PERIOD);
        loop {
            tokio::select! {
                cmd = rx.recv_async() => {
                    let Ok(first) = cmd else { return };
                    // Take what else is queued, so a burst becomes a few batched commands.
                    let mut batch = vec![first];
                    batch.extend(rx.drain().take(SUBSCRIBE_BATCH * 4));
                    self.apply(batch).await;
                }
                _ = tick.tick() => self.reconcile().await,
            }
            self.metrics.subscriptions.set(self.wanted.len() as i64);
        }
    }

    /// Checks the subscriptions against Redis and repairs them.
    async fn reconcile(&mut self) {
        if !self.subscriber.is_connected() || !self.publisher.is_connected() {
            self.complete = false;
            self.lost |= self.synced_once;
            self.in_sync.store(false, Ordering::Release);
            return;
        }
        if self.resync.swap(false, Ordering::AcqRel) {
            self.complete = false;
            self.lost |= self.synced_once;
        }
        let probe = if self.complete {
            self.probe().await
        } else {
            Probe::Failed
        };
        if probe == Probe::Received {
            // Verified here when the re-subscription's own probe failed: a loss
            // noted then is announced now, or never.
            self.verified();
            return;
        }
        // Redis answered that nobody got the probe: this connection lost its
        // subscriptions (a reconnect not reported yet). A probe that merely failed or
        // was slow proves nothing, and must not announce a gap.
        self.lost |= self.synced_once && probe == Probe::NotReceived;
        self.in_sync.store(false, Ordering::Release);
        let mut all: Vec<Arc<str>> = self.wanted.iter().cloned().collect();
        if !all.is_empty() {
            info!(channels = all.len(), "subscribing every wanted channel on redis");
        }
        // Control messages are wanted from the start, whatever the clients want.
        if self.control {
            all.push(Arc::from(CONTROL_CHANNEL));
        }
        // The probe channel last: a positive probe then vouches for all the others.
        all.push(self.probe_channel.clone());
        self.complete = true;
        // A new connection may be to a Redis that lost the function library (a
        // restart without persistence): load it now, so applications can FCALL
        // shardcast_publish before any gateway publishes with history.
        if let Err(e) = super::history::load(&self.publisher, self.cluster).await {
            warn!(error = %e, "cannot load the shardcast Redis Functions; publishes with history will retry");
        }
        self.send(all, true).await;
        if self.complete && self.probe().await == Probe::Received {
            self.verified();
        } else {
            self.in_sync.store(false, Ordering::Release);
        }
    }

    /// The subscriptions are verified: ready again, and a loss since the last
    /// verification is announced (re-subscribed first, so every publication after
    /// the gap frame arrives). From now on, losing them is a gap.
    fn verified(&mut self) {
        self.in_sync.store(true, Ordering::Release);
        if std::mem::take(&mut self.lost) {
            match self.gap {
                GapScope::All => self.sink.event(BrokerEvent::Gap),
                GapScope::Wanted => self.sink.event(BrokerEvent::ChannelsGap {
                    channels: self.wanted.iter().cloned().collect(),
                }),
            }
        }
        self.synced_once = true;
    }

    /// Publishes to the probe channel and says whether this instance's subscriber got it.
    async fn probe(&self) -> Probe {
        let topic = format!("{}{}", self.prefix, self.probe_channel);
        let publish = async {
            let receivers: Result<i64, _> = if self.cluster {
                self.publisher.spublish(topic, "").await
            } else {
                self.publisher.publish(topic, "").await
            };
            receivers
        };
        match tokio::time::timeout(PROBE_TIMEOUT, publish).await {
            Ok(Ok(n)) if n >= 1 => Probe::Received,
            Ok(Ok(_)) => Probe::NotReceived,
            _ => Probe::Failed,
        }
    }

    async fn apply(&mut self, batch: Vec<SubscriptionCommand>) {
        // Runs of the same command kind go out together, in order.
        let mut run: Vec<Arc<str>> = Vec::new();
        let mut run_is_subscribe = true;
        for cmd in batch {
            let (channel, subscribe) = match cmd {
                SubscriptionCommand::Subscribe(c) => (c, true),
                SubscriptionCommand::Unsubscribe(c) => (c, false),
            };
            if subscribe != run_is_subscribe && !run.is_empty() {
                self.send(std::mem::take(&mut run), run_is_subscribe).await;
            }
            run_is_subscribe = subscribe;
            if subscribe {
                self.wanted.insert(channel.clone());
            } else {
                self.wanted.remove(&channel);
            }
            run.push(channel);
        }
        if !run.is_empty() {
            self.send(run, run_is_subscribe).await;
        }
    }

    /// Sends (UN)SUBSCRIBE for the channels; a failure leaves them to the reconciler.
    async fn send(&mut self, channels: Vec<Arc<str>>, subscribe: bool) {
        if channels.is_empty() {
            return;
        }
        if !self.subscriber.is_connected() {
            self.complete = false;
            return;
        }
        let topics: Vec<String> = channels.iter().map(|c| format!("{}{}", self.prefix, c)).collect();
        let groups: Vec<Vec<String>> = if self.cluster {
            // SSUBSCRIBE takes channels of one hash slot per command.
            match fred::util::group_by_hash_slot(topics) {
                Ok(groups) => groups
                    .into_values()
                    .map(|keys| keys.into_iter().filter_map(|k| k.into_string()).collect())
                    .collect(),
                Err(e) => {
                    error!(error = %e, "cannot group channels by hash slot");
                    self.complete = false;
                    return;
                }
            }
        } else {
            topics.chunks(SUBSCRIBE_BATCH).map(<[String]>::to_vec).collect()
        };
        for group in groups {
            let sent = match (self.cluster, subscribe) {
                (false, true) => self.subscriber.subscribe(group).await,
                (false, false) => self.subscriber.unsubscribe(group).await,
                (true, true) => self.subscriber.ssubscribe(group).await,
                (true, false) => self.subscriber.sunsubscribe(group).await,
            };
            if let Err(e) = sent {
                warn!(error = %e, subscribe, "redis subscription change failed; the reconciler retries");
                self.complete = false;
                self.in_sync.store(false, Ordering::Release);
                return;
            }
        }
        if subscribe {
            // Subscriptions were in place (publications may have flowed, even before
            // a probe verified them): losing them from now on is a gap.
            self.synced_once = true;
        }
    }
}

/// Counts reconnects and has the keeper re-subscribe: a new connection has no
/// subscriptions (in a cluster, the probe only watches one node's connection).
///
/// `reconnects` must be taken from the client before it connects: a first
/// connection this task never saw would make the real reconnect after it look like
/// a first connection, and a loss would go unannounced.
pub(super) async fn count_reconnects(
    mut reconnects: tokio::sync::broadcast::Receiver<fred::types::config::Server>,
    resync: Arc<AtomicBool>,
    in_sync: Arc<AtomicBool>,
    metrics: BrokerMetrics,
) {
    // The first connection to each server is not a reconnect.
    let mut seen = HashSet::new();
    loop {
        match reconnects.recv().await {
            Ok(server) => {
                // A first connection is the keeper's initial sync, not a loss.
                if !seen.insert(server.to_string()) {
                    resync.store(true, Ordering::Release);
                    in_sync.store(false, Ordering::Release);
                    metrics.reconnects.inc();
                }
                info!(%server, "redis connection (re)established");
            }
            Err(RecvError::Lagged(_)) => resync.store(true, Ordering::Release),
            Err(RecvError::Closed) => return,
        }
    }
}
