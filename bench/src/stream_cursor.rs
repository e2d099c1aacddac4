//! `StreamCursor`: where one load-generator connection stands in its channel's
//! history (PROTOCOL.md 19): the epoch and offset of the last publication it
//! received, so that it can resubscribe with `recover` after a storm, and what the
//! offsets it saw say: publications missed (a hole) or received twice.

use serde::{Deserialize, Serialize};
use shardcast_proto::StreamPosition;

/// Offsets seen by the connections of one worker, counted (since the start).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct OffsetCounts {
    /// Subscribes with `recover` answered `recovered: true`.
    pub recovered: u64,
    /// Subscribes with `recover` answered `recovered: false` (or without the field).
    pub not_recovered: u64,
    /// Publications never received: holes between consecutive offsets, and the
    /// offsets a subscribe without recovery skipped.
    pub missed: u64,
    /// Publications received at or below an offset already received.
    pub duplicates: u64,
    /// Message frames seen with an offset.
    pub with_offset: u64,
}

impl OffsetCounts {
    /// Adds another count in.
    pub fn add(&mut self, o: &OffsetCounts) {
        self.recovered += o.recovered;
        self.not_recovered += o.not_recovered;
        self.missed += o.missed;
        self.duplicates += o.duplicates;
        self.with_offset += o.with_offset;
    }
}

/// The position fields of a subscribe's `ack`.
#[derive(Debug, Clone, Default)]
pub struct AckPosition {
    /// The channel's top offset when the subscription started.
    pub offset: Option<u64>,
    /// The channel's epoch.
    pub epoch: Option<String>,
    /// The outcome of a `recover`.
    pub recovered: Option<bool>,
}

/// One connection's place in its channel's stream.
#[derive(Debug, Default)]
pub struct StreamCursor {
    epoch: Option<String>,
    last: u64,
    /// After a recovered subscribe: the `ack`'s top, received once caught up.
    catch_up_to: Option<u64>,
}

impl StreamCursor {
    /// Where a `recover` should start: the last publication received.
    pub fn position(&self) -> Option<StreamPosition> {
        self.epoch.as_ref().map(|epoch| StreamPosition {
            offset: self.last,
            epoch: epoch.clone(),
        })
    }

    /// Takes in a subscribe's `ack`; true while the publications it recovered are
    /// still to come (the connection has not caught up yet).
    pub fn on_ack(&mut self, ack: &AckPosition, asked_to_recover: bool, counts: &mut OffsetCounts) -> bool {
        let Some(top) = ack.offset else {
            return false;
        };
        let same_epoch = self.epoch.is_some() && self.epoch == ack.epoch;
        if asked_to_recover {
            if ack.recovered == Some(true) && same_epoch {
                counts.recovered += 1;
                if top > self.last {
                    self.catch_up_to = Some(top);
                    return true;
                }
                return false;
            }
            counts.not_recovered += 1;
        }
        // Live delivery starts after `top`: what lies between is lost to this connection.
        if same_epoch {
            counts.missed += top.saturating_sub(self.last);
        }
        self.epoch = ack.epoch.clone();
        self.last = top;
        false
    }

    /// Takes in a message's position; true when it completes a catch-up.
    pub fn on_message(&mut self, offset: u64, epoch: &str, counts: &mut OffsetCounts) -> bool {
        counts.with_offset += 1;
        if self.epoch.as_deref() != Some(epoch) {
            // A new epoch restarts the numbering: nothing to compare with.
            self.epoch = Some(epoch.to_owned());
            self.last = offset;
        } else if offset <= self.last {
            counts.duplicates += 1;
        } else {
            counts.missed += offset - self.last - 1;
            self.last = offset;
        }
        match self.catch_up_to {
            Some(top) if self.last >= top => {
                self.catch_up_to = None;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(offset: u64, epoch: &str, recovered: Option<bool>) -> AckPosition {
        AckPosition {
            offset: Some(offset),
            epoch: Some(epoch.into()),
            recovered,
        }
    }

    #[test]
    fn holes_duplicates_and_catch_up_are_counted() {
        let mut c = StreamCursor::default();
        let mut n = OffsetCounts::default();
        assert!(!c.on_ack(&ack(10, "e", None), false, &mut n));
        assert!(!c.on_message(11, "e", &mut n));
        assert!(!c.on_message(13, "e", &mut n));
        assert!(!c.on_message(13, "e", &mut n));
        assert_eq!((n.missed, n.duplicates), (1, 1));
        assert_eq!(c.position().map(|p| p.offset), Some(13));
        // Recovered: 14..=16 follow the ack; caught up at 16.
        assert!(c.on_ack(&ack(16, "e", Some(true)), true, &mut n));
        assert!(!c.on_message(14, "e", &mut n));
        assert!(!c.on_message(15, "e", &mut n));
        assert!(c.on_message(16, "e", &mut n));
        assert_eq!((n.recovered, n.missed), (1, 1));
        // A plain resubscribe skips what was published meanwhile.
        assert!(!c.on_ack(&ack(20, "e", None), false, &mut n));
        assert_eq!(n.missed, 5);
        // Not recovered (another epoch): nothing to count as missed.
        assert!(!c.on_ack(&ack(3, "f", Some(false)), true, &mut n));
        assert_eq!((n.not_recovered, n.missed), (1, 5));
    }
}
