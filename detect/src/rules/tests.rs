//! The rules' unit tests: the default pack, each kind's keys, key normalisation, …

use super::*;

#[test]
fn the_default_pack_loads_and_passes_its_own_tests() {
    let src = sources(None, true).unwrap();
    let loaded = load(&src, &Defaults::default());
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    // Without an allowlist the declared rules (calls, flows) are off, the learned one on.
    assert_eq!(loaded.rules.len(), DEFAULT_PACK.len() - 3);
    let inactive: Vec<&str> = loaded.inactive.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        inactive,
        [
            "vigil.unexpected_caller.declared",
            "vigil.unexpected_flow.declared",
            "vigil.declared_but_denied"
        ]
    );
    let with_graph = Defaults {
        allowlist: Some(PolicyGraph::default()),
        ..Defaults::default()
    };
    let loaded = load(&src, &with_graph);
    assert_eq!(loaded.inactive[0].0, "vigil.unexpected_caller.learned");
    let results = crate::ruletest::run(&src, &Defaults::default());
    let failed: Vec<_> = results.iter().filter(|r| r.failure.is_some()).collect();
    assert!(failed.is_empty(), "{failed:#?}");
    assert!(results.len() >= DEFAULT_PACK.len());
}

/// A key another kind takes is an error naming the file and its line, not a rule that
/// loads and quietly ignores it; every kind's own keys still load.
#[test]
fn a_key_of_another_kind_is_an_error_at_its_line() {
    let head = "id = \"t.x\"\nversion = 1\ntitle = \"t\"\nseverity = \"low\"\n";
    let threshold = format!(
        "{head}kind = \"threshold\"\nfilter = 'decision == \"deny\"'\n\
             group_by = [\"caller_ip\"]\ncount = 4\nwindow = \"1m\"\n"
    );
    parse("t.toml", &threshold).unwrap();
    let e = parse("t.toml", &format!("{threshold}z = 3.0\n")).unwrap_err();
    assert_eq!((e.file.as_str(), e.line), ("t.toml", 10), "{e}");
    assert!(
        e.message.contains("`z` is not a key of a threshold rule"),
        "{e}"
    );
    // A sequence's filters are `first` and `then`: a `filter` would be ignored.
    let seq = format!(
        "{head}kind = \"sequence\"\ngroup_by = [\"caller_ip\"]\n\
             first = 'decision == \"deny\"'\nfirst_count = 3\n\
             then = 'decision == \"allow\"'\nwindow = \"1m\"\n"
    );
    parse("s.toml", &seq).unwrap();
    let e = parse("s.toml", &format!("{seq}filter = 'kind == \"authz\"'\n")).unwrap_err();
    assert_eq!(e.line, 11, "{e}");
    assert!(
        e.message
            .contains("`filter` is not a key of a sequence rule"),
        "{e}"
    );
}

/// `normalize_keys`: names written differently — case, full-width forms, a Cyrillic
/// look-alike letter — are one group (and without it, four); the key shown is the first.
#[test]
fn normalized_keys_make_look_alike_names_one_group() {
    let rule = |normalize: bool| {
        format!(
                "id = \"t.user\"\nversion = 1\ntitle = \"t\"\nseverity = \"low\"\n\
                 kind = \"threshold\"\nfilter = 'decision == \"deny\"'\n\
                 group_by = [\"caller_principal\"]\ncount = 4\nwindow = \"1m\"\n\
                 normalize_keys = {normalize}\n\
                 [[test]]\nname = \"variants\"\n{}\n{}",
                if normalize {
                    "alerts = 1\nkeys = [[\"alice\"]]"
                } else {
                    "alerts = 0"
                },
                ["alice", "Alice", "\u{ff21}\u{ff2c}\u{ff29}\u{ff23}\u{ff25}", "\u{0430}lice"]
                    .iter()
                    .map(|u| format!(
                        "[[test.event]]\nfields = {{ kind = \"authz\", decision = \"deny\", caller_principal = \"{u}\" }}\n"
                    ))
                    .collect::<String>()
            )
    };
    for normalize in [true, false] {
        let src = vec![Source {
            name: "t.toml".into(),
            text: rule(normalize),
            dir: None,
        }];
        let results = crate::ruletest::run(&src, &Defaults::default());
        let failed: Vec<_> = results.iter().filter(|r| r.failure.is_some()).collect();
        assert!(
            failed.is_empty(),
            "normalize_keys = {normalize}: {failed:#?}"
        );
    }
    use crate::key::normalize;
    assert_eq!(normalize("\u{0430}dmin"), normalize("ADMIN"));
    assert_ne!(normalize("alice"), normalize("alicia"));
}

fn one(text: &str) -> Result<Rule, RuleError> {
    let rf = parse("r.toml", text)?;
    compile(&rf, "r.toml", text, None, &Defaults::default(), None)
}

#[test]
fn problems_name_the_file_line_and_reason() {
    let base = "id = \"x\"\nversion = 1\ntitle = \"t\"\nseverity = \"low\"\n";
    let e = one(&format!(
        "{base}kind = \"threshold\"\ngroup_by = [\"caller_ip\"]\nwindow = \"1m\"\n"
    ))
    .unwrap_err();
    assert_eq!(e.to_string(), "r.toml:5: a threshold rule needs `count`");
    let e = one(&format!("{base}kind = \"threshold\"\ncount = 3\nwindow = \"1m\"\ngroup_by = [\"caller_ip\"]\nfilter = 'decision = \"deny\"'\n")).unwrap_err();
    assert_eq!(e.line, 9);
    assert!(
        e.message
            .contains("filter `decision = \"deny\"`: column 10"),
        "{e}"
    );
    let e = one(&format!("{base}kind = \"thresold\"\n")).unwrap_err();
    assert_eq!(e.line, 5);
    assert!(e.message.contains("unknown variant `thresold`"), "{e}");
    let e = one(&format!("{base}kind = \"threshold\"\ncount = 3\nwindow = \"1 fortnight\"\ngroup_by = [\"caller_ip\"]\n")).unwrap_err();
    assert_eq!(e.line, 7);
    let e = one(&format!(
        "{base}kind = \"threshold\"\ncount = 3\nwindow = \"1m\"\ngroup_by = [\"caller_ipp\"]\n"
    ))
    .unwrap_err();
    assert!(
        e.message.contains("unknown group_by field `caller_ipp`"),
        "{e}"
    );
    let e = one(&format!("{base}kind = \"threshold\"\ncolor = 3\n")).unwrap_err();
    assert!(e.message.contains("unknown field `color`"), "{e}");
    assert_eq!(e.line, 6);
}

#[test]
fn one_bad_rule_never_stops_the_others() {
    let good = DEFAULT_PACK[0].1.to_owned();
    let src = vec![
        Source {
            name: "bad.toml".into(),
            text: "id = ".into(),
            dir: None,
        },
        Source {
            name: "good.toml".into(),
            text: good,
            dir: None,
        },
    ];
    let l = load(&src, &Defaults::default());
    assert_eq!(l.rules.len(), 1);
    assert_eq!(l.errors.len(), 1);
    assert_eq!(l.errors[0].file, "bad.toml");
}
