//! Offline proofs: an event proven with the public key alone, consistency between two signed
//! sizes, a node passed off as a leaf, and every mutation of a bundle failing; a legitimate
//! compaction still verifying.

use super::*;

type Mutation = Box<dyn Fn(&mut Value)>;

/// The first hash of a bundle's proof with its first hex digit changed.
fn flip_first(b: &mut Value) {
    let h = b["proof"][0].as_str().unwrap().to_owned();
    let digit = if h.starts_with('0') { '1' } else { '0' };
    b["proof"][0] = format!("{digit}{}", &h[1..]).into();
}

/// Write `bundle` to a file and check it with the pinned keys.
fn check_bundle(c: &Case, bundle: &Value) -> (i32, String) {
    let path = c.root.join(format!(
        "bundle-{}.json",
        rand_core::RngCore::next_u32(&mut rand_core::OsRng)
    ));
    std::fs::write(&path, serde_json::to_string(bundle).unwrap()).unwrap();
    let keys = c.root.join("keys");
    let ran = vigil(&[
        "verify-proof",
        path.to_str().unwrap(),
        "--keys",
        keys.to_str().unwrap(),
    ]);
    (ran.code, ran.out)
}

fn proof(c: &Case, args: &[&str]) -> Value {
    let store = c.store();
    let mut all = vec!["proof", "--data-dir", store.to_str().unwrap()];
    all.extend_from_slice(args);
    let Ran { code, out, .. } = vigil(&all);
    assert_eq!(code, 0, "{out}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn t16_an_event_is_proven_with_the_public_key_alone_and_every_mutation_fails() {
    let c = Case::new();
    let by_event = proof(&c, &["--event", "id-000007"]);
    assert_eq!(by_event["record"]["partition"], 1);
    let (code, out) = check_bundle(&c, &by_event);
    assert_eq!(code, 0, "{out}");
    // With the bare public key of the signer (no registry ranges) as well.
    let keys = Registry::parse(&std::fs::read_to_string(c.root.join("keys")).unwrap()).unwrap();
    let path = c.root.join("event.json");
    std::fs::write(&path, serde_json::to_string(&by_event).unwrap()).unwrap();
    let vkey = &keys.keys[1].vkey;
    let Ran { code, out, .. } =
        vigil(&["verify-proof", path.to_str().unwrap(), "--public-key", vkey]);
    assert_eq!(code, 0, "{out}");

    let good = proof(&c, &["--log", "audit/0", "--index", "9"]);
    assert_eq!(check_bundle(&c, &good).0, 0);
    let mutations: Vec<(&str, Mutation)> = vec![
        ("flipped hash", Box::new(flip_first)),
        (
            "extra hash",
            Box::new(|b: &mut Value| {
                let h = b["proof"][0].clone();
                b["proof"].as_array_mut().unwrap().push(h);
            }),
        ),
        (
            "missing hash",
            Box::new(|b: &mut Value| {
                b["proof"].as_array_mut().unwrap().pop();
            }),
        ),
        (
            "index + 1",
            Box::new(|b: &mut Value| {
                b["leaf_index"] = (b["leaf_index"].as_u64().unwrap() + 1).into();
            }),
        ),
        (
            "index - 1",
            Box::new(|b: &mut Value| {
                b["leaf_index"] = (b["leaf_index"].as_u64().unwrap() - 1).into();
            }),
        ),
        (
            "wrong size",
            Box::new(|b: &mut Value| {
                let note = b["checkpoint"].as_str().unwrap().to_owned();
                let mut lines: Vec<String> = note.split('\n').map(str::to_owned).collect();
                lines[1] = (lines[1].parse::<u64>().unwrap() + 1).to_string();
                b["checkpoint"] = lines.join("\n").into();
            }),
        ),
        (
            "record edited",
            Box::new(|b: &mut Value| {
                b["record"]["offset"] = (b["record"]["offset"].as_i64().unwrap() + 1).into();
            }),
        ),
        (
            "another log",
            Box::new(|b: &mut Value| {
                b["record"]["partition"] = 2.into();
            }),
        ),
    ];
    for (what, m) in mutations {
        let mut b = good.clone();
        m(&mut b);
        let (code, out) = check_bundle(&c, &b);
        assert_eq!(code, 1, "{what}: {out}");
        assert!(out.contains("INVALID"), "{what}: {out}");
    }
}

#[test]
fn t17_consistency_between_two_signed_sizes_and_its_mutations() {
    let c = Case::new();
    let good = proof(&c, &["--log", "audit/1", "--from", "25"]);
    let (code, out) = check_bundle(&c, &good);
    assert_eq!(code, 0, "{out}");
    assert!(!good["proof"].as_array().unwrap().is_empty());
    let mutations: Vec<(&str, Mutation)> = vec![
        ("flipped hash", Box::new(flip_first)),
        (
            "missing hash",
            Box::new(|b: &mut Value| {
                b["proof"].as_array_mut().unwrap().pop();
            }),
        ),
        (
            "extra hash",
            Box::new(|b: &mut Value| {
                let h = b["proof"][0].clone();
                b["proof"].as_array_mut().unwrap().push(h);
            }),
        ),
        (
            "swapped checkpoints",
            Box::new(|b: &mut Value| {
                let old = b["old_checkpoint"].clone();
                b["old_checkpoint"] = b["new_checkpoint"].clone();
                b["new_checkpoint"] = old;
            }),
        ),
    ];
    for (what, m) in mutations {
        let mut b = good.clone();
        m(&mut b);
        let (code, out) = check_bundle(&c, &b);
        assert_eq!(code, 1, "{what}: {out}");
    }
    // A checkpoint of another log is refused.
    let other = proof(&c, &["--log", "audit/2", "--from", "25"]);
    let mut b = good.clone();
    b["new_checkpoint"] = other["new_checkpoint"].clone();
    assert_eq!(check_bundle(&c, &b).0, 1);
}

#[test]
fn t22_a_legitimate_compaction_verifies_even_when_interrupted() {
    let c = Case::new();
    let store = c.store();
    let before = c.files(0).len();
    assert!(before > 3);
    // An interrupted compaction: the compacted file is written, the old ones not yet removed.
    let saved = c.root.join("saved");
    std::fs::create_dir_all(&saved).unwrap();
    let old: Vec<PathBuf> = c.files(0);
    for f in &old {
        std::fs::copy(f, saved.join(name(f))).unwrap();
    }
    let Ran { code, out, .. } = vigil(&[
        "compact",
        "--data-dir",
        store.to_str().unwrap(),
        "--target-records",
        "50",
        "--zstd-level",
        "9",
        "--row-group-rows",
        "7",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(c.files(0).len() < before, "{out}");
    let compacted = &c.files(0)[0];
    let groups = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(compacted).unwrap())
        .unwrap()
        .metadata()
        .num_row_groups();
    assert!(groups > 1, "rewritten with other row groups: {groups}");
    for f in &old {
        if !f.exists() {
            std::fs::copy(saved.join(name(f)), f).unwrap();
        }
    }
    // The next run (serve or compact) removes what the compaction replaced; then everything
    // verifies as before, checkpoints included.
    let Ran { code, out, .. } = vigil(&[
        "compact",
        "--data-dir",
        store.to_str().unwrap(),
        "--target-records",
        "1000",
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(c.files(0).len(), 1);
    let (exit, r) = c.verify(&[]);
    assert_eq!(exit, 0, "{}", serde_json::to_string_pretty(&r).unwrap());
    assert_eq!(kafka_records(&r), (FIRST_RUN + SECOND_RUN) as u64);
}

#[test]
fn t18_a_node_presented_as_a_leaf() {
    use vigil_store::merkle::{interior, leaf_node, verify_inclusion};
    let c = Case::new();
    // A real proof of leaf 0 against the newest signed checkpoint of audit/0.
    let b = proof(&c, &["--log", "audit/0", "--index", "0"]);
    assert_eq!(check_bundle(&c, &b).0, 0);
    let hashes: Vec<[u8; 32]> = b["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| vigil_store::chain::from_hex(h.as_str().unwrap()).unwrap())
        .collect();
    let note = signed_note::Note::from_bytes(b["checkpoint"].as_str().unwrap().as_bytes()).unwrap();
    let cp = Checkpoint::parse(note.text()).unwrap();
    let rec = &b["record"];
    let leaf0 = vigil_store::proof::StoredRecord {
        topic: TOPIC.into(),
        partition: 0,
        offset: rec["offset"].as_i64().unwrap(),
        timestamp_ms: rec["timestamp_ms"].as_i64(),
        key: Some(
            base64::Engine::decode(
                &base64::engine::general_purpose::STANDARD,
                rec["key"].as_str().unwrap(),
            )
            .unwrap(),
        ),
        value: Some(
            base64::Engine::decode(
                &base64::engine::general_purpose::STANDARD,
                rec["value"].as_str().unwrap(),
            )
            .unwrap(),
        ),
        headers: rec["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h["key"].as_str().unwrap().to_owned(),
                    h["value"].as_str().map(|v| {
                        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, v)
                            .unwrap()
                    }),
                )
            })
            .collect(),
    }
    .leaf_hash();
    assert!(verify_inclusion(0, cp.size, &leaf0, &hashes, &cp.root));
    // The interior node over leaves 0 and 1, claimed as leaf 0 of the tree one level up.
    let node = interior(&leaf_node(&leaf0), &hashes[0]);
    assert!(!verify_inclusion(
        0,
        cp.size.div_ceil(2),
        &node,
        &hashes[1..],
        &cp.root
    ));
    assert!(!verify_inclusion(0, cp.size, &node, &hashes[1..], &cp.root));
}
