//! Dead letters as a Kafka topic: the original key, value and headers unchanged, plus
//! Kafka Connect style `__connect.errors.*` headers saying where the event came from and why
//! it was rejected. Every send is awaited (acks=all, idempotent producer) before `send`
//! returns, so the source offset is committed only once the dead letter is durable.
//!
//! Headers (all UTF-8 text): `__connect.errors.topic`, `.partition`, `.offset`, `.stage`,
//! `.class.name` (the rejection class), `.exception.message` (the reason: names fields and
//! rules, never values), `.timestamp` (epoch millis), `.position`. Reasons never carry PII.

use super::{DeadLetter, DeadLetterError, DeadLetterSink};
use async_trait::async_trait;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::BTreeMap;
use std::time::Duration;

/// The prefix of the headers this sink adds.
pub const HEADER_PREFIX: &str = "__connect.errors.";

pub struct DeadLetterTopic {
    producer: FutureProducer,
    topic: String,
}

impl DeadLetterTopic {
    pub fn open(
        brokers: &str,
        topic: &str,
        properties: &BTreeMap<String, String>,
    ) -> Result<Self, DeadLetterError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("client.id", "profile-sync-dead-letters")
            .set("message.timeout.ms", "30000");
        for (k, v) in properties {
            config.set(k, v);
        }
        config.set("acks", "all");
        let producer: FutureProducer = config.create().map_err(|e| {
            DeadLetterError(format!(
                "cannot create the dead-letter producer ({e}): check the dead_letter properties"
            ))
        })?;
        Ok(Self {
            producer,
            topic: topic.to_string(),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }
}

/// The original headers followed by the `__connect.errors.*` ones.
pub fn headers_of(letter: &DeadLetter) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new_with_capacity(letter.meta.headers.len() + 8);
    for (key, value) in &letter.meta.headers {
        headers = headers.insert(Header {
            key,
            value: value.as_deref(),
        });
    }
    let mut add = |name: &str, value: String| {
        let key = format!("{HEADER_PREFIX}{name}");
        headers = std::mem::replace(&mut headers, OwnedHeaders::new()).insert(Header {
            key: &key,
            value: Some(value.as_bytes()),
        });
    };
    if let Some((topic, partition, offset)) = &letter.meta.origin {
        add("topic", topic.clone());
        add("partition", partition.to_string());
        add("offset", offset.to_string());
    }
    add("position", letter.position.clone());
    add("stage", letter.stage.as_str().to_string());
    add("class.name", letter.class.to_string());
    add("exception.message", letter.reason.clone());
    add("timestamp", letter.at.timestamp_millis().to_string());
    headers
}

#[async_trait]
impl DeadLetterSink for DeadLetterTopic {
    /// Retries a broker outage with backoff until every letter is acknowledged (the worker
    /// neither exits nor commits past it; a shutdown deadline still ends it). A partly failed
    /// attempt is sent again whole: the dead-letter topic is at-least-once too.
    async fn send(&self, letters: Vec<DeadLetter>) -> Result<(), DeadLetterError> {
        let backoff = crate::retry::Backoff::default();
        let mut attempt = 0;
        loop {
            match self.send_once(&letters).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    attempt += 1;
                    let delay = backoff.delay(attempt);
                    tracing::warn!(error = %e, attempt, delay_ms = delay.as_millis() as u64, "dead-letter produce failed; retrying");
                    metrics::counter!("profile_sync_dead_letter_retries_total").increment(1);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

impl DeadLetterTopic {
    async fn send_once(&self, letters: &[DeadLetter]) -> Result<(), DeadLetterError> {
        let sends = letters.iter().map(|letter| {
            let mut record = FutureRecord::to(&self.topic)
                .payload(&letter.payload)
                .headers(headers_of(letter));
            if let Some(key) = &letter.key {
                record = record.key(key);
            }
            self.producer.send(record, Duration::from_secs(30))
        });
        for result in futures::future::join_all(sends).await {
            if let Err((e, _)) = result {
                return Err(DeadLetterError(format!(
                    "cannot write to dead-letter topic {} ({e}); the source offset is not committed",
                    self.topic
                )));
            }
        }
        Ok(())
    }
}
