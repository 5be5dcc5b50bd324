#!/bin/sh
# deb: remove | upgrade NEW-VERSION | ...; rpm: 0 on erase, 1 on upgrade.
set -e
case "$1" in
remove | 0) ;;
*) exit 0 ;;
esac
units="siteserver-ns.service siteserver-serve.service siteserver-agent.service"
command -v systemctl >/dev/null || exit 0
if [ -d /run/systemd/system ]; then
	systemctl stop $units || true
fi
# disable works without a running systemd: it removes the links enable made.
systemctl --no-reload disable $units >/dev/null 2>&1 || true
