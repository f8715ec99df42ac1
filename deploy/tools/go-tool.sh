#!/usr/bin/env bash
# go-tool.sh NAME PACKAGE VERSION: print the path of .local/bin/NAME, building PACKAGE at
# VERSION there first (GOBIN, through the Go module proxy) unless that build is there.
set -euo pipefail

name="$1" package="$2" version="$3"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bin="$root/.local/bin"
tool="$bin/$name"

built_version() {
    go version -m "$tool" 2>/dev/null | awk '$1 == "mod" { print $3 }'
}

if [[ ! -x "$tool" || "$(built_version)" != "$version" ]]; then
    mkdir -p "$bin"
    GOBIN="$bin" GOFLAGS=-buildvcs=false go install "$package@$version" >&2
fi
echo "$tool"
