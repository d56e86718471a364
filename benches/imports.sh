#!/usr/bin/env bash
# Import throughput of other tools' files: a Pi-hole query database of
# 10 M queries with FTL's version 21 schema (generated once), and Zeek's
# wrccdc 2018 dns.log.gz (53,615 queries, read 20 times in one run), when
# the shared test data is beside the repository.
# Goals: Pi-hole >= 500,000 queries/s, Zeek >= 1,000,000 records/s.
# Usage: benches/imports.sh   (make bench builds the agent first)
set -euo pipefail

target="${CARGO_TARGET_DIR:-target}"
agent="${AGENT:-$target/agent/leakwatch-agent}"
dir="${BENCH_DIR:-$target/bench/imports}"
queries="${BENCH_PIHOLE_QUERIES:-10000000}"
python="${BENCH_PYTHON:-python3}"
db="$dir/pihole-$queries.db"
mkdir -p "$dir"

if [ ! -f "$db" ]; then
  echo "generating a Pi-hole database of $queries queries in $dir (once)"
  "$python" "$(dirname "$0")/pihole_db.py" "$db.tmp" "$queries"
  mv "$db.tmp" "$db"
fi

. "$(dirname "$0")/timed.sh"

pihole_s=$(timed "$agent" import --from pihole --dry-run --format jsonl --state-dir "$dir/state" "$db")
read_queries=$(grep -oE '[0-9]+ queries read' "$dir/last.err" | grep -oE '^[0-9]+')
records=$(grep -oE '[0-9]+ records;' "$dir/last.err" | grep -oE '^[0-9]+')
awk -v q="$read_queries" -v r="$records" -v s="$pihole_s" -v runs="$runs" 'BEGIN {
  printf "Pi-hole import: %d queries (FTL v21 schema) into %d records, best of %d runs\n", q, r, runs
  printf "  %-44s %8.3f s %12.0f queries/s (goal >= 500000)\n", "leakwatch-agent import --from pihole --dry-run", s, q / s
}'

zeek="${LEAKWATCH_EXTERNAL_TESTDATA:-$(dirname "$0")/../../shared/testdata/external}/imports/zeek/wrccdc2018/dns.log.gz"
if [ -f "$zeek" ]; then
  copies=()
  for _ in $(seq 20); do copies+=("$zeek"); done
  zeek_s=$(timed "$agent" import --from zeek --dry-run --format jsonl --state-dir "$dir/state" "${copies[@]}")
  rows=$(grep -oE '[0-9]+ log rows read' "$dir/last.err" | grep -oE '^[0-9]+' | awk '{ s += $1 } END { print s }')
  awk -v n="$rows" -v s="$zeek_s" -v runs="$runs" 'BEGIN {
    printf "Zeek import: wrccdc 2018 dns.log.gz read 20 times, %d records, best of %d runs\n", n, runs
    printf "  %-44s %8.3f s %12.0f records/s (goal >= 1000000)\n", "leakwatch-agent import --from zeek --dry-run", s, n / s
  }'
else
  echo "Zeek import: skipped ($zeek is not there: the shared test data)"
fi
