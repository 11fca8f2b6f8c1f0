//! Privacy operations end to end, with the embedded adapters: consent, erasure, export,
//! retention, and the audit trail they leave.

mod common;

use common::*;
use serde_json::{json, Value as Json};
use std::path::{Path, PathBuf};

const ALICE: &str = "aaaaaaaa-1111-4111-8111-111111111111";
const BOB: &str = "bbbbbbbb-2222-4222-8222-222222222222";
const ALICE_EMAIL: &str = "alice.privacy@example.org";
const ALICE_PHONE: &str = "+33 1 23 45 67 89";

fn upsert(user: &str, version: i64, email: &str, at: &str) -> String {
    json!({"event_id": uuid::Uuid::new_v4().to_string(), "user_id": user, "operation": "UPSERT", "version": version,
           "occurred_at": at, "source": "test",
           "profile": {"email": email, "phone": ALICE_PHONE, "display_name": "Alice Martin", "last_seen_ip": "5.100.1.1",
                       "postal_address": {"street": "1 Rue X", "city": "Paris", "postal_code": "75001", "country": "FR"},
                       "preferences": {"newsletter": "weekly"}, "status": "ACTIVE",
                       "marketing": {"lifetime_value": 2500.0, "order_count": 3, "plan": "pro"}}})
    .to_string()
}

fn consent(user: &str, version: i64, granted: bool) -> String {
    json!({"event_id": uuid::Uuid::new_v4().to_string(), "user_id": user, "operation": "CONSENT", "version": version,
           "occurred_at": "2026-03-01T00:00:00Z", "source": "consent-banner",
           "consent": {"purpose": "marketing", "granted": granted, "policy_version": "2026-01"}})
    .to_string()
}

fn erase_event(user: &str, version: i64) -> String {
    json!({"event_id": uuid::Uuid::new_v4().to_string(), "user_id": user, "operation": "ERASE", "version": version,
           "occurred_at": "2026-04-01T00:00:00Z", "source": "privacy-portal"})
    .to_string()
}

fn run_lines(dir: &Path, name: &str, lines: &[String]) -> Json {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    run(&path, &dir.join("data"))
}

fn get(data: &Path, user: &str) -> Json {
    let out = bin()
        .args(["get", user, "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn segments_in_index(data: &Path, user: &str) -> Vec<String> {
    let found = search(data, &format!("user_id:{user}"), 1);
    found["hits"][0]["segments"]
        .as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

fn audit(data: &Path, user: &str) -> Vec<Json> {
    let out = bin()
        .args(["audit", user, "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn operator(data: &Path, args: &[&str]) -> std::process::Output {
    bin()
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .args(["--actor", "dpo@example.org"])
        .output()
        .unwrap()
}

#[test]
fn withdrawing_consent_removes_the_user_from_purpose_segments_and_granting_brings_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    run_lines(
        dir.path(),
        "1.jsonl",
        &[
            upsert(ALICE, 1, ALICE_EMAIL, "2026-01-01T00:00:00Z"),
            consent(ALICE, 2, true),
        ],
    );
    assert!(get(&data, ALICE)["segments"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s == "newsletter_audience"));
    assert!(segments_in_index(&data, ALICE).contains(&"newsletter_audience".to_string()));

    run_lines(dir.path(), "2.jsonl", &[consent(ALICE, 3, false)]);
    assert!(!get(&data, ALICE)["segments"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s == "newsletter_audience"));
    let indexed = segments_in_index(&data, ALICE);
    assert!(
        !indexed.contains(&"newsletter_audience".to_string())
            && indexed.contains(&"high_value".to_string()),
        "{indexed:?}"
    );

    run_lines(dir.path(), "3.jsonl", &[consent(ALICE, 4, true)]);
    assert!(segments_in_index(&data, ALICE).contains(&"newsletter_audience".to_string()));
    let trail = audit(&data, ALICE);
    assert_eq!(trail.iter().filter(|r| r["action"] == "consent").count(), 3);
}

#[test]
fn without_a_consent_record_a_purpose_bound_segment_is_not_computed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    run_lines(
        dir.path(),
        "1.jsonl",
        &[upsert(BOB, 1, "bob@example.org", "2026-01-01T00:00:00Z")],
    );
    let segments = get(&data, BOB)["segments"].clone();
    assert!(
        !segments
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "newsletter_audience"),
        "{segments}"
    );
}

#[test]
fn erasure_shreds_the_key_removes_the_document_and_fences_older_events() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    run_lines(
        dir.path(),
        "1.jsonl",
        &[
            upsert(ALICE, 1, ALICE_EMAIL, "2026-01-01T00:00:00Z"),
            upsert(BOB, 1, "bob@example.org", "2026-01-01T00:00:00Z"),
        ],
    );
    // Keep Alice's ciphertexts as a backup would.
    let conn = rusqlite::Connection::open(data.join("profiles.sqlite")).unwrap();
    let backup: String = conn
        .query_row(
            "SELECT record FROM profiles WHERE user_id = ?1",
            [ALICE],
            |r| r.get(0),
        )
        .unwrap();
    let backup: Json = serde_json::from_str(&backup).unwrap();
    let ciphertexts = backup["encrypted"].as_object().unwrap().clone();
    assert!(ciphertexts.len() >= 4);

    let out = operator(
        &data,
        &["erase", ALICE, "--reason", "GDPR art. 17 request #42"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let keys: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM user_keys WHERE user_id = ?1",
            [ALICE],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(keys, 0, "the data key is gone");
    // No stored or backed-up ciphertext of Alice's can be decrypted: try each with every key left.
    let keyring: Json =
        serde_json::from_str(&std::fs::read_to_string(data.join("keyring.json")).unwrap()).unwrap();
    let mut stmt = conn
        .prepare("SELECT user_id, key_version, wrapped_key FROM user_keys")
        .unwrap();
    let remaining: Vec<(String, u32, Vec<u8>)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let kek = base64_decode(keyring["key_encryption_keys"][0]["key"].as_str().unwrap());
    for (owner, version, wrapped) in &remaining {
        let dek = unwrap_key(&kek, owner, *version, wrapped);
        for (field, sealed) in &ciphertexts {
            assert!(
                open_field(&dek, ALICE, field, sealed.as_str().unwrap()).is_none(),
                "{field} decrypted with {owner}'s key"
            );
        }
    }
    assert_eq!(search(&data, &format!("user_id:{ALICE}"), 5)["total"], 0);
    assert_eq!(get(&data, ALICE)["state"], "erased");
    let reveal = operator(&data, &["get", ALICE, "--reveal", "--reason", "check"]);
    assert_eq!(reveal.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&reveal.stderr).contains("was erased"));

    // A replayed older upsert stays stale; a newer one is refused with the reason "erased".
    let s = run_lines(
        dir.path(),
        "2.jsonl",
        &[
            upsert(ALICE, 1, ALICE_EMAIL, "2026-01-01T00:00:00Z"),
            upsert(ALICE, 9, ALICE_EMAIL, "2026-05-01T00:00:00Z"),
        ],
    );
    assert_eq!(
        (s["stale"].as_u64(), s["dead_lettered"].as_u64()),
        (Some(1), Some(1)),
        "{s}"
    );
    let letters = std::fs::read_to_string(data.join("dead-letter.jsonl")).unwrap();
    assert!(letters.contains("\"reason\":\"erased:"), "{letters}");
    assert_eq!(get(&data, ALICE)["state"], "erased");

    let trail = audit(&data, ALICE);
    let erase = trail
        .iter()
        .find(|r| r["action"] == "erase")
        .expect("an erase audit record");
    assert_eq!(erase["actor"], "dpo@example.org");
    assert_eq!(erase["reason"], "GDPR art. 17 request #42");
    let text = serde_json::to_string(&trail).unwrap();
    assert!(
        !text.contains(ALICE_EMAIL) && !text.contains(ALICE_PHONE),
        "the audit trail holds no PII values"
    );
    // Bob is untouched.
    assert_eq!(get(&data, BOB)["state"], "live");
}

#[test]
fn an_erase_event_in_the_stream_erases_like_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = run_lines(
        dir.path(),
        "1.jsonl",
        &[
            upsert(ALICE, 1, ALICE_EMAIL, "2026-01-01T00:00:00Z"),
            erase_event(ALICE, 2),
            upsert(ALICE, 1, ALICE_EMAIL, "2026-01-01T00:00:00Z"),
        ],
    );
    assert_eq!(
        (s["written"].as_u64(), s["stale"].as_u64()),
        (Some(2), Some(1)),
        "{s}"
    );
    assert_eq!(get(&data, ALICE)["state"], "erased");
    assert_eq!(search(&data, &format!("user_id:{ALICE}"), 5)["total"], 0);
    assert!(audit(&data, ALICE)
        .iter()
        .any(|r| r["action"] == "erase" && r["actor"] == "event:privacy-portal"));
}

#[test]
fn export_holds_exactly_what_was_written_and_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let line = upsert(ALICE, 3, ALICE_EMAIL, "2026-01-01T00:00:00Z");
    run_lines(
        dir.path(),
        "1.jsonl",
        &[consent(ALICE, 2, true), line.clone()],
    );
    let out_file: PathBuf = dir.path().join("export.json");
    let out = operator(
        &data,
        &[
            "export",
            ALICE,
            "--reason",
            "subject access request #7",
            "--out",
            out_file.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&out_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let export: Json = serde_json::from_str(&std::fs::read_to_string(&out_file).unwrap()).unwrap();
    let sent: Json = serde_json::from_str(&line).unwrap();
    for field in [
        "email",
        "phone",
        "display_name",
        "postal_address",
        "last_seen_ip",
        "preferences",
        "status",
    ] {
        let mut want = sent["profile"][field].clone();
        if field == "postal_address" {
            want["region"] = Json::Null;
        }
        assert_eq!(export["profile"][field], want, "{field}");
    }
    assert_eq!(export["profile"]["marketing"]["plan"], "pro");
    assert_eq!(export["derived"]["region"]["country"], "DE");
    assert!(export["derived"]["segments"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s == "newsletter_audience"));
    assert_eq!(export["consent"]["current"]["marketing"], true);
    assert_eq!(export["consent"]["history"].as_array().unwrap().len(), 1);
    let actions: Vec<&str> = export["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"export") && actions.contains(&"consent"),
        "{actions:?}"
    );
}

#[test]
fn retention_dry_run_lists_exactly_the_inactive_profiles_and_the_real_run_anonymises_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The pipeline's rule: no change for 730 days. As of 2026-06-01, 2024-01-01 is beyond it.
    run_lines(
        dir.path(),
        "1.jsonl",
        &[
            upsert(ALICE, 1, ALICE_EMAIL, "2024-01-01T00:00:00Z"),
            upsert(BOB, 1, "bob@example.org", "2026-01-01T00:00:00Z"),
        ],
    );
    let as_of = "2026-06-01T00:00:00Z";
    let dry = operator(&data, &["retention", "run", "--dry-run", "--as-of", as_of]);
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let report: Json = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(report["anonymised"], json!([ALICE]));
    assert_eq!(
        get(&data, ALICE)["state"],
        "live",
        "a dry run changes nothing"
    );

    let real = operator(&data, &["retention", "run", "--as-of", as_of]);
    assert!(
        real.status.success(),
        "{}",
        String::from_utf8_lossy(&real.stderr)
    );
    assert_eq!(
        serde_json::from_slice::<Json>(&real.stdout).unwrap()["anonymised"],
        json!([ALICE])
    );
    assert_eq!(get(&data, ALICE)["state"], "erased");
    assert_eq!(get(&data, BOB)["state"], "live");
    assert!(audit(&data, ALICE)
        .iter()
        .any(|r| r["action"] == "retention"));
}

#[test]
fn an_undeclared_consent_purpose_is_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let bad = consent(ALICE, 1, true).replace("\"marketing\"", "\"profiling\"");
    let s = run_lines(dir.path(), "1.jsonl", &[bad]);
    assert_eq!(s["dead_lettered"], 1);
    let letters = std::fs::read_to_string(dir.path().join("data/dead-letter.jsonl")).unwrap();
    assert!(letters.contains("privacy.purposes"), "{letters}");
}

// --- an independent decryption, following ARCHITECTURE.md, with a plain AES-GCM library ---

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn aes_open(key: &[u8], aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).ok()?);
    let (nonce, body) = sealed.split_at(12);
    let mut body = body.to_vec();
    key.open_in_place(
        Nonce::try_assume_unique_for_key(nonce).ok()?,
        Aad::from(aad),
        &mut body,
    )
    .ok()
    .map(|p| p.to_vec())
}

fn unwrap_key(kek: &[u8], user: &str, version: u32, wrapped: &[u8]) -> Vec<u8> {
    let aad = [
        b"profile-sync/user-key/v1".as_slice(),
        b"\0",
        user.as_bytes(),
        b"\0",
        version.to_string().as_bytes(),
    ]
    .concat();
    aes_open(kek, &aad, wrapped).expect("a remaining user key unwraps")
}

fn open_field(dek: &[u8], user: &str, field: &str, sealed: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let mut parts = sealed.splitn(3, '.');
    let (_, version, body) = (parts.next()?, parts.next()?, parts.next()?);
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .ok()?;
    let aad = [
        b"profile-sync/field/v1".as_slice(),
        b"\0",
        user.as_bytes(),
        b"\0",
        field.as_bytes(),
        b"\0",
        version.as_bytes(),
    ]
    .concat();
    aes_open(dek, &aad, &bytes)
}

#[test]
fn a_record_decrypts_independently_by_following_the_documented_format() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    run_lines(
        dir.path(),
        "1.jsonl",
        &[upsert(ALICE, 1, ALICE_EMAIL, "2026-01-01T00:00:00Z")],
    );
    let conn = rusqlite::Connection::open(data.join("profiles.sqlite")).unwrap();
    let (version, wrapped): (u32, Vec<u8>) = conn
        .query_row(
            "SELECT key_version, wrapped_key FROM user_keys WHERE user_id = ?1",
            [ALICE],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let record: String = conn
        .query_row(
            "SELECT record FROM profiles WHERE user_id = ?1",
            [ALICE],
            |r| r.get(0),
        )
        .unwrap();
    let record: Json = serde_json::from_str(&record).unwrap();
    let keyring: Json =
        serde_json::from_str(&std::fs::read_to_string(data.join("keyring.json")).unwrap()).unwrap();
    let dek = unwrap_key(
        &base64_decode(keyring["key_encryption_keys"][0]["key"].as_str().unwrap()),
        ALICE,
        version,
        &wrapped,
    );
    let email = open_field(
        &dek,
        ALICE,
        "email",
        record["encrypted"]["email"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(email, format!("\"{ALICE_EMAIL}\"").into_bytes());
    assert!(
        open_field(
            &dek,
            BOB,
            "email",
            record["encrypted"]["email"].as_str().unwrap()
        )
        .is_none(),
        "another user id in the AAD fails"
    );
    assert!(
        open_field(
            &dek,
            ALICE,
            "phone",
            record["encrypted"]["email"].as_str().unwrap()
        )
        .is_none(),
        "another field path fails"
    );
}
