//! A broker, a data directory and a detection config, set up together.

use std::path::PathBuf;

use super::broker::Broker;

/// A broker with `topic` (`partitions`) and the anchor topic, a data directory, and a config
/// file for detection tests: fast alert flushes and state saves, then `extra_detect` lines.
pub struct DetectSetup {
    pub broker: Broker,
    pub dir: PathBuf,
    pub config: PathBuf,
    /// Holds the directory: bind it (`tmp: _tmp`), or it goes at once.
    pub tmp: tempfile::TempDir,
}

pub fn detect_setup(topic: &str, partitions: i32, extra_detect: &str) -> DetectSetup {
    let broker = Broker::start();
    broker.create_topic(topic, partitions);
    broker.create_topic("vigil.checkpoints", 1);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let config = tmp.path().join("vigil.toml");
    std::fs::write(
        &config,
        format!("[detect]\nalert_flush_ms = 200\nstate_interval_ms = 500\n{extra_detect}"),
    )
    .unwrap();
    DetectSetup {
        broker,
        dir,
        config,
        tmp,
    }
}
