//! Pusher webhooks (PROTOCOL.md 20.7): the events of each app that has a
//! `webhook_url`, queued, batched (what 50 ms gathers, at most 100), signed with
//! the app's secret and POSTed, one batch at a time, retried with backoff. Which
//! instance sends an event is not decided here: the broker makes each transition
//! (occupied, vacated, joined, left) visible to exactly one instance, and only
//! that one calls [`Webhooks::send`].

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::CONTENT_TYPE;
use hyper::Method;
use prometheus::{IntCounter, IntCounterVec};
use serde_json::{json, Value};
use tokio_rustls::TlsConnector;
use tracing::warn;

use super::apps::PusherApps;
use super::signature::sign;
use crate::outbound::{self, OutboundUrl};

/// The events an app may ask for.
pub const EVENT_NAMES: [&str; 5] = [
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
];

/// How long events gather before a request goes.
const BATCH_WAIT: Duration = Duration::from_millis(50);
/// Events per request at most.
const BATCH_MAX: usize = 100;
/// Events waiting per app at most; beyond, new ones are dropped and counted.
const QUEUE_MAX: usize = 10_000;
/// How long one attempt may take, connect to answer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// The waits before the retries of a batch that was not delivered.
const RETRY_AFTER: [Duration; 5] = [
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
];

/// Something an app's webhook reports, on a shardcast channel.
#[derive(Debug, Clone, PartialEq)]
pub enum WebhookEvent {
    /// The channel's first subscriber in the cluster.
    ChannelOccupied(Arc<str>),
    /// Its last subscriber in the cluster left (or died with its instance).
    ChannelVacated(Arc<str>),
    /// A user became a member of a presence channel: `(channel, user)`.
    MemberAdded(Arc<str>, Arc<str>),
    /// A user stopped being one: `(channel, user)`.
    MemberRemoved(Arc<str>, Arc<str>),
    /// A client sent a `client-*` event.
    ClientEvent {
        /// The channel.
        channel: Arc<str>,
        /// The event's name.
        event: String,
        /// Its data, as the client sent it.
        data: String,
        /// The sender's socket id.
        socket_id: String,
        /// The sender's user, on a presence channel.
        user_id: Option<String>,
    },
}

impl WebhookEvent {
    fn name(&self) -> &'static str {
        match self {
            WebhookEvent::ChannelOccupied(_) => EVENT_NAMES[0],
            WebhookEvent::ChannelVacated(_) => EVENT_NAMES[1],
            WebhookEvent::MemberAdded(..) => EVENT_NAMES[2],
            WebhookEvent::MemberRemoved(..) => EVENT_NAMES[3],
            WebhookEvent::ClientEvent { .. } => EVENT_NAMES[4],
        }
    }

    fn channel(&self) -> &str {
        match self {
            WebhookEvent::ChannelOccupied(c)
            | WebhookEvent::ChannelVacated(c)
            | WebhookEvent::MemberAdded(c, _)
            | WebhookEvent::MemberRemoved(c, _)
            | WebhookEvent::ClientEvent { channel: c, .. } => c,
        }
    }

    /// The event as Pusher writes it, with the app's own channel name.
    fn json(&self, channel: &str) -> Value {
        let mut event = json!({"name": self.name(), "channel": channel});
        match self {
            WebhookEvent::MemberAdded(_, user) | WebhookEvent::MemberRemoved(_, user) => {
                event["user_id"] = json!(&**user);
            }
            WebhookEvent::ClientEvent {
                event: name,
                data,
                socket_id,
                user_id,
                ..
            } => {
                event["event"] = json!(name);
                event["data"] = json!(data);
                event["socket_id"] = json!(socket_id);
                if let Some(user) = user_id {
                    event["user_id"] = json!(user);
                }
            }
            WebhookEvent::ChannelOccupied(_) | WebhookEvent::ChannelVacated(_) => {}
        }
        event
    }
}

/// The webhook metrics, registered by the gateway.
#[derive(Clone)]
pub struct WebhookCounters {
    /// Requests by result: `delivered`, `failed` (an attempt that will be retried
    /// or given up).
    pub requests: IntCounterVec,
    /// Events dropped, by reason: `queue_full`, `gave_up`.
    pub dropped: IntCounterVec,
    /// Events queued.
    pub queued: IntCounter,
}

/// One app's webhook: which channels and events are its, and its queue.
struct Target {
    prefix: String,
    wanted: Vec<&'static str>,
    queue: flume::Sender<Value>,
}

/// The webhooks of every app that has one; cheap to clone.
#[derive(Clone)]
pub struct Webhooks {
    targets: Arc<[Target]>,
    counters: WebhookCounters,
}

impl Webhooks {
    /// Starts a sender task per app with a `webhook_url` (on the current tokio
    /// runtime); none when no app has one. The URLs were checked with the apps.
    pub fn start(apps: &PusherApps, counters: WebhookCounters) -> Result<Option<Webhooks>, String> {
        let mut targets = Vec::new();
        for app in apps.iter() {
            let Some(url) = &app.webhook_url else { continue };
            let url = OutboundUrl::parse(url).map_err(|why| format!("app {:?} webhook_url: {why}", app.id))?;
            let tls = if url.tls {
                Some(outbound::tls_connector(None).map_err(|why| format!("app {:?} webhooks: {why}", app.id))?)
            } else {
                None
            };
            let wanted = EVENT_NAMES
                .iter()
                .copied()
                .filter(|n| app.webhook_events.as_ref().map_or(true, |w| w.iter().any(|x| x == n)))
                .collect();
            let (queue, events) = flume::bounded(QUEUE_MAX);
            let sender = Sender {
                url,
                tls,
                key: app.key.clone(),
                secret: app.secret.clone(),
                counters: counters.clone(),
            };
            tokio::spawn(sender.run(events));
            targets.push(Target {
                prefix: app.channel_prefix.clone(),
                wanted,
                queue,
            });
        }
        Ok((!targets.is_empty()).then(|| Webhooks {
            targets: targets.into(),
            counters,
        }))
    }

    /// Queues an event for every app whose channel it is and that wants it;
    /// never waits (a full queue drops it, counted).
    pub fn send(&self, event: &WebhookEvent) {
        for target in self.targets.iter() {
            let Some(channel) = event.channel().strip_prefix(target.prefix.as_str()) else {
                continue;
            };
            if !target.wanted.contains(&event.name()) {
                continue;
            }
            if target.queue.try_send(event.json(channel)).is_ok() {
                self.counters.queued.inc();
            } else {
                self.counters.dropped.with_label_values(&["queue_full"]).inc();
            }
        }
    }
}

/// What one app's sender task holds.
struct Sender {
    url: OutboundUrl,
    tls: Option<TlsConnector>,
    key: String,
    secret: String,
    counters: WebhookCounters,
}

impl Sender {
    /// Sends batches until every [`Webhooks`] handle is dropped.
    async fn run(self, events: flume::Receiver<Value>) {
        while let Ok(first) = events.recv_async().await {
            let mut batch = vec![first];
            let until = tokio::time::Instant::now() + BATCH_WAIT;
            while batch.len() < BATCH_MAX {
                match tokio::time::timeout_at(until, events.recv_async()).await {
                    Ok(Ok(event)) => batch.push(event),
                    _ => break,
                }
            }
            self.deliver(batch).await;
        }
    }

    /// Sends one batch, retrying as PROTOCOL.md 20.7 says.
    async fn deliver(&self, batch: Vec<Value>) {
        let count = batch.len() as u64;
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let body = json!({"time_ms": time_ms, "events": batch}).to_string();
        let signature = sign(&self.secret, &body);
        let body = Bytes::from(body);
        for wait in std::iter::once(Duration::ZERO).chain(RETRY_AFTER) {
            tokio::time::sleep(wait).await;
            match self.attempt(&body, &signature).await {
                Ok(()) => {
                    self.counters.requests.with_label_values(&["delivered"]).inc();
                    return;
                }
                Err(why) => {
                    self.counters.requests.with_label_values(&["failed"]).inc();
                    warn!(url = %self.url.display(), events = count, %why, "webhook not delivered");
                }
            }
        }
        self.counters.dropped.with_label_values(&["gave_up"]).inc_by(count);
    }

    async fn attempt(&self, body: &Bytes, signature: &str) -> Result<(), String> {
        let request = self
            .url
            .request(Method::POST)
            .header(CONTENT_TYPE, "application/json")
            .header("X-Pusher-Key", &self.key)
            .header("X-Pusher-Signature", signature)
            .body(Full::new(body.clone()))
            .map_err(|e| e.to_string())?;
        let answer = tokio::time::timeout(ATTEMPT_TIMEOUT, outbound::send(&self.url, self.tls.as_ref(), request))
            .await
            .map_err(|_| format!("no answer within {ATTEMPT_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        let status = answer.response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("answered {status}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_written_as_pusher_writes_them() {
        let ch: Arc<str> = Arc::from("app1:presence-room");
        let added = WebhookEvent::MemberAdded(ch.clone(), Arc::from("7"));
        assert_eq!(
            added.json("presence-room"),
            json!({"name": "member_added", "channel": "presence-room", "user_id": "7"})
        );
        let client = WebhookEvent::ClientEvent {
            channel: ch,
            event: "client-typing".into(),
            data: "{\"on\":true}".into(),
            socket_id: "1.2".into(),
            user_id: None,
        };
        assert_eq!(
            client.json("presence-room"),
            json!({"name": "client_event", "channel": "presence-room", "event": "client-typing",
                   "data": "{\"on\":true}", "socket_id": "1.2"})
        );
        assert_eq!(WebhookEvent::ChannelVacated(Arc::from("x")).name(), "channel_vacated");
    }
}
