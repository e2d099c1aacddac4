//! One WebSocket connection as its shard keeps it: the socket, the bounded queue
//! of frames it has not taken yet, and the little state it needs between reads.
//!
//! The record is kept small because an idle gateway is mostly these records: no
//! read buffer (reads go into the shard's scratch buffer; only an incomplete frame
//! is kept, and only until it completes), no write buffer (a frame is written
//! straight from the publication's shared bytes; only what the socket would not take
//! is queued, as a reference to those same bytes), no timer (the shard sweeps all
//! its connections for pings and timeouts).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use shardcast_proto::Encoding;
use tokio::net::TcpStream;

use super::channel_table::SubscriptionKey;
use crate::auth::Identity;
use crate::pusher::protocol::code as pusher_code;
use crate::ws::frame::{close_frame, Fragments};

/// The most frames one vectored write takes.
const MAX_SLICES: usize = 64;

/// Why a connection ended, as reported in `shardcast_disconnections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disconnect {
    /// The client sent a close frame.
    ClientClose,
    /// The socket ended without a close frame.
    Eof,
    /// A socket error.
    IoError,
    /// Its outbound queue overflowed.
    SlowConsumer,
    /// Nothing received within the idle timeout.
    IdleTimeout,
    /// It broke RFC 6455 framing.
    ProtocolError,
    /// It sent a message above the limit.
    MessageTooBig,
    /// It sent a text message that is not UTF-8.
    InvalidPayload,
    /// The gateway is draining.
    GoingAway,
    /// It did not answer our close frame in time.
    CloseTimeout,
    /// No token where one is required, or its token (or refresh) was refused.
    Unauthorized,
    /// Its token expired without a refresh.
    TokenExpired,
    /// An operator disconnected its user.
    Operator,
    /// Its user already held the maximum number of connections.
    UserLimit,
}

impl Disconnect {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Disconnect::ClientClose => "client_close",
            Disconnect::Eof => "eof",
            Disconnect::IoError => "io_error",
            Disconnect::SlowConsumer => "slow_consumer",
            Disconnect::IdleTimeout => "idle_timeout",
            Disconnect::ProtocolError => "protocol_error",
            Disconnect::MessageTooBig => "message_too_big",
            Disconnect::InvalidPayload => "invalid_payload",
            Disconnect::GoingAway => "going_away",
            Disconnect::CloseTimeout => "close_timeout",
            Disconnect::Unauthorized => "unauthorized",
            Disconnect::TokenExpired => "token_expired",
            Disconnect::Operator => "operator",
            Disconnect::UserLimit => "too_many_connections",
        }
    }
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Open for requests and publications.
    Open,
    /// Our close frame is queued or sent; waiting for the flush and the client's reply
    /// until `deadline` (shard clock, in deciseconds).
    Closing {
        /// When to give up on the client (shard clock, deciseconds).
        deadline: u32,
        /// Whether the client's close frame arrived.
        reply_received: bool,
    },
    /// Done: the task removes it at its next poll.
    Dead,
}

/// The outcome of queuing a frame for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Written to the socket at once.
    Written,
    /// Queued (in part or whole) until the socket can take it.
    Queued,
    /// Queued, and the queue is now over its limit: the connection must go.
    Overflow,
    /// The connection is closing or dead; nothing was sent.
    Closed,
}

/// Bytes of a read kept between two reads: an incomplete frame and a fragmented message.
#[derive(Debug, Default)]
pub struct ReadState {
    /// The start of a frame whose rest has not arrived.
    pub pending: Vec<u8>,
    /// A fragmented message in progress.
    pub fragments: Option<Box<Fragments>>,
}

/// A shard's record of one WebSocket connection.
#[derive(Debug)]
pub struct Connection {
    /// Unique within the shard (slab keys are reused; ids are not).
    pub id: u64,
    stream: TcpStream,
    /// The encoding chosen at the upgrade.
    pub encoding: Encoding,
    /// Where it is in its life.
    pub phase: Phase,
    /// Why it is closing, once it is.
    pub disconnect: Option<Disconnect>,
    out: VecDeque<Bytes>,
    out_bytes: usize,
    waker: Option<Waker>,
    /// Partial input, present only while a frame or message is incomplete.
    pub read: Option<Box<ReadState>>,
    /// Its subscriptions.
    pub subs: Vec<SubscriptionKey>,
    /// Shard clock (deciseconds) of the last byte received.
    pub last_seen: u32,
    /// Small yes/no facts, packed in one byte (see [`ConnectionFlags`]).
    pub flags: ConnectionFlags,
    /// permessage-deflate: 0 if not negotiated, else the largest window (8 to 15
    /// bits) the gateway may compress with for this client.
    pub deflate_window: u8,
    /// The identity, for a connection that authenticated (boxed: an anonymous
    /// connection pays one pointer).
    pub auth: Option<Box<ConnectionAuth>>,
}

/// Yes/no facts about a connection, one bit each: the record of an idle connection
/// is most of an idle gateway's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnectionFlags(u8);

impl ConnectionFlags {
    /// A keep-alive ping went out since the last byte received.
    pub const PINGED: u8 = 1;
    /// An echo connection (conformance testing): messages come back as sent.
    pub const ECHO: u8 = 2;
    /// The `welcome` went out (not yet, while a required `connect` is awaited).
    pub const GREETED: u8 = 4;
    /// The client's first frame was handled (`connect` must be it).
    pub const FIRST_FRAME_DONE: u8 = 8;
    /// Frames were gathered for it during a busy turn and it is on the shard's
    /// cork list, waiting for the turn's one write (see `super::cork`).
    pub const CORKED: u8 = 16;
    /// The frame at the front of the queue is partly written already.
    pub const FRONT_PARTIAL: u8 = 32;
    /// It speaks the Pusher Channels protocol (PROTOCOL.md 20), not the native
    /// one; what else it carries is in its shard's `PusherSockets`, so the record
    /// of every connection stays the same size.
    pub const PUSHER: u8 = 64;

    /// Whether `bit` is set.
    pub fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }

    /// Sets or clears `bit`.
    pub fn set(&mut self, bit: u8, on: bool) {
        if on {
            self.0 |= bit;
        } else {
            self.0 &= !bit;
        }
    }

    /// Whether the `welcome` went out.
    pub fn greeted(self) -> bool {
        self.has(Self::GREETED)
    }
}

/// What an authenticated connection carries.
#[derive(Debug)]
pub struct ConnectionAuth {
    /// Who it is.
    pub identity: Identity,
    /// Whether it authenticated with an `Authorization` header on the upgrade.
    pub by_header: bool,
    /// Subscriptions held by subscription token, with the token's expiry (Unix seconds).
    pub sub_tokens: Vec<(SubscriptionKey, u64)>,
    /// Whether it holds a place in the per-user connection count (given back on close).
    pub counted: bool,
    /// Start (shard clock) of the current one-second subscribe window, and the
    /// subscribes in it (kept here, where only connections that need it pay: a
    /// subscribe rate is configured, or the connection awaits its `connect`, when
    /// the start is when it opened).
    pub window: (u32, u16),
}

impl Connection {
    /// A new open connection.
    pub fn new(id: u64, stream: TcpStream, encoding: Encoding, now: u32) -> Connection {
        Connection {
            id,
            stream,
            encoding,
            phase: Phase::Open,
            disconnect: None,
            out: VecDeque::new(),
            out_bytes: 0,
            waker: None,
            read: None,
            subs: Vec::new(),
            last_seen: now,
            flags: ConnectionFlags(ConnectionFlags::GREETED),
            deflate_window: 0,
            auth: None,
        }
    }

    /// The connection's auth record, created (anonymous) if it has none yet.
    pub fn auth_mut(&mut self) -> &mut ConnectionAuth {
        self.auth.get_or_insert_with(|| {
            Box::new(ConnectionAuth {
                identity: crate::auth::ANONYMOUS.clone(),
                by_header: false,
                sub_tokens: Vec::new(),
                counted: false,
                window: (0, 0),
            })
        })
    }

    /// Sends a frame: straight to the socket when nothing is queued, else behind the
    /// queue. `limit` is the most bytes the queue may hold.
    pub fn send(&mut self, frame: &Bytes, limit: usize) -> Sent {
        if self.phase != Phase::Open {
            return Sent::Closed;
        }
        if !self.out.is_empty() {
            self.push(frame.clone());
            return if self.out_bytes > limit {
                Sent::Overflow
            } else {
                Sent::Queued
            };
        }
        match self.stream.try_write(frame) {
            Ok(n) if n == frame.len() => Sent::Written,
            Ok(n) => {
                self.push(frame.slice(n..));
                self.flags.set(ConnectionFlags::FRONT_PARTIAL, true);
                self.wake();
                Sent::Queued
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.push(frame.clone());
                self.wake();
                Sent::Queued
            }
            Err(_) => {
                self.die(Disconnect::IoError);
                Sent::Closed
            }
        }
    }

    /// Queues a frame without writing it: the shard is gathering a busy turn's
    /// deliveries and writes everything queued here at once at the end of the turn
    /// ([`Connection::flush_corked`]). Returns the outcome under the queue limit
    /// `limit`, and whether the connection was newly corked (the caller lists it
    /// for that write).
    ///
    /// Gathered bytes are not a backlog: once they reach `write_bytes` or `limit`,
    /// they are written now, so the slow-consumer limit still counts only what the
    /// socket would not take. A connection whose socket is full keeps its backlog
    /// for its task, which writes it when the socket can take more.
    pub fn send_corked(&mut self, frame: &Bytes, limit: usize, write_bytes: usize) -> (Sent, bool) {
        if self.phase != Phase::Open {
            return (Sent::Closed, false);
        }
        let newly = self.out.is_empty() && !self.flags.has(ConnectionFlags::CORKED);
        if newly {
            self.flags.set(ConnectionFlags::CORKED, true);
        }
        self.push(frame.clone());
        if self.flags.has(ConnectionFlags::CORKED) && self.out_bytes >= limit.min(write_bytes) {
            match self.write_some(write_bytes) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    self.die(Disconnect::IoError);
                    return (Sent::Closed, newly);
                }
            }
            if !self.out.is_empty() {
                // The socket is full: from here on this is a backlog, its task's to write.
                self.flags.set(ConnectionFlags::CORKED, false);
                self.wake();
            }
        }
        let sent = if self.out_bytes > limit {
            Sent::Overflow
        } else {
            Sent::Queued
        };
        (sent, newly)
    }

    /// The end of a busy turn for a connection listed by [`Connection::send_corked`]:
    /// one vectored write of what it gathered, at most `max_bytes`. What the socket
    /// does not take stays queued for the connection's task, which is woken to write
    /// it when the socket can take more. Returns the frames the write completed.
    pub fn flush_corked(&mut self, max_bytes: usize) -> usize {
        if !self.flags.has(ConnectionFlags::CORKED) {
            // Its socket filled during the turn; its task has the backlog.
            return 0;
        }
        self.flags.set(ConnectionFlags::CORKED, false);
        if self.phase == Phase::Dead {
            return 0;
        }
        let before = self.out.len();
        if before > 0 {
            match self.write_some(max_bytes) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    self.die(Disconnect::IoError);
                    return 0;
                }
            }
        }
        let done = before - self.out.len();
        if self.out.is_empty() {
            // An idle connection holds no queue memory.
            self.out = VecDeque::new();
            if matches!(self.phase, Phase::Closing { .. }) {
                self.wake();
            }
        } else {
            self.wake();
        }
        done
    }

    /// One vectored write of the front of the queue, at most `max_bytes` (a frame
    /// that starts below the bound goes whole); returns the bytes written.
    fn write_some(&mut self, max_bytes: usize) -> io::Result<usize> {
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let mut n = 0;
        let mut bytes = 0;
        for (slot, frame) in slices.iter_mut().zip(self.out.iter()) {
            if n > 0 && bytes + frame.len() > max_bytes {
                break;
            }
            *slot = IoSlice::new(frame);
            bytes += frame.len();
            n += 1;
        }
        let written = self.stream.try_write_vectored(&slices[..n])?;
        self.advance(written);
        Ok(written)
    }

    fn push(&mut self, frame: Bytes) {
        self.out_bytes += frame.len();
        self.out.push_back(frame);
    }

    /// Starts the closing handshake: queues a close frame and gives the client until
    /// `deadline` to take it and answer. Returns the number of queued frames dropped
    /// (only a slow-consumer close drops any).
    pub fn close(&mut self, code: u16, reason: &str, why: Disconnect, deadline: u32) -> usize {
        if self.phase != Phase::Open {
            return 0;
        }
        let code = if self.flags.has(ConnectionFlags::PUSHER) {
            pusher_close_code(why).unwrap_or(code)
        } else {
            code
        };
        let mut dropped = 0;
        if why == Disconnect::SlowConsumer {
            // Keep a frame already half on the wire so the close frame follows a
            // whole frame; everything behind it is lost.
            let keep = usize::from(self.flags.has(ConnectionFlags::FRONT_PARTIAL) && !self.out.is_empty());
            dropped = self.out.len() - keep;
            self.out.truncate(keep);
            self.out_bytes = self.out.iter().map(Bytes::len).sum();
        }
        self.push(close_frame(code, reason));
        self.phase = Phase::Closing {
            deadline,
            reply_received: false,
        };
        self.disconnect = Some(why);
        self.wake();
        dropped
    }

    /// Records the client's close frame: answer it (if we had not closed first) and
    /// end once the answer is flushed.
    pub fn close_received(&mut self, code: Option<u16>, deadline: u32) {
        match self.phase {
            Phase::Open => {
                let reply = code.unwrap_or(shardcast_proto::close::NORMAL);
                self.push(close_frame(reply, ""));
                self.disconnect = Some(Disconnect::ClientClose);
                self.phase = Phase::Closing {
                    deadline,
                    reply_received: true,
                };
            }
            Phase::Closing { deadline, .. } => {
                self.phase = Phase::Closing {
                    deadline,
                    reply_received: true,
                };
            }
            Phase::Dead => {}
        }
        self.wake();
    }

    /// Marks the connection for removal at its task's next poll.
    pub fn die(&mut self, why: Disconnect) {
        if self.disconnect.is_none() {
            self.disconnect = Some(why);
        }
        self.phase = Phase::Dead;
        self.wake();
    }

    /// Whether the closing handshake is complete: our close is flushed and theirs arrived.
    pub fn close_complete(&self) -> bool {
        matches!(
            self.phase,
            Phase::Closing {
                reply_received: true,
                ..
            }
        ) && self.out.is_empty()
    }

    /// Writes queued frames until the queue is empty or the socket is full.
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            if self.stream.poll_write_ready(cx)?.is_pending() {
                return Poll::Pending;
            }
            match self.write_some(usize::MAX) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        // An idle connection holds no queue memory.
        self.out = VecDeque::new();
        Poll::Ready(Ok(()))
    }

    fn advance(&mut self, mut written: usize) {
        self.out_bytes -= written;
        while written > 0 {
            let Some(front) = self.out.front_mut() else {
                break;
            };
            if written >= front.len() {
                written -= front.len();
                self.out.pop_front();
                self.flags.set(ConnectionFlags::FRONT_PARTIAL, false);
            } else {
                *front = front.slice(written..);
                self.flags.set(ConnectionFlags::FRONT_PARTIAL, true);
                written = 0;
            }
        }
    }

    /// Whether frames wait in the queue.
    pub fn has_queued(&self) -> bool {
        !self.out.is_empty()
    }

    /// Reads what the socket has into `buf`; `Ok(0)` is the end of the stream.
    pub fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        loop {
            if self.stream.poll_read_ready(cx)?.is_pending() {
                return Poll::Pending;
            }
            match self.stream.try_read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }

    /// Remembers the task to wake when there is something to write or the phase changes.
    pub fn set_waker(&mut self, waker: &Waker) {
        match &self.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => self.waker = Some(waker.clone()),
        }
    }

    fn wake(&self) {
        if let Some(w) = &self.waker {
            w.wake_by_ref();
        }
    }
}

/// The Pusher close code for a close the gateway starts (PROTOCOL.md 20.1), where
/// Pusher's clients must act differently from the native code's meaning.
fn pusher_close_code(why: Disconnect) -> Option<u16> {
    match why {
        Disconnect::GoingAway => Some(pusher_code::RECONNECT),
        Disconnect::SlowConsumer => Some(pusher_code::OVER_CAPACITY),
        Disconnect::IdleTimeout => Some(pusher_code::PONG_NOT_RECEIVED),
        Disconnect::Operator => Some(pusher_code::UNAUTHORIZED),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    /// An idle connection is mostly this record: keep an eye on its size
    /// (README's idle-memory figure, at most 1 KiB per subscribed socket).
    #[test]
    fn the_record_stays_small() {
        let size = std::mem::size_of::<super::Connection>();
        assert!(size <= 160, "Connection grew to {size} bytes");
    }
}
