#!/usr/bin/env bash
# Capacity: ingest and flush, the six rules on one node and on Ballista
# (two executors on loopback), and a dashboard refresh, at 10 M, 30 M and
# 100 M records (or the sizes given), on this machine. Runs the release
# benchmarks of `make bench` at each size and prints the lines that hold
# the figures of docs/capacity.md; their whole output goes to
# $BENCH_OUT (default target/bench/capacity).
# Usage: benches/capacity.sh [RECORDS ...]
#   (make bench-deps first: the dashboard part needs wrk)
set -euo pipefail

sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(10000000 30000000 100000000)
target="${CARGO_TARGET_DIR:-target}"
out="${BENCH_OUT:-$target/bench/capacity}"
mkdir -p "$out"
bench() { cargo bench --locked --features leakwatch/ballista -p leakwatch --bench "$@"; }

# Built once, before anything is timed.
bench ingest --no-run >/dev/null 2>&1
bench rules --no-run >/dev/null 2>&1
bench dashboard --no-run >/dev/null 2>&1

for n in "${sizes[@]}"; do
  echo "== $n records"
  # Ingest at full load for as many seconds as a million records a second
  # takes, then at half load, each followed by the flush of the rest.
  BENCH_SECS=$((n / 1000000)) bench ingest >"$out/ingest-$n.txt" 2>&1
  grep -E "sustained ingest|at half that load|flushed meanwhile|with no load" "$out/ingest-$n.txt"
  # The rules once after a warm-up on one node, then on two executors
  # (DuckDB left out).
  (unset BENCH_PYTHON; BENCH_RECORDS=$n BENCH_RUNS=1 BENCH_BALLISTA_RUNS=1 BENCH_BALLISTA_EXECUTORS=2 \
    bench rules >"$out/rules-$n.txt" 2>&1)
  grep -E "^rules:|^  [a-z_]+ +[0-9]" "$out/rules-$n.txt"
  BENCH_DASHBOARD_RECORDS=$n BENCH_SECS=1 bench dashboard >"$out/dashboard-$n.txt" 2>&1
  grep -E "^dashboard:|refreshed in" "$out/dashboard-$n.txt"
done
