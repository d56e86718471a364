#!/usr/bin/env bash
# The agent's footprint: release binary size, peak RSS while importing a
# ~100 MB capture, and peak RSS and CPU share while running live at about
# 1,000 new connections a minute (a simulated LAN capture replayed as a
# PCAPdroid UDP stream, timestamps rewritten to now).
# Goals: binary <= 10 MB, RSS <= 20 MB, < 1% of a core at that rate.
# Usage: benches/agent.sh   (make bench builds the agent with the `agent`
# profile, release without debug info, stripped, as shipped to volunteers)
set -euo pipefail

target="${CARGO_TARGET_DIR:-target}"
agent="${AGENT:-$target/agent/leakwatch-agent}"
dir="${BENCH_DIR:-$target/bench/agent}"
devices="${BENCH_AGENT_DEVICES:-490}"
live_secs="${BENCH_LIVE_SECS:-60}"
file="$dir/lan.pcap"
mkdir -p "$dir"

if [ ! -f "$file" ]; then
  echo "generating a LAN capture of $devices simulated devices in $dir (once)"
  "$agent" simulate --out "$dir" --devices "$devices" --lan >/dev/null 2>&1
  find "$dir" -name 'sim-*.pcap' -delete
fi

size=$(stat -c %s "$agent")

# Import: peak RSS (KiB) and times from /usr/bin/time.
/usr/bin/time -f '%M %e %U %S' -o "$dir/import.time" \
  "$agent" import --lan --dry-run --format jsonl --state-dir "$dir/state" "$file" >/dev/null 2>"$dir/import.err"
read -r import_kib import_s import_user import_sys <"$dir/import.time"
# The same file as one device's capture (the usual volunteer case).
/usr/bin/time -f '%M %e' -o "$dir/import1.time" \
  "$agent" import --dry-run --format jsonl --state-dir "$dir/state" "$file" >/dev/null 2>"$dir/import1.err"
read -r single_kib single_s <"$dir/import1.time"

# Live: run on a UDP port, replay the capture at ~1,000 connections/min.
rm -rf "$dir/live-state"
"$agent" run --pcapdroid-udp 127.0.0.1:0 --dry-run --report-interval 10 --state-dir "$dir/live-state" \
  >/dev/null 2>"$dir/run.err" &
run_pid=$!
addr=""
for _ in $(seq 100); do
  addr=$(grep -oE 'udp://[0-9.:]+' "$dir/run.err" | head -1 | sed 's|udp://||') || true
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { echo "run did not start:"; cat "$dir/run.err"; kill "$run_pid"; exit 1; }
"$agent" replay "$file" --to "$addr" --flows-per-minute 1000 --times 0 2>"$dir/replay.err" &
replay_pid=$!
ticks() { awk '{ print $14 + $15 }' "/proc/$run_pid/stat"; }
hz=$(getconf CLK_TCK)
sleep 5 # warm-up
t0=$(ticks); s0=$(date +%s%N)
sleep "$live_secs"
t1=$(ticks); s1=$(date +%s%N)
live_kib=$(awk '/VmHWM/ { print $2 }' "/proc/$run_pid/status")
kill "$replay_pid" 2>/dev/null || true
kill -TERM "$run_pid"
wait "$run_pid" || true
wait "$replay_pid" 2>/dev/null || true
frames=$(grep -oE 'captured [0-9]+ frames' "$dir/run.err" | grep -oE '[0-9]+' || echo 0)
rate_line=$(grep -oE 'replaying at [0-9.]+x' "$dir/replay.err" || true)

awk -v size="$size" -v ik="$import_kib" -v is="$import_s" -v iu="$import_user" -v isys="$import_sys" \
    -v mb="$(stat -c %s "$file")" -v lk="$live_kib" -v dt="$((t1 - t0))" -v hz="$hz" -v ns="$((s1 - s0))" \
    -v frames="$frames" -v secs="$live_secs" -v rate="$rate_line" -v sk="$single_kib" -v ss="$single_s" 'BEGIN {
  printf "agent footprint\n"
  printf "  agent binary (profile agent: release, stripped): %.1f MB (goal <= 10 MB)\n", size / 1e6
  printf "  import of a %.0f MB capture as one device: peak RSS %.1f MB (goal <= 20 MB), %.2f s\n", mb / 1e6, sk / 1024, ss
  printf "  import of the same capture in LAN mode (--lan): peak RSS %.1f MB (goal <= 20 MB), %.2f s (%.2f s user, %.2f s sys)\n", ik / 1024, is, iu, isys
  printf "  live run at ~1,000 connections/min for %d s (%s, %d frames): peak RSS %.1f MB (goal <= 20 MB), CPU %.2f%% of a core (goal < 1%%)\n", secs, rate, frames, lk / 1024, 100 * dt / hz / (ns / 1e9)
}'
