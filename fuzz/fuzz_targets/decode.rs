//! Any bytes, any format: the decoder must return events or a typed error, never panic, and
//! never lose or alter the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_schemas::{Decoder, DecoderConfig, EventBatchBuilder, SourceFormat};

fuzz_target!(|data: &[u8]| {
    let cfg = DecoderConfig {
        max_record_bytes: 1 << 20,
        max_decompressed_bytes: 1 << 22,
        max_events_per_record: 1000,
    };
    let formats = std::iter::once(None).chain(SourceFormat::ALL.iter().copied().map(Some));
    for pinned in formats {
        let decoder = Decoder::new(cfg.clone(), pinned);
        let mut builder = EventBatchBuilder::with_capacity(4);
        match decoder.decode_into(data, 7, &mut builder) {
            Ok(n) => {
                assert!(n >= 1, "a decoded record has at least one event");
                assert_eq!(builder.len(), n);
                let batch = builder.finish().expect("canonical batch");
                assert_eq!(batch.num_rows(), n);
            }
            Err(e) => {
                assert!(builder.is_empty(), "failed records append nothing");
                assert_eq!(e.raw, data, "errors carry the input exactly");
                assert!(!e.to_string().is_empty());
                if let Some(f) = pinned {
                    // A pinned decoder never reports another format.
                    assert!(e.format.is_none() || e.format == Some(f));
                }
            }
        }
    }
});
