#!/usr/bin/env bash
# Rebuilds agent/data/oui.tsv.gz, the IEEE registry table the agent uses to
# name the vendor of an unlabelled LAN device: one "PREFIX<TAB>Organization"
# line per MA-L, MA-M, MA-S, CID and IAB assignment, sorted by prefix.
# Usage: scripts/update-oui.sh [DIR]   (DIR holding the IEEE CSVs; default:
# download them from standards-oui.ieee.org)
set -euo pipefail
out="$(cd "$(dirname "$0")/.." && pwd)/agent/data/oui.tsv.gz"
src="${1:-}"
if [ -z "$src" ]; then
  src=$(mktemp -d)
  base=https://standards-oui.ieee.org
  curl -fsSL "$base/oui/oui.csv" -o "$src/oui.csv"
  curl -fsSL "$base/oui28/mam.csv" -o "$src/oui28.csv"
  curl -fsSL "$base/oui36/oui36.csv" -o "$src/oui36.csv"
  curl -fsSL "$base/cid/cid.csv" -o "$src/cid.csv"
  curl -fsSL "$base/iab/iab.csv" -o "$src/iab.csv"
fi
python3 - "$src" <<'PY' | gzip -9n >"$out"
import csv, os, sys
rows = {}
for name in ("oui", "oui28", "oui36", "cid", "iab"):
    path = os.path.join(sys.argv[1], name + ".csv")
    if not os.path.exists(path):
        continue
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            prefix = r["Assignment"].strip().upper()
            org = " ".join(r["Organization Name"].split())
            if prefix and org:
                rows[prefix] = org
for prefix in sorted(rows):
    print(f"{prefix}\t{rows[prefix]}")
PY
echo "wrote $out ($(zcat "$out" | wc -l) assignments)"
