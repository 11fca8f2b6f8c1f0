"""The Python baseline on Kafka: the same work as baseline.py's end-to-end run, consuming the
Confluent wire format from a topic with confluent-kafka (the librdkafka binding), writer
schemas fetched by id from the Schema Registry and decoded with fastavro against the reader
schema, one SQLite transaction and one synchronous offset commit per batch.

It does not dead-letter (invalid events are skipped), which favours it. The time runs from
the subscription (group join included) to the commit of the last batch, as benches/kafka.sh
measures profile-sync. Prints one JSON object.
"""

import argparse
import io
import json
import os
import sys
import time
import urllib.request

import fastavro
from confluent_kafka import Consumer

sys.path.insert(0, os.path.dirname(__file__))
from baseline import Keys, Region, open_db, process  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--registry", required=True, help="Schema Registry base URL")
    ap.add_argument("--count", type=int, required=True, help="events on the topic")
    ap.add_argument("--schema", required=True)
    ap.add_argument("--geoip", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--batch", type=int, default=2000)
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    with open(a.schema) as f:
        reader = fastavro.parse_schema(json.load(f))
    writers = {}

    def writer(schema_id):
        if schema_id not in writers:
            with urllib.request.urlopen(f"{a.registry}/schemas/ids/{schema_id}") as r:
                writers[schema_id] = fastavro.parse_schema(json.loads(json.load(r)["schema"]))
        return writers[schema_id]

    region = Region(a.geoip)
    db = open_db(os.path.join(a.work, "kafka.sqlite"))
    keys = Keys(db)
    consumer = Consumer({
        "bootstrap.servers": a.brokers,
        "group.id": f"{a.topic}-python-baseline",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    start = time.perf_counter()
    cpu = time.process_time()
    consumer.subscribe([a.topic])
    read = decoded = 0
    while read < a.count:
        messages = consumer.consume(num_messages=a.batch, timeout=1.0)
        events = []
        for m in messages:
            if m.error():
                continue
            read += 1
            v = m.value()
            if not v or len(v) < 5 or v[0] != 0:
                continue
            try:
                events.append(
                    fastavro.schemaless_reader(io.BytesIO(v[5:]), writer(int.from_bytes(v[1:5], "big")), reader)
                )
            except Exception:
                continue
        if messages:
            process(events, region, keys, db)
            consumer.commit(asynchronous=False)
            decoded += len(events)
    seconds = time.perf_counter() - start
    cpu_s = time.process_time() - cpu
    consumer.close()
    print(json.dumps({
        "read": read,
        "decoded": decoded,
        "seconds": round(seconds, 3),
        "events_per_second": round(read / seconds),
        "cpu_seconds": round(cpu_s, 2),
        "events_per_cpu_second": round(read / cpu_s),
    }))


if __name__ == "__main__":
    main()
