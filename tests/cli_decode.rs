//! `vigil decode`, `vigil schema` and `vigil config` as a platform team runs them: the real
//! binary on real files, checking stdout, stderr and the exit code.

use std::io::Write;
use std::path::Path;

use crate::support::*;
use serde_json::Value;

fn events(out: &Ran) -> Vec<Value> {
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn decodes_a_real_sample_file_to_canonical_json_lines() {
    let out = vigil(&[
        "decode",
        data_path("opa/opa_decision_logs.jsonl").to_str().unwrap(),
    ]);
    assert!(out.ok(), "{}", out.stderr);
    let ev = events(&out);
    assert_eq!(ev.len(), 3);
    assert_eq!(ev[1]["decision"], "deny");
    assert_eq!(ev[1]["caller_ip"], "10.244.2.10");
    assert_eq!(ev[1]["callee_port"], 14001);
    assert_eq!(ev[1]["resource"], "/books-bought");
    assert_eq!(ev[1]["event_time"], "2021-05-04T01:21:18.197180800Z");
    assert!(ev[1].get("raw").is_none(), "raw only with --raw");
    assert!(
        out.stderr
            .contains("3 records: 3 events decoded, 0 records failed")
    );
}

#[test]
fn bad_records_go_to_stderr_with_line_numbers_and_exit_1() {
    let input = b"{\"decision_id\":\"a\",\"result\":true}\n\nnot json\n{\"decision_id\":7}\n{\"decision_id\":\"b\",\"result\":false}\n";
    let out = run_with_input(vigil_command().args(["decode", "-"]), input);
    assert_eq!(out.code, 1);
    let ev = events(&out);
    assert_eq!(
        ev.iter()
            .map(|e| e["event_id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    let err = out.stderr;
    assert!(
        err.contains("line 3: invalid JSON at line 1 column 2"),
        "{err}"
    );
    assert!(
        err.contains("line 4: opa: at /decision_id: expected string, found number"),
        "{err}"
    );
    assert!(
        err.contains("4 records: 2 events decoded, 2 records failed"),
        "{err}"
    );
}

#[test]
fn pinned_format_and_raw_output() {
    let out = vigil(&[
        "decode",
        "--format",
        "hubble",
        "--raw",
        data_path("hubble/hubble_flows.jsonl").to_str().unwrap(),
    ]);
    assert!(out.ok(), "{}", out.stderr);
    let ev = events(&out);
    let line1 = data_text("hubble/hubble_flows.jsonl");
    assert_eq!(
        ev[0]["raw"].as_str().unwrap(),
        line1.lines().next().unwrap()
    );
    let out = vigil(&[
        "decode",
        "--format",
        "envoy",
        data_path("hubble/hubble_flows.jsonl").to_str().unwrap(),
    ]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("line 1: envoy: at /response_code: required field is missing")
    );
    let out = run_with_input(
        vigil_command().args(["decode", "--format", "nope", "-"]),
        b"",
    );
    assert_eq!(out.code, 2, "usage errors are not decode failures");
}

#[test]
fn gzipped_opa_upload_is_one_record_of_several_events() {
    let body = format!(
        "[{}]",
        data_text("opa/opa_decision_logs.jsonl")
            .trim()
            .replace('\n', ",")
    );
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body.as_bytes()).unwrap();
    let out = run_with_input(vigil_command().args(["decode"]), &gz.finish().unwrap());
    assert!(out.ok(), "{}", out.stderr);
    let ev = events(&out);
    assert_eq!(
        ev.iter()
            .map(|e| e["record_index"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert!(out.stderr.contains("1 records: 3 events decoded"));
}

#[test]
fn oversized_lines_are_reported_not_buffered() {
    let mut input = b"{\"decision_id\":\"a\",\"result\":true}\n".to_vec();
    input.extend(std::iter::repeat_n(b'x', 2000));
    input.extend_from_slice(b"\n{\"decision_id\":\"b\",\"result\":true}\n");
    let out = run_with_input(vigil_command().args(["decode", "-"]), &input);
    // Through the environment, as the configuration reference documents.
    let out2 = run_with_input(
        vigil_command()
            .args(["decode", "-"])
            .env("VIGIL_DECODE__MAX_RECORD_BYTES", "1000"),
        &input,
    );
    assert_eq!(out.code, 1, "not JSON at the default limit");
    assert_eq!(out2.code, 1);
    assert_eq!(events(&out2).len(), 2);
    assert!(
        out2.stderr
            .contains("line 2: record is 2000 bytes, over the limit of 1000 bytes"),
        "{}",
        out2.stderr
    );
}

#[test]
fn config_file_errors_are_clear() {
    let dir = std::env::temp_dir().join(format!("vigil-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[decode]\nmax_records_bytes = 1\n").unwrap();
    let out = vigil(&["--config", bad.to_str().unwrap(), "config"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("max_records_bytes"), "{}", out.stderr);
    let out = vigil(&[
        "--config",
        dir.join("missing.toml").to_str().unwrap(),
        "config",
    ]);
    assert!(out.stderr.contains("does not exist"), "{}", out.stderr);
    let out = vigil(&["config"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("max_record_bytes = 4194304"));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn the_schema_reference_in_docs_is_generated_from_the_code() {
    let out = vigil(&["schema"]);
    assert!(out.ok());
    let table = String::from_utf8(out.stdout).unwrap();
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/event-schema.md"))
            .unwrap();
    assert!(
        doc.ends_with(&table),
        "docs/event-schema.md is stale: regenerate it with `vigil schema`"
    );
    let out = vigil(&["schema", "--json"]);
    let cols: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cols[0]["name"], "event_time");
    assert_eq!(cols.last().unwrap()["name"], "raw");
}

#[test]
fn native_json_schema_accepts_what_the_decoder_accepts() {
    // The JSON Schema file is what platform teams validate against; keep it honest about the
    // required fields and the enums the decoder enforces.
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/native-event.schema.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(required, ["schema", "time", "kind", "decision"]);
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    let names = |all: &[&str]| -> Vec<String> { all.iter().map(|s| s.to_string()).collect() };
    let kinds: Vec<&str> = vigil_schemas::Kind::ALL
        .iter()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(
        strings(&schema["properties"]["kind"]["enum"]),
        names(&kinds)
    );
    let decisions: Vec<&str> = vigil_schemas::Decision::ALL
        .iter()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(
        strings(&schema["properties"]["decision"]["enum"]),
        names(&decisions)
    );
    assert_eq!(
        schema["properties"]["schema"]["const"],
        vigil_schemas::NATIVE_SCHEMA_V1
    );
    // Its example decodes.
    let example = schema["examples"][0].to_string();
    let out = run_with_input(vigil_command().args(["decode", "-"]), example.as_bytes());
    assert!(out.ok(), "{}", out.stderr);
    assert_eq!(events(&out)[0]["source_format"], "native");
}
