//! What the Kafka commands (`produce`, `schemas`, `dlq`) share: the Kafka section of a
//! pipeline file, registry settings, topic creation.

use super::{pipeline_file, usage, Failure};
use crate::config::{kafka_client_properties, KafkaSourceConfig, SourceConfig};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The pipeline file the Kafka commands default to.
pub const KAFKA_PIPELINE: &str = "pipelines/kafka-local.yaml";

/// The Kafka source section of the pipeline file (default: the Kafka one).
pub fn kafka_source(given: Option<&Path>) -> Result<KafkaSourceConfig, Failure> {
    let path = given
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(KAFKA_PIPELINE));
    let file = pipeline_file(Some(&path))?;
    match file.config.source {
        SourceConfig::Kafka(k) => Ok(k),
        _ => Err(usage(anyhow::anyhow!(
            "{} has no Kafka source (`source: {{type: kafka, ...}}`): pass --pipeline with a Kafka pipeline file such as {KAFKA_PIPELINE}",
            path.display()
        ))),
    }
}

/// A librdkafka client config with the source's brokers and pass-through properties, minus
/// the consumer-only ones.
pub fn client_config(k: &KafkaSourceConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &k.brokers);
    for (key, value) in kafka_client_properties(&k.properties) {
        config.set(key, value);
    }
    config
}

pub fn registry(
    k: &KafkaSourceConfig,
) -> Result<schema_registry_converter::async_impl::schema_registry::SrSettings, Failure> {
    crate::schema::registry::settings(
        &k.schema_registry.effective_url(),
        Duration::from_millis(k.schema_registry.timeout_ms),
        k.schema_registry.allow_http,
    )
    .map_err(|e| usage(anyhow::anyhow!(e)))
}

/// Creates the topics that do not exist yet (existing ones are left as they are).
pub async fn ensure_topics(config: &ClientConfig, topics: &[(&str, i32)]) -> Result<(), Failure> {
    let admin: AdminClient<DefaultClientContext> = config
        .create()
        .map_err(|e| usage(anyhow::anyhow!("cannot create a Kafka admin client: {e}")))?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(15)));
    let results = admin.create_topics(&new, &opts).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot create topics on {}: {e}. Is the broker running? (scripts/services start kafka)",
            config.get("bootstrap.servers").unwrap_or("?")
        )
    })?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(anyhow::anyhow!("cannot create topic {topic}: {code}").into())
            }
        }
    }
    Ok(())
}
