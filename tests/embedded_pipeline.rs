//! End-to-end: the real binary over generated events with the embedded adapters.

mod common;

use base64::Engine;
use common::canary::Canary;
use common::segment_feed::{assert_no_transition_missing, membership_from_feed, stored_segments};
use common::*;
use serde_json::Value as Json;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::OnceLock;

/// One 20,000-event run with 1% invalid, shared by the tests that only read its results.
struct Fixture {
    _dir: tempfile::TempDir,
    input: PathBuf,
    data: PathBuf,
    generated: Json,
    summary: Json,
    expected: HashMap<String, Expected>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let (input, generated) = generate(dir.path(), 20_000, 0.01, "jsonl", 7);
        let data = dir.path().join("data");
        let summary = run(&input, &data);
        let expected = expected_state(&input);
        Fixture {
            input,
            data,
            generated,
            summary,
            expected,
            _dir: dir,
        }
    })
}

/// The binary with `args`, the local pipeline and the fixture's data directory.
fn cli(data: &std::path::Path, args: &[&str]) -> std::process::Output {
    bin()
        .args(args)
        .arg("--pipeline")
        .arg(local_pipeline())
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap()
}

fn n(v: &Json, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

#[test]
fn every_event_is_written_stale_or_dead_lettered() {
    let f = fixture();
    let s = &f.summary;
    assert_eq!(n(s, "read"), 20_000);
    assert_eq!(
        n(s, "written") + n(s, "stale") + n(s, "dead_lettered"),
        n(s, "read"),
        "{s}"
    );
    assert_eq!(n(s, "dead_lettered"), n(&f.generated, "invalid"), "{s}");
    assert!(
        n(s, "stale") > 0,
        "the generator delivers late and duplicate events: {s}"
    );
}

#[test]
fn every_invalid_event_is_dead_lettered_with_its_reason_and_position() {
    let f = fixture();
    let invalid: HashSet<usize> = invalid_lines(&f.input).into_iter().collect();
    let text = std::fs::read_to_string(f.data.join("dead-letter.jsonl")).unwrap();
    let mut seen = HashSet::new();
    for line in text.lines() {
        let letter: Json = serde_json::from_str(line).unwrap();
        let position = letter["position"].as_str().unwrap();
        let line_no: usize = position.rsplit(':').next().unwrap().parse().unwrap();
        assert!(
            invalid.contains(&line_no),
            "a valid event was dead-lettered: {letter}"
        );
        assert!(!letter["reason"].as_str().unwrap().is_empty());
        assert!(
            ["decode", "enrich"].contains(&letter["stage"].as_str().unwrap()),
            "{letter}"
        );
        assert!(letter["sealed_payload_base64"]
            .as_str()
            .is_some_and(|p| !p.is_empty()));
        assert!(
            letter["sealing"]
                .as_str()
                .is_some_and(|p| p.starts_with("user:") || p.starts_with("day:")),
            "{letter}"
        );
        seen.insert(line_no);
    }
    assert_eq!(
        seen, invalid,
        "every invalid line is dead-lettered exactly once"
    );
}

#[test]
fn the_end_to_end_scenario_holds_with_the_embedded_adapters() {
    // The same body as tests/aws.rs runs with DynamoDB + KMS.
    common::scenarios::twenty_thousand_events(&local_pipeline(), &|data| {
        common::scenarios::sqlite_state(&data.join("profiles.sqlite"))
    });
}

#[test]
fn the_index_holds_exactly_the_live_profiles_at_their_latest_version() {
    let f = fixture();
    let all = search(&f.data, "*", 100_000);
    let indexed: HashMap<String, i64> = all["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["user_id"].as_str().unwrap().to_string(),
                h["version"].as_i64().unwrap(),
            )
        })
        .collect();
    let live: HashMap<String, i64> = f
        .expected
        .iter()
        .filter(|(_, e)| !e.deleted)
        .map(|(u, e)| (u.clone(), e.version))
        .collect();
    assert_eq!(all["total"].as_u64().unwrap() as usize, live.len());
    assert_eq!(indexed, live);
}

#[test]
fn search_finds_profiles_by_segment_and_region_and_shows_no_pii() {
    let f = fixture();
    let found = search(&f.data, "segments:high_value AND residency_zone:EU", 50);
    let hits = found["hits"].as_array().unwrap();
    assert!(
        !hits.is_empty(),
        "the generated data has high-value EU users"
    );
    for hit in hits {
        assert!(hit["segments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "high_value"));
        assert_eq!(hit["residency_zone"], "EU");
        assert!(hit["lifetime_value"].as_f64().unwrap() > 1000.0);
        for key in hit.as_object().unwrap().keys() {
            assert!(
                INDEX_FIELDS.contains(&key.as_str()),
                "unexpected field {key} in the index"
            );
        }
    }
    let by_country = search(&f.data, "country:DE", 5);
    assert!(by_country["total"].as_u64().unwrap() > 0);
}

#[test]
fn no_generated_pii_is_in_the_data_directory_in_plaintext() {
    let f = fixture();
    let canary = Canary::of_generated(&f.input);
    // The dead-letter file included: it keeps each invalid event sealed; its reasons must not
    // repeat any PII. Its payloads are base64, which a byte sweep cannot see through: they are
    // decoded and swept too.
    let swept = canary.assert_absent_from_files(&f.data, &[]);
    let letters = std::fs::read_to_string(f.data.join("dead-letter.jsonl")).unwrap();
    for line in letters.lines() {
        let letter: Json = serde_json::from_str(line).unwrap();
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(letter["sealed_payload_base64"].as_str().unwrap())
            .unwrap();
        canary.assert_absent("a dead letter's payload", &sealed);
    }
    assert!(
        swept >= 4,
        "the store, keyring, index and dead letters were swept"
    );
    assert!(f.data.join("profiles.sqlite").exists());
    // The index, whose segments are compressed on disk, is also asked directly.
    let sample = canary.needles().iter().find(|n| n.contains('@')).unwrap();
    let hits = search(&f.data, &format!("\"{sample}\""), 5);
    assert_eq!(hits["total"], 0);
}

#[test]
fn the_pii_canary_finds_generated_pii_where_it_is() {
    // The sweeps above could pass by looking for nothing: here the same canary must fail on
    // the generated input and on the dead letters' events once `dlq show --reveal` has opened
    // them (the events hold PII by design).
    let f = fixture();
    let canary = Canary::of_generated(&f.input);
    let shown = cli(
        &f.data,
        &["dlq", "show", "--reveal", "--reason", "canary test"],
    );
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    let originals: Vec<u8> = String::from_utf8(shown.stdout)
        .unwrap()
        .lines()
        .flat_map(|l| {
            let letter: Json = serde_json::from_str(l).unwrap();
            letter["payload"]
                .as_str()
                .unwrap_or_else(|| panic!("a dead letter opens: {letter}"))
                .as_bytes()
                .to_vec()
        })
        .collect();
    let input = std::fs::read(&f.input).unwrap();
    for (what, bytes) in [
        ("the input", input),
        ("the dead letters' events", originals),
    ] {
        let found = std::panic::catch_unwind(|| canary.assert_absent("probe", &bytes));
        assert!(found.is_err(), "the canary missed the PII in {what}");
    }
}

#[test]
fn reveal_returns_exactly_the_generated_pii_and_is_audited() {
    let f = fixture();
    let live: Vec<(&String, &Expected)> = f
        .expected
        .iter()
        .filter(|(_, e)| !e.deleted)
        .take(5)
        .collect();
    for (user, want) in live {
        let output = reveal(&f.data, user);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let got: Json = serde_json::from_slice(&output.stdout).unwrap();
        for field in [
            "email",
            "phone",
            "display_name",
            "avatar_url",
            "last_seen_ip",
            "postal_address",
            "birth_date",
        ] {
            let expected = want.profile.get(field).cloned().unwrap_or(Json::Null);
            let expected = match (field, expected) {
                ("birth_date", Json::Number(days)) => Json::from(
                    (chrono::NaiveDate::default() + chrono::Duration::days(days.as_i64().unwrap()))
                        .format("%Y-%m-%d")
                        .to_string(),
                ),
                ("postal_address", Json::Object(m)) => Json::Object(
                    m.into_iter()
                        .map(|(k, v)| (k, unwrap(&v).clone()))
                        .collect(),
                ),
                (_, v) => v,
            };
            assert_eq!(got["profile"][field], expected, "user {user} field {field}");
        }
        assert_eq!(got["version"].as_i64().unwrap(), want.version);
    }
    let conn = rusqlite::Connection::open(f.data.join("profiles.sqlite")).unwrap();
    let (count, fields): (i64, String) = conn
        .query_row(
            "SELECT COUNT(*), MAX(fields) FROM audit WHERE action = 'reveal' AND actor = 'test-suite'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(count >= 5);
    assert!(
        fields.contains("\"email\"") && !fields.contains('@'),
        "audit names fields, never values: {fields}"
    );
}

#[test]
fn get_without_reveal_masks_pii_and_sensitive_fields() {
    let f = fixture();
    let (user, want) = f.expected.iter().find(|(_, e)| !e.deleted).unwrap();
    let output = cli(&f.data, &["get", user]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let got: Json = serde_json::from_str(&text).unwrap();
    assert_eq!(got["profile"]["email"], "***");
    assert_eq!(got["profile"]["preferences"], "***");
    assert_eq!(got["profile"]["locale"], want.profile["locale"]);
    assert!(!text.contains(want.profile["email"].as_str().unwrap()));
}

#[test]
fn a_profile_can_be_found_by_email_through_the_blind_index() {
    let f = fixture();
    let (user, want) = f.expected.iter().find(|(_, e)| !e.deleted).unwrap();
    let email = want.profile["email"].as_str().unwrap().to_uppercase();
    let output = cli(&f.data, &["get", &email]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let got: Json = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(got["user_id"], Json::from(user.as_str()));
}

#[test]
fn reveal_without_a_reason_is_refused() {
    let f = fixture();
    let user = f.expected.keys().next().unwrap();
    bin()
        .args(["get", user, "--reveal", "--pipeline"])
        .arg(local_pipeline())
        .arg("--data-dir")
        .arg(&f.data)
        .assert()
        .code(2)
        .stderr(predicates::str::contains("--reason <REASON>"))
        .stdout("");
}

#[test]
fn no_pii_reaches_the_logs_at_any_level() {
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = generate(dir.path(), 3_000, 0.05, "jsonl", 21);
    let output = bin()
        .args(["--log-format", "json", "run", "--input"])
        .arg(&input)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("PROFILE_SYNC_LOG", "trace")
        .output()
        .unwrap();
    assert!(output.status.success());
    let logs = [output.stdout, output.stderr].concat();
    assert!(logs.len() > 1000, "trace logging produced output to scan");
    Canary::of_generated(&input).assert_absent("a log line", &logs);
}

#[test]
fn the_membership_rebuilt_from_the_segment_feed_is_the_stores_also_after_a_replay() {
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = generate(dir.path(), 20_000, 0.01, "jsonl", 11);
    // Small batches: many in flight at once, plain ones stored together.
    let pipeline = dir.path().join("small-batches.yaml");
    let text = std::fs::read_to_string(local_pipeline())
        .unwrap()
        .replace("../", &format!("{}/", repo().display()))
        .replace("batch_size: 2000", "batch_size: 250");
    std::fs::write(&pipeline, text).unwrap();
    let data = dir.path().join("data");
    let feed = |data: &std::path::Path| -> Vec<Json> {
        std::fs::read_to_string(data.join("segment-changes.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };

    run_with(&pipeline, &input, &data);
    let first = feed(&data);
    assert!(first.len() > 5_000, "{} changes", first.len());
    let stored = stored_segments(&data.join("profiles.sqlite"));
    assert!(stored.len() > 1_000);
    assert_no_transition_missing(&first);
    assert_eq!(membership_from_feed(&first), stored);
    // One (user, version, cause) always says the same (a duplicate event in the input re-emits
    // its change).
    let mut seen: HashMap<(String, i64, String), &Json> = HashMap::new();
    for c in &first {
        let user = c["user_id"].as_str().unwrap();
        let key = (
            user.to_string(),
            c["version"].as_i64().unwrap(),
            c["cause"].to_string(),
        );
        assert_eq!(*seen.entry(key).or_insert(c), c);
    }

    // The same events again (a consumer group rewound): only changes already emitted, with
    // the same content, and the membership is unchanged.
    run_with(&pipeline, &input, &data);
    let all = feed(&data);
    let again = &all[first.len()..];
    assert!(!again.is_empty());
    for c in again {
        let key = (
            c["user_id"].as_str().unwrap().to_string(),
            c["version"].as_i64().unwrap(),
            c["cause"].to_string(),
        );
        assert_eq!(
            seen.get(&key),
            Some(&c),
            "a replay emitted a change the first run did not"
        );
    }
    assert_eq!(
        membership_from_feed(&all),
        stored_segments(&data.join("profiles.sqlite"))
    );

    // `segments tail` prints the feed as it is; `segments backfill` adds one snapshot per live
    // profile, with its stored segments.
    let cli = |args: &[&str]| {
        let out = bin()
            .args(args)
            .arg("--pipeline")
            .arg(&pipeline)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let tailed: Vec<Json> = cli(&["segments", "tail", "--no-follow"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(tailed, all);
    cli(&["segments", "backfill"]);
    let snapshots: Vec<Json> = feed(&data)[all.len()..].to_vec();
    assert!(snapshots
        .iter()
        .all(|s| s["cause"] == "SNAPSHOT" && s["exited"] == serde_json::json!([])));
    assert_eq!(
        snapshots.len() as u64,
        sqlite_live_profiles(&data.join("profiles.sqlite"))
    );
    assert_eq!(
        membership_from_feed(&snapshots),
        stored_segments(&data.join("profiles.sqlite"))
    );
}

fn sqlite_live_profiles(store: &std::path::Path) -> u64 {
    rusqlite::Connection::open(store)
        .unwrap()
        .query_row("SELECT count(*) FROM profiles WHERE deleted = 0", [], |r| {
            r.get(0)
        })
        .unwrap()
}
