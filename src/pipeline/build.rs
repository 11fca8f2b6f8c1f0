//! Builds the stages and adapters a pipeline file asks for. Adding an adapter is one match
//! arm here plus its own file under the port's folder.

use super::Pipeline;
use crate::config::{self, DeadLetterConfig, IndexConfig, KeysConfig, SourceConfig, StoreConfig};
use crate::crypto::DataKey;
use crate::dead_letter::{DeadLetterError, DeadLetterFile, DeadLetterSink};
use crate::indexes::{IndexError, OpenSearchIndex, OpenSearchSettings, SearchIndex, TantivyIndex};
use crate::keys::{DataKeys, KeyError, KeyProvider, KmsKeyProvider, LocalKeyring};
use crate::privacy::Profiles;
use crate::residency::{
    Placement, ZonedDeadLetters, ZonedIndex, ZonedKeys, ZonedSegmentChanges, ZonedStore,
};
use crate::schema::{ProfileSchemas, SchemaError};
use crate::segment_changes::{
    SegmentChangeError, SegmentChangeFile, SegmentChangeSink, SegmentChangeTopic,
    SegmentChangeTopicSettings,
};
use crate::sources::{EventSource, FileSource, SourceError};
use crate::stages::decode::Decoder;
use crate::stages::enrich::{Enricher, RegionError, RegionResolver, SegmentError, SegmentRules};
use crate::stages::project::{Projection, ProjectionError};
use crate::stages::protect::Protector;
use crate::stages::seal::LetterSealer;
use crate::stores::{DynamoStore, ProfileStore, SqliteStore, StoreError};
use base64::Engine as _;
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Anything that stops a pipeline from starting: all of them are the user's to fix.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error(transparent)]
    Region(#[from] RegionError),
    #[error(transparent)]
    Segment(#[from] SegmentError),
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    #[error(transparent)]
    Keyring(#[from] crate::keys::KeyringError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    DeadLetter(#[from] DeadLetterError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    SegmentChanges(#[from] SegmentChangeError),
}

/// A ready pipeline and the source it reads.
pub struct Components {
    pub pipeline: Pipeline,
    pub source: Box<dyn EventSource>,
}

/// The store, index and keys of a pipeline file, for operators' commands.
/// The store, index and keys. Commands that change no index document open it with
/// `IndexAccess::Read`, so that they can run beside a worker that holds the embedded index.
/// With residency zones, each user's data goes to their zone's store, index and keys only.
pub fn open_profiles(
    file: &config::Pipeline,
    data_dir: &Path,
    schemas: &ProfileSchemas,
    access: IndexAccess,
) -> Result<Profiles, BuildError> {
    let placement = open_placement(file, data_dir)?;
    let (projection, index) =
        open_placed_index(file, data_dir, schemas, access, placement.as_ref())?;
    let store = placed_store(file, data_dir, placement.as_ref())?;
    let keys = open_placed_keys(file, data_dir, store.clone(), placement.as_ref())?;
    Ok(Profiles {
        store,
        index,
        keys,
        projection,
        placement,
    })
}

/// Where each user's data lives, when the pipeline file has residency zones: over each zone's
/// own store.
pub fn open_placement(
    file: &config::Pipeline,
    data_dir: &Path,
) -> Result<Option<Arc<Placement>>, BuildError> {
    let Some(residency) = &file.config.residency else {
        return Ok(None);
    };
    let zones = file
        .zone_files()
        .into_iter()
        .map(|(name, zone)| Ok((name, open_zone_store(&zone, data_dir)?)))
        .collect::<Result<Vec<_>, BuildError>>()?;
    Ok(Some(Arc::new(Placement::new(
        zones,
        residency.placement_cache_entries,
    ))))
}

/// One zone's view of the pipeline file (`--zone NAME` of the commands that work on one
/// zone's adapters: key rotation, say). Without residency zones, the file itself; with them,
/// a zone must be named.
pub fn zone_file(
    file: &config::Pipeline,
    zone: Option<&str>,
) -> Result<config::Pipeline, BuildError> {
    let zones = file.zone_files();
    match (zone, &file.config.residency) {
        (None, None) => Ok(file.clone()),
        (Some(name), None) => Err(file
            .invalid(format!(
                "--zone {name}: this pipeline file has no residency zones"
            ))
            .into()),
        (name, Some(_)) => {
            let names: Vec<&str> = zones.iter().map(|(n, _)| n.as_str()).collect();
            let Some(name) = name else {
                return Err(file
                    .invalid(format!(
                        "this pipeline file has residency zones ({}): name the zone with --zone",
                        names.join(", ")
                    ))
                    .into());
            };
            zones
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, f)| f.clone())
                .ok_or_else(|| {
                    file.invalid(format!(
                        "no residency zone {name:?} (the zones are {})",
                        names.join(", ")
                    ))
                    .into()
                })
        }
    }
}

pub fn schemas(file: &config::Pipeline) -> Result<ProfileSchemas, BuildError> {
    Ok(ProfileSchemas::load(&file.resolve(&file.config.schemas))?)
}

/// The store: with residency zones, the one that hands each user to their zone's store.
pub fn open_store(
    file: &config::Pipeline,
    data_dir: &Path,
) -> Result<Arc<dyn ProfileStore>, BuildError> {
    let placement = open_placement(file, data_dir)?;
    placed_store(file, data_dir, placement.as_ref())
}

fn placed_store(
    file: &config::Pipeline,
    data_dir: &Path,
    placement: Option<&Arc<Placement>>,
) -> Result<Arc<dyn ProfileStore>, BuildError> {
    match placement {
        Some(placement) => Ok(Arc::new(ZonedStore::new(placement.clone()))),
        None => open_zone_store(file, data_dir),
    }
}

/// The store the pipeline file's top-level `store` names (one zone's).
fn open_zone_store(
    file: &config::Pipeline,
    data_dir: &Path,
) -> Result<Arc<dyn ProfileStore>, BuildError> {
    Ok(match &file.config.store {
        StoreConfig::Sqlite { path } => Arc::new(
            SqliteStore::open(&file.data_path(data_dir, path))?
                .reviving_erased(revives_erased(file)),
        ),
        StoreConfig::Dynamodb { .. } => Arc::new(open_dynamodb(file, true)?),
    })
}

/// Whether a change newer than an erasure stores the user anew (`privacy.erased_user_events`).
fn revives_erased(file: &config::Pipeline) -> bool {
    file.config.privacy.erased_user_events == config::ErasedUserEvents::Accept
}

/// The DynamoDB store of the pipeline file; a config error if the store is not DynamoDB.
/// `check_table`: fail now, with a hint to run bootstrap, if the table does not exist.
pub fn open_dynamodb(
    file: &config::Pipeline,
    check_table: bool,
) -> Result<DynamoStore, BuildError> {
    match &file.config.store {
        StoreConfig::Dynamodb {
            table,
            region,
            endpoint,
            concurrency,
            audit_retention_days,
        } => Ok(DynamoStore::open(
            table,
            &crate::aws::Endpoint {
                region: region.clone(),
                endpoint: endpoint.clone(),
            },
            *concurrency,
            // One retention period for audit records: the store's TTL follows the privacy
            // rules unless the store sets its own.
            audit_retention_days
                .or(file.config.privacy.retention.audit_days.map(u64::from))
                .unwrap_or(config::DEFAULT_AUDIT_RETENTION_DAYS),
            check_table,
        )?
        .reviving_erased(revives_erased(file))),
        _ => Err(file
            .invalid("this needs `store: {type: dynamodb, ...}` (the KMS key provider keeps its blind-index key in the DynamoDB table)")
            .into()),
    }
}

/// The KMS key provider of the pipeline file, using `key_id` instead of the configured key
/// when given (`keys rewrap --to-key`).
pub fn open_kms(
    file: &config::Pipeline,
    key_id: Option<&str>,
) -> Result<KmsKeyProvider, BuildError> {
    match &file.config.keys {
        KeysConfig::Kms {
            key_id: configured,
            region,
            endpoint,
            kek_cache,
            ..
        } => {
            let settings = open_dynamodb(file, true)?;
            Ok(KmsKeyProvider::open(
                key_id.unwrap_or(configured),
                &crate::aws::Endpoint {
                    region: region.clone(),
                    endpoint: endpoint.clone(),
                },
                kek_cache,
                &settings,
            )?)
        }
        _ => Err(file
            .invalid("this needs `keys: {type: kms, key_id: ...}`")
            .into()),
    }
}

/// The local keyring's file and master key (`keys.master_key_env`), when the keys are a
/// local keyring.
pub fn local_keyring(
    file: &config::Pipeline,
    data_dir: &Path,
) -> Result<Option<(PathBuf, Option<DataKey>)>, BuildError> {
    let KeysConfig::LocalKeyring {
        path,
        master_key_env,
        ..
    } = &file.config.keys
    else {
        return Ok(None);
    };
    let master = match master_key_env {
        None => None,
        Some(name) => {
            let value = std::env::var(name).map_err(|_| {
                file.invalid(format!("keys.master_key_env names {name}, which is not set: set it to the keyring's master key (32 bytes, base64; e.g. `openssl rand -base64 32` for a new keyring)"))
            })?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(value.trim())
                .ok()
                .filter(|b| b.len() == 32)
                .ok_or_else(|| file.invalid(format!("{name} is not 32 bytes in base64")))?;
            Some(DataKey::from_slice(&bytes).expect("32 bytes"))
        }
    };
    Ok(Some((file.data_path(data_dir, path), master)))
}

/// The users' data keys over `store`. With residency zones `store` must be the zoned store
/// (as [`open_store`] gives it) and the keys are each zone's provider's.
pub fn open_data_keys(
    file: &config::Pipeline,
    data_dir: &Path,
    store: Arc<dyn ProfileStore>,
) -> Result<Arc<DataKeys>, BuildError> {
    let placement = open_placement(file, data_dir)?;
    open_placed_keys(file, data_dir, store, placement.as_ref())
}

fn open_placed_keys(
    file: &config::Pipeline,
    data_dir: &Path,
    store: Arc<dyn ProfileStore>,
    placement: Option<&Arc<Placement>>,
) -> Result<Arc<DataKeys>, BuildError> {
    let provider: Arc<dyn KeyProvider> = match placement {
        None => open_key_provider(file, data_dir)?,
        Some(placement) => Arc::new(ZonedKeys::new(
            placement.clone(),
            file.zone_files()
                .iter()
                .map(|(_, zone)| open_key_provider(zone, data_dir))
                .collect::<Result<_, _>>()?,
        )),
    };
    Ok(Arc::new(DataKeys::new(
        provider,
        store,
        file.config.keys.cache(),
    )))
}

/// The key provider the pipeline file's top-level `keys` names (one zone's).
fn open_key_provider(
    file: &config::Pipeline,
    data_dir: &Path,
) -> Result<Arc<dyn KeyProvider>, BuildError> {
    Ok(match &file.config.keys {
        KeysConfig::LocalKeyring { .. } => {
            let (path, master) = local_keyring(file, data_dir)?.expect("a local keyring");
            Arc::new(LocalKeyring::open_or_create(&path, master.as_ref())?)
        }
        KeysConfig::Kms { .. } => Arc::new(open_kms(file, None)?),
    })
}

/// What a command does with the search index. Writers (the pipeline, the privacy commands)
/// create the first OpenSearch index version when there is none; readers (`search`, `check`)
/// leave a cluster as they found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexAccess {
    Write,
    Read,
}

/// The search index: with residency zones, the one that hands each user to their zone's index
/// and searches every zone.
pub fn open_index(
    file: &config::Pipeline,
    data_dir: &Path,
    schemas: &ProfileSchemas,
    access: IndexAccess,
) -> Result<(Projection, Arc<dyn SearchIndex>), BuildError> {
    let placement = open_placement(file, data_dir)?;
    open_placed_index(file, data_dir, schemas, access, placement.as_ref())
}

/// [`open_index`] with the placement of profiles opened already.
pub fn open_placed_index(
    file: &config::Pipeline,
    data_dir: &Path,
    schemas: &ProfileSchemas,
    access: IndexAccess,
    placement: Option<&Arc<Placement>>,
) -> Result<(Projection, Arc<dyn SearchIndex>), BuildError> {
    let Some(placement) = placement else {
        return open_zone_index(file, data_dir, schemas, access);
    };
    let mut projection = None;
    let mut indexes = Vec::new();
    for (_, zone) in file.zone_files() {
        let (p, index) = open_zone_index(&zone, data_dir, schemas, access)?;
        projection.get_or_insert(p);
        indexes.push(index);
    }
    Ok((
        projection.expect("at least the default zone"),
        Arc::new(ZonedIndex::new(placement.clone(), indexes)),
    ))
}

/// The index the pipeline file's top-level `index` names (one zone's).
fn open_zone_index(
    file: &config::Pipeline,
    data_dir: &Path,
    schemas: &ProfileSchemas,
    access: IndexAccess,
) -> Result<(Projection, Arc<dyn SearchIndex>), BuildError> {
    let projection = Projection::new(&schemas.catalog, file.config.index.fields())?;
    let index: Arc<dyn SearchIndex> = match &file.config.index {
        IndexConfig::Tantivy { path, .. } => {
            let path = file.data_path(data_dir, path);
            Arc::new(match access {
                IndexAccess::Write => TantivyIndex::open(&path, projection.fields())?,
                IndexAccess::Read => TantivyIndex::open_for_reading(&path, projection.fields())?,
            })
        }
        IndexConfig::Opensearch { .. } => {
            let (_, settings) = opensearch_settings(file, schemas)?;
            Arc::new(match access {
                IndexAccess::Write => OpenSearchIndex::open(settings, projection.fields())?,
                IndexAccess::Read => OpenSearchIndex::attach(settings, projection.fields())?,
            })
        }
    };
    Ok((projection, index))
}

/// The projection and OpenSearch settings of an `index: {type: opensearch}` pipeline file.
pub fn opensearch_settings(
    file: &config::Pipeline,
    schemas: &ProfileSchemas,
) -> Result<(Projection, OpenSearchSettings), BuildError> {
    let IndexConfig::Opensearch {
        url,
        name,
        read_alias,
        write_alias,
        fields,
        bulk,
        username_env,
        password_env,
    } = &file.config.index
    else {
        return Err(file
            .invalid("index.type is not opensearch: reindexing needs an OpenSearch index (a tantivy index is rebuilt by removing its folder and running the pipeline again)")
            .into());
    };
    let projection = Projection::new(&schemas.catalog, fields)?;
    let valid_name = |n: &str| {
        !n.is_empty()
            && !n.starts_with(['-', '_', '+'])
            && n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
    };
    let read_alias = read_alias.clone().unwrap_or_else(|| name.clone());
    let write_alias = write_alias
        .clone()
        .unwrap_or_else(|| format!("{name}-write"));
    for (key, value) in [
        ("name", name),
        ("read_alias", &read_alias),
        ("write_alias", &write_alias),
    ] {
        if !valid_name(value) {
            return Err(file.invalid(format!("index.{key} {value:?} is not a valid OpenSearch name: use lowercase letters, digits, `-`, `_` and `.`")).into());
        }
    }
    if read_alias == write_alias {
        return Err(file
            .invalid("index.read_alias and index.write_alias must differ")
            .into());
    }
    if bulk.max_bytes < 1024 || bulk.max_docs == 0 || bulk.max_in_flight == 0 {
        return Err(file.invalid("index.bulk: max_bytes must be at least 1024, max_docs and max_in_flight at least 1").into());
    }
    // An unparseable URL is the client's to report, with the URL.
    let parsed = opensearch::http::Url::parse(url).ok();
    if parsed
        .as_ref()
        .is_some_and(crate::endpoint::carries_credentials)
    {
        // Not quoted: the URL holds a secret, and errors and logs name the URL.
        return Err(file.invalid(format!("index.url carries credentials: take them out of the URL and set {username_env} and {password_env} instead")).into());
    }
    let credentials = match (std::env::var(username_env), std::env::var(password_env)) {
        (Ok(u), Ok(p)) if !u.is_empty() => Some((u, p)),
        (Ok(u), _) if !u.is_empty() => {
            return Err(file.invalid(format!("{username_env} is set but {password_env} is not: set both for basic authentication, or neither")).into())
        }
        _ => None,
    };
    // A remote cluster reached without credentials is worth a warning, not an error: a proxy
    // in front of the cluster may authenticate.
    if let Some(remote) =
        parsed.filter(|u| credentials.is_none() && crate::endpoint::beyond_this_machine(u))
    {
        tracing::warn!(
            host = remote.host_str().unwrap_or_default(),
            "OpenSearch requests will carry no credentials: set {username_env} and {password_env}, unless a proxy in front of the cluster authenticates"
        );
    }
    let settings = OpenSearchSettings {
        url: url.clone(),
        name: name.clone(),
        read_alias,
        write_alias,
        credentials,
        max_bulk_bytes: bulk.max_bytes,
        max_bulk_docs: bulk.max_docs,
        max_in_flight: bulk.max_in_flight,
        gzip: bulk.gzip,
    };
    Ok((projection, settings))
}

/// The dead-letter sink: with residency zones, the one that sends each letter to its zone's
/// sink where the zone has one.
pub fn open_dead_letters(
    file: &config::Pipeline,
    data_dir: &Path,
) -> Result<Arc<dyn DeadLetterSink>, BuildError> {
    let default = open_zone_dead_letters(file, data_dir)?;
    let Some(residency) = &file.config.residency else {
        return Ok(default);
    };
    let mut zones = Vec::new();
    for (name, zone) in file.zone_files() {
        if residency
            .zones
            .get(&name)
            .is_some_and(|z| z.dead_letter.is_some())
        {
            zones.push((name, open_zone_dead_letters(&zone, data_dir)?));
        }
    }
    Ok(Arc::new(ZonedDeadLetters::new(default, zones)))
}

/// The sink the pipeline file's top-level `dead_letter` names (one zone's).
fn open_zone_dead_letters(
    file: &config::Pipeline,
    data_dir: &Path,
) -> Result<Arc<dyn DeadLetterSink>, BuildError> {
    Ok(match &file.config.dead_letter {
        DeadLetterConfig::File { path, .. } => {
            Arc::new(DeadLetterFile::open(&file.data_path(data_dir, path))?)
        }
        DeadLetterConfig::Kafka {
            topic,
            brokers,
            properties,
            ..
        } => {
            let merged = producer_properties(file, brokers.as_deref(), properties);
            Arc::new(crate::dead_letter::DeadLetterTopic::open(
                &kafka_brokers(file, brokers.as_deref())?,
                topic,
                &merged,
            )?)
        }
    })
}

/// Opens the segment change feed's sink, if the pipeline file has one: with residency zones,
/// the one that sends each change to its zone's feed where the zone has one.
pub fn open_segment_changes(
    file: &config::Pipeline,
    data_dir: &Path,
) -> Result<Option<Arc<dyn SegmentChangeSink>>, BuildError> {
    let placement = open_placement(file, data_dir)?;
    open_placed_segment_changes(file, data_dir, placement.as_ref())
}

fn open_placed_segment_changes(
    file: &config::Pipeline,
    data_dir: &Path,
    placement: Option<&Arc<Placement>>,
) -> Result<Option<Arc<dyn SegmentChangeSink>>, BuildError> {
    let Some(default) = open_zone_segment_changes(file, data_dir)? else {
        return Ok(None);
    };
    let (Some(placement), Some(residency)) = (placement, &file.config.residency) else {
        return Ok(Some(default));
    };
    let mut zones = Vec::new();
    for (name, zone) in file.zone_files() {
        if residency
            .zones
            .get(&name)
            .is_some_and(|z| z.segment_changes.is_some())
        {
            let sink = open_zone_segment_changes(&zone, data_dir)?.expect("the zone's feed");
            zones.push((name, sink));
        }
    }
    Ok(Some(Arc::new(ZonedSegmentChanges::new(
        placement.clone(),
        default,
        zones,
    ))))
}

/// The feed the pipeline file's top-level `segment_changes` names (one zone's), if any.
fn open_zone_segment_changes(
    file: &config::Pipeline,
    data_dir: &Path,
) -> Result<Option<Arc<dyn SegmentChangeSink>>, BuildError> {
    let Some(sink) = &file.config.segment_changes else {
        return Ok(None);
    };
    Ok(Some(match sink {
        config::SegmentChangesConfig::File { path } => {
            Arc::new(SegmentChangeFile::open(&file.data_path(data_dir, path))?)
        }
        config::SegmentChangesConfig::Kafka {
            topic,
            brokers,
            schema_registry,
            properties,
        } => {
            let own_brokers = brokers.as_deref();
            let (brokers, registry) =
                segment_topic_endpoints(file, own_brokers, schema_registry.as_ref())?;
            let (schema, schema_text) =
                crate::segment_changes::load_schema(&file.resolve(&file.config.schemas))
                    .map_err(|reason| file.invalid(reason))?;
            Arc::new(SegmentChangeTopic::open(SegmentChangeTopicSettings {
                brokers,
                topic: topic.clone(),
                properties: producer_properties(file, own_brokers, properties),
                registry,
                schema,
                schema_text,
            })?)
        }
    }))
}

/// Where a Kafka segment change feed goes: its own brokers, else the Kafka source's, and its own
/// Schema Registry, else the source's. For the sink and for `segments tail`.
pub fn segment_topic_endpoints(
    file: &config::Pipeline,
    brokers: Option<&str>,
    registry: Option<&config::SchemaRegistryConfig>,
) -> Result<(String, SrSettings), BuildError> {
    let source = match &file.config.source {
        SourceConfig::Kafka(k) => Some(k),
        SourceConfig::File { .. } => None,
    };
    let brokers = brokers
        .map(str::to_string)
        .or_else(|| source.map(|k| k.brokers.clone()))
        .ok_or_else(|| {
            file.invalid("segment_changes.brokers is required when the source is not Kafka")
        })?;
    let registry = registry
        .or(source.map(|k| &k.schema_registry))
        .ok_or_else(|| {
            file.invalid("segment_changes.schema_registry is required when the source is not Kafka")
        })?;
    let settings = crate::schema::registry::settings(
        &registry.effective_url(),
        std::time::Duration::from_millis(registry.timeout_ms),
        registry.allow_http,
    )
    .map_err(|reason| file.invalid(format!("segment_changes.schema_registry: {reason}")))?;
    Ok((brokers, settings))
}

/// A producer's properties (the dead letters', the segment changes'). On the source's cluster
/// (no brokers of its own) it connects like the consumer: it takes the source's security properties; its own ones win.
/// Consumer-only properties (`PROFILE_SYNC_KAFKA_GROUP_INSTANCE_ID`, say) are left out.
pub fn producer_properties(
    file: &config::Pipeline,
    own_brokers: Option<&str>,
    own: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut merged = BTreeMap::new();
    if let (None, SourceConfig::Kafka(k)) = (own_brokers, &file.config.source) {
        merged.extend(
            config::kafka_properties(&k.properties)
                .into_iter()
                .filter(|(key, _)| {
                    key == "security.protocol"
                        || key.starts_with("sasl.")
                        || key.starts_with("ssl.")
                }),
        );
    }
    merged.extend(config::kafka_client_properties(own));
    merged
}

/// The brokers a Kafka adapter uses: its own, else the Kafka source's.
pub fn kafka_brokers(file: &config::Pipeline, own: Option<&str>) -> Result<String, BuildError> {
    match (own, &file.config.source) {
        (Some(b), _) => Ok(b.to_string()),
        (None, SourceConfig::Kafka(k)) => Ok(k.brokers.clone()),
        (None, _) => Err(file
            .invalid("dead_letter.brokers is required when the source is not Kafka")
            .into()),
    }
}

/// Opens the source: the pipeline file's, or `input` instead when given.
pub fn open_source(
    file: &config::Pipeline,
    input: Option<&Path>,
) -> Result<Box<dyn EventSource>, BuildError> {
    Ok(match &file.config.source {
        SourceConfig::File { path, format } => {
            let path = input
                .map(Path::to_path_buf)
                .unwrap_or_else(|| file.resolve(path));
            Box::new(FileSource::open(&path, *format)?)
        }
        SourceConfig::Kafka(k) => {
            if input.is_some() {
                return Err(file
                    .invalid("--input reads a file, but this pipeline's source is Kafka")
                    .into());
            }
            let registry = crate::schema::registry::settings(
                &k.schema_registry.effective_url(),
                std::time::Duration::from_millis(k.schema_registry.timeout_ms),
                k.schema_registry.allow_http,
            )
            .map_err(|reason| file.invalid(format!("schema_registry: {reason}")))?;
            Box::new(crate::sources::KafkaSource::open(
                crate::sources::KafkaSourceSettings {
                    brokers: k.brokers.clone(),
                    topics: k.topics.clone(),
                    group_id: k.group_id.clone(),
                    properties: config::kafka_properties(&k.properties),
                    linger: std::time::Duration::from_millis(k.linger_ms),
                    commit_every_events: k.commit_every_events.max(1),
                    commit_interval: std::time::Duration::from_millis(k.commit_interval_ms),
                    stop_when_idle: k.stop_when_idle_ms.map(std::time::Duration::from_millis),
                    max_event_bytes: k.max_event_bytes,
                },
                crate::schema::registry::WriterSchemas::new(registry),
            )?)
        }
    })
}

/// Everything `run` needs. Configuration problems surface here, before any event is read.
pub fn build(
    file: &config::Pipeline,
    data_dir: &Path,
    input: Option<&Path>,
) -> Result<Components, BuildError> {
    let schemas = schemas(file)?;
    let enrich = &file.config.enrich;
    let regions = RegionResolver::open(
        &file.resolve(&enrich.geoip.database),
        &enrich.geoip.residency_zones,
    )?;
    let segments = SegmentRules::compile(
        &enrich.segments,
        &file.config.privacy.purposes,
        &schemas.catalog,
    )?;
    let profiles = open_profiles(file, data_dir, &schemas, IndexAccess::Write)?;
    let source = open_source(file, input)?;
    let dead_letters = open_dead_letters(file, data_dir)?;
    let segment_changes = open_placed_segment_changes(file, data_dir, profiles.placement.as_ref())?;
    let pipeline = Pipeline {
        decoder: Decoder::new(schemas.profile_change.clone()),
        enricher: Enricher { regions, segments },
        protector: Protector::new(profiles.keys.clone(), &schemas.catalog),
        sealer: LetterSealer::new(profiles.keys.clone(), profiles.store.clone()),
        profiles,
        dead_letters,
        segment_changes,
        privacy: file.config.privacy.clone(),
        health: Arc::default(),
    };
    Ok(Components { pipeline, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(dead_letter: &str) -> config::Pipeline {
        let local = std::fs::read_to_string("pipelines/kafka-local.yaml").unwrap();
        let text = local
            .replace(
                "passed through as is\n",
                "passed through as is\n    security.protocol: SASL_SSL\n    sasl.mechanism: SCRAM-SHA-512\n    ssl.ca.location: /etc/ca.pem\n",
            )
            .replace(
                "dead_letter:\n  type: kafka\n  topic: profile-changes-dlq",
                dead_letter,
            );
        config::Pipeline::parse(Path::new("pipelines/kafka-local.yaml"), &text).unwrap()
    }

    fn dead_letters(file: &config::Pipeline) -> BTreeMap<String, String> {
        let config::DeadLetterConfig::Kafka {
            brokers,
            properties,
            ..
        } = &file.config.dead_letter
        else {
            panic!("kafka dead letters expected")
        };
        producer_properties(file, brokers.as_deref(), properties)
    }

    #[test]
    fn dead_letters_on_the_source_cluster_connect_like_the_consumer() {
        let file = pipeline(
            "dead_letter:\n  type: kafka\n  topic: dlq\n  properties:\n    sasl.mechanism: PLAIN\n    linger.ms: \"5\"",
        );
        let props = dead_letters(&file);
        assert_eq!(props["security.protocol"], "SASL_SSL");
        assert_eq!(props["ssl.ca.location"], "/etc/ca.pem");
        assert_eq!(props["sasl.mechanism"], "PLAIN", "its own properties win");
        assert_eq!(props["linger.ms"], "5");
        assert!(
            !props.contains_key("session.timeout.ms"),
            "consumer settings stay with the consumer"
        );
    }

    #[test]
    fn credentials_in_the_opensearch_url_are_refused_without_quoting_them() {
        let local = std::fs::read_to_string("pipelines/opensearch-local.yaml").unwrap();
        let text = local.replace(
            "url: http://127.0.0.1:9200",
            "url: https://analyst:hunter2@search.example.com",
        );
        assert_ne!(text, local);
        let file =
            config::Pipeline::parse(Path::new("pipelines/opensearch-local.yaml"), &text).unwrap();
        let schemas = schemas(&file).unwrap();
        let Err(e) = opensearch_settings(&file, &schemas) else {
            panic!("credentials in index.url must be refused")
        };
        let said = e.to_string();
        assert!(said.contains("index.url carries credentials"), "{said}");
        assert!(!said.contains("hunter2"), "{said}");
    }

    #[test]
    fn dead_letters_on_another_cluster_take_only_their_own_properties() {
        let file = pipeline("dead_letter:\n  type: kafka\n  topic: dlq\n  brokers: other:9092");
        assert!(!dead_letters(&file).contains_key("security.protocol"));
    }

    #[test]
    fn the_dead_letter_producer_never_takes_consumer_only_properties() {
        // As PROFILE_SYNC_KAFKA_GROUP_INSTANCE_ID would add them: librdkafka warned about each.
        let file = pipeline(
            "dead_letter:\n  type: kafka\n  topic: dlq\n  properties:\n    group.instance.id: worker-0\n    queued.max.messages.kbytes: \"1024\"\n    acks: all",
        );
        let props = dead_letters(&file);
        assert!(!props.contains_key("group.instance.id"), "{props:?}");
        assert!(
            !props.contains_key("queued.max.messages.kbytes"),
            "{props:?}"
        );
        assert_eq!(props["acks"], "all", "producer properties stay");
    }
}
