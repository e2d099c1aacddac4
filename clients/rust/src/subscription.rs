//! The application's side of one subscription: the [`Subscription`] stream of
//! [`Message`]s, which ends the subscription when it is dropped.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::sync::{mpsc, oneshot};

use crate::driver::Command;
use crate::error::{Error, Result};
use crate::message::Message;

/// The publications of one channel, as a [`Stream`] of [`Message`]s.
///
/// Returned by [`Client::subscribe`](crate::Client::subscribe) once the gateway
/// acknowledged the subscription, so every publication accepted after that point
/// arrives here. After a reconnect the client subscribes the channel again by
/// itself, which [`ClientEvent::Subscribed`](crate::ClientEvent) with
/// `resubscribed: true` marks. On a channel without history, publications made
/// while it was disconnected are lost (the protocol delivers at most once); on a
/// channel with history they are recovered and arrive here first, in order, each
/// once, or [`ClientEvent::Stale`](crate::ClientEvent::Stale) says they could not be.
///
/// Messages are buffered until read: a subscription that is kept but never read
/// grows without bound, so drop the ones you no longer read. Dropping it
/// unsubscribes (on the gateway too, once no other subscription holds the channel).
///
/// The stream ends when the client stops for good (closed by the application or
/// by a close code that forbids reconnecting), when the gateway refuses the
/// channel on a re-subscribe, or when the gateway ends the subscription
/// (`unsubscribed`: its subscription token expired or a permission was withdrawn).
/// [`end_reason`](Self::end_reason) then says which.
#[derive(Debug)]
pub struct Subscription {
    channel: String,
    id: u64,
    messages: mpsc::UnboundedReceiver<Message>,
    commands: mpsc::UnboundedSender<Command>,
    /// Why the gateway ended the stream, set by the driver before it ends it.
    ended: Arc<OnceLock<Error>>,
    /// Set by [`Subscription::unsubscribe`], so that `Drop` does not ask twice.
    released: bool,
}

impl Subscription {
    pub(crate) fn new(
        channel: String,
        id: u64,
        messages: mpsc::UnboundedReceiver<Message>,
        commands: mpsc::UnboundedSender<Command>,
        ended: Arc<OnceLock<Error>>,
    ) -> Self {
        Subscription {
            channel,
            id,
            messages,
            commands,
            ended,
            released: false,
        }
    }

    /// The channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Why the gateway ended this subscription, once it has: [`Error::Unsubscribed`]
    /// (the `unsubscribed` frame), or the refusal of a re-subscribe after a reconnect
    /// ([`Error::PermissionDenied`], [`Error::Server`]). `None` while it runs, and
    /// when the stream ended because the client stopped
    /// ([`Client::stop_reason`](crate::Client::stop_reason) says why then).
    pub fn end_reason(&self) -> Option<&Error> {
        self.ended.get()
    }

    /// The next message; `None` once the stream has ended (see the type's docs).
    pub async fn recv(&mut self) -> Option<Message> {
        self.messages.recv().await
    }

    /// Ends this subscription and waits until the gateway acknowledged the
    /// unsubscribe (at once when other subscriptions still hold the channel or
    /// the client is disconnected). No message of the channel arrives here after this.
    pub async fn unsubscribe(mut self) -> Result<()> {
        self.released = true;
        let (done, reply) = oneshot::channel();
        let command = Command::Unsubscribe {
            channel: self.channel.clone(),
            subscription: self.id,
            done: Some(done),
        };
        if self.commands.send(command).is_err() {
            // The client has stopped, which unsubscribed everything.
            return Ok(());
        }
        reply.await.unwrap_or(Ok(()))
    }
}

impl Stream for Subscription {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.messages.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if !self.released {
            // Fails only when the client has stopped, which unsubscribed everything.
            let _ = self.commands.send(Command::Unsubscribe {
                channel: std::mem::take(&mut self.channel),
                subscription: self.id,
                done: None,
            });
        }
    }
}
