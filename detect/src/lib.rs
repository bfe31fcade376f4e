//! Vigil's detection stage: streaming rules over decoded events in event time.
//!
//! **For:** rule filters ([`filter`]: a small expression language over the canonical fields,
//! parsed once, evaluated without allocation); six rule kinds as small state machines on a
//! shared core (`group`: bounded group tables, the event-time clock, alert suppression) —
//! `threshold`, `distinct`, [`allowlist`], `first_seen`, `sequence`, `rate_spike`;
//! rules as TOML files with their own tests and the default pack ([`rules`], [`ruletest`]);
//! the [`engine`] (every rule over every stored row, once, with deduplicated alerts carrying
//! evidence, and a state checkpoint); the durable alert log ([`alerts`]); replaying the store
//! ([`replay`]); the alert lifecycle ([`lifecycle`]: acknowledge, resolve, suppress, applied by
//! the lock holder, recorded in Vigil's own chained log); delivery to SIEMs ([`deliver`]); and
//! the detection thread of `vigil serve` ([`run`]).
//! Public: the modules other crates use (alerts, lifecycle, rules, the engine, its time and
//! policy inputs, delivery, the detection thread); the rule kinds and their shared core stay
//! private, reached through [`rules`] and [`engine`].
//! **Not for:** the store's file format (Vigil's own log is written through the store),
//! decoding, authenticating who asks for a lifecycle change (the caller names them).

mod absence;
pub mod alerts;
pub mod allowlist;
mod budget;
pub mod deliver;
mod distinct;
pub mod engine;
pub mod evidence;
pub mod filter;
mod first_seen;
mod group;
mod key;
pub mod lifecycle;
pub mod policy;
mod prometheus;
mod rate_spike;
pub mod replay;
pub mod row;
pub mod rules;
pub mod ruletest;
pub mod run;
mod sequence;
pub mod sigma;
mod system_alerts;
mod threshold;
pub mod time;

pub use filter::Row;
pub use prometheus::OutboxDepth;
#[cfg(test)]
mod time_tests;
