//! The wall clock, in the units the store and every stage after it use: Unix time in ns
//! (event and receive times) or ms (checkpoints, Kafka timestamps). One place, so that every
//! stage reads it the same way: before the epoch is 0, past `i64::MAX` ns (the year 2262) is
//! `i64::MAX`.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in ns since the Unix epoch.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Now, in ms since the Unix epoch.
pub fn now_ms() -> i64 {
    now_ns() / 1_000_000
}

#[cfg(test)]
mod tests {
    #[test]
    fn ns_and_ms_agree_and_are_after_2026() {
        let (ns, ms) = (super::now_ns(), super::now_ms());
        assert!(ns > 1_767_225_600 * 1_000_000_000, "{ns}");
        assert!((ms - ns / 1_000_000).abs() < 1_000, "{ms} {ns}");
    }
}
