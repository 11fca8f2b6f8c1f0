//! The version rule end to end: the highest version wins, deletes fence, replays change nothing.

mod common;

use common::*;
use serde_json::{json, Value as Json};
use std::path::Path;

const ALICE: &str = "11111111-1111-4111-8111-111111111111";
const BOB: &str = "22222222-2222-4222-8222-222222222222";

fn event(user: &str, version: i64, op: &str, email: &str) -> String {
    let profile = if op == "DELETE" {
        Json::Null
    } else {
        json!({"email": email, "phone": "+49 30 555 0101", "last_seen_ip": "10.0.0.1", "status": "ACTIVE",
               "marketing": {"lifetime_value": 10.0, "order_count": 1, "plan": "free"}})
    };
    json!({"event_id": uuid::Uuid::new_v4().to_string(), "user_id": user, "operation": op, "version": version,
           "occurred_at": 1_767_225_600_000i64 + version, "source": "test", "profile": profile})
    .to_string()
}

fn write(dir: &Path, lines: &[String]) -> std::path::PathBuf {
    let path = dir.join("events.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn get(data: &Path, user: &str) -> Json {
    let out = reveal(data, user);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn stale_version_never_overwrites_newer_profile() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(
        dir.path(),
        &[
            event(ALICE, 5, "UPSERT", "new@x.example"),
            event(ALICE, 3, "UPSERT", "old@x.example"),
        ],
    );
    let data = dir.path().join("data");
    let s = run(&input, &data);
    assert_eq!(
        (s["written"].as_u64(), s["stale"].as_u64()),
        (Some(1), Some(1))
    );
    let got = get(&data, ALICE);
    assert_eq!(
        (got["version"].as_i64(), got["profile"]["email"].as_str()),
        (Some(5), Some("new@x.example"))
    );
}

#[test]
fn replayed_older_upsert_cannot_resurrect_a_deleted_profile() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(
        dir.path(),
        &[
            event(BOB, 1, "UPSERT", "bob@x.example"),
            event(BOB, 2, "DELETE", ""),
            event(BOB, 1, "UPSERT", "bob@x.example"),
        ],
    );
    let data = dir.path().join("data");
    run(&input, &data);
    let got = get(&data, BOB);
    assert_eq!(
        (got["state"].as_str(), got["version"].as_i64()),
        (Some("deleted"), Some(2))
    );
    assert_eq!(search(&data, &format!("user_id:{BOB}"), 5)["total"], 0);
}

#[test]
fn running_the_same_file_twice_changes_nothing_the_second_time() {
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = generate(dir.path(), 2_000, 0.0, "jsonl", 3);
    let data = dir.path().join("data");
    let first = run(&input, &data);
    let second = run(&input, &data);
    assert_eq!(second["written"], 0, "first {first}, second {second}");
    assert_eq!(
        second["stale"],
        first["written"].as_u64().unwrap() + first["stale"].as_u64().unwrap()
    );
}

#[test]
fn a_ciphertext_moved_to_another_user_fails_to_decrypt() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(
        dir.path(),
        &[
            event(ALICE, 1, "UPSERT", "alice@x.example"),
            event(BOB, 1, "UPSERT", "bob@x.example"),
        ],
    );
    let data = dir.path().join("data");
    run(&input, &data);
    let conn = rusqlite::Connection::open(data.join("profiles.sqlite")).unwrap();
    let record = |user: &str| -> Json {
        let text: String = conn
            .query_row(
                "SELECT record FROM profiles WHERE user_id = ?1",
                [user],
                |r| r.get(0),
            )
            .unwrap();
        serde_json::from_str(&text).unwrap()
    };
    let mut bob = record(BOB);
    bob["encrypted"]["email"] = record(ALICE)["encrypted"]["email"].clone();
    conn.execute(
        "UPDATE profiles SET record = ?1 WHERE user_id = ?2",
        [bob.to_string(), BOB.to_string()],
    )
    .unwrap();
    let out = reveal(&data, BOB);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("field email") && err.contains("does not decrypt"),
        "{err}"
    );
    assert!(!err.contains("alice@x.example"));
}
