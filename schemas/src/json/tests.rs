use super::*;
use serde::Deserialize;

#[derive(Deserialize, Default, Debug)]
#[serde(default)]
struct Probe<'a> {
    #[serde(borrow)]
    s: Json<'a>,
    #[serde(borrow)]
    n: Json<'a>,
    #[serde(borrow)]
    o: Json<'a, Inner<'a>>,
    #[serde(borrow)]
    l: List<Json<'a>>,
}
#[derive(Deserialize, Default, Debug, PartialEq)]
#[serde(default)]
struct Inner<'a> {
    #[serde(borrow)]
    x: Json<'a>,
}

#[test]
fn strings_borrow_unless_escaped() {
    let p: Probe = serde_json::from_str(r#"{"s":"plain","n":"esc\"aped"}"#).unwrap();
    assert!(matches!(p.s, Json::Str(Cow::Borrowed("plain"))));
    assert!(matches!(&p.n, Json::Str(Cow::Owned(s)) if s == "esc\"aped"));
}

#[test]
fn wrong_types_are_kept_as_types_and_reported_with_paths() {
    let p: Probe = serde_json::from_str(r#"{"s":5,"o":[1,2],"l":{"a":1}}"#).unwrap();
    assert_eq!(p.s.json_type(), Some(JsonType::Number));
    let e = p.s.str_at("/s").unwrap_err();
    assert_eq!(e.to_string(), "at /s: expected string, found number");
    assert_eq!(p.o.obj_at("/o").unwrap_err().found, "array");
    assert_eq!(p.l.items_at("/l").unwrap_err().found, "object");
    assert_eq!(p.n, Json::Absent);
    assert_eq!(p.n.str_at("/n"), Ok(None));
}

#[test]
fn nested_objects_and_lists_parse() {
    let p: Probe = serde_json::from_str(r#"{"o":{"x":"y","z":[{}]},"l":["a",1,"b"]}"#).unwrap();
    assert_eq!(p.o.obj().unwrap().x.str(), Some("y"));
    let items = p.l.items();
    assert_eq!(items.len(), 3);
    assert_eq!(items[2].str(), Some("b"));
}

#[test]
fn long_lists_keep_a_bounded_prefix_and_count_all() {
    let body: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    let doc = format!(r#"{{"l":[{}]}}"#, body.join(","));
    let p: Probe = serde_json::from_str(&doc).unwrap();
    match p.l {
        List::Items { kept, len } => {
            assert_eq!(kept.len(), List::<Json>::MAX_KEPT);
            assert_eq!(len, 100);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn integers_range_checked_and_protojson_strings_accepted() {
    let p: Probe = serde_json::from_str(r#"{"s":"8080","n":70000}"#).unwrap();
    assert_eq!(p.s.int_in_at("/s", 0, 65535), Ok(Some(8080)));
    let e = p.n.int_in_at("/n", 0, 65535).unwrap_err();
    assert_eq!(
        e.to_string(),
        "at /n: expected integer in 0..=65535, found number 70000"
    );
}

#[test]
fn duplicate_keys_are_rejected() {
    // Duplicate keys are a classic parser-differential trick; serde's derive refuses them.
    let r: Result<Probe, _> = serde_json::from_str(r#"{"s":"a","s":"b"}"#);
    assert!(r.unwrap_err().to_string().contains("duplicate field"));
}
