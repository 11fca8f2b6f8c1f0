"""A bare librdkafka consumer (confluent-kafka): reads a topic to its end and does nothing with
the messages, so benches/kafka.sh can show what the broker stand-in itself delivers to one
consumer in the same run. The time runs from the subscription (group join included) to the
last message, as for the worker. Prints one JSON object.
"""

import argparse
import json
import time

from confluent_kafka import Consumer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--count", type=int, required=True)
    args = ap.parse_args()
    consumer = Consumer({
        "bootstrap.servers": args.brokers,
        "group.id": f"{args.topic}-bare-{int(time.time())}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        # The worker's prefetch bound, so both read with the same buffering.
        "queued.max.messages.kbytes": 16384,
        "session.timeout.ms": 30000,
    })
    started = time.monotonic()
    consumer.subscribe([args.topic])
    read = 0
    idle_since = time.monotonic()
    while read < args.count and time.monotonic() - idle_since < 30:
        batch = consumer.consume(num_messages=2000, timeout=1.0)
        if batch:
            idle_since = time.monotonic()
        read += sum(1 for m in batch if m.error() is None)
    elapsed = time.monotonic() - started
    consumer.close()
    print(json.dumps({"read": read, "seconds": round(elapsed, 2),
                      "events_per_second": round(read / elapsed) if elapsed else 0}))


if __name__ == "__main__":
    main()
