//! The admin HTTP API, on its own port: publishing (`POST /api/publish`), health
//! (`/health/live`, `/health/ready`), Prometheus metrics (`/metrics`) and local
//! connection counts (`/api/stats`). Served by hyper on the control thread, away
//! from the shards, so a burst of API calls never delays a fan-out. The web
//! console ([`super::console`]) shares the port; `/api/*` takes its session
//! cookie (with a CSRF token on state-changing calls) as well as the Bearer key.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, COOKIE, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use ring::digest::{digest, SHA256};
use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;
use shardcast_proto::{valid_idempotency_key, validate_channel, ErrorCode, StreamPosition, MAX_IDEMPOTENCY_KEY};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tracing::debug;

use super::cluster::ClusterView;
use super::console::{self, session, SessionStore};
use crate::admission::fd_budget::FdBudget;
use crate::broker::Broker;
use crate::fanout::control::UserCommand;
use crate::fanout::occupancy::OccupiedChannels;
use crate::fanout::publisher::Publisher;
use crate::fanout::router::Source;
use crate::metrics::Metrics;
use crate::payload::Payload;
use crate::pusher::apps::PusherApps;
use crate::shard::history_frame;
use crate::state::GatewayState;

/// Most publications one batch request may carry.
const MAX_BATCH: usize = 1000;

/// What the admin API needs.
pub struct AdminContext {
    /// `--api-key`: one of them is required on `/api/*` when any is set.
    pub api_keys: Vec<String>,
    /// `--max-message-bytes`: the largest `data` a publish may carry.
    pub max_message_bytes: usize,
    /// `--max-channel-len`.
    pub max_channel_len: usize,
    /// The publish path (router and broker).
    pub publisher: Publisher,
    /// Readiness and connection counts.
    pub state: Arc<GatewayState>,
    /// What `/metrics` renders.
    pub metrics: Arc<Metrics>,
    /// Descriptor headroom, for `/api/stats` and a fresh gauge on scrape.
    pub budget: Arc<FdBudget>,
    /// What `/api/cluster` serves.
    pub cluster: Arc<ClusterView>,
    /// The web console's sign-in sessions.
    pub sessions: SessionStore,
    /// The Pusher apps (PROTOCOL.md 20); `/apps/...` answers 404 without any.
    pub pusher_apps: Arc<PusherApps>,
    /// The channels this instance's sockets subscribe to (the Pusher API's
    /// channel queries).
    pub occupied: Arc<OccupiedChannels>,
    /// The broker, for presence members (the Pusher API's user queries).
    pub broker: Arc<dyn Broker>,
}

/// Serves the admin API until the task is dropped.
pub async fn serve(listener: TcpListener, ctx: Arc<AdminContext>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(route(ctx, req, peer.ip()).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

pub(in crate::admin) type Reply = Response<Full<Bytes>>;

/// A response body of the admin port: whole, or the console's event stream.
pub(in crate::admin) type AdminBody = UnsyncBoxBody<Bytes, Infallible>;

async fn route(ctx: Arc<AdminContext>, req: Request<Incoming>, peer: IpAddr) -> Response<AdminBody> {
    if console::owns(req.uri().path()) {
        return console::handle(ctx, req, peer).await;
    }
    let api = req.uri().path().starts_with("/api/");
    let mut resp = handle(&ctx, req).await;
    if api {
        // Figures and publish results are as of now: never to be cached, least of
        // all a signed-in console's.
        resp.headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp.map(|body| body.boxed_unsync())
}

async fn handle(ctx: &AdminContext, req: Request<Incoming>) -> Reply {
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/health/live") => json_reply(StatusCode::OK, json!({"ok": true, "node": ctx.state.node_id})),
        (&Method::GET, "/health/ready") => {
            let ready = ctx.state.is_ready();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json_reply(
                status,
                json!({
                    "ok": ready,
                    "node": ctx.state.node_id,
                    "draining": ctx.state.is_draining(),
                    "broker": ctx.state.broker_up(),
                }),
            )
        }
        (&Method::GET, "/metrics") => {
            // The descriptor count as of now, sockets opened and closed since the
            // monitor's last scan included.
            ctx.metrics.open_fds.set(ctx.budget.estimated_open() as i64);
            ctx.metrics.fd_headroom.set(ctx.budget.headroom() as i64);
            let mut resp = Response::new(Full::new(Bytes::from(ctx.metrics.render())));
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
            resp
        }
        (_, p) if super::pusher_api::owns(p) && !ctx.pusher_apps.is_empty() => {
            super::pusher_api::handle(ctx, req).await
        }
        (_, p) if p.starts_with("/api/") => {
            if let Some(refusal) = unauthorized(ctx, &req) {
                return refusal;
            }
            match (req.method(), p) {
                (&Method::POST, "/api/publish") => publish(ctx, req).await,
                (&Method::POST, "/api/disconnect") => user_command(ctx, req, "disconnected").await,
                (&Method::POST, "/api/unsubscribe") => user_command(ctx, req, "unsubscribed").await,
                (&Method::GET, "/api/stats") => json_reply(StatusCode::OK, stats_body(ctx)),
                (&Method::GET, "/api/history") => history(ctx, &req).await,
                (&Method::GET, "/api/channel") => channel(ctx, &req).await,
                (&Method::GET, "/api/cluster") => {
                    let snapshot = ctx.cluster.snapshot();
                    json_reply(StatusCode::OK, serde_json::to_value(&*snapshot).unwrap_or_default())
                }
                (
                    _,
                    "/api/publish" | "/api/stats" | "/api/cluster" | "/api/disconnect" | "/api/unsubscribe"
                    | "/api/history" | "/api/channel",
                ) => error_reply(
                    StatusCode::METHOD_NOT_ALLOWED,
                    ErrorCode::BadRequest,
                    "method not allowed",
                ),
                _ => error_reply(StatusCode::NOT_FOUND, ErrorCode::BadRequest, "no such endpoint"),
            }
        }
        _ => error_reply(StatusCode::NOT_FOUND, ErrorCode::BadRequest, "no such endpoint"),
    }
}

/// The 401 to answer when an API key is configured and the request lacks it (or
/// a console session), and the 403 when a session's state-changing request lacks
/// its CSRF token.
fn unauthorized(ctx: &AdminContext, req: &Request<Incoming>) -> Option<Reply> {
    if ctx.api_keys.is_empty() {
        return None;
    }
    if bearer_key_matches(ctx, req) {
        return None;
    }
    let cookie = req.headers().get(COOKIE).and_then(|v| v.to_str().ok());
    if let Some(grant) = ctx.sessions.session(cookie) {
        let safe = matches!(*req.method(), Method::GET | Method::HEAD);
        if safe || session::csrf_matches(&grant, req.headers()) {
            return None;
        }
        ctx.metrics
            .client_errors
            .with_label_values(&[ErrorCode::Forbidden.as_str()])
            .inc();
        return Some(console::csrf_refusal());
    }
    ctx.metrics.client_errors.with_label_values(&["unauthorized"]).inc();
    let mut resp = error_reply(
        StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden,
        "missing or wrong API key (Authorization: Bearer <key>)",
    );
    resp.headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Some(resp)
}

/// Whether the request's `Authorization: Bearer` key is one of the API keys.
pub(in crate::admin) fn bearer_key_matches(ctx: &AdminContext, req: &Request<Incoming>) -> bool {
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme name is case-insensitive (RFC 7235 2.1).
        .and_then(|v| {
            v.get(..7)
                .filter(|s| s.eq_ignore_ascii_case("bearer "))
                .map(|_| &v[7..])
        })
        .unwrap_or("");
    key_matches(ctx, given)
}

/// Whether `given` is one of the API keys. Every key is compared, whichever
/// matches, so timing tells nothing about which key (or how much of one) was right.
pub(in crate::admin) fn key_matches(ctx: &AdminContext, given: &str) -> bool {
    ctx.api_keys.iter().fold(false, |found, key| {
        found | constant_time_eq(given.as_bytes(), key.as_bytes())
    })
}

/// Compares SHA-256 digests without an early exit, so response timing leaks
/// neither the key nor its length.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let (a, b) = (digest(&SHA256, a), digest(&SHA256, b));
    bool::from(a.as_ref().ct_eq(b.as_ref()))
}

#[derive(Deserialize)]
struct PublishItem {
    channel: String,
    data: Box<RawValue>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

async fn publish(ctx: &AdminContext, req: Request<Incoming>) -> Reply {
    // A batch may carry up to MAX_BATCH messages of the maximum size, plus framing.
    let limit = ctx.max_message_bytes.saturating_mul(16).max(1 << 20);
    let body = match Limited::new(req.into_body(), limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return api_error(
                ctx,
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                "request body too large",
            )
        }
        Err(_) => {
            return api_error(
                ctx,
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                "could not read the body",
            )
        }
    };
    let batch = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let items: Vec<PublishItem> = if batch {
        match serde_json::from_slice(&body) {
            Ok(items) => items,
            Err(e) => {
                return api_error(
                    ctx,
                    StatusCode::BAD_REQUEST,
                    ErrorCode::BadRequest,
                    &format!("invalid batch: {e}"),
                )
            }
        }
    } else {
        match serde_json::from_slice(&body) {
            Ok(item) => vec![item],
            Err(e) => {
                let msg = format!("expected {{\"channel\": ..., \"data\": ...}}: {e}");
                return api_error(ctx, StatusCode::BAD_REQUEST, ErrorCode::BadRequest, &msg);
            }
        }
    };
    if items.len() > MAX_BATCH {
        let msg = format!("at most {MAX_BATCH} messages per batch");
        return api_error(ctx, StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge, &msg);
    }
    // Validate the whole batch first, so a bad item publishes nothing.
    let mut payloads = Vec::with_capacity(items.len());
    for item in items {
        if let Err(e) = validate_channel(&item.channel, ctx.max_channel_len) {
            return api_error(
                ctx,
                StatusCode::BAD_REQUEST,
                ErrorCode::BadChannel,
                &format!("{}: {e}", item.channel),
            );
        }
        if item.data.get().len() > ctx.max_message_bytes {
            let msg = format!("data larger than {} bytes", ctx.max_message_bytes);
            return api_error(ctx, StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge, &msg);
        }
        if let Some(k) = item.idempotency_key.as_deref().filter(|k| !valid_idempotency_key(k)) {
            let msg = format!(
                "{}: idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY} characters of [A-Za-z0-9_.:-] (got {} bytes)",
                item.channel,
                k.len()
            );
            return api_error(ctx, StatusCode::BAD_REQUEST, ErrorCode::BadRequest, &msg);
        }
        let key = item.idempotency_key.map(Arc::<str>::from);
        match Payload::from_raw(item.data) {
            Ok(p) => payloads.push((Arc::<str>::from(item.channel), p, key)),
            Err(e) => {
                let msg = format!("{}: unusable data: {e}", item.channel);
                return api_error(ctx, StatusCode::BAD_REQUEST, ErrorCode::BadRequest, &msg);
            }
        }
    }
    // The whole batch at once, in its order: one round trip, not one per item.
    let channels: Vec<Arc<str>> = payloads.iter().map(|(channel, _, _)| channel.clone()).collect();
    let outcomes = ctx.publisher.publish_batch(payloads, Source::Api).await;
    // A refusal outranks an unknown outcome: the publisher must retry either way.
    let mut refused = None;
    let mut failed = None;
    let mut results = Vec::with_capacity(outcomes.len());
    for (channel, outcome) in channels.iter().zip(&outcomes) {
        let mut result = PublishResult {
            channel: Some(channel),
            ..PublishResult::default()
        };
        match outcome {
            Ok(report) => {
                result.subscribers = report.reached;
                if let Some(p) = &report.position {
                    result.offset = Some(p.offset);
                    result.epoch = Some(&p.epoch);
                }
                if report.duplicate {
                    ctx.metrics.publish_duplicates.inc();
                    result.duplicate = true;
                }
            }
            Err(e) => {
                result.subscribers = e.reached;
                result.error = Some(e.to_string());
                result.outcome = Some(if e.outcome_unknown() {
                    ctx.metrics.publish_unknown.inc();
                    failed.get_or_insert(e);
                    "unknown"
                } else {
                    refused.get_or_insert(e);
                    "not_delivered"
                });
            }
        }
        results.push(result);
    }
    if let Some(e) = refused.or(failed) {
        let (status, code) = if e.outcome_unknown() {
            (StatusCode::GATEWAY_TIMEOUT, ErrorCode::Timeout)
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable)
        };
        ctx.metrics.client_errors.with_label_values(&[code.as_str()]).inc();
        return json_reply(
            status,
            json!({
                "ok": false,
                "error": {"code": code.as_str(), "message": e.to_string()},
                "results": results,
            }),
        );
    }
    let body = if batch {
        serde_json::to_vec(&PublishReply { ok: true, results })
    } else {
        let mut one = results.swap_remove(0);
        one.channel = None;
        one.ok = Some(true);
        serde_json::to_vec(&one)
    };
    match body {
        Ok(body) => json_bytes_reply(StatusCode::OK, body),
        Err(e) => error_reply(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, &e.to_string()),
    }
}

/// One publication's answer in a publish reply (PROTOCOL.md 14.2), written
/// straight from the report: a reply is built on every publish.
#[derive(Serialize, Default)]
struct PublishResult<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    ok: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    subscribers: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    duplicate: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// A batch publish's reply.
#[derive(Serialize)]
struct PublishReply<'a> {
    ok: bool,
    results: Vec<PublishResult<'a>>,
}

/// `GET /api/channel?name=<channel>[&cluster=1]`: the channel's subscribers on
/// this instance and whether it keeps history, and with `cluster=1` on every live instance of the cluster view
/// (each asked on its advertised admin address with this request's authorization;
/// one that does not answer is listed with its error).
async fn channel(ctx: &AdminContext, req: &Request<Incoming>) -> Reply {
    let query = url_query(req.uri().query().unwrap_or(""));
    let value = |key: &str| query.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let Some(name) = value("name") else {
        return error_reply(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            "missing query parameter `name`",
        );
    };
    if let Err(e) = validate_channel(&name, ctx.max_channel_len) {
        return error_reply(StatusCode::BAD_REQUEST, ErrorCode::BadChannel, &format!("{name}: {e}"));
    }
    let here = ctx.publisher.subscribers(Arc::from(name.as_str())).await;
    let keeps_history = ctx.publisher.channel_history().policy(&name).is_some();
    let mut body = json!({
        "ok": true,
        "node": ctx.state.node_id,
        "channel": name,
        "subscribers": here,
        "history": keeps_history,
    });
    if value("cluster").as_deref() != Some("1") {
        return json_reply(StatusCode::OK, body);
    }
    let snapshot = ctx.cluster.snapshot();
    let path = format!("/api/channel?name={}", percent_encode(&name));
    let authorization = req.headers().get(AUTHORIZATION).cloned().or_else(|| {
        // A console session: the others take the same API key.
        ctx.api_keys
            .first()
            .and_then(|k| HeaderValue::from_str(&format!("Bearer {k}")).ok())
    });
    let asked = join_all(snapshot.instances.iter().map(|instance| {
        let (path, authorization) = (path.clone(), authorization.clone());
        async move {
            if instance.node == ctx.state.node_id {
                return json!({"node": instance.node, "subscribers": here});
            }
            if instance.admin.is_empty() {
                return json!({"node": instance.node, "error": "its admin address is not known"});
            }
            match super::peers::get_json(&instance.admin, &path, authorization.as_ref()).await {
                Ok(answer) => json!({"node": instance.node, "subscribers": answer["subscribers"]}),
                Err(e) => json!({"node": instance.node, "error": e}),
            }
        }
    }))
    .await;
    let total: u64 = asked.iter().filter_map(|a| a["subscribers"].as_u64()).sum();
    body["instances"] = json!(asked);
    body["total"] = json!(total);
    json_reply(StatusCode::OK, body)
}

/// Percent-encodes a channel name for a query string (its charset needs little).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// `GET /api/history?channel=&since=&epoch=&limit=` (PROTOCOL.md 19.6).
async fn history(ctx: &AdminContext, req: &Request<Incoming>) -> Reply {
    let mut channel = None;
    let (mut since, mut epoch, mut limit) = (None, None, None);
    for (k, v) in url_query(req.uri().query().unwrap_or("")) {
        match k.as_str() {
            "channel" => channel = Some(v),
            "since" => since = Some(v),
            "epoch" => epoch = Some(v),
            "limit" => limit = Some(v),
            _ => {}
        }
    }
    let bad = |msg: &str| error_reply(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, msg);
    let Some(channel) = channel else {
        return bad("missing query parameter `channel`");
    };
    if let Err(e) = validate_channel(&channel, ctx.max_channel_len) {
        return error_reply(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadChannel,
            &format!("{channel}: {e}"),
        );
    }
    let since = match (since.map(|s| s.parse::<u64>()), epoch) {
        (None, None) => None,
        (Some(Ok(offset)), Some(epoch)) => Some(StreamPosition { offset, epoch }),
        _ => return bad("`since` (an offset) and `epoch` go together"),
    };
    let limit = match limit.map(|l| l.parse::<usize>()) {
        None => None,
        Some(Ok(l)) => Some(l),
        Some(Err(_)) => return bad("`limit` must be a number"),
    };
    let channel: Arc<str> = Arc::from(channel);
    let read = ctx
        .publisher
        .history(channel.clone(), since.as_ref().map(|p| p.offset), limit)
        .await;
    match read {
        None => error_reply(
            StatusCode::NOT_FOUND,
            ErrorCode::NoHistory,
            &format!("{channel} keeps no history"),
        ),
        Some(Err(e)) => error_reply(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, &e.to_string()),
        Some(Ok((page, max))) => {
            let frame = history_frame(None, &channel, page, since.as_ref(), limit.unwrap_or(max).min(max));
            let mut body = serde_json::to_value(&frame).unwrap_or_default();
            if let Some(o) = body.as_object_mut() {
                o.remove("type");
                o.insert("ok".into(), json!(true));
            }
            json_reply(StatusCode::OK, body)
        }
    }
}

/// The pairs of a URL query string, percent-decoded.
pub(in crate::admin) fn url_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// `%XX` escapes decoded, and `+` as a space (as in a query string).
pub(in crate::admin) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3]).map(|h| u8::from_str_radix(h, 16)) {
                    Ok(Ok(b)) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The longest admin request body other than a publish.
const MAX_COMMAND_BODY: usize = 4096;

/// `POST /api/disconnect {"user"}` and `POST /api/unsubscribe {"user", "channel"}`:
/// applied here and sent to every other instance through the broker; answers with
/// how many connections this instance touched, under `counted`.
async fn user_command(ctx: &AdminContext, req: Request<Incoming>, counted: &str) -> Reply {
    let body = match Limited::new(req.into_body(), MAX_COMMAND_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            let msg = format!("the body must be a JSON object of at most {MAX_COMMAND_BODY} bytes");
            return api_error(ctx, StatusCode::BAD_REQUEST, ErrorCode::BadRequest, &msg);
        }
    };
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        user: String,
        channel: Option<String>,
    }
    let parsed: Body = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            let msg = format!("expected {{\"user\": ...}}: {e}");
            return api_error(ctx, StatusCode::BAD_REQUEST, ErrorCode::BadRequest, &msg);
        }
    };
    if parsed.user.is_empty() {
        return api_error(ctx, StatusCode::BAD_REQUEST, ErrorCode::BadRequest, "`user` is empty");
    }
    let command = match (counted, parsed.channel) {
        ("disconnected", None) => UserCommand::Disconnect { user: parsed.user },
        ("unsubscribed", Some(channel)) => {
            if let Err(e) = validate_channel(&channel, ctx.max_channel_len) {
                return api_error(ctx, StatusCode::BAD_REQUEST, ErrorCode::BadChannel, &e.to_string());
            }
            UserCommand::Unsubscribe {
                user: parsed.user,
                channel,
            }
        }
        ("disconnected", Some(_)) => {
            return api_error(
                ctx,
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                "disconnect takes no `channel`",
            )
        }
        _ => {
            return api_error(
                ctx,
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                "`channel` is required",
            )
        }
    };
    match ctx.publisher.control(command).await {
        Ok(n) => json_reply(StatusCode::OK, json!({"ok": true, counted: n})),
        Err(e) => {
            ctx.metrics.client_errors.with_label_values(&["unavailable"]).inc();
            json_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({
                    "ok": false,
                    "error": {"code": ErrorCode::Unavailable.as_str(), "message": e.to_string()},
                    counted: e.reached,
                }),
            )
        }
    }
}

/// What `/api/stats` serves (and the console's feed carries).
pub(in crate::admin) fn stats_body(ctx: &AdminContext) -> serde_json::Value {
    let per_shard = ctx.state.connections_per_shard();
    json!({
        "node": ctx.state.node_id,
        "connections": per_shard.iter().sum::<usize>(),
        "shards": per_shard,
        "channels": ctx.metrics.channels.get(),
        "fd_headroom": ctx.budget.headroom(),
        "ready": ctx.state.is_ready(),
        "redis_degraded_slots": ctx.metrics.redis_degraded_slots.get(),
    })
}

fn api_error(ctx: &AdminContext, status: StatusCode, code: ErrorCode, message: &str) -> Reply {
    ctx.metrics.client_errors.with_label_values(&[code.as_str()]).inc();
    error_reply(status, code, message)
}

pub(in crate::admin) fn error_reply(status: StatusCode, code: ErrorCode, message: &str) -> Reply {
    json_reply(
        status,
        json!({"ok": false, "error": {"code": code.as_str(), "message": message}}),
    )
}

pub(in crate::admin) fn json_reply(status: StatusCode, body: serde_json::Value) -> Reply {
    json_bytes_reply(status, body.to_string().into_bytes())
}

/// A reply of JSON already written.
fn json_bytes_reply(status: StatusCode, body: Vec<u8>) -> Reply {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
