//! Data residency on the embedded adapters (`pipelines/residency-local.yaml`: EU and GLOBAL,
//! each with its own SQLite file, tantivy folder and keyring), checked from outside: the
//! SQLite files are read with SQL, the tantivy folders with the tantivy crate, the keyrings and
//! dead-letter files as JSON, and which user belongs where is worked out from the generated
//! events and `geoip/networks.csv`, not by profile-sync.

mod common;

use common::*;
use serde_json::Value as Json;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const ZONES: [(&str, &str); 2] = [("EU", "eu"), ("GLOBAL", "global")];

fn pipeline() -> PathBuf {
    repo().join("pipelines/residency-local.yaml")
}

/// The countries the pipeline file puts in the EU residency zone, read from it as YAML.
fn eu_countries() -> HashSet<String> {
    let text = std::fs::read_to_string(pipeline()).unwrap();
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    yaml["enrich"]["geoip"]["residency_zones"]["EU"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect()
}

/// The country of an address by the longest matching network of `geoip/networks.csv` (the
/// source the test database is built from).
fn country_of(ip: &str) -> Option<String> {
    static NETWORKS: OnceLock<Vec<(IpAddr, u32, String)>> = OnceLock::new();
    let networks = NETWORKS.get_or_init(|| {
        std::fs::read_to_string(repo().join("geoip/networks.csv"))
            .unwrap()
            .lines()
            .skip(1)
            .filter_map(|line| {
                let mut cells = line.split(',');
                let (net, bits) = cells.next()?.split_once('/')?;
                Some((net.parse().ok()?, bits.parse().ok()?, cells.next()?.into()))
            })
            .collect()
    });
    let ip: IpAddr = ip.parse().ok()?;
    let bits = |a: IpAddr| -> (u128, u32) {
        match a {
            IpAddr::V4(v) => (u32::from(v) as u128, 32),
            IpAddr::V6(v) => (u128::from(v), 128),
        }
    };
    let (value, width) = bits(ip);
    networks
        .iter()
        .filter(|(net, prefix, _)| {
            let (n, w) = bits(*net);
            w == width && {
                let shift = width - prefix;
                (shift >= width) || (value >> shift == n >> shift)
            }
        })
        .max_by_key(|(_, prefix, _)| *prefix)
        .map(|(_, _, country)| country.clone())
}

/// The zone each user of a generated file must be in: decided by their first valid event —
/// EU when it is an upsert from an EU country, else the default zone GLOBAL.
fn expected_zones(jsonl: &Path) -> HashMap<String, &'static str> {
    let eu = eu_countries();
    let mut zones = HashMap::new();
    for line in std::fs::read_to_string(jsonl).unwrap().lines() {
        let Some((user, _, op, profile)) = parse_valid(line) else {
            continue;
        };
        zones.entry(user).or_insert_with(|| {
            let country = profile
                .get("last_seen_ip")
                .and_then(Json::as_str)
                .and_then(country_of);
            match (op.as_str(), country) {
                ("UPSERT", Some(c)) if eu.contains(&c) => "EU",
                _ => "GLOBAL",
            }
        });
    }
    zones
}

fn sqlite(path: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap()
}

/// The users a zone's SQLite file holds anything of: a profile row, a key or a consent record.
fn users_in_store(data: &Path, folder: &str) -> BTreeSet<String> {
    let conn = sqlite(&data.join(folder).join("profiles.sqlite"));
    let mut users = BTreeSet::new();
    for table in ["profiles", "user_keys", "consents"] {
        let mut stmt = conn
            .prepare(&format!("SELECT DISTINCT user_id FROM {table}"))
            .unwrap();
        let rows = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
        users.extend(rows.map(Result::unwrap));
    }
    users
}

/// The user ids of every live document in a zone's tantivy folder.
fn users_in_index(data: &Path, folder: &str) -> Vec<String> {
    use tantivy::schema::Value as _;
    let index = tantivy::Index::open_in_dir(data.join(folder).join("index")).unwrap();
    let field = index.schema().get_field("user_id").unwrap();
    let searcher = index.reader().unwrap().searcher();
    let mut users = Vec::new();
    for (ordinal, segment) in searcher.segment_readers().iter().enumerate() {
        for doc in segment.doc_ids_alive() {
            let doc: tantivy::TantivyDocument = searcher
                .doc(tantivy::DocAddress::new(ordinal as u32, doc))
                .unwrap();
            users.push(doc.get_first(field).unwrap().as_str().unwrap().to_string());
        }
    }
    users
}

/// The ids of the key-encryption keys in a zone's keyring file.
fn keyring_ids(data: &Path, folder: &str) -> BTreeSet<String> {
    let keyring: Json =
        serde_json::from_slice(&std::fs::read(data.join(folder).join("keyring.json")).unwrap())
            .unwrap();
    keyring["key_encryption_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_string())
        .collect()
}

fn operator(data: &Path, args: &[&str]) -> std::process::Output {
    bin()
        .args(args)
        .arg("--pipeline")
        .arg(pipeline())
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap()
}

/// One run of 4,000 generated events (2 % invalid) through the residency pipeline.
struct Fixture {
    _dir: tempfile::TempDir,
    input: PathBuf,
    data: PathBuf,
    summary: Json,
    zones: HashMap<String, &'static str>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let (input, _) = generate(dir.path(), 4_000, 0.02, "jsonl", 20);
        let zones = expected_zones(&input);
        // The generator's invalid events name new users; add, at the end, an event the worker
        // refuses of a user the EU zone holds by then (an operation it does not know).
        let text = std::fs::read_to_string(&input).unwrap();
        let eu_line = text
            .lines()
            .find(|l| parse_valid(l).is_some_and(|(u, _, _, _)| zones[&u] == "EU"))
            .unwrap();
        let mut refused: Json = serde_json::from_str(eu_line).unwrap();
        refused["operation"] = Json::from("MERGE");
        refused["version"] = Json::from(1_000);
        refused["source"] = Json::from("generator/invalid:operation");
        std::fs::write(&input, format!("{text}{refused}\n")).unwrap();
        let data = dir.path().join("data");
        let summary = run_with(&pipeline(), &input, &data);
        Fixture {
            _dir: dir,
            input,
            data,
            summary,
            zones,
        }
    })
}

#[test]
fn each_zone_s_store_holds_exactly_the_users_whose_first_event_placed_them_there() {
    let f = fixture();
    let in_file: HashSet<&String> = f.zones.keys().collect();
    let mut placed = 0;
    for (zone, folder) in ZONES {
        let stored = users_in_store(&f.data, folder);
        let expected: BTreeSet<String> = f
            .zones
            .iter()
            .filter(|(_, z)| **z == zone)
            .map(|(u, _)| u.clone())
            .collect();
        let of_the_file: BTreeSet<String> = stored
            .iter()
            .filter(|u| in_file.contains(u))
            .cloned()
            .collect();
        assert!(
            expected.len() > 100,
            "zone {zone} has users in the input ({})",
            expected.len()
        );
        let missing: Vec<_> = expected.difference(&of_the_file).take(5).collect();
        let foreign: Vec<_> = of_the_file.difference(&expected).take(5).collect();
        assert!(
            missing.is_empty() && foreign.is_empty(),
            "zone {zone}: missing {missing:?}, users of another zone {foreign:?}"
        );
        // Besides the users, only the dead-letter keys of days, in the default zone.
        let others: Vec<&String> = stored.iter().filter(|u| !in_file.contains(u)).collect();
        if zone == "EU" {
            assert!(others.is_empty(), "EU holds ids of no event: {others:?}");
        } else {
            assert!(others.len() <= 2, "day keys only: {others:?}");
        }
        placed += expected.len();
    }
    assert_eq!(placed, f.zones.len());
    assert_eq!(
        f.summary["read"].as_u64().unwrap(),
        f.summary["written"].as_u64().unwrap()
            + f.summary["stale"].as_u64().unwrap()
            + f.summary["dead_lettered"].as_u64().unwrap()
    );
}

#[test]
fn each_zone_s_index_and_keys_hold_only_its_own_users() {
    let f = fixture();
    let mut documents = 0;
    for (zone, folder) in ZONES {
        let users = users_in_index(&f.data, folder);
        assert!(users.len() > 100, "zone {zone} has documents");
        let foreign: Vec<&String> = users.iter().filter(|u| f.zones[*u] != zone).collect();
        assert!(foreign.is_empty(), "zone {zone}'s index holds {foreign:?}");
        documents += users.len();

        let keks = keyring_ids(&f.data, folder);
        let conn = sqlite(&f.data.join(folder).join("profiles.sqlite"));
        let used: BTreeSet<String> = conn
            .prepare("SELECT DISTINCT kek_id FROM user_keys")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(!used.is_empty());
        assert!(
            used.is_subset(&keks),
            "zone {zone}: keys wrapped by {used:?}, its keyring has {keks:?}"
        );
    }
    assert!(
        keyring_ids(&f.data, "eu").is_disjoint(&keyring_ids(&f.data, "global")),
        "each zone has its own key-encryption keys"
    );
    let live: i64 = ZONES
        .iter()
        .map(|(_, folder)| {
            sqlite(&f.data.join(folder).join("profiles.sqlite"))
                .query_row(
                    "SELECT count(*) FROM profiles WHERE record IS NOT NULL",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .unwrap()
        })
        .sum();
    assert_eq!(documents as i64, live, "one document per live profile");
}

#[test]
fn segment_changes_name_their_zone_and_go_to_its_feed() {
    let f = fixture();
    let changes = |path: PathBuf| -> Vec<Json> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    for (zone, path) in [
        ("EU", f.data.join("eu/segment-changes.jsonl")),
        ("GLOBAL", f.data.join("segment-changes.jsonl")),
    ] {
        let lines = changes(path);
        assert!(lines.len() > 100, "{zone}'s feed has changes");
        for change in &lines {
            assert_eq!(change["zone"], zone, "{change}");
            assert_eq!(f.zones[change["user_id"].as_str().unwrap()], zone);
        }
    }
}

#[test]
fn dead_letters_name_their_zone_and_go_to_its_sink() {
    let f = fixture();
    let letters = |path: PathBuf| -> Vec<Json> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let eu = letters(f.data.join("eu/dead-letter.jsonl"));
    let global = letters(f.data.join("dead-letter.jsonl"));
    assert!(!global.is_empty(), "the run dead-lettered events");
    assert!(
        !eu.is_empty(),
        "letters of EU users go to the EU zone's sink"
    );
    assert_eq!(
        eu.len() + global.len(),
        f.summary["dead_lettered"].as_u64().unwrap() as usize
    );
    for (zone, lines) in [("EU", &eu), ("GLOBAL", &global)] {
        for letter in lines.iter() {
            assert_eq!(letter["zone"], zone, "{letter}");
            let sealing = letter["sealing"].as_str().unwrap();
            if let Some(user) = sealing.strip_prefix("user:") {
                let user = &user[..36];
                assert_eq!(f.zones[user], zone, "a letter sealed under {user}'s key");
            }
        }
    }
}

#[test]
fn lookups_and_searches_find_users_in_every_zone_and_name_the_zone() {
    let f = fixture();
    let state = expected_state(&f.input);
    for (zone, _) in ZONES {
        let (user, email) = state
            .iter()
            .filter(|(u, e)| f.zones[*u] == zone && !e.deleted)
            .find_map(|(u, e)| Some((u, e.profile.get("email")?.as_str()?)))
            .unwrap();
        let out = operator(&f.data, &["get", email]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let found: Json = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            found["user_id"], **user,
            "the email of a {zone} user finds them"
        );
    }
    let all = json_lines(&operator(
        &f.data,
        &["search", "*", "--limit", "200", "--output", "json"],
    ));
    let hits = all[0]["hits"].as_array().unwrap();
    let named: BTreeSet<&str> = hits.iter().map(|h| h["zone"].as_str().unwrap()).collect();
    assert_eq!(named, BTreeSet::from(["EU", "GLOBAL"]));
    for hit in hits {
        assert_eq!(
            f.zones[hit["user_id"].as_str().unwrap()],
            hit["zone"].as_str().unwrap()
        );
    }
    let eu = json_lines(&operator(
        &f.data,
        &[
            "search", "*", "--zone", "EU", "--limit", "200", "--output", "json",
        ],
    ));
    assert!(eu[0]["hits"]
        .as_array()
        .unwrap()
        .iter()
        .all(|h| f.zones[h["user_id"].as_str().unwrap()] == "EU"));
    assert!(eu[0]["total"].as_u64().unwrap() < all[0]["total"].as_u64().unwrap());
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The live documents of `user` in a zone's tantivy folder (a term query on the user id).
fn documents_of(data: &Path, folder: &str, user: &str) -> usize {
    let index = tantivy::Index::open_in_dir(data.join(folder).join("index")).unwrap();
    let field = index.schema().get_field("user_id").unwrap();
    let query = tantivy::query::TermQuery::new(
        tantivy::Term::from_field_text(field, user),
        tantivy::schema::IndexRecordOption::Basic,
    );
    index
        .reader()
        .unwrap()
        .searcher()
        .search(&query, &tantivy::collector::Count)
        .unwrap()
}

#[test]
fn a_zone_move_re_encrypts_in_the_new_zone_and_leaves_no_byte_of_the_user_in_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = generate(dir.path(), 1_500, 0.0, "jsonl", 21);
    let zones = expected_zones(&input);
    let data = dir.path().join("data");
    run_with(&pipeline(), &input, &data);
    let state = expected_state(&input);
    let (user, email) = state
        .iter()
        .filter(|(u, e)| zones[*u] == "EU" && !e.deleted)
        .find_map(|(u, e)| Some((u.clone(), e.profile.get("email")?.as_str()?.to_string())))
        .unwrap();
    let eu = sqlite(&data.join("eu/profiles.sqlite"));
    let (record, blind): (String, String) = eu
        .query_row(
            "SELECT record, email_index FROM profiles WHERE user_id = ?1",
            [&user],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let wrapped: Vec<u8> = eu
        .query_row(
            "SELECT wrapped_key FROM user_keys WHERE user_id = ?1",
            [&user],
            |r| r.get(0),
        )
        .unwrap();
    drop(eu);
    let record: Json = serde_json::from_str(&record).unwrap();
    let mut secrets: Vec<(String, Vec<u8>)> = record["encrypted"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(f, c)| {
            (
                format!("{f} ciphertext"),
                c.as_str().unwrap().as_bytes().to_vec(),
            )
        })
        .collect();
    secrets.push(("email blind index".into(), blind.clone().into_bytes()));
    secrets.push(("wrapped data key".into(), wrapped));
    secrets.push(("user id".into(), user.clone().into_bytes()));
    let eu_store = std::fs::read(data.join("eu/profiles.sqlite")).unwrap();
    assert!(
        contains(&eu_store, user.as_bytes()),
        "the scan can find the user"
    );
    assert_eq!(documents_of(&data, "eu", &user), 1);

    let out = operator(
        &data,
        &[
            "zones",
            "move",
            &user,
            "--to",
            "GLOBAL",
            "--reason",
            "residency change #12",
            "--actor",
            "dpo",
        ],
    );
    let moved = &json_lines(&out)[0];
    assert_eq!(moved["from"], "EU");
    assert_eq!(moved["to"], "GLOBAL");
    assert!(!moved["reencrypted"].as_array().unwrap().is_empty());

    // Nothing of the user is left in the EU zone's store (file and WAL) and index. Its feed is
    // an outbound log (a topic in production): it tells the EU consumers the user left.
    let eu_bytes: Vec<u8> = files_under(&data.join("eu"))
        .iter()
        .filter(|p| p.extension().is_none_or(|e| e != "jsonl"))
        .flat_map(|p| std::fs::read(p).unwrap())
        .collect();
    let left: Vec<&str> = secrets
        .iter()
        .filter(|(_, s)| contains(&eu_bytes, s))
        .map(|(what, _)| what.as_str())
        .collect();
    assert!(left.is_empty(), "left in the EU zone's files: {left:?}");
    assert_eq!(documents_of(&data, "eu", &user), 0);
    assert_eq!(documents_of(&data, "global", &user), 1);
    let last_change = |feed: &str| -> Json {
        let text = std::fs::read_to_string(data.join(feed)).unwrap();
        let line = text.lines().rev().find(|l| l.contains(&user)).unwrap();
        serde_json::from_str(line).unwrap()
    };
    let left = last_change("eu/segment-changes.jsonl");
    assert_eq!(
        (&left["cause"], &left["zone"]),
        (&Json::from("DELETE"), &Json::from("EU"))
    );
    assert_eq!(left["segments"], serde_json::json!([]));
    let arrived = last_change("segment-changes.jsonl");
    assert_eq!(
        (&arrived["cause"], &arrived["zone"]),
        (&Json::from("SNAPSHOT"), &Json::from("GLOBAL"))
    );
    assert_eq!(arrived["segments"], record["segments"]);

    // In GLOBAL: under a key of GLOBAL's keyring, new ciphertexts, the same plaintext.
    let global = sqlite(&data.join("global/profiles.sqlite"));
    let (kek, new_record, new_blind): (String, String, String) = global
        .query_row(
            "SELECT k.kek_id, p.record, p.email_index FROM user_keys k JOIN profiles p USING (user_id) WHERE user_id = ?1",
            [&user],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert!(keyring_ids(&data, "global").contains(&kek));
    assert_ne!(new_blind, blind, "the blind index is GLOBAL's");
    assert!(secrets
        .iter()
        .all(|(_, s)| !contains(new_record.as_bytes(), s)));
    let out = operator(
        &data,
        &[
            "get", &email, "--reveal", "--reason", "check", "--actor", "dpo",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let revealed: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(revealed["user_id"], *user);
    assert_eq!(revealed["profile"]["email"], *email);
    let trail = json_lines(&operator(&data, &["audit", &user]));
    assert!(trail
        .iter()
        .any(|r| r["action"] == "zone_move" && r["reason"] == "residency change #12"));

    // The recorded zone wins over a later event's derived one; the move is not silent to redo.
    let later = dir.path().join("later.jsonl");
    let line = std::fs::read_to_string(&input)
        .unwrap()
        .lines()
        .find(|l| parse_valid(l).is_some_and(|(u, _, op, _)| u == user && op == "UPSERT"))
        .unwrap()
        .to_string();
    let mut again: Json = serde_json::from_str(&line).unwrap();
    again["version"] = Json::from(10_000);
    std::fs::write(&later, format!("{again}\n")).unwrap();
    let summary = run_with(&pipeline(), &later, &data);
    assert_eq!(summary["written"], 1);
    let located = json_lines(&operator(&data, &["zones", "locate", &user]));
    assert_eq!(located[0]["zones"], serde_json::json!(["GLOBAL"]));
    let out = operator(
        &data,
        &[
            "zones", "move", &user, "--to", "GLOBAL", "--reason", "again",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "moving to where the user is is refused"
    );
}

#[test]
fn zones_that_share_an_adapter_or_that_no_user_could_reach_are_refused_at_startup() {
    let text = std::fs::read_to_string(pipeline()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (from, to, says) in [
        (
            "store: {type: sqlite, path: eu/profiles.sqlite}",
            "store: {type: sqlite, path: global/profiles.sqlite}",
            "share the store file global/profiles.sqlite",
        ),
        (
            "keys: {type: local_keyring, path: eu/keyring.json}",
            "keys: {type: local_keyring, path: global/keyring.json}",
            "share the keys keyring global/keyring.json",
        ),
        ("    EU:\n", "    MARS:\n", "no zone \"MARS\""),
        ("default_zone: GLOBAL", "default_zone: EU", "is also listed"),
    ] {
        assert!(text.contains(from), "{from}");
        let path = dir.path().join("zones.yaml");
        std::fs::write(&path, text.replace(from, to)).unwrap();
        let out = bin()
            .args(["run", "--pipeline"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(says), "{says}: {stderr}");
    }
}

/// `pipelines/residency-aws-local.yaml` for one test: its tables, KMS aliases and indices
/// named after `label` and a fresh id, the test servers' addresses (the EU zone's DynamoDB at
/// `eu_dynamodb`, a fault proxy where the test wants one), bootstrapped. The path of the file
/// and the (zone → table, index) names.
fn aws_pipeline(
    label: &str,
    dir: &Path,
    eu_dynamodb: &str,
) -> (PathBuf, HashMap<&'static str, (String, String)>) {
    use common::services::*;
    aws_test_env();
    require("DynamoDB Local", &dynamodb_endpoint(), "dynamodb");
    require("The KMS emulator", &kms_endpoint(), "kms");
    require(
        "The OpenSearch test server",
        &opensearch_url(),
        "opensearch",
    );
    let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
    let mut text = std::fs::read_to_string(repo().join("pipelines/residency-aws-local.yaml"))
        .unwrap()
        .replace("../", &format!("{}/", repo().display()))
        .replace("batch_size: 2000", "batch_size: 200")
        .replace("http://127.0.0.1:4566", &kms_endpoint())
        .replace("http://127.0.0.1:9200", &opensearch_url());
    let mut names = HashMap::new();
    for zone in ["global", "eu"] {
        let table = format!("{label}-{zone}-{id}");
        let index = format!("ps-{label}-{zone}-{id}");
        text = text
            .replace(
                &format!("alias/profile-sync-{zone}"),
                &format!("alias/{table}"),
            )
            .replace(
                &format!("table: profile-sync-{zone}"),
                &format!("table: {table}"),
            )
            .replace(&format!("name: profiles-{zone}"), &format!("name: {index}"));
        names.insert(if zone == "eu" { "EU" } else { "GLOBAL" }, (table, index));
    }
    // The GLOBAL zone's DynamoDB is the test server; the EU zone's is `eu_dynamodb`.
    let (before_eu, eu) = text.split_at(text.find("    EU:\n").unwrap());
    let text = format!(
        "{}{}",
        before_eu.replace("http://127.0.0.1:8000", &dynamodb_endpoint()),
        eu.replace("http://127.0.0.1:8000", eu_dynamodb)
    );
    let path = dir.join("residency-aws.yaml");
    std::fs::write(&path, text).unwrap();
    let out = bin()
        .args(["bootstrap", "--pipeline"])
        .arg(&path)
        .output()
        .unwrap();
    let said = json_lines(&out);
    assert_eq!(
        said.len(),
        2,
        "bootstrap creates each zone's table and key: {said:?}"
    );
    (path, names)
}

/// The users with any item in a DynamoDB table (read with a plain client), and the KMS key
/// ARNs their stored keys were wrapped under.
fn table_users_and_keks(table: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let items = common::services::block_on(common::services::scan_all(table));
    let mut users = BTreeSet::new();
    let mut keks = BTreeSet::new();
    for item in &items {
        let pk = item["pk"].as_s().unwrap();
        let Some(user) = pk.strip_prefix("USER#") else {
            continue;
        };
        users.insert(user.to_string());
        if item["sk"].as_s().unwrap() == "KEY" {
            // `<KMS key ARN>#<generation>`.
            let kek = item["kek_id"].as_s().unwrap();
            keks.insert(kek.split('#').next().unwrap().to_string());
        }
    }
    (users, keks)
}

/// The ARN of the KMS key an alias names, in a region, asked with a plain KMS client.
fn key_arn(alias: &str, region: &str) -> String {
    common::services::block_on(async {
        let config = common::services::sdk(&common::services::kms_endpoint()).await;
        let config = config
            .into_builder()
            .region(aws_config::Region::new(region.to_string()))
            .build();
        let client = aws_sdk_kms::Client::new(&config);
        let key = client.describe_key().key_id(alias).send().await.unwrap();
        key.key_metadata().unwrap().arn().unwrap().to_string()
    })
}

#[test]
fn on_dynamodb_kms_and_opensearch_each_zone_s_table_key_and_index_hold_only_its_users() {
    let dir = tempfile::tempdir().unwrap();
    let dynamodb = common::services::dynamodb_endpoint();
    let (path, names) = aws_pipeline("zones", dir.path(), &dynamodb);
    let (input, _) = generate(dir.path(), 2_000, 0.01, "jsonl", 22);
    let zones = expected_zones(&input);
    let summary = run_with(&path, &input, &dir.path().join("data"));
    assert_eq!(
        summary["read"].as_u64().unwrap(),
        summary["written"].as_u64().unwrap()
            + summary["stale"].as_u64().unwrap()
            + summary["dead_lettered"].as_u64().unwrap()
    );
    for (zone, region) in [("EU", "eu-central-1"), ("GLOBAL", "us-east-1")] {
        let (table, index) = &names[zone];
        let (users, keks) = table_users_and_keks(table);
        let of_the_file: BTreeSet<String> = users
            .iter()
            .filter(|u| zones.contains_key(*u))
            .cloned()
            .collect();
        let expected: BTreeSet<String> = zones
            .iter()
            .filter(|(_, z)| **z == zone)
            .map(|(u, _)| u.clone())
            .collect();
        assert!(expected.len() > 50, "{zone} has users");
        assert_eq!(of_the_file, expected, "the users of table {table}");
        let arn = key_arn(&format!("alias/{table}"), region);
        assert_eq!(
            keks,
            BTreeSet::from([arn.clone()]),
            "zone {zone}'s user keys are wrapped under its own KMS key only"
        );
        assert!(arn.contains(region), "{arn}");
        let documents = common::services::opensearch_documents(index);
        assert!(!documents.is_empty(), "{zone} has documents");
        let foreign: Vec<&String> = documents.keys().filter(|u| zones[*u] != zone).collect();
        assert!(foreign.is_empty(), "index {index} holds {foreign:?}");
    }
}

/// Item 6 of the issue: the EU zone's DynamoDB becomes unreachable in the middle of a run
/// (a fault proxy in front of it drops every connection). The EU zone's writes wait and are
/// retried; the worker neither exits nor dead-letters anything; when the store is back the run
/// ends with every zone holding exactly its users.
#[test]
fn a_zone_s_store_down_holds_its_writes_until_it_is_back_and_nothing_is_lost() {
    use common::fault_proxy::{FaultProxy, DROP, PASS};
    let dir = tempfile::tempdir().unwrap();
    let proxy = FaultProxy::start(&common::services::dynamodb_endpoint());
    let (path, names) = aws_pipeline("drill", dir.path(), &proxy.endpoint);
    let (input, generated) = generate(dir.path(), 6_000, 0.01, "jsonl", 23);
    let zones = expected_zones(&input);
    let count = |zone: &str| table_users_and_keks(&names[zone].0).0.len();
    let mut worker = std::process::Command::new(binary())
        .args(["run", "--output", "json", "--pipeline"])
        .arg(&path)
        .arg("--input")
        .arg(&input)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while count("EU") == 0 {
        assert!(
            started.elapsed().as_secs() < 120,
            "the EU zone got no write"
        );
        assert!(
            worker.try_wait().unwrap().is_none(),
            "the worker ended early"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    proxy.set(DROP);
    // The outage is followed by what the proxy sees, not by the clock: once the worker has
    // been refused a few times (its retries back off, so requests that passed before the
    // outage have long been answered), the EU table is counted; then the worker is seen
    // trying again and again, alive, while nothing more reaches the table.
    let within = std::time::Duration::from_secs(120);
    proxy.wait_until("the worker meets the outage", within, &mut worker, |p| {
        p.faults_of(DROP) >= 3
    });
    let (eu_down, global_down) = (count("EU"), count("GLOBAL"));
    let refused = proxy.faults_of(DROP);
    proxy.wait_until(
        "the worker keeps trying the EU zone's store",
        within,
        &mut worker,
        |p| p.faults_of(DROP) >= refused + 40,
    );
    assert_eq!(
        count("EU"),
        eu_down,
        "nothing reaches the EU table while it is down"
    );
    let global_end = count("GLOBAL");
    proxy.set(PASS);
    let out = worker.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Json =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(summary["read"], 6_000);
    assert_eq!(
        summary["dead_lettered"], generated["invalid"],
        "an outage dead-letters nothing"
    );
    for zone in ["EU", "GLOBAL"] {
        let expected = zones.values().filter(|z| **z == zone).count();
        let (users, _) = table_users_and_keks(&names[zone].0);
        let of_the_file = users
            .iter()
            .filter(|u| zones.get(*u) == Some(&zone))
            .count();
        assert_eq!(of_the_file, expected, "zone {zone} after the outage");
        assert!(users
            .iter()
            .all(|u| zones.get(u).is_none_or(|z| *z == zone)));
    }
    eprintln!(
        "zone outage drill: EU down at {eu_down} EU users; GLOBAL {global_down} users when the outage was first met, {global_end} at its end; {} connections dropped; finished with every zone complete",
        proxy.faults()
    );
}
