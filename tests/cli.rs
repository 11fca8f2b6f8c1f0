//! The command line's contract: clear errors naming the problem, exit code 2 for bad input,
//! never a panic.

mod common;

use common::*;
use predicates::prelude::*;
use std::path::Path;

fn pipeline_with(dir: &Path, from: &str, to: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(local_pipeline()).unwrap();
    assert!(text.contains(from), "the local pipeline has {from:?}");
    // Relative paths in the file are made absolute, so it works from the temporary folder.
    let text = text
        .replacen(from, to, 1)
        .replace("../", &format!("{}/", repo().display()));
    let path = dir.join("pipeline.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn run_expecting_usage_error(pipeline: &Path, data: &Path, needle: &str) {
    let assert = bin()
        .arg("run")
        .arg("--pipeline")
        .arg(pipeline)
        .arg("--data-dir")
        .arg(data)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(needle))
        .stderr(predicate::str::contains("panicked").not());
    drop(assert);
}

#[test]
fn an_unknown_key_in_the_pipeline_file_is_named_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline_with(dir.path(), "batch_size:", "batch_sise:");
    run_expecting_usage_error(&p, &dir.path().join("d"), "unknown field `batch_sise`");
}

#[test]
fn a_segment_that_does_not_compile_is_named_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline_with(dir.path(), "order_count >= 10", "order_count >=");
    run_expecting_usage_error(
        &p,
        &dir.path().join("d"),
        "segment `frequent_buyer` does not compile",
    );
}

#[test]
fn a_pii_field_in_the_index_projection_stops_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline_with(dir.path(), "fields: [status,", "fields: [email, status,");
    run_expecting_usage_error(
        &p,
        &dir.path().join("d"),
        "`email`, which is classified pii",
    );
}

#[test]
fn a_missing_geoip_database_is_named_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline_with(
        dir.path(),
        "../geoip/test-city.mmdb",
        "../geoip/missing.mmdb",
    );
    run_expecting_usage_error(&p, &dir.path().join("d"), "cannot open GeoIP database");
}

#[test]
fn a_missing_pipeline_file_or_input_gives_exit_code_2() {
    bin()
        .args(["run", "--pipeline", "no/such/pipeline.yaml"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no/such/pipeline.yaml"));
    let dir = tempfile::tempdir().unwrap();
    bin()
        .args(["run", "--input", "no/such/events.jsonl", "--data-dir"])
        .arg(dir.path())
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no/such/events.jsonl"));
}

#[test]
fn a_bad_argument_gives_exit_code_2_and_names_it() {
    bin()
        .args(["run", "--output", "yaml"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains(
            "invalid value 'yaml' for '--output <OUTPUT>'",
        ));
    bin()
        .args([
            "generate",
            "--count",
            "5",
            "--invalid-ratio",
            "2",
            "--out",
            "/tmp/x",
        ])
        .assert()
        .code(2)
        .stderr(predicates::str::contains(
            "--invalid-ratio must be between 0.0 and 1.0",
        ));
    bin()
        .args(["frobnicate"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains(
            "unrecognized subcommand 'frobnicate'",
        ));
}

#[test]
fn output_into_a_closed_pipe_ends_quietly_not_as_an_internal_error() {
    // `profile-sync … | head`: the reader closes the pipe before the command prints.
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(binary())
        .args(["generate", "--count", "20000", "--out"])
        .arg(dir.path().join("events.jsonl"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("internal error"), "stderr: {stderr}");
    assert_eq!(output.status.code(), Some(141), "stderr: {stderr}");
}

#[test]
fn an_invalid_search_query_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = generate(dir.path(), 50, 0.0, "jsonl", 1);
    let data = dir.path().join("data");
    run(&input, &data);
    bin()
        .args(["search", "segments:(", "--data-dir"])
        .arg(&data)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("is not valid"));
}

#[test]
fn validate_lists_each_invalid_event_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let (input, generated) = generate(dir.path(), 2_000, 0.05, "jsonl", 11);
    let invalid = generated["invalid"].as_u64().unwrap();
    assert!(invalid > 0);
    let output = bin().arg("validate").arg(&input).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let listed = stdout.lines().filter(|l| l.contains(".jsonl:")).count() as u64;
    assert_eq!(listed, invalid, "{stdout}");
    assert!(stdout.ends_with(&format!(
        "2000 events, {} valid, {invalid} invalid\n",
        2000 - invalid
    )));
}

#[test]
fn avro_container_files_run_through_the_same_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let (input, generated) = generate(dir.path(), 3_000, 0.02, "avro", 5);
    let data = dir.path().join("data");
    let s = run(&input, &data);
    assert_eq!(s["read"], 3_000);
    assert_eq!(s["dead_lettered"], generated["invalid"]);
    assert_eq!(
        s["written"].as_u64().unwrap()
            + s["stale"].as_u64().unwrap()
            + s["dead_lettered"].as_u64().unwrap(),
        3_000
    );
    let output = bin().arg("validate").arg(&input).output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "the invalid events are reported"
    );
}

#[test]
fn garbage_input_is_dead_lettered_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("junk.jsonl");
    std::fs::write(
        &input,
        b"\xff\xfe not json\n{\"user_id\": 5}\n[]\nnull\n{}\n\"\\ud800\"\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let s = run(&input, &data);
    assert_eq!(
        (s["read"].as_u64(), s["dead_lettered"].as_u64()),
        (Some(6), Some(6))
    );
}

/// Every key of the shipped pipeline file, misspelt in turn, is refused with exit code 2 and
/// a message naming the misspelt key (user-chosen names, like segment names, are not keys).
#[test]
fn every_misspelt_key_of_the_pipeline_file_is_named_with_exit_code_2() {
    let text = std::fs::read_to_string(local_pipeline()).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let mut paths = Vec::new();
    fn walk(v: &serde_yaml::Value, path: Vec<String>, out: &mut Vec<Vec<String>>) {
        let Some(map) = v.as_mapping() else { return };
        let free_names = matches!(
            path.last().map(String::as_str),
            Some("segments" | "residency_zones")
        );
        for (k, child) in map {
            let key = k.as_str().unwrap().to_string();
            let mut p = path.clone();
            p.push(key);
            if !free_names {
                out.push(p.clone());
            }
            if !free_names || child.is_mapping() {
                walk(child, p, out);
            }
        }
    }
    walk(&doc, Vec::new(), &mut paths);
    assert!(paths.len() >= 20, "{paths:?}");
    let dir = tempfile::tempdir().unwrap();
    for path in paths {
        let mut mutated = doc.clone();
        let mut node = &mut mutated;
        for key in &path[..path.len() - 1] {
            node = node.get_mut(key.as_str()).unwrap();
        }
        let map = node.as_mapping_mut().unwrap();
        let last = path.last().unwrap();
        let value = map.remove(last.as_str()).unwrap();
        let wrong = format!("{last}_typo");
        map.insert(serde_yaml::Value::from(wrong.clone()), value);
        let file = dir.path().join("pipeline.yaml");
        let yaml = serde_yaml::to_string(&mutated)
            .unwrap()
            .replace("../", &format!("{}/", repo().display()));
        std::fs::write(&file, yaml).unwrap();
        let out = bin()
            .arg("run")
            .arg("--pipeline")
            .arg(&file)
            .arg("--data-dir")
            .arg(dir.path().join("d"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {stderr}", path.join("."));
        // An unknown key is named as written; a required key that is now missing, by its name.
        let named = stderr.contains(&format!("`{wrong}`"))
            || stderr.contains(&format!("missing field `{last}`"));
        assert!(
            named,
            "{}: the message should name `{wrong}` or `{last}`: {stderr}",
            path.join(".")
        );
    }
}

#[test]
fn check_passes_on_a_sound_pipeline_and_names_each_broken_part() {
    let dir = tempfile::tempdir().unwrap();
    bin()
        .args(["check", "--data-dir"])
        .arg(dir.path().join("d"))
        .assert()
        .code(0)
        .stdout(predicate::str::contains("key provider works  pass"))
        .stdout(predicate::str::contains("FAIL").not());
    let p = pipeline_with(
        dir.path(),
        "../geoip/test-city.mmdb",
        "../geoip/missing.mmdb",
    );
    let p2 = dir.path().join("p2.yaml");
    std::fs::write(
        &p2,
        std::fs::read_to_string(&p)
            .unwrap()
            .replace("fields: [status,", "fields: [phone, status,"),
    )
    .unwrap();
    bin()
        .args(["check", "--pipeline"])
        .arg(&p2)
        .arg("--data-dir")
        .arg(dir.path().join("d"))
        .assert()
        .code(1)
        .stdout(predicate::str::contains("geoip database      FAIL"))
        .stdout(predicate::str::contains("`phone`, which is classified pii"))
        .stdout(predicate::str::contains("store reachable     pass"));
}

/// The README's first screen shows the summary a newcomer's `cargo run --release -- run`
/// prints: the same counts, line for line.
#[test]
fn the_readme_shows_the_summary_the_sample_run_prints() {
    let dir = tempfile::tempdir().unwrap();
    let output = bin()
        .current_dir(repo())
        .arg("run")
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let counts = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| {
                ["  read ", "  written ", "  stale ", "  dead-lettered "]
                    .iter()
                    .any(|p| l.starts_with(p))
            })
            .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
            .collect()
    };
    let printed = counts(&String::from_utf8(output.stdout).unwrap());
    assert_eq!(printed.len(), 4, "{printed:?}");
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let shown = counts(&readme);
    assert_eq!(
        shown, printed,
        "README.md shows other counts than the run prints"
    );
}

#[test]
fn a_pii_leaf_inside_a_public_record_is_refused_at_startup_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let schemas = dir.path().join("schemas");
    std::fs::create_dir(&schemas).unwrap();
    for entry in std::fs::read_dir(repo().join("schemas")).unwrap() {
        let entry = entry.unwrap();
        let text = std::fs::read_to_string(entry.path()).unwrap().replace(
            r#"{"name": "plan", "type": "string", "default": "free"}"#,
            r#"{"name": "plan", "type": "string", "default": "free"},
               {"name": "billing_email", "type": ["null", "string"], "default": null, "classification": "pii"}"#,
        );
        std::fs::write(schemas.join(entry.file_name()), text).unwrap();
    }
    let p = pipeline_with(
        dir.path(),
        "schemas: ../schemas",
        &format!("schemas: {}", schemas.display()),
    );
    run_expecting_usage_error(
        &p,
        &dir.path().join("d"),
        "`marketing.billing_email` is classified pii inside the public record `marketing`",
    );
}
