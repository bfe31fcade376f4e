//! `--data-dir data` (a bare relative name) must work: its parent is the empty path, which
//! cannot be opened for fsync. Its own test binary, because it changes the working directory.

use vigil_store::{Store, WriteOptions};

#[test]
fn a_store_opens_under_a_bare_relative_name() {
    let dir = tempfile::tempdir().unwrap();
    std::env::set_current_dir(dir.path()).unwrap();
    let store = Store::open("data", WriteOptions::default()).unwrap();
    assert!(dir.path().join("data/events").is_dir());
    assert_eq!(store.head("t", 0).unwrap().chain.offset, -1);
}
