//! Test harness: runs the real `shardcast` binary on loopback ports and talks to it
//! over real sockets, as a user's client and a user's backend would.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use shardcast_proto::{decode_server, encode_client, ClientFrame, Encoding, ServerFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A running gateway process.
pub struct Gateway {
    child: Child,
    pub ws: SocketAddr,
    pub admin: SocketAddr,
    pub logs: Arc<Mutex<Vec<String>>>,
}

/// Options for starting a gateway.
#[derive(Default)]
pub struct Launch<'a> {
    pub args: &'a [&'a str],
    /// Hard and soft RLIMIT_NOFILE for the gateway process.
    pub nofile: Option<u64>,
}

impl Gateway {
    pub fn start(args: &[&str]) -> Gateway {
        Gateway::launch(Launch { args, nofile: None })
    }

    pub fn launch(opts: Launch<'_>) -> Gateway {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardcast"));
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .args(["--log", "info"])
        .args(opts.args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        if let Some(n) = opts.nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe and touches only this child.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("start shardcast");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["message"] == "listening" {
                        let _ = tx.send((
                            v["ws"].as_str().unwrap_or("").to_owned(),
                            v["admin"].as_str().unwrap_or("").to_owned(),
                        ));
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let (ws, admin) = match rx.recv_timeout(WAIT) {
            Ok(addrs) => addrs,
            Err(_) => {
                let _ = child.kill();
                panic!("gateway did not start: {:?}", logs.lock().unwrap());
            }
        };
        Gateway {
            child,
            ws: ws.parse().expect("ws addr"),
            admin: admin.parse().expect("admin addr"),
            logs,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Resident memory of the gateway process in bytes.
    pub fn rss(&self) -> u64 {
        let statm = std::fs::read_to_string(format!("/proc/{}/statm", self.pid())).expect("statm");
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    pub async fn http(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        http(self.admin, method, path, body, &[]).await
    }

    pub async fn publish(&self, channel: &str, data: serde_json::Value) -> serde_json::Value {
        let body = serde_json::json!({"channel": channel, "data": data}).to_string();
        let (status, text) = self.http("POST", "/api/publish", Some(&body)).await;
        assert_eq!(status, 200, "publish failed: {text}");
        serde_json::from_str(&text).expect("publish reply is JSON")
    }

    pub async fn metrics(&self) -> String {
        self.http("GET", "/metrics", None).await.1
    }

    /// The value of one series (name plus exact label set, e.g. `{reason="x"}`), 0 if absent.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series)
    }

    /// Polls a metric until `pred` holds or the wait runs out; returns the last value.
    pub async fn wait_metric(&self, series: &str, pred: impl Fn(f64) -> bool) -> f64 {
        let start = Instant::now();
        loop {
            let v = self.metric(series).await;
            if pred(v) || start.elapsed() > WAIT {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn connect(&self, encoding: Encoding) -> Client {
        Client::connect(self.ws, encoding).await
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// A minimal HTTP/1.1 client: one request per connection.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect admin");
    let body = body.unwrap_or("");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).await.expect("send request");
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .expect("read response");
    parse_http(&raw)
}

pub fn parse_http(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw).to_string();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket client speaking the shardcast protocol.
pub struct Client {
    pub ws: Ws,
    pub encoding: Encoding,
    pub shard: u32,
    pub node: String,
}

impl Client {
    pub async fn connect(addr: SocketAddr, encoding: Encoding) -> Client {
        Client::try_connect(addr, encoding).await.expect("WebSocket connect")
    }

    pub async fn try_connect(
        addr: SocketAddr,
        encoding: Encoding,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let mut req = format!("ws://{addr}/ws").into_client_request()?;
        if encoding == Encoding::MsgPack {
            req.headers_mut()
                .insert("Sec-WebSocket-Protocol", encoding.subprotocol().parse().unwrap());
        }
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .expect("connect in time")?;
        Ok(Client::after_upgrade(ws, encoding).await)
    }

    /// Wraps an upgraded WebSocket and reads the welcome frame.
    pub async fn after_upgrade(ws: Ws, encoding: Encoding) -> Client {
        let mut client = Client {
            ws,
            encoding,
            shard: 0,
            node: String::new(),
        };
        match client.recv().await {
            ServerFrame::Welcome {
                shard, node, version, ..
            } => {
                assert_eq!(version, 1);
                client.shard = shard;
                client.node = node;
            }
            other => panic!("expected welcome, got {other:?}"),
        }
        client
    }

    pub async fn send(&mut self, frame: &ClientFrame) {
        self.send_raw(encode_client(self.encoding, frame).expect("encodes"))
            .await;
    }

    pub async fn send_raw(&mut self, bytes: Vec<u8>) {
        let msg = match self.encoding {
            Encoding::Json => Message::Text(String::from_utf8(bytes).expect("utf8").into()),
            Encoding::MsgPack => Message::Binary(bytes.into()),
        };
        self.ws.send(msg).await.expect("send");
    }

    /// The next protocol frame (control frames are skipped).
    pub async fn recv(&mut self) -> ServerFrame {
        let bytes = self.recv_bytes().await;
        decode_server(self.encoding, &bytes).expect("decodable server frame")
    }

    /// The next data message's raw bytes.
    pub async fn recv_bytes(&mut self) -> Vec<u8> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("frame in time")
                .expect("stream open")
                .expect("frame");
            match msg {
                Message::Text(t) => return t.as_bytes().to_vec(),
                Message::Binary(b) => return b.to_vec(),
                Message::Close(c) => panic!("unexpected close: {c:?}"),
                _ => continue,
            }
        }
    }

    /// Waits for the server's close frame, skipping data; returns its code and reason.
    pub async fn expect_close(&mut self) -> (u16, String) {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next()).await.expect("close in time");
            match msg {
                Some(Ok(Message::Close(Some(frame)))) => return (u16::from(frame.code), frame.reason.to_string()),
                Some(Ok(Message::Close(None))) => return (1005, String::new()),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("error instead of close frame: {e}"),
                None => panic!("stream ended without a close frame"),
            }
        }
    }

    pub async fn subscribe(&mut self, id: u64, channel: &str) {
        self.send(&ClientFrame::Subscribe {
            id: Some(id),
            channel: channel.into(),
            token: None,
        })
        .await;
        assert_eq!(self.recv().await, ServerFrame::ack(Some(id)), "subscribe {channel}");
    }

    /// Sends a protocol ping and waits for its pong, proving the connection is healthy
    /// and that nothing the server sent before the pong is still unread.
    pub async fn roundtrip(&mut self, id: u64) -> Vec<ServerFrame> {
        self.send(&ClientFrame::Ping { id: Some(id) }).await;
        let mut before = Vec::new();
        loop {
            match self.recv().await {
                ServerFrame::Pong { id: Some(got) } if got == id => return before,
                other => before.push(other),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let _ = CloseCode::Normal;
    }
}

/// Loads a vector file from proto/vectors.
pub fn vectors(file: &str) -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/proto/vectors/");
    serde_json::from_str(&std::fs::read_to_string(format!("{path}{file}")).expect("vector file")).expect("vector JSON")
}

pub fn vector<'a>(set: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    set.as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("vector {name}"))
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A WebSocket client on a raw socket, for sending frames no well-behaved library would.
pub struct RawClient {
    pub stream: TcpStream,
}

impl RawClient {
    /// Upgrades a raw socket and reads the 101 response and the welcome frame.
    pub async fn connect(addr: SocketAddr) -> RawClient {
        RawClient::upgrade(TcpStream::connect(addr).await.expect("connect"), addr).await
    }

    /// Upgrades an already connected socket.
    pub async fn upgrade(mut stream: TcpStream, addr: SocketAddr) -> RawClient {
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).await.expect("response head");
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
        let mut raw = RawClient { stream };
        let (opcode, _) = raw.read_frame().await;
        assert_eq!(opcode, 1, "welcome is a text frame");
        raw
    }

    /// Sends a frame with the given first byte and payload, masked unless `masked` is false.
    pub async fn send_frame(&mut self, first: u8, payload: &[u8], masked: bool) {
        let mut out = vec![first];
        let mask_bit = if masked { 0x80 } else { 0 };
        if payload.len() < 126 {
            out.push(mask_bit | payload.len() as u8);
        } else if payload.len() < 65536 {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        } else {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
        let mask = [1u8, 2, 3, 4];
        if masked {
            out.extend_from_slice(&mask);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        } else {
            out.extend_from_slice(payload);
        }
        self.stream.write_all(&out).await.expect("send frame");
    }

    /// Reads one server frame: (opcode, payload).
    pub async fn read_frame(&mut self) -> (u8, Vec<u8>) {
        tokio::time::timeout(WAIT, async {
            let mut h = [0u8; 2];
            self.stream.read_exact(&mut h).await.expect("frame header");
            let mut len = (h[1] & 0x7f) as usize;
            if len == 126 {
                let mut b = [0u8; 2];
                self.stream.read_exact(&mut b).await.unwrap();
                len = u16::from_be_bytes(b) as usize;
            } else if len == 127 {
                let mut b = [0u8; 8];
                self.stream.read_exact(&mut b).await.unwrap();
                len = u64::from_be_bytes(b) as usize;
            }
            let mut payload = vec![0u8; len];
            self.stream.read_exact(&mut payload).await.expect("frame payload");
            (h[0] & 0x0f, payload)
        })
        .await
        .expect("frame in time")
    }

    /// Reads frames until a close frame, answers it as RFC 6455 asks; returns its code.
    pub async fn expect_close(&mut self) -> u16 {
        loop {
            let (op, payload) = self.read_frame().await;
            if op == 8 {
                self.send_frame(0x88, &payload[..2], true).await;
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
    }
}

/// A free TCP port on loopback (bound and released; good enough for test servers).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real redis-server process on a loopback port, with no persistence.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    extra: Vec<String>,
    dir: std::path::PathBuf,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(free_port(), &[])
    }

    pub fn start_with(port: u16, extra: &[&str]) -> RedisServer {
        let dir = std::env::temp_dir().join(format!("shardcast-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = RedisServer {
            port,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            dir,
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and waits until it answers PING.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--dir", self.dir.to_str().unwrap()])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        self.child = Some(child);
        let start = Instant::now();
        while self.cli(&["PING"]) != "PONG" {
            assert!(start.elapsed() < WAIT, "redis-server did not start on {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs redis-cli against this server; returns its trimmed output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Gateway {
    /// Waits until /health/ready answers `status`.
    pub async fn wait_ready(&self, status: u16) {
        let start = Instant::now();
        loop {
            let (got, body) = self.http("GET", "/health/ready", None).await;
            if got == status {
                return;
            }
            assert!(
                start.elapsed() < WAIT,
                "readiness stayed {got} ({body}), wanted {status}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Opens `n` subscribed clients of `channel`, `CONCURRENT` at a time.
pub async fn subscribers(addr: SocketAddr, channel: &str, n: usize) -> Vec<Client> {
    const CONCURRENT: usize = 100;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let batch = CONCURRENT.min(n - out.len());
        let opened = futures_util::future::join_all((0..batch).map(|_| async move {
            let mut c = Client::connect(addr, Encoding::Json).await;
            c.subscribe(1, channel).await;
            c
        }))
        .await;
        out.extend(opened);
    }
    out
}

impl Gateway {
    /// The node id this gateway announced in its "listening" log line.
    pub fn node_id_from_logs(&self) -> String {
        let logs = self.logs.lock().unwrap();
        logs.iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message"] == "listening")
            .and_then(|v| v["node"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------
// Hardening helpers (tests/faults_*.rs, tests/abuse.rs, tests/soak.rs): a lean raw
// WebSocket client for thousands of sockets, nginx in front of gateways, and the
// process readings a soak or a fault test compares.
// ---------------------------------------------------------------------------

/// The upgrade request the lean clients send (no subprotocol: JSON).
pub fn upgrade_request(addr: SocketAddr) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// Connects from `source` (any port), upgrades, and reads up to the end of the welcome
/// frame; returns the socket, ready for frames. Errors instead of panicking, so a
/// caller opening thousands can count failures. The welcome is found by its bytes,
/// not parsed: this client exists to be cheap.
pub async fn lean_connect(gw: SocketAddr, source: Option<std::net::IpAddr>) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let mut stream = socket.connect(gw).await?;
    stream.write_all(upgrade_request(gw).as_bytes()).await?;
    // 101 head (129 bytes) + welcome frame (about 90 bytes): read until the welcome
    // JSON object closes.
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            let head = String::from_utf8_lossy(&buf).lines().next().unwrap_or("").to_owned();
            return Err(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, head));
        }
        buf.extend_from_slice(&chunk[..n]);
        if !buf.starts_with(b"HTTP/1.1 101") && buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf).lines().next().unwrap_or("").to_owned();
            return Err(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, head));
        }
        if buf.ends_with(b"}") && buf.windows(9).any(|w| w == b"\"welcome\"") {
            return Ok(stream);
        }
    }
}

/// A masked client text frame.
pub fn masked_text(payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut out = vec![0x81];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Reads one unmasked server frame from a plain socket: (opcode, payload).
pub async fn read_server_frame(stream: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    stream.read_exact(&mut h).await?;
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            stream.read_exact(&mut b).await?;
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            stream.read_exact(&mut b).await?;
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await?;
    Ok((h[0] & 0x0f, payload))
}

/// Reads frames until a close frame; returns its code (None if the socket ended first).
pub async fn read_until_close(stream: &mut TcpStream, limit: Duration) -> Option<u16> {
    tokio::time::timeout(limit, async {
        loop {
            match read_server_frame(stream).await {
                Ok((8, p)) if p.len() >= 2 => return Some(u16::from_be_bytes([p[0], p[1]])),
                Ok((8, _)) => return Some(1005),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    })
    .await
    .ok()
    .flatten()
}

/// Sum of a per-shard gauge (`shardcast_connections`, `shardcast_subscriptions`) over all shards.
pub fn sum_series(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// What /proc says about a process: resident memory, open descriptors, threads.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    pub rss_bytes: u64,
    pub fds: usize,
    pub threads: usize,
}

pub fn proc_sample(pid: i32) -> ProcSample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    ProcSample {
        rss_bytes: field("VmRSS:") * 1024,
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0),
        threads: field("Threads:") as usize,
    }
}

/// nginx running deploy/nginx/nginx.conf (upstreams and listen address rewritten to
/// loopback, as tests/load_balancer.rs does); killed on drop.
pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    dir: std::path::PathBuf,
}

impl Nginx {
    pub fn start(upstreams: &[SocketAddr]) -> Nginx {
        let dir = std::env::temp_dir().join(format!("shardcast-nginx-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nginx/nginx.conf"))
            .expect("nginx.conf");
        let servers: Vec<String> = upstreams
            .iter()
            .map(|u| format!("        server {u} max_fails=1 fail_timeout=10s;"))
            .collect();
        let config = replace_marked(&shipped, "upstreams", &servers);
        let config = replace_marked(&config, "listen", &[format!("        listen {addr};")]);
        // The shipped file asks for 262144 descriptors per worker; a test process may hold 20000.
        let config = config.replace("worker_rlimit_nofile 262144;", "worker_rlimit_nofile 8192;");
        let config = config.replace("worker_processes auto;", "worker_processes 1;");
        let path = dir.join("nginx.conf");
        std::fs::write(&path, config).unwrap();
        // One process, no master: killing the child on drop then leaves no orphaned
        // worker behind (a SIGKILLed master does not take its workers with it).
        let globals = format!(
            "daemon off; master_process off; pid {}/nginx.pid; error_log {}/error.log;",
            dir.display(),
            dir.display()
        );
        let mut child = Command::new("nginx")
            .args([
                "-p",
                dir.to_str().unwrap(),
                "-c",
                path.to_str().unwrap(),
                "-g",
                &globals,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (apt-get install nginx)");
        let start = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("nginx exited: {status}");
            }
            assert!(start.elapsed() < WAIT, "nginx did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx { child, addr, dir }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Replaces the lines between `# BEGIN name` and `# END name` with `lines`.
pub fn replace_marked(config: &str, name: &str, lines: &[String]) -> String {
    let (begin, end) = (format!("# BEGIN {name}"), format!("# END {name}"));
    let mut out = Vec::new();
    let mut skipping = false;
    for line in config.lines() {
        if line.trim() == begin {
            skipping = true;
            out.push(line.to_owned());
            out.extend(lines.iter().cloned());
        } else if line.trim() == end {
            skipping = false;
            out.push(line.to_owned());
        } else if !skipping {
            out.push(line.to_owned());
        }
    }
    out.join("\n") + "\n"
}

/// Percentile (0-100) of a set of durations, by nearest rank.
pub fn percentile(samples: &mut [Duration], pct: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let rank = ((pct / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}
// --- end of hardening helpers ---

/// Upgrades through a proxy from a chosen source address (load balancers hash on
/// it), optionally sending a cookie; returns the client and the cookie the proxy set.
pub async fn connect_via(
    proxy: SocketAddr,
    from: std::net::IpAddr,
    cookie: Option<&str>,
) -> Result<(Client, Option<String>), String> {
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket.bind(SocketAddr::new(from, 0)).map_err(|e| e.to_string())?;
    let stream = socket.connect(proxy).await.map_err(|e| e.to_string())?;
    let mut req = format!("ws://{proxy}/ws")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    if let Some(c) = cookie {
        req.headers_mut()
            .insert("Cookie", c.parse().map_err(|_| "bad cookie".to_owned())?);
    }
    let (ws, resp) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream)),
    )
    .await
    .map_err(|_| "upgrade timed out".to_owned())?
    .map_err(|e| e.to_string())?;
    let set_cookie = resp
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").to_owned());
    Ok((Client::after_upgrade(ws, Encoding::Json).await, set_cookie))
}

/// Starts `n` gateways with the same arguments and waits until each is ready. Each is
/// an `Option` so a test can take one out to stop or kill it.
pub async fn ready_gateways(n: usize, args: &[&str]) -> Vec<Option<Gateway>> {
    let gws: Vec<Option<Gateway>> = (0..n).map(|_| Some(Gateway::start(args))).collect();
    for gw in gws.iter().flatten() {
        gw.wait_ready(200).await;
    }
    gws
}
