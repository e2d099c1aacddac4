//! The one path every publish takes, whoever makes it (the admin API or a client):
//! deliver to this instance's subscribers through the router, and hand the same
//! payload to the broker for every other instance.
//!
//! A publish on a channel with history, or with an idempotency key, goes to the
//! broker first: the store numbers it (or recognises the key), and only then is it
//! delivered here, with its offset. On a standalone gateway the store is the
//! router's own, and numbering and delivery are one step there. Any other publish goes to both at once. The
//! wait for the broker is bounded by the publish timeout; a publish that runs
//! out of it has an unknown outcome, and says so (PROTOCOL.md 14.3).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;

use super::control::UserCommand;
use super::router::{RouterHandle, Source};
use super::ChannelHistory;
use crate::broker::{
    Broker, BrokerError, HistoryPage, HistoryQuery, Position, PresenceChange, PresenceMember, PublishOptions, Published,
};
use crate::payload::Payload;
use crate::pusher::webhooks::Webhooks;

/// A publish that did not (or may not have) reached other instances.
#[derive(Debug, thiserror::Error)]
#[error("{}", describe(*reached, source))]
pub struct PublishError {
    /// Local subscribers it did reach.
    pub reached: usize,
    /// Why the broker did not take it.
    pub source: BrokerError,
}

fn describe(reached: usize, source: &BrokerError) -> String {
    match source {
        BrokerError::Unknown(_) => format!(
            "outcome unknown: delivered to {reached} local subscribers; other instances may or may not have it ({source}); retry with the same idempotency key"
        ),
        _ => format!("delivered to {reached} local subscribers, but not to other instances: {source}"),
    }
}

impl PublishError {
    /// Whether the publication may have gone out (a timeout), rather than surely not.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self.source, BrokerError::Unknown(_))
    }
}

/// What a publish did.
#[derive(Debug, Clone, Default)]
pub struct PublishReport {
    /// Local subscribers reached.
    pub reached: usize,
    /// Its place in the channel's history, on a channel with history.
    pub position: Option<Position>,
    /// Its idempotency key was used before: nothing was published now.
    pub duplicate: bool,
}

impl PublishReport {
    /// The report of a publication a standalone gateway's router numbered:
    /// what its store did, and the local subscribers reached.
    fn numbered((published, reached): (Published, usize)) -> PublishReport {
        PublishReport {
            reached,
            position: published.position,
            duplicate: published.duplicate,
        }
    }
}

/// Publishes to local subscribers and other instances.
#[derive(Clone)]
pub struct Publisher {
    router: RouterHandle,
    broker: Arc<dyn Broker>,
    history: ChannelHistory,
    timeout: Duration,
    /// Pusher apps' webhooks, for what publishers report (client events).
    webhooks: Option<Webhooks>,
}

impl Publisher {
    /// A publisher over this instance's router and broker; a publish waits at
    /// most `timeout` for the broker.
    pub fn new(router: RouterHandle, broker: Arc<dyn Broker>, history: ChannelHistory, timeout: Duration) -> Publisher {
        Publisher {
            router,
            broker,
            history,
            timeout,
            webhooks: None,
        }
    }

    /// The same publisher, reporting to the Pusher apps' webhooks.
    pub fn with_webhooks(mut self, webhooks: Option<Webhooks>) -> Publisher {
        self.webhooks = webhooks;
        self
    }

    /// The Pusher apps' webhooks, where an app has them.
    pub fn webhooks(&self) -> Option<&Webhooks> {
        self.webhooks.as_ref()
    }

    /// Publishes; `key` makes it idempotent (PROTOCOL.md 19.9).
    pub async fn publish(
        &self,
        channel: Arc<str>,
        payload: Payload,
        source: Source,
        key: Option<Arc<str>>,
    ) -> Result<PublishReport, PublishError> {
        let options = self.options(&channel, key);
        if options.history.is_none() && options.idempotency.is_none() {
            let remote = self.bounded(self.broker.publish(channel.clone(), payload.clone(), options));
            let local = self.router.publish_local(channel, payload, None, source);
            let (reached, remote) = tokio::join!(local, remote);
            return remote
                .map(|_| PublishReport {
                    reached,
                    ..PublishReport::default()
                })
                .map_err(|source| PublishError { reached, source });
        }
        if self.broker.history_is_local() {
            // A standalone gateway: the router numbers it in the same step that
            // delivers it.
            return self
                .router
                .publish_numbered_one(channel, payload, options, source)
                .await
                .map(PublishReport::numbered)
                .map_err(|source| PublishError { reached: 0, source });
        }
        let published = self
            .bounded(self.broker.publish(channel.clone(), payload.clone(), options))
            .await
            .map_err(|source| PublishError { reached: 0, source })?;
        if published.duplicate {
            return Ok(PublishReport {
                reached: 0,
                position: published.position,
                duplicate: true,
            });
        }
        let reached = self
            .router
            .publish_local(channel, payload, published.position.clone(), source)
            .await;
        Ok(PublishReport {
            reached,
            position: published.position,
            duplicate: false,
        })
    }

    /// Publishes a batch, each item as [`Publisher::publish`] would, answers in
    /// the batch's order. A batch of channels without history and without
    /// idempotency keys (the common case) goes to the router as one command and
    /// to the broker all at once; any other batch item by item, all in flight.
    pub async fn publish_batch(
        &self,
        items: Vec<(Arc<str>, Payload, Option<Arc<str>>)>,
        source: Source,
    ) -> Vec<Result<PublishReport, PublishError>> {
        let plain = items
            .iter()
            .all(|(channel, _, key)| key.is_none() && self.history.policy(channel).is_none());
        if !plain && self.broker.history_is_local() {
            // A standalone gateway numbers the whole batch in one router command.
            let items = items
                .into_iter()
                .map(|(channel, payload, key)| {
                    let options = self.options(&channel, key);
                    (channel, payload, options)
                })
                .collect();
            return self.publish_numbered(items, source).await;
        }
        if !plain {
            // join_all polls them first in order, so the router and the broker
            // receive them in the batch's order.
            return join_all(
                items
                    .into_iter()
                    .map(|(channel, payload, key)| self.publish(channel, payload, source, key)),
            )
            .await;
        }
        let remote = join_all(items.iter().map(|(channel, payload, _)| {
            self.bounded(
                self.broker
                    .publish(channel.clone(), payload.clone(), PublishOptions::default()),
            )
        }));
        let local = self.router.publish_local_batch(
            items
                .into_iter()
                .map(|(channel, payload, _)| (channel, payload))
                .collect(),
            source,
        );
        let (reached, remote) = tokio::join!(local, remote);
        reached
            .into_iter()
            .zip(remote)
            .map(|(reached, remote)| {
                remote
                    .map(|_| PublishReport {
                        reached,
                        ..PublishReport::default()
                    })
                    .map_err(|source| PublishError { reached, source })
            })
            .collect()
    }

    /// What a publish on `channel` asks of the store.
    fn options(&self, channel: &str, key: Option<Arc<str>>) -> PublishOptions {
        PublishOptions {
            history: self.history.policy(channel).map(|(policy, _)| policy),
            idempotency: key.map(|k| (k, self.history.idempotency_window(channel))),
        }
    }

    /// Publications numbered and delivered by the router of a standalone
    /// gateway, which keeps the history itself; reports in their order.
    async fn publish_numbered(
        &self,
        items: Vec<(Arc<str>, Payload, PublishOptions)>,
        source: Source,
    ) -> Vec<Result<PublishReport, PublishError>> {
        let n = items.len();
        match self.router.publish_numbered(items, source).await {
            Ok(reports) => reports.into_iter().map(|r| Ok(PublishReport::numbered(r))).collect(),
            Err(source) => (0..n)
                .map(|_| {
                    Err(PublishError {
                        reached: 0,
                        source: source.clone(),
                    })
                })
                .collect(),
        }
    }

    /// Reads a channel's history; none when the channel keeps none. `limit` is
    /// capped at the channel's `recover_max`.
    pub async fn history(
        &self,
        channel: Arc<str>,
        since: Option<u64>,
        limit: Option<usize>,
    ) -> Option<Result<(HistoryPage, usize), BrokerError>> {
        let (policy, max) = self.history.policy(&channel)?;
        let limit = limit.unwrap_or(max).min(max);
        let query = HistoryQuery { since, limit, policy };
        let page = if self.broker.history_is_local() {
            self.router.read_history(channel, query).await
        } else {
            self.bounded(self.broker.history(channel, query)).await
        };
        Some(page.map(|page| (page, max)))
    }

    /// Which channels keep history.
    pub fn channel_history(&self) -> &ChannelHistory {
        &self.history
    }

    /// A broker call that gives up after the publish timeout.
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, BrokerError>>,
    ) -> Result<T, BrokerError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(BrokerError::Unknown(format!(
                "no answer within the publish timeout ({} ms)",
                self.timeout.as_millis()
            ))),
        }
    }

    /// One more connection of `member.user` on presence channel `channel`; when
    /// the user became a member, this instance's subscribers are told at once
    /// (other instances hear it from the broker). True when the user joined.
    pub async fn presence_join(&self, channel: Arc<str>, member: PresenceMember) -> Result<bool, BrokerError> {
        let joined = self
            .bounded(self.broker.presence_join(channel.clone(), member.clone()))
            .await?;
        if joined {
            self.router.presence(channel, PresenceChange::Joined(member));
        }
        Ok(joined)
    }

    /// One connection of `user` on presence channel `channel` fewer; when the
    /// user left, this instance's subscribers are told at once.
    pub async fn presence_leave(&self, channel: Arc<str>, user: Arc<str>) -> Result<bool, BrokerError> {
        let left = self
            .bounded(self.broker.presence_leave(channel.clone(), user.clone()))
            .await?;
        if left {
            self.router.presence(channel, PresenceChange::Left(user));
        }
        Ok(left)
    }

    /// A presence channel's members, at most `limit`.
    pub async fn presence_members(&self, channel: Arc<str>, limit: usize) -> Result<Vec<PresenceMember>, BrokerError> {
        self.bounded(self.broker.presence_members(channel, limit)).await
    }

    /// Applies an operator's command here and sends it to every other instance;
    /// returns how many connections it touched on this instance.
    pub async fn control(&self, command: UserCommand) -> Result<usize, PublishError> {
        let remote = match command.to_payload() {
            Ok(payload) => self.broker.broadcast_control(payload),
            Err(e) => Box::pin(std::future::ready(Err(BrokerError::Failed(e.to_string())))),
        };
        let local = self.router.control(command);
        let (reached, remote) = tokio::join!(local, self.bounded(remote));
        remote
            .map(|()| reached)
            .map_err(|source| PublishError { reached, source })
    }

    /// How many connections of this instance subscribe to `channel`.
    pub async fn subscribers(&self, channel: Arc<str>) -> usize {
        self.router.subscribers(channel).await
    }

    /// Whether the broker can take publishes now.
    pub fn broker_ready(&self) -> bool {
        self.broker.is_ready()
    }
}
