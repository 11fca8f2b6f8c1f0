//! Operating the worker: the metrics endpoint counts exactly what was processed, and the
//! probes answer.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP GET; returns (status, body).
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

fn metric(body: &str, name: &str) -> u64 {
    body.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
        .sum()
}

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn metrics_count_exactly_what_the_run_processed_and_the_probes_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = generate(dir.path(), 5_000, 0.02, "jsonl", 13);
    let expected = run(&input, &dir.path().join("reference"));

    let port = free_port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_profile-sync"))
        .current_dir(repo())
        .args([
            "run",
            "--hold",
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
            "--input",
        ])
        .arg(&input)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Kill(child);
    let deadline = Instant::now() + Duration::from_secs(120);
    let body = loop {
        assert!(
            Instant::now() < deadline,
            "the run did not finish within 120 s"
        );
        if let Some((200, body)) = get(port, "/metrics") {
            if metric(&body, "profile_sync_events_read_total") == 5_000 {
                break body;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        metric(&body, "profile_sync_events_written_total"),
        expected["written"].as_u64().unwrap()
    );
    assert_eq!(
        metric(&body, "profile_sync_events_stale_total"),
        expected["stale"].as_u64().unwrap()
    );
    assert_eq!(
        metric(&body, "profile_sync_events_dead_lettered_total"),
        expected["dead_lettered"].as_u64().unwrap()
    );
    assert!(
        body.contains("profile_sync_stage_duration_seconds_bucket{stage=\"protect\""),
        "{body}"
    );
    assert!(body.contains("profile_sync_sink_request_duration_seconds_count{sink=\"store\"}"));
    assert!(metric(&body, "profile_sync_key_provider_calls_total") > 0);
    assert!(!body.contains('@'), "no label or value carries an email");
    assert_eq!(get(port, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(get(port, "/readyz").map(|r| r.0), Some(200));
}
