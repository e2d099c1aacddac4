//! The load-generator worker process (`shardcast-bench worker`): opens its share of
//! the connections at a paced rate from its own source addresses, authenticates each
//! with its pre-minted token when there are tokens, subscribes each, then times
//! every message frame against the timestamp the publisher put in it.
//! It obeys the parent's commands (reset, report, storm, quit) and stops by itself
//! at its deadline.
//!
//! One single-threaded runtime per process: connections never migrate between
//! threads, so per-connection state lives in `Rc`/`RefCell` without atomics, and
//! the process is pinned to the load-generator cores.

use std::cell::{Cell, RefCell};
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use shardcast_proto::{decode_server, encode_client, ClientFrame, Encoding, ServerFrame, StreamPosition};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::LocalSet;
use tokio::time::{sleep_until, Instant};

use crate::clock::monotonic_ns;
use crate::cpu_pinning;
use crate::error::{BenchError, IoContext};
use crate::latency::LatencyRecorder;
use crate::proc_stats;
use crate::pusher_wire::{self, PusherFrame};
use crate::stream_cursor::{AckPosition, OffsetCounts, StreamCursor};
use crate::tokens;
use crate::worker_protocol::{FailureCounts, WireProtocol, WorkerCommand, WorkerEvent, WorkerSpec};
use crate::ws_client::{ReceivedFrame, WsClient};

/// Connections that share one source address before the next address is used.
const CONNECTIONS_PER_SOURCE: usize = 1000;
/// Time one upgrade plus subscription may take.
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a worker until the parent says quit, stdin closes, or the deadline passes.
pub fn run_worker(spec: WorkerSpec) -> Result<(), BenchError> {
    if let Err(e) = cpu_pinning::pin_current_thread(&spec.cpus) {
        eprintln!("worker {}: cannot pin to CPUs {:?}: {e}", spec.index, spec.cpus);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context(|| "build the worker runtime".into())?;
    let local = LocalSet::new();
    local.block_on(&runtime, LoadGenerator::new(spec)?.run())
}

/// Writes one event line to stdout for the parent.
fn emit(event: &WorkerEvent) {
    // An event that cannot be serialised would be a bug in our own types; stdout
    // closing means the parent is gone, and the deadline ends us anyway.
    if let Ok(line) = serde_json::to_string(event) {
        println!("{line}");
    }
}

/// Counters shared by every connection task of this worker.
#[derive(Default)]
struct WorkerState {
    latency: LatencyRecorder,
    delivered: u64,
    /// Wire bytes of the delivered frames.
    wire_bytes: u64,
    /// Delivered frames that arrived compressed.
    compressed: u64,
    subscribed: usize,
    /// Connections that finished their initial attempt: subscribed or gave up.
    settled: usize,
    failures: FailureCounts,
    first_ns: u64,
    last_ns: u64,
    storm: Option<StormProgress>,
    /// With `track_offsets`: what the connections' offsets showed.
    offsets: OffsetCounts,
}

/// Where a storm stands in this worker.
struct StormProgress {
    generation: u64,
    start_ns: u64,
    resubscribed: usize,
    gave_up: usize,
    last_ns: u64,
    failures: FailureCounts,
}

/// Spaces connection attempts `interval` apart, so the server sees a steady connect
/// rate instead of a SYN flood.
struct ConnectPacer {
    interval: Duration,
    next: Cell<Instant>,
}

impl ConnectPacer {
    async fn wait(&self) {
        if self.interval.is_zero() {
            return;
        }
        let slot = self.next.get().max(Instant::now());
        self.next.set(slot + self.interval);
        sleep_until(slot).await;
    }
}

/// What every connection task shares.
struct SharedContext {
    spec: WorkerSpec,
    state: RefCell<WorkerState>,
    pacer: ConnectPacer,
    in_flight: Semaphore,
    /// Connection tokens by local index (empty: anonymous clients).
    tokens: Vec<String>,
}

impl SharedContext {
    fn source_for(&self, global: usize, generation: u64) -> Option<Ipv4Addr> {
        let ips = &self.spec.source_ips;
        if ips.is_empty() {
            return None;
        }
        // Each storm generation moves to the next address, so reconnects never meet
        // their own TIME_WAIT entries.
        Some(ips[(global / CONNECTIONS_PER_SOURCE + generation as usize) % ips.len()])
    }

    fn count_failure(&self, error: &BenchError, generation: u64) {
        let mut st = self.state.borrow_mut();
        let counts = match (&mut st.storm, generation) {
            (Some(storm), g) if g == storm.generation => &mut storm.failures,
            _ => &mut st.failures,
        };
        match error {
            BenchError::HandshakeRefused(_) => counts.refused += 1,
            BenchError::Timeout(_) => counts.timeouts += 1,
            BenchError::Protocol(_) => counts.protocol_errors += 1,
            _ => counts.io_errors += 1,
        }
    }

    fn on_subscribed(&self, generation: u64) {
        let now = monotonic_ns();
        let mut st = self.state.borrow_mut();
        st.subscribed += 1;
        match &mut st.storm {
            Some(storm) if storm.generation == generation => {
                storm.resubscribed += 1;
                storm.last_ns = now;
            }
            _ => {
                st.settled += 1;
                st.last_ns = now;
            }
        }
    }

    fn on_gave_up(&self, generation: u64) {
        let mut st = self.state.borrow_mut();
        match &mut st.storm {
            Some(storm) if storm.generation == generation => {
                storm.gave_up += 1;
                storm.failures.gave_up += 1;
            }
            _ => {
                st.settled += 1;
                st.failures.gave_up += 1;
            }
        }
    }

    /// Counts and times a message frame. Returns the answer a protocol-level
    /// heartbeat asks for: Engine.IO's `2` wants `3`, Pusher's `pusher:ping` wants
    /// `pusher:pong`, or the server drops the client.
    fn on_message(&self, frame: &ReceivedFrame, payload: &[u8]) -> Option<&'static [u8]> {
        let (is_message, sent) = match self.spec.protocol {
            WireProtocol::Shardcast => (
                payload.starts_with(b"{\"type\":\"message\""),
                extract_timestamp(payload),
            ),
            WireProtocol::SocketIo if payload == b"2" => return Some(b"3"),
            WireProtocol::SocketIo => (payload.starts_with(b"42[\"message\""), extract_timestamp(payload)),
            WireProtocol::Pusher => match pusher_wire::classify(payload) {
                PusherFrame::Event(sent) => (true, sent),
                PusherFrame::Ping => return Some(pusher_wire::PONG),
                _ => (false, None),
            },
            WireProtocol::ShardcastMsgPack => (
                // A map whose first entry is "type": "message".
                payload.get(1..14) == Some(b"\xa4type\xa7message"),
                extract_msgpack_timestamp(payload),
            ),
        };
        if !is_message {
            return None;
        }
        let now = monotonic_ns();
        let mut st = self.state.borrow_mut();
        st.delivered += 1;
        st.wire_bytes += frame.wire_len() as u64;
        st.compressed += u64::from(frame.was_compressed());
        if let Some(sent) = sent {
            st.latency.record(now.saturating_sub(sent));
        }
        None
    }

    /// Follows a message's offset (history scenarios); true when it completes the
    /// connection's catch-up after a recovered subscribe.
    fn on_offset(&self, payload: &[u8], cursor: &mut StreamCursor) -> bool {
        if !payload.starts_with(b"{\"type\":\"message\"") {
            return false;
        }
        let Ok(ServerFrame::Message {
            offset: Some(offset),
            epoch: Some(epoch),
            ..
        }) = decode_server(Encoding::Json, payload)
        else {
            return false;
        };
        cursor.on_message(offset, &epoch, &mut self.state.borrow_mut().offsets)
    }
}

/// The `"t":<ns>` timestamp the publisher put into the message's data; the first
/// `"t":` of the frame is it, since channel names cannot contain quotes.
pub fn extract_timestamp(payload: &[u8]) -> Option<u64> {
    timestamp_after(payload, b"\"t\":")
}

/// The unsigned integer right after the first `key` in `payload`.
pub fn timestamp_after(payload: &[u8], key: &[u8]) -> Option<u64> {
    let at = payload.windows(key.len()).position(|w| w == key)? + key.len();
    let mut value: u64 = 0;
    let mut digits = 0;
    for &b in &payload[at..] {
        if !b.is_ascii_digit() {
            break;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        digits += 1;
    }
    (digits > 0).then_some(value)
}

/// The same timestamp in a MessagePack `message`: the first `"t"` key (`a1 74`)
/// after the `data` key, an unsigned integer after it.
pub fn extract_msgpack_timestamp(payload: &[u8]) -> Option<u64> {
    let data = payload.windows(5).position(|w| w == b"\xa4data").map_or(0, |i| i + 5);
    let at = data + payload.get(data..)?.windows(2).position(|w| w == b"\xa1t")? + 2;
    let rest = payload.get(at..)?;
    let int = |n: usize| -> Option<u64> {
        let bytes = rest.get(1..1 + n)?;
        Some(bytes.iter().fold(0u64, |v, &b| (v << 8) | u64::from(b)))
    };
    match *rest.first()? {
        b @ 0x00..=0x7f => Some(u64::from(b)),
        0xcc => int(1),
        0xcd => int(2),
        0xce => int(4),
        0xcf => int(8),
        _ => None,
    }
}

/// One worker process's connections and their counters.
pub struct LoadGenerator {
    ctx: Rc<SharedContext>,
}

impl LoadGenerator {
    /// A generator for `spec`; nothing happens until [`LoadGenerator::run`]. Reads its
    /// share of the token file, if the spec names one.
    pub fn new(spec: WorkerSpec) -> Result<Self, BenchError> {
        let tokens = match &spec.token_file {
            Some(path) => tokens::read_tokens(path, spec.first_connection, spec.connections)?,
            None => Vec::new(),
        };
        let interval = if spec.connect_rate > 0.0 {
            Duration::from_secs_f64(1.0 / spec.connect_rate)
        } else {
            Duration::ZERO
        };
        let in_flight = Semaphore::new(spec.max_in_flight.max(1));
        Ok(LoadGenerator {
            ctx: Rc::new(SharedContext {
                spec,
                state: RefCell::new(WorkerState::default()),
                pacer: ConnectPacer {
                    interval,
                    next: Cell::new(Instant::now()),
                },
                in_flight,
                tokens,
            }),
        })
    }

    /// Opens the connections and serves the parent's commands until told to quit.
    pub async fn run(self) -> Result<(), BenchError> {
        let ctx = self.ctx;
        let spec = ctx.spec.clone();
        if spec.targets.is_empty() {
            return Err(BenchError::Options("worker has no target".into()));
        }
        let (generation_tx, generation_rx) = watch::channel(0u64);
        for local in 0..spec.connections {
            tokio::task::spawn_local(run_connection(ctx.clone(), local, generation_rx.clone()));
        }
        drop(generation_rx);

        let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel();
        std::thread::spawn(move || read_commands(cmd_tx));

        let deadline = tokio::time::sleep(Duration::from_secs(spec.deadline_secs));
        tokio::pin!(deadline);
        let mut check = tokio::time::interval(Duration::from_millis(10));
        let progress_every = Duration::from_millis(spec.progress_ms.max(10));
        let mut next_progress = Instant::now() + progress_every;
        let mut ready_sent = false;
        loop {
            tokio::select! {
                _ = check.tick() => {
                    let st = ctx.state.borrow();
                    if !ready_sent && st.settled >= spec.connections {
                        ready_sent = true;
                        emit(&WorkerEvent::Ready {
                            subscribed: st.subscribed,
                            failures: st.failures,
                            first_ns: st.first_ns,
                            last_ns: st.last_ns,
                        });
                    }
                    if let Some(storm) = &st.storm {
                        if storm.resubscribed + storm.gave_up >= spec.connections {
                            emit(&WorkerEvent::StormDone {
                                resubscribed: storm.resubscribed,
                                failures: storm.failures,
                                start_ns: storm.start_ns,
                                last_ns: storm.last_ns,
                            });
                            drop(st);
                            ctx.state.borrow_mut().storm = None;
                            continue;
                        }
                    }
                    if Instant::now() >= next_progress {
                        next_progress += progress_every;
                        emit(&WorkerEvent::Progress { subscribed: st.subscribed, delivered: st.delivered });
                    }
                }
                cmd = cmd_rx.recv() => match cmd {
                    None | Some(WorkerCommand::Quit) => return Ok(()),
                    Some(WorkerCommand::Reset) => {
                        let mut st = ctx.state.borrow_mut();
                        st.latency.reset();
                        st.delivered = 0;
                        st.wire_bytes = 0;
                        st.compressed = 0;
                    }
                    Some(WorkerCommand::Report) => {
                        let st = ctx.state.borrow();
                        emit(&WorkerEvent::Report {
                            delivered: st.delivered,
                            wire_bytes: st.wire_bytes,
                            compressed: st.compressed,
                            latency: st.latency.to_buckets(),
                            failures: st.failures,
                            rss_bytes: proc_stats::sample_process(std::process::id() as i32).rss_bytes,
                        });
                    }
                    Some(WorkerCommand::Offsets) => {
                        emit(&WorkerEvent::Offsets { counts: ctx.state.borrow().offsets });
                    }
                    Some(WorkerCommand::Storm) => {
                        let generation = *generation_tx.borrow() + 1;
                        ctx.state.borrow_mut().storm = Some(StormProgress {
                            generation,
                            start_ns: monotonic_ns(),
                            resubscribed: 0,
                            gave_up: 0,
                            last_ns: 0,
                            failures: FailureCounts::default(),
                        });
                        // Tasks are woken only after this handler returns, so the
                        // storm record exists before the first reconnect counts.
                        let _ = generation_tx.send(generation);
                    }
                },
                _ = &mut deadline => {
                    emit(&WorkerEvent::Failed { message: format!("deadline of {} s reached", spec.deadline_secs) });
                    return Ok(());
                }
            }
        }
    }
}

/// Forwards stdin lines to the runtime; end of input means the parent is gone.
fn read_commands(tx: mpsc::UnboundedSender<WorkerCommand>) {
    use std::io::BufRead;
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str::<WorkerCommand>(&line) {
            Ok(cmd) => {
                if tx.send(cmd).is_err() {
                    return;
                }
            }
            Err(e) => eprintln!("worker: ignoring bad command {line:?}: {e}"),
        }
    }
    let _ = tx.send(WorkerCommand::Quit);
}

/// One connection's life: establish, receive until a storm or a loss, repeat per storm.
async fn run_connection(ctx: Rc<SharedContext>, local: usize, mut storms: watch::Receiver<u64>) {
    let spec = &ctx.spec;
    let global = spec.first_connection + local;
    let channel = format!("{}{}", spec.channel_prefix, global % spec.channels.max(1));
    let mut generation = 0u64;
    let mut cursor = StreamCursor::default();
    loop {
        let token = ctx.tokens.get(local).map(String::as_str);
        let target = if spec.failover {
            spec.targets[generation as usize % spec.targets.len()]
        } else {
            spec.targets[global % spec.targets.len()]
        };
        let recover = (spec.recover && generation > 0).then(|| cursor.position()).flatten();
        let asked_to_recover = recover.is_some();
        match establish(&ctx, global, target, &channel, token, generation, recover).await {
            Some((mut client, ack)) => {
                // A recovering connection counts as back once it has caught up.
                let mut catching_up =
                    spec.track_offsets && cursor.on_ack(&ack, asked_to_recover, &mut ctx.state.borrow_mut().offsets);
                if !catching_up {
                    ctx.on_subscribed(generation);
                }
                let storm_came = loop {
                    tokio::select! {
                        frame = client.next_frame() => match frame {
                            Ok(frame) => {
                                let payload = client.payload(&frame);
                                let heartbeat_answer = ctx.on_message(&frame, payload);
                                if spec.track_offsets && ctx.on_offset(payload, &mut cursor) && catching_up {
                                    catching_up = false;
                                    ctx.on_subscribed(generation);
                                }
                                let Some(answer) = heartbeat_answer else { continue };
                                if client.send_text(answer).await.is_err() {
                                    ctx.state.borrow_mut().failures.closed_by_server += 1;
                                    break false;
                                }
                            }
                            Err(_) => {
                                ctx.state.borrow_mut().failures.closed_by_server += 1;
                                break false;
                            }
                        },
                        changed = storms.changed() => break changed.is_ok(),
                    }
                };
                if catching_up {
                    // Never counted as subscribed: count it as having given up.
                    ctx.on_gave_up(generation);
                } else {
                    ctx.state.borrow_mut().subscribed -= 1;
                }
                drop(client);
                if !storm_came && storms.changed().await.is_err() {
                    return;
                }
            }
            None => {
                ctx.on_gave_up(generation);
                if storms.changed().await.is_err() {
                    return;
                }
            }
        }
        generation = *storms.borrow_and_update();
    }
}

/// Connects and subscribes, retrying with backoff; `None` after the last attempt.
async fn establish(
    ctx: &SharedContext,
    global: usize,
    target: SocketAddr,
    channel: &str,
    token: Option<&str>,
    generation: u64,
    recover: Option<StreamPosition>,
) -> Option<(WsClient, AckPosition)> {
    for attempt in 0..ctx.spec.attempts.max(1) {
        if attempt > 0 {
            // Exponential backoff with per-connection jitter, as a real client does,
            // so retries after a refusal do not arrive in lockstep.
            let base = 25u64 << attempt.min(6);
            let jitter = (global as u64).wrapping_mul(2654435761) % base.max(1);
            tokio::time::sleep(Duration::from_millis(base / 2 + jitter)).await;
        }
        if generation == 0 {
            // A storm reconnects all at once on purpose; only the first opening is paced.
            ctx.pacer.wait().await;
        }
        let Ok(_permit) = ctx.in_flight.acquire().await else {
            return None;
        };
        {
            let mut st = ctx.state.borrow_mut();
            if st.first_ns == 0 {
                st.first_ns = monotonic_ns();
            }
        }
        let source = ctx.source_for(global, generation);
        let result = tokio::time::timeout(
            ESTABLISH_TIMEOUT,
            connect_and_subscribe(target, source, &ctx.spec, channel, token, recover.clone()),
        )
        .await
        .unwrap_or_else(|_| Err(BenchError::Timeout("upgrade and subscribe".into())));
        match result {
            Ok(client) => return Some(client),
            Err(e) => ctx.count_failure(&e, generation),
        }
    }
    None
}

async fn connect_and_subscribe(
    target: SocketAddr,
    source: Option<Ipv4Addr>,
    spec: &WorkerSpec,
    channel: &str,
    token: Option<&str>,
    recover: Option<StreamPosition>,
) -> Result<(WsClient, AckPosition), BenchError> {
    let mut client = WsClient::connect(target, source, &spec.path, &spec.subprotocol, spec.offer_deflate).await?;
    let ack = match spec.protocol {
        WireProtocol::Shardcast => subscribe_shardcast(&mut client, channel, token, recover, Encoding::Json).await?,
        WireProtocol::ShardcastMsgPack => {
            subscribe_shardcast(&mut client, channel, token, recover, Encoding::MsgPack).await?
        }
        WireProtocol::SocketIo => {
            subscribe_socket_io(&mut client, channel).await?;
            AckPosition::default()
        }
        WireProtocol::Pusher => {
            subscribe_pusher(&mut client, channel).await?;
            AckPosition::default()
        }
    };
    Ok((client, ack))
}

/// Socket.IO: Engine.IO open, namespace connect, then a `subscribe` event with ack id 0.
async fn subscribe_socket_io(client: &mut WsClient, channel: &str) -> Result<(), BenchError> {
    let expect = |client: &WsClient, frame: &ReceivedFrame, prefix: &[u8], what: &str| {
        let payload = client.payload(frame);
        if payload.starts_with(prefix) {
            Ok(())
        } else {
            Err(BenchError::Protocol(format!(
                "expected {what}, got {:?}",
                String::from_utf8_lossy(&payload[..payload.len().min(80)])
            )))
        }
    };
    let open = client.next_frame().await?;
    expect(client, &open, b"0{", "Engine.IO open")?;
    client.send_text(b"40").await?;
    let connected = client.next_frame().await?;
    expect(client, &connected, b"40", "Socket.IO connect")?;
    let event = serde_json::to_string(&("subscribe", channel))?;
    client.send_text(format!("420{event}").as_bytes()).await?;
    loop {
        let frame = client.next_frame().await?;
        let payload = client.payload(&frame);
        if payload == b"2" {
            client.send_text(b"3").await?;
        } else if payload.starts_with(b"430") {
            return if payload.windows(9).any(|w| w == b"\"ok\":true") {
                Ok(())
            } else {
                Err(BenchError::Protocol("subscribe refused".into()))
            };
        }
    }
}

/// Pusher: `pusher:connection_established`, then `pusher:subscribe` on the public
/// channel, answered by `pusher_internal:subscription_succeeded`.
async fn subscribe_pusher(client: &mut WsClient, channel: &str) -> Result<(), BenchError> {
    let mut established = false;
    loop {
        let frame = client.next_frame().await?;
        match pusher_wire::classify(client.payload(&frame)) {
            PusherFrame::Established if !established => {
                established = true;
                client
                    .send_text(pusher_wire::subscribe_frame(channel).as_bytes())
                    .await?;
            }
            PusherFrame::Subscribed if established => return Ok(()),
            PusherFrame::Ping => client.send_text(pusher_wire::PONG).await?,
            PusherFrame::Error(text) => return Err(BenchError::Protocol(format!("Pusher error: {text}"))),
            other if !established => {
                return Err(BenchError::Protocol(format!(
                    "expected pusher:connection_established, got {other:?}"
                )))
            }
            _ => {}
        }
    }
}

/// The request id of the `connect` frame; the welcome that answers it echoes it.
const CONNECT_ID: u64 = 2;

/// shardcast's protocol: welcome (the answer to a `connect` with the token, when
/// there is one), then `subscribe` (with `recover` when given) answered by `ack`,
/// in `encoding`; the ack's position fields are returned.
async fn subscribe_shardcast(
    client: &mut WsClient,
    channel: &str,
    token: Option<&str>,
    recover: Option<StreamPosition>,
    encoding: Encoding,
) -> Result<AckPosition, BenchError> {
    let opcode = if encoding.is_binary() {
        shardcast_testkit::ws_frame::opcode::BINARY
    } else {
        shardcast_testkit::ws_frame::opcode::TEXT
    };
    if let Some(token) = token {
        let connect = ClientFrame::Connect {
            id: Some(CONNECT_ID),
            token: token.to_owned(),
            name: None,
            version: None,
        };
        let bytes = encode_client(encoding, &connect).map_err(|e| BenchError::Protocol(e.to_string()))?;
        client.send(opcode, &bytes).await?;
    }
    let frame = client.next_frame().await?;
    match decode_server(encoding, client.payload(&frame)) {
        Ok(ServerFrame::Welcome { id, .. }) if token.is_none() || id == Some(CONNECT_ID) => {}
        other => return Err(BenchError::Protocol(format!("expected welcome, got {other:?}"))),
    }
    let subscribe = ClientFrame::Subscribe {
        id: Some(1),
        channel: channel.to_owned(),
        token: None,
        latest: false,
        recover,
    };
    let bytes = encode_client(encoding, &subscribe).map_err(|e| BenchError::Protocol(e.to_string()))?;
    client.send(opcode, &bytes).await?;
    loop {
        let frame = client.next_frame().await?;
        match decode_server(encoding, client.payload(&frame)) {
            Ok(ServerFrame::Ack {
                id: Some(1),
                offset,
                epoch,
                recovered,
                ..
            }) => {
                return Ok(AckPosition {
                    offset,
                    epoch,
                    recovered,
                })
            }
            Ok(ServerFrame::Error { code, message, .. }) => {
                return Err(BenchError::Protocol(format!("subscribe refused: {code:?} {message}")))
            }
            Ok(_) => continue,
            Err(e) => return Err(BenchError::Protocol(format!("undecodable frame: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_found_in_message_frames() {
        let frame = br#"{"type":"message","channel":"t","seq":3,"data":{"t":123456789,"n":1,"p":"xx"}}"#;
        assert_eq!(extract_timestamp(frame), Some(123456789));
        assert_eq!(extract_timestamp(br#"{"type":"message","data":{}}"#), None);
        assert_eq!(extract_timestamp(br#"{"t":}"#), None);
        assert_eq!(extract_timestamp(br#"{"t":99999999999999999999999}"#), None);
    }

    #[test]
    fn timestamps_are_found_in_msgpack_message_frames() {
        let data = serde_json::json!({"t": 123456789012u64, "n": 1});
        let raw = serde_json::value::to_raw_value(&data).unwrap();
        let frame = shardcast_proto::encode_message(Encoding::MsgPack, "t", 3, None, &raw).unwrap();
        assert_eq!(&frame[1..14], b"\xa4type\xa7message");
        assert_eq!(extract_msgpack_timestamp(&frame), Some(123456789012));
        assert_eq!(extract_msgpack_timestamp(b"\x81\xa1t\x05"), Some(5));
        assert_eq!(extract_msgpack_timestamp(b"\x81\xa1t\xc0"), None);
    }
}
