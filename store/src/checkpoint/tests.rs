use super::keys::key_file_name;
use super::*;
use crate::clock::now_ms;
use crate::merkle::Frontier;
use base64::Engine;
use std::fs;

fn cp() -> Checkpoint {
    Checkpoint {
        origin: "vigil-0011223344556677/audit/0".into(),
        size: 12,
        root: [7; 32],
        chain: ChainHead {
            offset: 41,
            hash: [9; 32],
        },
        prev: Some([1; 32]),
        time_ms: 1_763_800_000_000,
    }
}

#[test]
fn checkpoint_text_round_trips_and_only_its_canonical_form_parses() {
    let c = cp();
    assert_eq!(Checkpoint::parse(c.text().as_bytes()).unwrap(), c);
    let first = Checkpoint { prev: None, ..cp() };
    assert_eq!(Checkpoint::parse(first.text().as_bytes()).unwrap(), first);
    let t = c.text();
    for bad in [
        t.replace("\n12\n", "\n012\n"),
        t.replace("\n12\n", "\n+12\n"),
        t.replace("vigil-time", "vigil-tme"),
        format!("{t}extra\n"),
        t.trim_end().to_owned(),
        t.replace("vigil-chain 41", "vigil-chain  41"),
        t.replacen("vigil-0011223344556677/audit/0", "", 1),
    ] {
        assert!(Checkpoint::parse(bad.as_bytes()).is_err(), "{bad:?}");
    }
}

#[test]
fn keys_sign_within_their_range_and_rotation_overlaps() {
    let dir = tempfile::tempdir().unwrap();
    let mut ring = KeyRing::open(dir.path(), None).unwrap();
    assert!(ring.name().starts_with("vigil-"));
    let key_file = crate::layout::keys(dir.path()).join(key_file_name(ring.registry.keys[0].id()));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let mut c = cp();
    c.origin = origin(ring.name(), "audit", 0);
    c.time_ms = now_ms();
    let note = ring.sign(&c).unwrap();
    let trusted = ring.registry.clone();
    assert_eq!(verify_note(&note, &trusted), NoteVerdict::Valid(c.clone()));

    // Reopening finds the same key; an empty registry trusts nothing.
    let again = KeyRing::open(dir.path(), None).unwrap();
    assert_eq!(again.registry, trusted);
    assert!(matches!(
        verify_note(&note, &Registry::default()),
        NoteVerdict::Untrusted(_)
    ));

    // Rotation with an overlap: both keys sign now; the old one stops after the overlap.
    ring.rotate(60_000).unwrap();
    assert_eq!(ring.registry.keys.len(), 2);
    c.time_ms = now_ms();
    let both = ring.sign(&c).unwrap();
    let sigs = std::str::from_utf8(&both).unwrap().matches('—').count();
    assert_eq!(sigs, 2);
    assert!(matches!(
        verify_note(&both, &ring.registry),
        NoteVerdict::Valid(_)
    ));
    ring.check_can_sign().unwrap();
    c.time_ms = now_ms() + 120_000;
    let later = ring.sign(&c).unwrap();
    assert_eq!(std::str::from_utf8(&later).unwrap().matches('—').count(), 1);
    // The old key used after its range (a note signed by it alone, dated later) is refused.
    let old_only = Registry {
        keys: vec![ring.registry.keys[0].clone()],
    };
    let old_ring = KeyRing {
        dir: crate::layout::keys(dir.path()),
        registry: Registry {
            keys: vec![KeyEntry {
                valid_until_ms: None,
                ..ring.registry.keys[0].clone()
            }],
        },
        signers: vec![(
            KeyEntry {
                valid_until_ms: None,
                ..ring.registry.keys[0].clone()
            },
            ring.signers[0].1.clone(),
        )],
    };
    let late = old_ring.sign(&c).unwrap();
    // A ring whose only key has expired refuses to start signing.
    let past = KeyEntry {
        valid_until_ms: Some(now_ms() - 1),
        ..ring.registry.keys[0].clone()
    };
    let expired = KeyRing {
        dir: crate::layout::keys(dir.path()),
        registry: Registry {
            keys: vec![past.clone()],
        },
        signers: vec![(past, ring.signers[0].1.clone())],
    };
    assert!(expired.check_can_sign().is_err());
    assert!(matches!(
        verify_note(&late, &old_only),
        NoteVerdict::Untrusted(_)
    ));
    assert!(matches!(
        verify_note(&late, &ring.registry),
        NoteVerdict::Untrusted(_)
    ));
}

#[test]
fn edited_and_malformed_notes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ring = KeyRing::open(dir.path(), None).unwrap();
    let mut c = cp();
    c.time_ms = now_ms();
    let note = String::from_utf8(ring.sign(&c).unwrap()).unwrap();
    let keys = &ring.registry;
    let edited = note.replacen("\n12\n", "\n13\n", 1);
    assert!(matches!(
        verify_note(edited.as_bytes(), keys),
        NoteVerdict::BadSignature(_)
    ));
    let root = B64.encode([7u8; 32]);
    let other = B64.encode([8u8; 32]);
    assert!(matches!(
        verify_note(note.replace(&root, &other).as_bytes(), keys),
        NoteVerdict::BadSignature(_)
    ));
    // Extra text line, bad UTF-8, too many signatures, no signature.
    let (text, sig) = note.rsplit_once("\n\n").unwrap();
    let extra = format!("{text}\nvigil-extra 1\n\n{sig}");
    assert!(!matches!(
        verify_note(extra.as_bytes(), keys),
        NoteVerdict::Valid(_)
    ));
    let mut bad_utf8 = note.clone().into_bytes();
    bad_utf8[3] = 0xff;
    assert!(matches!(
        verify_note(&bad_utf8, keys),
        NoteVerdict::Malformed(_)
    ));
    let many = format!("{text}\n\n{}", sig.repeat(MAX_SIGNATURES + 1));
    assert!(matches!(
        verify_note(many.as_bytes(), keys),
        NoteVerdict::Malformed(_)
    ));
    assert!(matches!(
        verify_note(format!("{text}\n").as_bytes(), keys),
        NoteVerdict::Malformed(_)
    ));
}

#[test]
fn checkpoints_link_to_the_previous_size_and_refresh_keeps_the_link() {
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror");
    let ring = KeyRing::open(dir.path(), None).unwrap();
    let keys = ring.registry.clone();
    let cps = Checkpointer::new(dir.path(), ring, Some(mirror.clone()));
    let mut tree = Frontier::default();
    tree.append(&[1; 32]);
    let head = ChainHead {
        offset: 0,
        hash: [5; 32],
    };
    let first = cps.checkpoint("t", 0, head, &tree, None).unwrap().unwrap();
    assert_eq!(cps.checkpoint("t", 0, head, &tree, None).unwrap(), None);
    tree.append(&[2; 32]);
    let second = cps.checkpoint("t", 0, head, &tree, None).unwrap().unwrap();
    let NoteVerdict::Valid(c2) = verify_note(&second, &keys) else {
        panic!("second checkpoint does not verify")
    };
    assert_eq!(c2.prev, Some(note_hash(&first)));
    assert_eq!((c2.size, c2.root), (2, tree.root()));
    std::thread::sleep(std::time::Duration::from_millis(5));
    let fresh = cps.refresh(1).unwrap();
    assert_eq!(fresh.len(), 1);
    let NoteVerdict::Valid(c3) = verify_note(&fresh[0].1, &keys) else {
        panic!("refreshed checkpoint does not verify")
    };
    assert_eq!((c3.size, c3.prev), (2, c2.prev));
    assert!(c3.time_ms > c2.time_ms);
    // Stored, mirrored, and found again by a new checkpointer (after a restart).
    let log = Checkpointer::log_dir(&crate::layout::checkpoints(dir.path()), "t", 0).unwrap();
    let mirrored = Checkpointer::log_dir(&mirror, "t", 0).unwrap();
    assert_eq!(list_notes(&log).unwrap().len(), 2);
    assert_eq!(
        fs::read(&list_notes(&mirrored).unwrap()[1].1).unwrap(),
        fresh[0].1
    );
    let again = Checkpointer::new(dir.path(), KeyRing::open(dir.path(), None).unwrap(), None);
    assert_eq!(again.checkpoint("t", 0, head, &tree, None).unwrap(), None);
    let mut shorter = Frontier::default();
    shorter.append(&[1; 32]);
    assert!(
        again.checkpoint("t", 0, head, &shorter, None).is_err(),
        "never signs a rollback"
    );
    let mut forked = Frontier::default();
    forked.append(&[1; 32]);
    forked.append(&[3; 32]);
    assert!(
        again.checkpoint("t", 0, head, &forked, None).is_err(),
        "never signs a fork"
    );
}

#[test]
fn processes_starting_on_a_fresh_store_at_once_agree_on_one_key() {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|_| s.spawn(|| KeyRing::open(dir.path(), None).unwrap().name().to_owned()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(names.windows(2).all(|w| w[0] == w[1]), "{names:?}");
    let ring = KeyRing::open(dir.path(), None).unwrap();
    assert_eq!(ring.registry.keys.len(), 1);
    let keys: Vec<_> = fs::read_dir(crate::layout::keys(dir.path()))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".key"))
        .collect();
    assert_eq!(keys.len(), 1, "the losers' keys are removed");
}
