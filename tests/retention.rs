//! Retention against the real parts: files removed from the old end of each log by `vigil
//! prune`, signed, so that `vigil verify` accepts the pruned prefix — and still calls a
//! deletion of the oldest files without a signed prune tampering; serve carries on after it.

use std::time::Duration;

use crate::support::*;

fn records(from: usize, n: usize) -> Vec<Rec> {
    opa_records("ret", from, n, 2)
}

/// The event files of `topic/partition` under `dir`, oldest first.
fn files(dir: &std::path::Path, partition: i32) -> Vec<std::path::PathBuf> {
    let store = vigil_store::Store::open_existing(dir).unwrap();
    let (files, _) = store.list("ret", partition).unwrap();
    files.into_iter().map(|f| f.path).collect()
}

#[test]
fn a_signed_prune_verifies_and_a_deletion_without_one_is_tampering() {
    let broker = Broker::start();
    broker.create_topic("ret", 2);
    broker.create_topic("vigil.checkpoints", 1);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let producer = broker.producer();

    // Three rounds, each its own files (batches are cut after 200 ms in the tests).
    let srv = serve(&broker, "ret", &dir, "g-ret", &[], None);
    for round in 0..3 {
        produce(&producer, "ret", &records(round * 100, 100));
        wait_stored(
            &[&srv],
            &dir,
            (round as u64 + 1) * 100,
            Duration::from_secs(60),
        );
        std::thread::sleep(Duration::from_millis(400));
    }
    let (ok, log) = srv.stop();
    assert!(ok, "{log}");
    let before: Vec<usize> = (0..2).map(|p| files(&dir, p).len()).collect();
    assert!(before.iter().all(|n| *n >= 3), "{before:?} files");

    let keys = tmp.path().join("registry");
    std::fs::copy(dir.join("keys/registry"), &keys).unwrap();
    let verify = || {
        vigil(&[
            "verify",
            "--data-dir",
            dir.to_str().unwrap(),
            "--keys",
            keys.to_str().unwrap(),
            "--anchor-kafka",
            &broker.addr,
        ])
    };
    let config = |days: u32| {
        let path = tmp.path().join(format!("retention-{days}.toml"));
        std::fs::write(&path, format!("[retention.max_age_days]\nret = {days}\n")).unwrap();
        path
    };
    let prune = |days: u32| {
        let c = config(days);
        succeed(vigil_command().args([
            "--config",
            c.to_str().unwrap(),
            "prune",
            "--data-dir",
            dir.to_str().unwrap(),
        ]))
    };

    // Kept for a day: nothing is that old.
    let out = prune(1);
    assert!(out.contains("ret/0: 0 files removed"), "{out}");
    assert_eq!(files(&dir, 0).len(), before[0]);

    // Kept for 0 days: every file but each log's newest goes, with a signed prune.
    let out = prune(0);
    assert!(
        out.contains("ret/0:") && out.contains("files removed"),
        "{out}"
    );
    for p in 0..2 {
        assert_eq!(files(&dir, p).len(), 1, "partition {p}: {out}");
        let cp = dir.join(format!("checkpoints/topic=ret/partition={p}"));
        let names: Vec<String> = std::fs::read_dir(&cp)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names
                .iter()
                .any(|n| n.starts_with("pruned-") && n.ends_with(".note")),
            "{names:?}"
        );
    }
    let ran = verify();
    assert_eq!(ran.code, 0, "a signed prune verifies: {ran}");
    assert!(ran.out.contains("pruned, signed"), "{ran}");
    // Without its signed note the same missing prefix is tampering; an edited frontier too.
    let cp0 = dir.join("checkpoints/topic=ret/partition=0");
    let note = std::fs::read_dir(&cp0)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.extension().is_some_and(|x| x == "note") && p.to_string_lossy().contains("pruned-")
        })
        .unwrap();
    let aside = tmp.path().join("aside.note");
    std::fs::rename(&note, &aside).unwrap();
    let ran = verify();
    assert_eq!(
        ran.code, 1,
        "a missing prefix without a signed prune: {ran}"
    );
    std::fs::rename(&aside, &note).unwrap();
    let frontier = note.with_extension("frontier");
    let good = std::fs::read_to_string(&frontier).unwrap();
    // One hex digit of the last node changed.
    let mut edited = good.trim_end().to_owned();
    let last = edited.pop().unwrap();
    edited.push(if last == '0' { '1' } else { '0' });
    std::fs::write(&frontier, edited).unwrap();
    let ran = verify();
    assert_eq!(ran.code, 1, "an edited frontier: {ran}");
    std::fs::write(&frontier, good).unwrap();

    // serve carries on after it: the same logs grow from where they stood, and it prunes
    // them itself (every second here) — down to each log's newest file again.
    let srv = serve(
        &broker,
        "ret",
        &dir,
        "g-ret",
        &[("VIGIL_RETENTION__PRUNE_INTERVAL_MS", "1000")],
        Some(&config(0)),
    );
    produce(&producer, "ret", &records(300, 100));
    wait_for("the new records stored", Duration::from_secs(60), || {
        (stored_per_partition(&dir, "ret").values().sum::<i64>() >= 200).then_some(())
    });
    std::thread::sleep(Duration::from_millis(400));
    produce(&producer, "ret", &records(400, 100));
    // 500 records in all, 250 a partition: offsets 0 to 249.
    wait_for("serve to prune", Duration::from_secs(60), || {
        let store = vigil_store::Store::open_existing(&dir).unwrap();
        (0..2)
            .all(|p| {
                let (f, _) = store.list("ret", p).unwrap();
                f.len() == 1 && f[0].last_offset == 249
            })
            .then_some(())
    });
    let (ok, log) = srv.stop();
    assert!(ok, "{log}");
    assert!(log.contains("retention: log pruned (signed)"), "{log}");
    let ran = verify();
    assert_eq!(
        ran.code, 0,
        "still valid after more records and serve's prunes: {ran}"
    );

    // Someone deletes the remaining file of partition 1: no signed prune covers it.
    let oldest = files(&dir, 1).remove(0);
    std::fs::remove_file(&oldest).unwrap();
    let ran = verify();
    assert_eq!(
        ran.code, 1,
        "a deletion without a signed prune is tampering: {ran}"
    );
}
