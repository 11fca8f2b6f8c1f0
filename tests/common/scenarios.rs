//! End-to-end scenarios as functions of a pipeline file, so the same body runs against every
//! adapter set (embedded: SQLite + keyring; AWS: DynamoDB + KMS). Each returns its run so the
//! caller can check what is adapter-specific.

use super::*;
use serde_json::Value as Json;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// What a scenario ran, for further checks by the caller.
pub struct ScenarioRun {
    pub dir: tempfile::TempDir,
    pub input: PathBuf,
    pub data: PathBuf,
    pub summary: Json,
    pub expected: HashMap<String, Expected>,
    pub canary: canary::Canary,
}

/// Stored state per user id: (version, deleted), read by an adapter-specific reader.
pub type StoredState = HashMap<String, (i64, bool)>;

/// (version, deleted) per user in an embedded SQLite store.
pub fn sqlite_state(db: &Path) -> StoredState {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT user_id, version, deleted FROM profiles")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, (r.get(1)?, r.get(2)?))))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn n(v: &Json, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

pub fn search_with(pipeline: &Path, data_dir: &Path, query: &str, limit: usize) -> Json {
    let output = bin()
        .args([
            "search",
            query,
            "--limit",
            &limit.to_string(),
            "--output",
            "json",
        ])
        .arg("--pipeline")
        .arg(pipeline)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "search failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// 20,000 generated events, 1% invalid, with late and duplicate deliveries and deletes:
/// every event ends written, stale or dead-lettered; the store holds exactly the latest
/// version of every user (delete fences included); the index exactly the live profiles; the
/// dead letters exactly the invalid lines; and running the same file again writes nothing.
pub fn twenty_thousand_events(
    pipeline: &Path,
    stored: &dyn Fn(&Path) -> StoredState,
) -> ScenarioRun {
    let dir = tempfile::tempdir().unwrap();
    let (input, generated) = generate(dir.path(), 20_000, 0.01, "jsonl", 7);
    let data = dir.path().join("data");
    let summary = run_with(pipeline, &input, &data);
    let expected = expected_state(&input);
    let canary = canary::Canary::of_generated(&input);

    assert_eq!(n(&summary, "read"), 20_000);
    assert_eq!(
        n(&summary, "written") + n(&summary, "stale") + n(&summary, "dead_lettered"),
        n(&summary, "read"),
        "{summary}"
    );
    assert_eq!(
        n(&summary, "dead_lettered"),
        n(&generated, "invalid"),
        "{summary}"
    );
    assert!(
        n(&summary, "stale") > 0,
        "the generator delivers late and duplicate events: {summary}"
    );

    let invalid: HashSet<usize> = invalid_lines(&input).into_iter().collect();
    let letters = std::fs::read_to_string(data.join("dead-letter.jsonl")).unwrap();
    let dead: HashSet<usize> = letters
        .lines()
        .map(|l| {
            let letter: Json = serde_json::from_str(l).unwrap();
            let reason = letter["reason"].as_str().unwrap();
            assert!(!reason.is_empty());
            canary.assert_absent("a dead letter's reason", reason);
            letter["position"]
                .as_str()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(
        dead, invalid,
        "every invalid line is dead-lettered, and only those"
    );

    let want: StoredState = expected
        .iter()
        .map(|(u, e)| (u.clone(), (e.version, e.deleted)))
        .collect();
    assert!(
        want.values().any(|(_, deleted)| *deleted),
        "the scenario has deletes"
    );
    let got = stored(&data);
    assert_eq!(
        got.len(),
        want.len(),
        "one stored profile or fence per user"
    );
    for (user, w) in &want {
        assert_eq!(got.get(user), Some(w), "user {user}");
    }

    let all = search_with(pipeline, &data, "*", 100_000);
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
    let live: HashMap<String, i64> = expected
        .iter()
        .filter(|(_, e)| !e.deleted)
        .map(|(u, e)| (u.clone(), e.version))
        .collect();
    assert_eq!(indexed, live, "the index holds exactly the live profiles");

    let again = run_with(pipeline, &input, &data);
    assert_eq!(n(&again, "written"), 0, "a replay changes nothing: {again}");
    assert_eq!(
        stored(&data),
        got,
        "a replay cannot resurrect or roll back anything"
    );

    ScenarioRun {
        dir,
        input,
        data,
        summary,
        expected,
        canary,
    }
}
