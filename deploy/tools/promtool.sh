#!/usr/bin/env bash
# Print the path of promtool, extracting it into .local/bin first if it is not there: from
# Debian's prometheus package, downloaded (not installed: no service, no dependencies).
# Building it with `go install` instead took longer than 10 minutes on 2 cores.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bin="$root/.local/bin"
tool="$bin/promtool"

if [[ ! -x "$tool" ]]; then
    mkdir -p "$bin"
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    chmod 777 "$work"  # apt downloads as its own user where it can
    (cd "$work" && { apt-get download -q prometheus || { apt-get update -qq && apt-get download -q prometheus; }; }) >&2
    dpkg-deb --fsys-tarfile "$work"/prometheus_*.deb | tar -x -C "$work" ./usr/bin/promtool
    mv "$work/usr/bin/promtool" "$tool"
fi
echo "$tool"
