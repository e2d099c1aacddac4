//! Corking: while a shard is busy (more commands wait behind the one in hand), the
//! deliveries of its turn are gathered in each connection's queue instead of being
//! written one `send` each, and at the end of the turn every socket that got any
//! gets one vectored write for all of them. On loopback most of a delivery's cost
//! is the kernel's, per syscall and per packet, so a socket that takes k frames of
//! a turn costs about one write instead of k.
//!
//! A shard with nothing else waiting writes a publication at once, as without
//! corking: the gathering only happens when frames would have waited anyway. A turn
//! is bounded in commands and in time, so a gathered frame waits at most that long;
//! each write is bounded in bytes, and what a socket does not take stays in its
//! queue for its task, under the same slow-consumer limit as any queued frame.

use std::time::{Duration, Instant};

use slab::Slab;

use super::connection::Connection;

/// The most commands one busy turn handles before its writes go out.
pub const TURN_COMMANDS: usize = 64;
/// The longest a busy turn gathers before its writes go out, unless the last
/// turn's writes took long (see [`Cork::may_continue`]).
pub const TURN_TIME: Duration = Duration::from_millis(2);
/// The share of the last turn's write sweep a turn may gather for, when that is
/// longer than [`TURN_TIME`]: a frame waits at most this fraction of the sweep
/// it would have waited behind anyway.
pub const TURN_SHARE_OF_SWEEP: u32 = 4;
/// The longest a busy turn gathers whatever the sweeps take.
pub const TURN_TIME_MAX: Duration = Duration::from_millis(25);
/// The most bytes one corked write offers a socket (a frame that starts below it
/// goes whole).
pub const WRITE_BYTES: usize = 256 * 1024;

/// The connections with frames gathered in the current busy turn.
#[derive(Debug, Default)]
pub struct Cork {
    /// When the busy turn began; none while the shard writes at once.
    since: Option<Instant>,
    /// Slab key and id of each connection gathered for (the id guards a reused key).
    corked: Vec<(usize, u64)>,
    /// How long the last turn's writes took.
    last_sweep: Duration,
}

impl Cork {
    /// Starts gathering: the shard has more commands waiting.
    pub fn begin(&mut self) {
        self.since = Some(Instant::now());
    }

    /// Whether deliveries are being gathered.
    pub fn active(&self) -> bool {
        self.since.is_some()
    }

    /// Whether the turn may take another command: within its command and time
    /// bounds. The time bound is [`TURN_TIME`], or a quarter of the last turn's
    /// write sweep when that is longer (up to [`TURN_TIME_MAX`]): on a channel of
    /// 10,000 sockets one publication's deliveries take about as long as
    /// [`TURN_TIME`] to gather and tens of milliseconds to write, so a fixed 2 ms
    /// turn would gather one publication per sweep and write one frame per socket.
    pub fn may_continue(&self, handled: usize) -> bool {
        let limit = TURN_TIME.max((self.last_sweep / TURN_SHARE_OF_SWEEP).min(TURN_TIME_MAX));
        match self.since {
            Some(since) => handled < TURN_COMMANDS && since.elapsed() < limit,
            None => false,
        }
    }

    /// Lists a connection that got its first frame of the turn.
    pub fn add(&mut self, key: usize, id: u64) {
        self.corked.push((key, id));
    }

    /// Ends the turn: one vectored write per corked connection. Returns the writes
    /// made and the frames they completed.
    pub fn flush(&mut self, conns: &mut Slab<Connection>) -> (usize, usize) {
        self.since = None;
        let sweep = Instant::now();
        let mut writes = 0;
        let mut frames = 0;
        for (key, id) in self.corked.drain(..) {
            if let Some(conn) = conns.get_mut(key).filter(|c| c.id == id) {
                frames += conn.flush_corked(WRITE_BYTES);
                writes += 1;
            }
        }
        self.last_sweep = sweep.elapsed();
        if self.corked.capacity() > 4096 {
            // A turn to many sockets should not pin the list's memory for good.
            self.corked.shrink_to(4096);
        }
        (writes, frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn begun(ago_ms: u64, last_sweep_ms: u64) -> Cork {
        Cork {
            since: Instant::now().checked_sub(Duration::from_millis(ago_ms)),
            corked: Vec::new(),
            last_sweep: Duration::from_millis(last_sweep_ms),
        }
    }

    #[test]
    fn a_turn_gathers_for_2_ms_or_a_quarter_of_the_last_sweep_up_to_25() {
        assert!(!Cork::default().may_continue(0), "not gathering");
        assert!(begun(0, 0).may_continue(1));
        assert!(!begun(0, 0).may_continue(TURN_COMMANDS));
        assert!(!begun(5, 1).may_continue(1), "short sweeps: 2 ms");
        assert!(begun(5, 60).may_continue(1), "a 60 ms sweep: 15 ms");
        assert!(!begun(20, 60).may_continue(1));
        assert!(begun(20, 1000).may_continue(1), "a 1 s sweep: 25 ms");
        assert!(!begun(30, 1000).may_continue(1));
    }
}
