#!/usr/bin/env bash
# Installs what the tests and benchmarks need on a Debian machine. Safe to run again.
set -euo pipefail
need=()
command -v gcc >/dev/null || need+=(gcc)          # go test -race needs cgo
command -v ip >/dev/null || need+=(iproute2)      # network namespace tests
if ((${#need[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing ${need[*]}; run as root or install them" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
go mod download
