//! `verify --decoded`: every record's bytes decoded again and compared with the stored event
//! columns, which the hashes do not cover.

use std::fs::File;
use std::path::Path;

use arrow::array::{Array, AsArray, BinaryArray};
use arrow::datatypes::UInt32Type;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use vigil_schemas::{Decoder, DecoderConfig, EventBatchBuilder, SourceFormat, canonical_schema};

use super::stored_value;
use crate::error::StoreError;

/// Decode every record's bytes again and compare the result with the stored event columns
/// (which the leaves do not cover: they are derived from the bytes). The format is pinned to
/// the row's `source_format`; rows the decoder rejected must be rejected again.
pub(super) fn redecode_file(
    path: &Path,
    config: &DecoderConfig,
) -> Result<Result<(), String>, StoreError> {
    let file = File::open(path).map_err(StoreError::io(path))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
    let canonical = canonical_schema();
    let names: Vec<&str> = canonical
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .chain(["kafka_value", "kafka_tombstone"])
        .collect();
    let mask = ProjectionMask::columns(builder.parquet_schema(), names.iter().copied());
    let mut stored = Vec::new();
    for b in builder.with_projection(mask).build()? {
        stored.push(b.map_err(StoreError::Arrow)?);
    }
    let Some(schema) = stored.first().map(|b| b.schema()) else {
        return Ok(Ok(()));
    };
    let all = arrow::compute::concat_batches(&schema, &stored).map_err(StoreError::Arrow)?;
    let col = |name: &str| {
        all.column_by_name(name)
            .cloned()
            .ok_or_else(|| StoreError::corrupt(path, format!("no column {name}")))
    };
    let (formats, idx, times) = (
        col("source_format")?,
        col("record_index")?,
        col("event_time")?,
    );
    let (values, tomb, raws) = (col("kafka_value")?, col("kafka_tombstone")?, col("raw")?);
    let formats = formats.as_string::<i32>();
    let idx = idx.as_primitive::<UInt32Type>();
    let times = times.as_primitive::<arrow::datatypes::TimestampNanosecondType>();
    let (values, raws): (&BinaryArray, &BinaryArray) = (values.as_binary(), raws.as_binary());
    let tomb = tomb.as_boolean();
    let mut expected = EventBatchBuilder::with_capacity(all.num_rows());
    for r in 0..all.num_rows() {
        if idx.value(r) != 0 {
            continue;
        }
        // What the decoder was given: a tombstone decoded as empty.
        let value: &[u8] = stored_value(tomb, values, raws, r).unwrap_or_default();
        // The stored time stands in where the original fell back to the receive time.
        let fallback = times.value(r);
        let pinned = if formats.is_valid(r) {
            match formats.value(r).parse::<SourceFormat>() {
                Ok(f) => Some(f),
                Err(_) => return Ok(Err(format!("row {r}: unknown source_format"))),
            }
        } else {
            None
        };
        let decoder = Decoder::new(config.clone(), pinned);
        let decoded = decoder.decode_with(value, |e| expected.append(e, fallback));
        match (decoded, pinned) {
            (Ok(_), Some(_)) => {}
            (Err(_), None) => expected.append_rejected(value, fallback),
            (Ok(_), None) => {
                return Ok(Err(format!(
                    "row {r}: stored as rejected, but its bytes decode"
                )));
            }
            (Err(e), Some(_)) => {
                return Ok(Err(format!(
                    "row {r}: its bytes no longer decode as its source_format: {e}"
                )));
            }
        }
    }
    let expected = expected.finish().map_err(StoreError::Arrow)?;
    if expected.num_rows() != all.num_rows() {
        return Ok(Err(format!(
            "the records decode to {} events, the file holds {} rows",
            expected.num_rows(),
            all.num_rows()
        )));
    }
    for (i, field) in canonical.fields().iter().enumerate() {
        let (want, got) = (expected.column(i), col(field.name())?);
        if want.to_data() != got.to_data() {
            let row = (0..all.num_rows())
                .find(|&r| want.slice(r, 1).to_data() != got.slice(r, 1).to_data())
                .unwrap_or(0);
            return Ok(Err(format!(
                "row {row}: decoded column {} differs from what its bytes decode to",
                field.name()
            )));
        }
    }
    Ok(Ok(()))
}
