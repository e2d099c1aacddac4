//! Redis Cluster with sharded pub/sub: three masters started by the test, two
//! gateways with `--redis-cluster`; channels that hash to different masters reach
//! subscribers on both gateways.

mod common;

use common::*;
use serde_json::json;
use shardcast_proto::{Encoding, ServerFrame};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_pubsub_reaches_both_instances() {
    let nodes = RedisServer::start_cluster();
    let url = format!("redis://127.0.0.1:{}", nodes[0].port);
    let args = ["--redis", url.as_str(), "--redis-cluster"];
    let gws = [Gateway::start(&args), Gateway::start(&args)];
    for gw in &gws {
        gw.wait_ready(200).await;
    }
    let channels: Vec<String> = (0..8).map(|i| format!("ch-{i}")).collect();
    // The channels must spread over the masters, or this test proves nothing.
    let masters: std::collections::HashSet<u64> = channels
        .iter()
        .map(|c| {
            nodes[0]
                .cli(&["CLUSTER", "KEYSLOT", &format!("shardcast:{c}")])
                .parse::<u64>()
                .unwrap()
                * 3
                / 16384
        })
        .collect();
    assert!(masters.len() >= 2, "channels all hash to one master");

    let mut clients = Vec::new();
    for gw in &gws {
        let mut c = gw.connect(Encoding::MsgPack).await;
        for (i, ch) in channels.iter().enumerate() {
            c.subscribe(i as u64, ch).await;
        }
        clients.push(c);
    }
    for ch in &channels {
        gws[0].publish(ch, json!({"via": "api", "ch": ch})).await;
        let reply = nodes[0].cli(&["-c", "SPUBLISH", &format!("shardcast:{ch}"), r#"{"via":"spublish"}"#]);
        assert_eq!(reply, "2", "both instances hold a sharded subscription of {ch}");
    }
    for c in clients.iter_mut() {
        let mut got = Vec::new();
        for _ in 0..channels.len() * 2 {
            match c.recv().await {
                ServerFrame::Message { channel, data, .. } => {
                    got.push((channel, data["via"].as_str().unwrap().to_owned()))
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        for ch in &channels {
            assert!(
                got.contains(&(ch.clone(), "api".into())),
                "{ch} via api missing: {got:?}"
            );
            assert!(
                got.contains(&(ch.clone(), "spublish".into())),
                "{ch} via spublish missing: {got:?}"
            );
        }
        assert!(c.roundtrip(99).await.is_empty());
    }
}
