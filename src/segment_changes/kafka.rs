//! Segment changes as a Kafka topic: keyed by user id (so a user's changes share a partition
//! and keep their order), the value an Avro datum of `schemas/segment_change.avsc` in the
//! Confluent wire format. The schema is registered under `<topic>-value` on first use (a
//! registry that already has it returns its id). The producer has `acks=all` and one request
//! in flight per broker (retries cannot reorder a user's changes), and every send is awaited before `send` returns: the source offset is committed only
//! once the changes are durable.

use super::{SegmentChange, SegmentChangeError, SegmentChangeSink};
use crate::schema::registry::{frame, register, value_subject};
use async_trait::async_trait;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::OnceCell;

pub struct SegmentChangeTopicSettings {
    pub brokers: String,
    pub topic: String,
    pub properties: BTreeMap<String, String>,
    pub registry: SrSettings,
    pub schema: apache_avro::Schema,
    /// The schema file's text, registered as it is.
    pub schema_text: String,
}

pub struct SegmentChangeTopic {
    producer: FutureProducer,
    topic: String,
    registry: SrSettings,
    schema: apache_avro::Schema,
    schema_text: String,
    schema_id: OnceCell<u32>,
}

impl SegmentChangeTopic {
    pub fn open(settings: SegmentChangeTopicSettings) -> Result<Self, SegmentChangeError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &settings.brokers)
            .set("client.id", "profile-sync-segment-changes")
            .set("message.timeout.ms", "30000")
            .set("linger.ms", "5");
        for (k, v) in &settings.properties {
            config.set(k, v);
        }
        // Order per user (per partition) survives retries with one request in flight per
        // broker (the batch's changes still go in few requests: linger.ms batches them).
        config
            .set("acks", "all")
            .set("max.in.flight.requests.per.connection", "1");
        let producer: FutureProducer = config.create().map_err(|e| {
            SegmentChangeError(format!(
                "cannot create the segment change producer ({e}): check segment_changes.properties"
            ))
        })?;
        Ok(Self {
            producer,
            topic: settings.topic,
            registry: settings.registry,
            schema: settings.schema,
            schema_text: settings.schema_text,
            schema_id: OnceCell::new(),
        })
    }

    /// The id of the schema under `<topic>-value`, registered on first use.
    async fn schema_id(&self) -> Result<u32, Failed> {
        self.schema_id
            .get_or_try_init(|| async {
                register(
                    &self.registry,
                    &value_subject(&self.topic),
                    &self.schema,
                    &self.schema_text,
                )
                .await
                .map_err(|e| {
                    let refused = e.code.is_some_and(|c| c == 409 || c / 100 == 422);
                    let message = format!(
                        "cannot register {} under subject `{}` ({}: {}){}",
                        super::SCHEMA_FILE,
                        value_subject(&self.topic),
                        e.call,
                        e.message,
                        if refused {
                            ": the subject holds an incompatible schema; see `profile-sync schemas check`"
                        } else {
                            "; retrying"
                        }
                    );
                    if refused {
                        Failed::Permanent(SegmentChangeError(message))
                    } else {
                        Failed::Transient(SegmentChangeError(message))
                    }
                })
            })
            .await
            .copied()
    }

    async fn send_once(&self, changes: &[SegmentChange]) -> Result<(), Failed> {
        let id = self.schema_id().await?;
        let mut values = Vec::with_capacity(changes.len());
        for change in changes {
            let datum = change.to_avro(&self.schema).map_err(Failed::Permanent)?;
            values.push((change.user_id.hyphenated().to_string(), frame(id, &datum)));
        }
        let sends = values.iter().map(|(key, value)| {
            self.producer.send(
                FutureRecord::to(&self.topic).key(key).payload(value),
                Duration::from_secs(30),
            )
        });
        for result in futures::future::join_all(sends).await {
            if let Err((e, _)) = result {
                let message = format!(
                    "cannot write to the segment change topic `{}` ({e}); the source offset is not committed",
                    self.topic
                );
                return Err(
                    if e.rdkafka_error_code()
                        .is_some_and(crate::kafka::refuses_produce)
                    {
                        Failed::Permanent(SegmentChangeError(format!(
                            "{message}: create the topic or grant the worker the right to write it"
                        )))
                    } else {
                        Failed::Transient(SegmentChangeError(message))
                    },
                );
            }
        }
        Ok(())
    }
}

type Failed = crate::retry::Failed<SegmentChangeError>;

#[async_trait]
impl SegmentChangeSink for SegmentChangeTopic {
    /// Retries a broker or registry outage with backoff until every change is acknowledged; a
    /// partly failed attempt is sent again whole (consumers deduplicate by user and version).
    async fn send(&self, changes: Vec<SegmentChange>) -> Result<(), SegmentChangeError> {
        if changes.is_empty() {
            return Ok(());
        }
        crate::retry::until_permanent(
            || self.send_once(&changes),
            |e, attempt, delay| {
                tracing::warn!(error = %e, attempt, delay_ms = delay.as_millis() as u64, "segment change produce failed; retrying");
            },
        )
        .await
    }

    fn describe(&self) -> String {
        format!("segment changes to topic `{}`", self.topic)
    }

    /// The topic's metadata (preflight registers nothing: the schema is registered on first use).
    async fn check(&self) -> Result<String, String> {
        let partitions = crate::kafka::partitions_of(&self.producer, &self.topic)
            .await
            .map_err(|e| {
                format!(
                    "no metadata from the segment change brokers ({e}): check segment_changes.brokers (or the source's) and that the brokers are up"
                )
            })?
            .ok_or_else(|| {
                format!(
                    "segment change topic `{}` does not exist: create it, or fix segment_changes.topic",
                    self.topic
                )
            })?;
        Ok(format!("topic `{}`, {partitions} partitions", self.topic))
    }
}
