//! Group keys: the values of a rule's `group_by` fields for one event, hashed and compared
//! without allocating; allocated once, as text, when a group is created.

use std::hash::{Hash, Hasher};

use crate::filter::{Field, FieldType, Row};

/// A rule's group-by fields (name, field).
pub type GroupBy = Vec<(String, Field)>;

/// A group's key as alerts report it: one value per group-by field (`None`: the event lacked it).
pub type Key = Vec<Option<String>>;

/// Hash of the row's group-by values.
pub fn hash(fields: &GroupBy, row: &impl Row) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (_, f) in fields {
        hash_value(f, row, &mut h);
    }
    h.finish()
}

/// Hash one field's value (for distinct counting too).
pub fn hash_value(f: &Field, row: &impl Row, h: &mut impl Hasher) {
    match f.ty {
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

/// The row's key, allocated (when a group is created).
pub fn key(fields: &GroupBy, row: &impl Row) -> Key {
    fields.iter().map(|(_, f)| value(f, row)).collect()
}

/// Whether the row belongs to the group with this key, without allocating.
pub fn matches(fields: &GroupBy, key: &[Option<String>], row: &impl Row) -> bool {
    fields.iter().zip(key).all(|((_, f), k)| match f.ty {
        FieldType::Str => row.str(f.column) == k.as_deref(),
        FieldType::Int => row.int(f.column) == k.as_deref().and_then(|k| k.parse().ok()),
        FieldType::Bool => row.bool(f.column) == k.as_deref().and_then(|k| k.parse().ok()),
    })
}

/// A rule's groups, bounded: at most `max` (the least recently seen is evicted when a new one
/// would exceed it, and counted).
#[derive(Debug)]
pub struct Table<S> {
    by_hash: std::collections::HashMap<u64, Vec<Entry<S>>>,
    len: usize,
    clock: u64,
    max: usize,
    pub evicted: u64,
}

#[derive(Debug)]
struct Entry<S> {
    key: Key,
    state: S,
    seen: u64,
}

impl<S> Table<S> {
    pub fn new(max: usize) -> Table<S> {
        assert!(max >= 1, "a rule keeps at least one group");
        Table {
            by_hash: Default::default(),
            len: 0,
            clock: 0,
            max,
            evicted: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The row's group, created with `init` if new.
    pub fn entry(
        &mut self,
        fields: &GroupBy,
        row: &impl Row,
        init: impl FnOnce() -> S,
    ) -> (&Key, &mut S) {
        self.clock += 1;
        let h = hash(fields, row);
        let known = self
            .by_hash
            .get(&h)
            .and_then(|b| b.iter().position(|e| matches(fields, &e.key, row)));
        let i = match known {
            Some(i) => i,
            None => {
                if self.len >= self.max {
                    self.evict_one();
                }
                let bucket = self.by_hash.entry(h).or_default();
                bucket.push(Entry {
                    key: key(fields, row),
                    state: init(),
                    seen: 0,
                });
                self.len += 1;
                bucket.len() - 1
            }
        };
        let e = &mut self
            .by_hash
            .get_mut(&h)
            .expect("the group was just found or made")[i];
        e.seen = self.clock;
        (&e.key, &mut e.state)
    }

    /// Drop the least recently seen group. A linear scan, run only when a new group would
    /// exceed the cap; an engine under constant eviction pressure should keep recency order.
    fn evict_one(&mut self) {
        let oldest = self
            .by_hash
            .iter()
            .flat_map(|(h, b)| b.iter().enumerate().map(move |(i, e)| (e.seen, *h, i)))
            .min();
        if let Some((_, h, i)) = oldest
            && let Some(b) = self.by_hash.get_mut(&h)
        {
            b.swap_remove(i);
            if b.is_empty() {
                self.by_hash.remove(&h);
            }
            self.len -= 1;
            self.evicted += 1;
        }
    }

    /// Keep only the groups `keep` says to.
    pub fn retain(&mut self, mut keep: impl FnMut(&S) -> bool) {
        let mut dropped = 0;
        self.by_hash.retain(|_, b| {
            b.retain(|e| {
                let k = keep(&e.state);
                dropped += usize::from(!k);
                k
            });
            !b.is_empty()
        });
        self.len -= dropped;
    }
}

/// Event-time bookkeeping shared by the rule kinds: the newest event time seen, and whether
/// an event is too late to evaluate.
#[derive(Clone, Copy, Debug)]
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

    pub fn is_late(&self, t: i64) -> bool {
        self.newest_ns != i64::MIN && t < self.newest_ns - self.allowed_lateness_ns
    }

    pub fn advance(&mut self, t: i64) {
        self.newest_ns = self.newest_ns.max(t);
    }

    /// Event times before this can no longer arrive.
    pub fn watermark(&self) -> i64 {
        self.newest_ns.saturating_sub(self.allowed_lateness_ns)
    }
}

/// A group's open alert: further matches within the suppression window update it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
