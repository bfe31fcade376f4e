//! Vigil's detection stage: streaming rules over decoded events in event time.
//!
//! **For:** rule state machines (threshold, distinct count, allowlist, first seen, sequence,
//! rate spike), alert deduplication and alert records.
//! **Not for:** delivery transport details, storage formats, or decoding.
//!
//! Status: the crate boundary exists so the dependency graph is fixed from the start; the engine
//! lands with the "Streaming detection" issue. It exports nothing yet.
