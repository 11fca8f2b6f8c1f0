//! Privacy operations end to end: consent, erasure, export, retention, and the audit trail
//! they leave. Every scenario runs twice: on the embedded adapters and on DynamoDB Local + the
//! KMS emulator + the OpenSearch-API server (`scripts/services start`; a service that is down
//! fails the test, it never skips it).

mod common;

use common::services::*;
use common::*;
use serde_json::{json, Value as Json};
use std::path::PathBuf;

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

/// An upsert of `user` whose segments the scenario controls: `lifetime_value` decides
/// `high_value` (> 1000), `plan` decides `paying`; the IP is in Germany (`eu_resident`), the
/// newsletter preference and status make `newsletter_audience` with a marketing consent.
fn shopper(user: &str, version: i64, lifetime_value: f64, plan: &str, at: &str) -> String {
    json!({"event_id": uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, format!("{user}/{version}").as_bytes()).to_string(),
           "user_id": user, "operation": "UPSERT", "version": version, "occurred_at": at, "source": "test",
           "profile": {"email": "shopper@example.org", "last_seen_ip": "5.100.1.1", "last_seen_at": at,
                       "preferences": {"newsletter": "weekly"}, "status": "ACTIVE",
                       "marketing": {"lifetime_value": lifetime_value, "order_count": 3, "plan": plan}}})
    .to_string()
}

fn event(user: &str, version: i64, operation: &str, at: &str) -> String {
    json!({"event_id": uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, format!("{user}/{version}").as_bytes()).to_string(),
           "user_id": user, "operation": operation, "version": version, "occurred_at": at, "source": "test"})
    .to_string()
}

/// Where a scenario runs: the embedded adapters (SQLite, local keyring, tantivy) or the
/// production ones against the test services (DynamoDB Local, the KMS emulator, the
/// OpenSearch-API server). The scenarios only talk to the CLI, plus `Stack`'s independent
/// look at what is stored.
struct Stack {
    dir: tempfile::TempDir,
    pipeline: PathBuf,
    data: PathBuf,
    services: Option<Services>,
}

/// The names one services scenario owns.
struct Services {
    table: String,
    index: String,
}

impl Stack {
    fn embedded() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        Self {
            pipeline: local_pipeline(),
            data,
            dir,
            services: None,
        }
    }

    /// `pipelines/local.yaml` (its consent purposes, retention rules and segments) with the
    /// keys, store and index swapped for KMS, DynamoDB and OpenSearch, then bootstrapped.
    fn services() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pipeline = dir.path().join("services.yaml");
        let (table, index) = services_pipeline("privacy", &pipeline);
        Self {
            data: dir.path().join("data"),
            pipeline,
            dir,
            services: Some(Services { table, index }),
        }
    }

    /// The binary with `args`, this stack's pipeline and data directory.
    fn cli(&self, args: &[&str]) -> std::process::Output {
        bin()
            .args(args)
            .arg("--pipeline")
            .arg(&self.pipeline)
            .arg("--data-dir")
            .arg(&self.data)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> Json {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn run(&self, name: &str, lines: &[String]) -> Json {
        let path = self.dir.path().join(name);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        run_with(&self.pipeline, &path, &self.data)
    }

    fn get(&self, user: &str) -> Json {
        self.ok(&["get", user])
    }

    fn indexed(&self, user: &str) -> Json {
        self.ok(&["search", &format!("user_id:{user}"), "--output", "json"])
    }

    /// The segment change feed as the file holds it (pipelines/local.yaml's `segment_changes`).
    fn segment_changes(&self) -> Vec<Json> {
        std::fs::read_to_string(self.data.join("segment-changes.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn segments_in_index(&self, user: &str) -> Vec<String> {
        self.indexed(user)["hits"][0]["segments"]
            .as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    }

    fn audit(&self, user: &str) -> Vec<Json> {
        json_lines(&self.cli(&["audit", user]))
    }

    /// A privacy command run by the data protection officer.
    fn operator(&self, args: &[&str]) -> std::process::Output {
        let mut args = args.to_vec();
        args.extend(["--actor", "dpo@example.org"]);
        self.cli(&args)
    }

    /// A worker, in a thread, on `count` upserts: Alice at every third event, at ever higher
    /// versions, and other users between. Joining it gives the run's summary.
    fn worker_upserting_alice_every_third_event(
        &self,
        count: i64,
    ) -> std::thread::JoinHandle<Json> {
        let lines: Vec<String> = (0..count)
            .map(|i| {
                let user = if i % 3 == 0 {
                    ALICE.to_string()
                } else {
                    uuid::Uuid::from_u128(0x5eed_0000 + i as u128).to_string()
                };
                upsert(
                    &user,
                    i + 1,
                    &format!("u{i}@example.org"),
                    "2026-01-01T00:00:00Z",
                )
            })
            .collect();
        let input = self.dir.path().join("alice-every-third.jsonl");
        std::fs::write(&input, lines.join("\n") + "\n").unwrap();
        let (pipeline, data) = (self.pipeline.clone(), self.data.clone());
        std::thread::spawn(move || run_with(&pipeline, &input, &data))
    }

    /// How many erase records `user`'s audit trail holds.
    fn erase_audits(&self, user: &str) -> usize {
        self.audit(user)
            .iter()
            .filter(|r| r["action"] == "erase")
            .count()
    }

    /// The end every erasure scenario must reach, whatever failed on the way.
    fn assert_erased_indexed_nowhere_audited_once(&self, user: &str) {
        assert_eq!(self.get(user)["state"], "erased");
        assert_eq!(self.indexed(user)["total"], 0);
        assert_eq!(self.erase_audits(user), 1, "audited once");
    }

    fn dead_letters(&self) -> String {
        std::fs::read_to_string(self.data.join("dead-letter.jsonl")).unwrap()
    }

    /// One value of the embedded store, read with a plain SQLite client: `query` takes a user id.
    fn sqlite_value<T: rusqlite::types::FromSql>(&self, query: &str, user: &str) -> T {
        let conn = rusqlite::Connection::open(self.data.join("profiles.sqlite")).unwrap();
        conn.query_row(query, [user], |r| r.get(0)).unwrap()
    }

    /// The field ciphertexts of `user`'s stored record, read without the pipeline's code.
    fn stored_ciphertexts(&self, user: &str) -> serde_json::Map<String, Json> {
        let record: Json = match &self.services {
            None => {
                let text: String =
                    self.sqlite_value("SELECT record FROM profiles WHERE user_id = ?1", user);
                serde_json::from_str(&text).unwrap()
            }
            Some(s) => {
                serde_json::from_str(&attr(&dynamodb_item(s, user, "PROFILE"), "record")).unwrap()
            }
        };
        record["encrypted"].as_object().unwrap().clone()
    }

    /// `user`'s wrapped data key as stored, read without the pipeline's code.
    fn wrapped_key(&self, user: &str) -> Vec<u8> {
        match &self.services {
            None => self.sqlite_value("SELECT wrapped_key FROM user_keys WHERE user_id = ?1", user),
            Some(s) => binary_attr(&dynamodb_item(s, user, "KEY"), "wrapped_key"),
        }
    }

    /// `user`'s email blind index as stored.
    fn blind_index(&self, user: &str) -> String {
        match &self.services {
            None => self.sqlite_value("SELECT email_index FROM profiles WHERE user_id = ?1", user),
            Some(s) => attr(&dynamodb_item(s, user, "PROFILE"), "email_index"),
        }
    }

    /// The bytes of everything the worker wrote, by place: the data folder's files, and on the
    /// services every item of the table (each attribute's bytes) and every document of every
    /// index version (as JSON).
    fn everything_written(&self) -> Vec<(String, Vec<u8>)> {
        let mut places: Vec<(String, Vec<u8>)> = files_under(&self.data)
            .into_iter()
            .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
            .collect();
        if let Some(s) = &self.services {
            for item in dynamodb_items(&s.table) {
                let mut bytes = Vec::new();
                for (name, value) in &item {
                    bytes.extend(name.as_bytes());
                    match value {
                        aws_sdk_dynamodb::types::AttributeValue::B(b) => bytes.extend(b.as_ref()),
                        other => bytes.extend(format!("{other:?}").into_bytes()),
                    }
                }
                places.push((
                    format!("DynamoDB item {}/{}", attr(&item, "pk"), attr(&item, "sk")),
                    bytes,
                ));
            }
            let docs = opensearch_documents(&format!("{}-v*", s.index));
            places.push((
                "every OpenSearch document".into(),
                serde_json::to_vec(&docs).unwrap(),
            ));
        }
        places
    }

    /// Whether the index still holds `user`: on tantivy, a term of theirs in any segment (a
    /// deleted document's terms stay until a merge); on OpenSearch, a document in any version.
    fn index_holds(&self, user: &str) -> bool {
        match &self.services {
            None => {
                let index = tantivy::Index::open_in_dir(self.data.join("index")).unwrap();
                let field = index.schema().get_field("user_id").unwrap();
                let term = tantivy::Term::from_field_text(field, user);
                index.searchable_segments().unwrap().iter().any(|segment| {
                    tantivy::SegmentReader::open(segment)
                        .unwrap()
                        .inverted_index(field)
                        .unwrap()
                        .get_term_info(&term)
                        .unwrap()
                        .is_some()
                })
            }
            Some(s) => opensearch_documents(&format!("{}-v*", s.index)).contains_key(user),
        }
    }

    /// Every stored user key, unwrapped as ARCHITECTURE.md documents it: (owner, data key).
    fn remaining_user_keys(&self) -> Vec<(String, Vec<u8>)> {
        match &self.services {
            None => {
                let conn = rusqlite::Connection::open(self.data.join("profiles.sqlite")).unwrap();
                let keyring: Json = serde_json::from_str(
                    &std::fs::read_to_string(self.data.join("keyring.json")).unwrap(),
                )
                .unwrap();
                let kek = base64_decode(keyring["key_encryption_keys"][0]["key"].as_str().unwrap());
                let mut stmt = conn
                    .prepare("SELECT user_id, key_version, wrapped_key FROM user_keys")
                    .unwrap();
                let rows: Vec<(String, u32, Vec<u8>)> = stmt
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect();
                rows.into_iter()
                    .map(|(owner, version, wrapped)| {
                        let dek = unwrap_key(&kek, &owner, version, &wrapped);
                        (owner, dek)
                    })
                    .collect()
            }
            Some(s) => dynamodb_items(&s.table)
                .iter()
                .filter(|i| attr(i, "sk") == "KEY")
                .map(|key| {
                    let owner = attr(key, "pk").trim_start_matches("USER#").to_string();
                    let kek_id = attr(key, "kek_id");
                    let (_, generation) = kek_id.rsplit_once('#').unwrap();
                    let kek = kms_decrypt(binary_attr(key, "encrypted_kek"), generation);
                    let version: u32 = key["key_version"].as_n().unwrap().parse().unwrap();
                    let dek = unwrap_key(&kek, &owner, version, &binary_attr(key, "wrapped_key"));
                    (owner, dek)
                })
                .collect(),
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(s) = &self.services {
            block_on(async {
                let client = reqwest::Client::new();
                let _ = client
                    .delete(format!("{}/{}-v*", opensearch_url(), s.index))
                    .send()
                    .await;
                let _ = client
                    .delete(format!("{}/_index_template/{}", opensearch_url(), s.index))
                    .send()
                    .await;
            });
        }
    }
}

// --- plain clients for the services, apart from the pipeline's own adapters ---

fn dynamodb_items(table: &str) -> Vec<Item> {
    block_on(scan_all(table))
}

/// `user`'s item of sort key `sk` in the services stack's table.
fn dynamodb_item(services: &Services, user: &str, sk: &str) -> Item {
    dynamodb_items(&services.table)
        .into_iter()
        .find(|i| attr(i, "pk") == format!("USER#{user}") && attr(i, "sk") == sk)
        .unwrap_or_else(|| panic!("no {sk} item of {user}"))
}

fn attr(item: &Item, name: &str) -> String {
    item[name].as_s().unwrap().clone()
}

fn binary_attr(item: &Item, name: &str) -> Vec<u8> {
    item[name].as_b().unwrap().as_ref().to_vec()
}

/// KMS Decrypt of a key-encryption key with its documented encryption context.
fn kms_decrypt(blob: Vec<u8>, generation: &str) -> Vec<u8> {
    block_on(async {
        kms()
            .await
            .decrypt()
            .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(blob))
            .encryption_context("purpose", "profile-sync/kek")
            .encryption_context("generation", generation)
            .send()
            .await
            .unwrap()
            .plaintext()
            .unwrap()
            .as_ref()
            .to_vec()
    })
}

/// Each scenario runs once per stack: `<scenario>::embedded` and
/// `<scenario>::dynamodb_kms_opensearch`.
macro_rules! on_both_stacks {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[test]
            fn embedded() {
                super::$scenario(&super::Stack::embedded());
            }
            #[test]
            fn dynamodb_kms_opensearch() {
                super::$scenario(&super::Stack::services());
            }
        }
    )*};
}

on_both_stacks!(
    withdrawing_consent_removes_the_user_from_purpose_segments_and_granting_brings_them_back,
    without_a_consent_record_a_purpose_bound_segment_is_not_computed,
    erasure_shreds_the_key_removes_the_document_and_fences_older_events,
    an_erase_event_in_the_stream_erases_like_the_command,
    export_holds_exactly_what_was_written_and_is_audited,
    retention_dry_run_lists_exactly_the_inactive_profiles_and_the_real_run_anonymises_them,
    an_undeclared_consent_purpose_is_dead_lettered,
    a_record_decrypts_independently_by_following_the_documented_format,
    dead_letters_hold_no_plaintext_open_by_the_documented_format_and_are_shredded_by_erasure_and_retention,
    after_a_realistic_run_and_an_erasure_nothing_the_worker_wrote_gives_the_user_back,
    segment_changes_follow_upserts_consents_deletes_and_erasures_and_replays_repeat_them,
);
fn withdrawing_consent_removes_the_user_from_purpose_segments_and_granting_brings_them_back(
    stack: &Stack,
) {
    stack.run(
        "1.jsonl",
        &[
            upsert(ALICE, 1, ALICE_EMAIL, "2026-01-01T00:00:00Z"),
            consent(ALICE, 2, true),
        ],
    );
    assert!(stack.get(ALICE)["segments"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s == "newsletter_audience"));
    assert!(stack
        .segments_in_index(ALICE)
        .contains(&"newsletter_audience".to_string()));

    stack.run("2.jsonl", &[consent(ALICE, 3, false)]);
    assert!(!stack.get(ALICE)["segments"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s == "newsletter_audience"));
    let indexed = stack.segments_in_index(ALICE);
    assert!(
        !indexed.contains(&"newsletter_audience".to_string())
            && indexed.contains(&"high_value".to_string()),
        "{indexed:?}"
    );

    stack.run("3.jsonl", &[consent(ALICE, 4, true)]);
    assert!(stack
        .segments_in_index(ALICE)
        .contains(&"newsletter_audience".to_string()));
    let trail = stack.audit(ALICE);
    assert_eq!(trail.iter().filter(|r| r["action"] == "consent").count(), 3);
}

fn without_a_consent_record_a_purpose_bound_segment_is_not_computed(stack: &Stack) {
    stack.run(
        "1.jsonl",
        &[upsert(BOB, 1, "bob@example.org", "2026-01-01T00:00:00Z")],
    );
    let segments = stack.get(BOB)["segments"].clone();
    assert!(
        !segments
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "newsletter_audience"),
        "{segments}"
    );
}

fn erasure_shreds_the_key_removes_the_document_and_fences_older_events(stack: &Stack) {
    stack.run(
        "1.jsonl",
        &[
            upsert(ALICE, 1, ALICE_EMAIL, "2026-01-01T00:00:00Z"),
            upsert(BOB, 1, "bob@example.org", "2026-01-01T00:00:00Z"),
        ],
    );
    // Keep Alice's ciphertexts as a backup would.
    let ciphertexts = stack.stored_ciphertexts(ALICE);
    assert!(ciphertexts.len() >= 4);
    assert!(
        stack
            .remaining_user_keys()
            .iter()
            .any(|(owner, dek)| owner == ALICE
                && open_field(dek, ALICE, "email", ciphertexts["email"].as_str().unwrap())
                    .is_some()),
        "before erasure, Alice's key opens her email (so the check below can fail)"
    );

    let out = stack.operator(&["erase", ALICE, "--reason", "GDPR art. 17 request #42"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // No stored or backed-up ciphertext of Alice's can be decrypted: try each with every key left.
    let remaining = stack.remaining_user_keys();
    assert!(
        !remaining.iter().any(|(owner, _)| owner == ALICE),
        "the data key is gone"
    );
    assert!(!remaining.is_empty(), "Bob's key is still there");
    for (owner, dek) in &remaining {
        for (field, sealed) in &ciphertexts {
            assert!(
                open_field(dek, ALICE, field, sealed.as_str().unwrap()).is_none(),
                "{field} decrypted with {owner}'s key"
            );
        }
    }
    assert_eq!(stack.indexed(ALICE)["total"], 0);
    assert_eq!(stack.get(ALICE)["state"], "erased");
    let reveal = stack.operator(&["get", ALICE, "--reveal", "--reason", "check"]);
    assert_eq!(reveal.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&reveal.stderr).contains("was erased"));

    // A replayed older upsert stays stale; a newer one is refused with the reason "erased".
    let s = stack.run(
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
    let letters = stack.dead_letters();
    assert!(letters.contains("\"reason\":\"erased:"), "{letters}");
    assert_eq!(stack.get(ALICE)["state"], "erased");

    let trail = stack.audit(ALICE);
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
    assert_eq!(stack.get(BOB)["state"], "live");
}

fn an_erase_event_in_the_stream_erases_like_the_command(stack: &Stack) {
    let s = stack.run(
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
    assert_eq!(stack.get(ALICE)["state"], "erased");
    assert_eq!(stack.indexed(ALICE)["total"], 0);
    assert!(stack
        .audit(ALICE)
        .iter()
        .any(|r| r["action"] == "erase" && r["actor"] == "event:privacy-portal"));
}

fn export_holds_exactly_what_was_written_and_is_audited(stack: &Stack) {
    let line = upsert(ALICE, 3, ALICE_EMAIL, "2026-01-01T00:00:00Z");
    stack.run("1.jsonl", &[consent(ALICE, 2, true), line.clone()]);
    let out_file: PathBuf = stack.dir.path().join("export.json");
    // A file left there readable by others is made private, not written as it is.
    std::fs::write(&out_file, "old").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&out_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let out = stack.operator(&[
        "export",
        ALICE,
        "--reason",
        "subject access request #7",
        "--out",
        out_file.to_str().unwrap(),
    ]);
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

fn retention_dry_run_lists_exactly_the_inactive_profiles_and_the_real_run_anonymises_them(
    stack: &Stack,
) {
    // The pipeline's rule: no change for 730 days. As of 2026-06-01, 2024-01-01 is beyond it.
    stack.run(
        "1.jsonl",
        &[
            upsert(ALICE, 1, ALICE_EMAIL, "2024-01-01T00:00:00Z"),
            upsert(BOB, 1, "bob@example.org", "2026-01-01T00:00:00Z"),
        ],
    );
    let as_of = "2026-06-01T00:00:00Z";
    let dry = stack.operator(&["retention", "run", "--dry-run", "--as-of", as_of]);
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let report: Json = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(report["anonymised"], json!([ALICE]));
    assert_eq!(
        stack.get(ALICE)["state"],
        "live",
        "a dry run changes nothing"
    );

    let real = stack.operator(&["retention", "run", "--as-of", as_of]);
    assert!(
        real.status.success(),
        "{}",
        String::from_utf8_lossy(&real.stderr)
    );
    assert_eq!(
        serde_json::from_slice::<Json>(&real.stdout).unwrap()["anonymised"],
        json!([ALICE])
    );
    assert_eq!(stack.get(ALICE)["state"], "erased");
    assert_eq!(stack.get(BOB)["state"], "live");
    assert!(stack
        .audit(ALICE)
        .iter()
        .any(|r| r["action"] == "retention"));
}

fn an_undeclared_consent_purpose_is_dead_lettered(stack: &Stack) {
    let bad = consent(ALICE, 1, true).replace("\"marketing\"", "\"profiling\"");
    let s = stack.run("1.jsonl", &[bad]);
    assert_eq!(s["dead_lettered"], 1);
    let letters = stack.dead_letters();
    assert!(letters.contains("privacy.purposes"), "{letters}");
}

/// The documented dead-letter sealing: `nonce ‖ ciphertext ‖ tag`, AAD
/// `profile-sync/dead-letter/v1` 0 `<owner>` 0 `<key_version>`.
fn open_letter(dek: &[u8], owner: &str, version: &str, sealed: &[u8]) -> Option<Vec<u8>> {
    let aad = [
        b"profile-sync/dead-letter/v1".as_slice(),
        b"\0",
        owner.as_bytes(),
        b"\0",
        version.as_bytes(),
    ]
    .concat();
    aes_open(dek, &aad, sealed)
}

fn dead_letters_hold_no_plaintext_open_by_the_documented_format_and_are_shredded_by_erasure_and_retention(
    stack: &Stack,
) {
    // Alice's event decodes far enough to name her (its email is invalid); the broken line
    // names nobody. Both carry PII.
    let alice_bad = upsert(ALICE, 1, "not-an-email", "2026-01-01T00:00:00Z");
    let broken =
        r#"{"user_id": "cccccccc-3333-4333-8333-333333333333", "phone": "+44 20 7946 0958", "#;
    let s = stack.run(
        "1.jsonl",
        &[
            alice_bad.clone(),
            broken.to_string(),
            upsert(BOB, 1, "bob@example.org", "2026-01-01T00:00:00Z"),
        ],
    );
    assert_eq!(s["dead_lettered"], 2, "{s}");
    let raw = stack.dead_letters();
    for pii in [
        ALICE_PHONE,
        "not-an-email",
        "Alice Martin",
        "5.100.1.1",
        "1 Rue X",
        "+44 20 7946 0958",
    ] {
        assert!(
            !raw.contains(pii),
            "the dead-letter file holds {pii:?} in plaintext"
        );
    }
    let letters: Vec<Json> = raw
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let sealing_of = |letter: &Json| letter["sealing"].as_str().unwrap().to_string();
    let keys = stack.remaining_user_keys();
    let mut day_owner = None;
    for letter in &letters {
        let sealing = sealing_of(letter);
        let parts: Vec<&str> = sealing.split(':').collect();
        let (owner, expected) = match parts[0] {
            "user" => (parts[1].to_string(), alice_bad.as_str()),
            "day" => {
                let owner = uuid::Uuid::new_v5(
                    &uuid::Uuid::NAMESPACE_OID,
                    format!("profile-sync/dead-letter-key/{}", parts[1]).as_bytes(),
                )
                .to_string();
                day_owner = Some(owner.clone());
                (owner, broken)
            }
            other => panic!("unexpected sealing {other}"),
        };
        if parts[0] == "user" {
            assert_eq!(owner, ALICE, "sealed under the key of the event's user");
        }
        let (_, dek) = keys
            .iter()
            .find(|(o, _)| *o == owner)
            .expect("the sealing key is stored");
        let sealed = base64_decode(letter["sealed_payload_base64"].as_str().unwrap());
        let opened = open_letter(dek, &owner, parts[2], &sealed).expect("opens as documented");
        assert_eq!(String::from_utf8(opened).unwrap(), expected);
        assert!(
            open_letter(dek, BOB, parts[2], &sealed).is_none(),
            "another owner fails"
        );
    }
    let day_owner = day_owner.expect("the broken line is sealed under the day key");

    // Erasing Alice, who has no profile, only a dead letter, shreds it.
    let out = stack.operator(&["erase", ALICE, "--reason", "request #7"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stack.remaining_user_keys().iter().any(|(o, _)| o == ALICE));
    let shown = stack.operator(&["dlq", "show", "--reveal", "--reason", "check"]);
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    let shown: Vec<Json> = String::from_utf8(shown.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let alice_letter = shown
        .iter()
        .find(|l| sealing_of(l).starts_with("user:"))
        .unwrap();
    assert!(
        alice_letter["unreadable"]
            .as_str()
            .unwrap()
            .contains("key is gone"),
        "{alice_letter}"
    );
    let day_letter = shown
        .iter()
        .find(|l| sealing_of(l).starts_with("day:"))
        .unwrap();
    assert_eq!(day_letter["payload"], broken, "{day_letter}");

    // A later event of hers is refused and nothing of it kept.
    let s = stack.run(
        "2.jsonl",
        &[upsert(ALICE, 5, ALICE_EMAIL, "2026-02-01T00:00:00Z")],
    );
    assert_eq!(s["dead_lettered"], 1, "{s}");
    let last: Json = serde_json::from_str(stack.dead_letters().lines().last().unwrap()).unwrap();
    assert_eq!(
        (
            last["sealing"].as_str(),
            last["sealed_payload_base64"].as_str()
        ),
        (Some("withheld"), Some("")),
        "{last}"
    );
    assert!(!stack.dead_letters().contains(ALICE_EMAIL));

    // Retention deletes the day key once dead_letter.retention_days (30) have passed.
    let soon = (chrono::Utc::now() + chrono::Duration::days(10)).to_rfc3339();
    let report = stack.ok(&["retention", "run", "--as-of", &soon]);
    assert_eq!(report["dead_letter_keys_deleted"], 0, "{report}");
    let later = (chrono::Utc::now() + chrono::Duration::days(31)).to_rfc3339();
    let report = stack.ok(&["retention", "run", "--as-of", &later]);
    assert_eq!(report["dead_letter_keys_deleted"], 1, "{report}");
    assert!(!stack
        .remaining_user_keys()
        .iter()
        .any(|(o, _)| *o == day_owner));
    assert!(
        stack.remaining_user_keys().iter().any(|(o, _)| o == BOB),
        "users' keys stay"
    );
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

fn a_record_decrypts_independently_by_following_the_documented_format(stack: &Stack) {
    stack.run(
        "1.jsonl",
        &[upsert(ALICE, 1, ALICE_EMAIL, "2026-01-01T00:00:00Z")],
    );
    let encrypted = Json::Object(stack.stored_ciphertexts(ALICE));
    let record = json!({ "encrypted": encrypted });
    let (_, dek) = stack
        .remaining_user_keys()
        .into_iter()
        .find(|(owner, _)| owner == ALICE)
        .unwrap();
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

/// Erasure on the embedded store, checked on the raw bytes of what SQLite keeps on disk (the
/// database, its WAL and shared-memory files): after `erase`, none of the erased user's secrets
/// is anywhere in them — not the wrapped data key, not a ciphertext of any version written, not
/// the blind index of their email — while the other user's still are (so the scan can fail).
#[test]
fn after_erasure_the_sqlite_files_hold_no_byte_of_the_user_s_key_or_ciphertexts() {
    let stack = Stack::embedded();
    let mut secrets: Vec<(String, Vec<u8>)> = Vec::new();
    let mut bob_secrets: Vec<Vec<u8>> = Vec::new();
    // Several versions, so that older records pass through freed cells and WAL frames.
    for version in 1..=3 {
        let email = format!("alice.v{version}@example.org");
        stack.run(
            &format!("{version}.jsonl"),
            &[
                upsert(ALICE, version, &email, "2026-01-01T00:00:00Z"),
                upsert(BOB, version, "bob@example.org", "2026-01-01T00:00:00Z"),
            ],
        );
        for (field, sealed) in stack.stored_ciphertexts(ALICE) {
            secrets.push((
                format!("{field} ciphertext, v{version}"),
                sealed.as_str().unwrap().as_bytes().to_vec(),
            ));
        }
        let blind: String =
            stack.sqlite_value("SELECT email_index FROM profiles WHERE user_id = ?1", ALICE);
        secrets.push((format!("email blind index, v{version}"), blind.into_bytes()));
        let wrapped: Vec<u8> = stack.sqlite_value(
            "SELECT wrapped_key FROM user_keys WHERE user_id = ?1",
            ALICE,
        );
        secrets.push(("wrapped data key".into(), wrapped));
        bob_secrets
            .push(stack.sqlite_value("SELECT wrapped_key FROM user_keys WHERE user_id = ?1", BOB));
    }
    // A reader on the file while the erasure runs and the files are scanned, as a live
    // worker's would be: the WAL is not removed at the command's exit.
    let onlooker = rusqlite::Connection::open(stack.data.join("profiles.sqlite")).unwrap();
    let _: i64 = onlooker
        .query_row("SELECT count(*) FROM profiles", [], |r| r.get(0))
        .unwrap();
    let out = stack.operator(&["erase", ALICE, "--reason", "GDPR art. 17 request #43"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let files: Vec<PathBuf> = [
        "profiles.sqlite",
        "profiles.sqlite-wal",
        "profiles.sqlite-shm",
    ]
    .iter()
    .map(|f| stack.data.join(f))
    .filter(|p| p.exists())
    .collect();
    let bytes: Vec<u8> = files
        .iter()
        .flat_map(|p| std::fs::read(p).unwrap())
        .collect();
    assert!(
        bytes.len() > 4096,
        "the store files were read ({} bytes)",
        bytes.len()
    );
    let found = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(
        bob_secrets.iter().any(|s| found(s)),
        "Bob's wrapped key is found in the files, so the scan can find a key"
    );
    let left: Vec<&str> = secrets
        .iter()
        .filter(|(_, s)| found(s))
        .map(|(what, _)| what.as_str())
        .collect();
    assert!(
        left.is_empty(),
        "still in {files:?} after erasure: {left:?}"
    );
    eprintln!(
        "erasure completeness (SQLite): {} bytes of {} files scanned for {} secrets of the erased user: 0 found",
        bytes.len(),
        files.len(),
        secrets.len()
    );
    drop(onlooker);
}

/// The audit write fails in the middle of an erase event (a trigger, installed from outside,
/// refuses audit inserts): the run fails, the event is not acknowledged, and the run after the
/// fault is gone completes the erasure — audited exactly once, indexed nowhere — instead of
/// taking the replayed event for a stale one.
#[test]
fn an_erase_event_whose_audit_write_failed_is_completed_when_it_is_delivered_again() {
    let stack = Stack::embedded();
    stack.run(
        "1.jsonl",
        &[upsert(ALICE, 1, ALICE_EMAIL, "2026-01-01T00:00:00Z")],
    );
    assert_eq!(stack.indexed(ALICE)["total"], 1);
    let db = stack.data.join("profiles.sqlite");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER audit_sink_down BEFORE INSERT ON audit
             BEGIN SELECT RAISE(ABORT, 'the audit sink is down'); END;",
        )
        .unwrap();
    let erase = stack.dir.path().join("erase.jsonl");
    std::fs::write(&erase, erase_event(ALICE, 2) + "\n").unwrap();
    let failed = stack.cli(&[
        "run",
        "--input",
        erase.to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert!(
        !failed.status.success(),
        "the run stops on the failed audit write"
    );
    assert!(
        stack.audit(ALICE).iter().all(|r| r["action"] != "erase"),
        "the fault hit the audit write"
    );

    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("DROP TRIGGER audit_sink_down;")
        .unwrap();
    let summary = run_with(&stack.pipeline, &erase, &stack.data);
    assert_eq!(summary["read"], 1, "{summary}");
    stack.assert_erased_indexed_nowhere_audited_once(ALICE);

    // Delivered a third time, it changes nothing and writes no second audit record.
    run_with(&stack.pipeline, &erase, &stack.data);
    assert_eq!(stack.erase_audits(ALICE), 1, "audited once");
}

/// Backups keep the wrapped keys an erasure deleted, and the KEK that wrapped them would still
/// unwrap them. `keys rotate` moves every remaining key to a new KEK, `keys generations` shows
/// the old one wraps nothing stored any more, and `keys retire` removes it: the erased user's
/// key, taken from a copy of the store made before the erasure, no longer unwraps with
/// anything in the keyring (tried on the raw files, as documented), while the other user's
/// data still reads.
#[test]
fn rotating_then_retiring_the_local_kek_closes_what_a_backup_of_an_erased_user_still_holds() {
    let stack = Stack::embedded();
    stack.run(
        "1.jsonl",
        &[
            upsert(ALICE, 1, ALICE_EMAIL, "2026-01-01T00:00:00Z"),
            upsert(BOB, 1, "bob@example.org", "2026-01-01T00:00:00Z"),
        ],
    );
    let backup: Vec<u8> = stack.sqlite_value(
        "SELECT wrapped_key FROM user_keys WHERE user_id = ?1",
        ALICE,
    );
    let unwraps_with_the_keyring = || {
        let keyring: Json = serde_json::from_str(
            &std::fs::read_to_string(stack.data.join("keyring.json")).unwrap(),
        )
        .unwrap();
        let aad = [
            b"profile-sync/user-key/v1".as_slice(),
            b"\0",
            ALICE.as_bytes(),
            b"\0",
            b"1",
        ]
        .concat();
        keyring["key_encryption_keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|kek| {
                aes_open(&base64_decode(kek["key"].as_str().unwrap()), &aad, &backup).is_some()
            })
    };
    assert!(
        unwraps_with_the_keyring(),
        "the check can find what it looks for"
    );
    let before = stack.ok(&["keys", "generations"]);
    let old_kek = before["keyring"][0]["kek_id"].as_str().unwrap().to_string();
    assert_eq!(before["keyring"][0]["stored_keys"], 2, "{before}");
    assert_eq!(before["keyring"][0]["current"], true, "{before}");

    let out = stack.operator(&["erase", ALICE, "--reason", "request #11"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let refused = stack.cli(&["keys", "retire", "--kek", &old_kek]);
    assert_eq!(
        refused.status.code(),
        Some(2),
        "a KEK in use is not retired"
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("keys rotate"));

    let rotated = stack.ok(&["keys", "rotate"]);
    assert_eq!(rotated["rewrapped"], 1, "Bob's key: {rotated}");
    let new_kek = rotated["new_kek"].as_str().unwrap().to_string();
    let after = stack.ok(&["keys", "generations"]);
    let keyring = after["keyring"].as_array().unwrap();
    let entry = |id: &str| keyring.iter().find(|k| k["kek_id"] == id).unwrap().clone();
    assert_eq!(entry(&old_kek)["retirable"], true, "{after}");
    assert_eq!(entry(&new_kek)["stored_keys"], 1, "{after}");
    assert_eq!(entry(&new_kek)["current"], true, "{after}");
    let retired = stack.ok(&["keys", "retire", "--kek", &old_kek]);
    assert_eq!(retired["retired"], old_kek.as_str());

    assert!(
        !unwraps_with_the_keyring(),
        "the erased user's key from the backup still unwraps"
    );
    let bob = stack.operator(&["get", BOB, "--reveal", "--reason", "check"]);
    assert!(
        bob.status.success(),
        "{}",
        String::from_utf8_lossy(&bob.stderr)
    );
    let bob: Json = serde_json::from_slice(&bob.stdout).unwrap();
    assert_eq!(bob["profile"]["email"], "bob@example.org");
    assert_eq!(
        stack
            .cli(&["keys", "retire", "--kek", &new_kek])
            .status
            .code(),
        Some(2),
        "the current KEK is never retired"
    );
}

/// Everything the worker wrote, after a run with several versions, a consent, a dead letter,
/// a reindex (on OpenSearch) and an erasure; the worker's metrics output too. Embedded: every file of the data folder (the SQLite database, WAL and shm,
/// the index folder, the dead-letter file, the keyring). DynamoDB + KMS + OpenSearch: every
/// item of the table, every document of every index version, and the data folder (the
/// dead-letter file). On both, every log line at trace level, scanned as raw bytes for the
/// erased user's wrapped key, ciphertexts, blind index and plaintext values, the dead letters'
/// payloads decoded and scanned too, the index asked for the user, and every key left in the
/// store tried on the user's ciphertexts and sealed dead letter. Nothing of the user is
/// recoverable; the other user's wrapped key is found by the same scan (so it can fail).
fn after_a_realistic_run_and_an_erasure_nothing_the_worker_wrote_gives_the_user_back(
    stack: &Stack,
) {
    let mut logs = Vec::new();
    let mut run_logged = |name: &str, lines: &[String]| {
        let path = stack.dir.path().join(name);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let out = bin()
            .args(["--log-format", "json", "run", "--pipeline"])
            .arg(&stack.pipeline)
            .arg("--input")
            .arg(&path)
            .arg("--data-dir")
            .arg(&stack.data)
            .args(["--output", "json"])
            .env("PROFILE_SYNC_LOG", "trace")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        logs.extend(out.stderr);
        logs.extend(out.stdout);
    };
    let mut plaintexts: Vec<String> = vec![
        ALICE_PHONE.into(),
        "Alice Martin".into(),
        "not-an-email-alice".into(),
    ];
    let mut secrets: Vec<(String, Vec<u8>)> = Vec::new();
    for version in 1..=3 {
        let email = format!("alice.realistic.v{version}@example.org");
        plaintexts.push(email.clone());
        let mut lines = vec![
            upsert(ALICE, version * 2, &email, "2026-01-01T00:00:00Z"),
            upsert(
                BOB,
                version,
                "bob.realistic@example.org",
                "2026-01-01T00:00:00Z",
            ),
        ];
        if version == 2 {
            lines.push(consent(ALICE, 3, true));
            lines.push(upsert(
                ALICE,
                1,
                "not-an-email-alice",
                "2026-01-01T00:00:00Z",
            ));
        }
        run_logged(&format!("{version}.jsonl"), &lines);
        for (field, sealed) in stack.stored_ciphertexts(ALICE) {
            secrets.push((
                format!("{field} ciphertext v{version}"),
                sealed.as_str().unwrap().as_bytes().to_vec(),
            ));
        }
        secrets.push((
            format!("blind index v{version}"),
            stack.blind_index(ALICE).into_bytes(),
        ));
    }
    // One more version through a worker that serves its metrics, read before it is stopped.
    let metrics = {
        let path = stack.dir.path().join("4.jsonl");
        let email = "alice.realistic.v4@example.org";
        plaintexts.push(email.into());
        std::fs::write(
            &path,
            upsert(ALICE, 8, email, "2026-01-01T00:00:00Z") + "\n",
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut worker = std::process::Command::new(binary())
            .args([
                "run",
                "--hold",
                "--metrics-addr",
                &format!("127.0.0.1:{port}"),
                "--pipeline",
            ])
            .arg(&stack.pipeline)
            .arg("--input")
            .arg(&path)
            .arg("--data-dir")
            .arg(&stack.data)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        let body = loop {
            let scraped = block_on(async {
                reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
                    .await
                    .ok()?
                    .text()
                    .await
                    .ok()
            });
            if let Some(body) = scraped.filter(|b| {
                b.lines().any(|l| {
                    l.starts_with("profile_sync_events_written_total ") && !l.ends_with(" 0")
                })
            }) {
                break body;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(60),
                "no metrics in time"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        let _ = worker.kill();
        let _ = worker.wait();
        body
    };
    for (field, sealed) in stack.stored_ciphertexts(ALICE) {
        secrets.push((
            format!("{field} ciphertext v4"),
            sealed.as_str().unwrap().as_bytes().to_vec(),
        ));
    }
    secrets.push(("wrapped data key".into(), stack.wrapped_key(ALICE)));
    let bob_wrapped = stack.wrapped_key(BOB);
    if stack.services.is_some() {
        // A reindex: the older index version keeps her document unless the erasure reaches it.
        let out = stack.cli(&["reindex", "--page-size", "100", "--output", "json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stack.index_holds(ALICE));
    }
    let alice_letters: Vec<Vec<u8>> = stack
        .dead_letters()
        .lines()
        .map(|l| serde_json::from_str::<Json>(l).unwrap())
        .filter(|l| {
            l["sealing"]
                .as_str()
                .unwrap()
                .starts_with(&format!("user:{ALICE}:"))
        })
        .map(|l| base64_decode(l["sealed_payload_base64"].as_str().unwrap()))
        .collect();
    assert_eq!(
        alice_letters.len(),
        1,
        "her invalid event is dead-lettered, sealed"
    );
    let ciphertexts: Vec<Vec<u8>> = secrets
        .iter()
        .filter(|(what, _)| what.contains("ciphertext"))
        .map(|(_, c)| c.clone())
        .collect();

    let out = stack.operator(&["erase", ALICE, "--reason", "request #12"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    logs.extend(out.stderr);

    // Raw bytes of everything written, the logs, and the dead letters' payloads.
    let mut scanned = stack.everything_written();
    scanned.push(("the logs".into(), logs));
    scanned.push(("the metrics".into(), metrics.into_bytes()));
    for line in stack.dead_letters().lines() {
        let letter: Json = serde_json::from_str(line).unwrap();
        let payload = base64_decode(letter["sealed_payload_base64"].as_str().unwrap());
        scanned.push((format!("dead letter {}", letter["position"]), payload));
    }
    let bytes: usize = scanned.iter().map(|(_, b)| b.len()).sum();
    let mut found = Vec::new();
    let mut bob_found = false;
    for (place, content) in &scanned {
        let holds = |needle: &[u8]| content.windows(needle.len()).any(|w| w == needle);
        for (what, secret) in &secrets {
            if holds(secret) {
                found.push(format!("{what} in {place}"));
            }
        }
        for text in &plaintexts {
            if holds(text.as_bytes()) {
                found.push(format!("a plaintext value in {place}"));
            }
        }
        bob_found |= holds(&bob_wrapped);
    }
    println!(
        "scanned {bytes} bytes in {} places for {} secrets and {} plaintext values: {} found",
        scanned.len(),
        secrets.len(),
        plaintexts.len(),
        found.len()
    );
    assert!(found.is_empty(), "recoverable after the erasure: {found:?}");
    assert!(bob_found, "the scan finds the other user's wrapped key");

    assert!(
        !stack.index_holds(ALICE),
        "the index still holds the erased user"
    );
    assert!(stack.index_holds(BOB));

    // Every key left, tried on what an attacker may have copied before: nothing opens.
    let keys = stack.remaining_user_keys();
    assert!(keys.iter().any(|(owner, _)| owner == BOB));
    for (owner, dek) in &keys {
        for sealed in &ciphertexts {
            let text = std::str::from_utf8(sealed).unwrap();
            for field in [
                "email",
                "phone",
                "display_name",
                "postal_address",
                "last_seen_ip",
            ] {
                assert!(
                    open_field(dek, ALICE, field, text).is_none(),
                    "a ciphertext of hers opens with {owner}'s key"
                );
            }
        }
        for letter in &alice_letters {
            assert!(
                open_letter(dek, ALICE, "1", letter).is_none(),
                "her dead letter opens with {owner}'s key"
            );
        }
    }
}

/// A CLI erase lands while a live worker is upserting the same user at ever higher versions
/// (DynamoDB + KMS + OpenSearch, where both can run at once). The worker's later changes of
/// the user are refused by the fence in the store's own condition, whatever its batches read
/// before: the user ends erased, in no index document, with one erase audit record.
#[test]
fn a_cli_erase_racing_a_live_worker_that_upserts_the_user_ends_erased_indexed_nowhere_audited_once()
{
    let stack = Stack::services();
    let worker = stack.worker_upserting_alice_every_third_event(15_000);
    // Erase once the worker has stored her a few times, while it is still going.
    let started = std::time::Instant::now();
    loop {
        let got = stack.cli(&["get", ALICE]);
        let version = serde_json::from_slice::<Json>(&got.stdout)
            .ok()
            .and_then(|g| g["version"].as_i64())
            .unwrap_or(0);
        if version >= 1_500 {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "the worker stored no version of the user in time"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = stack.operator(&["erase", ALICE, "--reason", "request #13"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !worker.is_finished(),
        "the worker ended before the erasure: the race did not happen (give it more events)"
    );
    let summary = worker.join().unwrap();
    assert!(
        summary["dead_lettered"].as_u64().unwrap() > 0,
        "her later events are refused: {summary}"
    );
    stack.assert_erased_indexed_nowhere_audited_once(ALICE);
    assert!(!stack.remaining_user_keys().iter().any(|(o, _)| o == ALICE));
}

/// On the embedded stack a running worker holds the tantivy index: the reading commands run
/// beside it, and `erase` is refused with exit 2 and the reason, changing nothing.
#[test]
fn beside_an_embedded_worker_reads_work_and_an_erase_is_refused_with_the_reason() {
    let stack = Stack::embedded();
    let worker = stack.worker_upserting_alice_every_third_event(90_000);
    let started = std::time::Instant::now();
    while !stack.cli(&["get", ALICE]).status.success() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "nothing stored in time"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let search = stack.cli(&["search", "*", "--output", "json"]);
    let erase = stack.operator(&["erase", ALICE, "--reason", "request #14"]);
    assert!(
        !worker.is_finished(),
        "the worker ended before the commands ran: give it more events"
    );
    assert!(
        search.status.success(),
        "{}",
        String::from_utf8_lossy(&search.stderr)
    );
    assert_eq!(erase.status.code(), Some(2));
    let why = String::from_utf8_lossy(&erase.stderr);
    assert!(
        why.contains("in use by another profile-sync process"),
        "{why}"
    );
    worker.join().unwrap();
    assert_ne!(
        stack.get(ALICE)["state"],
        "erased",
        "the refused erase changed nothing"
    );
    assert!(stack.audit(ALICE).iter().all(|r| r["action"] != "erase"));
}

/// With `keys.master_key_env`, the keyring file in the data folder holds its keys sealed under
/// a master key from the environment: the worker runs with the variable and refuses to start,
/// naming it, without; the file holds no key in plaintext.
#[test]
fn a_keyring_sealed_under_a_master_key_from_the_environment_is_useless_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(local_pipeline())
        .unwrap()
        .replace("../", &format!("{}/", repo().display()))
        .replace(
            "  path: keyring.json ",
            "  master_key_env: PS_TEST_KEYRING_MASTER\n  path: keyring.json ",
        );
    let pipeline = dir.path().join("sealed.yaml");
    std::fs::write(&pipeline, text).unwrap();
    let input = dir.path().join("1.jsonl");
    std::fs::write(
        &input,
        upsert(ALICE, 1, ALICE_EMAIL, "2026-01-01T00:00:00Z") + "\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let master = "q83vEjRWeJq8f7p9YmFzZTY0LWtleS0zMi1ieXRlcyE=";
    let run = |env: Option<&str>| {
        let mut cmd = bin();
        cmd.args(["run", "--pipeline"])
            .arg(&pipeline)
            .arg("--input")
            .arg(&input)
            .arg("--data-dir")
            .arg(&data)
            .env_remove("PS_TEST_KEYRING_MASTER");
        if let Some(v) = env {
            cmd.env("PS_TEST_KEYRING_MASTER", v);
        }
        cmd.output().unwrap()
    };
    let out = run(Some(master));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keyring = std::fs::read_to_string(data.join("keyring.json")).unwrap();
    assert!(
        keyring.contains("sealed_key") && !keyring.contains("\"key\""),
        "{keyring}"
    );
    let out = run(None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PS_TEST_KEYRING_MASTER"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wrong = run(Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="));
    assert_eq!(wrong.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("does not open with the master key"));
}

/// The index fails (OpenSearch answers 500 to every write) while an erase event goes through
/// a worker on DynamoDB + KMS + OpenSearch. The worker waits and retries; when the index is back
/// it finishes: erased, indexed nowhere, audited once.
#[test]
fn an_erase_event_while_the_index_fails_ends_erased_indexed_nowhere_audited_once() {
    use common::fault_proxy::{FaultProxy, PASS, WRITES_FAIL};
    let stack = Stack::services();
    let proxy = FaultProxy::start(&opensearch_url());
    let text = std::fs::read_to_string(&stack.pipeline).unwrap().replace(
        &format!("url: {}", opensearch_url()),
        &format!("url: {}", proxy.endpoint),
    );
    std::fs::write(&stack.pipeline, text).unwrap();
    stack.run(
        "1.jsonl",
        &[upsert(ALICE, 1, ALICE_EMAIL, "2026-01-01T00:00:00Z")],
    );
    assert_eq!(stack.indexed(ALICE)["total"], 1);

    let erase = stack.dir.path().join("erase.jsonl");
    std::fs::write(&erase, erase_event(ALICE, 2) + "\n").unwrap();
    proxy.set(WRITES_FAIL);
    let worker = {
        let (pipeline, erase, data) = (stack.pipeline.clone(), erase.clone(), stack.data.clone());
        std::thread::spawn(move || run_with(&pipeline, &erase, &data))
    };
    let started = std::time::Instant::now();
    while proxy.faults() < 3 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "the index was never asked"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(!worker.is_finished(), "the worker waits for the index");
    proxy.set(PASS);
    let summary = worker.join().unwrap();
    assert_eq!(summary["read"], 1, "{summary}");
    stack.assert_erased_indexed_nowhere_audited_once(ALICE);
}

fn segment_changes_follow_upserts_consents_deletes_and_erasures_and_replays_repeat_them(
    stack: &Stack,
) {
    const CAROL: &str = "cccccccc-3333-4333-8333-333333333333";
    const DAVE: &str = "dddddddd-4444-4444-8444-444444444444";
    const EVE: &str = "eeeeeeee-5555-4555-8555-555555555555";
    const T: &str = "2026-02-01T00:00:00Z";
    let consent_at = |user: &str, version: i64, granted: bool| {
        let mut e: Json = serde_json::from_str(&consent(user, version, granted)).unwrap();
        e["event_id"] = json!(uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            format!("{user}/{version}").as_bytes()
        )
        .to_string());
        e["occurred_at"] = json!(T);
        e.to_string()
    };
    let events = [
        shopper(CAROL, 1, 2500.0, "pro", T),
        shopper(CAROL, 2, 500.0, "pro", T),
        shopper(CAROL, 2, 500.0, "pro", T),  // delivered again
        shopper(CAROL, 1, 2500.0, "pro", T), // delivered again, after v2
        shopper(CAROL, 3, 600.0, "pro", T),  // same segments: no change
        consent_at(CAROL, 4, true),
        consent_at(CAROL, 5, false),
        event(CAROL, 6, "DELETE", T),
        shopper(DAVE, 1, 50.0, "basic", T),
        shopper(DAVE, 2, 5000.0, "enterprise", T),
        event(DAVE, 3, "ERASE", T),
        shopper(DAVE, 2, 5000.0, "enterprise", T), // older than the erasure: stale
        shopper(EVE, 2, 5000.0, "pro", T),
        shopper(EVE, 1, 50.0, "basic", T), // older, never applied: stale, emits nothing
    ];
    stack.run("1.jsonl", &events);
    let change = |user: &str,
                  version: i64,
                  cause: &str,
                  entered: &[&str],
                  exited: &[&str],
                  segments: &[&str],
                  zone: Option<&str>| {
        json!({"user_id": user, "version": version, "occurred_at": "2026-02-01T00:00:00.000Z", "cause": cause,
               "entered": entered, "exited": exited, "segments": segments, "residency_zone": zone})
    };
    let every = [
        "dormant",
        "eu_resident",
        "frequent_buyer",
        "high_value",
        "newsletter_audience",
        "paying",
    ];
    let carol_v2 = change(
        CAROL,
        2,
        "UPSERT",
        &[],
        &["high_value"],
        &["eu_resident", "paying"],
        Some("EU"),
    );
    let carol_deleted = change(CAROL, 6, "DELETE", &[], &every, &[], None);
    let dave_erased = change(DAVE, 3, "ERASE", &[], &every, &[], None);
    let eve_v2 = change(
        EVE,
        2,
        "UPSERT",
        &["eu_resident", "high_value", "paying"],
        &[],
        &["eu_resident", "high_value", "paying"],
        Some("EU"),
    );
    let carol_v1 = change(
        CAROL,
        1,
        "UPSERT",
        &["eu_resident", "high_value", "paying"],
        &[],
        &["eu_resident", "high_value", "paying"],
        Some("EU"),
    );
    let first = vec![
        carol_v1.clone(),
        carol_v2.clone(),
        carol_v2,
        carol_v1, // v1 delivered again after v2: the change it made, again
        change(
            CAROL,
            4,
            "CONSENT",
            &["newsletter_audience"],
            &[],
            &["eu_resident", "newsletter_audience", "paying"],
            Some("EU"),
        ),
        change(
            CAROL,
            5,
            "CONSENT",
            &[],
            &["newsletter_audience"],
            &["eu_resident", "paying"],
            Some("EU"),
        ),
        carol_deleted.clone(),
        change(
            DAVE,
            1,
            "UPSERT",
            &["eu_resident"],
            &[],
            &["eu_resident"],
            Some("EU"),
        ),
        change(
            DAVE,
            2,
            "UPSERT",
            &["high_value", "paying"],
            &[],
            &["eu_resident", "high_value", "paying"],
            Some("EU"),
        ),
        dave_erased.clone(),
        eve_v2.clone(),
    ];
    let by_user = |changes: &[Json], user: &str| -> Vec<Json> {
        changes
            .iter()
            .filter(|c| c["user_id"] == user)
            .cloned()
            .collect()
    };
    let got = stack.segment_changes();
    for user in [CAROL, DAVE, EVE] {
        assert_eq!(by_user(&got, user), by_user(&first, user), "{user}");
    }
    assert_eq!(got.len(), first.len());

    // The whole input delivered again: every event the store applied re-emits its change with
    // the same content, as long as the user's stored record keeps it (Carol was deleted and
    // Dave erased: only their last events re-emit); a never applied one emits nothing.
    stack.run("2.jsonl", &events);
    let again = stack.segment_changes()[first.len()..].to_vec();
    assert_eq!(by_user(&again, CAROL), vec![carol_deleted]);
    assert_eq!(by_user(&again, DAVE), vec![dave_erased]);
    assert_eq!(by_user(&again, EVE), vec![eve_v2]);
    assert_eq!(again.len(), 3);

    // A user back after a delete enters again; the membership the stream gives is the store's.
    stack.run("3.jsonl", &[shopper(CAROL, 7, 1500.0, "basic", T)]);
    let all = stack.segment_changes();
    let last = all.last().unwrap();
    assert_eq!(
        last,
        &change(
            CAROL,
            7,
            "UPSERT",
            &["eu_resident", "high_value"],
            &[],
            &["eu_resident", "high_value"],
            Some("EU")
        )
    );
    assert_eq!(stack.get(CAROL)["segments"], last["segments"]);

    // The erase command, outside the pipeline, tells the feed too: at the tombstone's fence.
    let out = stack.operator(&["erase", CAROL, "--reason", "erasure request"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let erased = stack.segment_changes().last().unwrap().clone();
    assert_eq!(
        (&erased["user_id"], &erased["version"], &erased["cause"]),
        (&json!(CAROL), &json!(7), &json!("ERASE"))
    );
    assert_eq!(erased["exited"], json!(every));
    assert_eq!(erased["segments"], json!([]));
}
