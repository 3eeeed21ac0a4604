#!/usr/bin/env bash
# Set up a Debian 12 machine for monk: install the Debian packages it needs
# (as root; apt-get update first), then build and install the extension.
# Safe to run again: packages already there are not reinstalled.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PACKAGES="postgresql-15 postgresql-server-dev-15 libcurl4-openssl-dev uuid-dev
          libipc-run-perl libio-socket-ssl-perl postgresql-15-cron nginx-light python3 openssl ca-certificates make gcc"

missing=""
for p in $PACKAGES; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ] || [ "${CI:-}" = "true" ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "setup: missing Debian packages:$missing (run this script as root)" >&2
		exit 1
	fi
	echo "setup: apt-get update && apt-get install$missing"
	apt-get update -qq
	if [ -n "$missing" ]; then
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
	fi
fi

echo "setup: building monk"
make -s PG_CONFIG="$PG_CONFIG" clean >/dev/null
make -s PG_CONFIG="$PG_CONFIG"
if [ -w "$($PG_CONFIG --pkglibdir)" ]; then
	make -s PG_CONFIG="$PG_CONFIG" install
else
	echo "setup: cannot write to $($PG_CONFIG --pkglibdir); run 'make install' as root" >&2
	exit 1
fi
echo "setup: monk installed into $($PG_CONFIG --pkglibdir)"
