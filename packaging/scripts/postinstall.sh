#!/bin/sh
# deb: configure [OLD-VERSION]; rpm: 1 on install, 2 on upgrade.
set -e
case "$1" in
configure) upgrade=${2:+yes} ;;
1) upgrade= ;;
2) upgrade=yes ;;
*) exit 0 ;;
esac

# The tokens ns.yaml names, made once so that an NS starts without editing. On an agent
# or a site server registering with a central NS, put that NS's token in its place.
umask 077
for name in site_server agent admin; do
	f=/etc/siteserver/$name.token
	[ -e "$f" ] && continue
	od -An -N24 -tx1 /dev/urandom | tr -d ' \n' >"$f.new"
	echo >>"$f.new"
	chown root:siteserver "$f.new"
	chmod 0640 "$f.new"
	mv "$f.new" "$f"
done

if [ -z "$upgrade" ]; then
	echo "siteserver: choose this computer's role and start it: systemctl enable --now siteserver-serve (or siteserver-ns, siteserver-agent); configs are in /etc/siteserver"
fi
[ -d /run/systemd/system ] || exit 0
systemctl daemon-reload || true
[ -n "$upgrade" ] || exit 0
systemctl try-restart siteserver-ns.service siteserver-serve.service || true
# An agent job that upgrades this package runs in the agent: restarting the agent would
# end the upgrade. A later task of the job can restart it.
if [ -n "${SITESERVER_INSTANCE_ID:-}" ]; then
	echo "siteserver: upgraded by a siteserver job: siteserver-agent runs the new version once restarted"
else
	systemctl try-restart siteserver-agent.service || true
fi
