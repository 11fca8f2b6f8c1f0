#!/usr/bin/env bash
# Kafka (tansu) → pipeline → embedded sinks: a backlog of EVENTS produced to a fresh 6-partition
# topic, then one worker consumes it to the end. Reports the worker's events/s (the idle window
# that ends it is subtracted; the group join is included) and its peak RSS, sampled every
# 2 s, as JSON on stdout.
#
#   benches/kafka.sh [EVENTS]          default 1000000
#
# Then the Python baseline (benches/baseline/kafka_baseline.py, confluent-kafka) consumes the
# same topic in a group of its own, and the ratio of the two rates is reported; then a bare
# librdkafka consumer (benches/baseline/bare_consumer.py) reads it doing nothing, the broker's
# own ceiling, and the worker's share of that rate is reported (BASELINE=0 skips both; their
# venv is the one benches/run.sh uses).
#
# Needs the broker (`scripts/services start kafka`) and a built binary (BIN, default
# target/release/profile-sync). The registry is the in-repo test double, started here.
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-1000000}
BIN=${BIN:-target/release/profile-sync}
BROKERS=${KAFKA_BROKERS:-127.0.0.1:9092}
IDLE_MS=10000
WORK=$(mktemp -d)
trap 'kill "${REGISTRY_PID:-}" 2>/dev/null || true; rm -rf "$WORK"' EXIT

port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
"$BIN" dev registry --listen "127.0.0.1:$port" >"$WORK/registry.log" 2>&1 &
REGISTRY_PID=$!
topic="bench-$(date +%s)-$$"
root=$(pwd)
sed -e "s|brokers: 127.0.0.1:9092|brokers: $BROKERS|" \
    -e "s|topics: \[profile-changes\]|topics: [$topic]|" \
    -e "s|group_id: profile-sync|group_id: $topic|" \
    -e "s|url: http://127.0.0.1:8081|url: http://127.0.0.1:$port|" \
    -e "s|topic: profile-changes-dlq|topic: $topic-dlq|" \
    -e "s|\.\./schemas|$root/schemas|" -e "s|\.\./geoip/|$root/geoip/|" \
    -e "s|^  linger_ms: 50 .*|  linger_ms: 50\n  stop_when_idle_ms: $IDLE_MS|" \
    pipelines/kafka-local.yaml >"$WORK/pipeline.yaml"
sleep 1

echo "producing $EVENTS events to $topic" >&2
start=$(date +%s.%N)
"$BIN" produce --count "$EVENTS" --invalid-ratio 0.01 --partitions 6 \
  --pipeline "$WORK/pipeline.yaml" >"$WORK/produce.json"
produce_s=$(echo "$(date +%s.%N) - $start" | bc)
# The dead-letter topic (tansu creates no topic on first use): `produce` of nothing creates it.
"$BIN" produce --count 0 --topic "$topic-dlq" --partitions 1 --pipeline "$WORK/pipeline.yaml" >/dev/null

echo "consuming with one worker" >&2
"$BIN" run --pipeline "$WORK/pipeline.yaml" --data-dir "$WORK/data" --output json \
  >"$WORK/summary.json" 2>"$WORK/worker.log" &
pid=$!
samples=""
while kill -0 "$pid" 2>/dev/null; do
  rss=$(awk '/VmRSS/{print $2}' "/proc/$pid/status" 2>/dev/null || true)
  hwm=$(awk '/VmHWM/{print $2}' "/proc/$pid/status" 2>/dev/null || true)
  [ -n "$rss" ] && samples="$samples${samples:+,}$rss" && echo "$hwm" >"$WORK/hwm"
  sleep 2
done
wait "$pid"
echo '{}' >"$WORK/baseline.json"
if [ "${BASELINE:-1}" = 1 ]; then
  VENV=${VENV:-$HOME/.cache/profile-sync/venv-baseline}
  if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import confluent_kafka' 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q -r benches/baseline/requirements.txt
  fi
  echo "the Python baseline on the same topic" >&2
  "$VENV/bin/python" benches/baseline/kafka_baseline.py --brokers "$BROKERS" --topic "$topic" \
    --registry "http://127.0.0.1:$port" --count "$EVENTS" --schema schemas/profile_change.avsc \
    --geoip geoip/test-city.mmdb --work "$WORK/baseline" >"$WORK/baseline.json"
fi
# What the broker delivers to a consumer that does nothing (its ceiling for this topic).
echo '{}' >"$WORK/bare.json"
if [ "${BASELINE:-1}" = 1 ]; then
  echo "a bare librdkafka consumer on the same topic" >&2
  "$VENV/bin/python" benches/baseline/bare_consumer.py --brokers "$BROKERS" --topic "$topic" \
    --count "$EVENTS" >"$WORK/bare.json"
fi
python3 - "$WORK/summary.json" "$(cat "$WORK/hwm")" "$samples" "$produce_s" "$IDLE_MS" "$EVENTS" "$WORK/baseline.json" "$WORK/bare.json" <<'EOF'
import json, sys
summary = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
hwm_kb, samples, produce_s, idle_ms, events = sys.argv[2:7]
baseline = json.load(open(sys.argv[7]))
bare = json.load(open(sys.argv[8]))
rss = [int(s) for s in samples.split(",") if s]
busy = summary["elapsed_seconds"] - int(idle_ms) / 1000
rate = summary["read"] / busy
tenth = max(1, len(rss) // 10)
print(json.dumps({
    "events": int(events),
    "produce_seconds": round(float(produce_s), 1),
    "worker": summary,
    "events_per_second_excluding_idle": round(rate),
    "peak_rss_mb": round(int(hwm_kb) / 1024, 1),
    "rss_mb_each_tenth": [round(r / 1024, 1) for r in rss[::tenth]],
    "python_baseline": baseline,
    "speedup_vs_baseline": round(rate / baseline["events_per_second"], 2) if baseline else None,
    "bare_librdkafka_consumer": bare,
    "share_of_bare_consumer": round(rate / bare["events_per_second"], 2) if bare else None,
}))
EOF
