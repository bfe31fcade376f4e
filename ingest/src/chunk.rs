//! A run of one partition's records, copied out of librdkafka's buffers so that a pipeline
//! thread can decode and chain them while the consumer thread polls on.
//!
//! One allocation-free append per record: all bytes go to one buffer, positions to two small
//! vectors. Bounded by [`Chunk::is_full`] (records and bytes).

use std::ops::Range;

use vigil_store::RecordRef;

use crate::Key;

/// Records a chunk holds before it is handed on.
pub(crate) const CHUNK_MAX_RECORDS: usize = 1024;
/// Bytes (keys, values, headers) a chunk holds before it is handed on; one larger record is
/// still taken whole.
pub(crate) const CHUNK_MAX_BYTES: usize = 1 << 20;

struct Rec {
    offset: i64,
    timestamp_ms: Option<i64>,
    key: Option<Range<usize>>,
    value: Option<Range<usize>>,
    headers: Range<usize>,
}

struct Hdr {
    key: Range<usize>,
    value: Option<Range<usize>>,
}

pub(crate) struct Chunk {
    pub key: Key,
    /// When the consumer received the chunk's first record (ns since the epoch): the event
    /// time of records that carry neither an event time nor a Kafka timestamp.
    pub received_ns: i64,
    data: Vec<u8>,
    recs: Vec<Rec>,
    hdrs: Vec<Hdr>,
}

impl Chunk {
    pub(crate) fn new(key: Key, received_ns: i64) -> Chunk {
        Chunk {
            key,
            received_ns,
            data: Vec::new(),
            recs: Vec::new(),
            hdrs: Vec::new(),
        }
    }

    fn put(&mut self, b: Option<&[u8]>) -> Option<Range<usize>> {
        b.map(|b| {
            let start = self.data.len();
            self.data.extend_from_slice(b);
            start..self.data.len()
        })
    }

    /// Copy one record in. Offsets must increase (the consumer checks before it appends).
    pub(crate) fn push<'h>(
        &mut self,
        offset: i64,
        timestamp_ms: Option<i64>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: impl Iterator<Item = (&'h str, Option<&'h [u8]>)>,
    ) {
        debug_assert!(self.recs.last().is_none_or(|r| r.offset < offset));
        let key = self.put(key);
        let value = self.put(value);
        let first_hdr = self.hdrs.len();
        for (k, v) in headers {
            let key = self.put(Some(k.as_bytes())).unwrap_or_default();
            let value = self.put(v);
            self.hdrs.push(Hdr { key, value });
        }
        self.recs.push(Rec {
            offset,
            timestamp_ms,
            key,
            value,
            headers: first_hdr..self.hdrs.len(),
        });
    }

    pub(crate) fn is_full(&self) -> bool {
        self.recs.len() >= CHUNK_MAX_RECORDS || self.data.len() >= CHUNK_MAX_BYTES
    }

    /// Visit each record in order as the chain sees it.
    pub(crate) fn for_each<E>(
        &self,
        mut f: impl FnMut(&RecordRef<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut headers: Vec<(&str, Option<&[u8]>)> = Vec::new();
        for r in &self.recs {
            headers.clear();
            for h in &self.hdrs[r.headers.clone()] {
                // Pushed from a &str: always valid UTF-8.
                let k = std::str::from_utf8(&self.data[h.key.clone()]).unwrap_or_default();
                headers.push((k, h.value.clone().map(|v| &self.data[v])));
            }
            f(&RecordRef {
                topic: &self.key.topic,
                partition: self.key.partition,
                offset: r.offset,
                timestamp_ms: r.timestamp_ms,
                key: r.key.clone().map(|k| &self.data[k]),
                value: r.value.clone().map(|v| &self.data[v]),
                headers: &headers,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_exactly_as_pushed() {
        let mut c = Chunk::new(vigil_store::LogId::new("t", 3), 7);
        c.push(5, Some(1), None, Some(b"v1"), std::iter::empty());
        c.push(
            6,
            None,
            Some(b"k"),
            None,
            [
                ("h1", Some(&b"x"[..])),
                ("h2", None),
                ("h3", Some(&b""[..])),
            ]
            .into_iter(),
        );
        c.push(9, Some(2), Some(b""), Some(b""), std::iter::empty());
        let mut seen = Vec::new();
        c.for_each(|r| {
            assert_eq!((r.topic, r.partition), ("t", 3));
            let hs: Vec<(String, Option<Vec<u8>>)> = r
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(<[u8]>::to_vec)))
                .collect();
            seen.push((
                r.offset,
                r.timestamp_ms,
                r.key.map(<[u8]>::to_vec),
                r.value.map(<[u8]>::to_vec),
                hs,
            ));
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(
            seen,
            vec![
                (5, Some(1), None, Some(b"v1".to_vec()), vec![]),
                (
                    6,
                    None,
                    Some(b"k".to_vec()),
                    None,
                    vec![
                        ("h1".into(), Some(b"x".to_vec())),
                        ("h2".into(), None),
                        ("h3".into(), Some(vec![]))
                    ]
                ),
                (9, Some(2), Some(vec![]), Some(vec![]), vec![]),
            ]
        );
    }

    #[test]
    fn full_by_records_or_bytes() {
        let mut c = Chunk::new(vigil_store::LogId::new("t", 0), 0);
        for i in 0..CHUNK_MAX_RECORDS as i64 {
            assert!(!c.is_full());
            c.push(i, None, None, Some(b"x"), std::iter::empty());
        }
        assert!(c.is_full());
        let mut c = Chunk::new(vigil_store::LogId::new("t", 0), 0);
        c.push(
            0,
            None,
            None,
            Some(&vec![0; CHUNK_MAX_BYTES]),
            std::iter::empty(),
        );
        assert!(c.is_full());
    }
}
