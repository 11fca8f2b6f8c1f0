//! Load on the profile API over loopback: the real binary serves the embedded store of a
//! generated run, and this program calls it from `CONCURRENCY` connections for `SECONDS` per
//! route, counting answers and their latencies (issue 18's targets; BENCHMARKS.md).
//!
//!   cargo bench --bench api                        # 20,000 events, 10 s per route, 32 connections
//!   EVENTS=50000 SECONDS=20 CONCURRENCY=64 cargo bench --bench api
//!
//! Under `cargo test` (no `--bench`) it runs each route for half a second as a smoke test and
//! fails if any answer is not 200; it asserts no timing.

use serde_json::{json, Value as Json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_profile-sync");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn cli(pipeline: &Path, data: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new(BIN)
        .current_dir(repo())
        .args(args)
        .arg("--pipeline")
        .arg(pipeline)
        .arg("--data-dir")
        .arg(data)
        .output()
        .expect("run profile-sync");
    assert!(
        out.status.success(),
        "profile-sync {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What one route answered under load.
struct Load {
    route: &'static str,
    ok: u64,
    failed: u64,
    seconds: f64,
    latencies_us: Vec<u32>,
    /// CPU seconds the server (all its threads) used meanwhile.
    server_cpu: f64,
}

/// CPU seconds (user + system) process `pid` has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (in parentheses, and it may hold spaces).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // utime and stime: fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / per_second
}

impl Load {
    fn percentile(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }

    fn json(&self) -> Json {
        json!({
            "route": self.route, "requests_per_second": (self.ok as f64 / self.seconds).round(),
            "ok": self.ok, "failed": self.failed,
            "p50_ms": self.percentile(0.50), "p95_ms": self.percentile(0.95), "p99_ms": self.percentile(0.99),
            "server_cpu_us_per_request": (self.server_cpu * 1e6 / self.ok.max(1) as f64).round(),
            "requests_per_server_cpu_second": (self.ok as f64 / self.server_cpu.max(1e-9)).round(),
        })
    }
}

/// Calls `request(i)` from `concurrency` tasks until `seconds` have passed.
async fn load<F>(
    route: &'static str,
    server: u32,
    concurrency: u64,
    seconds: f64,
    request: F,
) -> Load
where
    F: Fn(u64) -> reqwest::RequestBuilder + Send + Sync + 'static,
{
    let request = Arc::new(request);
    let cpu_before = cpu_seconds(server);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for task in 0..concurrency {
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut latencies) = (0u64, 0u64, Vec::new());
            let mut i = task;
            while Instant::now() < deadline {
                let sent = Instant::now();
                match request(i).send().await {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.bytes().await;
                        ok += 1;
                        latencies.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    }
                    Ok(r) => {
                        failed += 1;
                        if failed == 1 {
                            eprintln!(
                                "{route}: {} {}",
                                r.status(),
                                r.text().await.unwrap_or_default()
                            );
                        }
                    }
                    Err(e) => {
                        failed += 1;
                        if failed == 1 {
                            eprintln!("{route}: {e}");
                        }
                    }
                }
                i += concurrency;
            }
            (ok, failed, latencies)
        }));
    }
    let mut result = Load {
        route,
        ok: 0,
        failed: 0,
        seconds: 0.0,
        latencies_us: Vec::new(),
        server_cpu: 0.0,
    };
    for task in tasks {
        let (ok, failed, latencies) = task.await.expect("a load task");
        result.ok += ok;
        result.failed += failed;
        result.latencies_us.extend(latencies);
    }
    result.seconds = started.elapsed().as_secs_f64();
    result.server_cpu = cpu_seconds(server) - cpu_before;
    result.latencies_us.sort_unstable();
    result
}

#[tokio::main]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let events = env_or("EVENTS", if full { 20_000 } else { 500 });
    let seconds = if full {
        env_or("SECONDS", 10) as f64
    } else {
        0.5
    };
    let concurrency = env_or("CONCURRENCY", if full { 32 } else { 4 });

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // pipelines/local.yaml, with limits far above the load so that the limiter is measured
    // but never refuses.
    let text = std::fs::read_to_string(repo().join("pipelines/local.yaml"))
        .unwrap()
        .replace("../", &format!("{}/", repo().display()))
        + "serve:\n  rate_limit:\n    per_second: 10000000\n    burst: 10000000\n    reveal_per_minute: 100000000\n    unusual_reveals_per_minute: 100000000\n    per_user_per_second: 10000000\n    per_user_burst: 10000000\n";
    let pipeline = dir.path().join("bench.yaml");
    std::fs::write(&pipeline, text).unwrap();
    let input = dir.path().join("events.jsonl");
    let status = Command::new(BIN)
        .current_dir(repo())
        .args([
            "generate",
            "--count",
            &events.to_string(),
            "--seed",
            "18",
            "--out",
        ])
        .arg(&input)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "generate failed");
    cli(
        &pipeline,
        &data,
        &["run", "--input", input.to_str().unwrap()],
    );
    let key = |name: &str, role: &str| -> String {
        let made: Json = serde_json::from_slice(&cli(
            &pipeline,
            &data,
            &[
                "api-keys", "create", "--name", name, "--role", role, "--output", "json",
            ],
        ))
        .unwrap();
        made["key"].as_str().unwrap().to_string()
    };
    let engine = key("engine", "personalization");
    let support = key("support", "support");
    let analyst = key("analyst", "analyst");

    let mut child = Command::new(BIN)
        .current_dir(repo())
        .args(["serve", "--listen", "127.0.0.1:0", "--pipeline"])
        .arg(&pipeline)
        .arg("--data-dir")
        .arg(&data)
        // The shipped default (info: one line per request), read and dropped by a thread here.
        .env_remove("PROFILE_SYNC_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let url = loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "serve ended");
        if let Some(url) = line
            .trim()
            .rsplit(' ')
            .next()
            .filter(|u| u.starts_with("http://"))
        {
            break url.to_string();
        }
    };
    std::thread::spawn(move || for _ in stderr.lines() {});
    let pid = child.id();
    let _server = Server(child);

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency as usize)
        .build()
        .unwrap();
    let found: Json = http
        .get(format!("{url}/v1/search?q=*&limit=1000"))
        .bearer_auth(&analyst)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let users: Arc<Vec<String>> = Arc::new(
        found["hits"]
            .as_array()
            .expect("search hits")
            .iter()
            .map(|h| h["user_id"].as_str().unwrap().to_string())
            .collect(),
    );
    assert!(!users.is_empty(), "no live profiles to read");

    let mut results = Vec::new();
    let (h, u, k, base) = (http.clone(), users.clone(), engine.clone(), url.clone());
    results.push(
        load(
            "GET /v1/profiles/{id}/segments",
            pid,
            concurrency,
            seconds,
            move |i| {
                h.get(format!(
                    "{base}/v1/profiles/{}/segments",
                    u[i as usize % u.len()]
                ))
                .bearer_auth(&k)
            },
        )
        .await,
    );
    let (h, u, k, base) = (http.clone(), users.clone(), support.clone(), url.clone());
    results.push(
        load(
            "GET /v1/profiles/{id} (masked)",
            pid,
            concurrency,
            seconds,
            move |i| {
                h.get(format!("{base}/v1/profiles/{}", u[i as usize % u.len()]))
                    .bearer_auth(&k)
            },
        )
        .await,
    );
    let (h, u, k, base) = (http.clone(), users.clone(), support.clone(), url.clone());
    results.push(
        load(
            "POST /v1/profiles/{id}/reveal (audited)",
            pid,
            concurrency,
            seconds,
            move |i| {
                h.post(format!(
                    "{base}/v1/profiles/{}/reveal",
                    u[i as usize % u.len()]
                ))
                .bearer_auth(&k)
                .json(&json!({"fields": ["email"], "reason": "benchmark"}))
            },
        )
        .await,
    );
    println!(
        "{}",
        json!({"events": events, "seconds_per_route": seconds, "concurrency": concurrency,
               "routes": results.iter().map(Load::json).collect::<Vec<_>>()})
    );
    for r in &results {
        assert!(
            r.ok > 0 && r.failed == 0,
            "{}: {} ok, {} failed",
            r.route,
            r.ok,
            r.failed
        );
    }
}
