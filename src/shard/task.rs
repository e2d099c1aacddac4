//! The per-connection tasks of a shard: the upgrade of a newly adopted socket, then
//! a small hand-written future that drives the connection for the rest of its life.
//!
//! The steady-state future holds only a shard pointer, a slab key and an id, so an
//! idle connection's task is as small as tokio allows; the upgrade's buffers live in
//! a separate task that is gone by the time the socket goes idle.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use shardcast_proto::Encoding;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::debug;

use super::connection::{Connection, ConnectionAuth, ConnectionFlags, Disconnect, Phase, ReadState};
use super::identity::{take_place, Place, USER_LIMIT_REACHED};
use super::pusher::{text_frame as pusher_text_frame, PusherSocket};
use super::{Shard, ShardCore};
use crate::auth::Identity;
use crate::pusher::apps::PusherApp;
use crate::pusher::protocol::{code as pusher_code, error as pusher_error, PROTOCOL_VERSION};
use crate::ws::frame::{close_frame, read_frames};
use crate::ws::handshake::{
    error_body, http_response, parse_request, upgrade_response, PublicRequest, WsPaths, MAX_REQUEST_HEAD, TOKEN_IN_URL,
};

/// How many reads one poll may do before yielding to the shard's other tasks.
const READS_PER_POLL: usize = 4;

/// Runs the HTTP upgrade on an adopted socket and, if it succeeds, registers the
/// connection and starts its task.
pub(super) async fn handshake(core: Rc<ShardCore>, stream: std::net::TcpStream, peer: SocketAddr) {
    let upgraded = match TcpStream::from_std(stream) {
        Ok(stream) => upgrade(&core, stream).await,
        Err(e) => {
            debug!(%peer, error = %e, "cannot register socket");
            None
        }
    };
    let Some(Upgraded {
        stream,
        encoding,
        echo,
        identity,
        deflate_window,
        pusher,
    }) = upgraded
    else {
        core.env.state.add_socket(core.env.id, -1);
        return;
    };
    let (key, id) = core.with(|shard| {
        let (key, id) = shard.adopt(stream, encoding, echo, identity, deflate_window, pusher.is_some());
        if let Some(app) = pusher {
            shard.greet_pusher(key, app);
        }
        (key, id)
    });
    debug!(shard = core.env.id, conn = id, %peer, ?encoding, "connection open");
    tokio::task::spawn_local(ConnectionTask { core, key, id });
}

impl Shard<'_> {
    /// Registers an upgraded socket; returns its slab key and id. The `welcome`
    /// goes out at once unless a token is required and the upgrade carried none:
    /// then it answers the `connect` frame.
    fn adopt(
        &mut self,
        stream: TcpStream,
        encoding: Encoding,
        echo: bool,
        identity: Option<(Identity, bool)>,
        deflate_window: u8,
        pusher: bool,
    ) -> (usize, u64) {
        let env = self.env;
        let id = self.st.next_id;
        self.st.next_id += 1;
        let mut conn = Connection::new(id, stream, encoding, env.now());
        conn.flags.set(ConnectionFlags::ECHO, echo);
        conn.deflate_window = deflate_window;
        if let Some((identity, counted)) = identity {
            conn.auth = Some(Box::new(ConnectionAuth {
                identity,
                by_header: true,
                sub_tokens: Vec::new(),
                counted,
                window: (env.now(), 0),
            }));
        }
        let greeted = echo || pusher || conn.auth.is_some() || env.auth.allows_anonymous();
        conn.flags.set(ConnectionFlags::GREETED, greeted);
        if !greeted {
            // The `connect` must come within the handshake timeout, counted from now.
            conn.auth_mut().window.0 = env.now();
        }
        if !echo && !pusher && greeted {
            let (user, expires_at) = match &conn.auth {
                Some(a) => (Some(a.identity.user.clone()), a.identity.expires_at),
                None => (None, None),
            };
            if let Some(welcome) = env.welcome(encoding, None, user, expires_at) {
                conn.send(&welcome, usize::MAX);
            }
        }
        if self.st.draining {
            // The upgrade finished just as the drain began: this socket missed the batch.
            let reason = shardcast_proto::close::reason_with_retry("going away", 0);
            conn.close(
                shardcast_proto::close::GOING_AWAY,
                &reason,
                Disconnect::GoingAway,
                env.close_deadline(),
            );
        }
        let key = self.st.conns.insert(conn);
        env.shard_metrics.connections.inc();
        env.state.add_connection(env.id, 1);
        (key, id)
    }
}

impl Shard<'_> {
    /// Makes connection `key` a Pusher socket of `app` and sends its
    /// `pusher:connection_established`.
    fn greet_pusher(&mut self, key: usize, app: Arc<PusherApp>) {
        let env = self.env;
        if let Some(conn) = self.st.conns.get_mut(key) {
            conn.flags.set(ConnectionFlags::PUSHER, true);
            self.st.pushers.insert(key, PusherSocket::new(app));
            let established = env.pusher_established(conn.id);
            conn.send(&established, usize::MAX);
        }
    }
}

/// A socket that is now a WebSocket.
struct Upgraded {
    stream: TcpStream,
    encoding: Encoding,
    /// An echo connection (conformance testing).
    echo: bool,
    /// The identity from an `Authorization: Bearer` header, and whether it holds
    /// a place in the per-user connection count.
    identity: Option<(Identity, bool)>,
    /// permessage-deflate's server window, 0 if not negotiated.
    deflate_window: u8,
    /// The app of a Pusher-protocol connection (PROTOCOL.md 20).
    pusher: Option<Arc<PusherApp>>,
}

/// Reads the request head and answers it; returns the socket if it is now a
/// WebSocket.
async fn upgrade(core: &ShardCore, mut stream: TcpStream) -> Option<Upgraded> {
    let env = &core.env;
    let refused = |reason: &str| env.metrics.connections_refused.with_label_values(&[reason]).inc();
    let head = tokio::time::timeout(env.config.handshake_timeout, read_head(&stream, env.ws_paths())).await;
    let response = match head {
        Err(_) => {
            refused("handshake_timeout");
            return None;
        }
        Ok(Err(status)) => {
            refused("bad_handshake");
            http_response(status, None, &error_body("bad_request", "malformed HTTP request"))
        }
        Ok(Ok(PublicRequest::Upgrade { .. } | PublicRequest::PusherUpgrade { .. }))
            if core.with(|shard| shard.st.draining) || env.state.is_draining() =>
        {
            refused("draining");
            http_response(503, Some(5), &error_body("unavailable", "this instance is draining"))
        }
        Ok(Ok(PublicRequest::Upgrade {
            echo,
            key,
            encoding,
            subprotocol,
            bearer,
            deflate,
        })) => {
            // Offered by the client, and allowed by --compression.
            let deflate = deflate.filter(|_| env.config.compression.min_bytes().is_some());
            let identity = match bearer.map(|token| env.auth.connect(&token)) {
                None => None,
                Some(Ok(identity)) => match take_place(env.users.as_ref(), &identity.user).await {
                    Place::Full => {
                        refused("too_many_connections");
                        env.metrics
                            .auth_refusals
                            .with_label_values(&["too_many_connections"])
                            .inc();
                        let body = error_body("rate_limited", USER_LIMIT_REACHED);
                        let _ = stream.write_all(&http_response(429, Some(5), &body)).await;
                        let _ = stream.shutdown().await;
                        return None;
                    }
                    place => Some((identity, place == Place::Taken)),
                },
                Some(Err(e)) => {
                    refused("unauthorized");
                    env.metrics.auth_refusals.with_label_values(&[e.label()]).inc();
                    let response = http_response(401, None, &error_body("unauthorized", &e.to_string()));
                    let _ = stream.write_all(&response).await;
                    let _ = stream.shutdown().await;
                    return None;
                }
            };
            let extensions = deflate.as_ref().map(|a| a.response.as_str());
            let response = upgrade_response(&key, subprotocol.as_deref(), extensions);
            return match stream.write_all(&response).await {
                Ok(()) => Some(Upgraded {
                    stream,
                    encoding,
                    echo,
                    identity,
                    deflate_window: deflate.map_or(0, |a| a.server_window),
                    pusher: None,
                }),
                Err(_) => {
                    if let (Some((identity, true)), Some(users)) = (identity, &env.users) {
                        users.release(Arc::from(identity.user.as_str()));
                    }
                    None
                }
            };
        }
        Ok(Ok(PublicRequest::PusherUpgrade { .. })) if env.pusher_apps.is_empty() => {
            refused("bad_handshake");
            http_response(404, None, &error_body("bad_request", "not found"))
        }
        Ok(Ok(PublicRequest::PusherUpgrade {
            key,
            app_key,
            protocol,
            deflate,
        })) => {
            let deflate = deflate.filter(|_| env.config.compression.min_bytes().is_some());
            let extensions = deflate.as_ref().map(|a| a.response.as_str());
            stream.write_all(&upgrade_response(&key, None, extensions)).await.ok()?;
            let app = env.pusher_apps.get(&app_key);
            let version = protocol.as_deref().and_then(|p| p.parse::<u32>().ok());
            // Pusher's refusals come after the upgrade, as an error event and a
            // close with the same code (PROTOCOL.md 20.1).
            let refusal = match (app, version) {
                (None, _) => Some((pusher_code::APP_DOES_NOT_EXIST, "unknown app key", "pusher_unknown_app")),
                (_, Some(v)) if (5..=PROTOCOL_VERSION).contains(&v) => None,
                _ => Some((
                    pusher_code::UNSUPPORTED_PROTOCOL,
                    "unsupported protocol version: 5 to 7 are supported",
                    "pusher_protocol",
                )),
            };
            if let Some((code, message, reason)) = refusal {
                refused(reason);
                let mut bytes = pusher_text_frame(&pusher_error(Some(code), message)).to_vec();
                bytes.extend_from_slice(&close_frame(code, message));
                let _ = stream.write_all(&bytes).await;
                let _ = stream.shutdown().await;
                return None;
            }
            return Some(Upgraded {
                stream,
                encoding: Encoding::Json,
                echo: false,
                identity: None,
                deflate_window: deflate.map_or(0, |a| a.server_window),
                pusher: app.cloned(),
            });
        }
        Ok(Ok(PublicRequest::Health { ready_probe })) => {
            let up = !ready_probe || env.state.is_ready();
            let body = serde_json::json!({ "ok": up, "node": env.state.node_id }).to_string();
            http_response(if up { 200 } else { 503 }, None, &body)
        }
        Ok(Ok(PublicRequest::TokenInUrl)) => {
            refused("token_in_url");
            env.metrics.auth_refusals.with_label_values(&["query_token"]).inc();
            http_response(400, None, &error_body("bad_request", TOKEN_IN_URL))
        }
        Ok(Ok(PublicRequest::Reject { status, message })) => {
            refused("bad_handshake");
            http_response(status, None, &error_body("bad_request", message))
        }
    };
    let _ = stream.write_all(&response).await;
    let _ = stream.shutdown().await;
    None
}

/// Reads until a whole request head is in; the error is the HTTP status to answer.
async fn read_head(stream: &TcpStream, paths: WsPaths<'_>) -> Result<PublicRequest, u16> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        stream.readable().await.map_err(|_| 400u16)?;
        match stream.try_read(&mut chunk) {
            Ok(0) => return Err(400),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return Err(400),
        }
        match parse_request(&buf, paths) {
            Ok(Some(req)) => return Ok(req),
            Ok(None) if buf.len() >= MAX_REQUEST_HEAD => return Err(431),
            Ok(None) => {}
            Err(httparse::Error::TooManyHeaders) => return Err(431),
            Err(_) => return Err(400),
        }
    }
}

/// Drives one open connection: flushes its queue, reads and handles its frames,
/// and removes it from the shard when it is done.
struct ConnectionTask {
    core: Rc<ShardCore>,
    key: usize,
    id: u64,
}

impl Future for ConnectionTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let ConnectionTask { core, key, id } = &*self;
        core.with(|shard| shard.poll_connection(*key, *id, cx))
    }
}

/// What the write half and the phase say before reading.
enum Step {
    /// Go on and read.
    Read,
    /// The connection is finished: remove it.
    Remove,
    /// Someone else removed it already.
    Gone,
}

impl Shard<'_> {
    fn poll_connection(&mut self, key: usize, id: u64, cx: &mut Context<'_>) -> Poll<()> {
        let env = self.env;
        for _ in 0..READS_PER_POLL {
            match self.poll_writes(key, id, cx) {
                Step::Read => {}
                Step::Remove => {
                    self.remove(key);
                    return Poll::Ready(());
                }
                Step::Gone => return Poll::Ready(()),
            }
            // The scratch buffer leaves the state while the frames read into it are
            // handled (they need the state); it is put back after.
            let mut scratch = std::mem::take(&mut self.st.scratch);
            let read = match self.st.conns.get_mut(key) {
                None => None,
                Some(conn) => match conn.poll_read(cx, &mut scratch) {
                    Poll::Pending => {
                        self.st.scratch = scratch;
                        return Poll::Pending;
                    }
                    Poll::Ready(Ok(0)) => {
                        conn.die(Disconnect::Eof);
                        Some(None)
                    }
                    Poll::Ready(Err(_)) => {
                        conn.die(Disconnect::IoError);
                        Some(None)
                    }
                    Poll::Ready(Ok(n)) => {
                        conn.last_seen = env.now();
                        conn.flags.set(ConnectionFlags::PINGED, false);
                        Some(Some((conn.read.take(), n)))
                    }
                },
            };
            let Some(read) = read else {
                self.st.scratch = scratch;
                return Poll::Ready(());
            };
            if let Some((state, n)) = read {
                self.process_input(key, &mut scratch[..n], state);
            }
            self.st.scratch = scratch;
        }
        // Fairness: a plain self-wake would put this task back in the shard's run
        // queue ahead of the I/O driver, so a flooding client could be polled over
        // and over while other sockets' events and the timers wait. yield_now defers
        // the wake-up until the driver has run.
        let _ = std::pin::pin!(tokio::task::yield_now()).poll(cx);
        Poll::Pending
    }

    /// Flushes the queue and checks the phase.
    fn poll_writes(&mut self, key: usize, id: u64, cx: &mut Context<'_>) -> Step {
        let Some(conn) = self.st.conns.get_mut(key).filter(|c| c.id == id) else {
            return Step::Gone;
        };
        if conn.phase == Phase::Dead {
            return Step::Remove;
        }
        conn.set_waker(cx.waker());
        if conn.has_queued() {
            if let Poll::Ready(Err(_)) = conn.poll_flush(cx) {
                conn.die(Disconnect::IoError);
                return Step::Remove;
            }
        }
        if conn.close_complete() {
            return Step::Remove;
        }
        Step::Read
    }

    /// Parses the frames in freshly read bytes (joined to any incomplete frame kept
    /// from before) and handles each; keeps what is still incomplete.
    fn process_input(&mut self, key: usize, data: &mut [u8], state: Option<Box<ReadState>>) {
        let env = self.env;
        let max = env.config.max_message_bytes;
        // The shard's one inflater leaves the state, as the scratch buffer does,
        // for a connection that negotiated permessage-deflate.
        let deflate = self.st.conns.get(key).is_some_and(|c| c.deflate_window != 0);
        let mut inflater = deflate.then(|| self.st.inflater.take().unwrap_or_default());
        // Only a connection with an incomplete frame or message owns a buffer.
        let (mut pending, mut fragments) = match state {
            Some(s) => (s.pending, s.fragments),
            None => (Vec::new(), None),
        };
        let result = if pending.is_empty() {
            let r = read_frames(data, &mut fragments, max, inflater.as_deref_mut(), |ev| {
                self.on_incoming(key, ev)
            });
            if let Ok(used) = r {
                pending.extend_from_slice(&data[used..]);
            }
            r
        } else {
            pending.extend_from_slice(data);
            let r = read_frames(&mut pending, &mut fragments, max, inflater.as_deref_mut(), |ev| {
                self.on_incoming(key, ev)
            });
            if let Ok(used) = r {
                pending.drain(..used);
            }
            r
        };
        if inflater.is_some() {
            self.st.inflater = inflater;
        }
        let Some(conn) = self.st.conns.get_mut(key) else {
            return;
        };
        match result {
            Ok(_) => {
                if !pending.is_empty() || fragments.is_some() {
                    pending.shrink_to_fit();
                    conn.read = Some(Box::new(ReadState { pending, fragments }));
                }
            }
            Err(e) => {
                env.metrics.client_errors.with_label_values(&[e.label()]).inc();
                if conn.flags.has(ConnectionFlags::PUSHER) {
                    // Pusher's clients show the error event; the close follows.
                    let error = pusher_text_frame(&pusher_error(None, &e.to_string()));
                    conn.send(&error, usize::MAX);
                }
                let why = match e.close_code() {
                    shardcast_proto::close::MESSAGE_TOO_BIG => Disconnect::MessageTooBig,
                    shardcast_proto::close::INVALID_PAYLOAD => Disconnect::InvalidPayload,
                    _ => Disconnect::ProtocolError,
                };
                conn.close(e.close_code(), &e.to_string(), why, env.close_deadline());
            }
        }
    }
}
