//! `vigil decode`: what Vigil sees in a file of records, before anything is wired to Kafka.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use arrow::array::{Array, ArrayRef, AsArray, StringArray};
use arrow::datatypes::{Field, Schema};
use arrow::record_batch::RecordBatch;
use vigil_schemas::{Decoder, EventBatchBuilder, SourceFormat};

use crate::config::Config;

/// How the input is split into records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Framing {
    /// Gzip data or a JSON array is one record (an OPA upload); anything else is `lines`.
    Auto,
    /// One record per line (JSON Lines); blank lines are skipped.
    Lines,
    /// The whole input is one record.
    Whole,
}

#[derive(clap::Args)]
pub struct DecodeArgs {
    /// Decode every record as this format instead of detecting it per record:
    /// opa, envoy, hubble, k8s_audit, gke_audit, native.
    #[arg(long, short)]
    format: Option<SourceFormat>,
    /// How to split the input into records.
    #[arg(long, value_enum, default_value_t = Framing::Auto)]
    framing: Framing,
    /// Include each event's raw bytes (as text) in the output.
    #[arg(long)]
    raw: bool,
    /// Input file; `-` or nothing reads standard input.
    input: Option<PathBuf>,
}

/// Events are written in batches of this many, so output streams and memory stays bounded.
const OUTPUT_BATCH_EVENTS: usize = 1024;

pub fn run(cfg: &Config, args: DecodeArgs) -> anyhow::Result<ExitCode> {
    let decoder = Decoder::new(cfg.decode.decoder_config()?, args.format);
    let max_record_bytes = decoder.config().max_record_bytes;
    let mut input: Box<dyn BufRead> = match args.input.as_deref() {
        None => Box::new(BufReader::new(io::stdin().lock())),
        Some(p) if p.as_os_str() == "-" => Box::new(BufReader::new(io::stdin().lock())),
        Some(p) => Box::new(BufReader::new(
            File::open(p).with_context(|| format!("opening {}", p.display()))?,
        )),
    };
    let framing = match args.framing {
        Framing::Auto => {
            let head = input.fill_buf().context("reading input")?;
            let first = head.iter().find(|b| !b.is_ascii_whitespace());
            if head.starts_with(&[0x1f, 0x8b]) || first == Some(&b'[') {
                Framing::Whole
            } else {
                Framing::Lines
            }
        }
        f => f,
    };
    let received_ns = vigil_store::clock::now_ns();

    let stdout = io::stdout().lock();
    let mut out = arrow::json::LineDelimitedWriter::new(io::BufWriter::new(stdout));
    let mut builder = EventBatchBuilder::with_capacity(OUTPUT_BATCH_EVENTS);
    let (mut records, mut events, mut failed) = (0u64, 0u64, 0u64);
    let mut on_record = |line_no: u64, rec: Record| -> anyhow::Result<()> {
        records += 1;
        let result = match rec {
            Record::Bytes(bytes) => decoder.decode_into(&bytes, received_ns, &mut builder),
            Record::TooLong(len) => Err(too_long(&decoder, len)),
        };
        match result {
            Ok(n) => events += n as u64,
            Err(e) => {
                failed += 1;
                eprintln!("line {line_no}: {e}");
            }
        }
        if builder.len() >= OUTPUT_BATCH_EVENTS {
            write_batch(&mut out, builder.finish()?, args.raw)?;
        }
        Ok(())
    };
    match framing {
        Framing::Whole => {
            let mut buf = Vec::new();
            let limit = max_record_bytes as u64 + 1;
            input
                .by_ref()
                .take(limit)
                .read_to_end(&mut buf)
                .context("reading input")?;
            let rec = if buf.len() > max_record_bytes {
                let rest = io::copy(&mut input, &mut io::sink()).context("reading input")?;
                Record::TooLong(buf.len() + rest as usize)
            } else {
                Record::Bytes(buf)
            };
            on_record(1, rec)?;
        }
        Framing::Lines | Framing::Auto => {
            let mut line_no = 0u64;
            while let Some(rec) = next_line(&mut input, max_record_bytes)? {
                line_no += 1;
                if matches!(&rec, Record::Bytes(b) if b.iter().all(u8::is_ascii_whitespace)) {
                    continue;
                }
                on_record(line_no, rec)?;
            }
        }
    }
    if !builder.is_empty() {
        write_batch(&mut out, builder.finish()?, args.raw)?;
    }
    out.finish()?;
    out.into_inner().flush()?;
    eprintln!("{records} records: {events} events decoded, {failed} records failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

enum Record {
    Bytes(Vec<u8>),
    /// A line longer than the record limit: its length; its bytes were read and dropped.
    TooLong(usize),
}

fn too_long(decoder: &Decoder, len: usize) -> vigil_schemas::DecodeError {
    // The decoder produces the same error for an oversized record that it is handed whole;
    // here the record was never buffered, so hand it an empty stand-in and fix the length.
    let max = decoder.config().max_record_bytes;
    vigil_schemas::DecodeError {
        format: decoder.pinned(),
        kind: vigil_schemas::DecodeErrorKind::TooLarge {
            len_bytes: len,
            max_bytes: max,
        },
        raw: Vec::new(),
    }
}

/// The next line, without reading more than `max` bytes of it into memory.
fn next_line<R: BufRead + ?Sized>(input: &mut R, max: usize) -> anyhow::Result<Option<Record>> {
    let mut buf = Vec::new();
    let n = (&mut *input)
        .take(max as u64 + 1)
        .read_until(b'\n', &mut buf)
        .context("reading input")?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    if buf.len() <= max {
        return Ok(Some(Record::Bytes(buf)));
    }
    // Over the limit: count and discard the rest of the line.
    let mut len = buf.len();
    loop {
        let chunk = input.fill_buf().context("reading input")?;
        if chunk.is_empty() {
            break;
        }
        match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => {
                len += i;
                input.consume(i + 1);
                break;
            }
            None => {
                let l = chunk.len();
                len += l;
                input.consume(l);
            }
        }
    }
    Ok(Some(Record::TooLong(len)))
}

fn write_batch<W: Write>(
    out: &mut arrow::json::LineDelimitedWriter<W>,
    batch: RecordBatch,
    raw: bool,
) -> anyhow::Result<()> {
    let idx = vigil_schemas::schema::idx::RAW;
    let schema = batch.schema();
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut cols: Vec<ArrayRef> = batch.columns().to_vec();
    if raw {
        // Show the raw bytes as text (they are JSON); bytes that are not UTF-8 would have
        // failed to decode, so lossy conversion never changes a shown event.
        let bin = cols[idx].as_binary::<i32>();
        let text: StringArray = (0..bin.len())
            .map(|i| Some(String::from_utf8_lossy(bin.value(i))))
            .collect();
        cols[idx] = Arc::new(text);
        fields[idx] = Field::new("raw", arrow::datatypes::DataType::Utf8, false);
    } else {
        cols.remove(idx);
        fields.remove(idx);
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?;
    out.write(&batch)?;
    Ok(())
}
