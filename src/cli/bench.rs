//! `profile-sync bench`: generated events through the whole embedded pipeline (file source →
//! stages → SQLite, tantivy), reporting what BENCHMARKS.md tracks. Two phases, each on a fresh
//! data folder:
//!
//! - throughput: a backlog of `--events` read as fast as the pipeline goes (events/s, peak
//!   and sampled RSS, key-provider calls, bytes per event on each sink);
//! - latency: events offered at a fixed `--rate` by a paced source; every `--poll-ms` the worker
//!   takes what has arrived (at most a batch). An event's latency runs from its scheduled
//!   arrival to the acknowledgement of the batch that holds it (store written, index committed
//!   on its cadence, dead letters durable), so queueing counts when the pipeline falls behind.
//!
//! `--smoke` is a small run for CI: it proves the harness works, and its numbers mean nothing.

use super::{pipeline_file, usage, Failure, Output};
use crate::bench::{
    disk_bytes, generate_avro, proc_status_bytes, process_cpu_seconds, quantile, reset_peak_rss,
    ScratchDir,
};
use crate::config::{IndexConfig, StoreConfig};
use crate::pipeline::{build, Counts};
use crate::sources::{Acknowledger, EventSource, SourceError, SourceRecord};
use async_trait::async_trait;
use serde_json::json;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// Pipeline file (default: pipelines/local.yaml). Its source is replaced by generated events.
    #[arg(long)]
    pipeline: Option<PathBuf>,
    /// Events in the throughput phase's backlog.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Offered rate of the latency phase, events per second.
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// Length of the latency phase.
    #[arg(long, default_value_t = 10.0)]
    latency_seconds: f64,
    /// How often the worker polls for arrived events in the latency phase.
    #[arg(long, default_value_t = 10)]
    poll_ms: u64,
    /// Leave the pipeline file's segment change feed out (to measure what the feed costs).
    #[arg(long)]
    without_segment_feed: bool,
    /// A few seconds' run for CI (2,000 events, 1 s at 2,000 events/s): checks the harness only.
    #[arg(long)]
    smoke: bool,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

pub async fn run(mut args: Args) -> Result<(), Failure> {
    if args.smoke {
        args.events = 2_000;
        args.rate = 2_000;
        args.latency_seconds = 1.0;
    }
    if args.events == 0 || args.rate == 0 || args.latency_seconds <= 0.0 {
        return Err(usage(anyhow::anyhow!(
            "--events, --rate and --latency-seconds must be positive"
        )));
    }
    let mut file = pipeline_file(args.pipeline.as_deref())?;
    if args.without_segment_feed {
        file.config.segment_changes = None;
    }
    let scratch = ScratchDir::new("run")?;
    let throughput = throughput(&file, scratch.path(), args.events).await?;
    let latency = latency(&file, scratch.path(), &args).await?;
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    let report = json!({
        "smoke": args.smoke,
        "machine": {
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "cpu_model": cpu,
        },
        "throughput": throughput,
        "latency": latency,
    });
    match args.output {
        Output::Json => println!("{report}"),
        Output::Text => println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("JSON value serialises")
        ),
    }
    Ok(())
}

/// The embedded sinks' files, from the pipeline file, for their sizes.
fn sink_paths(
    file: &crate::config::Pipeline,
    data_dir: &Path,
) -> Result<(PathBuf, PathBuf), Failure> {
    match (&file.config.store, &file.config.index) {
        (StoreConfig::Sqlite { path: store }, IndexConfig::Tantivy { path: index, .. }) => {
            Ok((file.data_path(data_dir, store), file.data_path(data_dir, index)))
        }
        _ => Err(super::usage(anyhow::anyhow!(
            "bench measures the embedded sinks: use a pipeline file with `store: sqlite` and `index: tantivy`"
        ))),
    }
}

fn mb(bytes: Option<u64>) -> serde_json::Value {
    bytes.map_or(serde_json::Value::Null, |b| {
        json!((b as f64 / 1_048_576.0 * 10.0).round() / 10.0)
    })
}

async fn throughput(
    file: &crate::config::Pipeline,
    scratch: &Path,
    events: u64,
) -> Result<serde_json::Value, Failure> {
    let input = generate_avro(file, scratch, events).map_err(usage)?;
    let data_dir = scratch.join("throughput");
    let components = build(file, &data_dir, Some(&input)).map_err(usage)?;
    let pipeline = Arc::new(components.pipeline);
    let (_never, shutdown) = tokio::sync::watch::channel(false);
    let peak_reset = reset_peak_rss();
    let rss_start = proc_status_bytes("VmRSS");
    // RSS after each tenth of the backlog: flat means no growth with the events consumed.
    let mut rss_by_tenth: Vec<Option<u64>> = Vec::new();
    let cpu_start = process_cpu_seconds();
    let started = Instant::now();
    let counts = crate::runtime::run(
        pipeline.clone(),
        components.source,
        crate::runtime::Settings::of(file),
        shutdown,
        |c: &Counts| {
            while (rss_by_tenth.len() as u64 + 1) * events <= c.read * 10 {
                rss_by_tenth.push(proc_status_bytes("VmRSS"));
            }
        },
    )
    .await?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds()
        .zip(cpu_start)
        .map(|(end, start)| end - start);
    let keys = &pipeline.profiles.keys;
    let calls = keys.provider().calls();
    let (hits, misses) = keys.cache_stats();
    drop(pipeline);
    let (store, index) = sink_paths(file, &data_dir)?;
    let store_bytes = disk_bytes(&store)
        + disk_bytes(&PathBuf::from(format!("{}-wal", store.display())))
        + disk_bytes(&PathBuf::from(format!("{}-shm", store.display())));
    let index_bytes = disk_bytes(&index);
    let per_event = |b: u64| (b as f64 / counts.read.max(1) as f64 * 10.0).round() / 10.0;
    Ok(json!({
        "events": counts.read,
        "written": counts.written,
        "stale": counts.stale,
        "dead_lettered": counts.dead_lettered,
        "seconds": (elapsed * 1000.0).round() / 1000.0,
        "events_per_second": (counts.read as f64 / elapsed).round(),
        "cpu_seconds": cpu.map(|c| (c * 100.0).round() / 100.0),
        "events_per_cpu_second": cpu.filter(|c| *c > 0.0).map(|c| (counts.read as f64 / c).round()),
        "rss_mb": {
            "peak": if peak_reset { mb(proc_status_bytes("VmHWM")) } else { serde_json::Value::Null },
            "peak_includes_setup": !peak_reset,
            "start": mb(rss_start),
            "by_tenth_of_backlog": rss_by_tenth.into_iter().map(mb).collect::<Vec<_>>(),
        },
        "key_provider": {
            "calls": calls,
            "calls_per_100k_events": (calls as f64 * 100_000.0 / counts.read.max(1) as f64).round(),
            "cache_hits": hits,
            "cache_misses": misses,
        },
        "sink_bytes_per_event": {
            "sqlite": per_event(store_bytes),
            "tantivy": per_event(index_bytes),
        },
    }))
}

async fn latency(
    file: &crate::config::Pipeline,
    scratch: &Path,
    args: &Args,
) -> Result<serde_json::Value, Failure> {
    let total = (args.rate as f64 * args.latency_seconds).ceil().max(1.0) as usize;
    let dir = scratch.join("latency");
    std::fs::create_dir_all(&dir)?;
    let input = generate_avro(file, &dir, total as u64).map_err(usage)?;
    let mut components = build(file, &dir.join("data"), Some(&input)).map_err(usage)?;
    let mut records: Vec<SourceRecord> = Vec::with_capacity(total);
    loop {
        let batch = components.source.next_batch(total).await?;
        if batch.is_empty() {
            break;
        }
        records.extend(batch);
    }
    let events = records.len();
    let source = PacedSource::new(records, args.rate, Duration::from_millis(args.poll_ms));
    let acks = source.acks.clone();
    let (_never, shutdown) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    crate::runtime::run(
        Arc::new(components.pipeline),
        Box::new(source),
        crate::runtime::Settings::of(file),
        shutdown,
        |_| {},
    )
    .await?;
    let elapsed = started.elapsed().as_secs_f64();
    let (mut latencies_ms, batches) = {
        let acks = acks
            .lock()
            .map_err(|_| usage(anyhow::anyhow!("poisoned")))?;
        (acks.latencies_ms.clone(), acks.batches)
    };
    latencies_ms.sort_by(f64::total_cmp);
    let ms = |q: f64| (quantile(&latencies_ms, q) * 100.0).round() / 100.0;
    Ok(json!({
        "offered_events_per_second": args.rate,
        "achieved_events_per_second": (events as f64 / elapsed).round(),
        "events": events,
        "batches": batches,
        "poll_ms": args.poll_ms,
        "latency_ms": { "p50": ms(0.50), "p95": ms(0.95), "p99": ms(0.99), "max": ms(1.0) },
    }))
}

/// Generated records that arrive at a fixed rate, from the first fetch on. A batch is what
/// has arrived when the worker asks (at most `max`); with nothing arrived it waits for the next
/// event and then `poll` more. Acknowledgements record each event's latency.
struct PacedSource {
    records: VecDeque<SourceRecord>,
    /// Index of the next record to hand out.
    next: usize,
    interval: f64,
    poll: Duration,
    acks: Arc<Mutex<PacedAcks>>,
}

#[derive(Default)]
struct PacedAcks {
    started: Option<Instant>,
    interval: f64,
    /// Batches handed out and not acknowledged: number, first and end record index.
    handed_out: VecDeque<(u64, usize, usize)>,
    batches: u64,
    latencies_ms: Vec<f64>,
}

impl PacedSource {
    fn new(records: Vec<SourceRecord>, rate: u64, poll: Duration) -> Self {
        let interval = 1.0 / rate as f64;
        Self {
            records: records.into(),
            next: 0,
            interval,
            poll,
            acks: Arc::new(Mutex::new(PacedAcks {
                interval,
                ..PacedAcks::default()
            })),
        }
    }
}

struct PacedAcknowledger(Arc<Mutex<PacedAcks>>);

impl Acknowledger for PacedAcknowledger {
    fn acknowledge(&self, through: u64) -> Result<(), SourceError> {
        let mut acks = self.0.lock().map_err(|_| SourceError::Read {
            what: "paced source".into(),
            reason: "poisoned".into(),
        })?;
        let Some(started) = acks.started else {
            return Ok(());
        };
        let now = started.elapsed().as_secs_f64();
        while acks.handed_out.front().is_some_and(|b| b.0 <= through) {
            let (_, first, end) = acks.handed_out.pop_front().expect("front exists");
            let interval = acks.interval;
            acks.latencies_ms
                .extend((first..end).map(|i| (now - i as f64 * interval) * 1000.0));
        }
        Ok(())
    }
}

#[async_trait]
impl EventSource for PacedSource {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<SourceRecord>, SourceError> {
        if self.records.is_empty() {
            return Ok(Vec::new());
        }
        let started = *self
            .acks
            .lock()
            .map_err(|_| SourceError::Read {
                what: "paced source".into(),
                reason: "poisoned".into(),
            })?
            .started
            .get_or_insert_with(Instant::now);
        loop {
            let now = started.elapsed().as_secs_f64();
            let arrived = (now / self.interval).floor() as usize + 1;
            if arrived > self.next {
                let n = (arrived - self.next).min(max).min(self.records.len());
                let batch: Vec<SourceRecord> = self.records.drain(..n).collect();
                let mut acks = self.acks.lock().map_err(|_| SourceError::Read {
                    what: "paced source".into(),
                    reason: "poisoned".into(),
                })?;
                acks.batches += 1;
                let number = acks.batches;
                acks.handed_out
                    .push_back((number, self.next, self.next + n));
                self.next += n;
                return Ok(batch);
            }
            let due = self.next as f64 * self.interval;
            let wait = (due - now).max(0.0);
            tokio::time::sleep(Duration::from_secs_f64(wait) + self.poll).await;
        }
    }

    fn acknowledger(&self) -> Arc<dyn Acknowledger> {
        Arc::new(PacedAcknowledger(self.acks.clone()))
    }
}
