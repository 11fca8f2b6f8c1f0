//! `profile-sync check` against the production adapters on the test services: every row
//! passes when all answer, and with one dependency stopped the table names it and the fix.
//!
//! "Stopped" means the pipeline points that dependency at an address where nothing listens:
//! to the client that is what a stopped service is, and it leaves the shared services up for
//! the tests running alongside.

mod common;

use common::stack::{self, Stack};

/// The AWS secret the commands get, which no output may show.
const SECRET: &str = "preflight-canary-secret";

/// The check table of `profile-sync check` on `stack`, with the `stopped` variables pointed
/// at an address where nothing listens: (exit code, the rows as (check, "pass"/"FAIL",
/// detail), everything printed).
fn check(stack: &Stack, stopped: &[&str]) -> (i32, Vec<(String, String, String)>, String) {
    let replaced: Vec<(&str, String)> = stopped.iter().map(|v| stack::stopped(v)).collect();
    let out = stack
        .command("check", &replaced)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .output()
        .unwrap();
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

fn row<'a>(rows: &'a [(String, String, String)], name: &str) -> &'a (String, String, String) {
    rows.iter()
        .find(|(n, _, _)| n == name)
        .unwrap_or_else(|| panic!("no `{name}` row in {rows:?}"))
}

#[test]
fn check_passes_every_row_when_all_dependencies_answer() {
    let stack = Stack::new("preflight", 2, &[]);
    let (code, rows, output) = check(&stack, &[]);
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
    // The dead-letter topic is on the same cluster: its row fails with the source's.
    (
        "KAFKA_BROKERS",
        "dead-letter writes",
        &[
            "no metadata from the dead-letter brokers",
            "dead_letter.brokers",
        ],
    ),
    // So is the segment change topic.
    (
        "KAFKA_BROKERS",
        "segment sink works",
        &[
            "no metadata from the segment change brokers",
            "segment_changes.brokers",
        ],
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
    let stack = Stack::new("preflight", 2, &[]);
    for (variable, failing, words) in STOPPED {
        let (code, rows, output) = check(&stack, &[variable]);
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
        // Only what depends on it fails: the rows of the others still pass.
        let depending: Vec<&str> = STOPPED
            .iter()
            .filter(|(v, _, _)| v == variable)
            .map(|(_, row, _)| *row)
            .collect();
        for (name, _, _) in failed {
            assert!(
                depending.iter().any(|row| name.starts_with(row)),
                "{variable} stopped, yet `{name}` failed too: {output}"
            );
        }
    }
}

#[test]
fn a_missing_topic_table_or_key_is_named() {
    let stack = Stack::new("preflight", 2, &[]);
    let text = std::fs::read_to_string(&stack.pipeline).unwrap();
    for (from, to, says) in [
        (
            format!("topics: [{}]", stack.topic),
            "topics: [no-such-topic-preflight]".to_string(),
            vec!["topic `no-such-topic-preflight` does not exist"],
        ),
        (
            format!("table: {}", stack.name),
            "table: no-such-table-preflight".to_string(),
            vec!["ResourceNotFoundException", "profile-sync bootstrap"],
        ),
        (
            format!("key_id: alias/{}", stack.name),
            "key_id: alias/no-such-key-preflight".to_string(),
            vec!["NotFoundException", "keys.key_id"],
        ),
    ] {
        assert!(text.contains(&from), "{from}");
        std::fs::write(&stack.pipeline, text.replace(&from, &to)).unwrap();
        let (code, _, output) = check(&stack, &[]);
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
