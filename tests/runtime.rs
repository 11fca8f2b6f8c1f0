//! The pipelined runtime on the embedded sinks (SQLite, tantivy, the dead-letter file), driven
//! from a log-like source whose committed position is what a Kafka partition's committed
//! offset would be: batches that finish out of order never move it past an unfinished batch,
//! a crash at that moment loses nothing after a restart from it, and many versions per user
//! across batches end with the highest version in both sinks.

mod common;

use async_trait::async_trait;
use profile_sync::config::Pipeline as PipelineFile;
use profile_sync::dead_letter::{DeadLetter, DeadLetterError, DeadLetterSink};
use profile_sync::pipeline::{build, Counts, StoredTogether};
use profile_sync::runtime::{self, Settings};
use profile_sync::sources::{Acknowledger, EventSource, SourceError, SourceRecord};
use proptest::prelude::*;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Records read once from a file, handed out in fixed-size batches from a start position, like
/// a partition read from its committed offset.
struct LogSource {
    records: Arc<Vec<SourceRecord>>,
    next: usize,
    batch: usize,
    commits: Arc<Commits>,
}

/// What the source was told: the committed position (records before it are done) and every
/// acknowledgement in the order it came.
#[derive(Default)]
struct Commits {
    state: Mutex<CommitState>,
}

#[derive(Default)]
struct CommitState {
    /// Batches handed out and not acknowledged: number and end position.
    handed_out: VecDeque<(u64, usize)>,
    batches: u64,
    committed: usize,
    acknowledged: Vec<u64>,
}

impl Commits {
    fn committed(&self) -> usize {
        self.state.lock().unwrap().committed
    }
}

struct LogAcks(Arc<Commits>);

impl Acknowledger for LogAcks {
    fn acknowledge(&self, through: u64) -> Result<(), SourceError> {
        let mut s = self.0.state.lock().unwrap();
        s.acknowledged.push(through);
        while s.handed_out.front().is_some_and(|(b, _)| *b <= through) {
            let (_, end) = s.handed_out.pop_front().unwrap();
            s.committed = end;
        }
        Ok(())
    }
}

#[async_trait]
impl EventSource for LogSource {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<SourceRecord>, SourceError> {
        let end = (self.next + max.min(self.batch)).min(self.records.len());
        let batch: Vec<SourceRecord> = self.records[self.next..end].to_vec();
        if !batch.is_empty() {
            let mut s = self.commits.state.lock().unwrap();
            s.batches += 1;
            let number = s.batches;
            s.handed_out.push_back((number, end));
        }
        self.next = end;
        Ok(batch)
    }

    fn acknowledger(&self) -> Arc<dyn Acknowledger> {
        Arc::new(LogAcks(self.commits.clone()))
    }
}

/// The records of a JSON-lines file, positioned `log@<index>`.
async fn read_log(file: &PipelineFile, input: &Path, data: &Path) -> Vec<SourceRecord> {
    let mut components = build(file, data, Some(input)).unwrap();
    let mut records = Vec::new();
    loop {
        let batch = components.source.next_batch(10_000).await.unwrap();
        if batch.is_empty() {
            break;
        }
        records.extend(batch);
    }
    for (i, r) in records.iter_mut().enumerate() {
        r.position = format!("log@{i}");
    }
    records
}

fn index_of(letter: &DeadLetter) -> usize {
    letter.position.trim_start_matches("log@").parse().unwrap()
}

/// The real dead-letter file behind a gate: a send holding a record in `held` waits until the
/// gate opens. Counts the sends that completed.
struct GatedLetters {
    inner: Arc<dyn DeadLetterSink>,
    held: std::ops::Range<usize>,
    open: tokio::sync::watch::Receiver<bool>,
    completed: Mutex<BTreeSet<usize>>,
}

#[async_trait]
impl DeadLetterSink for GatedLetters {
    async fn check(&self) -> Result<String, profile_sync::dead_letter::SinkProblem> {
        self.inner.check().await
    }

    async fn send(&self, letters: Vec<DeadLetter>) -> Result<(), DeadLetterError> {
        let first = letters.iter().map(index_of).min().unwrap();
        if letters.iter().any(|l| self.held.contains(&index_of(l))) {
            let mut open = self.open.clone();
            open.wait_for(|o| *o).await.unwrap();
        }
        self.inner.send(letters).await?;
        self.completed.lock().unwrap().insert(first);
        Ok(())
    }
}

fn settings(file: &PipelineFile, batch: usize) -> Settings {
    Settings {
        batch_size: batch,
        max_batches_in_flight: 4,
        ..profile_sync::runtime::Settings::of(file)
    }
}

fn local() -> PipelineFile {
    PipelineFile::load(&common::local_pipeline()).unwrap()
}

/// Waits for `done`, checking every 10 ms, failing after `limit`.
async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The dead-letter file's record indices.
fn dead_lettered(data: &Path) -> BTreeSet<usize> {
    let text = std::fs::read_to_string(data.join("dead-letter.jsonl")).unwrap_or_default();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["position"]
                .as_str()
                .unwrap()
                .trim_start_matches("log@")
                .parse()
                .unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_batch_holds_the_committed_position_and_a_crash_then_loses_nothing() {
    const BATCH: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = common::generate(dir.path(), 1200, 0.2, "jsonl", 7);
    let data = dir.path().join("data");
    let file = local();
    let records = Arc::new(read_log(&file, &input, &dir.path().join("scratch")).await);
    let invalid: BTreeSet<usize> = common::invalid_lines(&input)
        .into_iter()
        .map(|line| line - 1)
        .collect();
    assert!(
        invalid.iter().filter(|&&i| i / BATCH == 1).count() > 0,
        "batch 2 must have dead letters for this test"
    );

    // First run: batch 2's dead letters never become durable.
    let (open_tx, open) = tokio::sync::watch::channel(false);
    let mut components = build(&file, &data, Some(&input)).unwrap();
    let gated = Arc::new(GatedLetters {
        inner: components.pipeline.dead_letters.clone(),
        held: BATCH..2 * BATCH,
        open,
        completed: Mutex::new(BTreeSet::new()),
    });
    components.pipeline.dead_letters = gated.clone();
    let pipeline = Arc::new(components.pipeline);
    let alive = Arc::downgrade(&pipeline);
    let commits = Arc::new(Commits::default());
    let source = LogSource {
        records: records.clone(),
        next: 0,
        batch: BATCH,
        commits: commits.clone(),
    };
    let (_never, shutdown) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(runtime::run(
        pipeline,
        Box::new(source),
        settings(&file, BATCH),
        shutdown,
        |_: &Counts| {},
    ));
    // Batches 3, 4 and 5 finish their dead letters while batch 2's are held...
    wait_until(
        "batches after the held one have durable dead letters",
        Duration::from_secs(60),
        || {
            let done = gated.completed.lock().unwrap();
            (2..5).all(|b| done.iter().any(|&first| first / BATCH == b))
        },
    )
    .await;
    wait_until("batch 1 is committed", Duration::from_secs(60), || {
        commits.committed() >= BATCH
    })
    .await;
    // ...and the runtime gets every chance to acknowledge them wrongly: they are indexed, and
    // within the index's commit interval (1 s) a commit covers them. A wrong tracker would
    // move the position in this window; there is no event to wait for when nothing happens.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    {
        let s = commits.state.lock().unwrap();
        assert_eq!(
            s.committed, BATCH,
            "the committed position moved past unfinished batch 2 (acknowledgements: {:?})",
            s.acknowledged
        );
        assert!(
            s.acknowledged.iter().all(|&b| b == 1),
            "{:?}",
            s.acknowledged
        );
    }

    // The worker dies here (nothing is closed, nothing more is committed).
    run.abort();
    let _ = run.await;
    drop(gated);
    wait_until(
        "the dead worker's pipeline is gone",
        Duration::from_secs(30),
        || alive.strong_count() == 0,
    )
    .await;

    // Restart from the committed position with the gate open.
    drop(open_tx);
    let components = build(&file, &data, Some(&input)).unwrap();
    let restarted = Arc::new(Commits::default());
    let source = LogSource {
        records: records.clone(),
        next: commits.committed(),
        batch: BATCH,
        commits: restarted.clone(),
    };
    let (_never, shutdown) = tokio::sync::watch::channel(false);
    let counts = runtime::run(
        Arc::new(components.pipeline),
        Box::new(source),
        settings(&file, BATCH),
        shutdown,
        |_: &Counts| {},
    )
    .await
    .unwrap();
    assert_eq!(counts.read as usize, records.len() - BATCH);
    assert_eq!(
        counts.read,
        counts.written + counts.stale + counts.dead_lettered
    );
    assert_eq!(restarted.committed(), records.len());

    // Nothing lost: every user at the highest version of the file, every invalid event in the
    // dead-letter file. Read straight from the files.
    let stored = common::scenarios::sqlite_state(&data.join("profiles.sqlite"));
    let expected = common::expected_state(&input);
    assert_eq!(stored.len(), expected.len());
    for (user, e) in &expected {
        assert_eq!(
            stored.get(user),
            Some(&(e.version, e.deleted)),
            "user {user}"
        );
    }
    let letters = dead_lettered(&data);
    let missing: Vec<_> = invalid.difference(&letters).collect();
    assert!(missing.is_empty(), "invalid events lost: {missing:?}");
    println!(
        "held batch 2; committed stayed at {BATCH} of {}; after the restart: {} users exact, {} invalid events all dead-lettered",
        records.len(),
        expected.len(),
        invalid.len()
    );
}

/// Plain batches the store takes in one write give what storing them one by one gives: per
/// batch the same counts, index operations and rejections, and the same stored state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_batches_stored_together_decide_as_stored_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = common::generate(dir.path(), 1_500, 0.05, "jsonl", 13);
    let file = local();
    let records = read_log(&file, &input, &dir.path().join("scratch")).await;
    let mut runs = Vec::new();
    for together in [false, true] {
        let data = dir.path().join(if together { "together" } else { "alone" });
        let pipeline = build(&file, &data, Some(&input)).unwrap().pipeline;
        let mut derived = Vec::new();
        for batch in records.chunks(300) {
            let decoded = pipeline.decode(batch);
            derived.push(pipeline.derive(decoded.changes).await.unwrap());
        }
        assert!(derived.iter().all(|d| d.is_plain()));
        let applied = if together {
            pipeline
                .store_together(&StoredTogether::new(derived))
                .await
                .unwrap()
        } else {
            let mut applied = Vec::new();
            for d in &derived {
                applied.push(pipeline.store(d).await.unwrap());
            }
            applied
        };
        let per_batch: Vec<_> = applied
            .into_iter()
            .map(|a| (a.counts, a.index_ops, a.rejected))
            .collect();
        runs.push((
            per_batch,
            common::scenarios::sqlite_state(&data.join("profiles.sqlite")),
        ));
    }
    let stale: u64 = runs[1].0.iter().map(|(c, _, _)| c.stale).sum();
    let written: u64 = runs[1].0.iter().map(|(c, _, _)| c.written).sum();
    assert!(
        stale > 0 && written > 1_000,
        "written {written}, stale {stale}"
    );
    assert_eq!(runs[0], runs[1]);
}

/// Generated valid upserts rewritten to the plan's users and versions (a delete where it
/// says so), as JSON lines. A `(user, version)` stands once, as versions are unique per user;
/// `replays` repeat earlier lines verbatim at the end, as a redelivery would.
fn versioned_lines(
    template: &[String],
    users: &[String],
    plan: &[(usize, i64, bool)],
    replays: &[usize],
) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut lines = Vec::new();
    for (k, (user, version, delete)) in plan.iter().enumerate() {
        if !seen.insert((*user, *version)) {
            continue;
        }
        let mut v: serde_json::Value = serde_json::from_str(&template[k % template.len()]).unwrap();
        v["user_id"] = users[*user].clone().into();
        v["version"] = (*version).into();
        v["event_id"] = uuid::Uuid::new_v4().to_string().into();
        if *delete {
            v["operation"] = "DELETE".into();
            v["profile"] = serde_json::Value::Null;
        }
        lines.push(v.to_string());
    }
    let replayed: Vec<String> = replays
        .iter()
        .map(|r| lines[r % lines.len()].clone())
        .collect();
    lines.extend(replayed);
    lines
}

fn upsert_template(dir: &Path) -> Vec<String> {
    let (input, _) = common::generate(dir, 400, 0.0, "jsonl", 11);
    std::fs::read_to_string(input)
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"UPSERT\""))
        .map(str::to_string)
        .collect()
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Many versions per user, out of order and repeated, spread over small batches that are
    /// in flight together: the store and the index end at each user's highest version.
    #[test]
    fn many_versions_per_user_across_batches_end_at_the_highest(
        plan in proptest::collection::vec((0..8usize, 1..40i64, proptest::bool::weighted(0.15)), 20..160),
        replays in proptest::collection::vec(0..1000usize, 0..20),
        batch in 1..17usize,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let template = upsert_template(dir.path());
        let users: Vec<String> = (0..8).map(|_| uuid::Uuid::new_v4().to_string()).collect();
        let input = dir.path().join("versions.jsonl");
        let lines = versioned_lines(&template, &users, &plan, &replays);
        std::fs::write(&input, lines.join("\n") + "\n").unwrap();
        let data = dir.path().join("data");
        let file = local();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let (counts, index_versions) = rt.block_on(async {
            let components = build(&file, &data, Some(&input)).unwrap();
            let pipeline = Arc::new(components.pipeline);
            let (_never, shutdown) = tokio::sync::watch::channel(false);
            let counts = runtime::run(pipeline.clone(), components.source, settings(&file, batch), shutdown, |_: &Counts| {})
                .await
                .unwrap();
            let mut index_versions = HashMap::new();
            for user in &users {
                let hits = pipeline.profiles.index.search(&format!("user_id:{user}"), 5).await.unwrap();
                prop_assert!(hits.total <= 1, "{} documents for one user", hits.total);
                if let Some(hit) = hits.hits.first() {
                    index_versions.insert(user.clone(), hit["version"].as_i64().unwrap());
                }
            }
            Ok((counts, index_versions))
        })?;
        prop_assert_eq!(counts.read as usize, lines.len());
        prop_assert_eq!(counts.read, counts.written + counts.stale + counts.dead_lettered);
        let mut highest: HashMap<usize, (i64, bool)> = HashMap::new();
        for &(user, version, delete) in &plan {
            let e = highest.entry(user).or_insert((version, delete));
            if version > e.0 {
                *e = (version, delete);
            }
        }
        let stored = common::scenarios::sqlite_state(&data.join("profiles.sqlite"));
        for (user, (version, delete)) in &highest {
            let (got, deleted) = stored[&users[*user]];
            prop_assert_eq!((got, deleted), (*version, *delete), "store of user {}", user);
            // The index holds the live profiles at the stored version, and no deleted one.
            let indexed = index_versions.get(&users[*user]).copied();
            prop_assert_eq!(indexed, (!deleted).then_some(*version), "index of user {}", user);
        }
    }
}
