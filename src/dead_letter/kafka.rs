//! Dead letters as a Kafka topic: the original key and headers, the value sealed (the
//! `profile-sync.sealing` header says under which key; ARCHITECTURE.md has the format), plus
//! Kafka Connect style `__connect.errors.*` headers saying where the event came from and why
//! it was rejected. A value too large for the producer's `message.max.bytes` is omitted (an
//! empty value and a `__connect.errors.value.omitted` header with its size): the event stays
//! readable at its source offset, and the worker is not stuck retrying a send that can never
//! succeed. Every send is awaited (acks=all, idempotent producer) before `send`
//! returns, so the source offset is committed only once the dead letter is durable.
//!
//! Headers (all UTF-8 text): `__connect.errors.topic`, `.partition`, `.offset`, `.stage`,
//! `.class.name` (the rejection class), `.exception.message` (the reason: names fields and
//! rules, never values), `.timestamp` (epoch millis), `.position`. Reasons never carry PII.

use super::{DeadLetter, DeadLetterError, DeadLetterSink, SinkProblem};
use crate::crypto::SEALED_OVERHEAD;
use async_trait::async_trait;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::BTreeMap;
use std::time::Duration;

/// The prefix of the headers this sink adds.
pub const HEADER_PREFIX: &str = "__connect.errors.";
/// After [`HEADER_PREFIX`]: present when the value was left out; its original size in bytes.
pub const VALUE_OMITTED: &str = "value.omitted";
/// The header naming the key the value is sealed under ([`super::Sealing`]'s text form).
pub const SEALING_HEADER: &str = "profile-sync.sealing";
/// With residency zones: the zone whose key seals the payload.
pub const ZONE_HEADER: &str = "profile-sync.zone";

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;
/// Room kept for the record's headers and framing.
const RECORD_OVERHEAD: usize = 16 * 1024;

pub struct DeadLetterTopic {
    producer: FutureProducer,
    topic: String,
    /// Key plus value larger than this are sent without the value.
    max_payload_bytes: usize,
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
        let message_max = properties
            .get("message.max.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES);
        Ok(Self {
            producer,
            topic: topic.to_string(),
            max_payload_bytes: message_max.saturating_sub(RECORD_OVERHEAD),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }
}

/// The original headers followed by the `__connect.errors.*` ones; `omitted` is the size of a
/// value left out.
pub fn headers_of(letter: &DeadLetter, omitted: Option<usize>) -> OwnedHeaders {
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
    if let Some(size) = omitted {
        add(VALUE_OMITTED, size.to_string());
    }
    let sealing = letter.sealing.to_string();
    let headers = headers.insert(Header {
        key: SEALING_HEADER,
        value: Some(sealing.as_bytes()),
    });
    match &letter.zone {
        Some(zone) => headers.insert(Header {
            key: ZONE_HEADER,
            value: Some(zone.as_bytes()),
        }),
        None => headers,
    }
}

#[async_trait]
impl DeadLetterSink for DeadLetterTopic {
    /// Asks the brokers for the topic's metadata.
    async fn check(&self) -> Result<String, SinkProblem> {
        match crate::kafka::partitions_of(&self.producer, &self.topic).await {
            Err(e) => Err(SinkProblem::Unreachable(format!(
                "no metadata from the dead-letter brokers ({e}): check dead_letter.brokers (or the source's) and that the brokers are up"
            ))),
            Ok(Some(n)) => Ok(format!("topic `{}`, {n} partitions", self.topic)),
            Ok(None) => Err(SinkProblem::Refused(format!(
                "dead-letter topic `{}` does not exist: create it (as the source topics), or fix dead_letter.topic",
                self.topic
            ))),
        }
    }

    /// Retries a broker outage with backoff until every letter is acknowledged (the worker
    /// neither exits nor commits past it; a shutdown deadline still ends it). A partly failed
    /// attempt is sent again whole: the dead-letter topic is at-least-once too. A permanent
    /// refusal (no such topic, not authorised) stops the worker with the reason instead.
    async fn send(&self, letters: Vec<DeadLetter>) -> Result<(), DeadLetterError> {
        crate::retry::until_permanent(
            || self.send_once(&letters),
            |e, attempt, delay| {
                tracing::warn!(error = %e, attempt, delay_ms = delay.as_millis() as u64, "dead-letter produce failed; retrying");
                metrics::counter!(crate::telemetry::DEAD_LETTER_RETRIES).increment(1);
            },
        )
        .await
    }
}

type Failed = crate::retry::Failed<DeadLetterError>;

impl DeadLetterTopic {
    async fn send_once(&self, letters: &[DeadLetter]) -> Result<(), Failed> {
        let sends = letters.iter().map(|letter| {
            let size = letter.key.as_ref().map_or(0, Vec::len) + letter.payload.len();
            // The header tells the event's own size, not the sealed one.
            let omitted = (size > self.max_payload_bytes)
                .then_some(letter.payload.len().saturating_sub(SEALED_OVERHEAD));
            let value: &[u8] = if omitted.is_some() {
                &[]
            } else {
                &letter.payload
            };
            let mut record = FutureRecord::to(&self.topic)
                .payload(value)
                .headers(headers_of(letter, omitted));
            if let Some(key) = &letter.key {
                record = record.key(key);
            }
            self.producer.send(record, Duration::from_secs(30))
        });
        for result in futures::future::join_all(sends).await {
            if let Err((e, _)) = result {
                if e.rdkafka_error_code()
                    .is_some_and(crate::kafka::refuses_produce)
                {
                    return Err(Failed::Permanent(DeadLetterError(format!(
                        "dead-letter topic `{}` refuses dead letters ({e}): create it or grant the worker the right to write it, then start the worker again; the source offset is not committed",
                        self.topic
                    ))));
                }
                return Err(Failed::Transient(DeadLetterError(format!(
                    "cannot write to dead-letter topic {} ({e}); the source offset is not committed",
                    self.topic
                ))));
            }
        }
        Ok(())
    }
}
