#!/bin/sh
# The siteserver system user and group, made before the files are unpacked: the configs
# (root:siteserver) and the data directories (siteserver's) are unpacked with them.
# The user is kept on removal, as files it owns may remain.
set -e
if ! getent group siteserver >/dev/null; then
	groupadd --system siteserver
fi
if ! getent passwd siteserver >/dev/null; then
	useradd --system --gid siteserver --home-dir /var/lib/siteserver --no-create-home \
		--shell /usr/sbin/nologin --comment "siteserver site services" siteserver
fi
