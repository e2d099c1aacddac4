//! A shard's periodic work: measuring its own event-loop lag, pinging quiet
//! connections and closing dead ones (one sweep over all connections instead of a
//! timer per connection), and the drain that closes every connection, spread over
//! a window, when the gateway shuts down.

use std::rc::Rc;
use std::time::{Duration, Instant};

use shardcast_proto::close;
use tokio::time::sleep_until;

use super::connection::{ConnectionFlags, Disconnect, Phase};
use super::pusher::{self, is_pusher};
use super::{Shard, ShardCore};
use crate::pusher::protocol;
use crate::ws::frame::ping_frame;

/// How often the shard checks its lag and sweeps its connections.
const TICK: Duration = Duration::from_millis(100);

/// Sweeps once every this many ticks.
const TICKS_PER_SWEEP: u32 = 5;

/// Runs for the shard's whole life.
pub(super) async fn run(core: Rc<ShardCore>) {
    let mut tick = 0u32;
    loop {
        let deadline = tokio::time::Instant::now() + TICK;
        sleep_until(deadline).await;
        let lag = tokio::time::Instant::now().saturating_duration_since(deadline);
        core.env.shard_metrics.lag.observe(lag.as_secs_f64());
        tick = tick.wrapping_add(1);
        if tick % TICKS_PER_SWEEP == 0 {
            core.with(|shard| {
                shard.sweep();
                shard.expire_identities();
            });
        }
    }
}

impl Shard<'_> {
    /// Pings connections that have been quiet for a ping interval, closes those
    /// quiet past the idle timeout, and ends closings that ran out of time.
    fn sweep(&mut self) {
        let env = self.env;
        let now = env.now();
        let ping_after = (env.config.ping_interval.as_millis() / 100) as u32;
        let idle_after = (env.config.idle_timeout.as_millis() / 100) as u32;
        let close_deadline = env.close_deadline();
        let ping = ping_frame();
        let pusher_ping = pusher::text_frame(&protocol::ping());
        for (_, conn) in self.st.conns.iter_mut() {
            match conn.phase {
                Phase::Open => {
                    let quiet = now.saturating_sub(conn.last_seen);
                    if quiet >= idle_after {
                        conn.close(
                            close::IDLE_TIMEOUT,
                            "idle timeout",
                            Disconnect::IdleTimeout,
                            close_deadline,
                        );
                    } else if quiet >= ping_after && !conn.flags.has(ConnectionFlags::PINGED) {
                        conn.flags.set(ConnectionFlags::PINGED, true);
                        // A Pusher socket is kept alive Pusher's way (PROTOCOL.md 20.1).
                        let ping = if is_pusher(conn) { &pusher_ping } else { &ping };
                        conn.send(ping, env.config.max_queue_bytes);
                    }
                }
                Phase::Closing { deadline, .. } if now >= deadline => {
                    // The reason the close started stays the recorded one.
                    conn.die(Disconnect::CloseTimeout);
                }
                _ => {}
            }
        }
    }
}

/// Closes every connection with "going away", in equal batches over `window`, so
/// the clients of a draining instance reconnect elsewhere gradually.
pub(super) async fn drain(core: Rc<ShardCore>, window: Duration) {
    let keys: Vec<usize> = core.with(|shard| shard.st.conns.iter().map(|(k, _)| k).collect());
    let steps = (window.as_millis() / TICK.as_millis()).max(1) as usize;
    let start = Instant::now();
    let mut done = 0usize;
    for step in 1..=steps {
        // Rounded up, so the first batch goes at once: a nearly empty instance is
        // done in one tick instead of waiting out the window.
        let until = (keys.len() * step).div_ceil(steps);
        if until > done {
            core.with(|shard| shard.close_going_away(&keys[done..until]));
            done = until;
        }
        if done == keys.len() {
            break;
        }
        sleep_until((start + TICK * step as u32).into()).await;
    }
}

impl Shard<'_> {
    /// Closes these connections with "going away" and a retry hint each.
    fn close_going_away(&mut self, keys: &[usize]) {
        let env = self.env;
        let deadline = env.close_deadline();
        for &key in keys {
            if let Some(conn) = self.st.conns.get_mut(key) {
                let retry_ms = retry_jitter_ms(env.id, conn.id);
                let reason = close::reason_with_retry("going away", retry_ms);
                conn.close(close::GOING_AWAY, &reason, Disconnect::GoingAway, deadline);
            }
        }
    }
}

/// A spread of up to a second on top of the batching, so clients closed in the same
/// tick (on any shard) do not all come back in the same millisecond. A hash of the
/// shard and connection ids: cheap, and different for every connection.
fn retry_jitter_ms(shard: usize, conn: u64) -> u64 {
    let mut x = conn ^ ((shard as u64) << 48) ^ 0x9e37_79b9_7f4a_7c15;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x % 1000
}
