//! The order of a channel with history on one instance (PROTOCOL.md 19.5): its
//! publications reach the instance by two paths (this instance's own publishes,
//! numbered by the store, and other instances' through the broker), so they can
//! cross; the cursor hands them on in strictly increasing offset order, each
//! offset once, holds what comes early, and says when the store must fill a hole.
//! Pure logic: the router owns one per channel and does what it asks.

use std::collections::BTreeMap;
use std::sync::Arc;

use shardcast_proto::GapReason;

use crate::broker::{HistoryPage, HistoryPolicy, Position};
use crate::payload::Payload;

/// Held publications per channel at most; beyond, the hole is given up as a gap.
const MAX_HELD: usize = 100_000;

/// One publication in the cursor's hands, with whatever travels along (the
/// publisher's reply, for the router).
pub struct Entry<T> {
    /// Its position.
    pub position: Position,
    /// The data.
    pub payload: Payload,
    /// What the router attached.
    pub extra: T,
}

/// What the router must do next, in order.
pub enum Action<T> {
    /// Deliver this publication to the channel's subscribers.
    Deliver(Entry<T>),
    /// Drop it: it was delivered already (the router answers its publisher with 0).
    Duplicate(Entry<T>),
    /// Tell the channel's subscribers that publications were lost, and why.
    Gap(GapReason),
}

/// A channel's delivery order on this instance.
pub struct HistoryCursor<T> {
    /// The channel's policy, for reads.
    pub policy: HistoryPolicy,
    /// Most publications one read returns.
    pub read_limit: usize,
    epoch: Option<Arc<str>>,
    /// The next offset to deliver; 0 until the position is known.
    next: u64,
    held: BTreeMap<u64, Entry<T>>,
    /// A store read is in flight: it will fill the hole.
    pub filling: bool,
    /// A hole check is scheduled (one at a time, however many arrive early).
    pub check_armed: bool,
}

impl<T> HistoryCursor<T> {
    /// A cursor whose position is not known yet.
    pub fn new(policy: HistoryPolicy, read_limit: usize) -> HistoryCursor<T> {
        HistoryCursor {
            policy,
            read_limit: read_limit.max(1),
            epoch: None,
            next: 0,
            held: BTreeMap::new(),
            filling: false,
            check_armed: false,
        }
    }

    /// The last position delivered (or the starting position), if known.
    pub fn position(&self) -> Option<Position> {
        self.epoch.as_ref().filter(|_| self.next > 0).map(|epoch| Position {
            offset: self.next - 1,
            epoch: epoch.clone(),
        })
    }

    /// The store's answer to the first read: delivery starts after `top`; what was
    /// held and is past it follows.
    pub fn start(&mut self, epoch: Arc<str>, top: u64, out: &mut Vec<Action<T>>) {
        self.epoch = Some(epoch);
        self.next = top + 1;
        self.drain(out);
    }

    /// A publication arrived.
    pub fn offer(&mut self, entry: Entry<T>, out: &mut Vec<Action<T>>) {
        let Some(epoch) = &self.epoch else {
            // Position not known yet: hold everything until it is.
            self.hold(entry, out);
            return;
        };
        if *epoch != entry.position.epoch {
            // The store lost the channel's history and started over at 1: what this
            // instance missed of the new epoch is filled from the store (a hole).
            out.push(Action::Gap(GapReason::EpochChanged));
            self.epoch = Some(entry.position.epoch.clone());
            self.held.clear();
            self.next = 1;
        }
        if entry.position.offset < self.next {
            out.push(Action::Duplicate(entry));
            return;
        }
        if entry.position.offset == self.next {
            self.next += 1;
            out.push(Action::Deliver(entry));
            self.drain(out);
        } else {
            self.hold(entry, out);
        }
    }

    /// Whether publications are missing before held ones, and the read that would
    /// fill them: `(since, limit)`.
    pub fn hole(&self) -> Option<(u64, usize)> {
        let (first, _) = self.held.first_key_value()?;
        (self.next > 0 && *first > self.next).then(|| {
            let missing = (*first - self.next) as usize;
            (self.next - 1, missing.min(self.read_limit))
        })
    }

    /// A catch-up read is due from the last delivered offset (the broker may have
    /// lost publications): `(since, limit)`.
    pub fn catch_up(&self) -> Option<(u64, usize)> {
        (self.next > 0).then(|| (self.next - 1, self.read_limit))
    }

    /// The store's answer to a hole or catch-up read. Returns whether more may be
    /// missing (the read was full): the router then reads again.
    pub fn filled(&mut self, page: HistoryPage, make: impl Fn() -> T, out: &mut Vec<Action<T>>) -> bool {
        self.filling = false;
        if self.epoch.as_ref() != Some(&page.epoch) {
            // The store started a new epoch: read it again from its beginning.
            out.push(Action::Gap(GapReason::EpochChanged));
            self.epoch = Some(page.epoch.clone());
            self.held.retain(|_, e| e.position.epoch == page.epoch);
            self.next = 1;
            return true;
        }
        let full = page.publications.len() >= self.read_limit;
        for (offset, payload) in page.publications {
            if offset < self.next {
                continue;
            }
            if offset > self.next {
                // The store no longer holds the ones before it.
                out.push(Action::Gap(GapReason::TooFar));
            }
            self.next = offset + 1;
            self.held.remove(&offset);
            out.push(Action::Deliver(Entry {
                position: Position {
                    offset,
                    epoch: page.epoch.clone(),
                },
                payload,
                extra: make(),
            }));
        }
        if full && self.next <= page.top {
            return true;
        }
        if self.hole().is_some() {
            // What is still missing is not in the store: give it up.
            out.push(Action::Gap(GapReason::TooFar));
            self.skip_to_held(out);
        }
        self.drain(out);
        false
    }

    /// The store could not be read: give the hole up.
    pub fn fill_failed(&mut self, out: &mut Vec<Action<T>>) {
        self.filling = false;
        if self.hole().is_some() {
            out.push(Action::Gap(GapReason::Unavailable));
            self.skip_to_held(out);
        }
    }

    fn skip_to_held(&mut self, out: &mut Vec<Action<T>>) {
        if let Some((first, _)) = self.held.first_key_value() {
            self.next = *first;
        }
        self.drain(out);
    }

    fn hold(&mut self, entry: Entry<T>, out: &mut Vec<Action<T>>) {
        if self.held.len() >= MAX_HELD {
            out.push(Action::Gap(GapReason::TooFar));
            self.skip_to_held(out);
        }
        self.held.insert(entry.position.offset, entry);
    }

    /// Delivers the held publications that are next in line.
    fn drain(&mut self, out: &mut Vec<Action<T>>) {
        while let Some(entry) = self.held.first_entry() {
            let offset = *entry.key();
            if offset < self.next {
                out.push(Action::Duplicate(entry.remove()));
            } else if offset == self.next {
                self.next += 1;
                out.push(Action::Deliver(entry.remove()));
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn entry(offset: u64, epoch: &str) -> Entry<()> {
        Entry {
            position: Position {
                offset,
                epoch: Arc::from(epoch),
            },
            payload: Payload::from_json(&offset.to_string()).unwrap(),
            extra: (),
        }
    }

    fn cursor() -> HistoryCursor<()> {
        HistoryCursor::new(
            HistoryPolicy {
                size: 100,
                ttl: Duration::from_secs(60),
            },
            1000,
        )
    }

    fn delivered(out: &[Action<()>]) -> Vec<u64> {
        out.iter()
            .filter_map(|a| match a {
                Action::Deliver(e) => Some(e.position.offset),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn crossing_publications_come_out_in_order_once() {
        let mut c = cursor();
        let mut out = Vec::new();
        c.offer(entry(5, "e"), &mut out);
        c.start(Arc::from("e"), 3, &mut out);
        assert_eq!(delivered(&out), Vec::<u64>::new());
        assert_eq!(c.hole(), Some((3, 1)));
        c.offer(entry(4, "e"), &mut out);
        c.offer(entry(4, "e"), &mut out);
        c.offer(entry(6, "e"), &mut out);
        assert_eq!(delivered(&out), [4, 5, 6]);
        assert!(c.hole().is_none());
        assert_eq!(c.position().unwrap().offset, 6);
    }

    #[test]
    fn a_hole_is_filled_from_the_store() {
        let mut c = cursor();
        let mut out = Vec::new();
        c.start(Arc::from("e"), 0, &mut out);
        c.offer(entry(3, "e"), &mut out);
        let (since, limit) = c.hole().unwrap();
        assert_eq!((since, limit), (0, 2));
        let page = HistoryPage {
            epoch: Arc::from("e"),
            top: 3,
            publications: (1..=3).map(|o| (o, Payload::from_json("0").unwrap())).collect(),
        };
        assert!(!c.filled(page, || (), &mut out));
        assert_eq!(delivered(&out), [1, 2, 3]);
    }

    #[test]
    fn a_new_epoch_is_a_gap_then_starts_at_one() {
        let mut c = cursor();
        let mut out = Vec::new();
        c.start(Arc::from("e"), 7, &mut out);
        c.offer(entry(1, "f"), &mut out);
        assert!(matches!(out[0], Action::Gap(GapReason::EpochChanged)));
        assert_eq!(delivered(&out), [1]);
        let mut later = Vec::new();
        c.offer(entry(3, "g"), &mut later);
        assert_eq!(delivered(&later), Vec::<u64>::new());
        assert_eq!(
            c.hole(),
            Some((0, 2)),
            "the new epoch's first two are read from the store"
        );
    }
}
