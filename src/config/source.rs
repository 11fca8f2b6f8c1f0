//! Where events come from: a file, or Kafka with its Schema Registry (and the Kafka client
//! properties profile-sync sets or lets through).

use super::*;

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    /// A file of events: Avro object container file or newline-delimited JSON.
    File {
        path: PathBuf,
        #[serde(default)]
        format: FileFormat,
    },
    /// Kafka topics in the Confluent wire format, read in a consumer group.
    Kafka(KafkaSourceConfig),
}

/// A Kafka source. librdkafka properties (`security.protocol`, `sasl.*`, `ssl.*`, `client.id`,
/// fetch sizes, timeouts) go under `properties`; environment variables
/// `PROFILE_SYNC_KAFKA_<PROPERTY>` (dots as underscores, e.g. `PROFILE_SYNC_KAFKA_SASL_PASSWORD`)
/// override them, so secrets need not be in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    pub topics: Vec<String>,
    /// `group.id`: workers with the same group share the partitions.
    pub group_id: String,
    pub schema_registry: SchemaRegistryConfig,
    /// How long to wait for more messages once a batch has its first one, in milliseconds.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// Commit once this many events have been acknowledged since the last commit...
    #[serde(default = "default_commit_every_events")]
    pub commit_every_events: usize,
    /// ...or once this long has passed since the last commit, in milliseconds.
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// A message value larger than this (bytes) is dead-lettered as `too_large` undecoded.
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: usize,
    /// Stop (exit 0 after committing) when every assigned partition was read to its end and
    /// no message arrived for this long, in milliseconds.
    /// For batch jobs and benchmarks; unset, the worker runs until it is signalled.
    #[serde(default)]
    pub stop_when_idle_ms: Option<u64>,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaRegistryConfig {
    /// Base URL(s), comma-separated. `SCHEMA_REGISTRY_URL` overrides it; basic auth comes from
    /// `SCHEMA_REGISTRY_USER` / `SCHEMA_REGISTRY_PASSWORD`.
    pub url: String,
    #[serde(default = "default_registry_timeout_ms")]
    pub timeout_ms: u64,
    /// Plain `http://` to a registry beyond this machine (loopback is always allowed). Off by
    /// default: the writer schemas decide what every event's bytes mean, so a registry reached
    /// in plaintext could be impersonated on the network.
    #[serde(default)]
    pub allow_http: bool,
}

impl SchemaRegistryConfig {
    /// The URL to use: the environment's, else the file's.
    pub fn effective_url(&self) -> String {
        std::env::var("SCHEMA_REGISTRY_URL")
            .ok()
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| self.url.clone())
    }
}

/// The prefix of environment variables that set librdkafka properties.
pub const KAFKA_ENV_PREFIX: &str = "PROFILE_SYNC_KAFKA_";

/// librdkafka properties only a consumer understands. Producers and admin clients built from the
/// same properties (the dead-letter producer, `produce`, `dlq`) leave them out: librdkafka
/// would warn about each (CONFWARN) and ignore it.
pub const CONSUMER_ONLY_PROPERTIES: &[&str] = &[
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "auto.offset.reset",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "group.instance.id",
    "partition.assignment.strategy",
    "fetch.min.bytes",
    "fetch.wait.max.ms",
    "fetch.max.bytes",
    "max.partition.fetch.bytes",
    "queued.min.messages",
    "queued.max.messages.kbytes",
];

/// librdkafka properties: the file's, then `PROFILE_SYNC_KAFKA_*` from the environment.
pub fn kafka_properties(from_file: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut props = from_file.clone();
    for (k, v) in std::env::vars() {
        if let Some(rest) = k.strip_prefix(KAFKA_ENV_PREFIX) {
            if !rest.is_empty() {
                props.insert(rest.to_ascii_lowercase().replace('_', "."), v);
            }
        }
    }
    props
}

/// [`kafka_properties`] without the [`CONSUMER_ONLY_PROPERTIES`]: for producers and admin clients.
pub fn kafka_client_properties(from_file: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut props = kafka_properties(from_file);
    props.retain(|key, _| !CONSUMER_ONLY_PROPERTIES.contains(&key.as_str()));
    props
}

fn default_linger_ms() -> u64 {
    50
}
fn default_commit_every_events() -> usize {
    5000
}
pub(super) fn default_commit_interval_ms() -> u64 {
    1000
}
fn default_max_event_bytes() -> usize {
    1 << 20
}
fn default_registry_timeout_ms() -> u64 {
    5000
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// By extension: `.avro` is an object container file, anything else JSON lines.
    #[default]
    Auto,
    Avro,
    Jsonl,
}
