//! What the integration tests share: the real broker ([`Broker`]), `vigil serve` as a child
//! process ([`Serve`]), `vigil` commands run to completion ([`vigil`], [`succeed`]), what a data
//! directory holds ([`stored_records`], [`sql`], [`stored_alerts`]), HTTP on loopback, the
//! public samples in `../shared/data` ([`data_path`]), an S3-compatible server ([`S3Server`]),
//! the simulator as the tests drive it, and an OCSF validator built from the schema files
//! ([`Ocsf`]).
//! Everything is bounded in time and cleaned up on drop.
//!
//! The benches include this module too (`#[path]`), each using part of it.

use std::net::TcpListener;
use std::time::{Duration, Instant};

mod broker;
mod cli;
mod detect;
mod files;
mod http;
mod ocsf;
mod s3;
mod serve;
mod simulated;
mod store;

// Each includer (the tests, each bench) uses part of what follows.
#[allow(unused_imports)]
pub use {
    broker::*, cli::*, detect::*, files::*, http::*, ocsf::*, s3::*, serve::*, simulated::*,
    store::*,
};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Poll `f` until it returns `Some`, at most `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A number from the environment (bench settings), or `default`.
#[allow(dead_code)] // the benches' alone
pub fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
