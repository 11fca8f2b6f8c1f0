//! `profile-sync check` against the production adapters on the test services: every row
//! passes when all answer, and with one dependency stopped the table names it and the fix.
//!
//! "Stopped" means the pipeline points that dependency at an address where nothing listens:
//! to the client that is what a stopped service is, and it leaves the shared services up for
//! the tests running alongside.

mod common;

use common::services::*;
use common::*;
use std::path::PathBuf;

/// The AWS secret the commands get, which no output may show.
const SECRET: &str = "preflight-canary-secret";

/// `pipelines/docker.yaml` (the full production stack) with this test's topic, table, KMS
/// alias and index names; the addresses are its `${VAR}`s, given by [`check`].
struct Stack {
    /// Holds the pipeline file and data directory until the test ends.
    _dir: tempfile::TempDir,
    registry: Registry,
    topic: String,
    pipeline: PathBuf,
    index: String,
}

impl Stack {
    fn new() -> Self {
        aws_test_env();
        require_all();
        let dir = tempfile::tempdir().unwrap();
        let id = &uuid::Uuid::new_v4().simple().to_string()[..12];
        let topic = format!("preflight-{id}");
        let index = format!("ps-preflight-{id}");
        let text = std::fs::read_to_string(repo().join("pipelines/docker.yaml"))
            .unwrap()
            .replace("../", &format!("{}/", repo().display()))
            .replace("topics: [profile-changes]", &format!("topics: [{topic}]"))
            .replace("alias/profile-sync-dev", &format!("alias/{index}"))
            .replace("table: profile-sync", &format!("table: {index}"))
            .replace("name: profiles", &format!("name: {index}"))
            .replace("read_alias: profiles", &format!("read_alias: {index}"))
            .replace(
                "write_alias: profiles-write",
                &format!("write_alias: {index}-write"),
            )
            .replacen(
                "${AWS_ENDPOINT_URL:-http://localstack:4566}",
                "${KMS_ENDPOINT}",
                1,
            )
            .replacen(
                "${AWS_ENDPOINT_URL:-http://localstack:4566}",
                "${DYNAMODB_ENDPOINT}",
                1,
            )
            .replace(
                "data_dir: /app/data",
                &format!("data_dir: {}", dir.path().join("data").display()),
            );
        assert!(text.contains("${KMS_ENDPOINT}") && text.contains("${DYNAMODB_ENDPOINT}"));
        let pipeline = dir.path().join("preflight.yaml");
        std::fs::write(&pipeline, text).unwrap();
        block_on(create_topics(&kafka_brokers(), &[(&topic, 2)]));
        let stack = Self {
            registry: registry(),
            _dir: dir,
            topic,
            pipeline,
            index,
        };
        let out = stack.command("bootstrap", &[]).output().unwrap();
        assert!(
            out.status.success(),
            "bootstrap: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        stack
    }

    /// The binary with this stack's pipeline and the service addresses, `stopped` ones
    /// replaced by an address where nothing listens.
    fn command(&self, command: &str, stopped: &[&str]) -> assert_cmd::Command {
        let mut env = vec![
            ("KAFKA_BROKERS", kafka_brokers()),
            ("SCHEMA_REGISTRY_URL", self.registry.url.clone()),
            ("KMS_ENDPOINT", kms_endpoint()),
            ("DYNAMODB_ENDPOINT", dynamodb_endpoint()),
            ("OPENSEARCH_URL", opensearch_url()),
        ];
        for (name, value) in &mut env {
            if stopped.contains(name) {
                let dead = stopped_endpoint();
                *value = if *name == "KAFKA_BROKERS" {
                    dead
                } else {
                    format!("http://{dead}")
                };
            }
        }
        let mut cmd = bin();
        cmd.env("AWS_SECRET_ACCESS_KEY", SECRET)
            .arg(command)
            .arg("--pipeline")
            .arg(&self.pipeline)
            .envs(env);
        cmd
    }

    /// (exit code, the table's rows as (check, "pass"/"FAIL", detail)).
    fn check(&self, stopped: &[&str]) -> (i32, Vec<(String, String, String)>, String) {
        let out = self.command("check", stopped).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let rows = stdout
            .lines()
            .skip(1)
            .filter_map(|line| {
                let at = line.find("  pass  ").or_else(|| line.find("  FAIL  "))?;
                let (name, rest) = line.split_at(at);
                let rest = rest.trim_start();
                let (result, detail) = rest.split_at(4);
                Some((
                    name.trim().to_string(),
                    result.to_string(),
                    detail.trim().to_string(),
                ))
            })
            .collect();
        let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), rows, all)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let index = self.index.clone();
        block_on(async move {
            let client = reqwest::Client::new();
            for path in [format!("{index}-v*"), format!("_index_template/{index}")] {
                let _ = client
                    .delete(format!("{}/{path}", opensearch_url()))
                    .send()
                    .await;
            }
        });
    }
}

fn row<'a>(rows: &'a [(String, String, String)], name: &str) -> &'a (String, String, String) {
    rows.iter()
        .find(|(n, _, _)| n == name)
        .unwrap_or_else(|| panic!("no `{name}` row in {rows:?}"))
}

#[test]
fn check_passes_every_row_when_all_dependencies_answer() {
    let stack = Stack::new();
    let (code, rows, output) = stack.check(&[]);
    assert_eq!(code, 0, "{output}");
    for name in [
        "pipeline file",
        "schemas",
        "geoip database",
        "segment rules",
        "index projection",
        "source reachable",
        "store reachable",
        "key provider works",
        "index reachable",
    ] {
        assert_eq!(row(&rows, name).1, "pass", "{output}");
    }
    assert!(
        row(&rows, "source reachable").2.contains("2 partitions"),
        "{output}"
    );
    assert!(
        row(&rows, "source reachable")
            .2
            .contains("schema registry answers"),
        "{output}"
    );
    assert!(
        row(&rows, "store reachable").2.contains("ACTIVE"),
        "{output}"
    );
    assert!(
        row(&rows, "key provider works").2.contains("enabled"),
        "{output}"
    );
    assert!(
        row(&rows, "index reachable").2.contains("-write"),
        "{output}"
    );
    assert!(
        !output.contains(SECRET),
        "no credential in the output: {output}"
    );
}

/// (variable pointed at a stopped service, failing row, words the failure must contain)
const STOPPED: &[(&str, &str, &[&str])] = &[
    (
        "KAFKA_BROKERS",
        "source reachable",
        &["no metadata from the brokers", "source.brokers"],
    ),
    (
        "SCHEMA_REGISTRY_URL",
        "source reachable",
        &[
            "schema registry does not answer",
            "source.schema_registry.url",
        ],
    ),
    ("KMS_ENDPOINT", "key provider", &["KMS", "reachable"]),
    ("DYNAMODB_ENDPOINT", "store", &["DynamoDB", "reachable"]),
    (
        "OPENSEARCH_URL",
        "index",
        &["cannot reach OpenSearch", "index.url"],
    ),
];

#[test]
fn check_names_each_stopped_dependency_with_its_fix_and_exits_1() {
    let stack = Stack::new();
    for (variable, failing, words) in STOPPED {
        let (code, rows, output) = stack.check(&[variable]);
        assert_eq!(code, 1, "{variable} stopped: {output}");
        let failed: Vec<&(String, String, String)> =
            rows.iter().filter(|(_, r, _)| r == "FAIL").collect();
        assert!(
            failed
                .iter()
                .any(|(n, _, detail)| n.starts_with(failing)
                    && words.iter().all(|w| detail.contains(w))),
            "{variable} stopped: expected a FAIL row `{failing}…` saying {words:?}; got {output}"
        );
        // Only that dependency fails: the rows of the others still pass.
        for (name, _, _) in failed {
            assert!(
                name.starts_with(failing),
                "{variable} stopped, yet `{name}` failed too: {output}"
            );
        }
    }
}

#[test]
fn a_missing_topic_table_or_key_is_named() {
    let stack = Stack::new();
    let text = std::fs::read_to_string(&stack.pipeline).unwrap();
    for (from, to, says) in [
        (
            format!("topics: [{}]", stack.topic),
            "topics: [no-such-topic-preflight]".to_string(),
            vec!["topic `no-such-topic-preflight` does not exist"],
        ),
        (
            format!("table: {}", stack.index),
            "table: no-such-table-preflight".to_string(),
            vec!["ResourceNotFoundException", "profile-sync bootstrap"],
        ),
        (
            format!("key_id: alias/{}", stack.index),
            "key_id: alias/no-such-key-preflight".to_string(),
            vec!["NotFoundException", "keys.key_id"],
        ),
    ] {
        assert!(text.contains(&from), "{from}");
        std::fs::write(&stack.pipeline, text.replace(&from, &to)).unwrap();
        let (code, _, output) = stack.check(&[]);
        assert_eq!(code, 1, "{to}: {output}");
        for words in says {
            assert!(
                output.contains(words),
                "{to}: expected {words:?} in {output}"
            );
        }
    }
    std::fs::write(&stack.pipeline, text).unwrap();
}
