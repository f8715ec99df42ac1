#!/usr/bin/env bash
# Print the path of helm, building it into .local/bin first if it is not there
# (from source through the Go module proxy: about 3 minutes on 2 cores).
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/go-tool.sh" helm helm.sh/helm/v3/cmd/helm v3.22.0
