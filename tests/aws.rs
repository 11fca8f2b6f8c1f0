//! The AWS adapters against real AWS APIs on this machine: DynamoDB Local and moto's KMS
//! (`scripts/services start dynamodb kms`). Endpoints come from `DYNAMODB_ENDPOINT` and
//! `KMS_ENDPOINT` when set. Every test uses its own table and KMS alias; the one test that
//! stops a service holds the exclusive side of `SERVICES` so nothing else runs meanwhile.

mod common;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_sdk_dynamodb::types::AttributeValue;
use base64::Engine;
use chrono::Utc;
use common::canary::Canary;
use common::fault_proxy::*;
use common::scenarios::*;
use common::services::*;
use common::*;
use profile_sync::aws::Endpoint;
use profile_sync::config::KekCacheConfig;
use profile_sync::event::{Operation, ProtectedChange, ProtectedRecord, Region};
use profile_sync::keys::{KeyProvider, KmsKeyProvider, WrappedUserKey};
use profile_sync::stores::{AuditRecord, ConsentRecord, DynamoStore, ProfileStore, WriteOutcome};
use serde_json::Value as Json;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Shared by tests that need the services; exclusive for the test that stops one.
static SERVICES: RwLock<()> = RwLock::new(());

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    setup();
    SERVICES.read().unwrap_or_else(|e| e.into_inner())
}

fn exclusive() -> std::sync::RwLockWriteGuard<'static, ()> {
    setup();
    SERVICES.write().unwrap_or_else(|e| e.into_inner())
}

/// Dummy credentials for the emulators, and a clear failure when a service is down.
fn setup() {
    aws_test_env();
    require("DynamoDB Local", &dynamodb_endpoint(), "dynamodb");
    require("The KMS emulator", &kms_endpoint(), "kms");
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &Uuid::new_v4().simple().to_string()[..12])
}

/// A copy of pipelines/aws-local.yaml with its own table and alias, the test endpoints and
/// absolute paths, plus `edits` (text replacements).
fn pipeline(
    dir: &Path,
    table: &str,
    alias: &str,
    dynamodb: &str,
    edits: &[(&str, &str)],
) -> PathBuf {
    let repo = repo();
    let mut text = std::fs::read_to_string(repo.join("pipelines/aws-local.yaml"))
        .unwrap()
        .replace("table: profile-sync-dev", &format!("table: {table}"))
        .replace("alias/profile-sync-dev", alias)
        .replace("http://127.0.0.1:8000", dynamodb)
        .replace("http://127.0.0.1:4566", &kms_endpoint())
        .replace("../", &format!("{}/", repo.display()));
    for (from, to) in edits {
        assert!(text.contains(from), "{from} is not in aws-local.yaml");
        text = text.replace(from, to);
    }
    let path = dir.join(format!("{table}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn bootstrap(pipeline: &Path) -> Json {
    let output = bin()
        .arg("bootstrap")
        .arg("--pipeline")
        .arg(pipeline)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "bootstrap failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn s<'a>(item: &'a Item, name: &str) -> &'a str {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .unwrap_or_else(|| panic!("item has no string {name}"))
}

fn b<'a>(item: &'a Item, name: &str) -> &'a [u8] {
    item.get(name)
        .and_then(|v| v.as_b().ok())
        .unwrap_or_else(|| panic!("item has no binary {name}"))
        .as_ref()
}

fn of_kind<'a>(items: &'a [Item], sk: &str) -> Vec<&'a Item> {
    items.iter().filter(|i| s(i, "sk") == sk).collect()
}

fn open(key: &[u8], aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).ok()?);
    let (nonce, body) = sealed.split_at(12);
    let mut body = body.to_vec();
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    key.open_in_place(nonce, Aad::from(aad), &mut body)
        .ok()
        .map(|p| p.to_vec())
}

fn aad(parts: &[&str]) -> Vec<u8> {
    parts.join("\0").into_bytes()
}

/// Decrypts one field of one user exactly as ARCHITECTURE.md documents it, with plain clients:
/// KMS Decrypt of the KEK with its context, AES-GCM unwrap of the DEK, AES-GCM of the field.
/// `user_in_aad` / `field_in_aad` let a test bind the field AAD to something else.
async fn decrypt_as_documented(
    table: &str,
    user: &str,
    field: &str,
    user_in_aad: &str,
    field_in_aad: &str,
) -> Option<Json> {
    let client = dynamodb().await;
    let get = |sk: &'static str| {
        client
            .get_item()
            .table_name(table)
            .key("pk", AttributeValue::S(format!("USER#{user}")))
            .key("sk", AttributeValue::S(sk.into()))
            .send()
    };
    let profile = get("PROFILE").await.unwrap().item.unwrap();
    let key = get("KEY").await.unwrap().item.unwrap();
    let (_arn, generation) = s(&key, "kek_id").rsplit_once('#').unwrap();
    let kek = kms()
        .await
        .decrypt()
        .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(b(&key, "encrypted_kek")))
        .encryption_context("purpose", "profile-sync/kek")
        .encryption_context("generation", generation)
        .send()
        .await
        .expect("KMS decrypts the KEK with its documented context");
    let key_version = key["key_version"].as_n().unwrap().to_string();
    let dek = open(
        kek.plaintext().unwrap().as_ref(),
        &aad(&["profile-sync/user-key/v1", user, &key_version]),
        b(&key, "wrapped_key"),
    )
    .expect("the DEK unwraps with the documented AAD");
    let record: Json = serde_json::from_str(s(&profile, "record")).unwrap();
    let sealed = record["encrypted"][field].as_str().unwrap();
    let mut parts = sealed.splitn(3, '.');
    assert_eq!(parts.next(), Some("v1"));
    let field_version = parts.next().unwrap();
    let body = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(parts.next().unwrap())
        .unwrap();
    let plain = open(
        &dek,
        &aad(&[
            "profile-sync/field/v1",
            user_in_aad,
            field_in_aad,
            field_version,
        ]),
        &body,
    )?;
    Some(serde_json::from_slice(&plain).unwrap())
}

#[test]
fn the_end_to_end_scenario_holds_with_dynamodb_and_kms_and_no_pii_reaches_dynamodb_in_plaintext() {
    let _services = shared();
    let dir = tempfile::tempdir().unwrap();
    let (table, alias) = (unique("e2e"), format!("alias/{}", unique("e2e")));
    let kms = FaultProxy::start(&kms_endpoint());
    let p = pipeline(
        dir.path(),
        &table,
        &alias,
        &dynamodb_endpoint(),
        &[(kms_endpoint().as_str(), kms.endpoint.as_str())],
    );
    let report = bootstrap(&p);
    assert_eq!(report["table"]["created"], true, "{report}");
    assert_eq!(
        bootstrap(&p)["table"]["created"],
        false,
        "bootstrap is idempotent"
    );

    let before: u64 = kms.forwarded().values().sum();
    // The KMS calls on the wire when the scenario first reads the table: those of the run
    // alone (the scenario's later commands make their own).
    let after_the_run = std::sync::Mutex::new(None);
    let run = twenty_thousand_events(&p, &|_| {
        after_the_run
            .lock()
            .unwrap()
            .get_or_insert_with(|| kms.forwarded().values().sum::<u64>());
        dynamodb_state(&table)
    });
    let calls = after_the_run.into_inner().unwrap().unwrap() - before;
    assert_eq!(
        calls,
        run.summary["key_provider_calls"].as_u64().unwrap(),
        "the worker counts every KMS call it makes: {:?}",
        kms.forwarded()
    );
    assert!(
        calls <= 4,
        "{calls} KMS calls reached KMS: {:?}",
        kms.forwarded()
    );

    let rt = runtime();
    let items = rt.block_on(scan_all(&table));
    assert_no_plaintext_pii(&items, &run.canary);
    let profiles = of_kind(&items, "PROFILE");
    let keys = of_kind(&items, "KEY");
    for p in profiles.iter().filter(|p| p.contains_key("record")) {
        assert!(
            keys.iter().any(|k| s(k, "pk") == s(p, "pk")),
            "every stored profile with a record has its key"
        );
    }
    let live: Vec<(&String, &Expected)> = run
        .expected
        .iter()
        .filter(|(_, e)| !e.deleted && e.profile.get("email").is_some_and(Json::is_string))
        .take(10)
        .collect();
    assert!(!live.is_empty());
    rt.block_on(async {
        for (user, want) in live {
            let got = decrypt_as_documented(&table, user, "email", user, "email").await;
            assert_eq!(got.as_ref(), want.profile.get("email"), "user {user}");
            let other = Uuid::new_v4().to_string();
            assert_eq!(
                decrypt_as_documented(&table, user, "email", &other, "email").await,
                None,
                "a ciphertext bound to another user id does not decrypt"
            );
            assert_eq!(
                decrypt_as_documented(&table, user, "email", user, "phone").await,
                None,
                "a ciphertext bound to another field does not decrypt"
            );
        }
    });

    // Personalization engines read the derived segments straight from the item.
    let (user, _) = run.expected.iter().find(|(_, e)| !e.deleted).unwrap();
    let item = profiles.iter().find(|p| s(p, "user_id") == user).unwrap();
    let record: Json = serde_json::from_str(s(item, "record")).unwrap();
    let segments: Vec<&str> = item["segments"]
        .as_l()
        .unwrap()
        .iter()
        .map(|v| v.as_s().unwrap().as_str())
        .collect();
    assert_eq!(Json::from(segments), record["segments"]);
    assert_eq!(
        s(item, "residency_zone"),
        record["region"]["residency_zone"]
    );

    // get and its audit trail work against DynamoDB too.
    let (user, want) = run
        .expected
        .iter()
        .find(|(_, e)| !e.deleted && e.profile.get("email").is_some_and(Json::is_string))
        .unwrap();
    let masked = bin()
        .args(["get", user, "--pipeline"])
        .arg(&p)
        .arg("--data-dir")
        .arg(&run.data)
        .output()
        .unwrap();
    assert!(
        masked.status.success(),
        "{}",
        String::from_utf8_lossy(&masked.stderr)
    );
    let masked: Json = serde_json::from_slice(&masked.stdout).unwrap();
    assert_eq!(masked["profile"]["email"], "***");
    let email = want.profile["email"].as_str().unwrap().to_uppercase();
    let revealed = bin()
        .args([
            "get",
            &email,
            "--reveal",
            "--reason",
            "test",
            "--actor",
            "aws-suite",
            "--pipeline",
        ])
        .arg(&p)
        .arg("--data-dir")
        .arg(&run.data)
        .output()
        .unwrap();
    assert!(
        revealed.status.success(),
        "{}",
        String::from_utf8_lossy(&revealed.stderr)
    );
    let revealed: Json = serde_json::from_slice(&revealed.stdout).unwrap();
    assert_eq!(
        revealed["user_id"],
        Json::from(user.as_str()),
        "found through the email GSI"
    );
    assert_eq!(revealed["profile"]["email"], want.profile["email"]);
    let audit = rt.block_on(async {
        dynamodb()
            .await
            .query()
            .table_name(&table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :a)")
            .expression_attribute_values(":pk", AttributeValue::S(format!("USER#{user}")))
            .expression_attribute_values(":a", AttributeValue::S("AUDIT#".into()))
            .send()
            .await
            .unwrap()
            .items()
            .to_vec()
    });
    assert_eq!(audit.len(), 1);
    assert_eq!(s(&audit[0], "actor"), "aws-suite");
    assert!(
        audit[0].contains_key("expires_at"),
        "audit records carry the TTL attribute"
    );
}

#[test]
fn kms_calls_for_100000_events_stay_within_the_documented_bound() {
    let _services = shared();
    let dir = tempfile::tempdir().unwrap();
    let (table, alias) = (unique("calls"), format!("alias/{}", unique("calls")));
    // KMS behind a proxy that counts what reaches it: the bound is checked on the wire, and
    // the worker's own count must agree with it.
    let kms = FaultProxy::start(&kms_endpoint());
    let p = pipeline(
        dir.path(),
        &table,
        &alias,
        &dynamodb_endpoint(),
        &[(kms_endpoint().as_str(), kms.endpoint.as_str())],
    );
    bootstrap(&p);
    let before: u64 = kms.forwarded().values().sum();
    let (input, _) = generate(dir.path(), 100_000, 0.0, "jsonl", 11);
    let summary = run_with(&p, &input, &dir.path().join("data"));
    let users = expected_state(&input).len() as u64;
    let on_the_wire = kms.forwarded();
    let calls: u64 = on_the_wire.values().sum::<u64>() - before;
    assert_eq!(
        calls,
        summary["key_provider_calls"].as_u64().unwrap(),
        "the worker counts every KMS call it makes: {on_the_wire:?}"
    );
    // ARCHITECTURE.md: 1 Decrypt of the blind-index key at start + ⌈new user keys / 100,000⌉
    // GenerateDataKey with the default KEK limits (+1 if the run outlives max_age_secs).
    let bound = 1 + users.div_ceil(100_000) + 1;
    eprintln!(
        "KMS calls for 100,000 events ({users} users), counted at a proxy: {calls} (bound {bound}): {on_the_wire:?}"
    );
    assert!(
        calls <= bound,
        "{calls} KMS calls for {users} users: {summary}"
    );
    assert_eq!(
        summary["written"].as_u64().unwrap() + summary["stale"].as_u64().unwrap(),
        100_000
    );
}

/// Stops moto mid-run and brings it back: the run must stall (no new keys, no plaintext, no
/// dead letters), then finish with every event accounted for. moto keeps its state in memory,
/// so after the restart the test recreates the alias on a new key, as an operator would.
#[test]
fn a_kms_outage_stalls_the_pipeline_without_plaintext_writes_and_it_resumes() {
    let _services = exclusive();
    // The worker reaches KMS through a proxy, so that the restarted (empty) emulator gets its
    // key back before the worker can see it: the outage, not the emulator's lost state, is
    // what this test is about.
    let proxy = FaultProxy::start(&kms_endpoint());
    let dir = tempfile::tempdir().unwrap();
    let (table, alias) = (unique("kmsdown"), format!("alias/{}", unique("kmsdown")));
    let p = pipeline(
        dir.path(),
        &table,
        &alias,
        &dynamodb_endpoint(),
        &[
            ("    max_uses: 100000 ", "    max_uses: 300 "),
            ("batch_size: 2000", "batch_size: 500"),
            (
                &format!("endpoint: {}", kms_endpoint()),
                &format!("endpoint: {}", proxy.endpoint),
            ),
        ],
    );
    bootstrap(&p);
    let (input, _) = generate(dir.path(), 10_000, 0.0, "jsonl", 5);
    let expected = expected_state(&input);
    let canary = Canary::of_generated(&input);
    let mut child = std::process::Command::new(binary())
        .args(["run", "--output", "json", "--pipeline"])
        .arg(&p)
        .arg("--input")
        .arg(&input)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let rt = runtime();
    let count_keys = || rt.block_on(async { of_kind(&scan_all(&table).await, "KEY").len() });
    let started = Instant::now();
    while count_keys() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the run wrote no key"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    proxy.set(DROP);
    let kms_down = ServiceDown::stop("kms");
    // Keys are stored after a batch is sealed, one batch at a time: once a KMS request has
    // been refused, the batch that made it holds back every later key. Then the worker is
    // seen asking KMS again and again, and nothing new is stored meanwhile.
    let within = Duration::from_secs(120);
    proxy.wait_until("the worker meets the KMS outage", within, &mut child, |p| {
        p.faults_of(DROP) >= 1
    });
    let before = count_keys();
    let refused = proxy.faults_of(DROP);
    proxy.wait_until("the worker retries KMS", within, &mut child, |p| {
        p.faults_of(DROP) >= refused + 3
    });
    assert_eq!(
        count_keys(),
        before,
        "no new user key is written while KMS is down"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run stalls instead of exiting"
    );
    drop(kms_down);
    rt.block_on(async {
        let client = kms().await;
        let key = client.create_key().send().await.unwrap();
        client
            .create_alias()
            .alias_name(&alias)
            .target_key_id(key.key_metadata().unwrap().key_id())
            .send()
            .await
            .unwrap();
    });
    proxy.set(PASS);

    let output = wait_with_timeout(child, Duration::from_secs(600));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    canary.assert_absent("the log of the run through the KMS outage", &output.stderr);
    let summary: Json = serde_json::from_str(
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        summary["dead_lettered"], 0,
        "nothing is dead-lettered for an outage: {summary}"
    );
    assert_eq!(
        summary["written"].as_u64().unwrap() + summary["stale"].as_u64().unwrap(),
        10_000
    );
    let items = rt.block_on(scan_all(&table));
    assert_no_plaintext_pii(&items, &canary);
    let kms_keys: HashSet<&str> = of_kind(&items, "KEY")
        .iter()
        .map(|k| s(k, "kek_id").split('#').next().unwrap())
        .collect();
    assert!(
        kms_keys.len() >= 2,
        "wraps resumed under the KMS key behind the alias after the outage"
    );
    let state = dynamodb_state(&table);
    for (user, e) in &expected {
        assert_eq!(
            state.get(user),
            Some(&(e.version, e.deleted)),
            "user {user}"
        );
    }
}

/// Stops a service for a test and starts it again on drop, even when the test fails.
struct ServiceDown(&'static str);

impl ServiceDown {
    fn stop(service: &'static str) -> Self {
        let status = std::process::Command::new(repo().join("scripts/services"))
            .args(["stop", service])
            .status()
            .unwrap();
        assert!(status.success(), "scripts/services stop {service} failed");
        ServiceDown(service)
    }
}

impl Drop for ServiceDown {
    fn drop(&mut self) {
        let _ = std::process::Command::new(repo().join("scripts/services"))
            .args(["start", self.0])
            .status();
    }
}

fn wait_with_timeout(mut child: std::process::Child, limit: Duration) -> std::process::Output {
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("the run did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn dynamodb_throttling_errors_and_dropped_connections_lose_nothing() {
    let _services = shared();
    let proxy = FaultProxy::start(&dynamodb_endpoint());
    let dir = tempfile::tempdir().unwrap();
    let (table, alias) = (unique("throttle"), format!("alias/{}", unique("throttle")));
    let p = pipeline(
        dir.path(),
        &table,
        &alias,
        &proxy.endpoint,
        &[("batch_size: 2000", "batch_size: 250")],
    );
    bootstrap(&p);
    let (input, _) = generate(dir.path(), 5_000, 0.01, "jsonl", 3);
    let expected = expected_state(&input);
    let child = std::process::Command::new(binary())
        .args(["run", "--output", "json", "--pipeline"])
        .arg(&p)
        .arg("--input")
        .arg(&input)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Each fault mode lasts until the worker has met it several times, and each recovery
    // until the worker's requests go through again: the schedule follows what the proxy saw,
    // so every mode is proven hit mid-run, on a slow machine as on a fast one.
    let mut child = child;
    let within = Duration::from_secs(120);
    for mode in [THROTTLE, SERVER_ERROR, DROP] {
        let forwarded = proxy.forwarded_total();
        proxy.wait_until("requests pass before a fault", within, &mut child, |p| {
            p.forwarded_total() >= forwarded + 3
        });
        proxy.set(mode);
        proxy.wait_until(
            &format!("fault mode {mode} is met"),
            within,
            &mut child,
            |p| p.faults_of(mode) >= 3,
        );
        proxy.set(PASS);
    }
    let output = wait_with_timeout(child, Duration::from_secs(600));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for mode in [THROTTLE, SERVER_ERROR, DROP] {
        assert!(
            proxy.faults_of(mode) >= 3,
            "fault mode {mode} was met mid-run"
        );
    }
    let summary: Json = serde_json::from_str(
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    let n = |k: &str| summary[k].as_u64().unwrap();
    assert_eq!(
        n("written") + n("stale") + n("dead_lettered"),
        5_000,
        "{summary}"
    );
    let state = dynamodb_state(&table);
    assert_eq!(state.len(), expected.len());
    for (user, e) in &expected {
        assert_eq!(
            state.get(user),
            Some(&(e.version, e.deleted)),
            "user {user}"
        );
    }
}

#[test]
fn keys_rotate_and_rewrap_change_only_the_wrapping() {
    let _services = shared();
    let dir = tempfile::tempdir().unwrap();
    let (table, alias) = (unique("rewrap"), format!("alias/{}", unique("rewrap")));
    let p = pipeline(dir.path(), &table, &alias, &dynamodb_endpoint(), &[]);
    bootstrap(&p);
    let (input, _) = generate(dir.path(), 300, 0.0, "jsonl", 9);
    let data = dir.path().join("data");
    run_with(&p, &input, &data);
    let expected = expected_state(&input);
    let rt = runtime();
    let snapshot = || {
        let items = rt.block_on(scan_all(&table));
        let records: HashMap<String, String> = of_kind(&items, "PROFILE")
            .iter()
            .filter(|i| i.contains_key("record"))
            .map(|i| (s(i, "pk").to_string(), s(i, "record").to_string()))
            .collect();
        let keks: HashSet<String> = of_kind(&items, "KEY")
            .iter()
            .map(|i| s(i, "kek_id").to_string())
            .collect();
        (records, keks)
    };
    let (records, keks) = snapshot();
    let keys_cmd = |args: &[&str]| {
        let output = bin().args(args).arg("--pipeline").arg(&p).output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice::<Json>(&output.stdout).unwrap()
    };
    let rotated = keys_cmd(&["keys", "rotate"]);
    assert_eq!(
        rotated["rewrapped"].as_u64().unwrap() as usize,
        expected.len(),
        "{rotated}"
    );
    let (records_after, keks_after) = snapshot();
    assert_eq!(records_after, records, "field ciphertexts are untouched");
    assert!(
        keks_after.is_disjoint(&keks),
        "every user key has a new KEK"
    );

    let other = rt.block_on(async {
        let client = kms().await;
        let key = client.create_key().send().await.unwrap();
        key.key_metadata().unwrap().arn().unwrap().to_string()
    });
    let rewrapped = keys_cmd(&["keys", "rewrap", "--to-key", &other]);
    assert_eq!(
        rewrapped["rewrapped"].as_u64().unwrap() as usize,
        expected.len()
    );
    let (records_after, keks_after) = snapshot();
    assert_eq!(records_after, records);
    assert!(
        keks_after
            .iter()
            .all(|k| k.starts_with(&format!("{other}#"))),
        "{keks_after:?}"
    );

    let (user, want) = expected
        .iter()
        .find(|(_, e)| !e.deleted && e.profile.get("email").is_some_and(Json::is_string))
        .unwrap();
    let output = bin()
        .args(["get", user, "--reveal", "--reason", "test", "--pipeline"])
        .arg(&p)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let got: Json = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(got["profile"]["email"], want.profile["email"]);
}

#[test]
fn kms_keys_without_a_dynamodb_store_is_a_configuration_error() {
    let _services = shared();
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(
        dir.path(),
        &unique("cfg"),
        "alias/x",
        &dynamodb_endpoint(),
        &[],
    );
    let text = std::fs::read_to_string(&p).unwrap();
    let (start, end) = (
        text.find("store:\n").unwrap(),
        text.find("\nindex:").unwrap(),
    );
    std::fs::write(
        &p,
        format!(
            "{}store:\n  type: sqlite\n  path: p.sqlite\n{}",
            &text[..start],
            &text[end..]
        ),
    )
    .unwrap();
    let output = bin()
        .args(["run", "--pipeline"])
        .arg(&p)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("type: dynamodb"));
}

// --- the store and the key provider through the library --------------------------------------

async fn fresh_store() -> DynamoStore {
    let store = DynamoStore::connect(
        &unique("store"),
        &Endpoint {
            region: Some("us-east-1".into()),
            endpoint: Some(dynamodb_endpoint()),
        },
        8,
        30,
        false,
    )
    .await
    .unwrap();
    store.ensure_table().await.unwrap();
    store
}

fn change(user: Uuid, version: i64, op: Operation) -> ProtectedChange {
    let record = (op == Operation::Upsert).then(|| ProtectedRecord {
        event_id: Uuid::new_v4(),
        source: "t".into(),
        occurred_at: Utc::now(),
        profile: Default::default(),
        encrypted: Default::default(),
        key_version: 1,
        region: Region::unknown(),
        segments: vec!["a".into()],
        segment_history: None,
        email_index: Some(format!("idx-{user}")),
    });
    ProtectedChange {
        user_id: user,
        version,
        operation: op,
        occurred_at: Utc::now(),
        record,
    }
}

fn wrapped(user: Uuid, bytes: Vec<u8>) -> WrappedUserKey {
    WrappedUserKey {
        user_id: user,
        key_version: 1,
        provider: "kms".into(),
        kek_id: "k#g".into(),
        encrypted_kek: vec![9],
        wrapped_key: bytes,
        created_at: Utc::now(),
    }
}

/// The version property of tests/properties.rs, on DynamoDB Local: whatever the delivery
/// order, duplicates and batching of one user's changes, the highest version stays. One table,
/// a fresh user per case.
#[test]
fn the_highest_version_wins_on_dynamodb_whatever_the_order_and_duplicates() {
    let _services = shared();
    let rt = runtime();
    let store = rt.block_on(fresh_store());
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases: 48,
        failure_persistence: None,
        ..Default::default()
    });
    runner
        .run(&common::versions::deliveries(), |deliveries| {
            common::versions::the_highest_version_wins(&rt, &store, deliveries)
        })
        .unwrap();
}

#[test]
fn store_versions_decide_applied_replayed_and_stale() {
    let _services = shared();
    runtime().block_on(async {
        let store = fresh_store().await;
        let u = Uuid::new_v4();
        let outcomes = store
            .apply(&[
                change(u, 2, Operation::Upsert),
                change(u, 2, Operation::Upsert),
                change(u, 1, Operation::Upsert),
                change(u, 3, Operation::Delete),
                change(u, 2, Operation::Upsert),
            ])
            .await
            .unwrap();
        use WriteOutcome::*;
        assert_eq!(outcomes, vec![Applied, Replayed, Stale, Applied, Stale]);
        let stored = store.get(u).await.unwrap().unwrap();
        assert_eq!((stored.version, stored.record), (3, None));
        assert_eq!(
            store
                .apply(&[
                    change(u, 3, Operation::Upsert),
                    change(u, 4, Operation::Upsert)
                ])
                .await
                .unwrap(),
            vec![Replayed, Applied]
        );
        assert_eq!(
            store
                .find_by_email_index(&format!("idx-{u}"))
                .await
                .unwrap(),
            Some(u)
        );
        store
            .apply(&[change(u, 5, Operation::Delete)])
            .await
            .unwrap();
        assert_eq!(
            store
                .find_by_email_index(&format!("idx-{u}"))
                .await
                .unwrap(),
            None,
            "a deleted profile is not found by email"
        );
        let counts = store.counts().await.unwrap();
        assert_eq!((counts.live, counts.deleted), (0, 1));
    })
}

/// An erasure lands after a batch read no fence, and the batch then writes the user at a
/// higher version: the conditional write sees `erased_at` and refuses it, both on the batch
/// path (one `TransactWriteItems`) and one change at a time; `accept` stores the user anew.
#[test]
fn store_an_upsert_never_clears_an_erasure_that_landed_after_its_batch_was_read() {
    let _services = shared();
    runtime().block_on(async {
        use WriteOutcome::*;
        let store = fresh_store().await;
        let u = Uuid::new_v4();
        store
            .apply(&[change(u, 1, Operation::Upsert)])
            .await
            .unwrap();
        assert_eq!(store.erase(u, 1, chrono::Utc::now()).await.unwrap(), 1);
        let outcomes = store
            .apply(&[
                change(u, 2, Operation::Upsert),
                change(u, 3, Operation::Delete),
            ])
            .await
            .unwrap();
        assert_eq!(outcomes, vec![Erased, Erased]);
        let stored = store.get(u).await.unwrap().unwrap();
        assert!(stored.record.is_none() && stored.erased_at.is_some());
        assert_eq!(stored.version, 1);

        let store = store.reviving_erased(true);
        let outcomes = store
            .apply(&[change(u, 2, Operation::Upsert)])
            .await
            .unwrap();
        assert_eq!(outcomes, vec![Applied]);
        assert!(store.get(u).await.unwrap().unwrap().erased_at.is_none());
    })
}

#[test]
fn store_scan_pages_through_every_profile_once() {
    let _services = shared();
    runtime().block_on(async {
        let store = fresh_store().await;
        let changes: Vec<_> = (0..25)
            .map(|i| {
                change(
                    Uuid::new_v4(),
                    1,
                    if i % 5 == 0 {
                        Operation::Delete
                    } else {
                        Operation::Upsert
                    },
                )
            })
            .collect();
        store.apply(&changes).await.unwrap();
        store
            .insert_user_keys(vec![wrapped(changes[1].user_id, vec![1])])
            .await
            .unwrap();
        let (mut seen, mut cursor) = (Vec::new(), None);
        loop {
            let (page, next) = store.scan(cursor, 10).await.unwrap();
            assert!(page.len() <= 10);
            seen.extend(page.into_iter().map(|p| p.user_id));
            if next.is_none() {
                break;
            }
            cursor = next;
        }
        seen.sort();
        let mut want: Vec<Uuid> = changes.iter().map(|c| c.user_id).collect();
        want.sort();
        assert_eq!(seen, want);
        assert!(store.scan(Some("not a cursor".into()), 10).await.is_err());
    })
}

#[test]
fn store_erase_shreds_the_key_and_leaves_a_fenced_tombstone() {
    let _services = shared();
    runtime().block_on(async {
        let store = fresh_store().await;
        let u = Uuid::new_v4();
        store
            .apply(&[change(u, 4, Operation::Upsert)])
            .await
            .unwrap();
        store
            .insert_user_keys(vec![wrapped(u, vec![1, 2, 3])])
            .await
            .unwrap();
        assert_eq!(
            store.erase(u, 2, Utc::now()).await.unwrap(),
            4,
            "the fence never goes back"
        );
        assert!(store.user_keys(&[u]).await.unwrap().is_empty());
        let stored = store.get(u).await.unwrap().unwrap();
        assert!(stored.record.is_none() && stored.erased_at.is_some());
        assert_eq!(
            store.erasure_fences(&[u, Uuid::new_v4()]).await.unwrap(),
            HashMap::from([(u, 4)])
        );
        assert_eq!(
            store
                .apply(&[change(u, 3, Operation::Upsert)])
                .await
                .unwrap(),
            vec![WriteOutcome::Stale]
        );
        let never = Uuid::new_v4();
        assert_eq!(store.erase(never, 7, Utc::now()).await.unwrap(), 7);
        assert_eq!(store.erasure_fences(&[never]).await.unwrap()[&never], 7);
    })
}

#[test]
fn store_insert_user_keys_lets_the_first_writer_win() {
    let _services = shared();
    runtime().block_on(async {
        let store = fresh_store().await;
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        store
            .insert_user_keys(vec![wrapped(a, vec![1])])
            .await
            .unwrap();
        let winners = store
            .insert_user_keys(vec![wrapped(a, vec![2]), wrapped(b, vec![3])])
            .await
            .unwrap();
        assert_eq!(winners[0].wrapped_key, vec![1], "the stored key wins");
        assert_eq!(winners[1].wrapped_key, vec![3]);
        let keys = store.user_keys(&[a, b, Uuid::new_v4()]).await.unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[&a].wrapped_key, vec![1]);
    })
}

#[test]
fn store_consent_state_follows_the_highest_version_per_purpose() {
    let _services = shared();
    runtime().block_on(async {
        let store = fresh_store().await;
        let u = Uuid::new_v4();
        let record = |purpose: &str, granted, version| ConsentRecord {
            user_id: u,
            purpose: purpose.into(),
            granted,
            policy_version: "2026-01".into(),
            source: "t".into(),
            occurred_at: Utc::now(),
            version,
            event_id: Uuid::new_v4(),
        };
        let late = record("marketing", true, 1);
        for r in [
            record("marketing", false, 2),
            late.clone(),
            late,
            record("analytics", true, 3),
        ] {
            store.append_consent(&r).await.unwrap();
        }
        let history = store.consent_history(u).await.unwrap();
        assert_eq!(
            history.len(),
            3,
            "appending the same event twice keeps one record"
        );
        assert!(
            history.windows(2).all(|w| w[0].version <= w[1].version),
            "oldest version first"
        );
        let state = &store.consent_states(&[u, Uuid::new_v4()]).await.unwrap()[&u];
        assert_eq!(state.get("marketing"), Some(&false));
        assert_eq!(state.get("analytics"), Some(&true));
    })
}

#[test]
fn store_audit_is_append_only_stored_once_per_id_ordered_and_expires() {
    let _services = shared();
    runtime().block_on(async {
        let store = fresh_store().await;
        let u = Uuid::new_v4();
        let at = |days: i64| Utc::now() - chrono::Duration::days(days);
        let record = |when| AuditRecord {
            id: Uuid::new_v4(),
            at: when,
            actor: "a".into(),
            action: "reveal".into(),
            user_id: u,
            fields: vec!["email".into()],
            reason: "r".into(),
            request_id: Uuid::new_v4(),
        };
        let (old, new) = (record(at(100)), record(at(1)));
        store.append_audit(&new).await.unwrap();
        store.append_audit(&old).await.unwrap();
        // Appended again, even at another time (a retried erasure), it is stored once.
        store.append_audit(&old).await.unwrap();
        let retried = AuditRecord {
            at: at(99),
            actor: "someone else".into(),
            ..old.clone()
        };
        store.append_audit(&retried).await.unwrap();
        let ids = |trail: Vec<AuditRecord>| trail.into_iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(
            ids(store.audit_trail(u).await.unwrap()),
            vec![old.id, new.id],
            "oldest first"
        );
        assert_eq!(store.expire_audit(at(50)).await.unwrap(), 1);
        assert_eq!(ids(store.audit_trail(u).await.unwrap()), vec![new.id]);
    })
}

#[test]
fn kms_provider_caches_keks_within_limits_and_refuses_tampered_ones() {
    let _services = shared();
    runtime().block_on(async {
        let store = fresh_store().await;
        let client = kms().await;
        let key = client.create_key().send().await.unwrap();
        let key_id = key.key_metadata().unwrap().key_id().to_string();
        let at = Endpoint {
            region: Some("us-east-1".into()),
            endpoint: Some(kms_endpoint()),
        };
        let limits = KekCacheConfig {
            max_uses: 2,
            ..KekCacheConfig::default()
        };
        let provider = KmsKeyProvider::connect(&key_id, &at, &limits, &store)
            .await
            .unwrap();
        assert_eq!(
            provider.calls(),
            2,
            "the blind-index key: generated once, decrypted"
        );
        let dek = profile_sync::crypto::DataKey::generate().unwrap();
        let users: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
        let mut wraps = Vec::new();
        for u in &users {
            wraps.push(provider.wrap(*u, 1, &dek).await.unwrap());
        }
        assert_eq!(
            provider.calls(),
            2 + 3,
            "one GenerateDataKey per two wraps (max_uses 2)"
        );
        for w in &wraps {
            assert_eq!(provider.unwrap(w).await.unwrap().expose(), dek.expose());
        }
        assert_eq!(provider.calls(), 5, "own KEKs unwrap from the cache");

        // A second worker shares the blind-index key and decrypts each KEK once.
        let other = KmsKeyProvider::connect(&key_id, &at, &limits, &store)
            .await
            .unwrap();
        assert_eq!(other.calls(), 1);
        assert_eq!(
            other.blind_index().email("a@b.c"),
            provider.blind_index().email("a@b.c")
        );
        for w in &wraps {
            other.unwrap(w).await.unwrap();
        }
        assert_eq!(other.calls(), 1 + 3);

        let mut tampered = wraps[0].clone();
        tampered.encrypted_kek[10] ^= 1;
        let err = other.unwrap(&tampered).await.unwrap_err();
        assert!(!err.is_transient(), "{err}");
        let mut moved = wraps[0].clone();
        moved.kek_id = format!("{}#kek-other", moved.kek_id.split('#').next().unwrap());
        let err = other.unwrap(&moved).await.unwrap_err();
        assert!(
            !err.is_transient(),
            "a wrong encryption context is refused: {err}"
        );
        let mut other_user = wraps[0].clone();
        other_user.user_id = Uuid::new_v4();
        assert!(
            other.unwrap(&other_user).await.is_err(),
            "a DEK moved to another user does not unwrap"
        );
    })
}

/// The recipe ARCHITECTURE.md gives personalization engines, run by a client that shares no
/// code with profile-sync (boto3, from the test services' Python): for live users it reads
/// what `get` says their segments, zone and version are, and no `record`.
#[test]
fn the_documented_segments_recipe_works_from_boto3() {
    let _services = shared();
    let python = std::env::var("PROFILE_SYNC_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/profile-sync")
        })
        .join("venv-moto/bin/python");
    assert!(
        python.exists(),
        "{} is missing: `scripts/services start kms` installs boto3 with moto",
        python.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let (table, alias) = (unique("recipe"), format!("alias/{}", unique("recipe")));
    let p = pipeline(dir.path(), &table, &alias, &dynamodb_endpoint(), &[]);
    bootstrap(&p);
    let (input, _) = generate(dir.path(), 400, 0.0, "jsonl", 31);
    run_with(&p, &input, &dir.path().join("data"));
    let live: Vec<String> = expected_state(&input)
        .into_iter()
        .filter(|(_, e)| !e.deleted)
        .map(|(u, _)| u)
        .take(5)
        .collect();
    assert!(!live.is_empty());
    for user in live {
        let out = std::process::Command::new(&python)
            .arg(repo().join("tests/outside/read_segments.py"))
            .args([&dynamodb_endpoint(), &table, &user])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let read: Json = serde_json::from_slice(&out.stdout).unwrap();
        let got = bin()
            .args(["get", &user, "--pipeline"])
            .arg(&p)
            .output()
            .unwrap();
        let got: Json = serde_json::from_slice(&got.stdout).unwrap();
        let mut segments: Vec<String> = got["segments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect();
        segments.sort();
        assert_eq!(read["segments"], Json::from(segments), "{read}");
        assert_eq!(read["version"], got["version"], "{read}");
        assert_eq!(
            read["residency_zone"], got["region"]["residency_zone"],
            "{read}"
        );
        assert!(
            !read["attributes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a == "record"),
            "{read}"
        );
    }
}

/// `pipelines/aws-local.yaml` gives the samples the outcome `pipelines/local.yaml` gives them.
#[test]
fn the_samples_give_the_same_counts_as_with_local_yaml() {
    let _services = shared();
    let dir = tempfile::tempdir().unwrap();
    let (table, alias) = (unique("samples"), format!("alias/{}", unique("samples")));
    let p = pipeline(dir.path(), &table, &alias, &dynamodb_endpoint(), &[]);
    bootstrap(&p);
    let samples = repo().join("samples/profile-events.jsonl");
    let here = run_with(&p, &samples, &dir.path().join("data"));
    let local = run(&samples, &dir.path().join("local"));
    for key in ["read", "written", "stale", "dead_lettered"] {
        assert_eq!(here[key], local[key], "{key}: {here} vs {local}");
    }
}

/// Without credentials the SDK falls through its chain to the instance metadata service, and
/// every call looked like an unreachable endpoint. `bootstrap` and `run` now say what is
/// missing, with exit 2.
#[test]
fn without_aws_credentials_the_commands_say_so_and_exit_2() {
    let _services = shared();
    let dir = tempfile::tempdir().unwrap();
    let (table, alias) = (unique("nocreds"), format!("alias/{}", unique("nocreds")));
    let p = pipeline(dir.path(), &table, &alias, &dynamodb_endpoint(), &[]);
    for command in ["bootstrap", "run"] {
        let out = bin()
            .arg(command)
            .arg("--pipeline")
            .arg(&p)
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        assert!(
            stderr.contains("no AWS credentials found"),
            "{command}: {stderr}"
        );
        assert!(!stderr.contains("unreachable"), "{command}: {stderr}");
    }
}
