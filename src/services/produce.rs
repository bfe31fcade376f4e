//! Sending records to Kafka: `produce` and `simulate`.

use std::time::Duration;

use anyhow::Context;

use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};

/// Queue one record, waiting for room while the producer's queue is full.
pub fn send(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    key: Option<&[u8]>,
    payload: &[u8],
) -> anyhow::Result<()> {
    send_to(producer, topic, None, key, payload)
}

/// [`send`] to a given partition (`None`: the partitioner's choice).
pub fn send_to(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    partition: Option<i32>,
    key: Option<&[u8]>,
    payload: &[u8],
) -> anyhow::Result<()> {
    let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).payload(payload);
    if let Some(k) = key {
        rec = rec.key(k);
    }
    if let Some(p) = partition {
        rec = rec.partition(p);
    }
    loop {
        match producer.send(rec) {
            Ok(()) => return Ok(()),
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                back,
            )) => {
                std::thread::sleep(Duration::from_millis(2));
                rec = back;
            }
            Err((e, _)) => return Err(e).context("producing"),
        }
    }
}
