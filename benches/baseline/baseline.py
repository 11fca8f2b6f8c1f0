"""The baseline profile-sync is measured against: what a data team would write in an
afternoon for the same job with well-known libraries (fastavro, maxminddb, cryptography
AES-GCM, plain-Python segment rules, sqlite3), on the same generated events.

It does the same work per event as the Rust pipeline's stages: decode with writer->reader
resolution and the same semantic checks; GeoIP region + residency zone; the 5 unconditional
segment rules of pipelines/local.yaml (the consent-bound one is skipped without consent, as in
Rust); per-user 256-bit data keys wrapped under a key-encryption key, every PII field sealed
with AES-256-GCM under the user's key with the same AAD layout; the email blind index
(HMAC-SHA256); the index projection; and a versioned upsert into SQLite (WAL, synchronous
NORMAL, as the Rust store), one transaction per batch. The "index" is a SQLite table of JSON
documents, which is far less work than tantivy: it favours the baseline.

Prints one JSON object: per-stage microseconds per event, and end-to-end events/s.
"""

import argparse
import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import os
import sqlite3
import sys
import time

import fastavro
import maxminddb
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PII = ["email", "phone", "display_name", "avatar_url", "birth_date", "postal_address", "last_seen_ip"]
INDEXED = ["status", "locale", "time_zone", "last_seen_at"]
INDEXED_MARKETING = ["lifetime_value", "order_count", "last_order_at", "plan"]
EU = set("AT BE BG CY CZ DE DK EE ES FI FR GR HR HU IE IT LT LU LV MT NL PL PT RO SE SI SK".split())
ZONES = {c: "EU" for c in EU}
ZONES["US"] = "US"
ZONES.update({c: "APAC" for c in "AU CN HK IN JP KR NZ SG TW".split()})
DORMANT = dt.timedelta(hours=2160)


class Invalid(Exception):
    pass


def validate(e):
    if e["version"] < 1:
        raise Invalid("version")
    op = e["operation"]
    if op in ("DELETE", "ERASE"):
        e["profile"] = None
        return e
    if op != "UPSERT":
        raise Invalid("operation")
    p = e.get("profile")
    if p is None:
        raise Invalid("profile")
    email = p.get("email")
    if email is not None:
        at = email.find("@")
        if len(email) > 254 or at <= 0 or at + 1 >= len(email) or any(c.isspace() for c in email):
            raise Invalid("email")
    ip = p.get("last_seen_ip")
    if ip is not None:
        ipaddress.ip_address(ip)
    return e


class Region:
    def __init__(self, path):
        self.reader = maxminddb.open_database(path)

    def resolve(self, ip):
        if not ip:
            return unknown()
        addr = ipaddress.ip_address(ip)
        if addr.version == 6 and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        if not addr.is_global:
            return unknown()
        rec = self.reader.get(addr)
        country = rec and rec.get("country", {}).get("iso_code")
        if not country:
            return unknown()
        subs = rec.get("subdivisions") or [{}]
        return {
            "country": country,
            "subdivision": subs[0].get("iso_code"),
            "continent": rec.get("continent", {}).get("iso_code", "unknown"),
            "residency_zone": ZONES.get(country, "OTHER"),
        }


def unknown():
    return {"country": "unknown", "subdivision": None, "continent": "unknown", "residency_zone": "unknown"}


def segments(e, region):
    p = e["profile"]
    m = p.get("marketing") or {}
    out = []
    last_seen = p.get("last_seen_at")
    if last_seen is not None and e["occurred_at"] - last_seen > DORMANT:
        out.append("dormant")
    if region["residency_zone"] == "EU":
        out.append("eu_resident")
    if m.get("order_count", 0) >= 10:
        out.append("frequent_buyer")
    if m.get("lifetime_value", 0.0) > 1000.0:
        out.append("high_value")
    if m.get("plan") in ("pro", "enterprise"):
        out.append("paying")
    return out


def as_json(v):
    if isinstance(v, dt.datetime):
        return v.isoformat()
    if isinstance(v, dt.date):
        return v.isoformat()
    return v


class Keys:
    """Per-user data keys, cached unwrapped; new ones wrapped under the KEK and stored."""

    def __init__(self, db):
        self.kek = AESGCM(os.urandom(32))
        self.blind = os.urandom(32)
        self.cache = {}
        self.db = db
        self.calls = 0

    def for_user(self, user):
        k = self.cache.get(user)
        if k is None:
            dek = AESGCM.generate_key(bit_length=256)
            nonce = os.urandom(12)
            aad = b"profile-sync/user-key/v1\x00" + user.encode() + b"\x00" + b"1"
            wrapped = nonce + self.kek.encrypt(nonce, dek, aad)
            self.calls += 1
            self.db.execute(
                "INSERT OR IGNORE INTO user_keys VALUES (?, 1, 'local', 'kek', ?)", (user, wrapped)
            )
            k = self.cache[user] = AESGCM(dek)
        return k


def protect(e, region, segs, keys):
    user = str(e["user_id"])
    p = dict(e["profile"])
    email = p.get("email")
    email_index = (
        hmac.new(keys.blind, email.strip().lower().encode(), hashlib.sha256).hexdigest() if email else None
    )
    enc = {}
    aead = None
    for f in PII:
        v = p.pop(f, None)
        if v is None:
            continue
        if aead is None:
            aead = keys.for_user(user)
        nonce = os.urandom(12)
        aad = b"profile-sync/field/v1\x00" + user.encode() + b"\x00" + f.encode() + b"\x00" + b"1"
        ct = aead.encrypt(nonce, json.dumps(as_json(v)).encode(), aad)
        enc[f] = "v1.1." + base64.urlsafe_b64encode(nonce + ct).rstrip(b"=").decode()
    record = {
        "event_id": str(e["event_id"]),
        "source": e["source"],
        "occurred_at": e["occurred_at"].isoformat(),
        "profile": {k: as_json(v) for k, v in p.items()},
        "encrypted": enc,
        "key_version": 1,
        "region": region,
        "segments": segs,
    }
    return record, email_index


def project(e, record):
    p = record["profile"]
    m = p.get("marketing") or {}
    doc = {k: p[k] for k in INDEXED if p.get(k) is not None}
    doc.update({k: m[k] for k in INDEXED_MARKETING if m.get(k) is not None})
    doc.update({k: v for k, v in record["region"].items() if v is not None})
    doc["segments"] = record["segments"]
    doc["user_id"] = str(e["user_id"])
    doc["version"] = e["version"]
    return doc


def open_db(path):
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS profiles (user_id TEXT PRIMARY KEY, version INTEGER NOT NULL,"
        " deleted INTEGER NOT NULL, record TEXT, email_index TEXT, updated_at TEXT NOT NULL)"
    )
    db.execute("CREATE INDEX IF NOT EXISTS by_email ON profiles(email_index)")
    db.execute(
        "CREATE TABLE IF NOT EXISTS user_keys (user_id TEXT PRIMARY KEY, key_version INTEGER,"
        " provider TEXT, kek_id TEXT, wrapped_key BLOB)"
    )
    db.execute("CREATE TABLE IF NOT EXISTS docs (user_id TEXT PRIMARY KEY, version INTEGER, doc TEXT)")
    return db


UPSERT = (
    "INSERT INTO profiles VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(user_id) DO UPDATE SET"
    " version = excluded.version, deleted = excluded.deleted, record = excluded.record,"
    " email_index = excluded.email_index, updated_at = excluded.updated_at"
    " WHERE excluded.version > profiles.version"
)
DOC = (
    "INSERT INTO docs VALUES (?, ?, ?) ON CONFLICT(user_id) DO UPDATE SET"
    " version = excluded.version, doc = excluded.doc WHERE excluded.version >= docs.version"
)


def process(events, region, keys, db):
    """All stages and the store for one batch, in one transaction."""
    rows, docs = [], []
    for e in events:
        try:
            e = validate(e)
        except (Invalid, ValueError):
            continue
        if e["profile"] is None:
            rows.append((str(e["user_id"]), e["version"], 1, None, None, e["occurred_at"].isoformat()))
            continue
        reg = region.resolve(e["profile"].get("last_seen_ip"))
        segs = segments(e, reg)
        record, email_index = protect(e, reg, segs, keys)
        doc = project(e, record)
        rows.append((str(e["user_id"]), e["version"], 0, json.dumps(record, default=as_json), email_index, record["occurred_at"]))
        docs.append((doc["user_id"], doc["version"], json.dumps(doc, default=as_json)))
    db.execute("BEGIN")
    db.executemany(UPSERT, rows)
    db.executemany(DOC, docs)
    db.execute("COMMIT")


def per_event_us(seconds, n):
    return round(seconds / max(n, 1) * 1e6, 3)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True, help="Avro container from `profile-sync generate --format avro`")
    ap.add_argument("--schema", required=True)
    ap.add_argument("--geoip", required=True)
    ap.add_argument("--work", required=True, help="scratch folder for the SQLite files")
    ap.add_argument("--batch", type=int, default=2000)
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    with open(a.schema) as f:
        reader_schema = fastavro.parse_schema(json.load(f))
    region = Region(a.geoip)
    out = {"python": sys.version.split()[0]}

    # Per stage, each over every event, in pipeline order.
    t = time.perf_counter()
    with open(a.input, "rb") as f:
        events = []
        for e in fastavro.reader(f, reader_schema=reader_schema):
            try:
                events.append(validate(e))
            except (Invalid, ValueError):
                pass
    decode_s = time.perf_counter() - t
    n = len(events)
    upserts = [e for e in events if e["profile"] is not None]
    t = time.perf_counter()
    regions = [region.resolve(e["profile"].get("last_seen_ip")) for e in upserts]
    geoip_s = time.perf_counter() - t
    t = time.perf_counter()
    segs = [segments(e, r) for e, r in zip(upserts, regions)]
    segments_s = time.perf_counter() - t
    db = open_db(os.path.join(a.work, "stages.sqlite"))
    keys = Keys(db)
    db.execute("BEGIN")
    for e in upserts:  # warm the key cache, as the Rust benchmark does
        keys.for_user(str(e["user_id"]))
    db.execute("COMMIT")
    t = time.perf_counter()
    protected = [protect(e, r, s, keys) for e, r, s in zip(upserts, regions, segs)]
    protect_s = time.perf_counter() - t
    t = time.perf_counter()
    for e, (record, _) in zip(upserts, protected):
        project(e, record)
    project_s = time.perf_counter() - t
    out["stages_us_per_event"] = {
        "decode_avro": per_event_us(decode_s, n),
        "geoip": per_event_us(geoip_s, len(upserts)),
        "segments": per_event_us(segments_s, len(upserts)),
        "protect_warm_keys": per_event_us(protect_s, len(upserts)),
        "project": per_event_us(project_s, len(upserts)),
    }
    db.close()
    del events, upserts, regions, segs, protected

    # End to end: file -> all stages -> SQLite, one transaction per batch, cold key cache.
    db = open_db(os.path.join(a.work, "e2e.sqlite"))
    keys = Keys(db)
    t = time.perf_counter()
    cpu = time.process_time()
    n = 0
    with open(a.input, "rb") as f:
        batch = []
        for e in fastavro.reader(f, reader_schema=reader_schema):
            batch.append(e)
            if len(batch) == a.batch:
                process(batch, region, keys, db)
                n += len(batch)
                batch = []
        if batch:
            process(batch, region, keys, db)
            n += len(batch)
    e2e_s = time.perf_counter() - t
    cpu_s = time.process_time() - cpu
    out["end_to_end"] = {
        "events": n,
        "seconds": round(e2e_s, 3),
        "events_per_second": round(n / e2e_s),
        "cpu_seconds": round(cpu_s, 2),
        "events_per_cpu_second": round(n / cpu_s),
        "key_wraps": keys.calls,
    }
    db.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
