//! The pipeline file: which adapters to use and how the stages are configured.
//!
//! Every struct refuses unknown keys, so a typo is an error that names the key and its line,
//! not a silently ignored setting. Relative paths are resolved against the pipeline file's
//! folder (code, schemas, databases) or the data directory (what the pipeline writes).

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read pipeline file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("pipeline file {path} is invalid: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Where events come from.
    pub source: SourceConfig,
    /// The folder with the Avro reader schemas.
    #[serde(default = "default_schemas")]
    pub schemas: PathBuf,
    pub keys: KeysConfig,
    pub store: StoreConfig,
    pub index: IndexConfig,
    pub dead_letter: DeadLetterConfig,
    /// Where segment changes go (users entering and leaving segments); absent: no feed.
    #[serde(default)]
    pub segment_changes: Option<SegmentChangesConfig>,
    /// Data residency: the zones whose users' data stays in their own store, index and keys.
    /// Absent: one zone, the `keys`, `store` and `index` above, for every user.
    #[serde(default)]
    pub residency: Option<ResidencyConfig>,
    pub enrich: EnrichConfig,
    #[serde(default)]
    pub privacy: PrivacyConfig,
    /// The profile API (`profile-sync serve`): keys, roles, rate limits.
    #[serde(default)]
    pub serve: ServeConfig,
    /// Events per batch: the unit of store transactions and acknowledgements.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Batches fetched and not yet through the index stage, at most (the pipelined runtime's
    /// bound on memory).
    #[serde(default = "default_max_batches_in_flight")]
    pub max_batches_in_flight: usize,
    /// Batches decoded at once (decoding is pure CPU work). Default: the machine's cores.
    #[serde(default)]
    pub decode_workers: Option<usize>,
    /// Where the embedded adapters keep their files; `--data-dir` overrides it.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
}

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
fn default_commit_interval_ms() -> u64 {
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

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum KeysConfig {
    /// A master key in a local file (mode 0600), created on first run.
    LocalKeyring {
        #[serde(default = "default_keyring")]
        path: PathBuf,
        /// An environment variable holding a 32-byte master key (base64) that seals the keys
        /// in the keyring file, so that the file alone decrypts nothing. Default: none.
        #[serde(default)]
        master_key_env: Option<String>,
        #[serde(default)]
        cache: KeyCacheConfig,
    },
    /// AWS KMS: key-encryption keys are KMS data keys (see `src/keys/kms.rs`).
    Kms {
        /// The KMS key that generates key-encryption keys: key id, ARN, alias name or alias ARN.
        key_id: String,
        /// AWS region; default: the SDK chain (`AWS_REGION`, profile, IMDS).
        #[serde(default)]
        region: Option<String>,
        /// Endpoint override (LocalStack, an emulator); default: the real KMS endpoint.
        #[serde(default)]
        endpoint: Option<String>,
        /// Development only: `profile-sync bootstrap` creates the KMS key and the alias named
        /// by `key_id` (which must then be `alias/...`) when the alias does not exist.
        #[serde(default)]
        create_for_development: bool,
        #[serde(default)]
        kek_cache: KekCacheConfig,
        #[serde(default)]
        cache: KeyCacheConfig,
    },
}

impl KeysConfig {
    /// What tells two key providers apart (for the residency check that no zones share one).
    pub fn identity(&self) -> String {
        match self {
            KeysConfig::LocalKeyring { path, .. } => format!("keyring {}", path.display()),
            KeysConfig::Kms { key_id, region, .. } => format!(
                "KMS key {key_id} in {}",
                region.as_deref().unwrap_or("the default region")
            ),
        }
    }

    /// Bounds on the cache of unwrapped per-user data keys.
    pub fn cache(&self) -> &KeyCacheConfig {
        match self {
            KeysConfig::LocalKeyring { cache, .. } | KeysConfig::Kms { cache, .. } => cache,
        }
    }
}

/// Bounds on the cache of plaintext key-encryption keys from KMS. The current KEK wraps new
/// user keys until it is `max_age_secs` old, has wrapped `max_uses` keys or `max_bytes` bytes
/// of key material, whichever comes first; then the next wrap asks KMS for a new one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KekCacheConfig {
    #[serde(default = "default_kek_max_age")]
    pub max_age_secs: u64,
    #[serde(default = "default_kek_max_uses")]
    pub max_uses: u64,
    #[serde(default = "default_kek_max_bytes")]
    pub max_bytes: u64,
    /// Decrypted KEKs (of stored user keys) held at once.
    #[serde(default = "default_kek_max_entries")]
    pub max_entries: usize,
}

impl Default for KekCacheConfig {
    fn default() -> Self {
        Self {
            max_age_secs: default_kek_max_age(),
            max_uses: default_kek_max_uses(),
            max_bytes: default_kek_max_bytes(),
            max_entries: default_kek_max_entries(),
        }
    }
}

fn default_kek_max_age() -> u64 {
    3600
}
fn default_kek_max_uses() -> u64 {
    100_000
}
fn default_kek_max_bytes() -> u64 {
    4 * 1024 * 1024
}
fn default_kek_max_entries() -> usize {
    1000
}

/// Bounds on the cache of unwrapped per-user data keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyCacheConfig {
    /// How long an unwrapped key may be used before it is unwrapped again, in seconds.
    #[serde(default = "default_key_max_age")]
    pub max_age_secs: u64,
    /// How many fields a cached key may encrypt or decrypt before it is unwrapped again.
    #[serde(default = "default_key_max_uses")]
    pub max_uses: u64,
    /// How many users' keys are held at once.
    #[serde(default = "default_key_max_entries")]
    pub max_entries: usize,
}

impl Default for KeyCacheConfig {
    fn default() -> Self {
        Self {
            max_age_secs: default_key_max_age(),
            max_uses: default_key_max_uses(),
            max_entries: default_key_max_entries(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum StoreConfig {
    Sqlite {
        #[serde(default = "default_sqlite")]
        path: PathBuf,
    },
    /// Amazon DynamoDB, one table (see `src/stores/dynamodb/` and ARCHITECTURE.md).
    Dynamodb {
        table: String,
        /// AWS region; default: the SDK chain (`AWS_REGION`, profile, IMDS).
        #[serde(default)]
        region: Option<String>,
        /// Endpoint override (DynamoDB Local, LocalStack); default: the real endpoint.
        #[serde(default)]
        endpoint: Option<String>,
        /// Conditional writes in flight at once.
        #[serde(default = "default_dynamodb_concurrency")]
        concurrency: usize,
        /// Audit records get a TTL attribute this many days after their time (DynamoDB
        /// removes them some time after that); `expire_audit` removes them explicitly too.
        /// Default: `privacy.retention.audit_days`, else 400.
        #[serde(default)]
        audit_retention_days: Option<u64>,
    },
}

impl StoreConfig {
    /// What tells two stores apart (for the residency check that no zones share one).
    pub fn identity(&self) -> String {
        match self {
            StoreConfig::Sqlite { path } => format!("file {}", path.display()),
            StoreConfig::Dynamodb {
                table,
                region,
                endpoint,
                ..
            } => format!(
                "table {table} in {} at {}",
                region.as_deref().unwrap_or("the default region"),
                endpoint.as_deref().unwrap_or("the AWS endpoint")
            ),
        }
    }
}

fn default_dynamodb_concurrency() -> usize {
    16
}
/// Audit TTL when neither the store nor the retention rules set one.
pub const DEFAULT_AUDIT_RETENTION_DAYS: u64 = 400;

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum IndexConfig {
    Tantivy {
        #[serde(default = "default_tantivy")]
        path: PathBuf,
        /// Profile fields to index besides the ids and the derived fields. Only public fields
        /// are allowed; the pipeline refuses to start if one is pii or sensitive.
        /// Empty: every public field.
        #[serde(default)]
        fields: Vec<String>,
        /// Commit (make durable and searchable) at the latest this long after the first
        /// uncommitted write, in milliseconds; acknowledgements wait for it.
        #[serde(default = "default_commit_interval_ms")]
        commit_interval_ms: u64,
        /// ...or as soon as this many documents are uncommitted.
        #[serde(default = "default_commit_every_docs")]
        commit_every_docs: usize,
    },
    /// OpenSearch: versioned indices `<name>-v1`, `<name>-v2`, … behind a read and a write alias.
    Opensearch {
        #[serde(default = "default_opensearch_url")]
        url: String,
        /// Prefix of the versioned indices and name of the index template.
        #[serde(default = "default_opensearch_name")]
        name: String,
        /// What searches use (default: `name`).
        #[serde(default)]
        read_alias: Option<String>,
        /// What the pipeline writes to (default: `<name>-write`).
        #[serde(default)]
        write_alias: Option<String>,
        /// As for tantivy: public profile fields to index; empty: every public field.
        #[serde(default)]
        fields: Vec<String>,
        #[serde(default)]
        bulk: OpenSearchBulkConfig,
        /// Environment variables holding basic-auth credentials (unset: no authentication).
        #[serde(default = "default_opensearch_username_env")]
        username_env: String,
        #[serde(default = "default_opensearch_password_env")]
        password_env: String,
    },
}

/// How the OpenSearch adapter batches its writes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenSearchBulkConfig {
    /// Largest bulk request body, before compression.
    #[serde(default = "default_bulk_max_bytes")]
    pub max_bytes: usize,
    /// Most operations in one bulk request.
    #[serde(default = "default_bulk_max_docs")]
    pub max_docs: usize,
    /// Bulk requests in flight at once.
    #[serde(default = "default_bulk_max_in_flight")]
    pub max_in_flight: usize,
    /// Gzip request bodies when the server accepts it.
    #[serde(default = "default_true")]
    pub gzip: bool,
}

impl Default for OpenSearchBulkConfig {
    fn default() -> Self {
        Self {
            max_bytes: default_bulk_max_bytes(),
            max_docs: default_bulk_max_docs(),
            max_in_flight: default_bulk_max_in_flight(),
            gzip: true,
        }
    }
}

impl IndexConfig {
    /// The profile fields the index projection asks for.
    pub fn fields(&self) -> &[String] {
        match self {
            IndexConfig::Tantivy { fields, .. } => fields,
            IndexConfig::Opensearch { fields, .. } => fields,
        }
    }

    fn fields_mut(&mut self) -> &mut Vec<String> {
        match self {
            IndexConfig::Tantivy { fields, .. } | IndexConfig::Opensearch { fields, .. } => fields,
        }
    }

    /// What tells two indices apart (for the residency check that no zones share one).
    pub fn identity(&self) -> String {
        match self {
            IndexConfig::Tantivy { path, .. } => format!("folder {}", path.display()),
            IndexConfig::Opensearch { url, name, .. } => format!("{name} at {url}"),
        }
    }
}

fn default_opensearch_url() -> String {
    "http://127.0.0.1:9200".into()
}
fn default_opensearch_name() -> String {
    "profiles".into()
}
fn default_opensearch_username_env() -> String {
    "OPENSEARCH_USERNAME".into()
}
fn default_opensearch_password_env() -> String {
    "OPENSEARCH_PASSWORD".into()
}
fn default_bulk_max_bytes() -> usize {
    5 * 1024 * 1024
}
fn default_bulk_max_docs() -> usize {
    5000
}
fn default_bulk_max_in_flight() -> usize {
    2
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum DeadLetterConfig {
    /// JSON lines with the sealed original bytes, the failing stage and the reason.
    File {
        #[serde(default = "default_dead_letter")]
        path: PathBuf,
        /// Days the dead-letter key of a day is kept: after that, `retention run` deletes it
        /// and the payloads of that day's letters whose user was unknown can no longer be read.
        #[serde(default = "default_dead_letter_retention_days")]
        retention_days: u32,
    },
    /// A Kafka topic: original key and headers, the sealed value, `__connect.errors.*` headers.
    Kafka {
        topic: String,
        /// `bootstrap.servers`; defaults to the Kafka source's.
        #[serde(default)]
        brokers: Option<String>,
        /// librdkafka producer properties (the `PROFILE_SYNC_KAFKA_*` variables apply too).
        #[serde(default)]
        properties: BTreeMap<String, String>,
        /// As for the file: days a day's dead-letter key is kept.
        #[serde(default = "default_dead_letter_retention_days")]
        retention_days: u32,
    },
}

/// The segment change feed's sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SegmentChangesConfig {
    /// JSON lines in the data folder.
    File {
        #[serde(default = "default_segment_changes_file")]
        path: PathBuf,
    },
    /// A Kafka topic keyed by user id, Avro values in the Confluent wire format.
    Kafka {
        topic: String,
        /// `bootstrap.servers`; defaults to the Kafka source's.
        #[serde(default)]
        brokers: Option<String>,
        /// Where `schemas/segment_change.avsc` is registered; defaults to the Kafka source's.
        #[serde(default)]
        schema_registry: Option<SchemaRegistryConfig>,
        /// librdkafka producer properties (the `PROFILE_SYNC_KAFKA_*` variables apply too).
        #[serde(default)]
        properties: BTreeMap<String, String>,
    },
}

fn default_segment_changes_file() -> PathBuf {
    PathBuf::from("segment-changes.jsonl")
}

impl DeadLetterConfig {
    pub fn retention_days(&self) -> u32 {
        match self {
            DeadLetterConfig::File { retention_days, .. }
            | DeadLetterConfig::Kafka { retention_days, .. } => *retention_days,
        }
    }
}

fn default_dead_letter_retention_days() -> u32 {
    30
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrichConfig {
    pub geoip: GeoIpConfig,
    /// Segment name → CEL expression over public, sensitive and derived fields, or
    /// `{rule: EXPR, purpose: NAME}` for a segment that needs the user's consent to a purpose.
    #[serde(default)]
    pub segments: BTreeMap<String, SegmentConfig>,
}

/// A segment rule and the consent purpose it needs, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentConfig {
    pub rule: String,
    pub purpose: Option<String>,
}

impl<'de> Deserialize<'de> for SegmentConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            rule: String,
            #[serde(default)]
            purpose: Option<String>,
        }
        let value = serde_yaml::Value::deserialize(d)?;
        if let serde_yaml::Value::String(rule) = value {
            return Ok(SegmentConfig {
                rule,
                purpose: None,
            });
        }
        let full: Full = serde_yaml::from_value(value).map_err(serde::de::Error::custom)?;
        Ok(SegmentConfig {
            rule: full.rule,
            purpose: full.purpose,
        })
    }
}

/// The profile API's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// The API key file (hashes only), in the data folder unless absolute.
    #[serde(default = "default_api_keys")]
    pub api_keys: PathBuf,
    /// Roles by name; absent: the shipped roles (README, "Serving profiles").
    #[serde(default)]
    pub roles: Option<BTreeMap<String, RoleConfig>>,
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    /// OIDC bearer tokens (JWT) accepted beside the API keys.
    #[serde(default)]
    pub oidc: Option<OidcConfig>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            api_keys: default_api_keys(),
            roles: None,
            rate_limit: RateLimitConfig::default(),
            oidc: None,
        }
    }
}

/// The identity provider whose tokens the profile API accepts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The `iss` every token must carry, exactly.
    pub issuer: String,
    /// The `aud` every token must carry (one of its audiences).
    pub audience: String,
    /// The provider's JWK set: an `https://` URL, or a file (relative to the pipeline file).
    pub jwks: String,
    /// The claim naming the caller's role: a string, or a list whose first role of this API
    /// counts.
    #[serde(default = "default_role_claim")]
    pub role_claim: String,
}

fn default_role_claim() -> String {
    "roles".into()
}

fn default_api_keys() -> PathBuf {
    PathBuf::from("api-keys.json")
}

/// A role: the actions it may take (`read`, `reveal`, `search`, `lookup`, `audit`), the field
/// classes or fields it reads as stored, and those it may reveal with a reason.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    #[serde(default)]
    pub actions: Vec<String>,
    #[serde(default)]
    pub read: Vec<String>,
    #[serde(default)]
    pub reveal: Vec<String>,
}

/// Requests per API key: a steady rate with a burst, and a stricter one for reveal and lookup.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    #[serde(default = "default_per_second")]
    pub per_second: u32,
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Reveals and lookups per key per minute.
    #[serde(default = "default_reveal_per_minute")]
    pub reveal_per_minute: u32,
    /// Reveals and lookups per key per minute above which the rate is reported as unusual (a
    /// warning and `profile_sync_api_unusual_reveal_rate_total`); nothing is refused for it.
    #[serde(default = "default_unusual_reveals_per_minute")]
    pub unusual_reveals_per_minute: u32,
    /// Requests for one user's profile per second, from all clients together, and its burst.
    #[serde(default = "default_per_user_per_second")]
    pub per_user_per_second: u32,
    #[serde(default = "default_per_user_burst")]
    pub per_user_burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_second: default_per_second(),
            burst: default_burst(),
            reveal_per_minute: default_reveal_per_minute(),
            unusual_reveals_per_minute: default_unusual_reveals_per_minute(),
            per_user_per_second: default_per_user_per_second(),
            per_user_burst: default_per_user_burst(),
        }
    }
}

fn default_per_second() -> u32 {
    5_000
}
fn default_burst() -> u32 {
    10_000
}
fn default_reveal_per_minute() -> u32 {
    60
}
fn default_unusual_reveals_per_minute() -> u32 {
    20
}
fn default_per_user_per_second() -> u32 {
    100
}
fn default_per_user_burst() -> u32 {
    200
}

/// Consent purposes, what happens to events for erased users, and retention.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyConfig {
    /// The purposes users can consent to; a segment may need one of them.
    #[serde(default)]
    pub purposes: Vec<String>,
    /// What to do with an event newer than a user's erasure: `refuse` dead-letters it with the
    /// reason "erased" (the default); `accept` starts a new profile with a new key.
    #[serde(default)]
    pub erased_user_events: ErasedUserEvents,
    #[serde(default)]
    pub retention: RetentionConfig,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ErasedUserEvents {
    #[default]
    Refuse,
    Accept,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Profiles with no change for this many days are anonymised (erased). None: never.
    #[serde(default)]
    pub inactive_profile_days: Option<u32>,
    /// Audit records older than this many days expire. None: kept forever.
    #[serde(default)]
    pub audit_days: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoIpConfig {
    /// A MaxMind City or Country database (GeoLite2/GeoIP2 or compatible).
    pub database: PathBuf,
    /// Residency zone → ISO country codes. Countries in no zone get `OTHER`.
    #[serde(default)]
    pub residency_zones: BTreeMap<String, Vec<String>>,
}

fn default_schemas() -> PathBuf {
    PathBuf::from("../schemas")
}
fn default_batch_size() -> usize {
    2000
}
fn default_max_batches_in_flight() -> usize {
    4
}
fn default_commit_every_docs() -> usize {
    50_000
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
fn default_keyring() -> PathBuf {
    PathBuf::from("keyring.json")
}
fn default_key_max_age() -> u64 {
    300
}
fn default_key_max_uses() -> u64 {
    1_000_000
}
/// Each cached key holds its AES-GCM context, about 1 KB: 25,000 keys are ~25 MB of the
/// worker's memory (BENCHMARKS.md, "Kafka backlog memory").
fn default_key_max_entries() -> usize {
    25_000
}
fn default_sqlite() -> PathBuf {
    PathBuf::from("profiles.sqlite")
}
fn default_tantivy() -> PathBuf {
    PathBuf::from("index")
}
fn default_dead_letter() -> PathBuf {
    PathBuf::from("dead-letter.jsonl")
}

/// Data residency (README, "Data residency"). The `keys`, `store` and `index` of the pipeline
/// file are the default zone's, which holds every user whose residency zone has no entry in
/// `zones`; each zone listed holds its users' profiles, keys and index documents, and only them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResidencyConfig {
    /// The name of the default zone (the top-level `keys`, `store` and `index`).
    pub default_zone: String,
    /// Residency zone (as `enrich.geoip.residency_zones` names it) → its adapters.
    pub zones: BTreeMap<String, ZoneConfig>,
    /// Users whose zone is remembered at once (the rest are looked up in the zones' stores).
    #[serde(default = "default_placement_cache")]
    pub placement_cache_entries: usize,
}

fn default_placement_cache() -> usize {
    200_000
}

/// One residency zone's own adapters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    pub keys: KeysConfig,
    pub store: StoreConfig,
    /// Its `fields` must be the top-level index's (one projection for every zone), or empty.
    pub index: IndexConfig,
    /// The zone's own dead-letter sink; absent: the pipeline's `dead_letter`.
    #[serde(default)]
    pub dead_letter: Option<DeadLetterConfig>,
    /// The zone's own segment change feed; absent: the pipeline's `segment_changes`.
    #[serde(default)]
    pub segment_changes: Option<SegmentChangesConfig>,
}

/// A loaded pipeline file with the folder its relative paths are resolved against.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub path: PathBuf,
    pub config: PipelineConfig,
    base: PathBuf,
}

impl Pipeline {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let text = interpolate(text, |name| std::env::var(name).ok()).map_err(|reason| {
            ConfigError::Invalid {
                path: path.to_path_buf(),
                reason,
            }
        })?;
        let config: PipelineConfig =
            serde_yaml::from_str(&text).map_err(|e| ConfigError::Invalid {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        if config.batch_size == 0 {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                reason: "batch_size must be at least 1".into(),
            });
        }
        if config.max_batches_in_flight == 0 || config.decode_workers == Some(0) {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                reason: "max_batches_in_flight and decode_workers must be at least 1".into(),
            });
        }
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let mut file = Self {
            path: path.to_path_buf(),
            config,
            base,
        };
        file.check_residency()?;
        Ok(file)
    }

    /// The residency section's rules: a default zone that is not also listed, zones that the
    /// region enrichment can place users in, one projection, and no adapter shared by two
    /// zones (a zone's store, index and keys never receive another zone's users).
    fn check_residency(&mut self) -> Result<(), ConfigError> {
        let Some(residency) = &mut self.config.residency else {
            return Ok(());
        };
        let invalid = |reason: String| ConfigError::Invalid {
            path: self.path.clone(),
            reason,
        };
        if residency.zones.is_empty() {
            return Err(invalid(
                "residency.zones lists no zone: list at least one, or remove the residency section"
                    .into(),
            ));
        }
        if residency.zones.contains_key(&residency.default_zone) {
            return Err(invalid(format!("residency.default_zone {:?} is also listed in residency.zones: the default zone's adapters are the top-level keys, store and index", residency.default_zone)));
        }
        let derived = &self.config.enrich.geoip.residency_zones;
        let top_fields = self.config.index.fields().to_vec();
        for (name, zone) in residency.zones.iter_mut() {
            if !derived.contains_key(name) {
                return Err(invalid(format!("residency.zones.{name}: enrich.geoip.residency_zones has no zone {name:?}, so no user would ever be placed there (it has: {})", derived.keys().cloned().collect::<Vec<_>>().join(", "))));
            }
            let fields = zone.index.fields_mut();
            if fields.is_empty() {
                *fields = top_fields.clone();
            } else if *fields != top_fields {
                return Err(invalid(format!("residency.zones.{name}.index.fields differ from index.fields: every zone's index holds the same projection (leave them out to take index.fields)")));
            }
        }
        if self.config.segment_changes.is_none() {
            if let Some((name, _)) = residency
                .zones
                .iter()
                .find(|(_, z)| z.segment_changes.is_some())
            {
                return Err(invalid(format!("residency.zones.{name}.segment_changes needs the pipeline's own segment_changes (the other zones' feed): add one, or remove the zone's")));
            }
        }
        residency.placement_cache_entries = residency
            .placement_cache_entries
            .max(4 * self.config.batch_size * self.config.max_batches_in_flight);
        let zones: Vec<(&str, &KeysConfig, &StoreConfig, &IndexConfig)> = std::iter::once((
            residency.default_zone.as_str(),
            &self.config.keys,
            &self.config.store,
            &self.config.index,
        ))
        .chain(
            residency
                .zones
                .iter()
                .map(|(n, z)| (n.as_str(), &z.keys, &z.store, &z.index)),
        )
        .collect();
        let mut seen: BTreeMap<String, &str> = BTreeMap::new();
        for (zone, keys, store, index) in zones {
            for (what, identity) in [
                ("keys", keys.identity()),
                ("store", store.identity()),
                ("index", index.identity()),
            ] {
                if let Some(other) = seen.insert(format!("{what} {identity}"), zone) {
                    return Err(invalid(format!("residency: zones {other} and {zone} share the {what} {identity}: each zone needs its own, so that no zone's {what} ever receives another zone's users")));
                }
            }
        }
        Ok(())
    }

    /// Each zone's view of this pipeline file: the file with the zone's keys, store, index
    /// and dead-letter sink in place of the top-level ones, the default zone first. Without a
    /// residency section, one unnamed zone: the file itself.
    pub fn zone_files(&self) -> Vec<(String, Pipeline)> {
        let Some(residency) = &self.config.residency else {
            return vec![(String::new(), self.clone())];
        };
        let mut default = self.clone();
        default.config.residency = None;
        let mut files = vec![(residency.default_zone.clone(), default.clone())];
        for (name, zone) in &residency.zones {
            let mut file = default.clone();
            file.config.keys = zone.keys.clone();
            file.config.store = zone.store.clone();
            file.config.index = zone.index.clone();
            if let Some(dead_letter) = &zone.dead_letter {
                file.config.dead_letter = dead_letter.clone();
            }
            if let Some(feed) = &zone.segment_changes {
                file.config.segment_changes = Some(feed.clone());
            }
            files.push((name.clone(), file));
        }
        files
    }

    /// A path from the pipeline file, relative to the file's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            tidy(&self.base.join(p))
        }
    }

    /// A data path, relative to the data directory.
    pub fn data_path(&self, data_dir: &Path, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            data_dir.join(p)
        }
    }

    pub fn invalid(&self, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }
}

/// `a/b/../c` as `a/c`, so messages show the path a reader would type.
fn tidy(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// Replaces `${NAME}` with the environment variable NAME and `${NAME:-default}` with it or the
/// default, so one pipeline file serves every environment. `$${` is a literal `${`.
/// Errors name the variable, never its value.
pub fn interpolate(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        // YAML comments stay as written: a commented-out `${VAR}` needs no variable.
        let (code, comment) = line.split_at(comment_start(line));
        out.push_str(&interpolate_code(code, &lookup)?);
        out.push_str(comment);
    }
    Ok(out)
}

/// Where a YAML comment starts on `line` (its length when there is none): a `#` at the start
/// or after whitespace, outside quotes.
fn comment_start(line: &str) -> usize {
    let (mut single, mut double) = (false, false);
    let mut previous = ' ';
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single && previous != '\\' => double = !double,
            '#' if !single && !double && previous.is_whitespace() => return i,
            _ => {}
        }
        previous = c;
    }
    line.len()
}

fn interpolate_code(
    text: &str,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        if rest[..i].ends_with('$') {
            out.push_str(&rest[..i - 1]);
            out.push_str("${");
            rest = &rest[i + 2..];
            continue;
        }
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "a `${` has no closing `}`".to_string())?;
        let expr = &after[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "`${{{expr}}}` is not a variable reference (use ${{NAME}} or ${{NAME:-default}})"
            ));
        }
        match (lookup(name), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(format!(
                    "environment variable {name} is not set (referenced as ${{{name}}}; set it or write ${{{name}:-default}})"
                ))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_in_comments_are_left_alone() {
        let text = "url: ${URL} # or ${OTHER}\n# key: ${UNSET}\nname: \"a # b ${URL}\"\n";
        let out = interpolate(text, |n| (n == "URL").then(|| "http://x".to_string())).unwrap();
        assert_eq!(
            out,
            "url: http://x # or ${OTHER}\n# key: ${UNSET}\nname: \"a # b http://x\"\n"
        );
    }

    #[test]
    fn shipped_local_pipeline_parses() {
        let p = Pipeline::load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/pipelines/local.yaml"
        )))
        .unwrap();
        assert!(p.config.enrich.segments.len() >= 5);
    }

    #[test]
    fn shipped_opensearch_pipeline_parses() {
        let p = Pipeline::load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/pipelines/opensearch-local.yaml"
        )))
        .unwrap();
        assert!(matches!(p.config.index, IndexConfig::Opensearch { .. }));
    }

    #[test]
    fn unknown_key_is_named_in_the_error() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/local.yaml"))
                .unwrap()
                .replace("batch_size:", "batch_sise:");
        let err = Pipeline::parse(Path::new("x.yaml"), &text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `batch_sise`"), "{err}");
    }

    #[test]
    fn environment_references_are_replaced_and_a_missing_one_is_named() {
        let env = |n: &str| (n == "BROKERS").then(|| "k1:9092".to_string());
        assert_eq!(interpolate("a: ${BROKERS}", env).unwrap(), "a: k1:9092");
        assert_eq!(
            interpolate("a: ${REGION:-eu-west-1}", env).unwrap(),
            "a: eu-west-1"
        );
        assert_eq!(interpolate("a: $${BROKERS}", env).unwrap(), "a: ${BROKERS}");
        let err = interpolate("a: ${SECRET_TOKEN}", env).unwrap_err();
        assert!(err.contains("SECRET_TOKEN is not set"), "{err}");
        assert!(interpolate("a: ${oops", env).is_err());
    }
}
