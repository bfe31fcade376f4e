use super::*;

#[test]
fn topic_names_are_checked_before_they_become_paths() {
    for ok in ["audit", "a.b_c-1", &"x".repeat(249)] {
        validate_topic(ok).unwrap();
    }
    for bad in ["", ".", "..", "a/b", "../etc", "a b", &"x".repeat(250), "é"] {
        assert!(validate_topic(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_bare_relative_name_lives_in_the_current_directory() {
    assert_eq!(parent_dir(Path::new("data")), Some(Path::new(".")));
    assert_eq!(parent_dir(Path::new("a/b")), Some(Path::new("a")));
    assert_eq!(parent_dir(Path::new("/")), None);
}

#[test]
fn names_parse() {
    assert_eq!(
        parse_name("00000000000000000005-00000000000000000009.parquet"),
        Some((5, 9))
    );
    assert_eq!(parse_name(".tmp-1-0-1.parquet"), None);
    // A temp file is never listed as what it will become, by name or by extension.
    let tmp = temp_name("00000000000000000005-00000000000000000009.parquet");
    assert!(is_temp_name(&tmp), "{tmp}");
    assert!(
        !tmp.ends_with(".parquet") && parse_name(&tmp).is_none(),
        "{tmp}"
    );
    assert_eq!(parse_name("x.parquet"), None);
}
