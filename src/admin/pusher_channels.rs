//! The Pusher HTTP API's channel queries (PROTOCOL.md 20.5): `GET
//! /apps/<id>/channels`, `/channels/<name>` and `/channels/<name>/users`, answered
//! for the whole cluster from any instance.
//!
//! **Occupied, across instances.** A channel is occupied when at least one socket
//! on any live instance subscribes to it. Each instance knows its own occupied
//! channels exactly (its router's broker subscriptions, [`OccupiedChannels`]); the
//! instance a query reaches adds those of every other live instance of the
//! cluster view, asked at once on their admin ports with the same signed request
//! and [`SCOPE_HEADER`] (so each answers for itself only, and its answer is as of
//! the query). How fresh that is: the list of live instances is the last heartbeat
//! snapshot ([`super::cluster`]), so an instance started within the last heartbeat
//! interval may be missing and a dead one is left out after two intervals (until
//! then asking it fails at once and it is left out). An instance that does not
//! answer within a second is left out of the answer and logged; the answer is
//! then partial, and says so in [`PARTIAL_HEADER`].
//!
//! Users (presence) are the broker's, already cluster-wide: `user_count` and the
//! user list are read from it, once, by the instance the query reached.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::future::join_all;
use futures_util::stream::{self, StreamExt};
use hyper::header::{HeaderName, HeaderValue};
use hyper::StatusCode;
use serde_json::{json, Map, Value};
use shardcast_proto::validate_channel;
use tracing::warn;

use super::api::{AdminContext, Reply};
use super::pusher_api::{ok_json, text};
use crate::broker::BrokerError;
use crate::fanout::occupancy::OccupiedChannels;
use crate::pusher::apps::PusherApp;

/// Asks an instance for its own figures only (a peer's part of a cluster query).
pub const SCOPE_HEADER: &str = "x-shardcast-scope";
/// Names the instances left out of a partial answer.
pub const PARTIAL_HEADER: &str = "x-shardcast-partial";

/// Channels one listing names at most (per instance, and in the merged answer).
const MAX_LISTED: usize = 10_000;
/// The largest answer read from another instance (its [`MAX_LISTED`] names).
const MAX_PEER_ANSWER: usize = 4 << 20;
/// Subscriber counts or presence reads in flight at once for one query.
const CONCURRENT_READS: usize = 32;
/// Pusher's prefix of presence channels, the only ones with users.
const PRESENCE: &str = "presence-";

/// What the query's `info` asks for.
#[derive(Clone, Copy, Default)]
struct Info {
    user_count: bool,
    subscription_count: bool,
}

impl Info {
    /// `info=a,b`; other attributes are ignored.
    fn parse(params: &[(String, String)]) -> Info {
        let mut info = Info::default();
        for (_, value) in params.iter().filter(|(k, _)| k == "info") {
            for attribute in value.split(',') {
                match attribute.trim() {
                    "user_count" => info.user_count = true,
                    "subscription_count" => info.subscription_count = true,
                    _ => {}
                }
            }
        }
        info
    }
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Which channels a query is about, as shardcast names.
enum Selection {
    Prefix(String),
    Exact(String),
}

/// `GET /apps/<id>/channels?filter_by_prefix=&info=`.
pub async fn list(ctx: &AdminContext, app: &PusherApp, params: &[(String, String)], scope: Scope<'_>) -> Reply {
    let filter = param(params, "filter_by_prefix").unwrap_or("");
    let prefix = app.shardcast_channel(filter);
    if prefix.len() > ctx.max_channel_len {
        return text(
            StatusCode::BAD_REQUEST,
            "filter_by_prefix is longer than any channel name",
        );
    }
    let info = Info::parse(params);
    if info.user_count && !filter.starts_with(PRESENCE) {
        return text(
            StatusCode::BAD_REQUEST,
            "user_count may only be requested for presence channels (filter_by_prefix=presence-)",
        );
    }
    let selection = Selection::Prefix(prefix);
    let (counts, partial) = match occupancy(ctx, &selection, info.subscription_count, scope).await {
        Occupancy::Instance(reply) => return reply,
        Occupancy::Cluster(counts, partial) => (counts, partial),
    };
    let users = if info.user_count {
        match user_counts(ctx, app, counts.keys()).await {
            Ok(users) => users,
            Err(e) => return text(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        }
    } else {
        Vec::new()
    };
    let mut channels = Map::new();
    for (i, (name, subscriptions)) in counts.into_iter().enumerate() {
        let mut attributes = Map::new();
        if let Some(users) = users.get(i) {
            attributes.insert("user_count".into(), json!(users));
        }
        if info.subscription_count {
            attributes.insert("subscription_count".into(), json!(subscriptions));
        }
        let pusher_name = name.strip_prefix(&app.channel_prefix).unwrap_or(&name);
        channels.insert(pusher_name.to_owned(), Value::Object(attributes));
    }
    with_partial(ok_json(json!({ "channels": channels })), &partial)
}

/// `GET /apps/<id>/channels/<name>?info=`.
pub async fn channel(
    ctx: &AdminContext,
    app: &PusherApp,
    name: &str,
    params: &[(String, String)],
    scope: Scope<'_>,
) -> Reply {
    let channel = match shardcast_name(ctx, app, name) {
        Ok(channel) => channel,
        Err(why) => return text(StatusCode::BAD_REQUEST, &why),
    };
    let info = Info::parse(params);
    if info.user_count && !name.starts_with(PRESENCE) {
        return text(StatusCode::BAD_REQUEST, "user_count is only for presence channels");
    }
    let selection = Selection::Exact(channel.clone());
    let (counts, partial) = match occupancy(ctx, &selection, info.subscription_count, scope).await {
        Occupancy::Instance(reply) => return reply,
        Occupancy::Cluster(counts, partial) => (counts, partial),
    };
    let mut body = json!({ "occupied": counts.contains_key(&channel) });
    if info.user_count {
        match user_counts(ctx, app, [&channel]).await {
            Ok(users) => body["user_count"] = json!(users.first().copied().unwrap_or(0)),
            Err(e) => return text(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        }
    }
    if info.subscription_count {
        body["subscription_count"] = json!(counts.get(&channel).copied().unwrap_or(0));
    }
    with_partial(ok_json(body), &partial)
}

/// `GET /apps/<id>/channels/<name>/users`: the presence channel's members (at
/// most the app's `max_presence_members`), from the broker.
pub async fn users(ctx: &AdminContext, app: &PusherApp, name: &str) -> Reply {
    let channel = match shardcast_name(ctx, app, name) {
        Ok(channel) => channel,
        Err(why) => return text(StatusCode::BAD_REQUEST, &why),
    };
    if !name.starts_with(PRESENCE) {
        return text(StatusCode::BAD_REQUEST, "Users are only for presence channels");
    }
    let limit = app.max_presence_members as usize;
    match ctx.broker.presence_members(Arc::from(channel), limit).await {
        Ok(members) => {
            let users: Vec<Value> = members.iter().map(|m| json!({ "id": &*m.user })).collect();
            ok_json(json!({ "users": users }))
        }
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// A Pusher channel's shardcast name, or why it is not a valid one (a 400).
fn shardcast_name(ctx: &AdminContext, app: &PusherApp, name: &str) -> Result<String, String> {
    let channel = app.shardcast_channel(name);
    match validate_channel(&channel, ctx.max_channel_len) {
        Ok(()) if !name.is_empty() => Ok(channel),
        Ok(()) => Err("Invalid channel name".to_owned()),
        Err(e) => Err(format!("Invalid channel {name:?}: {e}")),
    }
}

/// What a query answers for: this instance only (another instance asked, with
/// [`SCOPE_HEADER`]) or the cluster (a client asked).
pub enum Scope<'a> {
    /// Another instance asked for this one's part.
    Instance,
    /// A client asked; this is its signed request, passed on to the others.
    Cluster {
        /// The request's path and query, exactly as signed.
        path_and_query: &'a str,
    },
}

enum Occupancy {
    /// The answer to another instance's query, ready.
    Instance(Reply),
    /// The occupied channels of the cluster with their subscriptions (0 when
    /// not counted), and the instances that did not answer.
    Cluster(BTreeMap<String, u64>, Vec<String>),
}

async fn occupancy(ctx: &AdminContext, selection: &Selection, counted: bool, scope: Scope<'_>) -> Occupancy {
    let mut counts = local(ctx, selection, counted).await;
    let Scope::Cluster { path_and_query } = scope else {
        return Occupancy::Instance(ok_json(json!({ "channels": counts })));
    };
    let mut partial = Vec::new();
    if ctx.cluster.is_local() {
        return Occupancy::Cluster(counts, partial);
    }
    let snapshot = ctx.cluster.snapshot();
    let headers = [(
        HeaderName::from_static(SCOPE_HEADER),
        HeaderValue::from_static("instance"),
    )];
    let others = snapshot.instances.iter().filter(|i| i.node != ctx.state.node_id);
    let asked = join_all(others.map(|instance| async {
        let answer = if instance.admin.is_empty() {
            Err("its admin address is not known".to_owned())
        } else {
            super::peers::get_json_with(&instance.admin, path_and_query, &headers, MAX_PEER_ANSWER).await
        };
        (instance.node.clone(), answer)
    }))
    .await;
    for (node, answer) in asked {
        let channels = answer.and_then(|a| match a.get("channels") {
            Some(Value::Object(channels)) => Ok(channels.clone()),
            _ => Err("no channels in its answer".to_owned()),
        });
        match channels {
            Ok(channels) => {
                for (name, n) in channels {
                    if counts.len() < MAX_LISTED || counts.contains_key(&name) {
                        *counts.entry(name).or_default() += n.as_u64().unwrap_or(0);
                    }
                }
            }
            Err(error) => {
                warn!(%node, %error, "an instance did not answer a Pusher channel query: its channels are left out");
                partial.push(node);
            }
        }
    }
    Occupancy::Cluster(counts, partial)
}

/// This instance's occupied channels of the selection, with their subscriptions
/// when `counted` (one router round trip each, [`CONCURRENT_READS`] at a time).
async fn local(ctx: &AdminContext, selection: &Selection, counted: bool) -> BTreeMap<String, u64> {
    let names = select(&ctx.occupied, selection);
    if !counted {
        return names.iter().map(|n| (n.to_string(), 0)).collect();
    }
    // The futures are made first: a stream holding a closure over borrowed
    // data would not be Send for every lifetime, as hyper's tasks need.
    let reads: Vec<_> = names
        .into_iter()
        .map(|name| async move {
            let n = ctx.publisher.subscribers(name.clone()).await;
            (name.to_string(), n as u64)
        })
        .collect();
    stream::iter(reads).buffered(CONCURRENT_READS).collect().await
}

fn select(occupied: &OccupiedChannels, selection: &Selection) -> Vec<Arc<str>> {
    match selection {
        Selection::Prefix(prefix) => occupied.with_prefix(prefix, MAX_LISTED),
        Selection::Exact(name) if occupied.contains(name) => vec![Arc::from(name.as_str())],
        Selection::Exact(_) => Vec::new(),
    }
}

/// Each channel's users (its presence members, read from the broker: one read of
/// up to the app's `max_presence_members` per channel), in the order given.
async fn user_counts<'a>(
    ctx: &AdminContext,
    app: &PusherApp,
    channels: impl IntoIterator<Item = &'a String>,
) -> Result<Vec<usize>, BrokerError> {
    let limit = app.max_presence_members as usize;
    let reads: Vec<_> = channels
        .into_iter()
        .map(|channel| ctx.broker.presence_members(Arc::from(channel.as_str()), limit))
        .collect();
    let counts: Vec<_> = stream::iter(reads).buffered(CONCURRENT_READS).collect().await;
    counts
        .into_iter()
        .map(|read| read.map(|members| members.len()))
        .collect()
}

fn with_partial(mut reply: Reply, partial: &[String]) -> Reply {
    if partial.is_empty() {
        return reply;
    }
    if let Ok(value) = HeaderValue::from_str(&partial.join(",")) {
        reply.headers_mut().insert(PARTIAL_HEADER, value);
    }
    reply
}
