#!/usr/bin/env bash
# Runs profile-sync's benchmarks and the Python baseline on the same generated events, on the
# same machine, in one go, and prints the table with the ratios (benches/report.py).
#
#   benches/run.sh [EVENTS] [RUNS]     defaults: 200000 events, 3 runs (medians are reported)
#
# Env: CARGO_TARGET_DIR (default ./target), SKIP_CRITERION=1 to reuse the last criterion run,
# QUICK=1 to build with the dev profile (dependencies at opt-level 2, as Cargo.toml sets) and
# profile-sync itself at opt-level 3 without debug assertions: reuses a warm dev build when a
# cold release build is too slow for the machine (numbers are then a little pessimistic);
# BASELINE_EVENTS (default: EVENTS / 4; the baseline is slow), RATE (latency phase, default 20000).
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-200000}
RUNS=${2:-3}
BASELINE_EVENTS=${BASELINE_EVENTS:-$((EVENTS / 4))}
RATE=${RATE:-20000}
TARGET=${CARGO_TARGET_DIR:-target}
OUT=${BENCH_OUT:-$TARGET/bench-results}
VENV=${VENV:-$HOME/.cache/profile-sync/venv-baseline}
mkdir -p "$OUT"

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q -r benches/baseline/requirements.txt
fi
if [ "${QUICK:-0}" = 1 ]; then
  PROFILE=(--profile dev
    --config 'profile.dev.package.profile-sync.opt-level=3'
    --config 'profile.dev.package.profile-sync.debug-assertions=false'
    --config 'profile.dev.package.profile-sync.overflow-checks=false')
  BIN=$TARGET/debug/profile-sync
else
  PROFILE=(--release)
  BIN=$TARGET/release/profile-sync
fi
cargo build --quiet "${PROFILE[@]}"
if [ "${SKIP_CRITERION:-0}" != 1 ]; then
  cargo bench --quiet --bench stages "${PROFILE[@]/--release/--profile=bench}" 2>&1 | tee "$OUT/criterion.txt" >&2
fi
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
"$BIN" generate --count "$BASELINE_EVENTS" --format avro --out "$SCRATCH/events.avro" >/dev/null
rm -f "$OUT"/harness-*.json "$OUT"/baseline-*.json "$OUT"/nofeed-*.json
for i in $(seq 1 "$RUNS"); do
  echo "run $i/$RUNS: profile-sync bench --events $EVENTS" >&2
  "$BIN" bench --events "$EVENTS" --rate "$RATE" --output json > "$OUT/harness-$i.json"
  echo "run $i/$RUNS: profile-sync bench --without-segment-feed (what the feed costs)" >&2
  "$BIN" bench --events "$EVENTS" --rate "$RATE" --without-segment-feed --output json \
    > "$OUT/nofeed-$i.json"
  echo "run $i/$RUNS: Python baseline on $BASELINE_EVENTS events" >&2
  rm -rf "$SCRATCH/work"
  "$VENV/bin/python" benches/baseline/baseline.py --input "$SCRATCH/events.avro" \
    --schema schemas/profile_change.avsc --geoip geoip/test-city.mmdb --work "$SCRATCH/work" \
    > "$OUT/baseline-$i.json"
done
python3 benches/report.py --criterion "$TARGET/criterion" --results "$OUT"
python3 - "$OUT" <<'PY'
import glob, json, statistics, sys
rate = lambda pattern: statistics.median(
    json.load(open(f))["throughput"]["events_per_second"] for f in glob.glob(f"{sys.argv[1]}/{pattern}"))
on, off = rate("harness-*.json"), rate("nofeed-*.json")
print(f"segment change feed: {on:.0f} events/s with it, {off:.0f} without: costs {100 * (off - on) / off:.1f} % of throughput")
PY
