//! A burst of connects into a full gateway: every refused client reads an HTTP 503
//! with Retry-After (PROTOCOL.md 3.4), however many arrive at once, and none is
//! closed or reset without an answer.

mod common;

use common::*;
use shardcast_proto::Encoding;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Far past the 64 refusals the gateway lingers on at a time.
const BURST: usize = 700;

/// What one refused client saw.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// A 503 with Retry-After.
    Refused503,
    /// Some other response (its first line).
    Other(String),
    /// Closed without a byte.
    Silent,
    /// An error before any response (a reset).
    Error(std::io::ErrorKind),
}

async fn refused_client(gw: std::net::SocketAddr) -> Outcome {
    let attempt = async {
        let mut stream = TcpStream::connect(gw).await?;
        stream.write_all(upgrade_request(gw).as_bytes()).await?;
        let mut got = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                // A reset after the whole response was read still counts as answered.
                Err(_) if got.windows(4).any(|w| w == b"\r\n\r\n") => break,
                Err(e) => return Err(e),
            }
        }
        Ok::<_, std::io::Error>(got)
    };
    match tokio::time::timeout(WAIT, attempt).await {
        Err(_) => Outcome::Error(std::io::ErrorKind::TimedOut),
        Ok(Err(e)) => Outcome::Error(e.kind()),
        Ok(Ok(got)) if got.is_empty() => Outcome::Silent,
        Ok(Ok(got)) => {
            let text = String::from_utf8_lossy(&got);
            if text.starts_with("HTTP/1.1 503 ") && text.to_ascii_lowercase().contains("\r\nretry-after: ") {
                Outcome::Refused503
            } else {
                Outcome::Other(text.lines().next().unwrap_or("").to_owned())
            }
        }
    }
}

/// Sends a burst of connects and asserts that every one read a 503.
async fn every_one_reads_a_503(gateway: std::net::SocketAddr) {
    let burst: Vec<_> = (0..BURST).map(|_| tokio::spawn(refused_client(gateway))).collect();
    let mut outcomes = std::collections::BTreeMap::<Outcome, usize>::new();
    for client in burst {
        *outcomes.entry(client.await.expect("join")).or_default() += 1;
    }
    assert_eq!(
        outcomes.get(&Outcome::Refused503),
        Some(&BURST),
        "every refused client reads a 503: {outcomes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_of_a_burst_into_a_full_gateway_reads_a_503() {
    let gw = Gateway::start(&["--max-connections", "4"]);
    let mut admitted = Vec::new();
    for _ in 0..4 {
        admitted.push(gw.connect(Encoding::Json).await);
    }
    every_one_reads_a_503(gw.ws).await;
    assert_eq!(
        gw.metric("shardcast_connections_refused_total{reason=\"max_connections\"}")
            .await,
        BURST as f64
    );
    // The admitted ones were not disturbed.
    for (id, c) in admitted.iter_mut().enumerate() {
        assert!(c.roundtrip(id as u64).await.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_of_a_burst_into_a_gateway_out_of_descriptors_reads_a_503() {
    let gw = Gateway::launch(Launch {
        args: &["--fd-reserve", "96"],
        nofile: Some(256),
    });
    // Fill until the descriptor headroom refuses.
    let mut admitted = Vec::new();
    while let Ok(c) = Client::try_connect(gw.ws, Encoding::Json).await {
        admitted.push(c);
        assert!(admitted.len() < 256, "never refused");
    }
    every_one_reads_a_503(gw.ws).await;
    assert_eq!(
        gw.metric("shardcast_connections_refused_total{reason=\"fd_exhausted\"}")
            .await,
        0.0
    );
}
