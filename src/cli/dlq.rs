//! The dead letters, for the people who fix what was rejected.
//!
//! `dlq replay --from TOPIC` re-publishes dead-lettered events to the topic they came from (its
//! `__connect.errors.topic` header, or `--to`) after a fix, with their original key and
//! headers and the value opened (the `__connect.errors.*` and sealing headers are dropped).
//! Letters of erased users, and those whose dead-letter key expired, are not replayed. It reads
//! the dead-letter topic from the start up to its current end and commits nothing, so it can
//! be run again.
//!
//! `dlq show` prints the dead-letter file's letters; `--reveal --reason` opens their payloads
//! (audited for each user, like `get --reveal`).

use super::get::Reveal;
use super::kafka_args::{client_config, kafka_source};
use super::privacy::Target;
use super::{data_dir, pipeline_file, usage, Failure};
use crate::config::DeadLetterConfig;
use crate::dead_letter::{read_letters, Sealing, HEADER_PREFIX, SEALING_HEADER, VALUE_OMITTED};
use crate::pipeline::{open_profiles, schemas, zone_file, IndexAccess};
use crate::privacy::Profiles;
use crate::stages::seal::{LetterSealer, OpenError};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Re-publish dead letters to their source topic.
    Replay(Replay),
    /// Print the letters of the pipeline's dead-letter file.
    Show(Show),
}

#[derive(clap::Args)]
struct Show {
    /// `--reveal` opens each payload (PII), audited for each user.
    #[command(flatten)]
    reveal: Reveal,
    /// The pipeline file (default: pipelines/local.yaml) and data folder.
    #[command(flatten)]
    target: Target,
    /// With residency zones: the letters in this zone's dead-letter sink (default: the
    /// pipeline's, which holds every zone's without a sink of its own).
    #[arg(long)]
    zone: Option<String>,
}

#[derive(clap::Args)]
struct Replay {
    /// The dead-letter topic.
    #[arg(long)]
    from: String,
    /// Publish here instead of each letter's `__connect.errors.topic`.
    #[arg(long)]
    to: Option<String>,
    /// Only letters whose error header matches, e.g. `stage=decode`, `class.name=schema`
    /// (repeatable: all must match).
    #[arg(long)]
    filter: Vec<String>,
    /// Pipeline file with a Kafka source (default: pipelines/kafka-local.yaml); its store and
    /// keys open the sealed values.
    #[arg(long)]
    pipeline: Option<PathBuf>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

pub async fn run(args: Args) -> Result<(), Failure> {
    match args.action {
        Action::Replay(args) => replay(args).await,
        Action::Show(args) => show(args).await,
    }
}

/// The store and keys of a pipeline file, and the sealer that opens its dead letters.
fn open_keys(
    pipeline: Option<&std::path::Path>,
    given_dir: Option<&std::path::Path>,
) -> Result<(crate::config::Pipeline, Profiles, LetterSealer), Failure> {
    let file = pipeline_file(pipeline)?;
    let dir = data_dir(&file, given_dir);
    let schemas = schemas(&file).map_err(usage)?;
    let profiles = open_profiles(&file, &dir, &schemas, IndexAccess::Read).map_err(usage)?;
    let sealer = LetterSealer::new(profiles.keys.clone(), profiles.store.clone());
    Ok((file, profiles, sealer))
}

async fn show(args: Show) -> Result<(), Failure> {
    let actor = args.reveal.actor()?;
    let (file, profiles, sealer) = open_keys(
        args.target.pipeline.as_deref(),
        args.target.data_dir.as_deref(),
    )?;
    let sink = match &args.zone {
        None => file.clone(),
        Some(zone) => zone_file(&file, Some(zone)).map_err(usage)?,
    };
    let letters = match &sink.config.dead_letter {
        DeadLetterConfig::File { path, .. } => {
            let dir = data_dir(&file, args.target.data_dir.as_deref());
            let path = file.data_path(&dir, path);
            if !path.exists() {
                return Err(usage(anyhow::anyhow!(
                    "{} does not exist: no event has been dead-lettered yet",
                    path.display()
                )));
            }
            read_letters(&path)?
        }
        DeadLetterConfig::Kafka { topic, .. } => {
            return Err(usage(anyhow::anyhow!(
                "the dead letters of {} go to Kafka topic {topic}: read them there, or replay them with `dlq replay --from {topic}`",
                file.path.display()
            )))
        }
    };
    let mut audited = std::collections::HashSet::new();
    for letter in letters {
        let mut fields = letter.fields;
        fields.remove("sealed_payload_base64");
        if args.reveal.wanted {
            if let Sealing::User { user_id, .. } = letter.sealing {
                // The audit record comes first: nothing is shown that was not recorded.
                if audited.insert(user_id) {
                    profiles
                        .audit(
                            &actor,
                            "reveal_dead_letter",
                            user_id,
                            vec!["payload".into()],
                        )
                        .await?;
                }
            }
            let (key, value) = match sealer.open(letter.sealing, &letter.payload).await {
                Ok(bytes) => match String::from_utf8(bytes) {
                    Ok(text) => ("payload", serde_json::Value::String(text)),
                    Err(e) => (
                        "payload_base64",
                        serde_json::Value::String(STANDARD.encode(e.into_bytes())),
                    ),
                },
                Err(OpenError::Keys(e)) => return Err(Failure::Runtime(e.into())),
                Err(e) => ("unreadable", serde_json::Value::String(e.to_string())),
            };
            fields.insert(key.into(), value);
        }
        println!("{}", serde_json::Value::Object(fields));
    }
    Ok(())
}

async fn replay(args: Replay) -> Result<(), Failure> {
    let mut filters = Vec::new();
    for f in &args.filter {
        let Some((k, v)) = f.split_once('=') else {
            return Err(usage(anyhow::anyhow!(
                "--filter {f:?} is not NAME=VALUE (e.g. stage=decode)"
            )));
        };
        filters.push((format!("{HEADER_PREFIX}{k}"), v.to_string()));
    }
    let k = kafka_source(args.pipeline.as_deref())?;
    let path = args
        .pipeline
        .clone()
        .unwrap_or_else(|| PathBuf::from(super::kafka_args::KAFKA_PIPELINE));
    let (_, _, sealer) = open_keys(Some(&path), args.data_dir.as_deref())?;
    let base = client_config(&k);
    let mut consumer_config = base.clone();
    consumer_config
        .set("group.id", "profile-sync-dlq-replay")
        .set("enable.auto.commit", "false");
    let consumer: StreamConsumer = consumer_config
        .create()
        .map_err(|e| usage(anyhow::anyhow!("cannot create a Kafka consumer: {e}")))?;
    let metadata = consumer
        .fetch_metadata(Some(&args.from), Duration::from_secs(10))
        .map_err(|e| anyhow::anyhow!("cannot read metadata of {}: {e}", args.from))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(usage(anyhow::anyhow!(
            "dead-letter topic {} does not exist or has no partitions",
            args.from
        )));
    }
    let mut tpl = TopicPartitionList::new();
    let mut remaining = 0i64;
    let mut ends = std::collections::HashMap::new();
    for p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(&args.from, *p, Duration::from_secs(10))
            .map_err(|e| anyhow::anyhow!("cannot read offsets of {}: {e}", args.from))?;
        if high > low {
            tpl.add_partition_offset(&args.from, *p, Offset::Offset(low))?;
            ends.insert(*p, high);
            remaining += high - low;
        }
    }
    let producer: FutureProducer = {
        let mut c = base.clone();
        c.set("acks", "all");
        c.create()
            .map_err(|e| usage(anyhow::anyhow!("cannot create a Kafka producer: {e}")))?
    };
    let (mut replayed, mut skipped, mut erased) = (0u64, 0u64, 0u64);
    // Letters whose value was too large to dead-letter: where to read it, at the source.
    let mut omitted: Vec<String> = Vec::new();
    if remaining > 0 {
        consumer.assign(&tpl)?;
    }
    while !ends.is_empty() {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .map_err(|_| anyhow::anyhow!("no message from {} for 30 s", args.from))??;
        if ends
            .get(&m.partition())
            .is_some_and(|end| m.offset() + 1 >= *end)
        {
            ends.remove(&m.partition());
        }
        let header = |name: &str| -> Option<String> {
            m.headers().and_then(|h| {
                h.iter()
                    .find(|x| x.key == name)
                    .and_then(|x| x.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
        };
        if !filters.iter().all(|(k, v)| header(k).as_deref() == Some(v)) {
            skipped += 1;
            continue;
        }
        if header(&format!("{HEADER_PREFIX}{VALUE_OMITTED}")).is_some() {
            omitted.push(header(&format!("{HEADER_PREFIX}position")).unwrap_or_default());
            continue;
        }
        let Some(target) = args
            .to
            .clone()
            .or_else(|| header(&format!("{HEADER_PREFIX}topic")))
        else {
            skipped += 1;
            continue;
        };
        // A letter from before the values were sealed has no sealing header: its value is the
        // event as it was.
        let value = match header(SEALING_HEADER) {
            None => m.payload().unwrap_or_default().to_vec(),
            Some(text) => {
                let sealing: Sealing = text.parse().map_err(|e: String| {
                    anyhow::anyhow!("{}@{}: {e}", m.partition(), m.offset())
                })?;
                match sealer.open(sealing, m.payload().unwrap_or_default()).await {
                    Ok(bytes) => bytes,
                    Err(OpenError::Withheld | OpenError::Shredded) => {
                        erased += 1;
                        continue;
                    }
                    Err(OpenError::Keys(e)) => return Err(Failure::Runtime(e.into())),
                    Err(e @ OpenError::Refused(_)) => {
                        return Err(Failure::Runtime(anyhow::anyhow!(
                            "the dead letter at {}@{} {e}",
                            m.partition(),
                            m.offset()
                        )))
                    }
                }
            }
        };
        let mut headers = OwnedHeaders::new();
        if let Some(h) = m.headers() {
            for x in h
                .iter()
                .filter(|x| !x.key.starts_with(HEADER_PREFIX) && x.key != SEALING_HEADER)
            {
                headers = headers.insert(Header {
                    key: x.key,
                    value: x.value,
                });
            }
        }
        let mut record = FutureRecord::to(&target).payload(&value).headers(headers);
        if let Some(key) = m.key() {
            record = record.key(key);
        }
        producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("cannot publish to {target}: {e}"))?;
        replayed += 1;
    }
    println!(
        "{}",
        serde_json::json!({
            "from": args.from,
            "replayed": replayed,
            "skipped": skipped,
            "not_replayed_erased_or_expired": erased,
            "value_omitted": omitted,
        })
    );
    Ok(())
}
