//! Issue 9's scenario "each sink stopped for 10 seconds in the middle of a Kafka run": the
//! real `profile-sync run` on the full production stack (`pipelines/docker.yaml`: Kafka and
//! the Schema Registry double in; KMS keys, the DynamoDB store, the OpenSearch index and a
//! Kafka dead-letter topic out), with DynamoDB, then OpenSearch, then KMS unreachable for 10 s
//! each while events are pending.
//!
//! Each sink sits behind a fault proxy (`common::fault_proxy`) that drops every connection
//! during its outage: to the worker that is a stopped service, while the emulators keep their
//! in-memory state and the tests running alongside keep theirs. While a sink is down the
//! worker must neither exit nor commit (the batch in flight cannot be written, so it is not
//! acknowledged) nor dead-letter anything (an outage is transient, not a rejection); after the
//! last one it must finish with everything committed and the exact state in every sink.

mod common;

use common::canary::Canary;
use common::fault_proxy::{FaultProxy, DROP, PASS};
use common::services::*;
use common::stack::{Stack, Worker};
use common::topics::{read_all, GroupProgress};
use common::{expected_state, generate, INDEX_FIELDS};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

const EVENTS: u64 = 10_000;
const INVALID_RATIO: f64 = 0.01;
const SEED: u64 = 21;
const PARTITIONS: i32 = 3;
const OUTAGE: Duration = Duration::from_secs(10);
/// When, into an outage, the committed offsets are first sampled: a batch that was past the
/// stopped sink when it stopped may still finish and commit before then.
const SETTLED: Duration = Duration::from_secs(3);
/// The whole test, services' setup included.
const BUDGET: Duration = Duration::from_secs(600);

/// What the test changes in docker.yaml, and why:
/// - smaller batches, so that the run lasts through three outages;
/// - a group session of 60 s instead of 10: the group has one worker, and on a loaded
///   2-core machine the test broker (tansu) can leave heartbeats unanswered for over 10 s,
///   which revokes the partitions; a rebalance is not what this test is about;
/// - a key-encryption key wraps at most 5 new user keys (production: 100,000 or an hour), so
///   that new users keep needing KMS during the run and a KMS outage stalls it: with the
///   production bounds the one KMS call of the run happens at its start.
const EDITS: &[(&str, &str)] = &[
    ("batch_size: 2000", "batch_size: 500"),
    (
        "session.timeout.ms: \"10000\"",
        "session.timeout.ms: \"60000\"",
    ),
    (
        "  create_for_development: true\n",
        "  create_for_development: true\n  kek_cache:\n    max_uses: 5\n",
    ),
];

/// One sink behind its proxy: its name and the variable docker.yaml reads its address from.
struct Sink {
    name: &'static str,
    variable: &'static str,
    proxy: FaultProxy,
}

/// What one outage saw: committed offsets (summed) before it, [`SETTLED`] after the worker
/// first hit the stopped sink, and at its end.
struct Outage {
    sink: &'static str,
    before: i64,
    early: i64,
    late: i64,
    end: i64,
    waited_for_hit: Duration,
    down: Duration,
    dropped: u64,
}

impl std::fmt::Display for Outage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} down {:.1} s (first needed after {:.1} s): committed {} before, {} 3 s after, \
             {} at the end, of {}; {} requests dropped",
            self.sink,
            self.down.as_secs_f64(),
            self.waited_for_hit.as_secs_f64(),
            self.before,
            self.early,
            self.late,
            self.end,
            self.dropped
        )
    }
}

/// The worker under test, how far its group has committed, and the test's deadline.
struct Run {
    worker: Worker,
    progress: GroupProgress,
    dead_letter_topic: String,
    deadline: Instant,
}

impl Run {
    /// (committed, end) summed over the partitions. Fails if the topic no longer holds every
    /// produced event: the shared broker was reset under the test.
    fn committed(&self) -> (i64, i64) {
        let (committed, end) = self.progress.sum();
        assert_eq!(
            end, EVENTS as i64,
            "the topic does not hold the {EVENTS} produced events: was the broker reset?"
        );
        (committed, end)
    }

    /// How many dead letters the topic ever received.
    fn dead_letters(&self) -> i64 {
        self.progress.end_of(&self.dead_letter_topic)
    }

    fn assert_running(&mut self, when: &str) {
        assert!(
            self.worker.running(),
            "the worker exited {when}; its log:\n{}",
            self.worker.log_tail()
        );
        assert!(
            Instant::now() < self.deadline,
            "the test ran out of time {when}; the worker's log:\n{}",
            self.worker.log_tail()
        );
    }

    /// Waits until the group has committed more than `past`, and returns the committed sum.
    fn wait_committed_past(&mut self, past: i64, what: &str) -> i64 {
        loop {
            let (committed, end) = self.committed();
            if committed > past {
                return committed;
            }
            self.assert_running(&format!(
                "while waiting for {what} ({committed} of {end} committed)"
            ));
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Stops `sink` (its proxy drops every connection) while events are pending, and brings
    /// it back [`OUTAGE`] after the worker first needed it. The clock starts at that first
    /// dropped request rather than at the switch: on a loaded machine the worker may spend
    /// seconds waiting for the broker, and an outage it never noticed would prove nothing.
    ///
    /// Asserts what must hold meanwhile: the worker keeps running, the committed offsets do
    /// not move between [`SETTLED`] and the end (a batch that was past the sink when it
    /// stopped may still commit before), and no dead letter is written.
    fn stop_while_needed(&mut self, sink: &Sink) -> Outage {
        let (before, end) = self.committed();
        assert!(
            before < end,
            "{before} of {end} events were committed before the {} outage: nothing was \
             pending, so the outage would prove nothing (the run is too fast: produce more)",
            sink.name
        );
        let dropped = sink.proxy.faults();
        sink.proxy.set(DROP);
        let switched = Instant::now();
        while sink.proxy.faults() == dropped {
            self.assert_running(&format!("before it needed {}", sink.name));
            if switched.elapsed() > Duration::from_secs(5) {
                let (committed, end) = self.committed();
                assert!(
                    committed < end,
                    "the run committed everything without needing {}: the outage proved nothing",
                    sink.name
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let hit = Instant::now();
        std::thread::sleep(SETTLED);
        let early = self.committed().0;
        let letters_early = self.dead_letters();
        self.assert_running(&format!("3 s into the {} outage", sink.name));
        std::thread::sleep(OUTAGE.saturating_sub(hit.elapsed()));
        let late = self.committed().0;
        let letters_late = self.dead_letters();
        self.assert_running(&format!("during the {} outage", sink.name));
        sink.proxy.set(PASS);
        let outage = Outage {
            sink: sink.name,
            before,
            early,
            late,
            end,
            waited_for_hit: hit - switched,
            down: switched.elapsed(),
            dropped: sink.proxy.faults() - dropped,
        };
        assert_eq!(
            early,
            late,
            "offsets were committed while {} was down: nothing it has not taken may be \
             acknowledged ({outage}); the worker's log:\n{}",
            sink.name,
            self.worker.log_tail()
        );
        assert!(
            late < end,
            "everything was committed although {} was down ({outage})",
            sink.name
        );
        assert_eq!(
            letters_early, letters_late,
            "dead letters were written while {} was down: an outage is not a rejection",
            sink.name
        );
        outage
    }
}

#[test]
fn each_sink_stopped_for_10_seconds_mid_run_stalls_the_worker_and_it_ends_with_the_exact_state() {
    let started = Instant::now();
    let deadline = started + BUDGET;
    let stack = Stack::new("faults", PARTITIONS, EDITS);
    let sinks = [
        ("DynamoDB", "DYNAMODB_ENDPOINT", dynamodb_endpoint()),
        ("OpenSearch", "OPENSEARCH_URL", opensearch_url()),
        ("KMS", "KMS_ENDPOINT", kms_endpoint()),
    ]
    .map(|(name, variable, upstream)| Sink {
        name,
        variable,
        proxy: FaultProxy::start(&upstream),
    });

    let produced = stack.produce(EVENTS, INVALID_RATIO, SEED);
    let (jsonl, generated) = generate(stack.dir.path(), EVENTS, INVALID_RATIO, "jsonl", SEED);
    assert_eq!(
        produced["invalid"], generated["invalid"],
        "produce and generate make the same events"
    );
    let invalid = generated["invalid"].as_u64().unwrap();

    let through_proxies: Vec<(&str, String)> = sinks
        .iter()
        .map(|s| (s.variable, s.proxy.endpoint.clone()))
        .collect();
    let brokers = kafka_brokers();
    let mut run = Run {
        worker: stack.start_run(&through_proxies),
        progress: GroupProgress::new(&brokers, &stack.topic, &stack.group),
        dead_letter_topic: stack.dead_letter_topic.clone(),
        deadline,
    };
    run.wait_committed_past(0, "a first commit");
    for sink in &sinks {
        let outage = run.stop_while_needed(sink);
        eprintln!("{outage}");
        run.wait_committed_past(
            outage.late,
            &format!("a commit after the {} outage", sink.name),
        );
    }

    // Everything is committed, then SIGTERM: the worker runs until it is signalled (it has no
    // `stop_when_idle_ms`, which would also stop it while a stalled broker sends nothing).
    run.wait_committed_past(EVENTS as i64 - 1, "the last commit");
    let metrics = run.worker.metrics();
    assert!(
        metrics.contains("profile_sync_events_read_total"),
        "a scrape with the event counters: {metrics}"
    );
    run.worker.terminate();
    let (status, summary) = run.worker.wait(deadline);
    assert!(
        status.success(),
        "the run exited with {status}; its log:\n{}",
        run.worker.log_tail()
    );
    let summary =
        summary.unwrap_or_else(|| panic!("no JSON summary; log:\n{}", run.worker.log_tail()));
    for p in run.progress.partitions() {
        assert_eq!(
            p.committed, p.end,
            "partition {}: the committed offset must equal the end offset",
            p.partition
        );
    }

    // The canonical store: every valid user at its latest version (a delete keeps its row as
    // a fence), nobody else, and no PII in plaintext.
    let expected = expected_state(&jsonl);
    // The PII canary over every output of the run but the stores' ciphertext, checked below:
    // the worker's log and stdout, its metrics, everything it left in its folders.
    let canary = Canary::of_generated(&jsonl);
    canary.assert_absent("the metrics", &metrics);
    let swept = canary.assert_absent_from_files(stack.dir.path(), &[&jsonl]);
    assert!(swept >= 3, "the log, stdout and pipeline file were swept");
    let stored = dynamodb_state(&stack.name);
    let store_wrong: Vec<&String> = expected
        .iter()
        .filter(|(u, e)| stored.get(*u) != Some(&(e.version, e.deleted)))
        .map(|(u, _)| u)
        .collect();
    let store_extra = stored.keys().filter(|u| !expected.contains_key(*u)).count();
    assert_no_plaintext_pii(&block_on(scan_all(&stack.name)), &canary);

    // The index: exactly the live users, each at its latest version, nothing but public and
    // derived fields, no generated PII value anywhere.
    let documents = opensearch_documents(&stack.name);
    let live: HashMap<&String, i64> = expected
        .iter()
        .filter(|(_, e)| !e.deleted)
        .map(|(u, e)| (u, e.version))
        .collect();
    let index_wrong: Vec<&&String> = live
        .iter()
        .filter(|(u, v)| documents.get(**u).and_then(|d| d["version"].as_i64()) != Some(**v))
        .map(|(u, _)| u)
        .collect();
    let index_extra = documents.keys().filter(|u| !live.contains_key(u)).count();
    for (user, doc) in &documents {
        for field in doc.as_object().unwrap().keys() {
            assert!(
                INDEX_FIELDS.contains(&field.as_str()),
                "document of {user} has the field {field}, which the index must not hold"
            );
        }
        canary.assert_absent(&format!("the document of {user}"), doc.to_string());
    }

    // The dead letters: every invalid event (a message whose key is no valid user's: invalid
    // events have fresh user ids, malformed ones no key), sealed, and nothing else.
    let source = read_all(&brokers, &stack.topic);
    let invalid_at: HashSet<(i32, i64)> = source
        .iter()
        .filter(|(_, m)| {
            m.key
                .as_ref()
                .is_none_or(|k| !expected.contains_key(std::str::from_utf8(k).unwrap_or_default()))
        })
        .map(|(at, _)| *at)
        .collect();
    assert_eq!(
        invalid_at.len() as u64,
        invalid,
        "the source topic holds the generated invalid events"
    );
    let dead_letters = read_all(&brokers, &stack.dead_letter_topic);
    let mut lettered = HashSet::new();
    for letter in dead_letters.values() {
        let h = &letter.headers;
        for (name, value) in h {
            canary.assert_absent(&format!("dead-letter header {name}"), value);
        }
        assert_eq!(h["__connect.errors.topic"], stack.topic);
        let at = (
            h["__connect.errors.partition"].parse::<i32>().unwrap(),
            h["__connect.errors.offset"].parse::<i64>().unwrap(),
        );
        let original = source
            .get(&at)
            .unwrap_or_else(|| panic!("a dead letter points at {at:?}, not at a source message"));
        assert!(
            h.contains_key("profile-sync.sealing") && letter.value != original.value,
            "a dead letter carries its event sealed: {h:?}"
        );
        canary.assert_absent("a dead letter's value", &letter.value);
        lettered.insert(at);
    }
    let not_lettered = invalid_at.difference(&lettered).count();
    let wrongly_lettered = lettered.difference(&invalid_at).count();
    let repeated = dead_letters.len() - lettered.len();

    let n = |k: &str| summary[k].as_u64().unwrap();
    let lost = store_wrong.len() + index_wrong.len() + not_lettered;
    eprintln!(
        "each sink stopped 10 s (DynamoDB, OpenSearch, KMS): produced {EVENTS}, read {}, \
         written {}, stale {}, dead-lettered {} ({} dead letters on the topic, {repeated} \
         repeated), lost {lost}; {:.0} s",
        n("read"),
        n("written"),
        n("stale"),
        n("dead_lettered"),
        dead_letters.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(n("read"), EVENTS, "{summary}");
    assert_eq!(
        n("written") + n("stale") + n("dead_lettered"),
        n("read"),
        "{summary}"
    );
    assert_eq!(n("dead_lettered"), invalid, "{summary}");
    assert!(
        store_wrong.is_empty(),
        "{} users not at their latest version in DynamoDB, e.g. {:?}",
        store_wrong.len(),
        &store_wrong[..store_wrong.len().min(5)]
    );
    assert_eq!(store_extra, 0, "DynamoDB holds users that are not expected");
    assert!(
        index_wrong.is_empty(),
        "{} live users missing from the index or at another version, e.g. {:?}",
        index_wrong.len(),
        &index_wrong[..index_wrong.len().min(5)]
    );
    assert_eq!(index_extra, 0, "the index holds deleted or unknown users");
    assert_eq!(
        not_lettered, 0,
        "invalid events missing from the dead letters"
    );
    assert_eq!(wrongly_lettered, 0, "valid events in the dead letters");
    assert_eq!(lost, 0);
}

/// The proxy forwards a request byte for byte whatever frames its body (a binary, gzip-like
/// body with `Content-Length`, or a chunked one) and asks the upstream to close after the
/// answer; told to drop, it closes connections without one.
#[test]
fn the_fault_proxy_forwards_bodies_as_they_came_and_drops_connections_when_told() {
    use std::io::{Read, Write};
    // An upstream that answers each request with the bytes it received (the request is over
    // when nothing more comes for a moment).
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = upstream.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut conn in upstream.incoming().flatten() {
            conn.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = conn.read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", got.len());
            let _ = conn.write_all(&[head.as_bytes(), &got].concat());
        }
    });
    let proxy = FaultProxy::start(&address);
    let send = |request: &[u8]| {
        let mut conn =
            std::net::TcpStream::connect(common::services::host_port(&proxy.endpoint)).unwrap();
        conn.write_all(request).unwrap();
        let mut answer = Vec::new();
        let _ = conn.read_to_end(&mut answer);
        answer
    };
    let gzip_like: &[u8] = &[0x1f, 0x8b, 0x08, 0x00, b'\r', b'\n', 0xff];
    let request = [
        b"POST /_bulk HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\nContent-Length: 7\r\n\r\n"
            as &[u8],
        gzip_like,
    ]
    .concat();
    let echoed = send(&request);
    assert!(echoed.starts_with(b"HTTP/1.1 200 OK"), "{echoed:?}");
    assert!(
        echoed.ends_with(
            &[
                b"Content-Length: 7\r\nConnection: close\r\n\r\n" as &[u8],
                gzip_like
            ]
            .concat()
        ),
        "{}",
        String::from_utf8_lossy(&echoed)
    );
    let chunked: &[u8] = b"4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\nTrailer: t\r\n\r\n";
    let request = [
        b"POST /_bulk HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" as &[u8],
        chunked,
    ]
    .concat();
    let echoed = send(&request);
    assert!(
        echoed.ends_with(&[b"Connection: close\r\n\r\n" as &[u8], chunked].concat()),
        "{}",
        String::from_utf8_lossy(&echoed)
    );
    assert_eq!(proxy.faults(), 0);
    proxy.set(DROP);
    assert!(send(&request).is_empty(), "dropped without an answer");
    assert_eq!(proxy.faults(), 1);
}
