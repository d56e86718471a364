"""A standard Flight SQL client (ADBC's driver, from Python) against a
running leakwatch collector.

Usage: flight_sql_client.py URI TOKEN RULE_SQL_FILE EXPECTED_RULE_CSV MODEL EXPECTED_COUNT

Connects with an analyst's bearer token, lists the tables, runs a rule's
SQL and compares its rows with the collector's own result, runs a prepared
statement with a parameter, checks that text columns arrive as plain
strings, and that a statement that writes is refused. Prints "adbc: ok"
when every check passed; exits non-zero otherwise.
"""

import csv
import io
import sys

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as flight_sql
import pyarrow as pa


def fail(msg):
    print(f"adbc: FAILED: {msg}")
    sys.exit(1)


def rows_as_text(table):
    """The table's rows as lists of strings, the way the collector's CSV
    renders them (None as the empty string)."""
    out = []
    for row in table.to_pylist():
        out.append(["" if v is None else str(v) for v in row.values()])
    return out


def main():
    uri, token, rule_sql_file, expected_csv_file, model, expected_count = sys.argv[1:7]
    rule_sql = open(rule_sql_file, encoding="utf-8").read()
    expected = list(csv.reader(io.StringIO(open(expected_csv_file, encoding="utf-8").read())))
    header, expected_rows = expected[0], expected[1:]

    option = adbc_driver_flightsql.DatabaseOptions.AUTHORIZATION_HEADER.value
    with flight_sql.connect(uri, db_kwargs={option: f"Bearer {token}"}, autocommit=True) as conn:
        # Tables, with their schemas.
        objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
        tables = {
            t["table_name"]
            for c in objects
            for s in (c["catalog_db_schemas"] or [])
            for t in (s["db_schema_tables"] or [])
        }
        for name in ("flows", "devices", "boots"):
            if name not in tables:
                fail(f"table {name} not listed: {sorted(tables)}")
        print(f"tables: {sorted(tables)}")
        flows_schema = conn.adbc_get_table_schema("flows")
        if flows_schema.field("domain").type != pa.string():
            fail(f"flows.domain is {flows_schema.field('domain').type}, want string (Utf8)")

        with conn.cursor() as cur:
            # The boot_phone_home rule, compared with the collector's result.
            cur.execute(rule_sql)
            table = cur.fetch_arrow_table()
            if table.column_names != header:
                fail(f"rule columns {table.column_names} != {header}")
            for field in table.schema:
                if pa.types.is_string_view(field.type) or pa.types.is_large_string(field.type):
                    fail(f"column {field.name} is {field.type}, want string (Utf8)")
            got = rows_as_text(table)
            if len(got) != len(expected_rows) or not got:
                fail(f"rule rows: {len(got)} here, {len(expected_rows)} embedded")
            for g, e in zip(got, expected_rows):
                # Keys and counts exactly; floats to the CSV's precision.
                for gv, ev in zip(g, e):
                    if gv != ev and not (_close(gv, ev)):
                        fail(f"rule row {g} != {e}")
            print(f"boot_phone_home: {len(got)} rows, equal to the embedded result")

            # A prepared statement with a parameter.
            cur.execute("SELECT count(*) AS n FROM flows WHERE model = $1", parameters=(model,))
            (n,) = cur.fetchone()
            if str(n) != expected_count:
                fail(f"prepared count for {model!r}: {n}, want {expected_count}")
            print(f"prepared statement: {n} flows of {model}")

            # Writes are refused.
            try:
                cur.execute("DROP TABLE flows")
                cur.fetchall()
            except Exception as e:  # the driver raises its own DB-API error classes
                if "read-only" not in str(e):
                    fail(f"DROP TABLE refused without saying why: {e}")
                print("DROP TABLE: refused (read-only)")
            else:
                fail("DROP TABLE was accepted")
    print("adbc: ok")


def _close(a, b):
    try:
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))
    except ValueError:
        return False


if __name__ == "__main__":
    main()
