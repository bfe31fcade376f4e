//! Vigil's detection stage: streaming rules over decoded events in event time.
//!
//! **For:** rule filters ([`filter`]: a small expression language over the canonical fields,
//! parsed once, evaluated without allocation); then rule state machines (threshold, distinct
//! count, allowlist, first seen, sequence, rate spike), alert deduplication and alert records.
//! **Not for:** delivery transport details, storage formats, or decoding.
//!
//! Status: the filter language, the bounded group table with its event-time clock and alert
//! suppression ([`group`]), and two rule kinds — [`threshold`] and [`distinct`] (event-time
//! sliding windows, out-of-order events placed, late ones counted) — are here; the engine, the
//! other rule kinds and rules as code land with the rest of the "Streaming detection" issue.

pub mod alerts;
pub mod allowlist;
pub mod distinct;
pub mod engine;
pub mod filter;
pub mod first_seen;
pub mod group;
pub mod hit;
pub mod rate_spike;
pub mod replay;
pub mod row;
pub mod rules;
pub mod ruletest;
pub mod run;
pub mod sequence;
pub mod threshold;

pub use filter::{Filter, FilterError, Row};
