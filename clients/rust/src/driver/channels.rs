//! The channels the application wants, whatever the connection: [`ChannelTable`]
//! holds each channel's subscriptions, whether the current connection has it
//! subscribed on the gateway, and its retry schedule after `unavailable` refusals.

use std::collections::HashMap;

use shardcast_proto::ErrorCode;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::debug;

use crate::backoff::ReconnectPolicy;
use crate::error::{Error, Result};
use crate::event::{ClientEvent, Observers};
use crate::message::Message;

/// One channel the application wants, shared by all its subscriptions.
struct ChannelEntry {
    /// Tells this entry apart from an earlier one of the same channel, so that a late
    /// reply to a dropped entry's subscribe is not taken for this one's.
    generation: u64,
    subscribers: Vec<(u64, mpsc::UnboundedSender<Message>)>,
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
        done: oneshot::Sender<Result<()>>,
    ) -> bool {
        if let Some(entry) = self.entries.get_mut(&channel) {
            entry.subscribers.push((subscription, messages));
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
                subscribers: vec![(subscription, messages)],
                waiters: vec![(subscription, done)],
                acked: false,
                ever_acked: false,
                in_flight: None,
                unavailable: 0,
                retry_at: None,
            },
        );
        true
    }

    /// Removes a subscription; returns true if that was the channel's last one and the
    /// channel is subscribed (or being subscribed) on the gateway, so it has to be
    /// unsubscribed there.
    pub(crate) fn remove(&mut self, channel: &str, subscription: u64) -> bool {
        let Some(entry) = self.entries.get_mut(channel) else {
            return false;
        };
        let before = entry.subscribers.len();
        entry.subscribers.retain(|(id, _)| *id != subscription);
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

    /// Applies the gateway's reply to a subscribe; returns when to retry the channel
    /// if the gateway was `unavailable`.
    pub(crate) fn subscribe_answered(
        &mut self,
        channel: &str,
        generation: u64,
        id: Option<u64>,
        result: Result<(), (ErrorCode, String)>,
        policy: &ReconnectPolicy,
        observers: &Observers,
    ) -> Option<Instant> {
        let entry = self.entries.get_mut(channel)?;
        // The entry may have been dropped and made anew since this request went out.
        if entry.generation != generation || entry.in_flight != id {
            return None;
        }
        entry.in_flight = None;
        match result {
            Ok(()) => {
                let resubscribed = entry.ever_acked;
                entry.acked = true;
                entry.ever_acked = true;
                entry.unavailable = 0;
                for (_, waiter) in entry.waiters.drain(..) {
                    let _ = waiter.send(Ok(()));
                }
                observers.emit(ClientEvent::Subscribed {
                    channel: channel.to_owned(),
                    resubscribed,
                });
                None
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
                    let error = Error::Server {
                        op: "subscribe",
                        code,
                        message: message.clone(),
                        channel: Some(channel.to_owned()),
                    };
                    for (_, waiter) in entry.waiters {
                        let _ = waiter.send(Err(error.clone()));
                    }
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

    /// Channels whose subscribe retry is due at `now`.
    pub(crate) fn due_retries(&self, now: Instant) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(_, e)| !e.acked && e.in_flight.is_none() && e.retry_at.is_some_and(|at| at <= now))
            .map(|(channel, _)| channel.clone())
            .collect()
    }

    /// The earliest scheduled subscribe retry, if any.
    pub(crate) fn next_retry(&self) -> Option<Instant> {
        self.entries.values().filter_map(|e| e.retry_at).min()
    }

    /// Hands a publication to every subscription of its channel.
    pub(crate) fn dispatch(&mut self, message: Message) {
        // A publication can race an unsubscribe; then nobody wants it any more.
        let Some(entry) = self.entries.get_mut(&message.channel) else {
            return;
        };
        entry.subscribers.retain(|(_, sender)| !sender.is_closed());
        if let Some(((_, last), others)) = entry.subscribers.split_last() {
            for (_, sender) in others {
                let _ = sender.send(message.clone());
            }
            let _ = last.send(message);
        }
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
