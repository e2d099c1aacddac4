//! One open WebSocket to the gateway: [`Connection`] sends frames (bounded in time),
//! keeps the requests in flight on it, runs the heartbeat's clock and the refresh
//! schedule of its token, and closes with the close handshake. [`End`] and [`Loss`] say why a connection or attempt ended.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use shardcast_proto::{ClientFrame, Encoding};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::command::HeartbeatTiming;
use super::requests::{Pending, Reply, RequestTable, SubscribeRequest};
use crate::error::{Error, Result};
use crate::token::TokenLifetime;
use crate::transport::{self, Welcome, WsStream};

/// Far enough ahead to mean "never" for a timer, near enough not to overflow `Instant`.
pub(crate) const NEVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why a connection (or an attempt at one) ended.
pub(crate) struct Loss {
    pub code: u16,
    pub reason: String,
    pub retry_after: Option<Duration>,
    /// When the lost connection got its welcome; `None` for a failed attempt.
    pub welcomed_at: Option<Instant>,
}

pub(crate) enum End {
    /// The connection or attempt was lost; the policy decides what next.
    Lost(Loss),
    /// The application closed the client (or dropped every handle).
    ClientClosed,
    /// The request itself is wrong: stop without retrying.
    Fatal(Error),
}

/// What the heartbeat asks for at a timer tick.
pub(crate) enum HeartbeatStep {
    /// Nothing to do yet.
    Wait,
    /// The connection has been quiet for the interval: send a ping.
    Ping,
    /// Nothing arrived within the timeout after the ping: the connection is dead.
    Dead(String),
}

/// The state of one open connection.
pub(crate) struct Connection {
    pub ws: WsStream,
    pub encoding: Encoding,
    pub requests: RequestTable,
    pub welcomed_at: Instant,
    /// Earliest subscribe retry or subscription token refresh of any channel, if any.
    pub channel_wakeup: Option<Instant>,
    /// The lifetime of the connection's token, from the welcome or the last refresh.
    pub token_lifetime: Option<TokenLifetime>,
    /// When to refresh the connection's token; `None` when nothing is scheduled
    /// (no token, no provider, or a refresh under way).
    pub token_refresh_at: Option<Instant>,
    /// Set when a send failed; the connection is treated as lost.
    pub broken: Option<String>,
    last_received: Instant,
    /// (interval, timeout) of the heartbeat, if it runs.
    heartbeat: Option<(Duration, Duration)>,
    /// A heartbeat ping went out and nothing has arrived since.
    pinged: bool,
    heartbeat_check: Instant,
    /// Bounds a single send.
    send_timeout: Duration,
}

impl Connection {
    /// A connection that just got `welcome`; `heartbeat` is `None` when it is turned off.
    pub(crate) fn new(
        ws: WsStream,
        welcome: &Welcome,
        heartbeat: Option<HeartbeatTiming>,
        send_timeout: Duration,
    ) -> Self {
        let now = Instant::now();
        let heartbeat = heartbeat.and_then(|timing| {
            let interval = timing.interval.unwrap_or(welcome.ping_interval);
            // A gateway announcing no ping interval gives nothing to size the timeout by.
            (!interval.is_zero()).then(|| (interval, timing.timeout.unwrap_or(interval)))
        });
        Connection {
            ws,
            encoding: welcome.encoding,
            requests: RequestTable::default(),
            welcomed_at: now,
            channel_wakeup: None,
            token_lifetime: None,
            token_refresh_at: None,
            broken: None,
            last_received: now,
            heartbeat,
            pinged: false,
            heartbeat_check: now + heartbeat.map_or(NEVER, |(interval, _)| interval),
            send_timeout,
        }
    }

    /// Something arrived: anything at all proves the connection alive, pings and pongs included.
    pub(crate) fn received(&mut self) {
        self.last_received = Instant::now();
        self.pinged = false;
    }

    /// When the connection's timer should fire next; `idle` if nothing is scheduled.
    pub(crate) fn next_wakeup(&self, idle: Instant) -> Instant {
        let heartbeat = if self.heartbeat.is_some() {
            self.heartbeat_check
        } else {
            idle
        };
        [self.channel_wakeup, self.token_refresh_at]
            .into_iter()
            .flatten()
            .fold(heartbeat, Instant::min)
    }

    /// Brings the channel timer forward to `at`, if that is sooner.
    pub(crate) fn wake_for_channel(&mut self, at: Option<Instant>) {
        if let Some(at) = at {
            self.channel_wakeup = Some(self.channel_wakeup.map_or(at, |t| t.min(at)));
        }
    }

    /// Advances the heartbeat at `now`. The pong to a ping is not awaited as such:
    /// any frame that arrives clears the ping.
    pub(crate) fn heartbeat_step(&mut self, now: Instant) -> HeartbeatStep {
        let Some((interval, timeout)) = self.heartbeat else {
            return HeartbeatStep::Wait;
        };
        if now < self.heartbeat_check {
            return HeartbeatStep::Wait;
        }
        let quiet = now.saturating_duration_since(self.last_received);
        if !self.pinged {
            if quiet >= interval {
                self.pinged = true;
                self.heartbeat_check = now + timeout;
                return HeartbeatStep::Ping;
            }
            self.heartbeat_check = self.last_received + interval;
        } else if quiet >= interval + timeout {
            return HeartbeatStep::Dead(format!("heartbeat timeout: nothing received for {quiet:?}"));
        } else {
            self.heartbeat_check = self.last_received + interval + timeout;
        }
        HeartbeatStep::Wait
    }

    pub(crate) async fn send(&mut self, frame: ClientFrame) {
        match transport::encode(self.encoding, &frame) {
            Ok(message) => self.send_message(message).await,
            // Not sent at all rather than sent empty; the request then times out.
            Err(e) => tracing::error!(error = %e, "cannot encode a frame; not sent"),
        }
    }

    /// Sends request `id`, tracked as `pending` until its reply.
    pub(crate) async fn request(&mut self, id: u64, frame: ClientFrame, pending: Pending) {
        self.requests.track(id, pending);
        self.send(frame).await;
    }

    /// Sends subscribe request `id`, tracked until its reply.
    pub(crate) async fn subscribe(&mut self, id: u64, request: SubscribeRequest) {
        let frame = ClientFrame::Subscribe {
            id: Some(id),
            channel: request.channel.clone(),
            token: request.token.as_ref().map(|(token, _)| token.clone()),
            latest: request.latest,
            recover: request.recover.clone(),
        };
        self.request(id, frame, Pending::Subscribe(request)).await;
    }

    /// Sends publish request `id`, unless its frame is over `limit` bytes: sent, it
    /// would get close 1009 and end the client for good.
    pub(crate) async fn publish(
        &mut self,
        id: u64,
        channel: String,
        data: Value,
        idempotency_key: Option<String>,
        limit: usize,
        done: oneshot::Sender<Result<Reply>>,
    ) {
        let frame = ClientFrame::Publish {
            id: Some(id),
            channel: channel.clone(),
            data,
            idempotency_key,
        };
        let message = match transport::encode(self.encoding, &frame) {
            Ok(message) => message,
            Err(e) => {
                let _ = done.send(Err(e));
                return;
            }
        };
        let size = message.len();
        if size > limit {
            let _ = done.send(Err(Error::MessageTooLarge { size, limit }));
            return;
        }
        let pending = Pending::Request {
            op: "publish",
            channel: Some(channel),
            done,
        };
        self.requests.track(id, pending);
        self.send_message(message).await;
    }

    pub(crate) async fn send_message(&mut self, message: WsMessage) {
        if self.broken.is_some() {
            return;
        }
        // A peer that stopped reading would block this send forever, and with it the
        // heartbeat that is meant to notice such a peer; the request timeout bounds it.
        match tokio::time::timeout(self.send_timeout, self.ws.send(message)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.broken = Some(format!("send failed: {e}")),
            Err(_) => self.broken = Some("send timed out: the gateway stopped reading".to_owned()),
        }
    }

    /// Closes the connection from this side, with the close handshake, bounded in time.
    pub(crate) async fn close(&mut self, limit: Duration) {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "client closed".into(),
        };
        let ws = &mut self.ws;
        let _ = tokio::time::timeout(limit, async {
            let _ = ws.close(Some(frame)).await;
            // The gateway echoes the close and then ends the TCP connection.
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
    }

    /// Fails the connection from this side after a read error that calls for `code`:
    /// sends the close frame, bounded in time, without waiting for its echo (the
    /// read side has already failed).
    pub(crate) async fn fail(&mut self, code: u16, reason: String, limit: Duration) -> End {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            // A close reason is at most 123 bytes; this one is a short ASCII message.
            reason: reason.chars().take(120).collect::<String>().into(),
        };
        let _ = tokio::time::timeout(limit, self.ws.close(Some(frame))).await;
        self.lost(code, reason)
    }

    /// After the gateway's close frame: lets the WebSocket send its close reply and see
    /// the TCP connection end, bounded in time.
    pub(crate) async fn finish_close(&mut self, limit: Duration) {
        let ws = &mut self.ws;
        let _ = tokio::time::timeout(limit, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    }

    /// A loss of this connection with the given close code and reason.
    pub(crate) fn lost(&self, code: u16, reason: String) -> End {
        End::Lost(Loss {
            code,
            reason,
            retry_after: None,
            welcomed_at: Some(self.welcomed_at),
        })
    }
}
