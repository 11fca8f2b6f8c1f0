//! Kafka ingest against a real Kafka-protocol broker (tansu, started by `scripts/services start
//! kafka`) and the Schema Registry test double (or a real registry when `SCHEMA_REGISTRY_URL`
//! is set). A test fails, never skips, when the broker is not reachable.
//!
//! The workers share one canonical SQLite store and one keyring; each has its own tantivy
//! index folder, because the embedded index is single-writer (a shared search index is the
//! OpenSearch adapter's job). Exactness is checked on the canonical store.

// One heavy test at a time (SERIAL), each on its own runtime: holding the guard across
// awaits is the point.
#![allow(clippy::await_holding_lock)]

mod common;

use common::canary::Canary;
use common::scenarios::sqlite_state;
use common::segment_feed;
use common::services::{create_topics, kafka_brokers, registry, require, Registry};
use common::topics::{read_all, Delivered, GroupProgress};
use common::{binary, expected_state, repo};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value as Json;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The heavy tests share two cores: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn brokers() -> String {
    let brokers = kafka_brokers();
    require("A Kafka broker", &brokers, "kafka");
    brokers
}

fn client(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    c
}

fn unique(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::new_v4().simple())
}

/// One test's topics, group, registry and shared store.
struct Setup {
    brokers: String,
    topic: String,
    dlq: String,
    /// The segment change feed's topic.
    segments: String,
    group: String,
    registry: Registry,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn new(partitions: i32) -> Self {
        Self::on(brokers(), partitions).await
    }

    async fn on(brokers: String, partitions: i32) -> Self {
        let topic = unique("profiles");
        let dlq = format!("{topic}-dlq");
        let segments = format!("{topic}-segments");
        create_topics(&brokers, &[(&topic, partitions), (&dlq, 1), (&segments, 1)]).await;
        let dir = tempfile::tempdir().unwrap();
        // Created once, before the workers race to create it.
        profile_sync::keys::LocalKeyring::open_or_create(&dir.path().join("keyring.json"), None)
            .unwrap();
        Self {
            brokers,
            dlq,
            segments,
            group: unique("group"),
            topic,
            registry: registry(),
            dir,
        }
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("profiles.sqlite")
    }

    /// A pipeline file from pipelines/kafka-local.yaml for this test; `extra` is appended to
    /// the source section.
    fn pipeline(&self, name: &str, group: &str, batch_size: usize, extra: &str) -> PathBuf {
        let shared = self.dir.path().display().to_string();
        let root = repo().display().to_string();
        let text = std::fs::read_to_string(repo().join("pipelines/kafka-local.yaml"))
            .unwrap()
            .replace(
                "brokers: 127.0.0.1:9092",
                &format!("brokers: {}", self.brokers),
            )
            .replace(
                "topics: [profile-changes]",
                &format!("topics: [{}]", self.topic),
            )
            .replace("group_id: profile-sync", &format!("group_id: {group}"))
            .replace(
                "url: http://127.0.0.1:8081",
                &format!("url: {}", self.registry.url),
            )
            .replace(
                "topic: profile-changes-dlq",
                &format!("topic: {}", self.dlq),
            )
            .replace(
                "topic: profile-segment-changes",
                &format!("topic: {}", self.segments),
            )
            .replace(
                "path: keyring.json",
                &format!("path: {shared}/keyring.json"),
            )
            .replace(
                "path: profiles.sqlite",
                &format!("path: {shared}/profiles.sqlite"),
            )
            .replace("../schemas", &format!("{root}/schemas"))
            .replace("../geoip/", &format!("{root}/geoip/"))
            .replace("batch_size: 2000", &format!("batch_size: {batch_size}"))
            .replace(
                "  properties:                   # any",
                &format!("{extra}  properties:                   # any"),
            );
        // A key in `extra` replaces the file's own line for it.
        let overridden: Vec<&str> = extra.lines().filter_map(|l| l.split(':').next()).collect();
        let text: String = text
            .lines()
            .filter(|l| {
                extra.contains(l.trim_end()) && !l.trim().is_empty()
                    || !overridden.iter().any(|k| l.starts_with(&format!("{k}:")))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let path = self.dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn produce(&self, count: u64, invalid_ratio: f64, seed: u64) -> Json {
        let pipeline = self.pipeline("produce", &self.group, 2000, "");
        let out = Command::new(binary())
            .current_dir(repo())
            .args([
                "produce",
                "--count",
                &count.to_string(),
                "--seed",
                &seed.to_string(),
            ])
            .args([
                "--invalid-ratio",
                &invalid_ratio.to_string(),
                "--partitions",
                "6",
            ])
            .arg("--pipeline")
            .arg(&pipeline)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "produce failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("produce prints JSON")
    }

    /// Produces the backlog and generates the same events as JSON lines for the expected
    /// state: (JSON lines file, the generator's summary).
    fn backlog(&self, count: u64, invalid_ratio: f64, seed: u64) -> (PathBuf, Json) {
        self.produce(count, invalid_ratio, seed);
        self.generated(count, invalid_ratio, seed)
    }

    /// The end of a scenario: every offset committed, the exact state in the store, every
    /// invalid event dead-lettered (`exactly` once each, or at least once after replays), and
    /// no generated PII value in any output: the workers' logs (panics included), the store
    /// and index files in plaintext, the dead-letter headers.
    fn assert_final_state(&self, jsonl: &Path, generated: &Json, exactly: bool) {
        self.assert_fully_committed(&self.group);
        assert_exact_state(&self.store(), jsonl);
        let canary = Canary::of_generated(jsonl);
        let swept = canary.assert_absent_from_files(self.dir.path(), &[jsonl]);
        assert!(swept > 3, "the logs, the store and the index were swept");
        assert_dead_letters(
            self,
            generated["invalid"].as_u64().unwrap(),
            exactly,
            &canary,
        );
        self.assert_segment_feed();
    }

    /// The segment change topic, read by a consumer that shares no code with profile-sync:
    /// keyed by user (one partition per user), no transition missing however often workers
    /// were killed, and the membership it rebuilds is the store's.
    fn assert_segment_feed(&self) {
        let changes = segment_feed::read_topic_from_outside(
            &self.brokers,
            &self.registry.url,
            &self.segments,
        );
        assert!(
            !changes.is_empty(),
            "no segment change on {}",
            self.segments
        );
        let mut partition_of: HashMap<String, i64> = HashMap::new();
        for c in &changes {
            assert_eq!(c["key"], c["user_id"]);
            let p = c["partition"].as_i64().unwrap();
            let user = c["user_id"].as_str().unwrap().to_string();
            assert_eq!(*partition_of.entry(user).or_insert(p), p);
        }
        segment_feed::assert_no_transition_missing(&changes);
        // `segments tail` reads the same changes (the topic through the registry's schemas).
        let pipeline = self.pipeline("tail", &self.group, 2000, "");
        let tailed = common::json_lines(
            &Command::new(binary())
                .current_dir(repo())
                .args(["segments", "tail", "--no-follow", "--pipeline"])
                .arg(&pipeline)
                .output()
                .unwrap(),
        );
        let without_envelope = |c: &Json| {
            let mut c = c.clone();
            c.as_object_mut()
                .unwrap()
                .retain(|k, _| k != "key" && k != "partition");
            c
        };
        let mut outside: Vec<Json> = changes.iter().map(without_envelope).collect();
        let mut tailed = tailed;
        let order = |a: &Json, b: &Json| a.to_string().cmp(&b.to_string());
        outside.sort_by(order);
        tailed.sort_by(order);
        assert_eq!(tailed, outside);
        assert_eq!(
            segment_feed::membership_from_feed(&changes),
            segment_feed::stored_segments(&self.store())
        );
    }

    /// The same events as JSON lines, for the expected state.
    fn generated(&self, count: u64, invalid_ratio: f64, seed: u64) -> (PathBuf, Json) {
        common::generate(self.dir.path(), count, invalid_ratio, "jsonl", seed)
    }

    fn worker(&self, name: &str, pipeline: &Path) -> Worker {
        self.worker_in_slot(name, pipeline, None)
    }

    /// A worker with static group membership (`group.instance.id` = `slot`), as a StatefulSet
    /// pod runs: restarted in the same slot, it takes its predecessor's place in the group.
    fn worker_in_slot(&self, name: &str, pipeline: &Path, slot: Option<&str>) -> Worker {
        let data = self.dir.path().join(name);
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap();
        let mut command = Command::new(binary());
        if let Some(slot) = slot {
            command.env(
                "PROFILE_SYNC_KAFKA_GROUP_INSTANCE_ID",
                format!("{}-{slot}", self.group),
            );
        }
        let child = command
            .current_dir(repo())
            .env("PROFILE_SYNC_LOG", "info")
            .args([
                "--log-format",
                "json",
                "run",
                "--output",
                "json",
                "--drain-deadline-secs",
                "60",
            ])
            .arg("--pipeline")
            .arg(pipeline)
            .arg("--data-dir")
            .arg(&data)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start a worker");
        Worker {
            child,
            log: self.dir.path().join(format!("{name}.log")),
        }
    }

    fn progress_of(&self, group: &str) -> GroupProgress {
        GroupProgress::new(&self.brokers, &self.topic, group)
    }

    /// (committed, end) offsets summed over the topic's partitions.
    fn progress(&self, group: &str) -> (i64, i64) {
        self.progress_of(group).sum()
    }

    /// Per partition: committed offset == end offset.
    fn assert_fully_committed(&self, group: &str) {
        for p in self.progress_of(group).partitions() {
            assert_eq!(
                p.committed, p.end,
                "partition {}: committed offset must equal the end offset",
                p.partition
            );
        }
    }

    fn wait_committed(
        &self,
        group: &str,
        at_least: i64,
        within: Duration,
        workers: &mut [&mut Worker],
    ) {
        let started = Instant::now();
        loop {
            let (committed, _) = self.progress(group);
            if committed >= at_least {
                return;
            }
            for w in workers.iter_mut() {
                if let Some(status) = w.child.try_wait().unwrap() {
                    panic!("a worker exited early ({status}): {}", w.log_tail());
                }
            }
            assert!(
                started.elapsed() < within,
                "only {committed} of {at_least} offsets committed after {within:?}; worker log: {}",
                workers.first().map(|w| w.log_tail()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Every message of a topic: (partition, offset) → (key, value, headers).
    fn read_all(&self, topic: &str) -> HashMap<(i32, i64), Delivered> {
        read_all(&self.brokers, topic)
    }
}

struct Worker {
    child: Child,
    log: PathBuf,
}

impl Worker {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// SIGTERM, then the exit status and the JSON summary.
    fn terminate(mut self) -> Json {
        self.signal("-TERM");
        self.finish()
    }

    fn finish(&mut self) -> Json {
        let started = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "worker did not stop: {}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            status.success(),
            "worker exit status {status}: {}",
            self.log_tail()
        );
        let mut out = String::new();
        std::io::Read::read_to_string(self.child.stdout.as_mut().unwrap(), &mut out).unwrap();
        serde_json::from_str(out.lines().last().expect("a summary line")).expect("summary JSON")
    }
}

/// A failed test must not leave its workers running (they would load the next tests).
impl Drop for Worker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn assert_exact_state(store: &Path, jsonl: &Path) {
    let expected: HashMap<String, (i64, bool)> = expected_state(jsonl)
        .into_iter()
        .map(|(u, e)| (u, (e.version, e.deleted)))
        .collect();
    let stored = sqlite_state(store);
    let wrong: Vec<_> = expected
        .iter()
        .filter(|(u, want)| stored.get(*u) != Some(want))
        .take(5)
        .collect();
    assert!(
        wrong.is_empty(),
        "users not at their latest version, e.g. {wrong:?}"
    );
    assert_eq!(
        stored.len(),
        expected.len(),
        "the store holds users that are not expected"
    );
}

/// `profile-sync dlq replay` with `args` and a pipeline file; its JSON report.
fn dlq_replay(pipeline: &Path, args: &[&str]) -> Json {
    let out = Command::new(binary())
        .current_dir(repo())
        .args(["dlq", "replay"])
        .args(args)
        .arg("--pipeline")
        .arg(pipeline)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every invalid event is in the dead-letter topic, sealed, with its error headers.
fn assert_dead_letters(setup: &Setup, expected_invalid: u64, exactly: bool, canary: &Canary) {
    let source = setup.read_all(&setup.topic);
    let letters = setup.read_all(&setup.dlq);
    let mut positions = HashSet::new();
    for letter in letters.values() {
        let h = &letter.headers;
        for name in [
            "topic",
            "partition",
            "offset",
            "stage",
            "class.name",
            "exception.message",
            "timestamp",
        ] {
            assert!(
                h.contains_key(&format!("__connect.errors.{name}")),
                "dead letter lacks header __connect.errors.{name}: {h:?}"
            );
        }
        assert_eq!(h["__connect.errors.topic"], setup.topic);
        let at = (
            h["__connect.errors.partition"].parse::<i32>().unwrap(),
            h["__connect.errors.offset"].parse::<i64>().unwrap(),
        );
        let original = source
            .get(&at)
            .expect("the dead letter points at a source message");
        // The value is sealed (the sealing header says under which key); `dlq replay` opens
        // it (tested below).
        assert!(
            h.contains_key("profile-sync.sealing"),
            "dead letter lacks its sealing header: {h:?}"
        );
        assert!(letter.value != original.value, "the value is sealed");
        canary.assert_absent("a dead letter's value", &letter.value);
        assert_eq!(letter.key, original.key, "key unchanged");
        for (name, value) in h {
            canary.assert_absent(&format!("dead-letter header {name}"), value);
            assert!(
                !value.contains(".example.com")
                    && !value.contains("300.1.2.999")
                    && !value.contains("not-an-email"),
                "PII-like value in a dead-letter header: {value}"
            );
        }
        positions.insert(at);
    }
    assert_eq!(
        positions.len() as u64,
        expected_invalid,
        "every invalid event is dead-lettered (and nothing else)"
    );
    if exactly {
        assert_eq!(
            letters.len() as u64,
            expected_invalid,
            "no duplicate dead letters"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_workers_in_one_group_reach_the_exact_state_and_commit_to_the_end() {
    let _serial = serial();
    // A broker of its own: tansu's fetch cost grows with its database (RELIABILITY.md).
    let broker = OwnBroker::start();
    let setup = Setup::on(broker.address.clone(), 6).await;
    let (count, ratio, seed) = (50_000u64, 0.01, 7);
    let produced = setup.produce(count, ratio, seed);
    let (jsonl, generated) = setup.generated(count, ratio, seed);
    assert_eq!(
        produced["invalid"], generated["invalid"],
        "produce and generate agree"
    );

    // Static members (see a_worker_killed_mid_run_loses_nothing): with dynamic ones, a
    // rebalance on tansu 0.6 can leave one member on its old generation, its commits refused.
    let pipeline = setup.pipeline("worker", &setup.group, 2000, "");
    let mut a = setup.worker_in_slot("a", &pipeline, Some("a"));
    let mut b = setup.worker_in_slot("b", &pipeline, Some("b"));
    setup.wait_committed(
        &setup.group,
        count as i64,
        Duration::from_secs(600),
        &mut [&mut a, &mut b],
    );
    let sa = a.terminate();
    let sb = b.terminate();
    assert!(
        sa["read"].as_u64().unwrap() > 0 && sb["read"].as_u64().unwrap() > 0,
        "both workers took partitions: {sa} {sb}"
    );
    setup.assert_final_state(&jsonl, &generated, true);
    report("two workers", count, &[sa, sb]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_run_loses_nothing() {
    let _serial = serial();
    // A broker of its own: tansu's fetch cost grows with its database (RELIABILITY.md).
    let broker = OwnBroker::start();
    let setup = Setup::on(broker.address.clone(), 6).await;
    let (count, ratio, seed) = (20_000u64, 0.01, 11);
    let (jsonl, generated) = setup.backlog(count, ratio, seed);

    let pipeline = setup.pipeline("worker", &setup.group, 500, "");
    let mut a = setup.worker_in_slot("a", &pipeline, Some("a"));
    let mut b = setup.worker_in_slot("b", &pipeline, Some("b"));
    setup.wait_committed(
        &setup.group,
        2_000,
        Duration::from_secs(300),
        &mut [&mut a, &mut b],
    );
    a.signal("-KILL");
    let _ = a.child.wait();
    // Restarted at once in the same slot (static membership), as a StatefulSet does: it takes
    // the dead member's place and partitions. (Dynamic members hit a tansu 0.6 coordinator
    // bug here: a dead member's expiry reaches only the member whose heartbeat notices it, and
    // the dead member's partitions stay unowned. See RELIABILITY.md.)
    let mut a = setup.worker_in_slot("a2", &pipeline, Some("a"));
    setup.wait_committed(
        &setup.group,
        count as i64,
        Duration::from_secs(600),
        &mut [&mut a, &mut b],
    );
    let summaries = [a.terminate(), b.terminate()];
    // Replays after the kill may dead-letter an event twice; none may be missing.
    setup.assert_final_state(&jsonl, &generated, false);
    report("SIGKILL + restart", count, &summaries);
}

/// A tansu broker of one test's own, on SQLite storage in a temporary folder: the test can stop
/// and restart it without disturbing the shared broker, and a heavy test starts on an empty
/// database (tansu's fetch cost grows with it: over a long suite the shared broker answered a
/// fetch in over 60 s and the group timed out).
struct OwnBroker {
    child: Child,
    address: String,
    dir: tempfile::TempDir,
}

impl OwnBroker {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let address = common::services::stopped_endpoint();
        let child = Self::launch(dir.path(), &address);
        Self {
            child,
            address,
            dir,
        }
    }

    fn launch(dir: &Path, address: &str) -> Child {
        let url = format!("tcp://{address}");
        let child = Command::new("tansu")
            .current_dir(dir)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("tansu.log")).unwrap())
            .spawn()
            .expect("tansu is not installed: run scripts/services start kafka (it installs tansu 0.6.0)");
        let started = Instant::now();
        while !common::services::reachable(address) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "tansu did not listen on {address} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        child
    }

    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let started = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn restart(&mut self) {
        self.child = Self::launch(self.dir.path(), &self.address);
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_restart_mid_run_stalls_the_worker_and_it_finishes_with_the_exact_state() {
    let _serial = serial();
    let mut broker = OwnBroker::start();
    let setup = Setup::on(broker.address.clone(), 3).await;
    let (count, ratio, seed) = (20_000u64, 0.01, 13);
    let (jsonl, generated) = setup.backlog(count, ratio, seed);

    // stop_when_idle: the silent broker must not look like an exhausted source (the backlog
    // is pending), so the worker may stop only once everything is read and committed.
    let pipeline = setup.pipeline("worker", &setup.group, 500, "  stop_when_idle_ms: 4000\n");
    let mut w = setup.worker("w", &pipeline);
    setup.wait_committed(&setup.group, 2_000, Duration::from_secs(300), &mut [&mut w]);
    broker.stop();
    std::thread::sleep(Duration::from_secs(10));
    assert!(
        w.child.try_wait().unwrap().is_none(),
        "the worker must wait for the broker, not exit: {}",
        w.log_tail()
    );
    broker.restart();
    setup.wait_committed(
        &setup.group,
        count as i64,
        Duration::from_secs(600),
        &mut [&mut w],
    );
    let summary = w.finish();
    eprintln!(
        "broker restart: produced {count}, read {}, written {}, stale {}, dead-lettered {}",
        summary["read"], summary["written"], summary["stale"], summary["dead_lettered"]
    );

    // The batch in flight when the broker went away may be replayed: a dead letter may repeat.
    setup.assert_final_state(&jsonl, &generated, false);
}

/// The figures RELIABILITY.md reports for a scenario, from the summaries of every worker run
/// (a SIGKILLed worker prints none: what it read is replayed by its successor). Called only
/// after the scenario's exact final state was asserted, which is what "lost 0" says.
fn report(scenario: &str, produced: u64, summaries: &[Json]) {
    let sum = |k: &str| {
        summaries
            .iter()
            .map(|s| s[k].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    eprintln!(
        "{scenario}: produced {produced}; by the workers that exited normally: read {}, written {}, stale {}, dead-lettered {}; lost 0 (exact state checked)",
        sum("read"),
        sum("written"),
        sum("stale"),
        sum("dead_lettered")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn five_sigkills_at_random_points_over_100000_events_lose_nothing() {
    use rand::{Rng, SeedableRng};
    let _serial = serial();
    // A broker of its own: tansu's fetch cost grows with its database (RELIABILITY.md).
    let broker = OwnBroker::start();
    let setup = Setup::on(broker.address.clone(), 24).await;
    let (count, ratio, seed) = (100_000u64, 0.01, 17);
    let (jsonl, generated) = setup.backlog(count, ratio, seed);
    // Random kill points, reproducible: the seed is printed (KILL_SEED=... to replay one).
    let kill_seed: u64 = std::env::var("KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("five SIGKILLs: KILL_SEED={kill_seed}");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(kill_seed);
    let mut points: Vec<i64> = (0..5)
        .map(|i| (count as i64) * (5 + 15 * i + rng.random_range(0..10)) / 100)
        .collect();
    points.sort();

    let pipeline = setup.pipeline("worker", &setup.group, 1000, "");
    let slots = ["a", "b"];
    let mut workers: Vec<Worker> = slots
        .iter()
        .map(|s| setup.worker_in_slot(&format!("{s}0"), &pipeline, Some(s)))
        .collect();
    let mut summaries = Vec::new();
    for (round, at) in points.iter().enumerate() {
        {
            let mut refs: Vec<&mut Worker> = workers.iter_mut().collect();
            setup.wait_committed(&setup.group, *at, Duration::from_secs(600), &mut refs);
        }
        let victim = rng.random_range(0..workers.len());
        workers[victim].signal("-KILL");
        let _ = workers[victim].child.wait();
        eprintln!(
            "round {round}: SIGKILL of slot {} at {at} committed offsets",
            slots[victim]
        );
        // Restarted at once in the same slot (see a_worker_killed_mid_run_loses_nothing).
        workers[victim] = setup.worker_in_slot(
            &format!("{}{}", slots[victim], round + 1),
            &pipeline,
            Some(slots[victim]),
        );
    }
    {
        let mut refs: Vec<&mut Worker> = workers.iter_mut().collect();
        setup.wait_committed(
            &setup.group,
            count as i64,
            Duration::from_secs(900),
            &mut refs,
        );
    }
    for w in workers {
        summaries.push(w.terminate());
    }
    setup.assert_final_state(&jsonl, &generated, false);
    report("five SIGKILLs", count, &summaries);
}

#[tokio::test(flavor = "multi_thread")]
async fn scaling_from_two_to_three_to_one_worker_mid_run_reaches_the_exact_state() {
    let _serial = serial();
    // A broker of its own: tansu's fetch cost grows with its database (RELIABILITY.md).
    let broker = OwnBroker::start();
    let setup = Setup::on(broker.address.clone(), 6).await;
    let (count, ratio, seed) = (60_000u64, 0.01, 19);
    let (jsonl, generated) = setup.backlog(count, ratio, seed);

    let pipeline = setup.pipeline("worker", &setup.group, 1000, "");
    let mut a = setup.worker("a", &pipeline);
    let mut b = setup.worker("b", &pipeline);
    setup.wait_committed(
        &setup.group,
        count as i64 / 5,
        Duration::from_secs(600),
        &mut [&mut a, &mut b],
    );
    // Scale out: a third worker joins; the group rebalances over three.
    let mut c = setup.worker("c", &pipeline);
    setup.wait_committed(
        &setup.group,
        count as i64 / 2,
        Duration::from_secs(600),
        &mut [&mut a, &mut b, &mut c],
    );
    // Scale in to one: two workers drain, commit and leave (SIGTERM, as a scale-in does).
    let sb = b.terminate();
    let sc = c.terminate();
    setup.wait_committed(
        &setup.group,
        count as i64,
        Duration::from_secs(900),
        &mut [&mut a],
    );
    let sa = a.terminate();
    setup.assert_final_state(&jsonl, &generated, false);
    report("scale 2 → 3 → 1", count, &[sa, sb, sc]);
}

/// A hand-made event in the Confluent wire format.
fn event(schema: &apache_avro::Schema, id: u32, user: &str, version: i64, plan: &str) -> Vec<u8> {
    encode(
        schema,
        id,
        serde_json::json!({
            "event_id": uuid::Uuid::new_v4().to_string(),
            "user_id": user,
            "operation": "UPSERT",
            "version": version,
            "occurred_at": 1_767_225_600_000i64 + version,
            "source": "test/out-of-order",
            "profile": {"status": "ACTIVE", "marketing": {"lifetime_value": 1.0, "order_count": version, "plan": plan}},
        }),
    )
}

/// Any event (Avro JSON) in the Confluent wire format.
fn encode(schema: &apache_avro::Schema, id: u32, json: Json) -> Vec<u8> {
    let value = profile_sync::schema::avro_json_to_value(&json, schema).expect("valid event");
    let mut datum = Vec::new();
    apache_avro::writer::datum::GenericDatumWriter::builder(schema)
        .build()
        .unwrap()
        .write_value(&mut datum, value)
        .unwrap();
    profile_sync::schema::registry::frame(id, &datum)
}

#[tokio::test(flavor = "multi_thread")]
async fn out_of_order_and_duplicate_delivery_never_lets_an_older_version_win() {
    let _serial = serial();
    let setup = Setup::new(3).await;
    let text = include_str!("../schemas/profile_change.avsc");
    let schema = apache_avro::Schema::parse_str(text).unwrap();
    let sr = profile_sync::schema::registry::settings(
        &setup.registry.url,
        Duration::from_secs(5),
        false,
    )
    .unwrap();
    let id = profile_sync::schema::registry::register(
        &sr,
        &profile_sync::schema::registry::value_subject(&setup.topic),
        &schema,
        text,
    )
    .await
    .unwrap();
    let producer: FutureProducer = client(&setup.brokers).create().unwrap();
    let users: Vec<String> = (0..3).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    // Per user: late, duplicate and out-of-order versions; the highest is 5.
    for version in [2, 1, 2, 5, 3, 5, 4, 1] {
        for user in &users {
            let value = event(&schema, id, user, version, &format!("plan-v{version}"));
            producer
                .send(
                    FutureRecord::to(&setup.topic)
                        .key(user.as_bytes())
                        .payload(&value),
                    Duration::from_secs(30),
                )
                .await
                .unwrap();
        }
    }
    let extra = "  stop_when_idle_ms: 8000\n";
    let first = setup.pipeline("first", &setup.group, 4, extra);
    let mut w = setup.worker("first", &first);
    let summary = w.finish();
    assert_eq!(summary["read"], 24);
    let state = sqlite_state(&setup.store());
    for user in &users {
        assert_eq!(state[user], (5, false), "user {user} ends at version 5");
    }
    // The whole topic delivered again (a new group): nothing changes, nothing is written.
    let again = setup.pipeline("again", &unique("group"), 7, extra);
    let mut w = setup.worker("again", &again);
    let summary = w.finish();
    assert_eq!(
        summary["written"], 0,
        "a redelivery writes nothing: {summary}"
    );
    assert_eq!(summary["read"], 24);
    assert_eq!(sqlite_state(&setup.store()), state);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_commits_and_a_restart_processes_nothing_twice() {
    let _serial = serial();
    // A broker of its own: tansu's fetch cost grows with its database (RELIABILITY.md).
    let broker = OwnBroker::start();
    let setup = Setup::on(broker.address.clone(), 6).await;
    // Large enough that the SIGTERM lands mid-backlog: the pipelined worker goes through
    // 20,000 events before its first commit in a debug build.
    let count = 60_000u64;
    setup.produce(count, 0.0, 23);
    let drain = "  commit_interval_ms: 200\n";
    let pipeline = setup.pipeline("worker", &setup.group, 250, drain);
    // The index commits every 100 ms, so the first offsets are committed early.
    let text = std::fs::read_to_string(&pipeline).unwrap();
    let quick = text.replace(
        "  type: tantivy\n",
        "  type: tantivy\n  commit_interval_ms: 100\n",
    );
    assert_ne!(quick, text, "the test pipeline has a tantivy index");
    std::fs::write(&pipeline, quick).unwrap();
    let mut w = setup.worker("first", &pipeline);
    setup.wait_committed(&setup.group, 1, Duration::from_secs(120), &mut [&mut w]);
    let first = w.terminate();
    let read_first = first["read"].as_i64().unwrap();
    let (committed, end) = setup.progress(&setup.group);
    assert!(
        read_first < end,
        "the worker was stopped mid-backlog (read {read_first} of {end})"
    );
    assert_eq!(
        committed, read_first,
        "SIGTERM committed exactly what was processed"
    );

    // The restart runs until everything is committed (not until idle: the group may take a
    // session timeout to hand it every partition).
    let mut w = setup.worker("second", &pipeline);
    setup.wait_committed(
        &setup.group,
        count as i64,
        Duration::from_secs(300),
        &mut [&mut w],
    );
    let second = w.terminate();
    assert_eq!(
        read_first + second["read"].as_i64().unwrap(),
        count as i64,
        "after a SIGTERM the restart reads only what was not processed (uncommitted window: none)"
    );
    setup.assert_fully_committed(&setup.group);
}

#[tokio::test(flavor = "multi_thread")]
async fn undecodable_messages_and_unknown_schema_ids_are_dead_lettered_and_replayable() {
    let _serial = serial();
    let setup = Setup::new(1).await;
    // Register nothing under id 999; send garbage, an unknown id and one good event.
    let text = include_str!("../schemas/profile_change.avsc");
    let schema = apache_avro::Schema::parse_str(text).unwrap();
    let sr = profile_sync::schema::registry::settings(
        &setup.registry.url,
        Duration::from_secs(5),
        false,
    )
    .unwrap();
    let id = profile_sync::schema::registry::register(
        &sr,
        &profile_sync::schema::registry::value_subject(&setup.topic),
        &schema,
        text,
    )
    .await
    .unwrap();
    let user = uuid::Uuid::new_v4().to_string();
    let good = event(&schema, id, &user, 1, "basic");
    let mut unknown = good.clone();
    unknown[1..5].copy_from_slice(&999_999u32.to_be_bytes());
    let producer: FutureProducer = client(&setup.brokers).create().unwrap();
    for value in [b"not avro at all".to_vec(), unknown, good] {
        producer
            .send(
                FutureRecord::to(&setup.topic)
                    .key(user.as_bytes())
                    .payload(&value)
                    .headers(rdkafka::message::OwnedHeaders::new().insert(
                        rdkafka::message::Header {
                            key: "trace-id",
                            value: Some("abc"),
                        },
                    )),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
    }
    let pipeline = setup.pipeline("worker", &setup.group, 10, "  stop_when_idle_ms: 8000\n");
    let summary = setup.worker("w", &pipeline).finish();
    assert_eq!(
        (summary["read"].as_u64(), summary["dead_lettered"].as_u64()),
        (Some(3), Some(2)),
        "{summary}"
    );
    let letters = setup.read_all(&setup.dlq);
    let classes: HashSet<String> = letters
        .values()
        .map(|l| l.headers["__connect.errors.class.name"].clone())
        .collect();
    assert_eq!(
        classes,
        HashSet::from(["malformed".to_string(), "schema".to_string()]),
        "{letters:?}"
    );
    assert!(
        letters
            .values()
            .all(|l| l.headers.get("trace-id").map(String::as_str) == Some("abc")),
        "original headers kept"
    );

    // Replay the schema failures back to the source topic.
    let replay = dlq_replay(
        &pipeline,
        &["--from", &setup.dlq, "--filter", "class.name=schema"],
    );
    assert_eq!(
        (replay["replayed"].as_u64(), replay["skipped"].as_u64()),
        (Some(1), Some(1)),
        "{replay}"
    );
    let source = setup.read_all(&setup.topic);
    assert_eq!(
        source.len(),
        4,
        "the replayed event is back on the source topic"
    );
    let replayed = &source[&(0, 3)];
    assert!(
        (0..3).any(|o| source[&(0, o)].value == replayed.value),
        "it is back opened, byte for byte the original event"
    );
    assert_eq!(
        replayed.headers.get("trace-id").map(String::as_str),
        Some("abc")
    );
    assert!(!replayed.headers.contains_key("profile-sync.sealing"));
}

#[tokio::test]
async fn registry_outage_is_transient_and_unknown_ids_are_not() {
    use profile_sync::schema::registry::{settings, Lookup, WriterSchemas};
    // Nothing listens on port 9 (discard) here: an outage.
    let down =
        WriterSchemas::new(settings("http://127.0.0.1:9", Duration::from_secs(1), false).unwrap());
    assert!(matches!(down.get(1).await, Err(Lookup::Unavailable(_))));
    let reg = registry();
    let sr = settings(&reg.url, Duration::from_secs(5), false).unwrap();
    let up = WriterSchemas::new(sr.clone());
    assert!(matches!(up.get(987_654).await, Err(Lookup::Unknown(_))));

    // A schema over the size limit is refused for its events, with the reason.
    let padding = "x".repeat(profile_sync::schema::registry::MAX_SCHEMA_BYTES);
    let text = format!(
        r#"{{"type":"record","name":"Big","doc":"{padding}","fields":[{{"name":"a","type":"string"}}]}}"#
    );
    let schema = apache_avro::Schema::parse_str(&text).unwrap();
    let subject = format!("oversized-{}", uuid::Uuid::new_v4().simple());
    let id = profile_sync::schema::registry::register(&sr, &subject, &schema, &text)
        .await
        .unwrap();
    match up.get(id).await {
        Err(Lookup::Unknown(reason)) => assert!(reason.contains("over the 256 KiB"), "{reason}"),
        other => panic!(
            "an oversized schema was not refused: {:?}",
            other.map(|_| ())
        ),
    }
}

/// The REST subset against the registry: the real one when `SCHEMA_REGISTRY_URL` is set,
/// otherwise the in-repo double (said loudly, so it is never mistaken for the real thing).
#[tokio::test]
async fn schema_registry_rest_subset_behaves_as_documented() {
    match std::env::var("SCHEMA_REGISTRY_URL") {
        Ok(url) => println!("schema registry REST test: against the REAL registry at {url}"),
        Err(_) => println!(
            "schema registry REST test: SCHEMA_REGISTRY_URL is not set, so this runs against the \
             IN-REPO TEST DOUBLE, not a real Confluent registry. Set SCHEMA_REGISTRY_URL to check the real one."
        ),
    }
    let reg = registry();
    let http = reqwest::Client::new();
    let subject = unique("subject-value");
    let ct = "application/vnd.schemaregistry.v1+json";
    let text = include_str!("../schemas/profile_change.avsc");

    let r = http
        .get(format!("{}/schemas/ids/{}", reg.url, 987_654))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with(ct));
    assert_eq!(r.json::<Json>().await.unwrap()["error_code"], 40403);

    let r = http
        .get(format!("{}/subjects/{subject}/versions/latest", reg.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Json>().await.unwrap()["error_code"], 40401);

    let r = http
        .post(format!(
            "{}/compatibility/subjects/{subject}/versions/latest",
            reg.url
        ))
        .header("content-type", ct)
        .body(serde_json::json!({"schema": text}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Json>().await.unwrap()["error_code"], 40401);

    let register = |schema: String| {
        http.post(format!("{}/subjects/{subject}/versions", reg.url))
            .header("content-type", ct)
            .body(serde_json::json!({"schema": schema}).to_string())
            .send()
    };
    let r = register(text.into()).await.unwrap();
    assert_eq!(r.status(), 200);
    let id = r.json::<Json>().await.unwrap()["id"].as_u64().unwrap();
    let again = register(text.into())
        .await
        .unwrap()
        .json::<Json>()
        .await
        .unwrap();
    assert_eq!(
        again["id"].as_u64(),
        Some(id),
        "registering the same schema is idempotent"
    );

    let r = http
        .get(format!("{}/schemas/ids/{id}", reg.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Json = r.json().await.unwrap();
    apache_avro::Schema::parse_str(body["schema"].as_str().unwrap())
        .expect("the schema comes back");

    let latest: Json = http
        .get(format!("{}/subjects/{subject}/versions/latest", reg.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (latest["id"].as_u64(), latest["version"].as_u64()),
        (Some(id), Some(1))
    );
    assert_eq!(latest["subject"], subject.as_str());

    // A new required field without a default breaks BACKWARD compatibility.
    let mut breaking: Json = serde_json::from_str(text).unwrap();
    breaking["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "tenant", "type": "string"}));
    let r = http
        .post(format!(
            "{}/compatibility/subjects/{subject}/versions/latest",
            reg.url
        ))
        .header("content-type", ct)
        .body(serde_json::json!({"schema": breaking.to_string()}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Json>().await.unwrap()["is_compatible"], false);
    let r = register(breaking.to_string()).await.unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(r.json::<Json>().await.unwrap()["error_code"], 409);

    let r = register("{\"type\": \"nope\"}".into()).await.unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(r.json::<Json>().await.unwrap()["error_code"], 42201);
}

#[test]
fn a_kafka_pipeline_with_a_typo_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo().join("pipelines/kafka-local.yaml"))
        .unwrap()
        .replace("group_id:", "groupid:");
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(binary())
        .current_dir(repo())
        .args(["run", "--pipeline"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("groupid"));
}

#[test]
fn a_plain_http_registry_on_another_machine_or_credentials_in_its_url_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let root = repo().display().to_string();
    let shipped = std::fs::read_to_string(repo().join("pipelines/kafka-local.yaml"))
        .unwrap()
        .replace("../", &format!("{root}/"));
    for (url, says) in [
        (
            "http://registry.internal.example:8081",
            "plain http to another machine",
        ),
        (
            "https://sr-user:hunter2@registry.example.com",
            "carries credentials",
        ),
    ] {
        let path = dir.path().join("registry.yaml");
        std::fs::write(
            &path,
            shipped.replace("url: http://127.0.0.1:8081", &format!("url: {url}")),
        )
        .unwrap();
        let out = Command::new(binary())
            .current_dir(repo())
            .env_remove("SCHEMA_REGISTRY_URL")
            .args(["run", "--pipeline"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{url}: {stderr}");
        assert!(stderr.contains(says), "{url}: {stderr}");
        assert!(
            !stderr.contains("hunter2"),
            "the password is never repeated: {stderr}"
        );
    }
}

/// `/readyz` of a worker started on `pipeline` with a metrics endpoint: (status, body).
fn readyz(port: u16) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, response.split_once("\r\n\r\n")?.1.to_string()))
}

fn wait_readyz(port: u16, want: u16, worker: &mut Worker) -> String {
    let started = Instant::now();
    loop {
        if let Some((status, body)) = readyz(port) {
            if status == want {
                return body;
            }
        }
        if let Some(status) = worker.child.try_wait().unwrap() {
            panic!("the worker exited ({status}): {}", worker.log_tail());
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "/readyz did not answer {want} within 120 s: {:?}; log: {}",
            readyz(port),
            worker.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_waits_for_a_partition_and_a_standby_becomes_ready_when_the_owner_leaves() {
    let _serial = serial();
    // One partition, two workers: one holds it, the other stands by.
    let setup = Setup::new(1).await;
    let pipeline = setup.pipeline("ready", &setup.group, 100, "");
    let start = |name: &str| {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let data = setup.dir.path().join(name);
        let log = std::fs::File::create(setup.dir.path().join(format!("{name}.log"))).unwrap();
        let child = Command::new(binary())
            .current_dir(repo())
            .env("PROFILE_SYNC_LOG", "info")
            .args(["run", "--output", "json", "--metrics-addr"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--pipeline")
            .arg(&pipeline)
            .arg("--data-dir")
            .arg(&data)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start a worker");
        (
            port,
            Worker {
                child,
                log: setup.dir.path().join(format!("{name}.log")),
            },
        )
    };
    let (first_port, mut first) = start("first");
    wait_readyz(first_port, 200, &mut first);
    let (second_port, mut second) = start("second");
    wait_readyz(second_port, 503, &mut second);
    // The group settles with the partition on one of them; the other is the standby, and
    // says why it is not ready. A 503 "not open yet" while the standby still starts is not
    // the settled state, so the loop waits for the partition reason itself.
    let settle = Instant::now();
    let standby_reason = "no partitions assigned";
    let (owner, standby, standby_port) = loop {
        let a = readyz(first_port);
        let b = readyz(second_port);
        let is_standby = |r: &Option<(u16, String)>| matches!(r, Some((503, body)) if body.contains(standby_reason));
        let is_owner = |r: &Option<(u16, String)>| matches!(r, Some((200, _)));
        if is_owner(&a) && is_standby(&b) {
            break (first, second, second_port);
        }
        if is_standby(&a) && is_owner(&b) {
            break (second, first, first_port);
        }
        assert!(
            settle.elapsed() < Duration::from_secs(120),
            "the group did not settle on one owner and one standby: {a:?} {b:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    // The owner leaves cleanly (SIGTERM): the standby takes the partition and becomes ready.
    owner.terminate();
    let mut standby = standby;
    wait_readyz(standby_port, 200, &mut standby);
    standby.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn each_poison_message_is_dead_lettered_with_its_reason_and_the_worker_keeps_going() {
    let _serial = serial();
    let setup = Setup::new(1).await;
    let text = include_str!("../schemas/profile_change.avsc");
    let schema = apache_avro::Schema::parse_str(text).unwrap();
    let sr = profile_sync::schema::registry::settings(
        &setup.registry.url,
        Duration::from_secs(5),
        false,
    )
    .unwrap();
    let id = profile_sync::schema::registry::register(
        &sr,
        &profile_sync::schema::registry::value_subject(&setup.topic),
        &schema,
        text,
    )
    .await
    .unwrap();
    let base = |user: &str, version: i64, operation: &str, profile: Json| {
        serde_json::json!({
            "event_id": uuid::Uuid::new_v4().to_string(), "user_id": user, "operation": operation,
            "version": version, "occurred_at": 1_767_225_600_000i64 + version, "source": "test/poison",
            "profile": profile,
        })
    };
    let user = || uuid::Uuid::new_v4().to_string();
    let good = event(&schema, id, &user(), 1, "basic");
    let mut truncated = good.clone();
    truncated.truncate(good.len() - 4);
    let mut wrong_magic = good.clone();
    wrong_magic[0] = 1;
    let mut unknown_id = good.clone();
    unknown_id[1..5].copy_from_slice(&999_999u32.to_be_bytes());
    let bad_ip = encode(
        &schema,
        id,
        base(
            &user(),
            1,
            "UPSERT",
            serde_json::json!({"status": "ACTIVE", "last_seen_ip": "999.300.1.1"}),
        ),
    );
    // A display name whose bytes are not UTF-8: encode "ZZZZZZZZ", then swap its bytes.
    let mut bad_utf8 = encode(
        &schema,
        id,
        base(
            &user(),
            1,
            "UPSERT",
            serde_json::json!({"status": "ACTIVE", "display_name": "ZZZZZZZZ"}),
        ),
    );
    let at = bad_utf8
        .windows(8)
        .position(|w| w == b"ZZZZZZZZ")
        .expect("the name is in the datum");
    bad_utf8[at..at + 8].copy_from_slice(&[0xff, 0xfe, 0xc3, 0x28, 0xa0, 0xa1, 0xe2, 0x28]);
    let erased = user();
    let erase = encode(&schema, id, {
        let mut e = base(&erased, 2, "ERASE", Json::Null);
        e.as_object_mut().unwrap().remove("profile");
        e
    });
    let after_erasure = event(&schema, id, &erased, 3, "pro");
    // 5 MB behind a valid wire-format header: over source.max_event_bytes, and too large for
    // the dead-letter producer, so its letter carries the size instead of the value. (Issue 9
    // says 10 MB; tansu 0.6 accepts such a value but never delivers one of 6 MB or more to a
    // consumer, whatever its fetch sizes: checked with confluent-kafka, 5,000,000 bytes
    // delivered, 6,000,000 not. The code path is the same for any size over both limits.)
    let mut huge = good[..5].to_vec();
    huge.resize(5_000_000, 0x41);

    // (value, expected dead-letter class or None for an event that must be applied)
    let messages: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        ("good", good.clone(), None),
        ("truncated", truncated, Some("schema")),
        ("good again", event(&schema, id, &user(), 1, "pro"), None),
        ("wrong magic byte", wrong_magic, Some("malformed")),
        ("unknown schema id", unknown_id, Some("schema")),
        ("invalid IP", bad_ip, Some("invalid")),
        ("invalid UTF-8", bad_utf8, Some("schema")),
        ("erase", erase, None),
        ("upsert after erasure", after_erasure, Some("erased")),
        ("5 MB value", huge, Some("too_large")),
        ("last good", event(&schema, id, &user(), 1, "basic"), None),
    ];
    let producer: FutureProducer = client(&setup.brokers)
        .set("message.max.bytes", (16 << 20).to_string())
        .create()
        .unwrap();
    for (_, value, _) in &messages {
        producer
            .send(
                FutureRecord::<[u8], [u8]>::to(&setup.topic)
                    .key(b"poison".as_slice())
                    .payload(value.as_slice()),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
    }
    let pipeline = setup.pipeline("worker", &setup.group, 100, "  stop_when_idle_ms: 8000\n");
    let summary = setup.worker("w", &pipeline).finish();
    let poison = messages.iter().filter(|(_, _, c)| c.is_some()).count() as u64;
    assert_eq!(
        (
            summary["read"].as_u64(),
            summary["written"].as_u64(),
            summary["dead_lettered"].as_u64()
        ),
        (
            Some(messages.len() as u64),
            Some(messages.len() as u64 - poison),
            Some(poison)
        ),
        "{summary}"
    );
    let letters = setup.read_all(&setup.dlq);
    for (offset, (what, _, class)) in messages.iter().enumerate() {
        let letter = letters.values().find(|l| {
            l.headers.get("__connect.errors.offset").map(String::as_str)
                == Some(offset.to_string().as_str())
        });
        match (class, letter) {
            (None, None) => {}
            (Some(class), Some(l)) => {
                let got = &l.headers["__connect.errors.class.name"];
                let why = &l.headers["__connect.errors.exception.message"];
                assert!(
                    got.starts_with(class) || why.contains(class),
                    "{what}: dead-lettered as {got} ({why}), expected {class}"
                );
                assert!(!why.is_empty(), "{what}: a reason");
                let omitted = l.headers.get("__connect.errors.value.omitted");
                if *class == "too_large" {
                    assert_eq!(omitted.map(String::as_str), Some("5000000"), "{what}");
                    assert!(l.value.is_empty(), "{what}: the value is left out");
                } else if *class == "erased" {
                    assert_eq!(l.headers["profile-sync.sealing"], "withheld", "{what}");
                    assert!(
                        l.value.is_empty(),
                        "{what}: nothing of an erased user is kept"
                    );
                } else {
                    assert_eq!(omitted, None, "{what}");
                    assert!(
                        l.headers["profile-sync.sealing"].starts_with("day:")
                            || l.headers["profile-sync.sealing"].starts_with("user:"),
                        "{what}: {:?}",
                        l.headers
                    );
                    assert!(l.value != messages[offset].1, "{what}: the value is sealed");
                }
            }
            (None, Some(l)) => panic!("{what} was dead-lettered: {:?}", l.headers),
            (Some(_), None) => panic!("{what} is missing from the dead-letter topic"),
        }
    }
    setup.assert_fully_committed(&setup.group);

    // `dlq replay` opens the sealed values: exactly the original bytes come back, except the
    // erased user's event (not kept) and the value too large to have been dead-lettered.
    let replayed_topic = format!("{}-replayed", setup.topic);
    create_topics(&setup.brokers, &[(&replayed_topic, 1)]).await;
    let report = dlq_replay(&pipeline, &["--from", &setup.dlq, "--to", &replayed_topic]);
    assert_eq!(report["not_replayed_erased_or_expired"], 1, "{report}");
    let mut replayed: Vec<Vec<u8>> = setup
        .read_all(&replayed_topic)
        .into_values()
        .map(|d| d.value)
        .collect();
    let mut expected: Vec<Vec<u8>> = messages
        .iter()
        .filter(|(_, _, class)| class.is_some_and(|c| c != "erased" && c != "too_large"))
        .map(|(_, value, _)| value.clone())
        .collect();
    replayed.sort();
    expected.sort();
    assert!(
        replayed == expected,
        "the replayed values are the original events"
    );
}

/// A dead-letter topic that does not exist would stall a worker at its first dead letter (a
/// produce to it is retried forever): `run` refuses to start, with exit 2 and the topic's name,
/// and `check` reports it.
#[tokio::test]
async fn a_missing_dead_letter_topic_is_refused_at_startup_and_reported_by_check() {
    let _serial = serial();
    let setup = Setup::new(1).await;
    let pipeline = setup.pipeline("worker", &setup.group, 10, "  stop_when_idle_ms: 3000\n");
    let missing = unique("no-such-dlq");
    let text = std::fs::read_to_string(&pipeline).unwrap().replace(
        &format!("topic: {}", setup.dlq),
        &format!("topic: {missing}"),
    );
    std::fs::write(&pipeline, text).unwrap();
    let started = Instant::now();
    let out = Command::new(binary())
        .current_dir(repo())
        .args(["run", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&missing) && stderr.contains("does not exist"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "it did not stall"
    );
    let check = Command::new(binary())
        .current_dir(repo())
        .args(["check", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&check.stdout).to_string()
        + &String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(1), "{report}");
    assert!(
        report.contains("dead-letter") && report.contains(&missing),
        "{report}"
    );
}
