//! The benchmark harness runs in CI in its smoke mode: it must run and report every field
//! BENCHMARKS.md relies on. Timings are never asserted.

mod common;

use common::*;
use serde_json::Value as Json;

#[test]
fn bench_smoke_mode_runs_and_reports_every_field() {
    let output = bin()
        .args(["bench", "--smoke", "--output", "json"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "bench --smoke failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Json = serde_json::from_slice(&output.stdout).expect("bench prints JSON");
    for pointer in [
        "/machine/cpus",
        "/throughput/events_per_second",
        "/throughput/rss_mb/peak",
        "/throughput/rss_mb/by_tenth_of_backlog",
        "/throughput/key_provider/calls_per_100k_events",
        "/throughput/sink_bytes_per_event/sqlite",
        "/throughput/sink_bytes_per_event/tantivy",
        "/latency/offered_events_per_second",
        "/latency/latency_ms/p50",
        "/latency/latency_ms/p95",
        "/latency/latency_ms/p99",
    ] {
        assert!(report.pointer(pointer).is_some(), "report lacks {pointer}");
    }
    let t = &report["throughput"];
    assert_eq!(t["events"], 2000);
    assert_eq!(
        t["written"].as_u64().unwrap() + t["stale"].as_u64().unwrap(),
        2000,
        "every generated event is valid: written or stale"
    );
}
