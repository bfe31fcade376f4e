use super::pull::up_to_date;
use super::*;

fn url(s: &str) -> Result<BucketUrl, StoreError> {
    BucketUrl::parse(s).expect("an s3:// URL")
}

#[test]
fn urls_name_a_bucket_and_a_prefix_and_nothing_else_is_a_bucket() {
    assert_eq!(
        url("s3://vigil-store/prod/eu/").unwrap(),
        BucketUrl {
            bucket: "vigil-store".into(),
            prefix: "prod/eu".into()
        }
    );
    assert_eq!(url("s3://vigil.store").unwrap().prefix, "");
    assert_eq!(
        url("s3://vigil-store/a").unwrap().to_string(),
        "s3://vigil-store/a"
    );
    for bad in [
        "s3://",
        "s3://ab",
        "s3://Upper",
        "s3://-x-y",
        "s3://b_c/x",
        "s3://bkt/a/../b",
    ] {
        assert!(url(bad).is_err(), "{bad} is refused");
    }
    assert!(BucketUrl::parse("/var/lib/vigil").is_none());
    assert!(BucketUrl::parse("file:///var/lib/vigil").is_none());
}

fn bucket(prefix: &str) -> Bucket {
    let opts = BucketOptions {
        aws_settings: vec![],
        endpoint: Some("http://127.0.0.1:9".into()),
        region: Some("us-east-1".into()),
        allow_http: true,
        request_timeout_ms: 1000,
        retry_timeout_ms: 0,
        object_lock_days: 0,
    };
    let u = BucketUrl {
        bucket: "vigil-store".into(),
        prefix: prefix.into(),
    };
    Bucket::open(&u, &opts).unwrap()
}

#[test]
fn an_object_key_never_names_a_path_outside_the_store() {
    let b = bucket("prod");
    let rel = |k: &str| b.local_rel(&Key::from(k));
    assert_eq!(
        rel("prod/events/topic=t/partition=0/x.parquet").as_deref(),
        Some("events/topic=t/partition=0/x.parquet")
    );
    // Another prefix that merely starts alike, or no prefix at all.
    assert_eq!(rel("production/events/x.parquet"), None);
    assert_eq!(rel("events/x.parquet"), None);
    // A key with `..` in it is never a path upwards: object_store's paths hold such a
    // segment percent-encoded, a plain (odd) name inside the store.
    let up = rel("prod/events/../../etc/passwd").unwrap();
    assert_eq!(up, "events/%2E%2E/%2E%2E/etc/passwd");
    let dir = Path::new("/data");
    assert!(
        dir.join(&up)
            .components()
            .all(|c| c != std::path::Component::ParentDir)
    );
    assert_eq!(
        b.key("events/topic=t/partition=0/x.parquet")
            .unwrap()
            .as_ref(),
        "prod/events/topic=t/partition=0/x.parquet"
    );
    assert_eq!(
        bucket("").key("keys/registry").unwrap().as_ref(),
        "keys/registry"
    );
}

#[test]
fn a_local_copy_is_current_only_when_its_content_has_the_objects_etag() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, b"hello").unwrap();
    let meta = |etag: Option<&str>, size: u64| object_store::ObjectMeta {
        location: Key::from("f"),
        last_modified: chrono::DateTime::UNIX_EPOCH,
        size,
        e_tag: etag.map(str::to_owned),
        version: None,
    };
    // md5("hello") = 5d41402abc4b2a76b9719d911017c592, as S3 quotes it.
    let md5 = Some("\"5d41402abc4b2a76b9719d911017c592\"");
    assert!(up_to_date(&path, &meta(md5, 5), None));
    // Same size, other content (an object replaced in the bucket).
    assert!(!up_to_date(
        &path,
        &meta(Some("\"00000000000000000000000000000000\""), 5),
        None
    ));
    assert!(!up_to_date(&path, &meta(md5, 6), None));
    // A multipart ETag: current only if it is the one recorded when fetched.
    let multi = Some("\"abc-2\"");
    assert!(!up_to_date(&path, &meta(multi, 5), None));
    assert!(up_to_date(
        &path,
        &meta(multi, 5),
        Some(&"\"abc-2\"".to_owned())
    ));
    // No ETag: never trusted.
    assert!(!up_to_date(&path, &meta(None, 5), None));
    assert!(!up_to_date(
        &dir.path().join("missing"),
        &meta(md5, 5),
        None
    ));
}

#[test]
fn a_log_is_the_chain_its_head_reaches_and_a_lost_writers_files_are_strays() {
    use super::{HeadObject, strays};
    let f = |first: i64, last: i64| {
        (
            format!("events/x/{first:020}-{last:020}.parquet"),
            first,
            last,
        )
    };
    let head = |file: &(String, i64, i64)| HeadObject {
        owner: "b".into(),
        seq: 7,
        file: Some(file.0.clone()),
        first_offset: file.1,
        last_offset: file.2,
        recent: vec![file.0.clone()],
    };
    let names = |s: std::collections::BTreeSet<String>| {
        s.into_iter()
            .map(|n| n.rsplit('/').next().unwrap()[..41].to_owned())
            .collect::<Vec<_>>()
    };
    // B wrote 0-9, 10-19, 20-29; A, fenced after 0-9, had put 10-24 (never named) and the
    // file after the head, 30-39, was put but its head put lost.
    let (a0, b1, b2) = (f(0, 9), f(10, 19), f(20, 29));
    let files = vec![a0.clone(), b1.clone(), f(10, 24), b2.clone(), f(30, 39)];
    let lost = strays(&files, &head(&b2));
    assert_eq!(
        names(lost),
        vec![
            "00000000000000000010-00000000000000000024",
            "00000000000000000030-00000000000000000039"
        ]
    );
    // A lost writer's file that ends where the chain's does, from before it (10-29 over
    // 10-19 + 20-29): the same records, and a compaction's shape; the walk takes the widest.
    let files = vec![a0.clone(), b1.clone(), b2.clone(), f(10, 29), f(30, 39)];
    let (b3, wide) = (f(30, 39), f(10, 29));
    let lost = strays(&files, &head(&b3));
    assert!(lost.contains(&b1.0) && lost.contains(&b2.0) && !lost.contains(&wide.0));
    // Gaps in offsets are no reason to stop walking (Kafka offsets need not be dense).
    let files = vec![f(0, 9), f(15, 19), f(40, 49)];
    assert!(strays(&files, &head(&files[2])).is_empty());
    // The head's file missing from the bucket: nothing is a stray (verify says what is lost).
    let files = vec![a0.clone(), b1.clone()];
    assert!(strays(&files, &head(&b2)).is_empty());
    // A head naming no file yet (a log claimed, nothing written): every file is a stray.
    let mut empty = HeadObject::empty("b");
    empty.seq = 1;
    assert_eq!(strays(std::slice::from_ref(&a0), &empty).len(), 1);
}

#[test]
fn a_head_names_its_newest_files_and_each_change_is_another_object() {
    let mut h = super::HeadObject::empty("me");
    let first = serde_json::to_vec(&h).unwrap();
    for i in 0..40i64 {
        h = h.advanced(format!("events/f{i}"), i * 10, i * 10 + 9);
    }
    assert_eq!(h.seq, 40);
    assert_eq!(h.recent.len(), super::RECENT_FILES);
    assert_eq!(h.recent.last().map(String::as_str), Some("events/f39"));
    assert_eq!(h.recent[0], format!("events/f{}", 40 - super::RECENT_FILES));
    assert_eq!((h.first_offset, h.last_offset), (390, 399));
    // The same position written again is still a change: its seq differs, so does its ETag.
    assert_ne!(serde_json::to_vec(&h).unwrap(), first);
    // A head written before `recent` existed still reads.
    let old: super::HeadObject = serde_json::from_str(
        r#"{"owner":"a","seq":3,"file":null,"first_offset":-1,"last_offset":-1}"#,
    )
    .unwrap();
    assert!(old.recent.is_empty());
}
