//! Connect attempts per source address (`--connect-rate-per-ip`, PROTOCOL.md 18.5):
//! a burst from one address gets its bucket's worth of upgrades and HTTP 429 with
//! `Retry-After: 1` for the rest, counted as `rate_limited`; another address keeps
//! its own bucket; a second later the first one connects again.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use shardcast_testkit::http_head::{find_head_end, header_value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const RATE: usize = 5;
const BURST: usize = 20;
const HOME: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// What one connect attempt got.
#[derive(Debug)]
// The fields are there to be held (the socket) or printed (assertion messages).
#[allow(dead_code)]
enum Outcome {
    /// `101 Switching Protocols`; the socket stays open.
    Upgraded(TcpStream),
    /// `429` with `Retry-After: 1` and `error.code` `rate_limited`.
    RateLimited,
    /// Anything else: the response head, or the error.
    Other(String),
}

impl Outcome {
    fn is_upgraded(&self) -> bool {
        matches!(self, Outcome::Upgraded(_))
    }
}

/// Connects from `source`, sends an upgrade request and reads the answer.
async fn attempt(gw: SocketAddr, source: IpAddr) -> Outcome {
    let exchange = async {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source, 0))?;
        let mut stream = socket.connect(gw).await?;
        stream.write_all(upgrade_request(gw).as_bytes()).await?;
        let mut got = Vec::new();
        let mut chunk = [0u8; 1024];
        let head_end = loop {
            if let Some(end) = find_head_end(&got) {
                break end;
            }
            match stream.read(&mut chunk).await? {
                0 => return Ok(Outcome::Other(format!("closed after {got:?}"))),
                n => got.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&got[..head_end]).into_owned();
        if head.starts_with("HTTP/1.1 101 ") {
            return Ok(Outcome::Upgraded(stream));
        }
        // A refusal is followed by its body and the gateway's close.
        loop {
            match stream.read(&mut chunk).await {
                Ok(n) if n > 0 => got.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
        let body: serde_json::Value = serde_json::from_slice(&got[head_end..]).unwrap_or_default();
        let limited = head.starts_with("HTTP/1.1 429 ")
            && header_value(&head, "retry-after") == Some("1")
            && body["error"]["code"] == "rate_limited";
        Ok::<_, std::io::Error>(if limited {
            Outcome::RateLimited
        } else {
            Outcome::Other(head)
        })
    };
    match tokio::time::timeout(WAIT, exchange).await {
        Err(_) => Outcome::Other("timed out".into()),
        Ok(Err(e)) => Outcome::Other(e.to_string()),
        Ok(Ok(outcome)) => outcome,
    }
}

/// `BURST` attempts from `source` at once.
async fn burst(gw: SocketAddr, source: IpAddr) -> Vec<Outcome> {
    let tasks: Vec<_> = (0..BURST).map(|_| tokio::spawn(attempt(gw, source))).collect();
    let mut outcomes = Vec::with_capacity(BURST);
    for task in tasks {
        outcomes.push(task.await.expect("join"));
    }
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_from_one_address_gets_its_rate_and_429s() {
    let gw = Gateway::start(&["--connect-rate-per-ip", &RATE.to_string()]);

    let started = Instant::now();
    let home = burst(gw.ws, HOME).await;
    // The bucket holds RATE; a burst that takes longer (a busy machine) earns a
    // token every 1/RATE s it lasts.
    let refilled = (started.elapsed().as_secs_f64() * RATE as f64).ceil() as usize;
    let upgraded = home.iter().filter(|o| o.is_upgraded()).count();
    let limited = home.iter().filter(|o| matches!(o, Outcome::RateLimited)).count();
    assert!((RATE..=RATE + refilled).contains(&upgraded), "{home:?}");
    assert_eq!(upgraded + limited, BURST, "every other attempt reads a 429: {home:?}");

    // Another source address has its own bucket.
    let other = attempt(gw.ws, OTHER).await;
    assert!(other.is_upgraded(), "{other:?}");

    assert_eq!(
        gw.metric("shardcast_connections_refused_total{reason=\"rate_limited\"}")
            .await,
        limited as f64
    );
    assert_eq!(
        gw.metric("shardcast_auth_refusals_total{reason=\"rate_limited\"}")
            .await,
        limited as f64
    );

    // A second later the bucket is full again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..RATE {
        let again = attempt(gw.ws, HOME).await;
        assert!(again.is_upgraded(), "{again:?}");
    }
    drop(home);
}

#[tokio::test]
async fn without_the_flag_a_burst_is_not_limited() {
    let gw = Gateway::start(&[]);
    let outcomes = burst(gw.ws, HOME).await;
    assert!(outcomes.iter().all(Outcome::is_upgraded), "{outcomes:?}");
}
