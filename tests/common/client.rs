//! `Client`: a WebSocket client speaking the shardcast protocol (tokio-tungstenite
//! underneath), directly or through a load balancer, and a fleet of subscribers.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use shardcast_proto::{decode_server, encode_client, ClientFrame, Encoding, ServerFrame};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::WAIT;

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
        let ack = self.subscribe_reply(id, channel).await;
        assert_eq!(ack, ServerFrame::ack(Some(id)), "subscribe {channel}");
    }

    /// Subscribes a channel with history; returns the ack's position.
    pub async fn subscribe_history(&mut self, id: u64, channel: &str) -> (u64, String) {
        match self.subscribe_reply(id, channel).await {
            ServerFrame::Ack {
                id: Some(got),
                offset: Some(offset),
                epoch: Some(epoch),
                ..
            } if got == id => (offset, epoch),
            other => panic!("expected an ack with a position for {channel}, got {other:?}"),
        }
    }

    /// Sends a plain subscribe and returns the next frame (its reply).
    async fn subscribe_reply(&mut self, id: u64, channel: &str) -> ServerFrame {
        self.send(&ClientFrame::Subscribe {
            id: Some(id),
            channel: channel.into(),
            token: None,
            latest: false,
            recover: None,
        })
        .await;
        self.recv().await
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
