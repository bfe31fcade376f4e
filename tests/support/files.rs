//! Files: the public samples beside the repository, and copies of data directories.

use std::path::{Path, PathBuf};

/// A file or directory of the public samples in `../shared/data` (see its README); fails the
/// test, naming it, if it is missing.
pub fn data_path(rel: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(rel);
    assert!(
        p.exists(),
        "test data missing: {} (shared/ must sit beside the repository)",
        p.display()
    );
    p
}

/// A sample file's text.
pub fn data_text(rel: &str) -> String {
    let p = data_path(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Copy the directory tree `from` to `to` (created if missing), keeping each file's
/// permissions (a read-only file stays read-only).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
            let perm = std::fs::metadata(e.path()).unwrap().permissions();
            std::fs::set_permissions(&target, perm).unwrap();
        }
    }
}

/// `n` copies of a real OPA decision (the sample's second line), numbered from `from`: each
/// its own decision id `<tag>-NNNNN` and key, spread over `partitions` by number.
pub fn opa_records(tag: &str, from: usize, n: usize, partitions: i32) -> Vec<super::Rec> {
    let opa = data_text("opa/opa_decision_logs.jsonl");
    let line = opa.lines().nth(1).expect("the OPA sample's second line");
    (from..from + n)
        .map(|i| super::Rec {
            partition: (i as i32) % partitions,
            key: Some(format!("k{i}").into_bytes()),
            value: Some(
                line.replace(
                    "1df154b5-658a-47bf-ac18-be52998605da",
                    &format!("{tag}-{i:05}"),
                )
                .into_bytes(),
            ),
            headers: vec![],
        })
        .collect()
}

/// Every regular file under `dir`, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}
