//! One assigned partition's decisions, without I/O (a sans-IO core, as in quinn-proto): the
//! consumer thread feeds it what happened — a record delivered at an offset, silence, a full
//! pipeline queue, room again, a file durable — and does what it answers: take or skip the
//! record, make the broker read again from an earlier offset, pause or resume the partition.
//! The rdkafka calls, the chunks' contents and the metrics are the caller's.
//!
//! What it decides, and why:
//! - **Resume verification.** After an assignment, a seek or a pause, the first record the
//!   broker sends must be at or before the next offset the store needs. Some brokers (Tansu
//!   0.6) skip the rest of a record batch when a fetch starts inside it, so a later first
//!   record is not yet a gap: the broker is made to read again from before the resume point,
//!   the window widening fourfold each time, down to offset 0 (after which whatever it sends
//!   is what it holds). Silence past [`RESUME_SILENCE`] means the same (the resume point was
//!   in the last batch, and there is no next one to skip to).
//! - **Re-deliveries** (offsets already taken) are skipped.
//! - **Gaps.** A jump in offsets is recorded as a gap (compaction, transaction markers,
//!   retention) only when the broker shows the same jump twice, the second time reading on
//!   from before it.
//! - **Back-pressure.** A chunk the pipeline has no room for is held here and the partition
//!   paused; it is resumed as soon as nothing is held any more — whoever handed the held chunk
//!   on — and then verified as after an assignment.

use std::time::{Duration, Instant};

/// How long a resuming partition may stay silent before the broker is made to read again
/// from before the resume point.
pub(crate) const RESUME_SILENCE: Duration = Duration::from_secs(2);

/// First seek-back window; widened fourfold each time the broker again starts too late.
pub(crate) const RESUME_WINDOW: i64 = 1024;

/// What to do with a record the broker delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Take it: it is the partition's next record. `gap`: offsets before it were never
    /// delivered and are known not to exist (the chain records the jump).
    Take { gap: bool },
    /// Already taken (a re-delivery): skip it.
    AlreadyHave,
    /// Drop it (it comes again) and make the broker read again from `seek_to`: it started
    /// after `expected`, the next offset wanted, and that is not trusted as a gap yet.
    SeekBack { seek_to: i64, expected: i64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Resume {
    /// The next offset the store needs.
    next: i64,
    /// How far before `next` the next seek-back goes; 0 once it has gone back to offset 0.
    window: i64,
    /// When the partition was (re)positioned.
    since: Instant,
}

impl Resume {
    fn new(next: i64, now: Instant) -> Resume {
        Resume {
            next,
            window: RESUME_WINDOW,
            since: now,
        }
    }

    /// Where to seek back to now, and the state for the next attempt.
    fn step_back(self, now: Instant) -> (i64, Resume) {
        let target = (self.next - self.window).max(0);
        let window = if target == 0 {
            0
        } else {
            self.window.saturating_mul(4)
        };
        (
            target,
            Resume {
                next: self.next,
                window,
                since: now,
            },
        )
    }
}

/// One assigned partition's position and flow state. `C` is what a held chunk is (the caller's
/// records; opaque here).
#[derive(Debug)]
pub(crate) struct Partition<C> {
    /// Offset of the last record taken, or the store's head at assignment (-1: empty).
    /// Records at or before it are stored or on their way.
    dispatched: i64,
    /// Offset of the last record known durable.
    durable: i64,
    /// A chunk the pipeline queue had no room for; the partition is paused meanwhile.
    held: Option<C>,
    paused: bool,
    /// Set while the broker's position is not yet trusted (see the module's docs).
    resume: Option<Resume>,
    /// A jump in offsets seen once: (head, offset delivered after it).
    suspect_gap: Option<(i64, i64)>,
}

impl<C> Partition<C> {
    /// A partition assigned with the store holding it up to `head` (-1: nothing). An empty
    /// store takes whatever the topic still holds from its beginning; otherwise the broker's
    /// first record is verified against `head + 1`.
    pub(crate) fn assigned(head: i64, now: Instant) -> Partition<C> {
        assert!(head >= -1, "a store head is an offset or -1");
        Partition {
            dispatched: head,
            durable: head,
            held: None,
            paused: false,
            resume: (head >= 0).then(|| Resume::new(head + 1, now)),
            suspect_gap: None,
        }
    }

    /// Offset of the last record taken (or the store's head at assignment).
    pub(crate) fn dispatched(&self) -> i64 {
        self.dispatched
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.paused
    }

    /// Whether the clock-driven chores have something to do here: a held chunk to offer
    /// again, or a pause to lift.
    pub(crate) fn wants_room(&self) -> bool {
        self.held.is_some() || self.paused
    }

    /// Everything taken is durable.
    pub(crate) fn is_flushed(&self) -> bool {
        self.durable >= self.dispatched
    }

    /// The broker delivered a record at `offset`.
    pub(crate) fn delivered(&mut self, offset: i64, now: Instant) -> Delivery {
        if let Some(r) = self.resume {
            if offset <= r.next || r.window == 0 {
                // At or before the resume point (or read from offset 0): trusted from here.
                self.resume = None;
            } else {
                let (seek_to, next_try) = r.step_back(now);
                self.resume = Some(next_try);
                return Delivery::SeekBack {
                    seek_to,
                    expected: r.next,
                };
            }
        }
        let head = self.dispatched;
        if offset <= head {
            return Delivery::AlreadyHave;
        }
        let mut gap = false;
        if head >= 0 && offset > head + 1 {
            if self.suspect_gap == Some((head, offset)) {
                // Seen twice, the second time reading on from before it: a real gap.
                self.suspect_gap = None;
                gap = true;
            } else {
                self.suspect_gap = Some((head, offset));
                let (seek_to, next_try) = Resume::new(head + 1, now).step_back(now);
                self.resume = Some(next_try);
                return Delivery::SeekBack {
                    seek_to,
                    expected: head + 1,
                };
            }
        }
        assert!(
            offset > self.dispatched,
            "records are taken in offset order"
        );
        self.dispatched = offset;
        Delivery::Take { gap }
    }

    /// Nothing was delivered for a while: the offset to make the broker read again from,
    /// when a resume point has stayed silent past [`RESUME_SILENCE`].
    pub(crate) fn silent(&mut self, now: Instant) -> Option<i64> {
        let r = self.resume?;
        if self.paused || r.window == 0 || now.saturating_duration_since(r.since) < RESUME_SILENCE {
            return None;
        }
        let (seek_to, next_try) = r.step_back(now);
        self.resume = Some(next_try);
        Some(seek_to)
    }

    /// The pipeline queue had no room for `chunk`: hold it. True when the partition must be
    /// paused now (it was not already).
    pub(crate) fn hold(&mut self, chunk: C) -> bool {
        assert!(self.held.is_none(), "one chunk held at most");
        self.held = Some(chunk);
        !std::mem::replace(&mut self.paused, true)
    }

    /// Take the held chunk to hand it on (if it does not get in, [`Self::hold`] it again).
    pub(crate) fn take_held(&mut self) -> Option<C> {
        self.held.take()
    }

    /// Room again (nothing held any more): true when the partition must be resumed now. The
    /// broker then reads on from after the last record taken, which may be inside a record
    /// batch, so the position is verified as after an assignment.
    pub(crate) fn room(&mut self, now: Instant) -> bool {
        if !self.paused || self.held.is_some() {
            return false;
        }
        self.paused = false;
        self.resume = Some(Resume::new(self.dispatched + 1, now));
        true
    }

    /// A file holding records up to `last_offset` is durable.
    pub(crate) fn durable(&mut self, last_offset: i64) {
        debug_assert!(
            last_offset <= self.dispatched,
            "durable {last_offset} beyond taken {}",
            self.dispatched
        );
        self.durable = self.durable.max(last_offset);
    }
}

#[cfg(test)]
mod tests;
