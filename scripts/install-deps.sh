#!/usr/bin/env bash
# Installs what the tests and benchmarks need on a Debian machine. Safe to run again.
set -euo pipefail
need=()
command -v gcc >/dev/null || need+=(gcc)          # go test -race needs cgo
command -v promtool >/dev/null || need+=(prometheus) # promtool checks monitoring/alerts.yaml
command -v ip >/dev/null || need+=(iproute2)      # network namespace tests
command -v nginx >/dev/null || need+=(nginx-light) # package benchmarks' peer
command -v tftp >/dev/null || need+=(tftp-hpa)     # real TFTP client in the netboot tests
command -v atftp >/dev/null || need+=(atftp)
command -v in.tftpd >/dev/null || need+=(tftpd-hpa) # TFTP benchmark peer
command -v dnsmasq >/dev/null || need+=(dnsmasq-base) # the site's DHCP server in netns tests
command -v udhcpc >/dev/null || need+=(udhcpc)     # a real DHCP client in netns tests
command -v curl >/dev/null || need+=(curl)
command -v rpm >/dev/null || need+=(rpm)           # reads the .rpm in the packaging test
# systemd-analyze verifies the packaged units. Installing systemd in a container starts
# nothing: without systemd as PID 1 its scripts only place files.
command -v systemd-analyze >/dev/null || need+=(systemd)
if ((${#need[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing ${need[*]}; run as root or install them" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}"
  # tftpd-hpa's package starts a daemon on port 69; tests and benchmarks run their own.
  if command -v systemctl >/dev/null; then systemctl stop tftpd-hpa 2>/dev/null || true; fi
  pkill -x in.tftpd 2>/dev/null || true
  # prometheus's package starts a server on :9090 where systemd runs; the tests need only
  # its promtool.
  if [[ " ${need[*]} " == *" prometheus "* ]]; then
    if command -v systemctl >/dev/null; then systemctl disable --now prometheus 2>/dev/null || true; fi
    if command -v service >/dev/null; then service prometheus stop >/dev/null 2>&1 || true; fi
  fi
fi
go mod download
# nfpm, built once here so that `make package` and its test only link it.
CGO_ENABLED=0 go -C packaging/tools build -o /dev/null github.com/goreleaser/nfpm/v2/cmd/nfpm
