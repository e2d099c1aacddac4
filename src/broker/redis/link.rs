//! One link to one Redis server: a command connection, a subscriber connection,
//! the keeper of its subscriptions and the receiver of its messages. A single
//! Redis is one link; a Redis Cluster is one link per master, each connecting,
//! failing and recovering on its own, so a dead master costs only its own slots
//! (fred reconnects a clustered client as a whole, which would stall them all).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::config::ReconnectPolicy;

use super::keeper::{count_reconnects, GapScope, SubscriptionCommand, SubscriptionKeeper};
use super::receiver::receive;
use super::{RedisSettings, COMMAND_TIMEOUT, SUBSCRIBER_BUFFER};
use crate::broker::{BrokerError, BrokerMetrics, BrokerSink};

/// What a link subscribes besides the wanted channels.
pub(super) struct LinkChannels {
    /// A private channel, on this server, whose echo proves the subscriptions.
    pub(super) probe: Arc<str>,
    /// Whether this link carries the control channel.
    pub(super) control: bool,
    /// Channels wanted from the start.
    pub(super) wanted: HashSet<Arc<str>>,
}

/// The connections to one Redis server.
pub(super) struct Link {
    pub(super) publisher: Client,
    pub(super) subscriber: SubscriberClient,
    commands: flume::Sender<SubscriptionCommand>,
    in_sync: Arc<AtomicBool>,
}

impl Link {
    /// Connects to `config`'s server (in the background) and starts its keeper
    /// and receiver; `sharded` uses SSUBSCRIBE (a cluster node).
    pub(super) fn start(
        config: Config,
        settings: &RedisSettings,
        channels: LinkChannels,
        sharded: bool,
        gap: GapScope,
        sink: Arc<dyn BrokerSink>,
        metrics: BrokerMetrics,
    ) -> Result<Link, BrokerError> {
        let fail = |e: fred::error::Error| BrokerError::Failed(format!("redis configuration: {e}"));
        let mut builder = Builder::from_config(config);
        builder
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .with_performance_config(|p| p.default_command_timeout = COMMAND_TIMEOUT)
            .with_connection_config(|c| {
                c.connection_timeout = COMMAND_TIMEOUT;
                c.internal_command_timeout = COMMAND_TIMEOUT;
                // A command is not replayed on a new connection: a publish either
                // went through or is reported as failed.
                c.max_command_attempts = 1;
            });
        let publisher = builder.build().map_err(fail)?;
        // fred's default of 32 pub/sub messages in flight would drop messages (as
        // `Lagged`) under any burst. The capacity is allocated up front for each of
        // the client's event channels, so it is raised on the subscriber only, and
        // only as far as a burst needs: the receiver just hands messages on.
        builder.with_performance_config(|p| p.broadcast_channel_capacity = SUBSCRIBER_BUFFER);
        let subscriber = builder.build_subscriber_client().map_err(fail)?;
        // Listening before connecting: the first connection must be seen as such.
        let reconnects = subscriber.reconnect_rx();
        let messages = subscriber.message_rx();
        publisher.connect();
        subscriber.connect();

        let (commands, rx) = flume::unbounded();
        let in_sync = Arc::new(AtomicBool::new(false));
        tokio::spawn(receive(messages, settings.clone(), sink.clone(), metrics.clone()));
        let resync = Arc::new(AtomicBool::new(false));
        tokio::spawn(count_reconnects(
            reconnects,
            resync.clone(),
            in_sync.clone(),
            metrics.clone(),
        ));
        tokio::spawn(
            SubscriptionKeeper {
                subscriber: subscriber.clone(),
                publisher: publisher.clone(),
                cluster: sharded,
                prefix: settings.prefix.clone(),
                probe_channel: channels.probe,
                control: channels.control,
                wanted: channels.wanted,
                complete: false,
                resync,
                synced_once: false,
                lost: false,
                gap,
                sink,
                in_sync: in_sync.clone(),
                metrics,
            }
            .run(rx),
        );
        Ok(Link {
            publisher,
            subscriber,
            commands,
            in_sync,
        })
    }

    /// Has the keeper subscribe or unsubscribe a channel.
    pub(super) fn want(&self, channel: Arc<str>, wanted: bool) {
        let cmd = if wanted {
            SubscriptionCommand::Subscribe(channel)
        } else {
            SubscriptionCommand::Unsubscribe(channel)
        };
        let _ = self.commands.send(cmd);
    }

    /// Whether both connections are up and the subscriptions verified.
    pub(super) fn is_ready(&self) -> bool {
        let connected = self.publisher.is_connected() && self.subscriber.is_connected();
        if !connected {
            // Whatever the keeper last verified was on a connection that is gone; it
            // must verify again (it may be stuck in a command on the dead one).
            self.in_sync.store(false, Ordering::Release);
        }
        connected && self.in_sync.load(Ordering::Acquire)
    }

    /// Closes both connections (a master that left the cluster).
    pub(super) fn stop(&self) {
        let (publisher, subscriber) = (self.publisher.clone(), self.subscriber.clone());
        tokio::spawn(async move {
            let _ = publisher.quit().await;
            let _ = subscriber.quit().await;
        });
    }
}
