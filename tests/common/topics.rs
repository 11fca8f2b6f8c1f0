//! Kafka as a test sees it, through a plain rdkafka client apart from the pipeline's: how far
//! a consumer group has committed against the end of a topic, and every message of a topic.

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const ASK: Duration = Duration::from_secs(30);

fn consumer(brokers: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap()
}

/// One partition's committed offset (0 when the group has committed none) and end offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionProgress {
    pub partition: i32,
    pub committed: i64,
    pub end: i64,
}

/// A consumer group's committed offsets on one topic, read without joining the group.
pub struct GroupProgress {
    consumer: BaseConsumer,
    topic: String,
}

impl GroupProgress {
    pub fn new(brokers: &str, topic: &str, group: &str) -> Self {
        Self {
            consumer: consumer(brokers, group),
            topic: topic.to_string(),
        }
    }

    pub fn try_partitions(&self) -> Result<Vec<PartitionProgress>, KafkaError> {
        let md = self.consumer.fetch_metadata(Some(&self.topic), ASK)?;
        let mut tpl = TopicPartitionList::new();
        for p in md.topics()[0].partitions() {
            tpl.add_partition(&self.topic, p.id());
        }
        let committed = self.consumer.committed_offsets(tpl, ASK)?;
        let mut out = Vec::new();
        for e in committed.elements() {
            let (_, end) = self
                .consumer
                .fetch_watermarks(&self.topic, e.partition(), ASK)?;
            out.push(PartitionProgress {
                partition: e.partition(),
                committed: match e.offset() {
                    Offset::Offset(o) => o,
                    _ => 0,
                },
                end,
            });
        }
        Ok(out)
    }

    /// Per partition; a busy broker on a shared machine is asked again for up to 2 minutes.
    pub fn partitions(&self) -> Vec<PartitionProgress> {
        let started = Instant::now();
        loop {
            match self.try_partitions() {
                Ok(p) => return p,
                Err(e) if started.elapsed() < Duration::from_secs(120) => {
                    eprintln!("broker slow to answer ({e}); asking again");
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(e) => panic!("the broker did not answer for 2 minutes: {e}"),
            }
        }
    }

    /// The end offsets of any topic summed over its partitions: how many messages it ever held.
    pub fn end_of(&self, topic: &str) -> i64 {
        let md = self.consumer.fetch_metadata(Some(topic), ASK).unwrap();
        md.topics()[0]
            .partitions()
            .iter()
            .map(|p| {
                self.consumer
                    .fetch_watermarks(topic, p.id(), ASK)
                    .unwrap()
                    .1
            })
            .sum()
    }

    /// (committed, end) summed over the partitions.
    pub fn sum(&self) -> (i64, i64) {
        self.partitions()
            .iter()
            .fold((0, 0), |(c, e), p| (c + p.committed, e + p.end))
    }
}

/// One message as it is on the topic.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: HashMap<String, String>,
}

/// Every message of a topic: (partition, offset) → message.
pub fn read_all(brokers: &str, topic: &str) -> HashMap<(i32, i64), Delivered> {
    let c = consumer(brokers, "profile-sync-test-reader");
    let md = c.fetch_metadata(Some(topic), ASK).unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in md.topics()[0].partitions() {
        let (low, high) = c.fetch_watermarks(topic, p.id(), ASK).unwrap();
        if high > low {
            tpl.add_partition_offset(topic, p.id(), Offset::Offset(low))
                .unwrap();
            ends.insert(p.id(), high);
        }
    }
    let mut out = HashMap::new();
    if ends.is_empty() {
        return out;
    }
    c.assign(&tpl).unwrap();
    let started = Instant::now();
    while !ends.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "reading {topic} timed out"
        );
        let m = match c.poll(Duration::from_secs(1)) {
            None => continue,
            Some(Ok(m)) => m,
            // librdkafka reports lost connections (a slow broker) here and reconnects.
            Some(Err(e)) => {
                eprintln!("reading {topic}: {e} (retrying)");
                continue;
            }
        };
        if ends
            .get(&m.partition())
            .is_some_and(|e| m.offset() + 1 >= *e)
        {
            ends.remove(&m.partition());
        }
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|x| {
                        (
                            x.key.to_string(),
                            String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.insert(
            (m.partition(), m.offset()),
            Delivered {
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().unwrap_or_default().to_vec(),
                headers,
            },
        );
    }
    out
}
