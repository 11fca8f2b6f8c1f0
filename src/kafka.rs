//! What the Kafka producers (dead letters, segment changes) share: which produce errors no
//! retry can fix, and the metadata look-up of their preflight.

use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;
use std::time::Duration;

/// How many partitions `topic` has: `Ok(None)` when the brokers answer that it does not exist,
/// `Err` (the client's message) when they do not answer.
pub async fn partitions_of(
    producer: &FutureProducer,
    topic: &str,
) -> Result<Option<usize>, String> {
    let producer = producer.clone();
    let name = topic.to_string();
    let metadata = tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(Some(&name), Duration::from_secs(10))
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().len()))
}

/// The topic is not there, or the producer may not write it: stop with the reason.
pub fn refuses_produce(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::InvalidTopic
    )
}
