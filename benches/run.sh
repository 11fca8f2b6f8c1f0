#!/usr/bin/env bash
# Runs profile-sync's benchmarks and the Python baseline on the same generated events, on the
# same machine, in one go, and prints the table with the ratios (benches/report.py).
#
#   benches/run.sh [EVENTS] [RUNS]     defaults: 200000 events, 3 runs (medians are reported)
#
# Env: CARGO_TARGET_DIR (default ./target), SKIP_CRITERION=1 to reuse the last criterion run,
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
cargo build --release --quiet
BIN=$TARGET/release/profile-sync
if [ "${SKIP_CRITERION:-0}" != 1 ]; then
  cargo bench --quiet --bench stages 2>&1 | tee "$OUT/criterion.txt" >&2
fi
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
"$BIN" generate --count "$BASELINE_EVENTS" --format avro --out "$SCRATCH/events.avro" >/dev/null
rm -f "$OUT"/harness-*.json "$OUT"/baseline-*.json
for i in $(seq 1 "$RUNS"); do
  echo "run $i/$RUNS: profile-sync bench --events $EVENTS" >&2
  "$BIN" bench --events "$EVENTS" --rate "$RATE" --output json > "$OUT/harness-$i.json"
  echo "run $i/$RUNS: Python baseline on $BASELINE_EVENTS events" >&2
  rm -rf "$SCRATCH/work"
  "$VENV/bin/python" benches/baseline/baseline.py --input "$SCRATCH/events.avro" \
    --schema schemas/profile_change.avsc --geoip geoip/test-city.mmdb --work "$SCRATCH/work" \
    > "$OUT/baseline-$i.json"
done
python3 benches/report.py --criterion "$TARGET/criterion" --results "$OUT"
