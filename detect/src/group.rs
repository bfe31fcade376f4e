//! A rule's groups: a bounded table keyed by [`PackedKey`], the event-time clock, open-alert
//! suppression and base-rate counts shared by the rule kinds.

use serde::{Deserialize, Serialize};

use crate::evidence::{Counters, Outcome};
use crate::filter::Row;
pub(crate) use crate::key::{GroupBy, Key, PackedKey};
use crate::key::{hash, hash_key, matches};

/// A rule's groups, bounded: at most `max`. When a new group would exceed it, the least
/// recently seen sixteenth of the groups is evicted at once (amortised O(1) per new group) and
/// counted. Groups sit inline in one hash table (one probe per event, the stored hash compared
/// before the key).
#[derive(Debug)]
pub(crate) struct Table<S> {
    groups: hashbrown::HashTable<Entry<S>>,
    hasher: foldhash::fast::RandomState,
    clock: u64,
    max: usize,
    pub evicted: u64,
}

/// One group as persisted: its key, its state, and when it was last seen (table clock).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Entry<S> {
    pub key: PackedKey,
    pub state: S,
    pub seen: u64,
    /// The key's hash under this process's seed (never persisted).
    #[serde(skip)]
    hash: u64,
}

impl<S> Table<S> {
    pub(crate) fn new(max: usize) -> Table<S> {
        assert!(max >= 1, "a rule keeps at least one group");
        Table {
            groups: hashbrown::HashTable::new(),
            hasher: Default::default(),
            clock: 0,
            max,
            evicted: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.groups.len()
    }

    /// The row's group if it has one.
    pub(crate) fn get(&mut self, fields: &GroupBy, row: &impl Row) -> Option<(&PackedKey, &mut S)> {
        let h = hash(fields, row, &self.hasher);
        let e = self
            .groups
            .find_mut(h, |e| e.hash == h && matches(fields, &e.key, row))?;
        self.clock += 1;
        e.seen = self.clock;
        Some((&e.key, &mut e.state))
    }

    /// The group with this stored key, if any.
    pub(crate) fn get_by_key(&self, fields: &GroupBy, key: &PackedKey) -> Option<&S> {
        let h = hash_key(fields, key, &self.hasher);
        self.groups
            .find(h, |e| e.hash == h && e.key == *key)
            .map(|e| &e.state)
    }

    /// The group with this stored key, mutably, if any.
    pub(crate) fn get_by_key_mut(&mut self, fields: &GroupBy, key: &PackedKey) -> Option<&mut S> {
        let h = hash_key(fields, key, &self.hasher);
        self.groups
            .find_mut(h, |e| e.hash == h && e.key == *key)
            .map(|e| &mut e.state)
    }

    /// Remove the group with this stored key; its state if it had one.
    pub(crate) fn remove_by_key(&mut self, fields: &GroupBy, key: &PackedKey) -> Option<S> {
        let h = hash_key(fields, key, &self.hasher);
        self.groups
            .find_entry(h, |e| e.hash == h && e.key == *key)
            .ok()
            .map(|e| e.remove().0.state)
    }

    /// The row's group, created with `init` if new.
    pub(crate) fn entry(
        &mut self,
        fields: &GroupBy,
        row: &impl Row,
        init: impl FnOnce() -> S,
    ) -> (&PackedKey, &mut S) {
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
                            key: PackedKey::of_row(fields, row),
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

    /// Drop the least recently seen sixteenth of the groups (at least one), counted as
    /// evicted, and give the table's spare room back when it is less than half used: how many
    /// went. Detection's memory budget sheds this way ([`crate::budget`]).
    pub(crate) fn shed(&mut self) -> u64 {
        let n = evict_oldest(&mut self.groups);
        self.evicted += n;
        if self.groups.len() < self.groups.capacity() / 2 {
            self.groups.shrink_to_fit(|e| e.hash);
        }
        n
    }

    /// Keep only the groups `keep` says to.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&S) -> bool) {
        self.groups.retain(|e| keep(&e.state));
    }

    /// Every group, for persisting.
    pub(crate) fn entries(&self) -> impl Iterator<Item = &Entry<S>> {
        self.groups.iter()
    }

    /// Groups as persisted by [`Table::entries`], rehashed (hashes are never persisted: the
    /// hasher is seeded per process).
    pub(crate) fn restore(&mut self, fields: &GroupBy, entries: Vec<Entry<S>>) {
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

impl<S: Weigh> Table<S> {
    /// The bytes the table holds: its slots (allocated, used or not, with hashbrown's control
    /// byte each) and every group's key and state on the heap.
    pub(crate) fn weigh(&self) -> usize {
        table_bytes(self.groups.capacity(), std::mem::size_of::<Entry<S>>())
            + self
                .groups
                .iter()
                .map(|e| alloc_bytes(e.key.heap_bytes()) + e.state.heap_bytes())
                .sum::<usize>()
    }
}

/// What a group's state holds on the heap, beyond its own size: what detection's memory
/// budget counts ([`crate::budget`]).
pub(crate) trait Weigh {
    fn heap_bytes(&self) -> usize;
}

/// The bytes of a hashbrown table with room for `capacity` entries of `slot_bytes` each: its
/// buckets (a power of two, at most 7/8 full) with a control byte each.
pub(crate) fn table_bytes(capacity: usize, slot_bytes: usize) -> usize {
    match capacity {
        0 => 0,
        c => (c * 8 / 7).next_power_of_two() * (slot_bytes + 1),
    }
}

/// The bytes an allocation of `n` takes (the allocator's 16-byte granule; nothing for none).
pub(crate) fn alloc_bytes(n: usize) -> usize {
    n.next_multiple_of(16)
}

/// The heap bytes of a deque's buffer.
pub(crate) fn deque_bytes<T>(d: &std::collections::VecDeque<T>) -> usize {
    alloc_bytes(d.capacity() * std::mem::size_of::<T>())
}

impl Weigh for Counts {
    fn heap_bytes(&self) -> usize {
        deque_bytes(&self.buckets)
    }
}

impl Weigh for Rate {
    fn heap_bytes(&self) -> usize {
        self.hits.heap_bytes() + self.base.heap_bytes()
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
pub(crate) struct State<G> {
    pub groups: Table<G>,
    pub clock: Clock,
    pub counters: Counters,
}

impl<G> State<G> {
    pub(crate) fn new(max_groups: usize, allowed_lateness_ns: i64) -> State<G> {
        State {
            groups: Table::new(max_groups),
            clock: Clock::new(allowed_lateness_ns),
            counters: Counters::default(),
        }
    }

    /// A matching event at `t`: counted, and the clock moves on.
    pub(crate) fn matched(&mut self, t: i64) {
        self.counters.matched += 1;
        self.clock.advance(t);
    }

    /// Count what an event did (an alert fired, groups evicted) and hand it back.
    pub(crate) fn outcome(&mut self, o: Outcome) -> Outcome {
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
pub(crate) struct Clock {
    pub newest_ns: i64,
    pub allowed_lateness_ns: i64,
}

impl Clock {
    pub(crate) fn new(allowed_lateness_ns: i64) -> Clock {
        Clock {
            newest_ns: i64::MIN,
            allowed_lateness_ns,
        }
    }

    pub(crate) fn advance(&mut self, t: i64) {
        self.newest_ns = self.newest_ns.max(t);
    }

    /// Never past `max_ns` (a state saved before times were held against receive time).
    pub(crate) fn clamp(&mut self, max_ns: i64) {
        self.newest_ns = self.newest_ns.min(max_ns);
    }

    /// State older than this is expired.
    pub(crate) fn watermark(&self) -> i64 {
        self.newest_ns.saturating_sub(self.allowed_lateness_ns)
    }
}

/// A rule kind's group: it has an [`Open`] alert marker.
pub(crate) trait HasOpen {
    /// Its open-alert marker (none: it has never matched, so nothing is open).
    fn open_mut(&mut self) -> Option<&mut Open>;
}

/// Implement `HasOpen` for group types with an `open` field.
#[macro_export]
macro_rules! has_open {
    ($t:ty) => {
        impl $crate::group::HasOpen for $t {
            fn open_mut(&mut self) -> Option<&mut $crate::group::Open> {
                Some(&mut self.open)
            }
        }
    };
}

/// A group's open alert: further matches within the suppression window update it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Open {
    /// (event time it fired at, events counted)
    pub alert: Option<(i64, u64)>,
}

impl Open {
    /// Count `t` into the open alert if it falls in its suppression window (or its window before
    /// it); the new count if so.
    pub(crate) fn absorb(&mut self, t: i64, window_ns: i64, suppress_ns: i64) -> Option<u64> {
        let (fired, n) = self.alert?;
        (t < fired + suppress_ns && t >= fired - window_ns).then(|| {
            self.alert = Some((fired, n + 1));
            n + 1
        })
    }

    pub(crate) fn fire(&mut self, at: i64, count: u64) {
        self.alert = Some((at, count));
    }

    pub(crate) fn is_open(&self, horizon: i64, suppress_ns: i64) -> bool {
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
pub(crate) struct Counts {
    buckets: std::collections::VecDeque<(i64, u32)>,
}

impl Counts {
    const BUCKETS: i64 = 16;

    fn bucket_ns(window_ns: i64) -> i64 {
        (window_ns / Self::BUCKETS).max(1)
    }

    /// Count one event at `t`.
    pub(crate) fn add(&mut self, t: i64, window_ns: i64) {
        let b = t.div_euclid(Self::bucket_ns(window_ns));
        let at = self.buckets.partition_point(|(x, _)| *x < b);
        match self.buckets.get_mut(at) {
            Some((x, n)) if *x == b => *n = n.saturating_add(1),
            _ => {
                // Grown one bucket at a time: at most 17, and most groups hold one or two.
                if self.buckets.len() == self.buckets.capacity() {
                    self.buckets.reserve_exact(1);
                }
                self.buckets.insert(at, (b, 1))
            }
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

    pub(crate) fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// The start of the newest bucket counted (`i64::MIN`: none), for expiry.
    pub(crate) fn newest_ns(&self, window_ns: i64) -> i64 {
        self.buckets.back().map_or(i64::MIN, |(b, _)| {
            b.saturating_mul(Self::bucket_ns(window_ns))
        })
    }

    /// Events counted in the window ending at `t` (to within a bucket).
    pub(crate) fn in_window(&self, t: i64, window_ns: i64) -> u64 {
        let bn = Self::bucket_ns(window_ns);
        let (from, to) = ((t - window_ns).div_euclid(bn), t.div_euclid(bn));
        self.buckets
            .iter()
            .filter(|(x, _)| *x >= from && *x <= to)
            .map(|(_, n)| u64::from(*n))
            .sum()
    }
}

/// Whether the matches (`hits`) in the window ending at `t` are at least `min` of the base
/// (the matches count into the base, so the ratio is at most 1).
pub(crate) fn enough(hits: &Counts, base: &Counts, t: i64, window_ns: i64, min: f64) -> bool {
    let hits = hits.in_window(t, window_ns);
    let base = base.in_window(t, window_ns).max(hits).max(1);
    hits as f64 >= min * base as f64
}

/// A group's counts for its rule's [`Ratio`]: its matches and its base (`of`) events.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Rate {
    pub hits: Counts,
    pub base: Counts,
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
        assert!(enough(&r.hits, &r.base, 19 * S, w, 0.5));
        for i in 0..1000 {
            r.base.add(i * S / 10, w);
        }
        // The same 20 among 1 000 more calls: 2 %.
        assert!(enough(&r.hits, &r.base, 99 * S, w, 0.01));
        assert!(!enough(&r.hits, &r.base, 99 * S, w, 0.05));
        // Out of order lands in its bucket; old buckets slide out.
        r.hits.add(5 * S, w);
        assert_eq!(r.hits.in_window(19 * S, w), 21);
        r.hits.add(1000 * S, w);
        assert_eq!(r.hits.in_window(1000 * S, w), 1);
        assert!(r.hits.buckets.len() <= 17);
    }
}

/// A group of a rule that can judge its matches against a base rate (`threshold`,
/// `distinct_count`): its base events — counted for every group of the rule's `of` filter —
/// and, boxed, what only a group with a match needs. Most groups of a flood of callers never
/// match: 72 bytes a slot instead of about 150. Persisted in the shape it had before the
/// split: `{<items>, open, rate: {hits, base}}`.
#[derive(Debug, Default)]
pub(crate) struct BaseGroup<M> {
    pub base: Counts,
    pub matched: Option<Box<Matched<M>>>,
}

/// The part of a [`BaseGroup`] a match creates: the kind's items (events, distinct values),
/// the open alert, the matches counted for the ratio.
#[derive(Debug, Default)]
pub(crate) struct Matched<M> {
    pub items: M,
    pub open: Open,
    pub hits: Counts,
}

/// What a [`BaseGroup`]'s matches keep, and the name it is persisted under.
pub(crate) trait Items: Default + Serialize + serde::de::DeserializeOwned + Weigh {
    const FIELD: &'static str;
    fn is_empty(&self) -> bool;
}

impl<M: Items> BaseGroup<M> {
    /// Whether its open alert is still open at `horizon`.
    pub(crate) fn is_open(&self, horizon: i64, suppress_ns: i64) -> bool {
        self.matched
            .as_ref()
            .is_some_and(|m| m.open.is_open(horizon, suppress_ns))
    }
}

impl<M: Items> State<BaseGroup<M>> {
    /// A base event that is no match: counted into its group's base (the group created if
    /// new — a busy caller's calls before its first match count).
    pub(crate) fn count_base(
        &mut self,
        group_by: &GroupBy,
        row: &impl Row,
        t: i64,
        window_ns: i64,
    ) {
        let (_, g) = self.groups.entry(group_by, row, BaseGroup::default);
        g.base.add(t, window_ns);
    }
}

impl<M> HasOpen for BaseGroup<M> {
    fn open_mut(&mut self) -> Option<&mut Open> {
        self.matched.as_mut().map(|m| &mut m.open)
    }
}

impl<M: Items> Weigh for BaseGroup<M> {
    fn heap_bytes(&self) -> usize {
        self.base.heap_bytes()
            + self.matched.as_ref().map_or(0, |m| {
                alloc_bytes(std::mem::size_of::<Matched<M>>())
                    + m.items.heap_bytes()
                    + m.hits.heap_bytes()
            })
    }
}

impl<M: Items> Serialize for BaseGroup<M> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let (no_items, no_open, no_hits) = (M::default(), Open::default(), Counts::default());
        let m = self.matched.as_deref();
        let mut st = s.serialize_struct("Group", 3)?;
        st.serialize_field(M::FIELD, m.map_or(&no_items, |m| &m.items))?;
        st.serialize_field("open", m.map_or(&no_open, |m| &m.open))?;
        #[derive(Serialize)]
        struct RateRef<'a> {
            hits: &'a Counts,
            base: &'a Counts,
        }
        st.serialize_field(
            "rate",
            &RateRef {
                hits: m.map_or(&no_hits, |m| &m.hits),
                base: &self.base,
            },
        )?;
        st.end()
    }
}

impl<'de, M: Items> Deserialize<'de> for BaseGroup<M> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<BaseGroup<M>, D::Error> {
        struct V<M>(std::marker::PhantomData<M>);
        impl<'de, M: Items> serde::de::Visitor<'de> for V<M> {
            type Value = BaseGroup<M>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "a group: {}, open, rate", M::FIELD)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<BaseGroup<M>, A::Error> {
                let (mut items, mut open, mut rate) =
                    (M::default(), Open::default(), Rate::default());
                while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match &*k {
                        f if f == M::FIELD => items = map.next_value()?,
                        "open" => open = map.next_value()?,
                        "rate" => rate = map.next_value()?,
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                let matched = (!items.is_empty()
                    || open != Open::default()
                    || !rate.hits.is_empty())
                .then(|| {
                    Box::new(Matched {
                        items,
                        open,
                        hits: rate.hits,
                    })
                });
                Ok(BaseGroup {
                    base: rate.base,
                    matched,
                })
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}
