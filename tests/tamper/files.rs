//! Tampering with rows and files: bits, hashes, pages, rows deleted, inserted, swapped, files
//! swapped, deleted, copied, stray; a decoded column edited alone.

use super::*;

#[test]
fn an_untouched_store_verifies_with_pinned_keys_and_anchors_after_a_key_rotation() {
    let c = Case::new();
    let (exit, r) = c.verify(&[]);
    assert_eq!(exit, 0, "{}", serde_json::to_string_pretty(&r).unwrap());
    assert_eq!(r["verdict"], "valid");
    // Every record from Kafka; Vigil's own log (the alerts its traffic raised) verifies too.
    assert_eq!(kafka_records(&r), (FIRST_RUN + SECOND_RUN) as u64);
    let logs = r["logs"].as_array().unwrap();
    assert!(
        logs.iter()
            .all(|l| l["topic"] == TOPIC || l["topic"] == "vigil.audit")
    );
    // The rotation happened: both keys are in the registry, with the first one closed.
    let keys = Registry::parse(&std::fs::read_to_string(c.root.join("keys")).unwrap()).unwrap();
    assert_eq!(keys.keys.len(), 2);
    assert!(keys.keys[0].valid_until_ms.is_some());
}

#[test]
fn without_pinned_keys_or_anchors_the_verdict_is_incomplete_never_valid() {
    let c = Case::new();
    let got = verify_raw(&c.store(), &[]);
    assert_finding(&got, 2, "incomplete", "keys", "not pinned");
    assert_finding(&got, 2, "incomplete", "audit/0", "unanchored");
}

#[test]
fn a_trusted_state_is_created_on_first_use_and_then_pins_keys_and_checkpoints() {
    let c = Case::new();
    let trusted = c.root.join("trusted.json");
    let t = trusted.to_str().unwrap();
    let first = c.trust(&trusted);
    assert_finding(&first, 2, "incomplete", "audit/1", "unanchored");
    let (exit, r) = verify_raw(&c.store(), &["--trusted", t]);
    assert_eq!(exit, 0, "{}", serde_json::to_string_pretty(&r).unwrap());
}

// ---------------------------------------------------------------------------------------
// Records and files

#[test]
fn t01_one_bit_of_one_records_raw_bytes_flipped() {
    let c = Case::new();
    let f = &c.files(0)[1];
    edit_rows(f, |b| flip_binary(&b, "raw", 3));
    assert_tampered(&c.verify(&[]), &name(f), "leaf hash does not match");
}

#[test]
fn t02_a_stored_leaf_or_chain_hash_flipped() {
    let c = Case::new();
    let f = &c.files(1)[0];
    edit_rows(f, |b| flip_hash(&b, "leaf_hash", 5));
    assert_tampered(&c.verify(&[]), &name(f), "leaf hash does not match");
    let c = Case::new();
    let f = &c.files(1)[0];
    edit_rows(f, |b| flip_hash(&b, "chain_hash", 5));
    assert_tampered(&c.verify(&[]), &name(f), "chain hash does not match");
}

#[test]
fn t03_a_parquet_page_corrupted() {
    let c = Case::new();
    let f = &c.files(2)[1];
    // Corrupt the middle of the `raw` column chunk (its compressed pages).
    let meta = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(f).unwrap())
        .unwrap()
        .metadata()
        .clone();
    let rg = meta.row_group(0);
    let chunk = (0..rg.num_columns())
        .map(|i| rg.column(i))
        .find(|c| c.column_path().string() == "raw")
        .unwrap();
    let (start, len) = chunk.byte_range();
    let mut bytes = std::fs::read(f).unwrap();
    let mid = (start + len / 2) as usize;
    for b in &mut bytes[mid..mid + 16] {
        *b ^= 0x5a;
    }
    std::fs::write(f, bytes).unwrap();
    assert_tampered(&c.verify(&[]), &name(f), "");
}

#[test]
fn t04_a_row_deleted_with_and_without_renumbering() {
    let c = Case::new();
    let f = &c.files(0)[1];
    edit_rows(f, |b| {
        let keep: Vec<u64> = (0..row_count(&b)).filter(|&i| i != 4).collect();
        rows(&b, &keep)
    });
    assert_tampered(&c.verify(&[]), &name(f), "unlinked");

    // Renumbered: later offsets shifted down to hide the hole; the leaves commit to them.
    let c = Case::new();
    let f = &c.files(0)[1];
    edit_rows(f, |b| {
        let keep: Vec<u64> = (0..row_count(&b)).filter(|&i| i != 4).collect();
        let b = rows(&b, &keep);
        let o = b
            .column_by_name("kafka_offset")
            .unwrap()
            .as_primitive::<Int64Type>();
        let shifted: Int64Array = (0..o.len())
            .map(|i| if i >= 4 { o.value(i) - 3 } else { o.value(i) })
            .collect();
        replace_column(&b, "kafka_offset", Arc::new(shifted))
    });
    assert_tampered(&c.verify(&[]), &name(f), "");
}

#[test]
fn t05_a_forged_row_inserted() {
    let c = Case::new();
    let f = &c.files(1)[1];
    edit_rows(f, |b| {
        let n = row_count(&b);
        let mut idx: Vec<u64> = (0..n).collect();
        idx.insert(3, 2);
        flip_binary(&rows(&b, &idx), "raw", 3)
    });
    assert_tampered(&c.verify(&[]), &name(f), "offset");
}

#[test]
fn t06_two_rows_swapped() {
    let c = Case::new();
    let f = &c.files(2)[0];
    edit_rows(f, |b| {
        let mut idx: Vec<u64> = (0..row_count(&b)).collect();
        idx.swap(6, 7);
        rows(&b, &idx)
    });
    assert_tampered(&c.verify(&[]), &name(f), "out of order or unlinked");
}

#[test]
fn t07_two_files_swapped_or_a_footers_range_edited() {
    let c = Case::new();
    let files = c.files(0);
    let (a, b) = (&files[1], &files[2]);
    let tmp = a.with_extension("swap");
    std::fs::rename(a, &tmp).unwrap();
    std::fs::rename(b, a).unwrap();
    std::fs::rename(&tmp, b).unwrap();
    assert_tampered(&c.verify(&[]), &name(a), "");

    let c = Case::new();
    let f = &c.files(0)[1];
    let (_, kv) = read_file(f);
    let last: i64 = kv
        .iter()
        .find(|e| e.key == "vigil.last_offset")
        .and_then(|e| e.value.as_ref())
        .unwrap()
        .parse()
        .unwrap();
    edit_footer(f, "vigil.last_offset", (last + 1).to_string());
    assert_tampered(&c.verify(&[]), &name(f), "footer says offset");
}

#[test]
fn t08_a_middle_file_deleted() {
    let c = Case::new();
    let files = c.files(1);
    std::fs::remove_file(&files[1]).unwrap();
    assert_tampered(
        &c.verify(&[]),
        &name(&files[2]),
        "does not continue the chain",
    );
}

#[test]
fn t19_a_duplicated_kafka_offset() {
    let c = Case::new();
    let f = &c.files(0)[0];
    edit_rows(f, |b| {
        let mut idx: Vec<u64> = (0..row_count(&b)).collect();
        idx.insert(8, 7);
        rows(&b, &idx)
    });
    assert_tampered(&c.verify(&[]), &name(f), "out of order or unlinked");
}

#[test]
fn t20_a_file_copied_into_another_partitions_place() {
    let c = Case::new();
    let (p0, p1) = (c.files(0), c.files(1));
    std::fs::copy(&p1[0], &p0[0]).unwrap();
    assert_tampered(&c.verify(&[]), &name(&p0[0]), "names another partition");
}

// ---------------------------------------------------------------------------------------
// Rebuilt logs, deleted tails, rollbacks, forks

/// Rewrite partition 0 as someone without the key would: one record's value changed, every
/// leaf, chain hash, tree and footer recomputed consistently.
#[test]
fn a_decoded_column_edited_alone_is_caught_by_verify_decoded() {
    let c = Case::new();
    let (exit, r) = c.verify(&["--decoded"]);
    assert_eq!(exit, 0, "{}", serde_json::to_string_pretty(&r).unwrap());
    let f = &c.files(1)[2];
    edit_rows(f, |b| {
        let d = b.column_by_name("decision").unwrap().as_string::<i32>();
        let edited: arrow::array::StringArray = (0..d.len())
            .map(|i| {
                d.is_valid(i)
                    .then(|| if i == 4 { "allow" } else { d.value(i) })
                    .map(str::to_owned)
            })
            .collect();
        assert_ne!(d.value(4), "allow", "the fixture's events are denials");
        replace_column(&b, "decision", Arc::new(edited))
    });
    // The hashes cover the Kafka record, not what was decoded from it…
    assert_eq!(c.verify(&[]).0, 0);
    // …which --decoded derives again.
    assert_tampered(
        &c.verify(&["--decoded"]),
        &name(f),
        "row 4: decoded column decision",
    );
}

#[test]
fn t23_stray_files_directories_and_links_are_findings_and_the_rest_is_still_reported() {
    let c = Case::new();
    let ev = vigil_store::layout::events(&c.store());
    std::fs::create_dir_all(ev.join("topic=..")).unwrap();
    std::fs::create_dir_all(ev.join("topic=evil/partition=x")).unwrap();
    std::fs::write(ev.join("README.txt"), "hello").unwrap();
    let hour_dir = c.files(0)[0].parent().unwrap().to_owned();
    std::fs::write(hour_dir.join("notes.parquet.bak"), "x").unwrap();
    std::os::unix::fs::symlink(
        "/etc/hostname",
        hour_dir.join("00000000000000999990-00000000000000999999.parquet"),
    )
    .unwrap();
    // A real edit elsewhere is still found and named.
    let f = &c.files(1)[0];
    edit_rows(f, |b| flip_binary(&b, "raw", 0));
    let got = c.verify(&[]);
    assert_tampered(&got, "topic=..", "not a topic=… directory");
    assert_tampered(&got, "partition=x", "not a partition=… directory");
    assert_tampered(&got, "README.txt", "not a topic=… directory");
    assert_tampered(&got, "notes.parquet.bak", "not a data file");
    assert_tampered(&got, "999999.parquet", "symbolic link");
    assert_tampered(&got, &name(f), "leaf hash does not match");
}
