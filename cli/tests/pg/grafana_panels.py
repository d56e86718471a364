"""Runs each query of a Grafana dashboard (docs/grafana/leakwatch.json)
over a running collector's PostgreSQL listener, as Grafana's PostgreSQL
data source would after expanding its macros.

Usage: grafana_panels.py HOST:PORT TOKEN DASHBOARD_JSON

Prints "grafana: ok" when every panel's query ran, and each panel that
is not a rule's findings answered at least one row (a rule may find
nothing in a small fleet); exits non-zero otherwise.
"""

import json
import re
import sys

import psycopg

# Grafana replaces these before sending a query; the dashboard's range is
# all of time here.
MACROS = [
    (re.compile(r"\$__timeFilter\((\w+)\)"),
     r"\1 BETWEEN '1970-01-01T00:00:00Z' AND '2100-01-01T00:00:00Z'"),
]


def main():
    addr, token, path = sys.argv[1], sys.argv[2], sys.argv[3]
    host, port = addr.rsplit(":", 1)
    with open(path) as f:
        dashboard = json.load(f)
    conn = psycopg.connect(host=host, port=port, user="grafana", password=token, dbname="leakwatch",
                           sslmode="disable", connect_timeout=10, autocommit=True)
    # The data source's health check.
    conn.execute("SELECT 1").fetchall()
    ran = 0
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            sql = target["rawSql"]
            for pattern, replacement in MACROS:
                sql = pattern.sub(replacement, sql)
            if "$__" in sql:
                print(f"grafana: FAILED: panel {panel['title']!r} uses a macro this check does not expand")
                sys.exit(1)
            try:
                rows = conn.execute(sql).fetchall()
            except psycopg.Error as e:
                print(f"grafana: FAILED: panel {panel['title']!r}: {e.sqlstate} {e}")
                sys.exit(1)
            if not rows and "(rule " not in panel["title"]:
                print(f"grafana: FAILED: panel {panel['title']!r} answered no rows")
                sys.exit(1)
            ran += 1
    if ran == 0:
        print("grafana: FAILED: no queries in the dashboard")
        sys.exit(1)
    conn.close()
    print(f"grafana: ok ({ran} queries)")


if __name__ == "__main__":
    main()
