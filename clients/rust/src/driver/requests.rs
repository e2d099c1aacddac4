//! Requests that wait for the gateway's reply: request ids ([`RequestIds`]), what
//! each request in flight on a connection waits for ([`Pending`]), what a
//! successful reply carries ([`Reply`]), and the table that matches replies to
//! them by id ([`RequestTable`]).

use std::collections::HashMap;

use shardcast_proto::{ErrorCode, StreamPosition};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::history::History;
use crate::presence::Presence;

/// The fields of an `ack` (all absent in a `pong`).
#[derive(Debug, Default)]
pub(crate) struct AckFields {
    pub expires_at: Option<u64>,
    pub offset: Option<u64>,
    pub epoch: Option<String>,
    pub recovered: Option<bool>,
    pub duplicate: Option<bool>,
}

impl AckFields {
    /// The position the ack names, where it names one.
    pub(crate) fn position(&self) -> Option<StreamPosition> {
        Some(StreamPosition {
            offset: self.offset?,
            epoch: self.epoch.clone()?,
        })
    }
}

/// What a successful reply carried.
#[derive(Debug)]
pub(crate) enum Reply {
    /// An `ack`, or a `pong` (with no fields).
    Ack(AckFields),
    /// A `history` frame.
    History(History),
    /// A `presence` frame.
    Presence(Presence),
}

impl Reply {
    /// The ack's `expires_at` (for `refresh` and `sub_refresh`).
    pub(crate) fn expires_at(&self) -> Option<u64> {
        match self {
            Reply::Ack(ack) => ack.expires_at,
            Reply::History(_) | Reply::Presence(_) => None,
        }
    }
}

/// `pending` entries kept before abandoned ones are pruned.
const PRUNE_FLOOR: usize = 256;

/// Hands out request ids; they outlive a connection.
pub(crate) struct RequestIds {
    next: u64,
}

impl Default for RequestIds {
    fn default() -> Self {
        RequestIds { next: 1 }
    }
}

impl RequestIds {
    pub(crate) fn take(&mut self) -> u64 {
        let id = self.next;
        // Ids only need to be distinct among requests in flight.
        self.next = self.next.checked_add(1).unwrap_or(1);
        id
    }
}

/// A subscribe on the current connection that waits for its reply.
pub(crate) struct SubscribeRequest {
    pub channel: String,
    /// The generation of the channel's entry it was sent for.
    pub generation: u64,
    /// The subscription token it was sent with, and when that arrived.
    pub token: Option<(String, Instant)>,
    /// The position it asks to recover from (PROTOCOL.md 19.3).
    pub recover: Option<StreamPosition>,
    /// Whether it asks for the channel's latest publication.
    pub latest: bool,
}

/// A request on the current connection that waits for its reply.
pub(crate) enum Pending {
    Subscribe(SubscribeRequest),
    /// A `refresh` of the connection's token with this token, received at that time.
    Refresh {
        token: String,
        received_at: Instant,
    },
    /// A `sub_refresh` of a channel's subscription token.
    SubRefresh {
        channel: String,
        token: String,
        received_at: Instant,
    },
    Unsubscribe {
        done: Option<oneshot::Sender<Result<()>>>,
    },
    Request {
        op: &'static str,
        channel: Option<String>,
        done: oneshot::Sender<Result<Reply>>,
    },
}

impl Pending {
    /// Whether nobody waits for the reply any more (the caller timed out or gave up).
    fn abandoned(&self) -> bool {
        match self {
            Pending::Request { done, .. } => done.is_closed(),
            Pending::Unsubscribe { done } => done.as_ref().map_or(true, |d| d.is_closed()),
            Pending::Subscribe(_) | Pending::Refresh { .. } | Pending::SubRefresh { .. } => false,
        }
    }

    /// Answers the caller of an unsubscribe, publish, ping, history or presence with the
    /// gateway's reply. The replies to a subscribe and to the token refreshes belong
    /// to the driver, so they are not answered here.
    pub(crate) fn answer(self, result: Result<Reply, (ErrorCode, String)>) {
        match self {
            Pending::Unsubscribe { done } => {
                let result = match result {
                    // Gone on the gateway already: the goal is reached either way.
                    Ok(_) | Err((ErrorCode::NotSubscribed, _)) => Ok(()),
                    Err((code, message)) => Err(Error::Server {
                        op: "unsubscribe",
                        code,
                        message,
                        channel: None,
                    }),
                };
                if let Some(done) = done {
                    let _ = done.send(result);
                }
            }
            Pending::Request { op, channel, done } => {
                let _ = done.send(result.map_err(|(code, message)| Error::from_reply(op, code, message, channel)));
            }
            Pending::Subscribe(_) | Pending::Refresh { .. } | Pending::SubRefresh { .. } => {}
        }
    }
}

/// How a connection ended, for the requests it leaves unanswered.
pub(crate) enum Unanswered<'a> {
    /// The connection was lost with this close code and reason.
    Lost { code: u16, reason: &'a str },
    /// The application closed the client.
    Closed,
}

/// The requests in flight on one connection, by id.
pub(crate) struct RequestTable {
    pending: HashMap<u64, Pending>,
    /// Abandoned entries are pruned once `pending` grows past this.
    prune_at: usize,
}

impl Default for RequestTable {
    fn default() -> Self {
        RequestTable {
            pending: HashMap::new(),
            prune_at: PRUNE_FLOOR,
        }
    }
}

impl RequestTable {
    pub(crate) fn track(&mut self, id: u64, pending: Pending) {
        if self.pending.len() >= self.prune_at {
            self.pending.retain(|_, p| !p.abandoned());
            // Doubling keeps pruning amortised when every entry is still wanted.
            self.prune_at = (self.pending.len() * 2).max(PRUNE_FLOOR);
        }
        self.pending.insert(id, pending);
    }

    /// The request a reply with this id answers, if anyone still waits for it.
    pub(crate) fn take(&mut self, id: Option<u64>) -> Option<Pending> {
        id.and_then(|id| self.pending.remove(&id))
    }

    /// Ends every request still unanswered when the connection ends: they get no
    /// reply any more (section 5).
    pub(crate) fn end_all(&mut self, how: Unanswered<'_>) {
        for (_, pending) in self.pending.drain() {
            let lost = |op| match how {
                Unanswered::Lost { code, reason } => Error::ConnectionLost {
                    op,
                    code,
                    reason: reason.to_owned(),
                },
                Unanswered::Closed => Error::Closed {
                    code: None,
                    reason: "client closed".to_owned(),
                },
            };
            match pending {
                Pending::Request { op, done, .. } => {
                    let _ = done.send(Err(lost(op)));
                }
                // An unsubscribe is complete once the connection is gone.
                Pending::Unsubscribe { done: Some(done) } => {
                    let _ = done.send(Ok(()));
                }
                Pending::Unsubscribe { done: None }
                | Pending::Subscribe(_)
                | Pending::Refresh { .. }
                | Pending::SubRefresh { .. } => {}
            }
        }
    }
}
