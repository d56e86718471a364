# Sourced by the benchmark scripts. `timed CMD...` runs CMD $runs times
# (BENCH_RUNS, default 3), its stdout dropped and its stderr in
# "$dir/last.err", and prints the best wall time in seconds (this
# machine's timings vary from run to run; each tool gets the same chances).
runs="${BENCH_RUNS:-3}"
now() { date +%s%N; }
timed() {
  local start end best=""
  for _ in $(seq "$runs"); do
    start=$(now)
    "$@" >/dev/null 2>"$dir/last.err"
    end=$(now)
    if [ -z "$best" ] || [ $((end - start)) -lt "$best" ]; then best=$((end - start)); fi
  done
  awk -v ns="$best" 'BEGIN { printf "%.3f", ns / 1e9 }'
}
