#!/usr/bin/env python3
"""Writes a Pi-hole query database of N queries with FTL's version 21
schema (FTL 6: query_storage with its *_by_id tables and the queries
view), for benches/imports.sh. Usage: pihole_db.py OUT.db N

Clients are 200 LAN addresses (half with a MAC in the network tables),
names 5,000 vendor and tracker host names, one query a second or so,
statuses as a household's mix (most answered, one in ten blocked). Each
client asks for its own 300 names, the k-th most often about 1/k of the
time (DNS traffic repeats: a household's few devices ask for the same
hundreds of names all day; the shared ushineko database has 1,399 queries
of 283 names)."""
import bisect
import itertools
import random
import sqlite3
import sys

SCHEMA = """
CREATE TABLE query_storage (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp INTEGER NOT NULL, type INTEGER NOT NULL,
  status INTEGER NOT NULL, domain INTEGER NOT NULL, client INTEGER NOT NULL, forward INTEGER, additional_info INTEGER,
  reply_type INTEGER, reply_time REAL, dnssec INTEGER, list_id INTEGER, ede INTEGER);
CREATE INDEX idx_queries_timestamp ON query_storage (timestamp);
CREATE TABLE ftl (id INTEGER PRIMARY KEY NOT NULL, value BLOB NOT NULL, description TEXT);
CREATE TABLE network (id INTEGER PRIMARY KEY NOT NULL, hwaddr TEXT UNIQUE NOT NULL, interface TEXT NOT NULL,
  firstSeen INTEGER NOT NULL, lastQuery INTEGER NOT NULL, numQueries INTEGER NOT NULL, macVendor TEXT, aliasclient_id INTEGER);
CREATE TABLE network_addresses (network_id INTEGER NOT NULL, ip TEXT UNIQUE NOT NULL, lastSeen INTEGER NOT NULL,
  name TEXT, nameUpdated INTEGER);
CREATE TABLE domain_by_id (id INTEGER PRIMARY KEY, domain TEXT NOT NULL);
CREATE TABLE client_by_id (id INTEGER PRIMARY KEY, ip TEXT NOT NULL, name TEXT);
CREATE TABLE forward_by_id (id INTEGER PRIMARY KEY, forward TEXT NOT NULL);
CREATE TABLE addinfo_by_id (id INTEGER PRIMARY KEY, type INTEGER NOT NULL, content NOT NULL);
CREATE VIEW queries AS SELECT id, timestamp, type, status,
  CASE typeof(domain) WHEN 'integer' THEN (SELECT domain FROM domain_by_id d WHERE d.id = q.domain) ELSE domain END domain,
  CASE typeof(client) WHEN 'integer' THEN (SELECT ip FROM client_by_id c WHERE c.id = q.client) ELSE client END client,
  CASE typeof(forward) WHEN 'integer' THEN (SELECT forward FROM forward_by_id f WHERE f.id = q.forward) ELSE forward END forward,
  CASE typeof(additional_info) WHEN 'integer' THEN (SELECT content FROM addinfo_by_id a WHERE a.id = q.additional_info)
    ELSE additional_info END additional_info,
  reply_type, reply_time, dnssec, list_id, ede FROM query_storage q;
"""


def main():
    out, n = sys.argv[1], int(sys.argv[2])
    rng = random.Random(1)
    db = sqlite3.connect(out)
    db.executescript("PRAGMA journal_mode = WAL;" + SCHEMA)
    db.execute("INSERT INTO ftl VALUES (0, 21, 'Database version'), (2, 1764547200, 'Unix timestamp of the database creation')")
    clients = [f"192.168.{i // 250}.{i % 250 + 2}" for i in range(200)]
    db.executemany("INSERT INTO client_by_id VALUES (?, ?, NULL)", [(i + 1, c) for i, c in enumerate(clients)])
    db.executemany(
        "INSERT INTO network VALUES (?, ?, 'eth0', 1764547200, 1764547200, 0, NULL, NULL)",
        [(i + 1, "02:00:00:00:%02x:%02x" % (i // 256, i % 256)) for i in range(100)],
    )
    db.executemany("INSERT INTO network_addresses VALUES (?, ?, 1764547200, NULL, NULL)", [(i + 1, clients[i]) for i in range(100)])
    words = ["api", "cdn", "telemetry", "update", "time", "push", "metrics", "auth", "config", "ota"]
    domains = [f"{rng.choice(words)}{i}.vendor{i % 97}.example" for i in range(5000)]
    db.executemany("INSERT INTO domain_by_id VALUES (?, ?)", [(i + 1, d) for i, d in enumerate(domains)])
    db.execute("INSERT INTO forward_by_id VALUES (1, '9.9.9.9#53')")
    statuses = [2] * 45 + [3] * 40 + [17] * 5 + [1] * 7 + [4, 5, 16]
    # Each client's names, and the cumulative weights 1/k of their ranks.
    names = [rng.sample(range(1, 5001), 300) for _ in range(200)]
    weights = list(itertools.accumulate(1 / k for k in range(1, 301)))
    t = 1764547200.0
    batch = []
    for _ in range(n):
        t += rng.random() * 2
        status = rng.choice(statuses)
        client = rng.randrange(200)
        domain = names[client][bisect.bisect(weights, rng.random() * weights[-1])]
        batch.append((t, 1, status, domain, client + 1, 1 if status in (2, 17) else None))
        if len(batch) == 100_000:
            db.executemany("INSERT INTO query_storage (timestamp, type, status, domain, client, forward) VALUES (?, ?, ?, ?, ?, ?)", batch)
            batch.clear()
    db.executemany("INSERT INTO query_storage (timestamp, type, status, domain, client, forward) VALUES (?, ?, ?, ?, ?, ?)", batch)
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


if __name__ == "__main__":
    main()
