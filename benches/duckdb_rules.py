"""DuckDB side of the rules benchmark (collector/benches/rules.rs).

Usage: duckdb_rules.py FLOWS_DIR SQL_DIR RUNS

Reads the same Parquet files as leakwatch (FLOWS_DIR/day=*/*.parquet) as
the view `flows`, runs each rule's SQL from SQL_DIR/<rule>.sql once to warm
up and RUNS times more, and prints one JSON line per rule with the best
time and the row count.

DuckDB has no `registrable_domain`; it gets a SQL macro taking the last
two labels of a host name (IP addresses and empty names give NULL). That
equals the public suffix list's answer for the simulated fleet's domains
except under multi-label suffixes, and costs DuckDB less than a Python UDF
would; the row counts printed beside the times show any difference.
"""

import json
import pathlib
import sys
import time

import duckdb


def main():
    flows_dir, sql_dir, runs = sys.argv[1], pathlib.Path(sys.argv[2]), int(sys.argv[3])
    con = duckdb.connect()
    con.execute(f"CREATE VIEW flows AS SELECT * FROM read_parquet('{flows_dir}/*/*.parquet')")
    con.execute(
        r"""CREATE MACRO registrable_domain(h) AS
            CASE WHEN h IS NULL OR h = '' OR regexp_matches(h, '^[0-9.]+$') OR contains(h, ':') THEN NULL
                 ELSE regexp_extract(h, '([^.]+\.[^.]+)\.?$', 1) END"""
    )
    for path in sorted(sql_dir.glob("*.sql")):
        sql = path.read_text(encoding="utf-8")
        best, rows = float("inf"), 0
        for _ in range(runs + 1):
            t0 = time.perf_counter()
            rows = len(con.execute(sql).fetchall())
            best = min(best, time.perf_counter() - t0)
        print(json.dumps({"rule": path.stem, "seconds": best, "rows": rows}), flush=True)


if __name__ == "__main__":
    main()
