//! `profile-sync segments tail|backfill`: the segment change feed from a terminal. `tail`
//! prints the feed as JSON lines (the embedded file, or the topic decoded with its registered
//! schemas); `backfill` writes every stored user's current membership to the feed, marked
//! `SNAPSHOT`, as a starting point for a new consumer.

use super::{data_dir, pipeline_file, usage, Failure};
use crate::config::{self, SegmentChangesConfig};
use crate::segment_changes::{read_lines, SegmentChange};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Print the segment changes as JSON lines, from the first; then follow new ones.
    Tail(Tail),
    /// Write every stored user's current segments to the feed, marked SNAPSHOT.
    Backfill(Target),
}

#[derive(clap::Args)]
struct Target {
    /// Pipeline file (default: pipelines/local.yaml).
    #[arg(long)]
    pipeline: Option<PathBuf>,
    /// Where the embedded adapters keep their files (default: the pipeline file's data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct Tail {
    #[command(flatten)]
    target: Target,
    /// Stop at the end of what is there instead of waiting for more.
    #[arg(long)]
    no_follow: bool,
    /// With residency zones: this zone's feed (default: the pipeline's, which holds every
    /// zone's changes but those of zones with a feed of their own).
    #[arg(long)]
    zone: Option<String>,
}

pub async fn run(args: Args) -> Result<(), Failure> {
    match args.action {
        Action::Tail(t) => tail(t).await,
        Action::Backfill(t) => backfill(t).await,
    }
}

fn feed_of(file: &config::Pipeline) -> Result<&SegmentChangesConfig, Failure> {
    file.config.segment_changes.as_ref().ok_or_else(|| {
        usage(anyhow::anyhow!(
            "{} has no segment_changes section: the segment change feed is off (see pipelines/local.yaml for one)",
            file.path.display()
        ))
    })
}

async fn tail(args: Tail) -> Result<(), Failure> {
    let file = pipeline_file(args.target.pipeline.as_deref())?;
    let file = match &args.zone {
        None => file,
        Some(zone) => crate::pipeline::zone_file(&file, Some(zone)).map_err(usage)?,
    };
    match feed_of(&file)? {
        SegmentChangesConfig::File { path } => {
            let path = file.data_path(&data_dir(&file, args.target.data_dir.as_deref()), path);
            tail_file(path, args.no_follow).await
        }
        SegmentChangesConfig::Kafka {
            topic,
            brokers,
            schema_registry,
            properties,
        } => {
            let (brokers, registry) = crate::pipeline::segment_topic_endpoints(
                &file,
                brokers.as_deref(),
                schema_registry.as_ref(),
            )
            .map_err(usage)?;
            let (reader, _) =
                crate::segment_changes::load_schema(&file.resolve(&file.config.schemas))
                    .map_err(|e| usage(anyhow::anyhow!(e)))?;
            tail_topic(
                topic,
                &brokers,
                registry,
                properties,
                &reader,
                args.no_follow,
            )
            .await
        }
    }
}

/// Prints the complete lines of the file as they come (a line still being written waits).
async fn tail_file(path: PathBuf, no_follow: bool) -> Result<(), Failure> {
    let mut f = loop {
        match std::fs::File::open(&path) {
            Ok(f) => break f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !no_follow => {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            Err(e) => {
                return Err(usage(anyhow::anyhow!(
                    "cannot read the segment change file {}: {e} (has the pipeline run with the feed on?)",
                    path.display()
                )))
            }
        }
    };
    let mut pending = String::new();
    let mut line = 1;
    let stdout = std::io::stdout();
    loop {
        let mut chunk = String::new();
        f.read_to_string(&mut chunk)?;
        pending.push_str(&chunk);
        if let Some(end) = pending.rfind('\n') {
            let complete: String = pending.drain(..=end).collect();
            let changes = read_lines(&complete, line)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            line += complete.matches('\n').count();
            let mut out = stdout.lock();
            for change in changes {
                writeln!(out, "{}", change.to_line())?;
            }
            out.flush()?;
        }
        if no_follow {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Reads every partition of the topic from its start without joining a group (nothing is
/// committed), decoding each value with the schema its id names in the registry.
async fn tail_topic(
    topic: &str,
    brokers: &str,
    registry: schema_registry_converter::async_impl::schema_registry::SrSettings,
    properties: &std::collections::BTreeMap<String, String>,
    reader: &apache_avro::Schema,
    no_follow: bool,
) -> Result<(), Failure> {
    let writers = crate::schema::registry::WriterSchemas::new(registry);
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", "profile-sync-segments-tail")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true");
    for (k, v) in config::kafka_client_properties(properties) {
        config.set(k, v);
    }
    let consumer: BaseConsumer = config
        .create()
        .map_err(|e| usage(anyhow::anyhow!("cannot create a Kafka consumer: {e}")))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| anyhow::anyhow!("no metadata for topic {topic} from {brokers}: {e}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(usage(anyhow::anyhow!(
            "segment change topic `{topic}` does not exist on {brokers}"
        )));
    }
    let mut assignment = TopicPartitionList::new();
    for p in &partitions {
        assignment.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut at_end = std::collections::HashSet::new();
    let stdout = std::io::stdout();
    loop {
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = match message {
            Ok(m) => m,
            Err(rdkafka::error::KafkaError::PartitionEOF(p)) => {
                at_end.insert(p);
                if no_follow && at_end.len() == partitions.len() {
                    return Ok(());
                }
                continue;
            }
            Err(e) => return Err(anyhow::anyhow!("reading {topic}: {e}").into()),
        };
        at_end.remove(&message.partition());
        let bytes = message.payload().unwrap_or_default();
        let id = crate::schema::registry::schema_id(bytes).map_err(|e| {
            anyhow::anyhow!("{topic}/{}@{}: {e}", message.partition(), message.offset())
        })?;
        let writer = writers
            .get(id)
            .await
            .map_err(|e| anyhow::anyhow!("schema id {id}: {e:?}"))?;
        let change = SegmentChange::from_avro(&bytes[5..], &writer, reader).map_err(|e| {
            anyhow::anyhow!("{topic}/{}@{}: {e}", message.partition(), message.offset())
        })?;
        let mut out = stdout.lock();
        writeln!(out, "{}", change.to_line())?;
        out.flush()?;
    }
}

/// Pages through the store and writes one snapshot per live profile.
async fn backfill(args: Target) -> Result<(), Failure> {
    let file = pipeline_file(args.pipeline.as_deref())?;
    feed_of(&file)?;
    let data_dir = data_dir(&file, args.data_dir.as_deref());
    let store = crate::pipeline::open_store(&file, &data_dir).map_err(usage)?;
    let sink = crate::pipeline::open_segment_changes(&file, &data_dir)
        .map_err(usage)?
        .expect("the feed is on");
    let mut cursor = None;
    let mut written = 0;
    loop {
        let (page, next) = store.scan(cursor, 1000).await?;
        let snapshots: Vec<SegmentChange> = page
            .iter()
            .filter_map(|p| {
                let record = p.record.as_ref()?;
                Some(SegmentChange::snapshot(
                    p.user_id,
                    p.version,
                    p.updated_at,
                    &record.segments,
                    Some(&record.region.residency_zone),
                ))
            })
            .collect();
        written += snapshots.len();
        sink.send(snapshots).await?;
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    println!(
        "segments backfill: {written} snapshots to {}",
        sink.describe()
    );
    Ok(())
}
