#!/usr/bin/env bash
# Checks the agent's Debian package (`make deb`): unpacked, every file is in
# place, the configuration and its environment file are conffiles, the
# binary runs, the man pages read, and systemd-analyze verify finds nothing
# wrong with the unit.
set -euo pipefail
deb=${1:?usage: check-deb.sh PACKAGE.deb}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "deb-check: $*" >&2; exit 1; }

dpkg-deb -x "$deb" "$dir/root"
dpkg-deb -e "$deb" "$dir/control"
root=$dir/root
for f in usr/bin/leakwatch-agent etc/leakwatch-agent/agent.toml etc/default/leakwatch-agent \
         lib/systemd/system/leakwatch-agent.service usr/share/bash-completion/completions/leakwatch-agent \
         usr/share/zsh/vendor-completions/_leakwatch-agent usr/share/fish/vendor_completions.d/leakwatch-agent.fish; do
  [ -e "$root/$f" ] || fail "$f is not in the package"
done
for page in leakwatch-agent leakwatch-agent-run leakwatch-agent-import leakwatch-agent-devices leakwatch-agent-label; do
  ls "$root/usr/share/man/man1/$page.1"* >/dev/null 2>&1 || fail "man page $page(1) is not in the package"
done
for conf in /etc/leakwatch-agent/agent.toml /etc/default/leakwatch-agent; do
  grep -qx "$conf" "$dir/control/conffiles" || fail "$conf is not a conffile"
done
"$root/usr/bin/leakwatch-agent" --version >/dev/null || fail "the packaged binary does not run"
"$root/usr/bin/leakwatch-agent" init --config "$dir/agent.toml" >/dev/null
cmp -s "$dir/agent.toml" "$root/etc/leakwatch-agent/agent.toml" || fail "the packaged agent.toml is not what init writes"
unit=$root/lib/systemd/system/leakwatch-agent.service
grep -q '^Type=notify$' "$unit" && grep -q '^WatchdogSec=' "$unit" || fail "the unit is not Type=notify with a watchdog"
# systemd-analyze verify looks for ExecStart's binary on this machine: point
# the unit at the unpacked one for the check.
sed "s|^ExecStart=/usr/bin/leakwatch-agent|ExecStart=$root/usr/bin/leakwatch-agent|" "$unit" > "$dir/leakwatch-agent.service"
systemd-analyze verify "$dir/leakwatch-agent.service" || fail "systemd-analyze verify refused the unit"
echo "deb-check: $(basename "$deb"): $(find "$root" -type f | wc -l) files, conffiles, man pages, completions; the unit verifies"
