//! Group keys: the values of a rule's `group_by` fields for one event, hashed and compared
//! without allocating; allocated once, as text, when a group is created.

use std::hash::{BuildHasher, Hash, Hasher};

use serde::{Deserialize, Serialize};

use crate::filter::{Field, FieldType, Row};
use crate::hit::{Counters, Outcome};

/// A rule's group-by fields (name, field).
pub type GroupBy = Vec<(String, Field)>;

/// A group's key as alerts report it: one value per group-by field (`None`: the event lacked it).
pub type Key = Vec<Option<String>>;

/// A group key's text as a rule with `normalize_keys` compares it: Unicode NFKC (full-width
/// letters, ligatures, superscripts become plain ones), lower case, then the UTS #39
/// confusable skeleton (a Cyrillic `а` or a Greek `ο` that looks like a Latin letter becomes
/// it). `alice`, `Alice`, `ＡＬＩＣＥ` and `аlice` (Cyrillic а) are one group. Used to hash and
/// compare only: the key an alert shows is the value as first seen.
pub fn normalize(s: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let lower = s.nfkc().collect::<String>().to_lowercase();
    unicode_security::confusable_detection::skeleton(&lower).collect()
}

/// A string field's value as the group compares it.
fn key_str<'a>(f: &Field, s: &'a str) -> std::borrow::Cow<'a, str> {
    if f.normalize {
        std::borrow::Cow::Owned(normalize(s))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// Hash of the row's group-by values.
pub fn hash(fields: &GroupBy, row: &impl Row, state: &impl BuildHasher) -> u64 {
    let mut h = state.build_hasher();
    for (_, f) in fields {
        hash_value(f, row, &mut h);
    }
    h.finish()
}

/// Hash of a stored key, equal to [`hash`] of any row with these values.
pub fn hash_key(fields: &GroupBy, key: &[Option<String>], state: &impl BuildHasher) -> u64 {
    let mut h = state.build_hasher();
    for ((_, f), k) in fields.iter().zip(key) {
        match f.ty {
            FieldType::Str => k.as_deref().map(|k| key_str(f, k)).as_deref().hash(&mut h),
            FieldType::Int => k
                .as_deref()
                .and_then(|k| k.parse::<i64>().ok())
                .hash(&mut h),
            FieldType::Bool => k
                .as_deref()
                .and_then(|k| k.parse::<bool>().ok())
                .hash(&mut h),
        }
    }
    h.finish()
}

/// Hash one field's value (for distinct counting too).
pub fn hash_value(f: &Field, row: &impl Row, h: &mut impl Hasher) {
    match f.ty {
        FieldType::Str if f.normalize => {
            row.str(f.column).map(|s| key_str(f, s)).as_deref().hash(h)
        }
        FieldType::Str => row.str(f.column).hash(h),
        FieldType::Int => row.int(f.column).hash(h),
        FieldType::Bool => row.bool(f.column).hash(h),
    }
}

/// Whether the row has a value for the field.
pub fn present(f: &Field, row: &impl Row) -> bool {
    match f.ty {
        FieldType::Str => row.str(f.column).is_some(),
        FieldType::Int => row.int(f.column).is_some(),
        FieldType::Bool => row.bool(f.column).is_some(),
    }
}

/// One field's value as text.
pub fn value(f: &Field, row: &impl Row) -> Option<String> {
    match f.ty {
        FieldType::Str => row.str(f.column).map(str::to_owned),
        FieldType::Int => row.int(f.column).map(|i| i.to_string()),
        FieldType::Bool => row.bool(f.column).map(|b| b.to_string()),
    }
}

/// Whether the row's value of `f` is `text` (as [`value`] would write it), without allocating.
pub fn value_is(f: &Field, row: &impl Row, text: &str) -> bool {
    match f.ty {
        FieldType::Str if f.normalize => {
            row.str(f.column).map(|s| key_str(f, s)).as_deref() == Some(&key_str(f, text))
        }
        FieldType::Str => row.str(f.column) == Some(text),
        FieldType::Int => row.int(f.column).is_some_and(|i| text.parse() == Ok(i)),
        FieldType::Bool => row.bool(f.column).is_some_and(|b| text.parse() == Ok(b)),
    }
}

/// The row's key, allocated (when a group is created).
pub fn key(fields: &GroupBy, row: &impl Row) -> Key {
    fields.iter().map(|(_, f)| value(f, row)).collect()
}

/// Whether the row belongs to the group with this key, without allocating.
pub fn matches(fields: &GroupBy, key: &[Option<String>], row: &impl Row) -> bool {
    fields.iter().zip(key).all(|((_, f), k)| match f.ty {
        FieldType::Str if f.normalize => match (row.str(f.column), k.as_deref()) {
            (Some(v), Some(k)) => key_str(f, v) == key_str(f, k),
            (v, k) => v.is_none() && k.is_none(),
        },
        FieldType::Str => row.str(f.column) == k.as_deref(),
        FieldType::Int => row.int(f.column) == k.as_deref().and_then(|k| k.parse().ok()),
        FieldType::Bool => row.bool(f.column) == k.as_deref().and_then(|k| k.parse().ok()),
    })
}

/// A rule's groups, bounded: at most `max`. When a new group would exceed it, the least
/// recently seen sixteenth of the groups is evicted at once (amortised O(1) per new group) and
/// counted. Groups sit inline in one hash table (one probe per event, the stored hash compared
/// before the key).
#[derive(Debug)]
pub struct Table<S> {
    groups: hashbrown::HashTable<Entry<S>>,
    hasher: foldhash::fast::RandomState,
    clock: u64,
    max: usize,
    pub evicted: u64,
}

/// One group as persisted: its key, its state, and when it was last seen (table clock).
#[derive(Debug, Serialize, Deserialize)]
pub struct Entry<S> {
    pub key: Key,
    pub state: S,
    pub seen: u64,
    /// The key's hash under this process's seed (never persisted).
    #[serde(skip)]
    hash: u64,
}

impl<S> Table<S> {
    pub fn new(max: usize) -> Table<S> {
        assert!(max >= 1, "a rule keeps at least one group");
        Table {
            groups: hashbrown::HashTable::new(),
            hasher: Default::default(),
            clock: 0,
            max,
            evicted: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// The row's group if it has one.
    pub fn get(&mut self, fields: &GroupBy, row: &impl Row) -> Option<(&Key, &mut S)> {
        let h = hash(fields, row, &self.hasher);
        let e = self
            .groups
            .find_mut(h, |e| e.hash == h && matches(fields, &e.key, row))?;
        self.clock += 1;
        e.seen = self.clock;
        Some((&e.key, &mut e.state))
    }

    /// The group with this stored key, if any.
    pub fn get_by_key(&self, fields: &GroupBy, key: &[Option<String>]) -> Option<&S> {
        let h = hash_key(fields, key, &self.hasher);
        self.groups
            .find(h, |e| e.hash == h && e.key == key)
            .map(|e| &e.state)
    }

    /// The group with this stored key, mutably, if any.
    pub fn get_by_key_mut(&mut self, fields: &GroupBy, key: &[Option<String>]) -> Option<&mut S> {
        let h = hash_key(fields, key, &self.hasher);
        self.groups
            .find_mut(h, |e| e.hash == h && e.key == key)
            .map(|e| &mut e.state)
    }

    /// Remove the group with this stored key; its state if it had one.
    pub fn remove_by_key(&mut self, fields: &GroupBy, key: &[Option<String>]) -> Option<S> {
        let h = hash_key(fields, key, &self.hasher);
        self.groups
            .find_entry(h, |e| e.hash == h && e.key == key)
            .ok()
            .map(|e| e.remove().0.state)
    }

    /// The row's group, created with `init` if new.
    pub fn entry(
        &mut self,
        fields: &GroupBy,
        row: &impl Row,
        init: impl FnOnce() -> S,
    ) -> (&Key, &mut S) {
        self.clock += 1;
        let h = hash(fields, row, &self.hasher);
        let (clock, max) = (self.clock, self.max);
        let e = match self
            .groups
            .find_entry(h, |e| e.hash == h && matches(fields, &e.key, row))
        {
            Ok(found) => found.into_mut(),
            Err(absent) => {
                let groups = absent.into_table();
                if groups.len() >= max {
                    self.evicted += evict_oldest(groups);
                }
                groups
                    .insert_unique(
                        h,
                        Entry {
                            key: key(fields, row),
                            state: init(),
                            seen: 0,
                            hash: h,
                        },
                        |e| e.hash,
                    )
                    .into_mut()
            }
        };
        e.seen = clock;
        (&e.key, &mut e.state)
    }

    /// Keep only the groups `keep` says to.
    pub fn retain(&mut self, mut keep: impl FnMut(&S) -> bool) {
        self.groups.retain(|e| keep(&e.state));
    }

    /// Every group, for persisting.
    pub fn entries(&self) -> impl Iterator<Item = &Entry<S>> {
        self.groups.iter()
    }

    /// Groups as persisted by [`Table::entries`], rehashed (hashes are never persisted: the
    /// hasher is seeded per process).
    pub fn restore(&mut self, fields: &GroupBy, entries: Vec<Entry<S>>) {
        for mut e in entries {
            if e.key.len() != fields.len() {
                continue;
            }
            self.clock = self.clock.max(e.seen);
            e.hash = hash_key(fields, &e.key, &self.hasher);
            let h = e.hash;
            self.groups.insert_unique(h, e, |e| e.hash);
        }
        while self.groups.len() > self.max {
            self.evicted += evict_oldest(&mut self.groups);
        }
    }
}

/// Drop the least recently seen sixteenth of the groups (at least one); how many went.
fn evict_oldest<S>(groups: &mut hashbrown::HashTable<Entry<S>>) -> u64 {
    let mut seen: Vec<u64> = groups.iter().map(|e| e.seen).collect();
    if seen.is_empty() {
        return 0;
    }
    let n = (seen.len() / 16).max(1);
    let (_, cut, _) = seen.select_nth_unstable(n - 1);
    let cut = *cut;
    let mut dropped = 0;
    groups.retain(|e| {
        let keep = e.seen > cut || dropped >= n;
        dropped += usize::from(!keep);
        keep
    });
    dropped as u64
}

/// What every rule kind keeps besides its settings: its groups, its event-time clock, and its
/// counters; and the steps every kind takes the same way.
#[derive(Debug)]
pub struct State<G> {
    pub groups: Table<G>,
    pub clock: Clock,
    pub counters: Counters,
}

impl<G> State<G> {
    pub fn new(max_groups: usize, allowed_lateness_ns: i64) -> State<G> {
        State {
            groups: Table::new(max_groups),
            clock: Clock::new(allowed_lateness_ns),
            counters: Counters::default(),
        }
    }

    /// A matching event at `t`: counted, and the clock moves on.
    pub fn matched(&mut self, t: i64) {
        self.counters.matched += 1;
        self.clock.advance(t);
    }

    /// Count what an event did (an alert fired, groups evicted) and hand it back.
    pub fn outcome(&mut self, o: Outcome) -> Outcome {
        self.counters.fired += u64::from(o.fired());
        self.counters.evicted = self.groups.evicted;
        o
    }
}

/// Event-time bookkeeping shared by the rule kinds: the newest (effective) event time the rule
/// matched, which dates its state for expiry. Events come from the engine in event-time order
/// as far as its watermark allows, with times it has already held against receive time (see
/// `crate::time`); what is late is the engine's to judge, and a rule evaluates every event it
/// is given. `allowed_lateness_ns` is how long state is kept behind the newest time for events
/// that arrive out of order.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Clock {
    pub newest_ns: i64,
    pub allowed_lateness_ns: i64,
}

impl Clock {
    pub fn new(allowed_lateness_ns: i64) -> Clock {
        Clock {
            newest_ns: i64::MIN,
            allowed_lateness_ns,
        }
    }

    pub fn advance(&mut self, t: i64) {
        self.newest_ns = self.newest_ns.max(t);
    }

    /// Never past `max_ns` (a state saved before times were held against receive time).
    pub fn clamp(&mut self, max_ns: i64) {
        self.newest_ns = self.newest_ns.min(max_ns);
    }

    /// State older than this is expired.
    pub fn watermark(&self) -> i64 {
        self.newest_ns.saturating_sub(self.allowed_lateness_ns)
    }
}

/// A rule kind's group: it has an [`Open`] alert marker.
pub trait HasOpen {
    fn open_mut(&mut self) -> &mut Open;
}

/// Implement [`HasOpen`] for group types with an `open` field.
#[macro_export]
macro_rules! has_open {
    ($t:ty) => {
        impl $crate::group::HasOpen for $t {
            fn open_mut(&mut self) -> &mut $crate::group::Open {
                &mut self.open
            }
        }
    };
}

/// A group's open alert: further matches within the suppression window update it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Open {
    /// (event time it fired at, events counted)
    pub alert: Option<(i64, u64)>,
}

impl Open {
    /// Count `t` into the open alert if it falls in its suppression window (or its window before
    /// it); the new count if so.
    pub fn absorb(&mut self, t: i64, window_ns: i64, suppress_ns: i64) -> Option<u64> {
        let (fired, n) = self.alert?;
        (t < fired + suppress_ns && t >= fired - window_ns).then(|| {
            self.alert = Some((fired, n + 1));
            n + 1
        })
    }

    pub fn fire(&mut self, at: i64, count: u64) {
        self.alert = Some((at, count));
    }

    pub fn is_open(&self, horizon: i64, suppress_ns: i64) -> bool {
        self.alert.is_some_and(|(f, _)| f + suppress_ns > horizon)
    }
}

/// A base rate: the events (matching `of`) a group's matches are judged against. A rule with
/// one fires only if its matches are at least `min_ratio` of the group's `of` events in the
/// window — so a caller making thousands of calls with a handful of one-off denials is
/// normal, while the same count from a caller that rarely calls is not.
#[derive(Debug)]
pub struct Ratio {
    pub of: crate::filter::Filter,
    pub min_ratio: f64,
}

/// Events counted in a sliding window, in buckets of 1/16 of it (at most 17 kept): enough
/// to judge a ratio over the window to within one bucket, in constant space per group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    buckets: std::collections::VecDeque<(i64, u32)>,
}

impl Counts {
    const BUCKETS: i64 = 16;

    fn bucket_ns(window_ns: i64) -> i64 {
        (window_ns / Self::BUCKETS).max(1)
    }

    /// Count one event at `t`.
    pub fn add(&mut self, t: i64, window_ns: i64) {
        let b = t.div_euclid(Self::bucket_ns(window_ns));
        let at = self.buckets.partition_point(|(x, _)| *x < b);
        if self.buckets.capacity() == 0 {
            self.buckets.reserve_exact(1);
        }
        match self.buckets.get_mut(at) {
            Some((x, n)) if *x == b => *n = n.saturating_add(1),
            _ => self.buckets.insert(at, (b, 1)),
        }
        let newest = self.buckets.back().map_or(b, |(x, _)| *x);
        while self
            .buckets
            .front()
            .is_some_and(|(x, _)| *x < newest - Self::BUCKETS)
        {
            self.buckets.pop_front();
        }
    }

    /// The start of the newest bucket counted (`i64::MIN`: none), for expiry.
    pub fn newest_ns(&self, window_ns: i64) -> i64 {
        self.buckets.back().map_or(i64::MIN, |(b, _)| {
            b.saturating_mul(Self::bucket_ns(window_ns))
        })
    }

    /// Events counted in the window ending at `t` (to within a bucket).
    pub fn in_window(&self, t: i64, window_ns: i64) -> u64 {
        let bn = Self::bucket_ns(window_ns);
        let (from, to) = ((t - window_ns).div_euclid(bn), t.div_euclid(bn));
        self.buckets
            .iter()
            .filter(|(x, _)| *x >= from && *x <= to)
            .map(|(_, n)| u64::from(*n))
            .sum()
    }
}

/// A group's counts for its rule's [`Ratio`]: its matches and its base (`of`) events.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    pub hits: Counts,
    pub base: Counts,
}

impl Rate {
    /// Count a match at `t` (and into the base when it is a base event too), if the rule has
    /// a ratio at all.
    pub fn count_match(&mut self, ratio: Option<&Ratio>, base: bool, t: i64, window_ns: i64) {
        if ratio.is_some() {
            self.hits.add(t, window_ns);
            if base {
                self.base.add(t, window_ns);
            }
        }
    }

    /// Whether the matches in the window ending at `t` are at least `min` of the base (the
    /// matches count into the base, so the ratio is at most 1).
    pub fn enough(&self, t: i64, window_ns: i64, min: f64) -> bool {
        let hits = self.hits.in_window(t, window_ns);
        let base = self.base.in_window(t, window_ns).max(hits).max(1);
        hits as f64 >= min * base as f64
    }
}

#[cfg(test)]
mod rate_tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn counts_slide_with_the_window_and_a_ratio_judges_against_the_base() {
        let w = 160 * S;
        let mut r = Rate::default();
        for i in 0..20 {
            r.hits.add(i * S, w);
            r.base.add(i * S, w);
        }
        // 20 denials, nothing else: all of the caller's traffic.
        assert!(r.enough(19 * S, w, 0.5));
        for i in 0..1000 {
            r.base.add(i * S / 10, w);
        }
        // The same 20 among 1 000 more calls: 2 %.
        assert!(r.enough(99 * S, w, 0.01));
        assert!(!r.enough(99 * S, w, 0.05));
        // Out of order lands in its bucket; old buckets slide out.
        r.hits.add(5 * S, w);
        assert_eq!(r.hits.in_window(19 * S, w), 21);
        r.hits.add(1000 * S, w);
        assert_eq!(r.hits.in_window(1000 * S, w), 1);
        assert!(r.hits.buckets.len() <= 17);
    }
}
