//! The reference of the latency figures: a bare consumer of the same topic on the same
//! broker, in the same run.

use std::time::Duration;

/// A consumer (its own group) reading `topic` from the start until stopped, noting for each
/// record when it arrived (Unix ms) and how long after its Kafka timestamp (the producer's
/// CreateTime), by partition and offset.
pub(crate) struct BareConsumer {
    pub(crate) stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub(crate) thread: std::thread::JoinHandle<Arrivals>,
}

/// (partition, offset) → (arrived at, ms after its Kafka timestamp).
pub(crate) type Arrivals = std::collections::HashMap<(i32, i64), (i64, f64)>;

impl BareConsumer {
    pub(crate) fn stop(self) -> Arrivals {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("the reference consumer")
    }
}

pub(crate) fn bare_consumer_latency(brokers: &str, topic: &str) -> BareConsumer {
    use rdkafka::Message;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "g-reference")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("the reference consumer");
    c.subscribe(&[topic]).expect("subscribe");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let thread = std::thread::spawn(move || {
        let mut out = Arrivals::new();
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(100))
                && let Some(ts) = m.timestamp().to_millis()
            {
                let now = chrono::Utc::now().timestamp_millis();
                out.insert((m.partition(), m.offset()), (now, (now - ts) as f64));
            }
        }
        out
    });
    BareConsumer { stop, thread }
}
