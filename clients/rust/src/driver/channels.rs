//! The channels the application wants, whatever the connection: [`ChannelTable`]
//! holds each channel's subscriptions, whether the current connection has it
//! subscribed on the gateway, its retry schedule after `unavailable` refusals, the
//! refresh schedule of its subscription token (PROTOCOL.md 18.4), and, on a channel
//! with history, the position to recover from after a reconnect and the last one
//! delivered, so that every publication reaches the subscriptions once and in
//! order, or [`ClientEvent::Stale`] says it could not (PROTOCOL.md 19.7).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use shardcast_proto::{ErrorCode, GapReason, StreamPosition, UnsubscribeCode};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::debug;

use super::requests::{AckFields, SubscribeRequest};
use crate::backoff::ReconnectPolicy;
use crate::error::{Error, Result};
use crate::event::{ClientEvent, Observers, StaleSource};
use crate::message::Message;
use crate::token::TokenLifetime;

/// One channel the application wants, shared by all its subscriptions.
struct ChannelEntry {
    /// Tells this entry apart from an earlier one of the same channel, so that a late
    /// reply to a dropped entry's subscribe is not taken for this one's.
    generation: u64,
    subscribers: Vec<Subscriber>,
    /// Subscriptions waiting for the channel's first ack.
    waiters: Vec<(u64, oneshot::Sender<Result<()>>)>,
    /// Acknowledged on the current connection.
    acked: bool,
    /// Acknowledged on some connection before (so the next ack is a re-subscribe).
    ever_acked: bool,
    /// Request id of the subscribe awaiting its reply on the current connection.
    in_flight: Option<u64>,
    /// Consecutive `unavailable` refusals, for the retry backoff.
    unavailable: u32,
    retry_at: Option<Instant>,
    /// The subscription token the current connection holds the channel by, if any.
    token: Option<HeldSubscriptionToken>,
    /// Some subscription asked for the channel's latest publication (a state channel).
    latest: bool,
    /// On a channel with history: where to recover from after a reconnect, the last
    /// publication delivered or, before any, the position of the last subscribe's ack.
    position: Option<StreamPosition>,
    /// The last publication with an offset handed to the subscriptions; older offsets
    /// of its epoch are duplicates.
    delivered: Option<StreamPosition>,
}

/// One subscription's end of its stream.
struct Subscriber {
    id: u64,
    messages: mpsc::UnboundedSender<Message>,
    /// Why the stream ended, when the gateway ended it.
    ended: Arc<OnceLock<Error>>,
}

/// A subscription token in use, and when to replace it with a `sub_refresh`.
struct HeldSubscriptionToken {
    lifetime: TokenLifetime,
    /// `None` while a refresh is under way.
    refresh_at: Option<Instant>,
}

impl ChannelEntry {
    /// Ends every stream of the entry with `error` as its end reason, and fails its waiters with it.
    fn end(self, error: &Error) {
        for subscriber in self.subscribers {
            let _ = subscriber.ended.set(error.clone());
        }
        for (_, waiter) in self.waiters {
            let _ = waiter.send(Err(error.clone()));
        }
    }
}

/// Every channel the application wants, by name.
#[derive(Default)]
pub(crate) struct ChannelTable {
    entries: HashMap<String, ChannelEntry>,
    next_generation: u64,
}

impl ChannelTable {
    /// Adds a subscription to its channel's entry; returns true if the entry is new
    /// (so the channel still has to be subscribed on the gateway).
    pub(crate) fn add(
        &mut self,
        channel: String,
        subscription: u64,
        messages: mpsc::UnboundedSender<Message>,
        ended: Arc<OnceLock<Error>>,
        latest: bool,
        done: oneshot::Sender<Result<()>>,
    ) -> bool {
        let subscriber = Subscriber {
            id: subscription,
            messages,
            ended,
        };
        if let Some(entry) = self.entries.get_mut(&channel) {
            entry.subscribers.push(subscriber);
            entry.latest |= latest;
            if entry.acked {
                // The channel is live: every later publication reaches the new subscription too.
                let _ = done.send(Ok(()));
            } else {
                entry.waiters.push((subscription, done));
            }
            return false;
        }
        self.next_generation += 1;
        self.entries.insert(
            channel,
            ChannelEntry {
                generation: self.next_generation,
                subscribers: vec![subscriber],
                waiters: vec![(subscription, done)],
                acked: false,
                ever_acked: false,
                in_flight: None,
                unavailable: 0,
                retry_at: None,
                token: None,
                latest,
                position: None,
                delivered: None,
            },
        );
        true
    }

    /// The subscribe to send for `channel` (entry `generation`) with `token`: with
    /// `recover` from the channel's position once it has one (so never on the first
    /// subscribe, nor on a channel without history), else with `latest` if asked.
    pub(crate) fn subscribe_request(
        &self,
        channel: String,
        generation: u64,
        token: Option<(String, Instant)>,
    ) -> SubscribeRequest {
        let entry = self.entries.get(&channel);
        let recover = entry.and_then(|e| e.position.clone());
        let latest = recover.is_none() && entry.is_some_and(|e| e.latest);
        SubscribeRequest {
            channel,
            generation,
            token,
            recover,
            latest,
        }
    }

    /// Removes a subscription; returns true if that was the channel's last one and the
    /// channel is subscribed (or being subscribed) on the gateway, so it has to be
    /// unsubscribed there.
    pub(crate) fn remove(&mut self, channel: &str, subscription: u64) -> bool {
        let Some(entry) = self.entries.get_mut(channel) else {
            return false;
        };
        let before = entry.subscribers.len();
        entry.subscribers.retain(|s| s.id != subscription);
        if entry.subscribers.len() == before {
            // Not (or no longer) part of this entry, e.g. refused earlier: nothing to undo.
            return false;
        }
        if let Some(at) = entry.waiters.iter().position(|(id, _)| *id == subscription) {
            let (_, waiter) = entry.waiters.swap_remove(at);
            let _ = waiter.send(Err(Error::Cancelled {
                channel: channel.to_owned(),
            }));
        }
        if !entry.subscribers.is_empty() {
            return false;
        }
        // An unanswered subscribe needs no special care: the gateway answers it
        // first, then the unsubscribe (section 6.1).
        self.entries
            .remove(channel)
            .is_some_and(|entry| entry.acked || entry.in_flight.is_some())
    }

    /// After a lost connection: nothing is subscribed on the gateway any more.
    pub(crate) fn forget_connection(&mut self) {
        for entry in self.entries.values_mut() {
            entry.acked = false;
            entry.in_flight = None;
            entry.unavailable = 0;
            entry.retry_at = None;
            entry.token = None;
        }
    }

    /// Every channel, in the order the application first asked for them.
    pub(crate) fn in_subscribe_order(&self) -> Vec<String> {
        let mut channels: Vec<(u64, String)> = self
            .entries
            .iter()
            .map(|(channel, entry)| (entry.generation, channel.clone()))
            .collect();
        channels.sort_unstable();
        channels.into_iter().map(|(_, channel)| channel).collect()
    }

    /// Records that subscribe request `id` went out for `channel`; returns the entry's
    /// generation, or `None` if the channel is no longer wanted.
    pub(crate) fn subscribe_sent(&mut self, channel: &str, id: u64) -> Option<u64> {
        let entry = self.entries.get_mut(channel)?;
        entry.in_flight = Some(id);
        entry.retry_at = None;
        Some(entry.generation)
    }

    /// Whether subscribe request `id` for `channel` still waits for its subscription
    /// token before it goes out; returns the entry's generation if so.
    pub(crate) fn awaiting_token(&self, channel: &str, id: u64) -> Option<u64> {
        let entry = self.entries.get(channel)?;
        (entry.in_flight == Some(id) && !entry.acked).then_some(entry.generation)
    }

    /// The subscription token for subscribe request `id` could not be had: the
    /// subscription fails with `error`, as the gateway would refuse it without one.
    pub(crate) fn token_failed(&mut self, channel: &str, id: u64, error: Error) {
        if self.awaiting_token(channel, id).is_some() {
            if let Some(entry) = self.entries.remove(channel) {
                entry.end(&error);
            }
        }
    }

    /// Applies the gateway's reply to subscribe `request` (request id `id`);
    /// returns when the channel's timer is next due: a retry if the gateway was
    /// `unavailable`, the token's refresh if it was acknowledged.
    pub(crate) fn subscribe_answered(
        &mut self,
        request: SubscribeRequest,
        id: Option<u64>,
        result: Result<AckFields, (ErrorCode, String)>,
        policy: &ReconnectPolicy,
        observers: &Observers,
    ) -> Option<Instant> {
        let SubscribeRequest {
            channel,
            generation,
            token,
            recover,
            latest,
        } = request;
        let channel = channel.as_str();
        let entry = self.entries.get_mut(channel)?;
        // The entry may have been dropped and made anew since this request went out.
        if entry.generation != generation || entry.in_flight != id {
            return None;
        }
        entry.in_flight = None;
        match result {
            Ok(ack) => {
                let resubscribed = entry.ever_acked;
                entry.acked = true;
                entry.ever_acked = true;
                entry.unavailable = 0;
                let recovered = recover.as_ref().map(|_| ack.recovered == Some(true));
                // Recovered: the publications after `recover` follow, and move the
                // position on as they are delivered. Otherwise the subscription starts
                // at the ack's position; one before it when the latest publication
                // (the top) was asked to follow, so a reconnect before it arrives
                // recovers it.
                if recovered != Some(true) {
                    entry.position = ack.position().map(|mut position| {
                        if latest && position.offset > 0 {
                            position.offset -= 1;
                        }
                        position
                    });
                }
                // The ack of a subscribe has no `expires_at` in version 1: the token's own `exp` says.
                let expires_at = ack.expires_at;
                entry.token = token
                    .and_then(|(token, received_at)| TokenLifetime::of(&token, expires_at, received_at))
                    .map(|lifetime| HeldSubscriptionToken {
                        refresh_at: Some(lifetime.refresh_at(Instant::now(), fastrand::f64())),
                        lifetime,
                    });
                for (_, waiter) in entry.waiters.drain(..) {
                    let _ = waiter.send(Ok(()));
                }
                observers.emit(ClientEvent::Subscribed {
                    channel: channel.to_owned(),
                    resubscribed,
                });
                if let (Some(false), Some(recover)) = (recovered, &recover) {
                    debug!(channel, "could not recover the publications missed while disconnected");
                    observers.emit(ClientEvent::Stale {
                        channel: channel.to_owned(),
                        reason: not_recovered_reason(&ack, recover),
                        source: StaleSource::Recover,
                    });
                }
                entry.token.as_ref().and_then(|t| t.refresh_at)
            }
            Err((ErrorCode::Unavailable, message)) => {
                // The gateway's broker is struggling: retry this channel with backoff (section 12).
                entry.unavailable = entry.unavailable.saturating_add(1);
                let delay = policy.backoff_delay(entry.unavailable, fastrand::f64());
                let at = Instant::now() + delay;
                entry.retry_at = Some(at);
                debug!(channel, message, ?delay, "subscribe unavailable; retrying");
                Some(at)
            }
            Err((code, message)) => {
                // Any other refusal is final for this channel: retrying would be refused again.
                if let Some(entry) = self.entries.remove(channel) {
                    let error = match code {
                        ErrorCode::PermissionDenied | ErrorCode::Unauthorized => Error::PermissionDenied {
                            channel: channel.to_owned(),
                            code,
                            message: message.clone(),
                        },
                        _ => Error::Server {
                            op: "subscribe",
                            code,
                            message: message.clone(),
                            channel: Some(channel.to_owned()),
                        },
                    };
                    entry.end(&error);
                }
                observers.emit(ClientEvent::SubscribeRefused {
                    channel: channel.to_owned(),
                    code,
                    message,
                });
                None
            }
        }
    }

    /// Channels whose subscription token is due for refresh at `now`; their refresh
    /// is marked as under way.
    pub(crate) fn due_token_refreshes(&mut self, now: Instant) -> Vec<String> {
        let mut due = Vec::new();
        for (channel, entry) in &mut self.entries {
            if let Some(token) = entry
                .token
                .as_mut()
                .filter(|t| t.refresh_at.is_some_and(|at| at <= now))
            {
                token.refresh_at = None;
                due.push(channel.clone());
            }
        }
        due
    }

    /// Applies the outcome of a `sub_refresh` (or of fetching its token) for
    /// `channel`: the new token and its ack's `expires_at`, or what went wrong.
    /// Returns when the channel's token is next due for refresh. A failure is
    /// retried, sooner each time, while the old token lasts; past its expiry the
    /// gateway's `unsubscribed` follows.
    pub(crate) fn token_refreshed(
        &mut self,
        channel: &str,
        outcome: Result<(String, Instant, Option<u64>), String>,
        observers: &Observers,
    ) -> Option<Instant> {
        let held = self.entries.get_mut(channel)?.token.as_mut()?;
        let now = Instant::now();
        match outcome {
            Ok((token, received_at, expires_at)) => {
                if let Some(lifetime) = TokenLifetime::of(&token, expires_at, received_at) {
                    held.lifetime = lifetime;
                    held.refresh_at = Some(lifetime.refresh_at(now, fastrand::f64()));
                }
                observers.emit(ClientEvent::TokenRefreshed {
                    channel: Some(channel.to_owned()),
                    expires_at,
                });
            }
            Err(reason) => {
                observers.emit(ClientEvent::TokenRefreshFailed {
                    channel: Some(channel.to_owned()),
                    reason,
                });
                held.refresh_at =
                    (!held.lifetime.remaining(now).is_zero()).then(|| held.lifetime.refresh_at(now, fastrand::f64()));
            }
        }
        held.refresh_at
    }

    /// The gateway ended the channel's subscription (`unsubscribed`): every stream
    /// of the channel ends, with the reason recorded, and the channel is forgotten
    /// (a reconnect does not subscribe it again).
    pub(crate) fn unsubscribed(
        &mut self,
        channel: &str,
        code: UnsubscribeCode,
        message: String,
        observers: &Observers,
    ) {
        if let Some(entry) = self.entries.remove(channel) {
            entry.end(&Error::Unsubscribed {
                channel: channel.to_owned(),
                code,
                message: message.clone(),
            });
        }
        observers.emit(ClientEvent::Unsubscribed {
            channel: channel.to_owned(),
            code,
            message,
        });
    }

    /// Channels whose subscribe retry is due at `now`.
    pub(crate) fn due_retries(&self, now: Instant) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(_, e)| !e.acked && e.in_flight.is_none() && e.retry_at.is_some_and(|at| at <= now))
            .map(|(channel, _)| channel.clone())
            .collect()
    }

    /// The earliest scheduled subscribe retry or token refresh, if any.
    pub(crate) fn next_wakeup(&self) -> Option<Instant> {
        self.entries
            .values()
            .flat_map(|e| [e.retry_at, e.token.as_ref().and_then(|t| t.refresh_at)])
            .flatten()
            .min()
    }

    /// Hands a publication to every subscription of its channel, unless its offset
    /// is at or below the last one delivered in its epoch (a duplicate).
    pub(crate) fn dispatch(&mut self, message: Message) {
        // A publication can race an unsubscribe; then nobody wants it any more.
        let Some(entry) = self.entries.get_mut(&message.channel) else {
            return;
        };
        if let (Some(offset), Some(epoch)) = (message.offset, &message.epoch) {
            if entry
                .delivered
                .as_ref()
                .is_some_and(|last| &last.epoch == epoch && offset <= last.offset)
            {
                debug!(
                    channel = message.channel,
                    offset, "dropping a publication already delivered"
                );
                return;
            }
            let position = StreamPosition {
                offset,
                epoch: epoch.clone(),
            };
            entry.position = Some(position.clone());
            entry.delivered = Some(position);
        }
        entry.subscribers.retain(|s| !s.messages.is_closed());
        if let Some((last, others)) = entry.subscribers.split_last() {
            for subscriber in others {
                let _ = subscriber.messages.send(message.clone());
            }
            let _ = last.messages.send(message);
        }
    }

    /// A `gap` frame: publications of `channel` may have been missed on this connection.
    pub(crate) fn gap(&self, channel: &str, reason: Option<GapReason>, observers: &Observers) {
        observers.emit(ClientEvent::Gap {
            channel: channel.to_owned(),
        });
        if self.entries.contains_key(channel) {
            observers.emit(ClientEvent::Stale {
                channel: channel.to_owned(),
                reason: reason.unwrap_or(GapReason::Unknown),
                source: StaleSource::Gap,
            });
        }
    }

    /// Whether the application wants `channel` (a `join` or `leave` can race an
    /// unsubscribe, like a publication, and then nobody wants it).
    pub(crate) fn wants(&self, channel: &str) -> bool {
        self.entries.contains_key(channel)
    }

    /// Fails every subscription still waiting with `error` and ends every stream.
    pub(crate) fn close_all(&mut self, error: &Error) {
        for (_, entry) in self.entries.drain() {
            for (_, waiter) in entry.waiters {
                let _ = waiter.send(Err(error.clone()));
            }
            // Dropping the entry drops the senders, which ends the subscription streams.
        }
    }
}

/// Why a subscribe with `recover` was answered `recovered: false`, which the ack
/// itself does not say.
fn not_recovered_reason(ack: &AckFields, recover: &StreamPosition) -> GapReason {
    match ack.position() {
        None => GapReason::NoHistory,
        Some(position) if position.epoch == recover.epoch => GapReason::TooFar,
        Some(_) => GapReason::EpochChanged,
    }
}
