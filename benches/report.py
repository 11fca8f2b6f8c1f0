"""Prints the benchmark table of benches/run.sh: criterion's per-stage medians, the medians of
the `profile-sync bench` runs and of the Python baseline runs, and their ratios. Standard
library only."""

import argparse
import glob
import json
import os
import statistics

STAGES = [
    "decode_avro", "geoip", "segments", "segments_interpreted", "protect_warm_keys", "project", "chain",
]
FIXTURE_EVENTS = 1000  # src/bench.rs FIXTURE_EVENTS: events per criterion iteration


def load(pattern):
    return [json.load(open(p)) for p in sorted(glob.glob(pattern))]


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--criterion", required=True)
    ap.add_argument("--results", required=True)
    a = ap.parse_args()
    harness = load(os.path.join(a.results, "harness-*.json"))
    baseline = load(os.path.join(a.results, "baseline-*.json"))

    print("## Per stage (per event; Rust: criterion median, Python: median of runs)\n")
    print("| stage | profile-sync µs/event | profile-sync events/s/core | Python µs/event | speed-up |")
    print("|---|---:|---:|---:|---:|")
    for s in STAGES:
        est = os.path.join(a.criterion, "stage", s, "new", "estimates.json")
        rust = None
        if os.path.exists(est):
            rust = json.load(open(est))["median"]["point_estimate"] / FIXTURE_EVENTS / 1000.0
        if s == "chain":
            py = med([sum(b["stages_us_per_event"].values()) for b in baseline])
        else:
            # The interpreter row is compared with the same Python rules as the plans.
            py = med([b["stages_us_per_event"][s.removesuffix("_interpreted")] for b in baseline])
        ratio = f"{py / rust:.1f}×" if rust and py else "n/a"
        rate = f"{1e6 / rust:,.0f}" if rust else "n/a"
        rust_s = f"{rust:.3f}" if rust else "n/a"
        py_s = f"{py:.2f}" if py else "n/a"
        print(f"| {s} | {rust_s} | {rate} | {py_s} | {ratio} |")

    print(f"\n## End to end (file → stages → embedded sinks), medians of {len(harness)} runs\n")
    rust_eps = med([h["throughput"]["events_per_second"] for h in harness])
    py_eps = med([b["end_to_end"]["events_per_second"] for b in baseline])
    print("| | profile-sync | Python baseline | speed-up |")
    print("|---|---:|---:|---:|")
    ratio = f"{rust_eps / py_eps:.1f}×" if rust_eps and py_eps else "n/a"
    print(f"| events/s | {rust_eps:,.0f} | {py_eps:,.0f} | {ratio} |")
    rust_cpu = med([h["throughput"].get("events_per_cpu_second") for h in harness])
    py_cpu = med([b["end_to_end"].get("events_per_cpu_second") for b in baseline])
    ratio = f"{rust_cpu / py_cpu:.1f}×" if rust_cpu and py_cpu else "n/a"
    print(f"| events per CPU-second (all threads) | {rust_cpu:,.0f} | {py_cpu:,.0f} | {ratio} |")
    print(f"| events per run | {harness[0]['throughput']['events']:,} | {baseline[0]['end_to_end']['events']:,} | |")

    print("\n## profile-sync harness details (medians)\n")
    lat = [h["latency"] for h in harness]
    thr = [h["throughput"] for h in harness]
    rows = [
        ("offered rate, events/s", med([l["offered_events_per_second"] for l in lat])),
        ("achieved rate, events/s", med([l["achieved_events_per_second"] for l in lat])),
        ("latency p50, ms", med([l["latency_ms"]["p50"] for l in lat])),
        ("latency p95, ms", med([l["latency_ms"]["p95"] for l in lat])),
        ("latency p99, ms", med([l["latency_ms"]["p99"] for l in lat])),
        ("peak RSS (throughput phase), MB", med([t["rss_mb"]["peak"] for t in thr])),
        ("RSS at 10% of backlog, MB", med([t["rss_mb"]["by_tenth_of_backlog"][0] for t in thr])),
        ("RSS at 100% of backlog, MB", med([t["rss_mb"]["by_tenth_of_backlog"][-1] for t in thr])),
        ("key-provider calls per 100k events", med([t["key_provider"]["calls_per_100k_events"] for t in thr])),
        ("SQLite bytes/event", med([t["sink_bytes_per_event"]["sqlite"] for t in thr])),
        ("tantivy bytes/event", med([t["sink_bytes_per_event"]["tantivy"] for t in thr])),
    ]
    print("| metric | value |")
    print("|---|---:|")
    for name, v in rows:
        print(f"| {name} | {v} |")
    print("\nraw runs:", [t["events_per_second"] for t in thr], "events/s (profile-sync);",
          [b["end_to_end"]["events_per_second"] for b in baseline], "events/s (baseline)")


if __name__ == "__main__":
    main()
