//! The OpenSearch adapter end to end: the real binary, a pipeline file like
//! `pipelines/opensearch-local.yaml`, and an OpenSearch-API server (osmem-server here;
//! a real OpenSearch when `OPENSEARCH_URL` is set). Each test uses index names of its own.
//! An unreachable server fails the tests; it never skips them.

mod common;

use common::canary::Canary;
use common::services::opensearch_documents;
use common::*;
use serde_json::{json, Value as Json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

fn url() -> String {
    std::env::var("OPENSEARCH_URL").unwrap_or_else(|_| "http://127.0.0.1:9200".into())
}

/// One HTTP call to the server, from a synchronous test.
fn http(method: reqwest::Method, path: &str, body: Option<Json>) -> (u16, Json) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut request = reqwest::Client::new().request(method, format!("{}{path}", url()));
        if let Some(b) = body {
            request = request.json(&b);
        }
        let response = request.send().await.unwrap_or_else(|e| {
            panic!(
                "the OpenSearch test server is not reachable at {} ({e}): start it with `scripts/services start opensearch`, or set OPENSEARCH_URL",
                url()
            )
        });
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Json::Null))
    })
}

fn get(path: &str) -> Json {
    let (status, body) = http(reqwest::Method::GET, path, None);
    assert!(status < 300, "GET {path}: {status} {body}");
    body
}

/// Index names of one test; the indices and template go when it ends.
struct Names {
    name: String,
}

impl Names {
    fn new(label: &str) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self {
            name: format!("ps-test-{label}-{}", &id[..8]),
        }
    }
    fn read(&self) -> &str {
        &self.name
    }
    fn write(&self) -> String {
        format!("{}-write", self.name)
    }
}

impl Drop for Names {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| {
            http(reqwest::Method::DELETE, &format!("/{}-v*", self.name), None);
            http(
                reqwest::Method::DELETE,
                &format!("/_index_template/{}", self.name),
                None,
            );
        });
    }
}

/// The shipped `pipelines/opensearch-local.yaml` with absolute paths, this test's index names
/// and server, and the replacements given.
fn pipeline(dir: &Path, names: &Names, server: &str, replace: &[(&str, &str)]) -> PathBuf {
    let mut text = std::fs::read_to_string(repo().join("pipelines/opensearch-local.yaml"))
        .unwrap()
        .replace("../", &format!("{}/", repo().display()))
        .replace("url: http://127.0.0.1:9200", &format!("url: {server}"))
        .replace("name: profiles ", &format!("name: {} ", names.name))
        .replace(
            "read_alias: profiles ",
            &format!("read_alias: {} ", names.read()),
        )
        .replace(
            "write_alias: profiles-write",
            &format!("write_alias: {}", names.write()),
        );
    for (from, to) in replace {
        assert!(text.contains(from), "the pipeline has {from:?}");
        text = text.replace(from, to);
    }
    let path = dir.join(format!("{}.yaml", names.name));
    std::fs::write(&path, text).unwrap();
    path
}

/// `run` with debug logs; returns the JSON summary and everything logged.
fn run_logged(pipeline: &Path, input: &Path, data: &Path) -> (Json, String) {
    let output = bin()
        .env("PROFILE_SYNC_LOG", "debug")
        .arg("run")
        .arg("--pipeline")
        .arg(pipeline)
        .arg("--input")
        .arg(input)
        .arg("--data-dir")
        .arg(data)
        .args(["--output", "json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "run failed: {stderr}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    (
        serde_json::from_str(stdout.lines().last().expect("a summary line")).unwrap(),
        stderr,
    )
}

fn cli_search(pipeline: &Path, args: &[&str]) -> Json {
    let output = bin()
        .arg("search")
        .args(args)
        .args(["--output", "json", "--pipeline"])
        .arg(pipeline)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "search failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The stored (user, version) of every live profile, from the SQLite store.
fn stored_live(data: &Path) -> HashMap<String, (i64, Json)> {
    let conn = rusqlite::Connection::open(data.join("profiles.sqlite")).unwrap();
    let mut stmt = conn
        .prepare("SELECT user_id, version, record FROM profiles WHERE deleted = 0")
        .unwrap();
    stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            (r.get::<_, i64>(1)?, r.get::<_, String>(2)?),
        ))
    })
    .unwrap()
    .map(|r| {
        let (user, (version, record)) = r.unwrap();
        (user, (version, serde_json::from_str(&record).unwrap()))
    })
    .collect()
}

fn millis_to_rfc3339(v: &Json) -> Json {
    v.as_i64().map_or(Json::Null, |ms| {
        Json::from(
            chrono::DateTime::from_timestamp_millis(ms)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        )
    })
}

/// The index document a generated profile must produce: its public projected fields from the
/// generated event, its derived fields from the stored record.
fn expected_document(user: &str, e: &Expected, stored: &Json) -> Json {
    let p = &e.profile;
    let marketing = p
        .get("marketing")
        .map(|m| unwrap(m).clone())
        .unwrap_or(Json::Null);
    let m = |k: &str| unwrap(&marketing[k]).clone();
    let mut doc = serde_json::Map::new();
    let mut put = |k: &str, v: Json| {
        if !v.is_null() {
            doc.insert(k.to_string(), v);
        }
    };
    put("user_id", Json::from(user));
    put("version", Json::from(e.version));
    let occurred_at = chrono::DateTime::parse_from_rfc3339(stored["occurred_at"].as_str().unwrap())
        .unwrap()
        .to_utc()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    put("occurred_at", Json::from(occurred_at));
    put("status", p.get("status").cloned().unwrap_or(Json::Null));
    put("locale", p.get("locale").cloned().unwrap_or(Json::Null));
    put(
        "time_zone",
        p.get("time_zone").cloned().unwrap_or(Json::Null),
    );
    put(
        "last_seen_at",
        millis_to_rfc3339(p.get("last_seen_at").unwrap_or(&Json::Null)),
    );
    put("lifetime_value", m("lifetime_value"));
    put("order_count", m("order_count"));
    put("last_order_at", millis_to_rfc3339(&m("last_order_at")));
    put("plan", m("plan"));
    for k in ["country", "subdivision", "continent", "residency_zone"] {
        put(k, stored["region"][k].clone());
    }
    put("segments", stored["segments"].clone());
    Json::Object(doc)
}

/// One 20,000-event run with 1% invalid through the OpenSearch pipeline, shared by the tests
/// that only read its results.
struct Fixture {
    _dir: tempfile::TempDir,
    names: Names,
    pipeline: PathBuf,
    data: PathBuf,
    generated: Json,
    summary: Json,
    logs: String,
    expected: HashMap<String, Expected>,
    canary: Canary,
    documents: HashMap<String, Json>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let names = Names::new("e2e");
        let pipeline = pipeline(dir.path(), &names, &url(), &[]);
        let (input, generated) = generate(dir.path(), 20_000, 0.01, "jsonl", 17);
        let data = dir.path().join("data");
        let (summary, logs) = run_logged(&pipeline, &input, &data);
        let documents = opensearch_documents(names.read());
        Fixture {
            expected: expected_state(&input),
            canary: Canary::of_generated(&input),
            _dir: dir,
            names,
            pipeline,
            data,
            generated,
            summary,
            logs,
            documents,
        }
    })
}

#[test]
fn the_index_holds_exactly_the_pii_free_projection_of_every_live_profile() {
    let f = fixture();
    let s = &f.summary;
    assert_eq!(s["read"], 20_000);
    assert_eq!(s["dead_lettered"], f.generated["invalid"], "{s}");
    assert!(s["stale"].as_u64().unwrap() > 0, "{s}");
    let stored = stored_live(&f.data);
    let live: HashMap<&String, &Expected> = f.expected.iter().filter(|(_, e)| !e.deleted).collect();
    assert!(live.len() > 3000, "the scenario has many live profiles");
    assert_eq!(f.documents.len(), live.len());
    let (_, count) = http(
        reqwest::Method::GET,
        &format!("/{}/_count", f.names.read()),
        None,
    );
    assert_eq!(count["count"].as_u64().unwrap() as usize, live.len());
    for (user, e) in &live {
        let doc = f
            .documents
            .get(*user)
            .unwrap_or_else(|| panic!("user {user} is not indexed"));
        let (version, record) = &stored[*user];
        assert_eq!(*version, e.version);
        assert_eq!(doc, &expected_document(user, e, record), "user {user}");
    }
}

#[test]
fn no_generated_pii_is_in_any_document_mapping_log_or_search_result() {
    let f = fixture();
    let needles = f.canary.needles();
    assert!(needles.len() > 10_000, "the canary has values to look for");
    let documents = serde_json::to_string(&f.documents).unwrap();
    f.canary.assert_absent("a document", documents);
    for path in [
        format!("/{}/_mapping", f.names.read()),
        format!("/_index_template/{}", f.names.name),
    ] {
        let text = get(&path).to_string();
        assert!(text.contains("strict"), "{path}: {text}");
        f.canary.assert_absent(&path, &text);
        for field in [
            "email",
            "phone",
            "display_name",
            "postal_address",
            "last_seen_ip",
        ] {
            assert!(
                !text.contains(&format!("\"{field}\"")),
                "{path} maps {field}"
            );
        }
    }
    assert!(f.logs.contains("batch done"), "debug logs were captured");
    f.canary.assert_absent("a log line", &f.logs);
    // Ask the server itself, over every field, for a sample of the canaries.
    for needle in needles.iter().step_by(needles.len() / 25) {
        let (status, found) = http(
            reqwest::Method::POST,
            &format!("/{}/_search", f.names.read()),
            Some(json!({"query": {"query_string": {
                "query": format!("\"{}\"", needle.replace('"', "")),
                "default_field": "*", "lenient": true}}})),
        );
        assert_eq!(status, 200, "{found}");
        assert_eq!(found["hits"]["total"]["value"], 0, "a canary was found");
    }
    let sample = needles[0].replace('"', "");
    let found = cli_search(&f.pipeline, &[&format!("\"{sample}\"")]);
    assert_eq!(found["total"], 0);
}

#[test]
fn search_finds_by_segment_and_region_and_aggregates_counts() {
    let f = fixture();
    let found = cli_search(
        &f.pipeline,
        &["segments:high_value AND residency_zone:EU", "--limit", "20"],
    );
    let hits = found["hits"].as_array().unwrap();
    assert!(!hits.is_empty());
    for hit in hits {
        assert_eq!(hit["residency_zone"], "EU");
        assert!(hit["segments"]
            .as_array()
            .unwrap()
            .contains(&Json::from("high_value")));
    }
    let aggregated = cli_search(
        &f.pipeline,
        &[
            "*",
            "--limit",
            "1",
            "--agg-size",
            "100",
            "--agg",
            "country",
            "--agg",
            "segments",
        ],
    );
    assert_eq!(
        aggregated["total"].as_u64().unwrap() as usize,
        f.documents.len()
    );
    for (i, field) in ["country", "segments"].iter().enumerate() {
        let mut want: BTreeMap<String, u64> = BTreeMap::new();
        for doc in f.documents.values() {
            match &doc[*field] {
                Json::Array(items) => items
                    .iter()
                    .for_each(|s| *want.entry(s.as_str().unwrap().into()).or_default() += 1),
                Json::String(s) => *want.entry(s.clone()).or_default() += 1,
                _ => {}
            }
        }
        let agg = &aggregated["aggregations"][i];
        assert_eq!(agg["field"], *field);
        let got: BTreeMap<String, u64> = agg["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                (
                    b["key"].as_str().unwrap().into(),
                    b["count"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(got, want, "{field}");
    }
    // An unknown field is the user's mistake: exit code 2, with the fields there are.
    bin()
        .args(["search", "*", "--agg", "email", "--pipeline"])
        .arg(&f.pipeline)
        .assert()
        .code(2)
        .stderr(predicates::str::contains("cannot aggregate on `email`"));
}

#[test]
fn the_embedded_index_aggregates_like_opensearch() {
    let dir = tempfile::tempdir().unwrap();
    let names = Names::new("agg");
    let os = pipeline(dir.path(), &names, &url(), &[]);
    let (input, _) = generate(dir.path(), 2_000, 0.0, "jsonl", 5);
    run_logged(&os, &input, &dir.path().join("os"));
    let tantivy_data = dir.path().join("tantivy");
    run(&input, &tantivy_data);
    http(
        reqwest::Method::POST,
        &format!("/{}/_refresh", names.read()),
        None,
    );
    for query in ["*", "segments:dormant", "plan:pro OR plan:enterprise"] {
        let from_os = cli_search(
            &os,
            &[query, "--agg", "residency_zone", "--agg", "segments"],
        );
        let output = bin()
            .args([
                "search",
                query,
                "--agg",
                "residency_zone",
                "--agg",
                "segments",
            ])
            .args(["--output", "json", "--pipeline"])
            .arg(local_pipeline())
            .arg("--data-dir")
            .arg(&tantivy_data)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let from_tantivy: Json = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(from_os["total"], from_tantivy["total"], "{query}");
        assert!(from_os["total"].as_u64().unwrap() > 0, "{query}");
        let buckets = |j: &Json| -> Vec<BTreeMap<String, u64>> {
            j["aggregations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| {
                    a["buckets"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|b| {
                            (
                                b["key"].as_str().unwrap().into(),
                                b["count"].as_u64().unwrap(),
                            )
                        })
                        .collect()
                })
                .collect()
        };
        assert_eq!(buckets(&from_os), buckets(&from_tantivy), "{query}");
    }
}

fn aliases(names: &Names) -> (Vec<String>, Vec<String>) {
    let state = get(&format!("/{}-v*/_alias", names.name));
    let mut read = Vec::new();
    let mut write = Vec::new();
    for (index, info) in state.as_object().unwrap() {
        if info["aliases"].get(names.read()).is_some() {
            read.push(index.clone());
        }
        if info["aliases"].get(names.write()).is_some() {
            write.push(index.clone());
        }
    }
    (read, write)
}

fn reindex(pipeline: &Path, data: &Path, page_size: &str) -> std::process::Output {
    bin()
        .arg("reindex")
        .arg("--pipeline")
        .arg(pipeline)
        .arg("--data-dir")
        .arg(data)
        .args(["--page-size", page_size, "--output", "json"])
        .output()
        .unwrap()
}

#[test]
fn reindex_while_the_pipeline_writes_ends_equal_to_the_store_behind_the_new_version() {
    let dir = tempfile::tempdir().unwrap();
    let names = Names::new("reindex");
    let pipeline = pipeline(
        dir.path(),
        &names,
        &url(),
        &[("batch_size: 2000", "batch_size: 200")],
    );
    let (input, _) = generate(dir.path(), 12_000, 0.01, "jsonl", 23);
    // The first half now; the second half (newer versions of the same users) while reindexing.
    let text = std::fs::read_to_string(&input).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let (first, second) = lines.split_at(lines.len() / 2);
    let first_path = dir.path().join("first.jsonl");
    let second_path = dir.path().join("second.jsonl");
    std::fs::write(&first_path, first.join("\n") + "\n").unwrap();
    std::fs::write(&second_path, second.join("\n") + "\n").unwrap();
    let data = dir.path().join("data");
    run_logged(&pipeline, &first_path, &data);
    assert_eq!(
        aliases(&names),
        (
            vec![format!("{}-v1", names.name)],
            vec![format!("{}-v1", names.name)]
        )
    );

    let live = {
        let (pipeline, second_path, data) = (pipeline.clone(), second_path.clone(), data.clone());
        std::thread::spawn(move || run_logged(&pipeline, &second_path, &data))
    };
    let output = reindex(&pipeline, &data, "100");
    assert!(
        output.status.success(),
        "reindex failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    live.join().unwrap();
    let report: Json = serde_json::from_slice(&output.stdout).unwrap();
    let v2 = format!("{}-v2", names.name);
    assert_eq!(report["index"], Json::from(v2.as_str()), "{report}");
    assert_eq!(report["swapped"], true, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    let sum = ["indexed", "deleted", "stale", "failed"]
        .iter()
        .map(|k| report[k].as_u64().unwrap())
        .sum::<u64>();
    assert_eq!(sum, report["scanned"].as_u64().unwrap(), "{report}");
    assert_eq!(aliases(&names), (vec![v2.clone()], vec![v2.clone()]));

    let stored: HashMap<String, i64> = stored_live(&data)
        .into_iter()
        .map(|(u, (v, _))| (u, v))
        .collect();
    let indexed: HashMap<String, i64> = opensearch_documents(names.read())
        .into_iter()
        .map(|(u, d)| (u, d["version"].as_i64().unwrap()))
        .collect();
    assert_eq!(indexed.len(), stored.len());
    assert_eq!(indexed, stored);
    // And it equals what the whole input must produce.
    let expected: HashMap<String, i64> = expected_state(&input)
        .into_iter()
        .filter(|(_, e)| !e.deleted)
        .map(|(u, e)| (u, e.version))
        .collect();
    assert_eq!(indexed, expected);
}

#[test]
fn a_projection_change_needs_a_reindex_which_builds_the_next_version() {
    let dir = tempfile::tempdir().unwrap();
    let names = Names::new("mapping");
    let narrow = pipeline(
        dir.path(),
        &names,
        &url(),
        &[("fields: [status, locale, time_zone, last_seen_at, lifetime_value, order_count, last_order_at, plan]", "fields: [plan]")],
    );
    let (input, _) = generate(dir.path(), 500, 0.0, "jsonl", 3);
    let data = dir.path().join("data");
    run_logged(&narrow, &input, &data);
    let wide = pipeline(dir.path(), &names, &url(), &[]);
    bin()
        .arg("run")
        .arg("--pipeline")
        .arg(&wide)
        .arg("--input")
        .arg(&input)
        .arg("--data-dir")
        .arg(&data)
        .assert()
        .code(2)
        .stderr(predicates::str::contains("profile-sync reindex"));
    let output = reindex(&wide, &data, "2000");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let v2 = format!("{}-v2", names.name);
    assert_eq!(aliases(&names), (vec![v2.clone()], vec![v2.clone()]));
    let mapping = get(&format!("/{v2}/_mapping"));
    assert!(mapping[&v2]["mappings"]["properties"]
        .get("status")
        .is_some());
    let v1_mapping = get(&format!("/{}-v1/_mapping", names.name));
    assert!(
        v1_mapping[format!("{}-v1", names.name)]["mappings"]["properties"]
            .get("status")
            .is_none(),
        "the old version keeps its mapping"
    );
    // The wide pipeline now runs.
    run_logged(&wide, &input, &data);
}

#[test]
fn check_and_search_leave_a_cluster_without_the_index_as_they_found_it() {
    let dir = tempfile::tempdir().unwrap();
    let names = Names::new("look");
    let file = pipeline(dir.path(), &names, &url(), &[]);
    let data = dir.path().join("data");
    let check = bin()
        .args(["check", "--pipeline"])
        .arg(&file)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout).to_string();
    assert!(
        said.contains(&format!(
            "no index yet: the first `profile-sync run` creates {}-v1",
            names.name
        )),
        "{said}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    bin()
        .args(["search", "*", "--pipeline"])
        .arg(&file)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    let (status, body) = http(reqwest::Method::GET, &format!("/{}-v1", names.name), None);
    assert_eq!(status, 404, "check or search created an index: {body}");
}

#[test]
fn an_unreachable_server_or_a_pii_field_stops_the_pipeline_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let names = Names::new("refused");
    let (input, _) = generate(dir.path(), 10, 0.0, "jsonl", 1);
    let nowhere = pipeline(dir.path(), &names, "http://127.0.0.1:1", &[]);
    bin()
        .arg("run")
        .arg("--pipeline")
        .arg(&nowhere)
        .arg("--input")
        .arg(&input)
        .arg("--data-dir")
        .arg(dir.path().join("d1"))
        .assert()
        .code(2)
        .stderr(predicates::str::contains(
            "cannot reach OpenSearch at http://127.0.0.1:1",
        ));
    let pii = pipeline(
        dir.path(),
        &names,
        &url(),
        &[("fields: [status,", "fields: [email, status,")],
    );
    bin()
        .arg("run")
        .arg("--pipeline")
        .arg(&pii)
        .arg("--input")
        .arg(&input)
        .arg("--data-dir")
        .arg(dir.path().join("d2"))
        .assert()
        .code(2)
        .stderr(predicates::str::contains(
            "`email`, which is classified pii",
        ));
    let (status, _) = http(reqwest::Method::GET, &format!("/{}-v1", names.name), None);
    assert_eq!(status, 404, "nothing was created for a refused projection");
}

/// A proxy in front of the server that answers 429 to every third bulk request, and to every
/// fourth item of the others (those items are not forwarded, as a full bulk queue would not
/// take them).
struct Storm {
    url: String,
    whole: Arc<AtomicU64>,
    items: Arc<AtomicU64>,
    /// Bulk requests that arrived gzipped.
    gzipped: Arc<AtomicU64>,
}

fn storm() -> Storm {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, Method, StatusCode, Uri};
    use axum::response::IntoResponse;
    let requests = Arc::new(AtomicU64::new(0));
    let seen_items = Arc::new(AtomicU64::new(0));
    let whole = Arc::new(AtomicU64::new(0));
    let items = Arc::new(AtomicU64::new(0));
    let gzipped = Arc::new(AtomicU64::new(0));
    let (tx, rx) = std::sync::mpsc::channel();
    let (w, i, g) = (whole.clone(), items.clone(), gzipped.clone());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let upstream = url();
            let client = reqwest::Client::new();
            let handler = move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let (client, upstream) = (client.clone(), upstream.clone());
                let (requests, seen_items, whole, items, gzipped) = (
                    requests.clone(),
                    seen_items.clone(),
                    w.clone(),
                    i.clone(),
                    g.clone(),
                );
                async move {
                    let gz = headers
                        .get("content-encoding")
                        .is_some_and(|v| v.as_bytes() == b"gzip");
                    let mut body = body.to_vec();
                    if gz {
                        let mut out = Vec::new();
                        std::io::Read::read_to_end(
                            &mut flate2::read::GzDecoder::new(&body[..]),
                            &mut out,
                        )
                        .unwrap();
                        body = out;
                    }
                    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
                    let bulk = uri.path().ends_with("/_bulk");
                    if bulk && gz {
                        gzipped.fetch_add(1, Ordering::SeqCst);
                    }
                    let forward = |body: Vec<u8>| {
                        client
                            .request(method.clone(), format!("{upstream}{path}"))
                            .header("content-type", "application/json")
                            .body(body)
                            .send()
                    };
                    if !bulk {
                        let r = forward(body).await.unwrap();
                        let status = StatusCode::from_u16(r.status().as_u16()).unwrap();
                        return (status, r.bytes().await.unwrap()).into_response();
                    }
                    if requests.fetch_add(1, Ordering::SeqCst) % 3 == 2 {
                        whole.fetch_add(1, Ordering::SeqCst);
                        let err = json!({"error": {"type": "rejected_execution_exception", "reason": "bulk queue full"}, "status": 429});
                        return (StatusCode::TOO_MANY_REQUESTS, err.to_string()).into_response();
                    }
                    // Split into operations: an action line, plus a source line unless a delete.
                    let text = String::from_utf8(body).unwrap();
                    let mut lines = text.lines().filter(|l| !l.is_empty());
                    let mut ops: Vec<String> = Vec::new();
                    while let Some(action) = lines.next() {
                        let mut op = format!("{action}\n");
                        if !action.starts_with("{\"delete\"") {
                            op.push_str(lines.next().unwrap());
                            op.push('\n');
                        }
                        ops.push(op);
                    }
                    let refused: Vec<bool> = ops
                        .iter()
                        .map(|_| seen_items.fetch_add(1, Ordering::SeqCst) % 4 == 3)
                        .collect();
                    let kept: String = ops
                        .iter()
                        .zip(&refused)
                        .filter(|(_, r)| !**r)
                        .map(|(o, _)| o.as_str())
                        .collect();
                    let mut answered = if kept.is_empty() {
                        Vec::new()
                    } else {
                        let r = forward(kept.into_bytes()).await.unwrap();
                        let j: Json = r.json().await.unwrap();
                        j["items"].as_array().unwrap().clone()
                    }
                    .into_iter();
                    let merged: Vec<Json> = refused
                        .iter()
                        .map(|r| {
                            if *r {
                                items.fetch_add(1, Ordering::SeqCst);
                                json!({"index": {"status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "rejected execution"}}})
                            } else {
                                answered.next().unwrap()
                            }
                        })
                        .collect();
                    let out = json!({"errors": true, "took": 1, "items": merged});
                    (StatusCode::OK, out.to_string()).into_response()
                }
            };
            let app = axum::Router::new().fallback(handler);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    let addr = rx.recv().unwrap();
    Storm {
        url: format!("http://{addr}"),
        whole,
        items,
        gzipped,
    }
}

#[test]
fn a_429_storm_loses_nothing() {
    let storm = storm();
    let dir = tempfile::tempdir().unwrap();
    let names = Names::new("storm");
    let pipeline = pipeline(
        dir.path(),
        &names,
        &storm.url,
        &[
            ("max_docs: 5000", "max_docs: 50"),
            ("batch_size: 2000", "batch_size: 500"),
        ],
    );
    let (input, generated) = generate(dir.path(), 3_000, 0.01, "jsonl", 29);
    let (summary, _) = run_logged(&pipeline, &input, &dir.path().join("data"));
    assert_eq!(summary["dead_lettered"], generated["invalid"], "{summary}");
    assert!(
        storm.whole.load(Ordering::SeqCst) > 0,
        "whole requests were refused"
    );
    assert!(
        storm.items.load(Ordering::SeqCst) > 100,
        "items were refused"
    );
    assert!(
        storm.gzipped.load(Ordering::SeqCst) > 0,
        "the server takes gzip, so bulk bodies are gzipped"
    );
    let indexed: HashMap<String, i64> = opensearch_documents(names.read())
        .into_iter()
        .map(|(u, d)| (u, d["version"].as_i64().unwrap()))
        .collect();
    let expected: HashMap<String, i64> = expected_state(&input)
        .into_iter()
        .filter(|(_, e)| !e.deleted)
        .map(|(u, e)| (u, e.version))
        .collect();
    assert_eq!(indexed, expected);
    let users: HashSet<&String> = expected.keys().collect();
    assert!(users.len() > 300);
}

/// An erasure reaches every version of the index, not only the one behind the write alias:
/// after a reindex the older version still holds the user's document until it is deleted.
#[test]
fn an_erasure_deletes_the_document_from_every_version_of_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let names = Names::new("erase");
    let pipeline = pipeline(dir.path(), &names, &url(), &[]);
    let (alice, bob) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    let event = |user: &str| {
        json!({"event_id": uuid::Uuid::new_v4().to_string(), "user_id": user, "operation": "UPSERT",
               "version": 1, "occurred_at": "2026-01-01T00:00:00Z", "source": "test",
               "profile": {"email": format!("{user}@example.org"), "status": "ACTIVE",
                           "marketing": {"lifetime_value": 10.0, "order_count": 1, "plan": "pro"}}})
        .to_string()
    };
    let input = dir.path().join("events.jsonl");
    std::fs::write(&input, format!("{}\n{}\n", event(&alice), event(&bob))).unwrap();
    let data = dir.path().join("data");
    run_logged(&pipeline, &input, &data);
    let output = reindex(&pipeline, &data, "100");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (v1, v2) = (format!("{}-v1", names.name), format!("{}-v2", names.name));
    assert_eq!(aliases(&names), (vec![v2.clone()], vec![v2.clone()]));
    let found = |index: &str, user: &str| {
        let (status, body) = http(reqwest::Method::GET, &format!("/{index}/_doc/{user}"), None);
        status == 200 && body["found"] == true
    };
    assert!(
        found(&v1, &alice) && found(&v2, &alice),
        "both versions hold the document"
    );

    let erase = bin()
        .args(["erase", &alice, "--reason", "request #9", "--pipeline"])
        .arg(&pipeline)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        erase.status.success(),
        "{}",
        String::from_utf8_lossy(&erase.stderr)
    );
    assert!(
        !found(&v2, &alice),
        "gone from the version behind the aliases"
    );
    assert!(!found(&v1, &alice), "gone from the older version too");
    assert!(found(&v1, &bob) && found(&v2, &bob), "the other user stays");
}

/// `pipelines/opensearch-local.yaml` gives the samples the outcome `pipelines/local.yaml`
/// gives them (its consent events were all dead-lettered when it lacked `privacy.purposes`).
#[test]
fn the_samples_give_the_same_counts_as_with_local_yaml() {
    let dir = tempfile::tempdir().unwrap();
    let names = Names::new("samples");
    let pipeline = pipeline(dir.path(), &names, &url(), &[]);
    let samples = repo().join("samples/profile-events.jsonl");
    let (here, _) = run_logged(&pipeline, &samples, &dir.path().join("data"));
    let local = run(&samples, &dir.path().join("local"));
    for key in ["read", "written", "stale", "dead_lettered"] {
        assert_eq!(here[key], local[key], "{key}: {here} vs {local}");
    }
}
