//! `pipelines/docker.yaml`, the full production stack (Kafka + Schema Registry in; KMS,
//! DynamoDB, OpenSearch and a Kafka dead-letter topic out), for one test: its own topic,
//! dead-letter topic, group, table, KMS alias and index, bootstrapped, so that tests running
//! alongside on the shared services never see each other. The file takes the service
//! addresses from its `${VAR}`s; commands get the test services' addresses, and a test can
//! replace any of them (with a stopped address, or a fault proxy's endpoint).

use super::services::*;
use super::{binary, repo};
use serde_json::Value as Json;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// One test's copy of the production stack.
pub struct Stack {
    /// Holds the pipeline file, the data directory and the logs until the test ends.
    pub dir: tempfile::TempDir,
    pub registry: Registry,
    pub topic: String,
    pub dead_letter_topic: String,
    /// The segment change feed's topic.
    pub segment_topic: String,
    pub group: String,
    /// The table, the KMS alias (`alias/<name>`) and the index (`<name>-v1` behind the aliases
    /// `<name>` and `<name>-write`).
    pub name: String,
    pub pipeline: PathBuf,
}

impl Stack {
    /// Creates the topic (`partitions`), the dead-letter topic and the segment change topic, writes the pipeline file with
    /// this test's names and `edits` (text replacements, each of which must apply), and runs
    /// `bootstrap` (table, KMS key and alias). Fails when a test service is down.
    pub fn new(label: &str, partitions: i32, edits: &[(&str, &str)]) -> Self {
        aws_test_env();
        require_all();
        let dir = tempfile::tempdir().unwrap();
        let id = &uuid::Uuid::new_v4().simple().to_string()[..12];
        let topic = format!("{label}-{id}");
        let dead_letter_topic = format!("{topic}-dlq");
        let segment_topic = format!("{topic}-segments");
        let group = format!("{topic}-group");
        let name = format!("ps-{label}-{id}");
        let mut text = std::fs::read_to_string(repo().join("pipelines/docker.yaml"))
            .unwrap()
            .replace("../", &format!("{}/", repo().display()))
            .replace("topics: [profile-changes]", &format!("topics: [{topic}]"))
            .replace("group_id: profile-sync", &format!("group_id: {group}"))
            .replace(
                "topic: profile-changes-dlq",
                &format!("topic: {dead_letter_topic}"),
            )
            .replace(
                "topic: profile-segment-changes",
                &format!("topic: {segment_topic}"),
            )
            .replace("alias/profile-sync-dev", &format!("alias/{name}"))
            .replace("table: profile-sync", &format!("table: {name}"))
            .replace("name: profiles", &format!("name: {name}"))
            .replace("read_alias: profiles", &format!("read_alias: {name}"))
            .replace(
                "write_alias: profiles-write",
                &format!("write_alias: {name}-write"),
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
        for (from, to) in edits {
            assert!(text.contains(from), "{from:?} is not in docker.yaml");
            text = text.replace(from, to);
        }
        let pipeline = dir.path().join(format!("{label}.yaml"));
        std::fs::write(&pipeline, text).unwrap();
        block_on(create_topics(
            &kafka_brokers(),
            &[
                (&topic, partitions),
                (&dead_letter_topic, 1),
                (&segment_topic, 1),
            ],
        ));
        let stack = Self {
            registry: registry(),
            dir,
            topic,
            dead_letter_topic,
            segment_topic,
            group,
            name,
            pipeline,
        };
        let out = stack.command("bootstrap", &[]).output().unwrap();
        assert!(
            out.status.success(),
            "bootstrap: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        stack
    }

    /// (variable, address) for each service the pipeline file names: the test services', the
    /// registry double's, and `replaced` ones instead.
    pub fn addresses(&self, replaced: &[(&str, String)]) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("KAFKA_BROKERS", kafka_brokers()),
            ("SCHEMA_REGISTRY_URL", self.registry.url.clone()),
            ("KMS_ENDPOINT", kms_endpoint()),
            ("DYNAMODB_ENDPOINT", dynamodb_endpoint()),
            ("OPENSEARCH_URL", opensearch_url()),
        ];
        for (name, value) in replaced {
            let slot = env
                .iter_mut()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("{name} is not an address of the stack"));
            slot.1 = value.clone();
        }
        env
    }

    /// `profile-sync <command> --pipeline <this stack's>` with the addresses.
    pub fn std_command(&self, command: &str, replaced: &[(&str, String)]) -> Command {
        let mut cmd = Command::new(binary());
        cmd.current_dir(repo())
            .env_remove("PROFILE_SYNC_LOG")
            .envs(self.addresses(replaced))
            .arg(command)
            .arg("--pipeline")
            .arg(&self.pipeline);
        cmd
    }

    pub fn command(&self, command: &str, replaced: &[(&str, String)]) -> assert_cmd::Command {
        assert_cmd::Command::from_std(self.std_command(command, replaced))
    }

    /// `profile-sync produce`: the events `generate` makes with the same arguments, to this
    /// stack's topic in the Confluent wire format. Returns produce's JSON report.
    pub fn produce(&self, count: u64, invalid_ratio: f64, seed: u64) -> Json {
        let out = self
            .command("produce", &[])
            .args(["--count", &count.to_string(), "--seed", &seed.to_string()])
            .args(["--invalid-ratio", &invalid_ratio.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "produce failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("produce prints JSON")
    }

    /// Starts `profile-sync run --output json` in the background, with info logs (JSON) in a
    /// file of its own and its metrics on a free port; on SIGTERM it has 2 minutes to finish
    /// its batch and commit.
    pub fn start_run(&self, replaced: &[(&str, String)]) -> Worker {
        let log = self.dir.path().join("run.log");
        let stdout = self.dir.path().join("run.stdout");
        let metrics = stopped_endpoint();
        let child = self
            .std_command("run", replaced)
            .env("PROFILE_SYNC_LOG", "info")
            .args(["--output", "json", "--log-format", "json"])
            .args(["--drain-deadline-secs", "120", "--metrics-addr", &metrics])
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start profile-sync run");
        Worker {
            child,
            log,
            stdout,
            metrics,
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let index = self.name.clone();
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

/// An address where nothing listens, in the form `variable` takes (a broker list or a URL):
/// a stopped service, as a client sees it.
pub fn stopped(variable: &str) -> (&str, String) {
    let dead = stopped_endpoint();
    let value = if variable == "KAFKA_BROKERS" {
        dead
    } else {
        format!("http://{dead}")
    };
    (variable, value)
}

/// A `profile-sync run` in the background; killed when dropped, if still running.
pub struct Worker {
    child: Child,
    log: PathBuf,
    stdout: PathBuf,
    /// Address of its metrics endpoint.
    metrics: String,
}

impl Worker {
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGTERM: finish the batch in flight, commit, exit.
    pub fn terminate(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM failed");
    }

    /// The last lines of its log, for a failure message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What it printed on stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// A scrape of its `/metrics` (Prometheus text).
    pub fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.metrics);
        block_on(async {
            let response = reqwest::get(&url).await;
            let response = response.unwrap_or_else(|e| panic!("{url}: {e}"));
            assert!(
                response.status().is_success(),
                "{url}: {}",
                response.status()
            );
            response.text().await.unwrap()
        })
    }

    /// Waits until it exits, at most until `deadline` (then kills it and fails with its log
    /// tail); its exit status and the JSON summary it printed last, if any.
    pub fn wait(&mut self, deadline: Instant) -> (ExitStatus, Option<Json>) {
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "the run did not finish in time; its log:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let stdout = std::fs::read_to_string(&self.stdout).unwrap_or_default();
        let summary = stdout
            .lines()
            .last()
            .and_then(|l| serde_json::from_str(l).ok());
        (status, summary)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
