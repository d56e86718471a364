#!/usr/bin/env bash
# Capture import throughput of the agent, in the same run and on the same
# file as tshark (reading SNI and DNS query names) and tcpdump (a raw copy).
# Usage: benches/import.sh   (make bench builds the release agent first)
set -euo pipefail

target="${CARGO_TARGET_DIR:-target}"
agent="${AGENT:-$target/agent/leakwatch-agent}"
dir="${BENCH_DIR:-$target/bench/import}"
devices="${BENCH_DEVICES:-4800}"
file="$dir/lan.pcap"

if [ ! -f "$file" ]; then
  echo "generating a LAN capture of $devices simulated devices in $dir (once)"
  rm -rf "$dir"
  "$agent" simulate --out "$dir" --devices "$devices" --lan >/dev/null 2>&1
  find "$dir" -name 'sim-*.pcap' -delete
fi

. "$(dirname "$0")/timed.sh"

bytes=$(stat -c %s "$file")
ours=$(timed "$agent" import --lan --dry-run --format jsonl --state-dir "$dir/state" "$file")
packets=$(grep -oE '^[^:]+: [0-9]+ packets read' "$dir/last.err" | grep -oE '[0-9]+ packets' | grep -oE '[0-9]+')
tshark_s=$(timed tshark -r "$file" -T fields -e tls.handshake.extensions_server_name -e dns.qry.name)
tcpdump_s=$(timed tcpdump -r "$file" -w /dev/null)

awk -v runs="$runs" -v p="$packets" -v b="$bytes" -v o="$ours" -v t="$tshark_s" -v d="$tcpdump_s" 'BEGIN {
  printf "capture import: %d packets, %.1f MB (simulated LAN capture), best of %d runs each\n", p, b / 1e6, runs
  printf "  %-44s %8.3f s %12.0f packets/s %8.1f MB/s\n", "leakwatch-agent import --lan --dry-run", o, p / o, b / 1e6 / o
  printf "  %-44s %8.3f s %12.0f packets/s %8.1f MB/s\n", "tshark -T fields (SNI, DNS query names)", t, p / t, b / 1e6 / t
  printf "  %-44s %8.3f s %12.0f packets/s %8.1f MB/s\n", "tcpdump -r -w /dev/null (raw copy)", d, p / d, b / 1e6 / d
  printf "  leakwatch vs tshark: %.1fx faster (goal >= 100x); leakwatch time / tcpdump raw copy time: %.2f (goal <= 2)\n", t / o, o / d
}'
