#!/usr/bin/env bash
# Set up a Debian machine for monk, as root: install the Debian packages that
# building and running monk need (apt-get update first), then build and
# install the extension.
#   bash test/setup.sh           what monk and the demo need (test/demo.sh)
#   bash test/setup.sh --tests   and the test toolchain (test/run-tests.sh)
# The package names follow the major of PG_CONFIG (test/pgconfig.sh):
# PG_CONFIG=/usr/lib/postgresql/17/bin/pg_config installs postgresql-17 and its
# server headers.  Safe to run again: packages already there are not
# reinstalled.
set -euo pipefail
cd "$(dirname "$0")/.."
. test/failures.sh
monk_trap_errors setup
. test/pgconfig.sh

tests=0
case ${1:-} in
	"") ;;
	--tests) tests=1 ;;
	*) echo "usage: bash test/setup.sh [--tests]" >&2; exit 2 ;;
esac

# the server and its headers, libcurl and libuuid, a compiler; the CA bundle that verifies the real
# API's certificate (monk.ca_file empty); python3 runs the local Monk API (test/monk_api.py) of the
# demo and the tests
packages=("postgresql-$PG_MAJOR" "postgresql-server-dev-$PG_MAJOR" libcurl4-openssl-dev uuid-dev make gcc
	ca-certificates python3)
optional=()
if [ $tests -eq 1 ]; then
	# the TAP tests' Perl modules, TLS in test/t/070 (openssl, IO::Socket::SSL), nginx for test/bench
	packages+=(libipc-run-perl libio-socket-ssl-perl nginx-light openssl)
	# only where Debian packages them (their tests are skipped elsewhere): pg_cron (not yet for 19),
	# pg_auto_failover (test/t/170), the Prometheus exporters (test/t/180)
	optional=("postgresql-$PG_MAJOR-cron" "postgresql-$PG_MAJOR-auto-failover" prometheus-postgres-exporter
		prometheus-sql-exporter)
fi
# the service each of these starts when installed on a machine running systemd (the tests start their own)
declare -A service=([nginx-light]=nginx [prometheus-postgres-exporter]=prometheus-postgres-exporter
	[prometheus-sql-exporter]=prometheus-sql-exporter)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"; }
candidate() { apt-cache policy "$1" 2>/dev/null | grep 'Candidate:' | grep -vq '(none)'; }

missing=()
for p in "${packages[@]}" "${optional[@]}"; do
	installed "$p" || missing+=("$p")
done
install=()
if [ ${#missing[@]} -gt 0 ] || [ "${CI:-}" = "true" ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "setup: missing Debian packages: ${missing[*]} (run this script as root)" >&2
		exit 1
	fi
	echo "setup: apt-get update"
	apt-get update -qq || {
		echo "setup: apt-get update failed (above): check the network and the mirrors in /etc/apt/sources.list*, then run again" >&2
		exit 1
	}
	# what this Debian release does not package: an optional package's test is skipped; without a
	# package monk needs, the setup ends here
	for p in "${missing[@]}"; do
		if candidate "$p"; then
			install+=("$p")
		elif [[ " ${optional[*]} " == *" $p "* ]]; then
			echo "setup: Debian has no $p here: its test will be skipped"
		else
			echo "setup: apt knows no package $p here (apt-cache policy $p: no candidate)." >&2
			echo "setup: if apt-get update could not fetch its lists (above), mend the network or the mirrors in /etc/apt/sources.list* and run again; else this release packages no PostgreSQL $PG_MAJOR: name one it does with PG_CONFIG=/usr/lib/postgresql/NN/bin/pg_config (19: add Debian experimental to apt's sources first)" >&2
			exit 1
		fi
	done
fi
if [ ${#install[@]} -gt 0 ]; then
	echo "setup: installing Debian packages: ${install[*]} (a minute or two on a new machine)"
	# one line per 25 packages set up, so that a long install is not silent; apt's own output is
	# shown when it fails
	log=$(mktemp "${TMPDIR:-/tmp}/monk-setup.XXXXXX")
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${install[@]}" 2>&1 | tee "$log" |
		awk '/^Setting up / { n++; if (n % 25 == 0) { printf "setup: %d packages set up\n", n; fflush() } }
		     END { printf "setup: %d packages set up\n", n }' || {
		tail -n 25 "$log" >&2
		echo "setup: apt-get install failed (above; all its output is in $log); once that is mended (a dpkg lock held by another apt, disk space, 'apt-get -f install'), run again" >&2
		exit 1
	}
	rm -f "$log"
	# a service the install started is stopped: the tests start their own, and nginx would hold port 80
	if [ -d /run/systemd/system ]; then
		for p in "${install[@]}"; do
			unit=${service[$p]:-}
			[ -n "$unit" ] || continue
			systemctl is-enabled --quiet "$unit" || systemctl is-active --quiet "$unit" || continue
			if systemctl disable --now --quiet "$unit"; then
				echo "setup: stopped and disabled the $unit service, started by installing $p (the tests start their own)"
			else
				echo "setup: could not stop the $unit service, started by installing $p: systemctl disable --now $unit" >&2
			fi
		done
	fi
fi

echo "setup: building monk for PostgreSQL $PG_MAJOR ($PG_CONFIG)"
monk_hint="the compiler's errors are above; monk builds with Debian's gcc against PostgreSQL 15 to 19"
make -s PG_CONFIG="$PG_CONFIG" clean >/dev/null
make -s PG_CONFIG="$PG_CONFIG"
if [ ! -w "$("$PG_CONFIG" --pkglibdir)" ]; then
	echo "setup: cannot write to $("$PG_CONFIG" --pkglibdir); run 'make install' as root" >&2
	exit 1
fi
monk_hint="make install could not copy monk into PostgreSQL's directories (errors above)"
make -s PG_CONFIG="$PG_CONFIG" install
echo "setup: monk installed into $("$PG_CONFIG" --pkglibdir)"
