#!/usr/bin/env python3
"""Build the synthetic test GeoIP database geoip/test-city.mmdb from geoip/networks.csv.

The file is written by the `mmdb-writer` library (a real MaxMind DB writer) as a
GeoIP2-City-compatible database: an IPv6 tree with IPv4 networks at ::/96, so both
address families resolve. Records are shaped like MaxMind City records:

    {"continent": {"code": "EU", "names": {"en": "Europe"}},
     "country": {"iso_code": "DE", "names": {"en": "Germany"}},
     "subdivisions": [{"iso_code": "BE", "names": {"en": "Berlin"}}]}

(`subdivisions` is left out when the row has none.)

The build is reproducible: the only time-dependent field, the metadata's build_epoch,
is taken from SOURCE_DATE_EPOCH (default 1767225600, 2026-01-01T00:00:00Z), so two runs
over the same CSV give byte-identical files. After writing, the file is read back with
the `maxminddb` reader and checked.

Usage (see geoip/README.md):
    python scripts/build-geoip.py [--source geoip/networks.csv] [--out geoip/test-city.mmdb]
"""

import argparse
import csv
import ipaddress
import os
import sys
from pathlib import Path

import maxminddb
from mmdb_writer import MMDBWriter
from netaddr import IPSet

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = REPO / "geoip" / "networks.csv"
DEFAULT_OUT = REPO / "geoip" / "test-city.mmdb"
DEFAULT_EPOCH = 1767225600  # 2026-01-01T00:00:00Z
HEADER = ["network", "country", "country_name", "subdivision", "subdivision_name", "continent"]
CONTINENTS = {
    "AF": "Africa",
    "AN": "Antarctica",
    "AS": "Asia",
    "EU": "Europe",
    "NA": "North America",
    "OC": "Oceania",
    "SA": "South America",
}
# Addresses that must not resolve to anything.
MUST_MISS = ["10.0.0.1", "127.0.0.1", "192.168.1.1"]


class ReproducibleMMDBWriter(MMDBWriter):
    """MMDBWriter with a fixed build_epoch instead of the current time."""

    def __init__(self, build_epoch, **kwargs):
        super().__init__(**kwargs)
        self.build_epoch = build_epoch

    def _build_meta(self):
        meta = super()._build_meta()
        if "build_epoch" not in meta:
            raise RuntimeError("mmdb-writer metadata has no build_epoch; check the pinned version")
        meta["build_epoch"] = self.build_epoch
        return meta


def fail(msg):
    sys.exit(f"build-geoip: {msg}")


def read_rows(source):
    with open(source, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != HEADER:
            fail(f"{source}: header must be {','.join(HEADER)}, got {header}")
        rows = []
        for lineno, cols in enumerate(reader, start=2):
            if len(cols) != len(HEADER):
                fail(f"{source}:{lineno}: expected {len(HEADER)} columns, got {len(cols)}")
            row = dict(zip(HEADER, (c.strip() for c in cols)))
            try:
                net = ipaddress.ip_network(row["network"], strict=True)
            except ValueError as e:
                fail(f"{source}:{lineno}: bad network: {e}")
            if not net.is_global:
                fail(f"{source}:{lineno}: {net} is not a public (global) network")
            if row["continent"] not in CONTINENTS:
                fail(f"{source}:{lineno}: unknown continent code {row['continent']!r}")
            if not (len(row["country"]) == 2 and row["country"].isupper() and row["country_name"]):
                fail(f"{source}:{lineno}: country needs a 2-letter upper-case code and a name")
            if bool(row["subdivision"]) != bool(row["subdivision_name"]):
                fail(f"{source}:{lineno}: subdivision and subdivision_name go together")
            row["net"] = net
            row["lineno"] = lineno
            rows.append(row)
    if not rows:
        fail(f"{source}: no rows")
    for i, a in enumerate(rows):
        for b in rows[i + 1 :]:
            if a["net"].version == b["net"].version and a["net"].overlaps(b["net"]):
                fail(f"{source}: {a['net']} (line {a['lineno']}) overlaps {b['net']} (line {b['lineno']})")
    return rows


def record(row):
    rec = {
        "continent": {"code": row["continent"], "names": {"en": CONTINENTS[row["continent"]]}},
        "country": {"iso_code": row["country"], "names": {"en": row["country_name"]}},
    }
    if row["subdivision"]:
        rec["subdivisions"] = [
            {"iso_code": row["subdivision"], "names": {"en": row["subdivision_name"]}}
        ]
    return rec


def build(rows, out, build_epoch):
    writer = ReproducibleMMDBWriter(
        build_epoch,
        ip_version=6,
        ipv4_compatible=True,
        database_type="GeoIP2-City",
        languages=["en"],
        description={"en": "profile-sync synthetic test GeoIP2-City database (not real allocations)"},
    )
    for row in rows:
        writer.insert_network(IPSet([str(row["net"])]), record(row))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    writer.to_db_file(str(tmp))
    os.replace(tmp, out)


def verify(rows, out, build_epoch):
    with maxminddb.open_database(str(out)) as db:
        meta = db.metadata()
        expect = {
            "database_type": "GeoIP2-City",
            "ip_version": 6,
            "languages": ["en"],
            "build_epoch": build_epoch,
        }
        for key, want in expect.items():
            got = getattr(meta, key)
            if got != want:
                fail(f"{out}: metadata {key} is {got!r}, expected {want!r}")
        for row in rows:
            addr = str(row["net"].network_address)
            got = db.get(addr)
            if got != record(row):
                fail(f"{out}: {addr} (line {row['lineno']}) resolves to {got!r}, expected {record(row)!r}")
        for addr in MUST_MISS:
            got = db.get(addr)
            if got is not None:
                fail(f"{out}: {addr} must not resolve, got {got!r}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="CSV source table")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="MMDB file to write")
    args = parser.parse_args()

    try:
        build_epoch = int(os.environ.get("SOURCE_DATE_EPOCH", DEFAULT_EPOCH))
    except ValueError:
        fail("SOURCE_DATE_EPOCH must be an integer")

    rows = read_rows(args.source)
    build(rows, args.out, build_epoch)
    verify(rows, args.out, build_epoch)
    size = args.out.stat().st_size
    print(f"wrote {args.out} ({len(rows)} networks, {size} bytes, build_epoch {build_epoch}); verified")


if __name__ == "__main__":
    main()
