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
