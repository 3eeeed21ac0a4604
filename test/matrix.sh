#!/usr/bin/env bash
# Run one of the README's two commands as the first thing on a brand-new
# Debian machine: in a fresh copy of a bare Debian root (debootstrap
# --variant=minbase, nothing installed since: test/roots.sh), as root, with an
# empty environment (no locale).
#
#   bash test/matrix.sh 17          the suite: bash test/run-tests.sh, on Debian 13
#   bash test/matrix.sh 15 demo     the demo: bash test/demo.sh, on Debian 12
#   bash test/matrix.sh 18 base     only make the bare root (a minute or two, the first time)
#
# 15 is Debian 12 (bookworm), 17 Debian 13 (trixie), 18 Debian testing
# (forky): there the command runs as the README writes it, without PG_CONFIG
# (test/pgconfig.sh picks the release's own PostgreSQL).  19 is in Debian
# experimental only: it runs on unstable (sid) with experimental added to the
# copy's apt sources and PG_CONFIG naming 19, as the README says.  16 is not
# packaged by Debian.  CI, MONK_SANITIZE and PROVE_TESTS are passed on.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { printf 'matrix: %s\n' "$*" >&2; exit 1; }

usage="usage: bash test/matrix.sh MAJOR [tests|demo|base]   (MAJOR: 15, 17, 18 or 19)"
[ $# -ge 1 ] && [ $# -le 2 ] || die "$usage"
major=$1
what=${2:-tests}
experimental=""
case $major in
	15) suite=bookworm ;;
	17) suite=trixie ;;
	18) suite=forky ;;
	19) suite=sid; experimental=experimental ;;
	16) die "PostgreSQL 16 is not packaged by any Debian release: monk builds against it but it is not tested here" ;;
	*) die "no Debian release packages PostgreSQL $major (15, 17, 18 or 19)" ;;
esac
case $what in
	tests) command="bash test/run-tests.sh" ;;
	demo) command="bash test/demo.sh" ;;
	base) ;;
	*) die "$usage" ;;
esac
[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, chroot and mounts need it)"
. test/roots.sh

if [ "$what" = base ]; then
	roots_base "$suite"
	exit 0
fi
roots_copy "$suite"
env=(${CI:+CI="$CI"} ${MONK_SANITIZE:+MONK_SANITIZE="$MONK_SANITIZE"} ${PROVE_TESTS:+PROVE_TESTS="$PROVE_TESTS"})
if [ -n "$experimental" ]; then
	mirror=$(apt_mirror)
	echo "deb $mirror $experimental main" >> "$copy/etc/apt/sources.list"
	# PostgreSQL $major and the libpq it needs come from experimental, all else from $suite
	cat > "$copy/etc/apt/preferences.d/monk-postgresql" <<-EOF
		Package: postgresql-$major postgresql-client-$major postgresql-server-dev-$major postgresql-$major-* libpq5 libpq-dev
		Pin: release a=$experimental
		Pin-Priority: 500
	EOF
	env+=(PG_CONFIG="/usr/lib/postgresql/$major/bin/pg_config")
fi
echo "matrix: PostgreSQL $major on a bare Debian $suite${experimental:+ + $experimental} ($copy): ${env[*]+${env[*]} }$command"
roots_run "$command" "${env[@]}"
