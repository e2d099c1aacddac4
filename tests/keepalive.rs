//! Keep-alive: quiet connections are pinged; a peer that answers stays, a peer that
//! never answers is closed with the idle-timeout code and counted.

mod common;

use std::time::Duration;

use common::*;
use shardcast_proto::{close, Encoding};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_peers_are_reaped_and_live_ones_kept() {
    let gw = Gateway::start(&["--ping-interval", "500ms", "--idle-timeout", "1500ms"]);
    // tokio-tungstenite answers pings while it reads; keep this client reading.
    let mut live = gw.connect(Encoding::Json).await;
    let keeper = tokio::spawn(async move {
        for i in 0..12 {
            assert!(live.roundtrip(i).await.is_empty());
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        live
    });

    let mut dead = RawClient::connect(gw.ws).await;
    let (op, _) = dead.read_frame().await;
    assert_eq!(op, 0x9, "a quiet connection is pinged");
    assert_eq!(dead.expect_close().await, close::IDLE_TIMEOUT);
    let mut live = keeper.await.unwrap();
    assert!(
        live.roundtrip(99).await.is_empty(),
        "the answering client is still connected"
    );
    assert_eq!(
        gw.wait_metric("shardcast_disconnections_total{reason=\"idle_timeout\"}", |v| v >= 1.0)
            .await,
        1.0
    );
}
