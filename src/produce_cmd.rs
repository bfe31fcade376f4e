//! `vigil produce`: send a file of records to a Kafka topic — one record per line, or the whole
//! file as one record (an OPA upload). For trying Vigil with real samples, and for platform
//! teams replaying their own events.

use std::io::{BufRead, Read};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use rdkafka::ClientConfig;
use rdkafka::producer::{DefaultProducerContext, Producer, ThreadedProducer};

use crate::config::Config;
use crate::services::produce::send;

#[derive(clap::Args)]
pub struct ProduceArgs {
    /// Kafka bootstrap brokers (overrides `kafka.brokers`).
    #[arg(long)]
    brokers: Option<String>,
    /// Topic to produce to.
    #[arg(long)]
    topic: String,
    /// Send the whole input as one record instead of one record per line.
    #[arg(long)]
    whole: bool,
    /// Input file; `-` or nothing reads standard input.
    input: Option<std::path::PathBuf>,
}

pub fn run(cfg: &Config, args: ProduceArgs) -> anyhow::Result<ExitCode> {
    let brokers = args.brokers.unwrap_or_else(|| cfg.kafka.brokers.clone());
    let mut pc = ClientConfig::new();
    pc.set("bootstrap.servers", &brokers).set("linger.ms", "5");
    for (k, v) in &cfg.kafka.properties {
        pc.set(k, v);
    }
    let producer: ThreadedProducer<DefaultProducerContext> =
        pc.create().context("creating the producer")?;
    let mut input: Box<dyn BufRead> = match args.input.as_deref() {
        None => Box::new(std::io::BufReader::new(std::io::stdin())),
        Some(p) if p.as_os_str() == "-" => Box::new(std::io::BufReader::new(std::io::stdin())),
        Some(p) => Box::new(std::io::BufReader::new(
            std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?,
        )),
    };
    let mut records: Vec<Vec<u8>> = Vec::new();
    if args.whole {
        let mut buf = Vec::new();
        input.read_to_end(&mut buf)?;
        records.push(buf);
    } else {
        for line in input.split(b'\n') {
            let line = line?;
            if !line.iter().all(u8::is_ascii_whitespace) {
                records.push(line);
            }
        }
    }
    for r in &records {
        send(&producer, &args.topic, None, r)?;
    }
    producer
        .flush(Duration::from_secs(30))
        .context("delivering the records")?;
    eprintln!("produced {} records to {}", records.len(), args.topic);
    Ok(ExitCode::SUCCESS)
}
