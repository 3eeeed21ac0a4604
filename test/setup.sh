#!/usr/bin/env bash
# Set up a Debian machine for monk: install the Debian packages it needs for
# the PostgreSQL that PG_CONFIG names (as root; apt-get update first), then
# build and install the extension.  The package names follow the major of
# PG_CONFIG (test/pgconfig.sh): PG_CONFIG=/usr/lib/postgresql/17/bin/pg_config
# installs postgresql-17 and its server headers.  Safe to run again: packages
# already there are not reinstalled.
set -euo pipefail
cd "$(dirname "$0")/.."
. test/pgconfig.sh

PACKAGES="postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR libcurl4-openssl-dev uuid-dev
          libipc-run-perl libio-socket-ssl-perl nginx-light python3 openssl ca-certificates make gcc"
# pg_cron is optional: Debian does not package it for every major (not yet for 19)
CRON_PACKAGE=postgresql-$PG_MAJOR-cron
# so is pg_auto_failover (test/t/170_auto_failover.pl): the monitor's extension,
# which brings pg_autoctl (pg-auto-failover-cli)
AUTOFAILOVER_PACKAGE=postgresql-$PG_MAJOR-auto-failover

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"; }

missing=""
for p in $PACKAGES $CRON_PACKAGE $AUTOFAILOVER_PACKAGE; do
	installed "$p" || missing="$missing $p"
done
if [ -n "$missing" ] || [ "${CI:-}" = "true" ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "setup: missing Debian packages:$missing (run this script as root)" >&2
		exit 1
	fi
	echo "setup: apt-get update"
	apt-get update -qq
	if [[ " $missing " == *" $CRON_PACKAGE "* ]] && [ -z "$(apt-cache policy "$CRON_PACKAGE" 2>/dev/null | grep 'Candidate:' | grep -v '(none)')" ]; then
		echo "setup: Debian has no $CRON_PACKAGE here: the pg_cron test will be skipped"
		missing=${missing/ $CRON_PACKAGE/}
	fi
	if [[ " $missing " == *" $AUTOFAILOVER_PACKAGE "* ]] && [ -z "$(apt-cache policy "$AUTOFAILOVER_PACKAGE" 2>/dev/null | grep 'Candidate:' | grep -v '(none)')" ]; then
		echo "setup: Debian has no $AUTOFAILOVER_PACKAGE here: the pg_auto_failover test will be skipped"
		missing=${missing/ $AUTOFAILOVER_PACKAGE/}
	fi
	if [ -n "$missing" ]; then
		echo "setup: installing Debian packages:$missing (a minute or two on a new machine)"
		# one line per 25 packages set up, so that a long install is not silent
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing |
			awk '/^Setting up / { n++; if (n % 25 == 0) { printf "setup: %d packages set up\n", n; fflush() } }
			     END { printf "setup: %d packages set up\n", n }'
	fi
fi

echo "setup: building monk for PostgreSQL $PG_MAJOR ($PG_CONFIG)"
make -s PG_CONFIG="$PG_CONFIG" clean >/dev/null
make -s PG_CONFIG="$PG_CONFIG"
if [ -w "$("$PG_CONFIG" --pkglibdir)" ]; then
	make -s PG_CONFIG="$PG_CONFIG" install
else
	echo "setup: cannot write to $("$PG_CONFIG" --pkglibdir); run 'make install' as root" >&2
	exit 1
fi
echo "setup: monk installed into $("$PG_CONFIG" --pkglibdir)"
