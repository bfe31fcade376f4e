use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

type P = Partition<&'static str>;

fn t0() -> Instant {
    Instant::now()
}

fn take() -> Delivery {
    Delivery::Take { gap: false }
}

#[test]
fn an_empty_store_takes_whatever_the_topic_holds_from_its_beginning() {
    let now = t0();
    let mut p = P::assigned(-1, now);
    // Retention may have removed the topic's first records: the first one is no gap.
    assert_eq!(p.delivered(500, now), take());
    assert_eq!(p.delivered(501, now), take());
    assert_eq!(p.dispatched(), 501);
    assert_eq!(
        p.silent(now + RESUME_SILENCE * 10),
        None,
        "nothing to verify"
    );
}

#[test]
fn the_resume_point_delivered_first_is_trusted() {
    let now = t0();
    let mut p = P::assigned(99, now);
    assert_eq!(p.delivered(100, now), take());
    assert_eq!(p.delivered(101, now), take());
    assert_eq!(
        p.silent(now + RESUME_SILENCE),
        None,
        "verified: silence is fine"
    );
}

#[test]
fn a_record_before_the_resume_point_is_trusted_and_skipped() {
    let now = t0();
    let mut p = P::assigned(99, now);
    // The broker delivers from the start of the record batch holding offset 100.
    assert_eq!(p.delivered(96, now), Delivery::AlreadyHave);
    for o in 97..=99 {
        assert_eq!(p.delivered(o, now), Delivery::AlreadyHave);
    }
    assert_eq!(p.delivered(100, now), take());
}

#[test]
fn a_first_record_past_the_resume_point_seeks_back_widening_fourfold_down_to_zero() {
    let now = t0();
    let mut p = P::assigned(9_999, now);
    let seek = |to| Delivery::SeekBack {
        seek_to: to,
        expected: 10_000,
    };
    assert_eq!(p.delivered(10_500, now), seek(10_000 - 1024));
    assert_eq!(p.delivered(10_500, now), seek(10_000 - 4 * 1024));
    assert_eq!(p.delivered(10_500, now), seek(0), "16 Ki is past offset 0");
    // Read from offset 0, the broker's first record is what it holds: a jump seen once is
    // a suspect gap, read again from before it.
    assert_eq!(p.delivered(10_500, now), seek(10_000 - 1024));
    assert_eq!(p.dispatched(), 9_999, "nothing taken meanwhile");
}

#[test]
fn a_gap_is_recorded_when_the_broker_shows_the_same_jump_twice() {
    let now = t0();
    let mut p = P::assigned(-1, now);
    for o in 0..=9 {
        assert_eq!(p.delivered(o, now), take());
    }
    // Offsets 10..=19 are gone (compaction).
    assert_eq!(
        p.delivered(20, now),
        Delivery::SeekBack {
            seek_to: 0,
            expected: 10
        }
    );
    // Reading again from 0: the already-taken records are trusted and skipped…
    for o in 0..=9 {
        assert_eq!(p.delivered(o, now), Delivery::AlreadyHave);
    }
    // …and the same jump again is a gap.
    assert_eq!(p.delivered(20, now), Delivery::Take { gap: true });
    assert_eq!(p.delivered(21, now), take());
}

#[test]
fn a_different_jump_the_second_time_is_not_a_gap_yet() {
    let now = t0();
    let mut p = P::assigned(-1, now);
    assert_eq!(p.delivered(0, now), take());
    assert!(matches!(p.delivered(5, now), Delivery::SeekBack { .. }));
    assert_eq!(p.delivered(0, now), Delivery::AlreadyHave);
    // The broker now shows offset 3 after 0: a new suspect, not the recorded one.
    assert!(matches!(p.delivered(3, now), Delivery::SeekBack { .. }));
    assert_eq!(p.delivered(0, now), Delivery::AlreadyHave);
    assert_eq!(p.delivered(3, now), Delivery::Take { gap: true });
}

#[test]
fn re_deliveries_are_skipped() {
    let now = t0();
    let mut p = P::assigned(-1, now);
    for o in 0..5 {
        assert_eq!(p.delivered(o, now), take());
    }
    for o in 0..5 {
        assert_eq!(p.delivered(o, now), Delivery::AlreadyHave);
    }
    assert_eq!(p.delivered(5, now), take());
    assert_eq!(p.dispatched(), 5);
}

#[test]
fn a_silent_resume_point_seeks_back_after_the_silence_and_widens_each_time() {
    let now = t0();
    let mut p = P::assigned(99_999, now);
    assert_eq!(p.silent(now), None);
    assert_eq!(p.silent(now + RESUME_SILENCE / 2), None);
    let later = now + RESUME_SILENCE;
    assert_eq!(p.silent(later), Some(100_000 - 1024));
    assert_eq!(p.silent(later), None, "the silence restarts at each seek");
    assert_eq!(p.silent(later + RESUME_SILENCE), Some(100_000 - 4096));
    let mut at = later + RESUME_SILENCE;
    let mut last = 0;
    while let Some(to) = p.silent(at + RESUME_SILENCE) {
        at += RESUME_SILENCE;
        last = to;
    }
    assert_eq!(
        last, 0,
        "it ends reading from offset 0, then waits for what comes"
    );
    assert_eq!(p.silent(at + RESUME_SILENCE * 100), None);
}

#[test]
fn a_paused_partition_does_not_seek_back_on_silence() {
    let now = t0();
    let mut p = P::assigned(99, now);
    assert!(p.hold("chunk"));
    assert_eq!(p.silent(now + RESUME_SILENCE * 2), None);
}

#[test]
fn a_full_queue_pauses_once_and_room_resumes_once_nothing_is_held() {
    let now = t0();
    let mut p = P::assigned(-1, now);
    for o in 0..10 {
        p.delivered(o, now);
    }
    assert!(!p.wants_room());
    assert!(p.hold("a"), "the first full queue pauses");
    assert!(p.is_paused() && p.wants_room());
    assert!(!p.room(now), "a held chunk keeps it paused");
    assert_eq!(p.take_held(), Some("a"));
    assert!(!p.hold("a"), "held again while paused: no second pause");
    assert_eq!(p.take_held(), Some("a"));
    assert!(p.room(now), "nothing held: resume");
    assert!(!p.is_paused() && !p.wants_room());
    assert!(!p.room(now), "resumed once");
}

#[test]
fn a_paused_partition_whose_chunk_was_handed_on_elsewhere_is_still_resumed() {
    // The bug a bench found: the dispatch path hands a held chunk on (waiting for room)
    // before a newer one, so nothing is held any more but the partition is still paused; the
    // chores must still see it and resume it, or it stays paused for good.
    let now = t0();
    let mut p = P::assigned(-1, now);
    p.delivered(0, now);
    assert!(p.hold("older"));
    assert_eq!(p.take_held(), Some("older"), "handed on by dispatch");
    assert!(
        p.wants_room(),
        "paused with nothing held still wants the chores"
    );
    assert!(p.room(now));
    assert!(!p.is_paused());
}

#[test]
fn after_a_resume_the_position_is_verified_as_after_an_assignment() {
    let now = t0();
    let mut p = P::assigned(-1, now);
    for o in 0..=99 {
        p.delivered(o, now);
    }
    p.hold("c");
    p.take_held();
    assert!(p.room(now));
    // The broker resumes inside a record batch and skips to the next one.
    assert_eq!(
        p.delivered(128, now),
        Delivery::SeekBack {
            seek_to: 0,
            expected: 100
        }
    );
    assert_eq!(
        p.silent(now + RESUME_SILENCE),
        None,
        "read from 0: nothing further back"
    );
    assert_eq!(p.delivered(0, now), Delivery::AlreadyHave);
    assert_eq!(p.delivered(100, now), take());
}

#[test]
fn flushed_once_everything_taken_is_durable() {
    let now = t0();
    let mut p = P::assigned(9, now);
    assert!(p.is_flushed(), "nothing taken yet");
    p.delivered(10, now);
    p.delivered(11, now);
    assert!(!p.is_flushed());
    p.durable(10);
    assert!(!p.is_flushed());
    p.durable(11);
    assert!(p.is_flushed());
    p.durable(10);
    assert!(p.is_flushed(), "an older report does not move it back");
}

/// A partition's log as a broker holds it: offsets (increasing, with holes where records
/// were compacted away) in record batches. Like Tansu 0.6, a fetch starting strictly inside a
/// batch skips the rest of it.
struct Broker {
    batches: Vec<Vec<i64>>,
    /// Index into the flattened log of the next record to deliver.
    next: usize,
    log: Vec<i64>,
}

impl Broker {
    fn random(rng: &mut StdRng) -> Broker {
        let mut batches = Vec::new();
        let mut log = Vec::new();
        let mut o: i64 = rng.random_range(0..3) * rng.random_range(0..2000);
        for _ in 0..rng.random_range(1..12) {
            let mut b = Vec::new();
            for _ in 0..rng.random_range(1..300) {
                b.push(o);
                log.push(o);
                // Mostly consecutive; now and then a hole, small or large.
                o += match rng.random_range(0..100) {
                    0 => rng.random_range(2..5),
                    1 => rng.random_range(5..5000),
                    _ => 1,
                };
            }
            batches.push(b);
        }
        Broker {
            batches,
            next: 0,
            log,
        }
    }

    fn seek(&mut self, to: i64) {
        let inside = self
            .batches
            .iter()
            .find(|b| b[0] < to && to <= *b.last().expect("batches are not empty"));
        let from = match inside {
            Some(b) => b.last().expect("not empty") + 1,
            None => to,
        };
        self.next = self.log.partition_point(|&x| x < from);
    }

    fn poll(&mut self) -> Option<i64> {
        let o = *self.log.get(self.next)?;
        self.next += 1;
        Some(o)
    }
}

/// Drive a partition against a broker until it has nothing more to say: the records taken,
/// and the gaps recorded before which of them.
fn drive(rng: &mut StdRng, broker: &mut Broker, head: i64) -> (Vec<i64>, Vec<i64>) {
    let mut now = Instant::now();
    let mut p = P::assigned(head, now);
    broker.seek(if head >= 0 { head + 1 } else { 0 });
    let (mut taken, mut gaps) = (Vec::new(), Vec::new());
    // Now and then (a few times a run) the pipeline is full for a while: pause, then room
    // again, after which the broker reads on from after the last record taken.
    let mut pauses = rng.random_range(0..4);
    for _ in 0..100_000 {
        if pauses > 0 && rng.random_range(0..100) == 0 {
            pauses -= 1;
            assert!(p.hold("c"));
            assert!(!p.room(now));
            assert_eq!(p.take_held(), Some("c"));
            assert!(p.room(now));
            broker.seek(p.dispatched() + 1);
        }
        match broker.poll() {
            Some(o) => match p.delivered(o, now) {
                Delivery::Take { gap } => {
                    taken.push(o);
                    if gap {
                        gaps.push(o);
                    }
                }
                Delivery::AlreadyHave => {}
                Delivery::SeekBack { seek_to, expected } => {
                    assert!(seek_to < expected && seek_to >= 0);
                    broker.seek(seek_to);
                }
            },
            None => {
                now += RESUME_SILENCE;
                match p.silent(now) {
                    Some(to) => broker.seek(to),
                    None => return (taken, gaps),
                }
            }
        }
    }
    panic!("no end after 100 000 steps");
}

#[test]
fn against_a_broker_that_skips_batches_every_record_is_taken_once_in_order_and_every_hole_is_a_gap()
{
    for seed in 0..1_500u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut broker = Broker::random(&mut rng);
        // The store holds nothing, or the log up to one of its records.
        let stored = rng.random_range(0..=broker.log.len());
        let head = if stored == 0 {
            -1
        } else {
            broker.log[stored - 1]
        };
        let (taken, gaps) = drive(&mut rng, &mut broker, head);
        assert_eq!(
            taken,
            broker.log[stored..],
            "seed {seed}: the records after the head"
        );
        let mut expected_gaps = Vec::new();
        let mut prev = head;
        for &o in &taken {
            if prev >= 0 && o > prev + 1 {
                expected_gaps.push(o);
            }
            prev = o;
        }
        assert_eq!(
            gaps, expected_gaps,
            "seed {seed}: gaps exactly at the holes"
        );
    }
}
