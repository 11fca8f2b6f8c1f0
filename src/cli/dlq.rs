//! `profile-sync dlq replay --from TOPIC`: re-publishes dead-lettered events to the topic they
//! came from (its `__connect.errors.topic` header, or `--to`) after a fix, with their original
//! key, value and headers (the `__connect.errors.*` headers are dropped). Reads the dead-letter
//! topic from the start up to its current end; it commits nothing, so it can be run again.

use super::kafka_args::{client_config, kafka_source};
use super::{usage, Failure};
use crate::dead_letter::{HEADER_PREFIX, VALUE_OMITTED};
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
    /// Pipeline file with a Kafka source (default: pipelines/kafka-local.yaml).
    #[arg(long)]
    pipeline: Option<PathBuf>,
}

pub async fn run(args: Args) -> Result<(), Failure> {
    let Action::Replay(args) = args.action;
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
    let (mut replayed, mut skipped) = (0u64, 0u64);
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
        let mut headers = OwnedHeaders::new();
        if let Some(h) = m.headers() {
            for x in h.iter().filter(|x| !x.key.starts_with(HEADER_PREFIX)) {
                headers = headers.insert(Header {
                    key: x.key,
                    value: x.value,
                });
            }
        }
        let mut record = FutureRecord::to(&target)
            .payload(m.payload().unwrap_or_default())
            .headers(headers);
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
            "value_omitted": omitted,
        })
    );
    Ok(())
}
