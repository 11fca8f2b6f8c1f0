"""A personalization engine's consumer of the segment change topic, with no profile-sync code:
confluent-kafka (librdkafka) reads every partition from its start, the schema of each value
comes from the Schema Registry's REST API by the id in the Confluent wire-format header, and
fastavro (a second Avro implementation) decodes it.

usage: read_segment_changes.py BROKERS REGISTRY_URL TOPIC  ->  one JSON line per message
"""
import io
import json
import struct
import sys
import urllib.request
from datetime import timezone

import fastavro
from confluent_kafka import Consumer, KafkaError, TopicPartition

brokers, registry, topic = sys.argv[1:4]
consumer = Consumer({"bootstrap.servers": brokers, "group.id": "outside-reader",
                     "enable.auto.commit": False, "enable.partition.eof": True})
partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
consumer.assign([TopicPartition(topic, p, 0) for p in partitions])  # 0: from the start
schemas, at_end = {}, set()
while len(at_end) < len(partitions):
    msg = consumer.poll(60)  # a broker stand-in may answer a fetch on a long topic slowly
    if msg is None:
        raise SystemExit("no message and no end of partition within 60 s")
    if msg.error():
        if msg.error().code() == KafkaError._PARTITION_EOF:
            at_end.add(msg.partition())
            continue
        raise SystemExit(str(msg.error()))
    value = msg.value()
    magic, schema_id = struct.unpack(">bI", value[:5])
    assert magic == 0, "not the Confluent wire format"
    if schema_id not in schemas:
        with urllib.request.urlopen(f"{registry}/schemas/ids/{schema_id}") as r:
            schemas[schema_id] = fastavro.parse_schema(json.loads(json.load(r)["schema"]))
    change = fastavro.schemaless_reader(io.BytesIO(value[5:]), schemas[schema_id])
    at = change["occurred_at"].astimezone(timezone.utc)
    print(json.dumps({
        "key": msg.key().decode(),
        "partition": msg.partition(),
        "user_id": str(change["user_id"]),
        "version": change["version"],
        "occurred_at": at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z",
        "cause": change["cause"],
        "entered": change["entered"],
        "exited": change["exited"],
        "segments": change["segments"],
        "residency_zone": change["residency_zone"],
    }))
consumer.close()
