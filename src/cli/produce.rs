//! `profile-sync produce`: generated events to a Kafka topic in the Confluent wire format, for
//! demos, tests and benchmarks. Registers the schema first (subject `<topic>-value`). The
//! events are exactly those `generate --format jsonl` writes for the same seed, count and
//! ratio; malformed ones are sent as their raw bytes (no wire-format header).

use super::kafka_args::{client_config, ensure_topics, kafka_source, registry};
use super::{usage, Failure};
use crate::generate::{EventGenerator, GeneratedEvent};
use crate::schema::registry::{frame, register, value_subject};
use apache_avro::types::Value;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// How many events to send.
    #[arg(long)]
    count: u64,
    /// Events per second (default: as fast as the broker takes them).
    #[arg(long)]
    rate: Option<f64>,
    /// Share of events that must be dead-lettered (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0)]
    invalid_ratio: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Topic (default: the pipeline file's first source topic).
    #[arg(long)]
    topic: Option<String>,
    /// Partitions of the topic if it has to be created.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Pipeline file with a Kafka source (default: pipelines/kafka-local.yaml).
    #[arg(long)]
    pipeline: Option<PathBuf>,
}

/// Sends in chunks, awaiting each, so the producer queue (and memory) stays bounded.
const CHUNK: usize = 5_000;

pub async fn run(args: Args) -> Result<(), Failure> {
    if !(0.0..=1.0).contains(&args.invalid_ratio) {
        return Err(usage(anyhow::anyhow!(
            "--invalid-ratio must be between 0.0 and 1.0"
        )));
    }
    if args.rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
        return Err(usage(anyhow::anyhow!("--rate must be more than 0")));
    }
    let k = kafka_source(args.pipeline.as_deref())?;
    let topic = match args.topic.clone().or_else(|| k.topics.first().cloned()) {
        Some(t) => t,
        None => return Err(usage(anyhow::anyhow!("no topic: pass --topic"))),
    };
    let text = include_str!("../../schemas/profile_change.avsc");
    let schema = apache_avro::Schema::parse_str(text)?;
    let settings = registry(&k)?;
    let schema_id = register(&settings, &value_subject(&topic), &schema, text)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "{e}. Is the schema registry at {} running?",
                k.schema_registry.effective_url()
            )
        })?;

    let mut config = client_config(&k);
    ensure_topics(&config, &[(&topic, args.partitions)]).await?;
    config
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("message.timeout.ms", "60000");
    let producer: FutureProducer = config
        .create()
        .map_err(|e| usage(anyhow::anyhow!("cannot create the Kafka producer: {e}")))?;

    let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&schema).build()?;
    let mut gen = EventGenerator::new(args.seed, args.count, args.invalid_ratio, true);
    let (mut valid, mut invalid) = (0u64, 0u64);
    let started = Instant::now();
    let mut sent = 0u64;
    // With a rate, send about ten chunks a second so the pace is smooth.
    let chunk = args
        .rate
        .map(|r| ((r / 10.0) as usize).clamp(1, CHUNK))
        .unwrap_or(CHUNK);
    while sent < args.count {
        let n = chunk.min((args.count - sent) as usize);
        let mut messages: Vec<(Option<Vec<u8>>, Vec<u8>)> = Vec::with_capacity(n);
        for _ in 0..n {
            match gen.next_event() {
                GeneratedEvent::Record { value, valid: ok } => {
                    let key = user_key(&value);
                    let mut datum = Vec::new();
                    writer.write_value(&mut datum, value)?;
                    messages.push((key, frame(schema_id, &datum)));
                    if ok {
                        valid += 1
                    } else {
                        invalid += 1
                    }
                }
                GeneratedEvent::Malformed(bytes) => {
                    messages.push((None, bytes));
                    invalid += 1;
                }
            }
        }
        let sends = messages.iter().map(|(key, value)| {
            let mut record = FutureRecord::to(&topic).payload(value);
            if let Some(key) = key {
                record = record.key(key);
            }
            producer.send(record, Duration::from_secs(60))
        });
        for result in futures::future::join_all(sends).await {
            if let Err((e, _)) = result {
                return Err(
                    anyhow::anyhow!("cannot produce to {topic} on {}: {e}", k.brokers).into(),
                );
            }
        }
        sent += n as u64;
        if let Some(rate) = args.rate {
            let due = Duration::from_secs_f64(sent as f64 / rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "topic": topic, "schema_id": schema_id, "sent": sent,
            "valid": valid, "invalid": invalid, "users": gen.user_count(),
            "elapsed_seconds": (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        })
    );
    Ok(())
}

/// The message key: the user id (so one user's events share a partition, in order).
fn user_key(value: &Value) -> Option<Vec<u8>> {
    let Value::Record(fields) = value else {
        return None;
    };
    fields
        .iter()
        .find_map(|(name, v)| match (name.as_str(), v) {
            ("user_id", Value::Uuid(u)) => Some(u.to_string().into_bytes()),
            ("user_id", Value::String(s)) => Some(s.clone().into_bytes()),
            _ => None,
        })
}
