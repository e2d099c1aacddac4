//! The receiving end of the subscriber connection: every message from Redis,
//! decoded and checked, handed to the sink, except this instance's own echoes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use fred::types::Message;
use shardcast_proto::redis::{decode_redis_payload, raw_payload_json, RedisPayload};
use tokio::sync::broadcast::error::RecvError;
use tracing::{error, warn};

use super::{RedisSettings, CONTROL_CHANNEL, PROBE_PREFIX};
use crate::broker::{BrokerEvent, BrokerMetrics, BrokerSink, Position, PresenceChange, PresenceMember};
use crate::payload::Payload;

/// Hands every message from Redis to the sink, except this instance's own.
pub(super) async fn receive(
    mut messages: tokio::sync::broadcast::Receiver<Message>,
    settings: RedisSettings,
    sink: Arc<dyn BrokerSink>,
    metrics: BrokerMetrics,
) {
    let bad_payload = &metrics.dropped_bad_payload;
    let lagged = &metrics.dropped_lagged;
    let last_warning = AtomicU64::new(0);
    let started = Instant::now();
    // One warning a second at most: a misbehaving publisher must not flood the logs.
    let warn_bad = |channel: &str, why: &str| {
        bad_payload.inc();
        let now = started.elapsed().as_secs() + 1;
        if last_warning.swap(now, Ordering::Relaxed) != now {
            warn!(channel, why, "dropped a redis payload");
        }
    };
    loop {
        let msg = match messages.recv().await {
            Ok(msg) => msg,
            Err(RecvError::Lagged(n)) => {
                lagged.inc_by(n);
                error!(lost = n, "redis messages were lost: the receiver fell behind");
                sink.event(BrokerEvent::Gap);
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let Some(channel) = msg.channel.strip_prefix(settings.prefix.as_str()) else {
            continue;
        };
        if channel.starts_with(PROBE_PREFIX) {
            continue;
        }
        metrics.received.inc();
        let Some(bytes) = msg.value.as_bytes() else {
            warn_bad(channel, "not a string payload");
            continue;
        };
        // Room for the envelope: `^<offset>,<epoch>,<origin> ` at most.
        if bytes.len() > settings.max_payload + settings.origin.len() + 64 {
            warn_bad(channel, "payload above --max-message-bytes");
            continue;
        }
        let mut position = None;
        let payload = match decode_redis_payload(bytes) {
            Ok(RedisPayload::Json { origin: Some(o), .. }) if o == settings.origin => continue,
            Ok(RedisPayload::Json { json, .. }) => Payload::from_json(json).map_err(|e| e.to_string()),
            Ok(RedisPayload::Positioned { origin: Some(o), .. }) if o == settings.origin => continue,
            Ok(RedisPayload::Positioned {
                offset, epoch, json, ..
            }) => {
                position = Some(Position {
                    offset,
                    epoch: Arc::from(epoch),
                });
                Payload::from_json(json).map_err(|e| e.to_string())
            }
            Ok(RedisPayload::Raw(raw)) => Payload::from_json(&raw_payload_json(raw)).map_err(|e| e.to_string()),
            Ok(RedisPayload::Joined { origin: Some(o), .. } | RedisPayload::Left { origin: Some(o), .. })
                if o == settings.origin =>
            {
                continue
            }
            Ok(RedisPayload::Joined { user, info, .. }) => {
                match Payload::from_json(info) {
                    Ok(info) => sink.event(BrokerEvent::Presence {
                        channel: Arc::from(channel),
                        change: PresenceChange::Joined(PresenceMember {
                            user: Arc::from(user),
                            info,
                        }),
                    }),
                    Err(e) => warn_bad(channel, &e.to_string()),
                }
                continue;
            }
            Ok(RedisPayload::Left { user, .. }) => {
                sink.event(BrokerEvent::Presence {
                    channel: Arc::from(channel),
                    change: PresenceChange::Left(Arc::from(user)),
                });
                continue;
            }
            Err(e) => Err(e.to_string()),
        };
        match payload {
            Ok(payload) if channel == CONTROL_CHANNEL => sink.event(BrokerEvent::Control { payload }),
            Ok(payload) => sink.event(BrokerEvent::Publication {
                channel: Arc::from(channel),
                payload,
                position,
            }),
            Err(why) => warn_bad(channel, &why),
        }
    }
}
