//! The floor server (`shardcast-bench floor`): the least work a WebSocket fan-out
//! can do, as the yardstick for shardcast's deliveries per CPU-second.
//!
//! It performs the upgrade, sends a pre-built welcome, answers every client frame
//! with a pre-built ack (so the same load generator drives it), and on
//! `POST /api/publish` builds each publication's frame once and writes it to every
//! socket with one non-blocking `write` each. No channels, no per-socket queues: a
//! socket that cannot take a whole frame at once is closed and counted. Sockets are
//! split over `--threads` single-threaded event loops, like shardcast's shards.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use slab::Slab;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::LocalSet;

use crate::error::{BenchError, IoContext};
use shardcast_testkit::http_head::{find_head_end, header_value};
use shardcast_testkit::ws_frame::{self, opcode, parse_header};

/// Sent on every new connection: the fields the load generator checks.
const WELCOME: &[u8] = br#"{"type":"welcome","version":1,"node":"floor","shard":0,"ping_interval_ms":0}"#;
/// Sent for every client frame: the load generator always subscribes with id 1.
const ACK: &[u8] = br#"{"type":"ack","id":1}"#;

/// Where the floor listens.
#[derive(Debug, Clone)]
pub struct FloorOptions {
    /// WebSocket address.
    pub listen: SocketAddr,
    /// Publish API address.
    pub admin_listen: SocketAddr,
    /// Event-loop threads.
    pub threads: usize,
}

enum LoopCommand {
    Adopt(std::net::TcpStream),
    /// A frame for every socket; the sender, when given, hears when it was written,
    /// so the API answers after the fan-out and the floor never queues publications.
    Broadcast(Arc<[u8]>, Option<oneshot::Sender<()>>),
}

/// Counters shared by the loops and the API.
#[derive(Default)]
struct FloorCounters {
    sockets: AtomicUsize,
    closed_full: AtomicU64,
}

/// Runs the floor server until killed, announcing its addresses on stderr.
pub fn run_floor(opts: FloorOptions) -> Result<(), BenchError> {
    let ws = std::net::TcpListener::bind(opts.listen).context(|| format!("bind {}", opts.listen))?;
    let admin = std::net::TcpListener::bind(opts.admin_listen).context(|| format!("bind {}", opts.admin_listen))?;
    let ws_addr = ws.local_addr().context(|| "local_addr".into())?;
    let admin_addr = admin.local_addr().context(|| "local_addr".into())?;
    eprintln!(
        "{}",
        serde_json::json!({"message": "listening", "ws": ws_addr.to_string(), "admin": admin_addr.to_string()})
    );
    serve_floor(ws, admin, opts.threads)
}

/// Serves WebSockets on `ws` and the publish API on `admin` until the process ends.
pub fn serve_floor(ws: std::net::TcpListener, admin: std::net::TcpListener, threads: usize) -> Result<(), BenchError> {
    let counters = Arc::new(FloorCounters::default());
    let mut loops = Vec::new();
    for i in 0..threads.max(1) {
        let (tx, rx) = mpsc::unbounded_channel();
        let counters = counters.clone();
        std::thread::Builder::new()
            .name(format!("floor-{i}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("floor loop {i}: {e}");
                        return;
                    }
                };
                LocalSet::new().block_on(&runtime, event_loop(rx, counters));
            })
            .context(|| "spawn a floor thread".into())?;
        loops.push(tx);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context(|| "build the floor runtime".into())?;
    runtime.block_on(async move {
        let into_tokio = |l: std::net::TcpListener| {
            l.set_nonblocking(true)?;
            TcpListener::from_std(l)
        };
        let ws = into_tokio(ws).context(|| "register the WebSocket listener".into())?;
        let admin = into_tokio(admin).context(|| "register the API listener".into())?;
        let loops = Arc::new(loops);
        tokio::spawn(serve_api(admin, loops.clone(), counters.clone()));
        let mut next = 0usize;
        loop {
            let Ok((stream, _)) = ws.accept().await else {
                continue;
            };
            let Ok(std_stream) = stream.into_std() else {
                continue;
            };
            let _ = loops[next % loops.len()].send(LoopCommand::Adopt(std_stream));
            next = next.wrapping_add(1);
        }
    })
}

type Sockets = Rc<RefCell<Slab<Rc<TcpStream>>>>;

async fn event_loop(mut rx: mpsc::UnboundedReceiver<LoopCommand>, counters: Arc<FloorCounters>) {
    let sockets: Sockets = Rc::new(RefCell::new(Slab::new()));
    while let Some(cmd) = rx.recv().await {
        match cmd {
            LoopCommand::Adopt(stream) => {
                let Ok(stream) = TcpStream::from_std(stream) else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::task::spawn_local(serve_socket(Rc::new(stream), sockets.clone(), counters.clone()));
            }
            LoopCommand::Broadcast(frame, written) => {
                let mut full = Vec::new();
                for (key, s) in sockets.borrow().iter() {
                    match s.try_write(&frame) {
                        Ok(n) if n == frame.len() => {}
                        // A partial frame would corrupt the stream and the floor keeps
                        // no queue to finish it later: the socket is closed instead.
                        _ => full.push(key),
                    }
                }
                for key in full {
                    if let Some(s) = sockets.borrow_mut().try_remove(key) {
                        shutdown(&s);
                        counters.closed_full.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if let Some(written) = written {
                    let _ = written.send(());
                }
            }
        }
    }
}

fn shutdown(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    // SAFETY: shutdown(2) on a socket we own; the reader task then sees EOF and drops it.
    unsafe {
        libc::shutdown(stream.as_raw_fd(), libc::SHUT_RDWR);
    }
}

async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn read_some(stream: &TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    loop {
        stream.readable().await?;
        buf.reserve(1024);
        match stream.try_read_buf(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

async fn serve_socket(stream: Rc<TcpStream>, sockets: Sockets, counters: Arc<FloorCounters>) {
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(end) = find_head_end(&buf) {
            break end;
        }
        if buf.len() > 8192 || !matches!(read_some(&stream, &mut buf).await, Ok(n) if n > 0) {
            return;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let Some(key) = header_value(&head, "sec-websocket-key") else {
        let _ = write_all(&stream, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n").await;
        return;
    };
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let protocol = header_value(&head, "sec-websocket-protocol")
        .and_then(|p| p.split(',').map(str::trim).find(|p| *p == "shardcast.v1.json"))
        .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
        .unwrap_or_default();
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{protocol}\r\n"
    )
    .into_bytes();
    response.extend(ws_frame::encode_frame(opcode::TEXT, WELCOME, None));
    if write_all(&stream, &response).await.is_err() {
        return;
    }
    buf.drain(..head_end);
    let key = sockets.borrow_mut().insert(stream.clone());
    counters.sockets.fetch_add(1, Ordering::Relaxed);
    let ack = ws_frame::encode_frame(opcode::TEXT, ACK, None);
    'read: loop {
        // Client frames are only counted and answered, never unmasked or parsed.
        while let Ok(Some(h)) = parse_header(&buf) {
            if buf.len() < h.frame_len() {
                break;
            }
            buf.drain(..h.frame_len());
            let answer = matches!(h.opcode, opcode::TEXT | opcode::BINARY);
            if h.opcode == opcode::CLOSE || (answer && write_all(&stream, &ack).await.is_err()) {
                break 'read;
            }
        }
        if parse_header(&buf).is_err() {
            break;
        }
        if !matches!(read_some(&stream, &mut buf).await, Ok(n) if n > 0) {
            break;
        }
        if buf.capacity() > 16 * 1024 && buf.is_empty() {
            buf = Vec::with_capacity(1024);
        }
    }
    sockets.borrow_mut().try_remove(key);
    counters.sockets.fetch_sub(1, Ordering::Relaxed);
}

#[derive(Deserialize)]
struct PublishItem<'a> {
    #[serde(borrow)]
    channel: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
}

async fn serve_api(
    listener: TcpListener,
    loops: Arc<Vec<mpsc::UnboundedSender<LoopCommand>>>,
    counters: Arc<FloorCounters>,
) {
    let seq = Arc::new(AtomicU64::new(0));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(serve_api_connection(
            stream,
            loops.clone(),
            counters.clone(),
            seq.clone(),
        ));
    }
}

async fn serve_api_connection(
    mut stream: TcpStream,
    loops: Arc<Vec<mpsc::UnboundedSender<LoopCommand>>>,
    counters: Arc<FloorCounters>,
    seq: Arc<AtomicU64>,
) {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    loop {
        let head_end = loop {
            if let Some(end) = find_head_end(&buf) {
                break end;
            }
            buf.reserve(8192);
            if !matches!(stream.read_buf(&mut buf).await, Ok(n) if n > 0) {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let len: usize = header_value(&head, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            buf.reserve(len);
            if !matches!(stream.read_buf(&mut buf).await, Ok(n) if n > 0) {
                return;
            }
        }
        let (status, body) = if head.starts_with("POST /api/publish ") {
            publish(&buf[head_end..head_end + len], &loops, &counters, &seq).await
        } else if head.starts_with("GET /metrics ") {
            (
                200,
                format!(
                    "floor_sockets {}\nfloor_closed_full_total {}\n",
                    counters.sockets.load(Ordering::Relaxed),
                    counters.closed_full.load(Ordering::Relaxed)
                ),
            )
        } else {
            (404, r#"{"ok":false}"#.to_owned())
        };
        buf.drain(..head_end + len);
        let response = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn publish(
    body: &[u8],
    loops: &[mpsc::UnboundedSender<LoopCommand>],
    counters: &FloorCounters,
    seq: &AtomicU64,
) -> (u16, String) {
    // Told apart by the first byte, as shardcast does: serde's untagged enums cannot
    // hold borrowed raw JSON.
    let batch = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let parsed = if batch {
        serde_json::from_slice::<Vec<PublishItem>>(body)
    } else {
        serde_json::from_slice::<PublishItem>(body).map(|item| vec![item])
    };
    let items = match parsed {
        Ok(items) => items,
        Err(e) => {
            return (
                400,
                serde_json::json!({"ok": false, "error": e.to_string()}).to_string(),
            )
        }
    };
    let last = items.len().saturating_sub(1);
    let mut written = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let n = seq.fetch_add(1, Ordering::Relaxed) + 1;
        let channel = serde_json::to_string(&item.channel).unwrap_or_default();
        let text = format!(
            r#"{{"type":"message","channel":{channel},"seq":{n},"data":{}}}"#,
            item.data.get()
        );
        let frame: Arc<[u8]> = ws_frame::encode_frame(opcode::TEXT, text.as_bytes(), None).into();
        for l in loops {
            let done = (i == last).then(|| {
                let (tx, rx) = oneshot::channel();
                written.push(rx);
                tx
            });
            let _ = l.send(LoopCommand::Broadcast(frame.clone(), done));
        }
    }
    for rx in written {
        let _ = rx.await;
    }
    let subscribers = counters.sockets.load(Ordering::Relaxed);
    (200, format!(r#"{{"ok":true,"subscribers":{subscribers}}}"#))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http_client::ApiClient;
    use crate::loadgen::extract_timestamp;
    use crate::ws_client::WsClient;

    /// The harness end to end in one process: the load generator's client upgrades on
    /// the floor, gets welcome and ack, and receives a publication with its timestamp.
    #[tokio::test]
    async fn floor_serves_the_load_generator_client() {
        let ws = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (ws_addr, admin_addr) = (ws.local_addr().unwrap(), admin.local_addr().unwrap());
        std::thread::spawn(move || serve_floor(ws, admin, 1));

        let mut client = WsClient::connect(ws_addr, None, "/ws", "shardcast.v1.json", false)
            .await
            .unwrap();
        let welcome = client.next_frame().await.unwrap();
        assert!(client.payload(&welcome).starts_with(br#"{"type":"welcome""#));
        client
            .send_text(br#"{"op":"subscribe","id":1,"channel":"c"}"#)
            .await
            .unwrap();
        let ack = client.next_frame().await.unwrap();
        assert_eq!(client.payload(&ack), ACK);

        let mut api = ApiClient::connect(admin_addr).await.unwrap();
        let (status, body) = api
            .request("POST", "/api/publish", br#"{"channel":"c","data":{"t":42,"n":0}}"#)
            .await
            .unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let message = client.next_frame().await.unwrap();
        let payload = client.payload(&message);
        assert!(payload.starts_with(br#"{"type":"message","channel":"c","seq":1"#));
        assert_eq!(extract_timestamp(payload), Some(42));
    }
}
