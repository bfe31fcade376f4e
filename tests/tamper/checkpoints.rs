//! Tampering with logs and their checkpoints: a log rebuilt without the key, truncated, rolled
//! back, forked; notes edited, malformed, signed by unknown, expired or out-of-range keys,
//! re-dated; trusted states.

use super::*;

fn rebuild_partition_0(c: &Case) {
    let store = c.store();
    let (mut recs, mut heads) = (Vec::new(), Vec::new());
    for f in c.files(0) {
        let (b, _) = read_file(&f);
        heads.push(b.num_rows());
        recs.push(b);
        std::fs::remove_file(&f).unwrap();
    }
    let all = concat_batches(&recs[0].schema(), &recs).unwrap();
    let all = flip_binary(&all, "raw", 10);
    let s = vigil_store::Store::open(&store, Default::default()).unwrap();
    let mut batch = vigil_store::PartitionBatch::new(TOPIC, 0, Default::default(), 64);
    let decoder = vigil_schemas::Decoder::default();
    let offs = all
        .column_by_name("kafka_offset")
        .unwrap()
        .as_primitive::<Int64Type>();
    let ts = all
        .column_by_name("kafka_timestamp")
        .unwrap()
        .as_primitive::<arrow::datatypes::TimestampMillisecondType>();
    let keys = all.column_by_name("kafka_key").unwrap().as_binary::<i32>();
    let raws = all.column_by_name("raw").unwrap().as_binary::<i32>();
    let mut start = 0;
    for n in heads {
        for i in start..start + n {
            let hs = [("seq", Some(&b"x"[..]))];
            let rec = vigil_store::RecordRef {
                topic: TOPIC,
                partition: 0,
                offset: offs.value(i),
                timestamp_ms: Some(ts.value(i)),
                key: Some(keys.value(i)),
                value: Some(raws.value(i)),
                headers: &hs,
            };
            batch.append(&rec, &decoder, 0).unwrap();
        }
        start += n;
        s.write(&batch.seal().unwrap().unwrap()).unwrap();
    }
}

#[test]
fn t09_a_log_rebuilt_without_the_key_with_and_without_re_signed_checkpoints() {
    let c = Case::new();
    rebuild_partition_0(&c);
    // The hashes agree with themselves, but not with what was signed.
    assert_tampered(
        &c.verify(&[]),
        "partition=0",
        "differs from this checkpoint",
    );

    // Re-signed with the forger's own key (same name, their registry): the pinned keys
    // do not know it.
    let c = Case::new();
    rebuild_partition_0(&c);
    let store = c.store();
    let name =
        Registry::parse(&std::fs::read_to_string(vigil_store::layout::registry(&store)).unwrap())
            .unwrap()
            .name()
            .unwrap()
            .to_owned();
    std::fs::remove_dir_all(vigil_store::layout::keys(&store)).unwrap();
    std::fs::remove_dir_all(
        vigil_store::layout::checkpoints(&store)
            .join("topic=audit")
            .join("partition=0"),
    )
    .unwrap();
    let (skey, _) = signed_note::generate_key(&mut rand_core::OsRng, &name);
    let forged_key = c.root.join("forger.key");
    std::fs::write(&forged_key, skey).unwrap();
    let ring = KeyRing::open(&store, Some(&forged_key)).unwrap();
    let cps = Checkpointer::new(&store, ring, None);
    let s = vigil_store::Store::open(&store, Default::default()).unwrap();
    let head = s.head(TOPIC, 0).unwrap();
    cps.checkpoint(TOPIC, 0, head.chain, &head.tree, None)
        .unwrap()
        .unwrap();
    let got = c.verify(&[]);
    assert_tampered(&got, "partition=0", "not signed by a trusted key");
}

/// Delete partition 0's newest file and every checkpoint beyond what remains.
fn truncate_partition_0(c: &Case) {
    let files = c.files(0);
    let last = files.last().unwrap();
    let (b, _) = read_file(last);
    std::fs::remove_file(last).unwrap();
    let store = vigil_store::Store::open_existing(c.store()).unwrap();
    let kept: u64 = store
        .list(TOPIC, 0)
        .unwrap()
        .0
        .iter()
        .map(|f| vigil_store::files::read_footer(&f.path).unwrap().records)
        .sum();
    assert!(b.num_rows() > 0);
    for n in c.notes(0) {
        let size: u64 = name(&n).trim_end_matches(".note").parse().unwrap();
        if size > kept {
            std::fs::remove_file(n).unwrap();
        }
    }
}

#[test]
fn t10_the_newest_files_and_checkpoints_deleted() {
    let c = Case::new();
    truncate_partition_0(&c);
    assert_tampered(&c.verify(&[]), "mirror", "newest records were deleted");
    // With neither anchors nor trusted state, it cannot be told: incomplete, unanchored.
    let keys = c.root.join("keys");
    let got = verify_raw(&c.store(), &["--keys", keys.to_str().unwrap()]);
    assert_finding(&got, 2, "incomplete", "audit/0", "unanchored");
}

#[test]
fn t11_the_whole_store_rolled_back_to_an_older_copy() {
    let c = Case::new();
    let trusted = c.root.join("trusted.json");
    let t = trusted.to_str().unwrap();
    let keys = c.root.join("keys");
    let (exit, _) = verify_raw(
        &c.store(),
        &[
            "--keys",
            keys.to_str().unwrap(),
            "--trusted",
            t,
            "--update-trusted",
        ],
    );
    assert_eq!(exit, 2, "first use: keys pinned, but nothing anchored yet");
    let got = verify_raw(&c.root.join("snapshot"), &["--trusted", t]);
    assert_tampered(&got, "trusted checkpoint", "rolled back");
}

#[test]
fn t12_a_fork_two_different_checkpoints_of_the_same_size() {
    let c = Case::new();
    // The signer itself is made to sign another tree of the same size (its key leaked, or
    // it was fooled): the anchor holds that checkpoint too.
    let store = c.store();
    let newest = c.notes(1).last().unwrap().clone();
    let note = signed_note::Note::from_bytes(&std::fs::read(&newest).unwrap()).unwrap();
    let cp = Checkpoint::parse(note.text()).unwrap();
    let ring = KeyRing::open(&store, None).unwrap();
    let forked = ring
        .sign(&Checkpoint {
            root: [0x42; 32],
            ..cp.clone()
        })
        .unwrap();
    let extra = c.root.join("other-anchor");
    let dir = Checkpointer::log_dir(&extra, TOPIC, 1).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name(&newest)), forked).unwrap();
    let got = c.verify(&["--anchor-dir", extra.to_str().unwrap()]);
    assert_tampered(&got, "audit/1", "fork");
}

// ---------------------------------------------------------------------------------------
// Checkpoints and keys

fn edit_note(path: &Path, f: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, f(text)).unwrap();
}

#[test]
fn t13_a_checkpoints_signature_or_size_or_root_line_edited() {
    let c = Case::new();
    let n = c.notes(2)[1].clone();
    edit_note(&n, |t| {
        let mut lines: Vec<String> = t.lines().map(str::to_owned).collect();
        lines[1] = (lines[1].parse::<u64>().unwrap() + 1).to_string();
        lines.join("\n") + "\n"
    });
    assert_tampered(&c.verify(&[]), &name(&n), "bad signature");

    let c = Case::new();
    let n = c.notes(2)[1].clone();
    edit_note(&n, |t| {
        let mut lines: Vec<String> = t.lines().map(str::to_owned).collect();
        lines[2] = "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=".into();
        lines.join("\n") + "\n"
    });
    assert_tampered(&c.verify(&[]), &name(&n), "bad signature");

    let c = Case::new();
    let n = c.notes(2)[1].clone();
    edit_note(&n, |t| {
        let (text, sig) = t.rsplit_once(' ').unwrap();
        let mut sig = sig.trim_end().as_bytes().to_vec();
        let i = sig.len() / 2;
        sig[i] = if sig[i] == b'A' { b'B' } else { b'A' };
        format!("{text} {}\n", String::from_utf8(sig).unwrap())
    });
    assert_tampered(&c.verify(&[]), &name(&n), "");
}

#[test]
fn t14_signatures_only_from_an_unknown_or_expired_key() {
    // Unknown: the store's notes re-signed by a key nobody pinned.
    let c = Case::new();
    let other = tempfile::tempdir().unwrap();
    let stranger = KeyRing::open(other.path(), None).unwrap();
    let n = c.notes(0).last().unwrap().clone();
    let note = signed_note::Note::from_bytes(&std::fs::read(&n).unwrap()).unwrap();
    let mut cp = Checkpoint::parse(note.text()).unwrap();
    cp.time_ms = vigil_store::clock::now_ms();
    std::fs::write(&n, stranger.sign(&cp).unwrap()).unwrap();
    assert_tampered(&c.verify(&[]), &name(&n), "not signed by a trusted key");

    // Expired: the pinned registry says the second key stopped before it signed.
    let c = Case::new();
    let keys_path = c.root.join("keys");
    let mut keys = Registry::parse(&std::fs::read_to_string(&keys_path).unwrap()).unwrap();
    keys.keys[1].valid_until_ms = Some(keys.keys[1].valid_from_ms);
    std::fs::write(&keys_path, keys.format()).unwrap();
    assert_tampered(&c.verify(&[]), "partition=0", "outside its validity range");
}

#[test]
fn t15_a_malformed_checkpoint_note() {
    for (what, f) in [
        (
            "an extra line",
            Box::new(|t: String| t.replacen("\nvigil-time", "\nvigil-extra 1\nvigil-time", 1))
                as Box<dyn Fn(String) -> String>,
        ),
        (
            "bad UTF-8",
            Box::new(|t: String| t.replacen("vigil", "vig\u{fffd}l", 1)),
        ),
        (
            "too many signatures",
            Box::new(|t: String| {
                let sig = t.lines().last().unwrap().to_owned();
                format!("{t}{}", format!("{sig}\n").repeat(12))
            }),
        ),
    ] {
        let c = Case::new();
        let n = c.notes(1)[0].clone();
        edit_note(&n, f);
        if what == "bad UTF-8" {
            let mut b = std::fs::read(&n).unwrap();
            let i = b.iter().position(|&x| x == 0xef).unwrap();
            b[i] = 0xff;
            std::fs::write(&n, b).unwrap();
        }
        let got = c.verify(&[]);
        assert_tampered(&got, &name(&n), "");
    }
}

#[test]
fn t21_an_old_key_used_after_its_range() {
    let c = Case::new();
    let store = c.store();
    let keys = Registry::parse(&std::fs::read_to_string(c.root.join("keys")).unwrap()).unwrap();
    let old_id = keys.keys[0].id();
    // Its validity over, the old key's private half is gone from the store...
    assert!(
        !vigil_store::layout::keys(&store)
            .join(format!("{old_id:08x}.key"))
            .exists()
    );
    // ...but a copy taken before then signs as well as it ever did: a ring holding only it.
    let old_key = c.root.join("stolen-old.key");
    let other = tempfile::tempdir().unwrap();
    let ring = KeyRing::open(other.path(), Some(&old_key)).unwrap();
    let n = c.notes(2).last().unwrap().clone();
    let note = signed_note::Note::from_bytes(&std::fs::read(&n).unwrap()).unwrap();
    let mut cp = Checkpoint::parse(note.text()).unwrap();
    cp.time_ms = vigil_store::clock::now_ms();
    std::fs::write(&n, ring.sign(&cp).unwrap()).unwrap();
    assert_tampered(&c.verify(&[]), &name(&n), "outside its validity range");
}

// ---------------------------------------------------------------------------------------
// Proofs

#[test]
fn t24_a_trusted_state_is_recorded_only_from_a_valid_store_or_on_first_use() {
    let c = Case::new();
    let trusted = c.root.join("trusted.json");
    let t = trusted.to_str().unwrap();
    // First use: only unanchored, which the trusted state will vouch for: recorded.
    assert_eq!(c.trust(&trusted).0, 2);
    let recorded = std::fs::read(&trusted).unwrap();
    // An edited store: found, and the trusted state is left as it was.
    let f = &c.files(0)[0];
    edit_rows(f, |b| flip_binary(&b, "raw", 1));
    let got = verify_raw(&c.store(), &["--trusted", t, "--update-trusted"]);
    assert_tampered(&got, &name(f), "leaf hash does not match");
    assert_eq!(std::fs::read(&trusted).unwrap(), recorded);
    // A first use on a store with anything more than that: nothing recorded.
    let fresh = c.root.join("fresh.json");
    assert_eq!(c.trust(&fresh).0, 1);
    assert!(!fresh.exists(), "a trusted state made from an edited store");
}

#[test]
fn t25_a_checkpoint_re_dated_before_the_one_it_follows_with_the_stores_own_key() {
    let c = Case::new();
    let notes = c.notes(0);
    let (prev, newest) = (&notes[notes.len() - 2], &notes[notes.len() - 1]);
    let text_of = |p: &Path| {
        let note = std::fs::read_to_string(p).unwrap();
        let (text, _) = note.split_once("\n\n").unwrap();
        Checkpoint::parse(format!("{text}\n").as_bytes()).unwrap()
    };
    let before = text_of(prev);
    let mut cp = text_of(newest);
    assert!(cp.time_ms >= before.time_ms, "the signer dates forwards");
    // Whoever holds the data directory holds its signing key: a validly signed note, dated
    // before the checkpoint it follows.
    cp.time_ms = before.time_ms - 1;
    let ring = KeyRing::open(&c.store(), None).unwrap();
    std::fs::write(newest, ring.sign(&cp).unwrap()).unwrap();
    assert_tampered(
        &c.verify(&[]),
        &name(newest),
        "checkpoint times go backwards",
    );
}

#[test]
fn t26_a_checkpoint_deleted_from_the_middle_of_a_logs_chain() {
    let c = Case::new();
    let notes = c.notes(0);
    assert!(notes.len() >= 3, "{notes:?}");
    let (gone, next) = (&notes[notes.len() - 2], &notes[notes.len() - 1]);
    std::fs::remove_file(gone).unwrap();
    // Its anchored copy says it existed; the one after it links to it.
    let got = c.verify(&[]);
    assert_tampered(&got, "mirror", "it was removed");
    assert_tampered(
        &got,
        &name(next),
        "does not link to the previous checkpoint",
    );
    // With no anchor, the broken link alone gives it away.
    let keys = c.root.join("keys");
    let got = verify_raw(&c.store(), &["--keys", keys.to_str().unwrap()]);
    assert_tampered(
        &got,
        &name(next),
        "does not link to the previous checkpoint",
    );
}
