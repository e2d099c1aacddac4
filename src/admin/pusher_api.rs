//! The Pusher HTTP API on the admin port (PROTOCOL.md 20.5), for backends that
//! publish with a Pusher server library: requests signed with the app's secret,
//! events published to shardcast channels as `{"event", "data"}` publications,
//! a user's connections closed on every instance; the channel queries are
//! [`super::pusher_channels`]'s.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::future::join_all;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;
use shardcast_proto::validate_channel;

use super::api::{percent_decode, url_query, AdminContext, Reply};
use super::pusher_channels::{self, Scope, SCOPE_HEADER};
use crate::fanout::control::UserCommand;
use crate::fanout::router::Source;
use crate::payload::Payload;
use crate::pusher::apps::PusherApp;
use crate::pusher::protocol::valid_socket_id;
use crate::pusher::signature::verify_api_request;

/// Channels one event may name (Pusher's limit).
const MAX_CHANNELS: usize = 100;
/// Events one batch may carry (Pusher's limit).
const MAX_BATCH: usize = 10;
/// Longest event name (Pusher's limit).
const MAX_EVENT_NAME: usize = 200;
/// Longest user id (Pusher's limit).
const MAX_USER_ID: usize = 200;
/// Longest query string: the auth parameters, a prefix filter and `info`.
const MAX_QUERY: usize = 4096;

/// One event, as `events` takes it and `batch_events` lists them.
#[derive(Deserialize)]
struct Event {
    name: String,
    data: String,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    socket_id: Option<String>,
}

#[derive(Deserialize)]
struct Batch {
    batch: Vec<Event>,
}

/// A Pusher error: the status, with the reason as plain text.
pub(in crate::admin) fn text(status: StatusCode, body: &str) -> Reply {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_owned())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// A Pusher success: 200 with a JSON body.
pub(in crate::admin) fn ok_json(body: serde_json::Value) -> Reply {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Whether `path` is the Pusher API's: `/apps/...`, and
/// `/users/<id>/terminate_connections`, which pusher-http-python 3.x sends
/// without its `/apps/<id>` (the app is then the one whose key signed it).
pub fn owns(path: &str) -> bool {
    path.starts_with("/apps/") || (path.starts_with("/users/") && path.ends_with("/terminate_connections"))
}

/// Serves one Pusher API request: finds its app, verifies its signature, then
/// routes it.
pub async fn handle(ctx: &AdminContext, req: Request<Incoming>) -> Reply {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let query = req.uri().query().unwrap_or("");
    if query.len() > MAX_QUERY {
        return text(StatusCode::BAD_REQUEST, "Query string too long");
    }
    let params = url_query(query);
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or(path.clone(), |pq| pq.as_str().to_owned());
    let scope = match req.headers().get(SCOPE_HEADER) {
        Some(_) => Scope::Instance,
        None => Scope::Cluster {
            path_and_query: &path_and_query,
        },
    };
    // `+` is a space in a query, not in a path.
    let parts: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(|segment| percent_decode(&segment.replace('+', "%2B")))
        .collect();
    let (app, route) = match parts.first().map(String::as_str) {
        Some("apps") => (
            parts.get(1).and_then(|id| ctx.pusher_apps.by_id(id)),
            &parts[2.min(parts.len())..],
        ),
        _ => {
            let key = params.iter().find(|(k, _)| k == "auth_key").map(|(_, v)| v.as_str());
            (key.and_then(|k| ctx.pusher_apps.by_key(k)), &parts[..])
        }
    };
    let Some(app) = app.cloned() else {
        return text(StatusCode::NOT_FOUND, "Unknown app");
    };
    // Pusher bodies are small: an event's data is at most the message limit.
    let limit = ctx.max_message_bytes.saturating_mul(MAX_BATCH + 1).max(64 << 10);
    let body = match Limited::new(req.into_body(), limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large"),
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if let Err(e) = verify_api_request(&app, method.as_str(), &path, &params, &body, now) {
        ctx.metrics.pusher_api_refusals.with_label_values(&[e.label()]).inc();
        return text(StatusCode::UNAUTHORIZED, &format!("Authentication failed: {e}"));
    }
    let route: Vec<&str> = route.iter().map(String::as_str).collect();
    match (&method, route.as_slice()) {
        (&Method::POST, ["events"]) => match serde_json::from_slice::<Event>(&body) {
            Ok(event) => publish(ctx, &app, vec![event]).await,
            Err(e) => text(StatusCode::BAD_REQUEST, &format!("Invalid event: {e}")),
        },
        (&Method::POST, ["batch_events"]) => match serde_json::from_slice::<Batch>(&body) {
            Ok(batch) if batch.batch.len() > MAX_BATCH => text(
                StatusCode::BAD_REQUEST,
                &format!("Batch too large: at most {MAX_BATCH} events"),
            ),
            Ok(batch) => publish(ctx, &app, batch.batch).await,
            Err(e) => text(StatusCode::BAD_REQUEST, &format!("Invalid batch: {e}")),
        },
        (&Method::GET, ["channels"]) => pusher_channels::list(ctx, &app, &params, scope).await,
        (&Method::GET, ["channels", name]) => pusher_channels::channel(ctx, &app, name, &params, scope).await,
        (&Method::GET, ["channels", name, "users"]) => pusher_channels::users(ctx, &app, name).await,
        (&Method::POST, ["users", user, "terminate_connections"]) => terminate(ctx, user).await,
        _ => text(StatusCode::NOT_FOUND, "Not found"),
    }
}

/// Closes every connection of `user` on every instance: the operator's
/// disconnect (`POST /api/disconnect`), which reaches the other instances
/// through the broker. A user is a token's `sub` or a Pusher sign-in's id, of
/// any app.
async fn terminate(ctx: &AdminContext, user: &str) -> Reply {
    if user.is_empty() || user.len() > MAX_USER_ID {
        return text(StatusCode::BAD_REQUEST, "Invalid user id");
    }
    let command = UserCommand::Disconnect { user: user.to_owned() };
    match ctx.publisher.control(command).await {
        Ok(_) => ok_json(json!({})),
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// Validates every event first (a bad one publishes nothing), then publishes
/// each to each of its channels.
async fn publish(ctx: &AdminContext, app: &PusherApp, events: Vec<Event>) -> Reply {
    let mut publications = Vec::new();
    for event in events {
        let channels = match (event.channels, event.channel) {
            (Some(list), None) => list,
            (None, Some(one)) => vec![one],
            _ => return text(StatusCode::BAD_REQUEST, "Give either channels or channel"),
        };
        if channels.is_empty() || channels.len() > MAX_CHANNELS {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("An event goes to 1 to {MAX_CHANNELS} channels"),
            );
        }
        if event.name.is_empty() || event.name.len() > MAX_EVENT_NAME {
            return text(StatusCode::BAD_REQUEST, "Invalid event name");
        }
        if event.data.len() > ctx.max_message_bytes {
            return text(StatusCode::PAYLOAD_TOO_LARGE, "Event data too large");
        }
        if event.socket_id.as_deref().is_some_and(|s| !valid_socket_id(s)) {
            return text(StatusCode::BAD_REQUEST, "Invalid socket_id");
        }
        let mut body = json!({"event": event.name, "data": event.data});
        if let Some(socket) = &event.socket_id {
            body["socket_id"] = json!(socket);
        }
        let payload = match Payload::from_value(&body) {
            Ok(p) => p,
            Err(e) => return text(StatusCode::BAD_REQUEST, &format!("Invalid event: {e}")),
        };
        for channel in channels {
            let name = app.shardcast_channel(&channel);
            if let Err(e) = validate_channel(&name, ctx.max_channel_len) {
                return text(StatusCode::BAD_REQUEST, &format!("Invalid channel {channel:?}: {e}"));
            }
            publications.push((Arc::<str>::from(name), payload.clone()));
        }
    }
    let outcomes = join_all(
        publications
            .into_iter()
            .map(|(channel, payload)| ctx.publisher.publish(channel, payload, Source::Api, None)),
    )
    .await;
    match outcomes.into_iter().find_map(Result::err) {
        None => ok_json(json!({})),
        Some(e) if e.outcome_unknown() => text(StatusCode::GATEWAY_TIMEOUT, &e.to_string()),
        Some(e) => text(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}
