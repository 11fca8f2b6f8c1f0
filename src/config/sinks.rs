//! Where changes go: the store (SQLite or DynamoDB), the index (tantivy or OpenSearch), the
//! dead-letter sink and the segment change feed.

use super::*;

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

    pub(super) fn fields_mut(&mut self) -> &mut Vec<String> {
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
