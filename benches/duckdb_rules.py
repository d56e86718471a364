"""DuckDB side of the rules benchmark (cli/benches/rules.rs).

Usage: duckdb_rules.py FLOWS_DIR SQL_DIR

Reads the same Parquet files as leakwatch (FLOWS_DIR/day=*/*.parquet) as
the view `flows`, then reads rule names from standard input, one per line,
runs each named rule's SQL from SQL_DIR/<rule>.sql once and answers with a
JSON line of its time and row count. The benchmark sends a rule each time
leakwatch has run it, so the two engines take turns and a slow minute of
the machine falls on both.

DuckDB has no `registrable_domain`; it gets a SQL macro taking the last
two labels of a host name (IP addresses and empty names give NULL). That
equals the public suffix list's answer for the simulated fleet's domains
except under multi-label suffixes, and costs DuckDB less than a Python UDF
would; the row counts printed beside the times show any difference. Nor
`unnamed_destination`: its macro keys an unusual port as leakwatch does,
and an IPv4 address by its /24 (the simulated fleet has no IPv6).
"""

import json
import pathlib
import sys
import time

import duckdb


def main():
    flows_dir, sql_dir = sys.argv[1], pathlib.Path(sys.argv[2])
    con = duckdb.connect()
    con.execute(f"CREATE VIEW flows AS SELECT * FROM read_parquet('{flows_dir}/*/*.parquet')")
    con.execute(
        r"""CREATE MACRO registrable_domain(h) AS
            CASE WHEN h IS NULL OR h = '' OR regexp_matches(h, '^[0-9.]+$') OR contains(h, ':') THEN NULL
                 ELSE regexp_extract(h, '([^.]+\.[^.]+)\.?$', 1) END"""
    )
    con.execute(
        r"""CREATE MACRO unnamed_destination(t, ip, p) AS
            CASE WHEN TRY_CAST(p AS INTEGER) >= 1024 AND TRY_CAST(p AS INTEGER) NOT IN
                      (1883, 3478, 5222, 5223, 5228, 5349, 8000, 8080, 8443, 8883, 8888, 9000, 9443, 10000)
                 THEN t || '/' || p || ' (unnamed)'
                 ELSE regexp_replace(ip, '\.[0-9]+$', '.0/24') || ' (unnamed)' END"""
    )
    for line in sys.stdin:
        rule = line.strip()
        if not rule:
            continue
        sql = (sql_dir / f"{rule}.sql").read_text(encoding="utf-8")
        t0 = time.perf_counter()
        rows = len(con.execute(sql).fetchall())
        seconds = time.perf_counter() - t0
        print(json.dumps({"rule": rule, "seconds": seconds, "rows": rows}), flush=True)


if __name__ == "__main__":
    main()
