//! Hostile input: every case is a clear, typed error that carries the record's bytes, and no
//! panic, stack overflow or unbounded allocation.

use std::io::Write;

use vigil_schemas::{
    DecodeError, DecodeErrorKind, Decoder, DecoderConfig, EventBatchBuilder, SourceFormat,
};

fn err(raw: &[u8]) -> DecodeError {
    err_with(&Decoder::default(), raw)
}

fn err_with(d: &Decoder, raw: &[u8]) -> DecodeError {
    let mut b = EventBatchBuilder::with_capacity(1);
    let e = d.decode_into(raw, 0, &mut b).expect_err("must not decode");
    assert!(b.is_empty(), "a failed record appends nothing");
    assert_eq!(e.raw, raw, "the error carries the record's bytes exactly");
    e
}

const OPA_OK: &str = r#"{"decision_id":"d","path":"p","result":true,"input":{}}"#;

#[test]
fn invalid_json_names_line_and_column() {
    let e = err(b"{\"decision_id\": \"d\",\n  \"result\": tru }");
    match &e.kind {
        DecodeErrorKind::Syntax { line, column, .. } => assert_eq!((*line, *column), (2, 16)),
        k => panic!("{k:?}"),
    }
    assert!(
        e.to_string()
            .starts_with("invalid JSON at line 2 column 16: expected ident"),
        "{e}"
    );
    assert_eq!(err(b"{\"a\":1} trailing").kind_name(), "syntax");
    assert_eq!(err(b"{\"a\":").kind_name(), "syntax");
}

#[test]
fn invalid_utf8_names_the_offset() {
    let mut raw = br#"{"decision_id":"caf"#.to_vec();
    raw.extend_from_slice(&[0xc3, 0x28]);
    raw.extend_from_slice(br#"","result":true}"#);
    let e = err(&raw);
    assert_eq!(e.kind, DecodeErrorKind::InvalidUtf8 { offset: 19 });
    assert_eq!(e.to_string(), "invalid UTF-8 at byte offset 19");
}

#[test]
fn empty_and_blank_records() {
    assert_eq!(err(b"").kind, DecodeErrorKind::Empty);
    assert_eq!(err(b" \n\t ").kind, DecodeErrorKind::Empty);
    assert_eq!(err(b"[]").kind, DecodeErrorKind::EmptyArray);
}

#[test]
fn not_objects() {
    for (raw, found) in [
        ("42", "number"),
        ("\"x\"", "string"),
        ("null", "null"),
        ("true", "boolean"),
    ] {
        let e = err(raw.as_bytes());
        assert_eq!(
            e.to_string(),
            format!("at /: expected a JSON object, found {found}"),
            "{raw}"
        );
    }
    let e = err(format!("[{OPA_OK}, 5]").as_bytes());
    assert_eq!(e.to_string(), "at /1: expected a JSON object, found number");
    assert_eq!(
        err(b"[[{}]]").to_string(),
        "at /0: expected a JSON object, found array"
    );
}

#[test]
fn ten_megabyte_record_over_the_limit_is_refused_before_parsing() {
    let big = format!(
        r#"{{"decision_id":"d","result":true,"input":{{"blob":"{}"}}}}"#,
        "a".repeat(10 << 20)
    );
    let e = err(big.as_bytes());
    assert_eq!(
        e.kind,
        DecodeErrorKind::TooLarge {
            len_bytes: big.len(),
            max_bytes: DecoderConfig::DEFAULT_MAX_RECORD_BYTES
        }
    );
}

#[test]
fn ten_megabyte_record_within_a_raised_limit_decodes() {
    let big = format!(
        r#"{{"decision_id":"d","result":true,"input":{{"blob":"{}"}}}}"#,
        "a".repeat(10 << 20)
    );
    let cfg = DecoderConfig {
        max_record_bytes: 16 << 20,
        ..DecoderConfig::default()
    };
    let mut b = EventBatchBuilder::with_capacity(1);
    assert_eq!(
        Decoder::new(cfg, None)
            .decode_into(big.as_bytes(), 0, &mut b)
            .unwrap(),
        1
    );
    assert_eq!(b.raw_bytes(), big.len());
}

#[test]
fn nesting_ten_thousand_deep_is_handled_without_recursion() {
    // Decoders parse only a few fixed levels into structs; everything below is skipped by
    // serde_json's iterative skipper, so depth costs no stack. Each case has an exact outcome.
    let depth = 10_000;
    let arr = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    let obj = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));

    assert_eq!(
        err(arr.as_bytes()).to_string(),
        "at /0: expected a JSON object, found array"
    );
    assert_eq!(err(obj.as_bytes()).kind, DecodeErrorKind::UnknownFormat);

    // Deep values inside an event are tolerated like any unknown content, and kept raw.
    for deep in [&arr, &obj] {
        let raw = format!(
            r#"{{"decision_id":"d","result":false,"input":{{"attributes":{{"x":{deep}}},"y":{deep}}}}}"#
        );
        let mut b = EventBatchBuilder::with_capacity(1);
        assert_eq!(
            Decoder::default()
                .decode_into(raw.as_bytes(), 0, &mut b)
                .unwrap(),
            1
        );
        assert_eq!(b.raw_bytes(), raw.len());
    }
    // Where a decoder expects an object and finds deep nesting, the type error says so.
    let raw = format!(r#"{{"decision_id":"d","input":{{"attributes":{arr}}}}}"#);
    assert_eq!(
        err(raw.as_bytes()).to_string(),
        "opa: at /input/attributes: expected object, found array"
    );
}

#[test]
fn wrong_types_name_the_path_and_both_types() {
    let cases = [
        (
            r#"{"decision_id":5,"result":true}"#,
            "opa: at /decision_id: expected string, found number",
        ),
        (
            r#"{"decision_id":"d","timestamp":"yesterday","result":true}"#,
            "opa: at /timestamp: expected RFC 3339 timestamp, found string \"yesterday\"",
        ),
        (
            r#"{"decision_id":"d","result":{"allowed":"yes"}}"#,
            "opa: at /result/allowed: expected boolean, found string",
        ),
        (
            r#"{"decision_id":"d","input":{"attributes":[]}}"#,
            "opa: at /input/attributes: expected object, found array",
        ),
        (
            r#"{"flow":{"verdict":"DROPPED","IP":"10.0.0.1"}}"#,
            "hubble: at /flow/IP: expected object, found string",
        ),
        (
            r#"{"flow":{"verdict":"DROPPED","l4":{"TCP":{"destination_port":70000}}}}"#,
            "hubble: at /flow/l4/TCP/destination_port: expected integer in 0..=65535, found number 70000",
        ),
        (
            r#"{"kind":"Event","verb":"get","user":"alice"}"#,
            "k8s_audit: at /user: expected object, found string",
        ),
        (
            r#"{"kind":"Event","verb":"get","sourceIPs":"10.0.0.1"}"#,
            "k8s_audit: at /sourceIPs: expected array, found string",
        ),
        (
            r#"{"start_time":"2024-01-01T00:00:00Z","response_code":"OK"}"#,
            "envoy: at /response_code: expected integer, found string \"OK\"",
        ),
        (
            r#"{"protoPayload":{"serviceName":"k8s.io","authorizationInfo":[{"granted":"no"}]}}"#,
            "gke_audit: at /protoPayload/authorizationInfo/0/granted: expected boolean, found string",
        ),
    ];
    for (raw, msg) in cases {
        let e = err(raw.as_bytes());
        assert_eq!(e.to_string(), msg, "{raw}");
        assert_eq!(e.kind_name(), "shape");
    }
}

#[test]
fn duplicate_keys_are_refused() {
    // Two parsers reading different values of one key is how audit logs get forged.
    let e = err(br#"{"decision_id":"d","result":true,"result":false}"#);
    assert!(e.to_string().contains("duplicate field `result`"), "{e}");
}

#[test]
fn unknown_formats_say_what_was_expected() {
    let e = err(br#"{"hello":"world"}"#);
    assert_eq!(e.kind, DecodeErrorKind::UnknownFormat);
    assert_eq!(e.format, None);
    assert!(e.to_string().contains("decision_id"), "{e}");
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// A gzip stream of `head`, then `copies` MiB of spaces, then `tail`, made without compressing
/// the spaces more than twice: after a sync flush the deflate output of one more MiB of spaces
/// is the same bytes every time (the window holds only spaces), so it is repeated; the CRC of
/// the whole is combined from the parts. (Compressing 1 GiB of one byte at the best level took
/// 90 s in a debug build.)
fn gzip_of_spaces(head: &[u8], copies: usize, tail: &[u8]) -> (Vec<u8>, u64) {
    use flate2::{Compress, Compression, Crc, FlushCompress};
    fn deflate(c: &mut Compress, data: &[u8], flush: FlushCompress) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() / 64 + 4096);
        let start = c.total_in();
        loop {
            let done = (c.total_in() - start) as usize;
            out.reserve(4096);
            let status = c.compress_vec(&data[done..], &mut out, flush).unwrap();
            let left = data.len() - (c.total_in() - start) as usize;
            // Done when all input is in and the flush left spare room (nothing more pending).
            if left == 0 && (out.len() < out.capacity() || status == flate2::Status::StreamEnd) {
                return out;
            }
        }
    }
    let spaces = vec![b' '; 1 << 20];
    let mut c = Compress::new(Compression::best(), false);
    // The gzip header: deflate, no name, no time, unknown OS.
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 0xff];
    out.extend(deflate(&mut c, head, FlushCompress::Sync));
    out.extend(deflate(&mut c, &spaces, FlushCompress::Sync));
    let one_more = deflate(&mut c, &spaces, FlushCompress::Sync);
    // A third MiB gives the same bytes: the repeat is stable (and it is the third copy).
    assert_eq!(deflate(&mut c, &spaces, FlushCompress::Sync), one_more);
    out.extend(&one_more);
    out.extend(&one_more);
    for _ in 3..copies {
        out.extend(&one_more);
    }
    out.extend(deflate(&mut c, tail, FlushCompress::Finish));
    let (mut crc, mut mib) = (Crc::new(), Crc::new());
    mib.update(&spaces);
    crc.update(head);
    for _ in 0..copies {
        crc.combine(&mib);
    }
    let mut t = Crc::new();
    t.update(tail);
    crc.combine(&t);
    let len = (head.len() + copies * spaces.len() + tail.len()) as u64;
    out.extend(crc.sum().to_le_bytes());
    out.extend((len as u32).to_le_bytes());
    (out, len)
}

#[test]
fn gzip_bomb_in_an_opa_upload_stops_at_the_limit() {
    // A valid upload followed by 1 GiB of spaces: about 1 MiB on the wire.
    let (bomb, len) = gzip_of_spaces(format!("[{OPA_OK}").as_bytes(), 1024, b"]");
    assert!(
        bomb.len() < DecoderConfig::DEFAULT_MAX_RECORD_BYTES,
        "the bomb itself is small"
    );
    // It is what it claims: a valid gzip of 1 GiB and some (checked to its CRC and length).
    let mut whole = flate2::read::GzDecoder::new(&bomb[..]);
    assert_eq!(
        std::io::copy(&mut whole, &mut std::io::sink()).unwrap(),
        len
    );
    let e = err(&bomb);
    assert_eq!(
        e.kind,
        DecodeErrorKind::DecompressedTooLarge {
            max_bytes: DecoderConfig::DEFAULT_MAX_DECOMPRESSED_BYTES
        }
    );
}

#[test]
fn corrupt_and_truncated_gzip() {
    let good = gzip(format!("[{OPA_OK}]").as_bytes());
    let e = err(&good[..good.len() - 6]);
    assert_eq!(e.kind_name(), "gzip", "{e}");
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0xff;
    let e = err(&flipped);
    assert!(
        matches!(e.kind_name(), "gzip" | "syntax" | "invalid_utf8"),
        "{e}"
    );
    // And the intact one decodes.
    let mut b = EventBatchBuilder::with_capacity(1);
    assert_eq!(Decoder::default().decode_into(&good, 0, &mut b).unwrap(), 1);
}

#[test]
fn arrays_are_all_or_nothing_with_the_failing_index() {
    let raw = format!(r#"[{OPA_OK},{OPA_OK},{{"decision_id":7}}]"#);
    let e = err(raw.as_bytes());
    assert_eq!(
        e.to_string(),
        "opa: at /2/decision_id: expected string, found number"
    );
}

#[test]
fn arrays_over_the_event_limit() {
    let cfg = DecoderConfig {
        max_events_per_record: 2,
        ..DecoderConfig::default()
    };
    let raw = format!("[{OPA_OK},{OPA_OK},{OPA_OK}]");
    let e = err_with(&Decoder::new(cfg, None), raw.as_bytes());
    assert_eq!(e.kind, DecodeErrorKind::TooManyEvents { len: 3, max: 2 });
}

#[test]
fn escaped_strings_and_unicode_survive() {
    let raw =
        r#"{"decision_id":"d\u00e9\"q","result":true,"input":{"path":"/caf\u00e9/\ud83d\ude00"}}"#;
    let mut got = None;
    Decoder::default()
        .decode_with(raw.as_bytes(), |e| {
            got = Some((
                e.event_id.clone().unwrap().into_owned(),
                e.resource.clone().unwrap().into_owned(),
            ))
        })
        .unwrap();
    assert_eq!(got.unwrap(), ("dé\"q".to_owned(), "/café/😀".to_owned()));
    // A lone surrogate escape is invalid JSON text.
    assert_eq!(
        err(br#"{"decision_id":"\ud800","result":true}"#).kind_name(),
        "syntax"
    );
}

#[test]
fn pinned_format_errors_name_the_format() {
    let d = Decoder::new(DecoderConfig::default(), Some(SourceFormat::Envoy));
    assert_eq!(err_with(&d, b"").format, Some(SourceFormat::Envoy));
    assert_eq!(
        err_with(&d, br#"{"x":1}"#).to_string(),
        "envoy: at /response_code: required field is missing"
    );
}
