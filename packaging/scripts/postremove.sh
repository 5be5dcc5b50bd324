#!/bin/sh
# deb: remove | purge | upgrade NEW-VERSION | ...; rpm: 0 on erase, 1 on upgrade.
set -e
case "$1" in
remove | 0)
	if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
	;;
purge)
	# The data (keys, CA, store, credentials) and the tokens made at install. Files an
	# administrator added to /etc/siteserver stay, and so does the directory then.
	rm -rf /var/lib/siteserver /var/lib/siteserver-ns /var/lib/siteserver-agent
	rm -f /etc/siteserver/site_server.token /etc/siteserver/agent.token /etc/siteserver/admin.token
	rmdir /etc/siteserver 2>/dev/null || true
	;;
esac
