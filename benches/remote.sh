#!/usr/bin/env bash
# Remote sinks: DynamoDB Local (store), moto (KMS) and osmem (OpenSearch index), each reached
# directly and then through benches/delay_proxy.py adding DELAY_MS (default 20) to every round
# trip. The same generated backlog of EVENTS goes through both; the rates and their ratio are
# printed as JSON. The ratio shows whether round trips cost concurrency or throughput.
#
#   benches/remote.sh [EVENTS]          default 100000
#
# Needs the test servers (`scripts/services start dynamodb kms opensearch`) and a built binary
# (BIN, default target/release/profile-sync). Everything stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-100000}
DELAY_MS=${DELAY_MS:-20}
BIN=${BIN:-target/release/profile-sync}
WORK=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$WORK"' EXIT
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
"$BIN" generate --count "$EVENTS" --format avro --out "$WORK/events.avro" >/dev/null
root=$(pwd)

# A pipeline on the three servers at the given ports, with tables and indices of its own.
pipeline() { # name dynamodb_port kms_port opensearch_port
  sed -e "s|http://127.0.0.1:4566|http://127.0.0.1:$3|" -e "s|http://127.0.0.1:8000|http://127.0.0.1:$2|" \
      -e "s|table: profile-sync-dev|table: bench-$1-$$|" \
      -e "s|\.\./schemas|$root/schemas|" -e "s|\.\./geoip/|$root/geoip/|" \
      -e '/^index:/,/^dead_letter:/{/^dead_letter:/!d}' pipelines/aws-local.yaml \
    | sed -e "s|^dead_letter:|index:\n  type: opensearch\n  url: http://127.0.0.1:$4\n  name: bench-$1-$$\n  fields: [status, locale, time_zone, last_seen_at, lifetime_value, order_count, last_order_at, plan]\n\ndead_letter:|" \
    >"$WORK/$1.yaml"
}

run() { # name
  "$BIN" bootstrap --pipeline "$WORK/$1.yaml" >/dev/null
  "$BIN" run --pipeline "$WORK/$1.yaml" --input "$WORK/events.avro" --data-dir "$WORK/data-$1" \
    --output json 2>"$WORK/$1.log" | tail -n 1
}

pipeline direct 8000 4566 9200
d_port=$(free_port); k_port=$(free_port); o_port=$(free_port)
for pair in "$d_port:8000" "$k_port:4566" "$o_port:9200"; do
  python3 benches/delay_proxy.py --listen "127.0.0.1:${pair%%:*}" --to "127.0.0.1:${pair##*:}" \
    --delay-ms "$DELAY_MS" &
  PIDS+=($!)
done
pipeline delayed "$d_port" "$k_port" "$o_port"
sleep 1
echo "direct" >&2
direct=$(run direct)
echo "through the ${DELAY_MS} ms proxy" >&2
delayed=$(run delayed)
python3 - "$direct" "$delayed" "$DELAY_MS" <<'PY'
import json, sys
d, l = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(json.dumps({"delay_ms_per_round_trip": float(sys.argv[3]), "direct": d, "delayed": l,
                  "delayed_share_of_direct": round(l["events_per_second"] / d["events_per_second"], 2)}))
PY
