use super::*;

const S: i64 = 1_000_000_000;

fn cfg() -> TimeConfig {
    TimeConfig {
        max_future_skew_ns: 300 * S,
        allowed_lateness_ns: 30 * S,
        idle_source_ns: 2 * S,
        max_buffered_events: 4,
    }
}

#[test]
fn a_time_far_ahead_of_receive_time_is_skewed_and_held_to_it() {
    let c = cfg();
    let now = 1_000_000 * S;
    // Within the skew: as is.
    let j = judge(now + 299 * S, None, now, &c);
    assert_eq!((j.time_ns, j.skewed), (now + 299 * S, false));
    // 2099 with no Kafka timestamp: the wall clock.
    let j = judge(4_070_908_800 * S, None, now, &c);
    assert_eq!((j.time_ns, j.skewed), (now, true));
    // A Kafka timestamp earlier than the wall clock bounds it (backfills, replays).
    let k_ms = (now - 3600 * S) / 1_000_000;
    let j = judge(now, Some(k_ms), now, &c);
    assert_eq!((j.time_ns, j.skewed), (now - 3600 * S, true));
    // A forged Kafka timestamp in 2099 does not help: the wall clock is earlier.
    let j = judge(4_070_908_800 * S, Some(4_070_908_800_000), now, &c);
    assert_eq!((j.time_ns, j.skewed), (now, true));
    // A backdated event is not skewed (lateness is judged against the watermark).
    assert!(!judge(0, None, now, &c).skewed);
}

#[test]
fn the_watermark_is_the_slowest_active_source_and_idle_sources_do_not_hold_it() {
    let c = cfg();
    let mut k = Clocks::default();
    let now = 10_000 * S;
    k.seen(0, now, true);
    k.accept(0, 100 * S, None, now, &c);
    k.seen(1, now, true);
    k.accept(1, 500 * S, None, now, &c);
    // Partition 1 runs ahead: the watermark stays with partition 0.
    assert_eq!(k.advance(now, &c), 100 * S);
    // An event of partition 0 at 200 s is not behind (nor late): it waits its turn.
    let a = k.accept(0, 200 * S, None, now, &c);
    assert!(!a.behind && !a.late);
    assert_eq!(k.advance(now, &c), 200 * S);
    // Partition 0 goes quiet past the idle time: it no longer holds partition 1 back.
    k.seen(1, now + 3 * S, true);
    assert_eq!(k.advance(now + 3 * S, &c), 500 * S);
    // Its next event is behind the watermark (evaluated at once), and late by > 30 s.
    k.seen(0, now + 4 * S, true);
    let a = k.accept(0, 250 * S, None, now + 4 * S, &c);
    assert!(a.behind && a.late);
    // The watermark never moves back.
    assert_eq!(k.advance(now + 4 * S, &c), 500 * S);
    let a = k.accept(0, 480 * S, None, now + 4 * S, &c);
    assert!(a.behind && !a.late, "within the allowed lateness");
    let src: HashMap<u32, SourceTime> = k.sources().map(|(i, s)| (i, *s)).collect();
    assert_eq!((src[&0].events, src[&0].late), (4, 1));
    assert_eq!(k.totals(), (0, 1));
}

#[test]
fn a_follower_holds_nothing_back_but_is_ordered_with_the_others() {
    let c = cfg();
    let mut k = Clocks::default();
    let now = 1_800_000_000 * S;
    let t = now - 60 * S;
    k.seen(0, now, true);
    k.accept(0, t, None, now, &c);
    // Another process's partition, read from its files a while after they were written.
    k.seen(9, now, false);
    k.accept(9, t - 20 * S, None, now, &c);
    assert_eq!(
        k.advance(now, &c),
        t,
        "the live log holds the watermark, the follower not"
    );
    // Its next event is ahead of the watermark: it waits its turn, ordered with the others.
    let a = k.accept(9, t + 3 * S, None, now, &c);
    assert!(!a.behind);
    k.seen(0, now + S, true);
    k.accept(0, t + 5 * S, None, now + S, &c);
    assert_eq!(k.advance(now + S, &c), t + 5 * S);
}

#[test]
fn in_a_catch_up_a_forged_timestamp_is_evaluated_where_its_log_stands_and_moves_nothing() {
    let c = cfg();
    let mut k = Clocks::default();
    // The stream is an hour behind the wall clock (a replay, a consumer catching up).
    let now = 1_800_000_000 * S;
    let t = now - 3600 * S;
    k.seen(0, now, true);
    k.seen(1, now, true);
    k.accept(0, t, None, now, &c);
    k.accept(1, t + S, None, now, &c);
    assert_eq!(k.advance(now, &c), t);
    let a = k.accept(1, 4_070_908_800 * S, Some(now / 1_000_000), now, &c);
    assert!(a.judged.skewed && !a.late);
    assert_eq!(
        a.judged.time_ns,
        t + S,
        "where partition 1 stood, not the wall clock"
    );
    // Partition 0 goes idle: the watermark goes to partition 1's newest honest time, not
    // to the receive time of the forged one (which would make every event after it late).
    k.seen(1, now + 3 * S, true);
    assert_eq!(k.advance(now + 3 * S, &c), t + S);
    let a = k.accept(0, t + 2 * S, None, now + 3 * S, &c);
    assert!(!a.behind && !a.late);
}

#[test]
fn one_forged_timestamp_moves_its_source_only_to_receive_time() {
    let c = cfg();
    let mut k = Clocks::default();
    let now = 1_800_000_000 * S;
    k.seen(0, now, true);
    k.seen(1, now, true);
    k.accept(1, now - S, None, now, &c);
    let a = k.accept(0, 4_070_908_800 * S, None, now, &c);
    assert!(a.judged.skewed);
    // The honest source still holds the watermark; the forged one got no further than now.
    assert_eq!(k.advance(now, &c), now - S);
    let a = k.accept(0, now + S, None, now + S, &c);
    assert!(!a.behind && !a.late);
    assert_eq!(k.totals(), (1, 0));
    // A saved watermark from before times were held (2099) is brought back to now.
    let mut r = Clocks::default();
    r.restore(4_070_908_800 * S, now + c.max_future_skew_ns);
    assert_eq!(r.watermark_ns(), now + c.max_future_skew_ns);
}

#[test]
fn the_buffer_releases_in_order_up_to_the_watermark_and_stays_bounded() {
    let p = |t: i64, tie: u64| Pending {
        time_ns: t,
        tie,
        log: 0,
        index: t as u64,
        slot: 0,
        row: 0,
        skewed: false,
        late: false,
        gap: false,
    };
    let mut r = Reorder::default();
    for (t, tie) in [(5, 0), (1, 9), (3, 0), (1, 2), (9, 0)] {
        r.push(p(t, tie));
    }
    let mut out = Vec::new();
    assert_eq!(r.ready(4, 10, &mut out), 0);
    let got: Vec<(i64, u64)> = out.iter().map(|p| (p.time_ns, p.tie)).collect();
    assert_eq!(got, [(1, 2), (1, 9), (3, 0)]);
    out.clear();
    for t in 10..14 {
        r.push(p(t, 0));
    }
    // Six waiting, four allowed: the two oldest are forced out.
    assert_eq!(r.ready(3, 4, &mut out), 2);
    assert_eq!(out.iter().map(|p| p.time_ns).collect::<Vec<_>>(), [5, 9]);
    assert_eq!(r.len(), 4);
}
