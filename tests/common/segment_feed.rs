//! The segment change feed seen from outside: the membership a consumer rebuilds from it, the
//! store's membership read straight from the SQLite file, the topic read by a Python consumer
//! that shares no code with profile-sync, and the check that no transition is missing.

use serde_json::Value as Json;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// Every segment `pipelines/local.yaml` declares: what a delete or an erasure exits.
pub const DECLARED: [&str; 6] = [
    "dormant",
    "eu_resident",
    "frequent_buyer",
    "high_value",
    "newsletter_audience",
    "paying",
];

/// Per user, the segments the stored profile holds (deleted and erased users hold none, and
/// users in no segment are left out).
pub fn stored_segments(store: &Path) -> HashMap<String, Vec<String>> {
    let db =
        rusqlite::Connection::open_with_flags(store, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = db
        .prepare(
            "SELECT user_id, json_extract(record, '$.segments') FROM profiles WHERE deleted = 0",
        )
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .unwrap();
    rows.map(|r| {
        let (user, segments) = r.unwrap();
        (user, serde_json::from_str(&segments).unwrap())
    })
    .filter(|(_, s): &(String, Vec<String>)| !s.is_empty())
    .collect()
}

/// The membership a consumer rebuilds from the feed: each user's set after their change with
/// the highest version (a change delivered again may arrive after newer ones).
pub fn membership_from_feed(changes: &[Json]) -> HashMap<String, Vec<String>> {
    let mut latest: HashMap<String, (i64, Vec<String>)> = HashMap::new();
    for c in changes {
        let version = c["version"].as_i64().unwrap();
        let segments: Vec<String> = serde_json::from_value(c["segments"].clone()).unwrap();
        let user = c["user_id"].as_str().unwrap().to_string();
        if latest.get(&user).is_none_or(|(v, _)| version >= *v) {
            latest.insert(user, (version, segments));
        }
    }
    latest
        .into_iter()
        .map(|(user, (_, segments))| (user, segments))
        .filter(|(_, s)| !s.is_empty())
        .collect()
}

fn set(v: &Json) -> BTreeSet<String> {
    serde_json::from_value(v.clone()).unwrap()
}

/// Asserts that, per user, the changes (deduplicated by user, version and cause, as the README
/// tells consumers to; a change delivered again may arrive after newer ones) first arrive in
/// version order, each one starting where the one before ended:
/// a lost transition would leave a change whose set before it (its segments without what it
/// entered, plus what it exited) is not the previous change's set after. A user's first change
/// starts from no segment, and a delete or an erasure (which exits every declared segment)
/// leaves none. Returns the deduplicated changes.
pub fn assert_no_transition_missing(changes: &[Json]) -> Vec<Json> {
    let mut seen: HashMap<(String, i64, String), Json> = HashMap::new();
    let mut by_user: HashMap<String, Vec<Json>> = HashMap::new();
    for c in changes {
        let user = c["user_id"].as_str().unwrap().to_string();
        let key = (
            user.clone(),
            c["version"].as_i64().unwrap(),
            c["cause"].to_string(),
        );
        if let Some(first) = seen.get(&key) {
            assert_eq!(
                first, c,
                "a redelivered change differs from its first delivery"
            );
            continue;
        }
        seen.insert(key, c.clone());
        by_user.entry(user).or_default().push(c.clone());
    }
    let mut unique = Vec::new();
    for (user, list) in by_user {
        let mut after: BTreeSet<String> = BTreeSet::new();
        let mut version = i64::MIN;
        for c in list {
            let v = c["version"].as_i64().unwrap();
            assert!(v > version, "{user}: version {v} after {version}");
            version = v;
            let (entered, exited, segments) =
                (set(&c["entered"]), set(&c["exited"]), set(&c["segments"]));
            assert!(
                entered.is_subset(&segments) && exited.is_disjoint(&segments),
                "{c}"
            );
            if matches!(c["cause"].as_str(), Some("DELETE" | "ERASE")) {
                let every: BTreeSet<String> = DECLARED.iter().map(|s| s.to_string()).collect();
                assert_eq!(exited, every, "{c}");
                assert!(segments.is_empty(), "{c}");
            } else {
                let before: BTreeSet<String> = segments
                    .difference(&entered)
                    .chain(exited.iter())
                    .cloned()
                    .collect();
                assert_eq!(
                    before, after,
                    "{user}: a transition before version {v} is missing"
                );
            }
            after = segments;
            unique.push(c);
        }
    }
    unique
}

/// The Python that has the Kafka clients `scripts/services` installs (confluent-kafka, fastavro).
pub fn outside_python() -> PathBuf {
    let python = std::env::var("PROFILE_SYNC_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/profile-sync")
        })
        .join("venv-kafka-clients/bin/python");
    assert!(
        python.exists(),
        "{} is missing: `scripts/services install kafka` installs the outside Kafka clients",
        python.display()
    );
    python
}

/// Every message of the segment change topic, read and decoded by the Python consumer.
pub fn read_topic_from_outside(brokers: &str, registry: &str, topic: &str) -> Vec<Json> {
    super::json_lines(
        &std::process::Command::new(outside_python())
            .arg(super::repo().join("tests/outside/read_segment_changes.py"))
            .args([brokers, registry, topic])
            .output()
            .unwrap(),
    )
}
