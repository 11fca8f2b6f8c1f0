//! Shared helpers: run the real binary, generate events, and work out the expected final state
//! straight from the generated file (independently of the pipeline's own decoder).
#![allow(dead_code)]

pub mod canary;
pub mod fault_proxy;
pub mod scenarios;
pub mod segment_feed;
pub mod services;
pub mod stack;
pub mod topics;
pub mod versions;

use assert_cmd::Command;
use serde_json::Value as Json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn local_pipeline() -> PathBuf {
    repo().join("pipelines/local.yaml")
}

/// The binary under test: the one cargo built for these tests, or `PROFILE_SYNC_BIN` (e.g. a
/// release build) when set.
pub fn binary() -> PathBuf {
    std::env::var_os("PROFILE_SYNC_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_profile-sync")))
}

pub fn bin() -> Command {
    let mut cmd = Command::new(binary());
    cmd.current_dir(repo());
    cmd.env_remove("PROFILE_SYNC_LOG");
    cmd
}

/// Generates events into `dir/events.<ext>` and returns the path and the generator's counts.
pub fn generate(
    dir: &Path,
    count: u64,
    invalid_ratio: f64,
    format: &str,
    seed: u64,
) -> (PathBuf, Json) {
    let ext = if format == "avro" { "avro" } else { "jsonl" };
    let out = dir.join(format!("events-{seed}.{ext}"));
    let output = bin()
        .args([
            "generate",
            "--count",
            &count.to_string(),
            "--seed",
            &seed.to_string(),
        ])
        .args([
            "--invalid-ratio",
            &invalid_ratio.to_string(),
            "--format",
            format,
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "generate failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (
        out,
        serde_json::from_slice(&output.stdout).expect("generate prints JSON"),
    )
}

/// Runs the pipeline over `input` into `data_dir` and returns the JSON summary.
pub fn run(input: &Path, data_dir: &Path) -> Json {
    run_with(&local_pipeline(), input, data_dir)
}

pub fn run_with(pipeline: &Path, input: &Path, data_dir: &Path) -> Json {
    let output = bin()
        .arg("run")
        .arg("--pipeline")
        .arg(pipeline)
        .arg("--input")
        .arg(input)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--output", "json"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().expect("a summary line")).expect("summary is JSON")
}

/// The JSON lines a command printed; a command that failed fails the test with its stderr.
pub fn json_lines(out: &std::process::Output) -> Vec<Json> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The value inside an Avro-JSON union wrapper (`{"string": "x"}` → `"x"`).
pub fn unwrap(v: &Json) -> &Json {
    match v {
        Json::Object(m) if m.len() == 1 && !m.contains_key("street") => m.values().next().unwrap(),
        other => other,
    }
}

/// One user's latest valid event, as generated.
#[derive(Debug, Clone)]
pub struct Expected {
    pub version: i64,
    pub deleted: bool,
    /// Profile fields with unions unwrapped.
    pub profile: serde_json::Map<String, Json>,
}

/// A generated line, parsed without the pipeline's code. `None` for lines that are invalid
/// by construction (malformed or `source` = `generator/invalid:*`).
pub fn parse_valid(line: &str) -> Option<(String, i64, String, serde_json::Map<String, Json>)> {
    let json: Json = serde_json::from_str(line).ok()?;
    let source = json.get("source")?.as_str()?;
    if source.starts_with("generator/invalid") {
        return None;
    }
    let user = json["user_id"].as_str()?.to_string();
    let version = json["version"].as_i64()?;
    let op = json["operation"].as_str()?.to_string();
    let profile = match &json["profile"] {
        Json::Null => serde_json::Map::new(),
        p => unwrap(p)
            .as_object()?
            .iter()
            .map(|(k, v)| (k.clone(), unwrap(v).clone()))
            .collect(),
    };
    Some((user, version, op, profile))
}

/// The final state the generated file must produce: the highest version per user wins.
pub fn expected_state(jsonl: &Path) -> HashMap<String, Expected> {
    let text = std::fs::read_to_string(jsonl).unwrap();
    let mut state: HashMap<String, Expected> = HashMap::new();
    for line in text.lines() {
        let Some((user, version, op, profile)) = parse_valid(line) else {
            continue;
        };
        if state.get(&user).is_some_and(|e| e.version >= version) {
            continue;
        }
        state.insert(
            user,
            Expected {
                version,
                deleted: op == "DELETE",
                profile,
            },
        );
    }
    state
}

/// Every field an index document may hold with the shipped pipelines' `index.fields`: its
/// own, the projected public ones and the derived ones. Any other (an email, a name) would be
/// PII in the index.
pub const INDEX_FIELDS: &[&str] = &[
    "user_id",
    "version",
    "occurred_at",
    "status",
    "locale",
    "time_zone",
    "last_seen_at",
    "lifetime_value",
    "order_count",
    "last_order_at",
    "plan",
    "country",
    "subdivision",
    "continent",
    "residency_zone",
    "segments",
];

/// Line numbers (1-based) of the generated invalid events.
pub fn invalid_lines(jsonl: &Path) -> Vec<usize> {
    std::fs::read_to_string(jsonl)
        .unwrap()
        .lines()
        .enumerate()
        .filter(|(_, l)| parse_valid(l).is_none())
        .map(|(i, _)| i + 1)
        .collect()
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// `profile-sync get USER --reveal` as JSON.
pub fn reveal(data_dir: &Path, user: &str) -> std::process::Output {
    bin()
        .args([
            "get",
            user,
            "--reveal",
            "--reason",
            "test: compare with generated input",
            "--actor",
            "test-suite",
        ])
        .arg("--pipeline")
        .arg(local_pipeline())
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap()
}

pub fn search(data_dir: &Path, query: &str, limit: usize) -> Json {
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
        .arg(local_pipeline())
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
