#!/bin/sh
# The package version for a `git describe --always --dirty` string, one that sorts the
# same in dpkg and rpm: tag v1.2.3 gives 1.2.3, v1.2.3-rc1 gives 1.2.3~rc1 (before 1.2.3),
# five commits past a tag 1.2.3+git5.gabc1234, a commit with no tag before it
# 0.0.0+gabc1234; a dirty tree adds .dirty.
set -eu
v=${1#v}
suffix=
case "$v" in *-dirty) v=${v%-dirty} suffix=dirty ;; esac
case "$v" in
*-[0-9]*-g[0-9a-f]*)
	hash=${v##*-g} v=${v%-g*}
	n=${v##*-} v=${v%-*}
	suffix="git$n.g$hash${suffix:+.$suffix}"
	;;
esac
case "$v" in
[0-9]*.[0-9]*) ;;
"" | *[!0-9a-f]*) suffix="$v${suffix:+.$suffix}" v=0.0.0 ;;
*) suffix="g$v${suffix:+.$suffix}" v=0.0.0 ;;
esac
echo "$(echo "$v" | tr - '~')${suffix:++$suffix}"
