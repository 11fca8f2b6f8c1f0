//! What the Kafka producers (dead letters, segment changes) share: which produce errors no
//! retry can fix.

use rdkafka::types::RDKafkaErrorCode;

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
