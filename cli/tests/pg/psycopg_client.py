"""psycopg (libpq, from Python) against a running leakwatch collector's
PostgreSQL listener.

Usage: psycopg_client.py HOST:PORT TOKEN PLAN_JSON

PLAN_JSON holds the collector's own answers: "counts" (SQL to CSV rows
without a header), "rules" (name, SQL, number of rows) and "param" (a
parameterised query, its value and the CSV row it must answer). Connects
as psycopg does by default (a transaction opened by BEGIN), compares every
answer, sends the catalog queries DBeaver and Grafana send when they
connect, and checks that a write is refused with SQLSTATE 25006. Prints
"psycopg: ok" when every check passed; exits non-zero otherwise.
"""

import csv
import io
import json
import sys

import psycopg


def fail(msg):
    print(f"psycopg: FAILED: {msg}")
    sys.exit(1)


def as_csv(rows):
    """Rows as the collector's CSV renders them."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    return out.getvalue()


# What DBeaver's PostgreSQL driver and Grafana's data source ask when they
# connect and list tables and columns, and whether each must answer rows.
SETUP = ["SET extra_float_digits = 3", "SET application_name = 'DBeaver'"]
CATALOG = [
    ("SELECT version()", True),
    ("SELECT current_schema(), session_user", True),
    ("SELECT current_setting('server_version_num')", True),
    ("SHOW search_path", True),
    ("SELECT n.oid, n.*, d.description FROM pg_catalog.pg_namespace n LEFT OUTER JOIN pg_catalog.pg_description d "
     "ON d.objoid = n.oid AND d.objsubid = 0 AND d.classoid = 'pg_namespace'::regclass ORDER BY nspname", True),
    ("SELECT db.oid, db.* FROM pg_catalog.pg_database db WHERE datname = current_database()", True),
    ("SELECT c.oid, c.relname, c.relkind FROM pg_catalog.pg_class c "
     "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' ORDER BY c.relname", True),
    ("SELECT t.oid, t.typname FROM pg_catalog.pg_type t WHERE t.typname IN ('int8', 'text', 'timestamptz')", True),
    ("SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute a "
     "JOIN pg_catalog.pg_class c ON c.oid = a.attrelid WHERE c.relname = 'flows' AND a.attnum > 0", True),
    ("SELECT * FROM pg_catalog.pg_enum WHERE 1 <> 1 LIMIT 1", False),
    ("SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name",
     True),
    ("SELECT quote_ident(column_name) AS \"column\", data_type AS \"type\" FROM information_schema.columns "
     "WHERE quote_ident(table_name) = 'flows'", True),
]
TABLES = CATALOG[10][0]

# What Grafana's PostgreSQL data source sends, word for word, to list the
# tables of the search path and a table's columns in its query builder.
GRAFANA_BUILDER = [
    r"""SELECT
        CASE WHEN
              quote_ident(table_schema) IN (
              SELECT
                CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
              FROM
                generate_series(
                  array_lower(string_to_array(current_setting('search_path'),','),1),
                  array_upper(string_to_array(current_setting('search_path'),','),1)
                ) as i,
                string_to_array(current_setting('search_path'),',') s
              )
          THEN quote_ident(table_name)
          ELSE quote_ident(table_schema) || '.' || quote_ident(table_name)
        END AS "table"
        FROM information_schema.tables
        WHERE quote_ident(table_schema) NOT IN ('information_schema',
                                 'pg_catalog',
                                 '_timescaledb_cache',
                                 '_timescaledb_catalog',
                                 '_timescaledb_internal',
                                 '_timescaledb_config',
                                 'timescaledb_information',
                                 'timescaledb_experimental')
        ORDER BY CASE WHEN
              quote_ident(table_schema) IN (
              SELECT
                CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
              FROM
                generate_series(
                  array_lower(string_to_array(current_setting('search_path'),','),1),
                  array_upper(string_to_array(current_setting('search_path'),','),1)
                ) as i,
                string_to_array(current_setting('search_path'),',') s
              ) THEN 0 ELSE 1 END, 1""",
    r"""SELECT quote_ident(column_name) AS "column", data_type AS "type"
        FROM information_schema.columns
        WHERE
          CASE WHEN array_length(parse_ident('public.flows'),1) = 2
            THEN quote_ident(table_schema) = (parse_ident('public.flows'))[1]
              AND quote_ident(table_name) = (parse_ident('public.flows'))[2]
            ELSE quote_ident(table_name) = 'public.flows'
              AND
              quote_ident(table_schema) IN (
              SELECT
                CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
              FROM
                generate_series(
                  array_lower(string_to_array(current_setting('search_path'),','),1),
                  array_upper(string_to_array(current_setting('search_path'),','),1)
                ) as i,
                string_to_array(current_setting('search_path'),',') s
              )
          END""",
]


def main():
    addr, token, plan_path = sys.argv[1], sys.argv[2], sys.argv[3]
    host, port = addr.rsplit(":", 1)
    with open(plan_path) as f:
        plan = json.load(f)
    conn = psycopg.connect(host=host, port=port, user="analyst", password=token, dbname="leakwatch",
                           sslmode="disable", connect_timeout=10)
    if conn.info.server_version < 160000:
        fail(f"server_version {conn.info.server_version}")
    with conn.cursor() as cur:
        for sql, want in plan["counts"].items():
            cur.execute(sql)
            got = as_csv(cur.fetchall())
            if got != want:
                fail(f"{sql}: {got!r} != {want!r}")
        for rule in plan["rules"]:
            cur.execute(rule["sql"])
            rows = cur.fetchall()
            if len(rows) != rule["rows"]:
                fail(f"rule {rule['name']}: {len(rows)} rows, the collector says {rule['rows']}")
        param = plan["param"]
        cur.execute(param["sql"], (param["value"],))
        got = as_csv(cur.fetchall())
        if got != param["want"]:
            fail(f"parameterised: {got!r} != {param['want']!r}")
        # The same, prepared on the server (Parse once, Bind and Execute twice).
        for _ in range(2):
            cur.execute(param["sql"], (param["value"],), prepare=True)
            if as_csv(cur.fetchall()) != param["want"]:
                fail("prepared statement")
        for sql in SETUP:
            cur.execute(sql)
        for sql, has_rows in CATALOG:
            try:
                cur.execute(sql)
                rows = cur.fetchall()
            except psycopg.Error as e:
                fail(f"{sql}: {e.sqlstate} {e}")
            if has_rows and not rows:
                fail(f"{sql}: no rows")
        for sql in GRAFANA_BUILDER:
            try:
                rows = cur.execute(sql).fetchall()
            except psycopg.Error as e:
                fail(f"Grafana's query builder: {e.sqlstate} {e}: {sql}")
            if not rows:
                fail(f"Grafana's query builder: no rows: {sql}")
        tables = {r[1] for r in cur.execute(TABLES).fetchall()}
        if not {"flows", "devices", "boots"} <= tables:
            fail(f"information_schema.tables: {sorted(tables)}")
    conn.commit()
    conn.autocommit = True
    try:
        conn.execute("INSERT INTO flows SELECT * FROM flows")
        fail("a write was accepted")
    except psycopg.Error as e:
        if e.sqlstate != "25006":
            fail(f"a write: SQLSTATE {e.sqlstate} ({e})")
    # The connection goes on after an error.
    if conn.execute("SELECT 1").fetchone()[0] != 1:
        fail("after an error")
    conn.close()
    print("psycopg: ok")


if __name__ == "__main__":
    main()
