# Sourced by monk's scripts: settles which PostgreSQL they work with.
#   PG_CONFIG  as given; else the newest PostgreSQL installed from Debian's packages;
#              else the major this Debian release packages (to be installed by test/setup.sh)
#   PG_MAJOR   its major version (from pg_config, or from the path while not installed)
#   PGBIN      its bin directory
monk_release_major()
{
	local codename=""
	[ -r /etc/os-release ] && codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
	case $codename in
		bookworm) echo 15 ;;
		trixie) echo 17 ;;
		forky) echo 18 ;;
		*) echo "" ;;
	esac
}

if [ -z "${PG_CONFIG:-}" ]; then
	# the newest installed; a glob, not ls: with none installed yet (a bare
	# machine), ls would fail and end a script run with set -e -o pipefail
	PG_CONFIG=""
	monk_newest=0
	for monk_candidate in /usr/lib/postgresql/*/bin/pg_config; do
		[ -x "$monk_candidate" ] || continue
		monk_n=$(printf '%s\n' "$monk_candidate" | sed -nE 's|^/usr/lib/postgresql/([0-9]+)/bin/pg_config$|\1|p')
		if [ -n "$monk_n" ] && [ "$monk_n" -gt "$monk_newest" ]; then
			monk_newest=$monk_n
			PG_CONFIG=$monk_candidate
		fi
	done
	unset monk_candidate monk_newest monk_n
	if [ -z "$PG_CONFIG" ]; then
		PG_MAJOR=$(monk_release_major)
		[ -n "$PG_MAJOR" ] || { echo "no PostgreSQL is installed, and this system is no Debian release monk knows (12, 13, testing): install PostgreSQL 15 or later and set PG_CONFIG=/usr/lib/postgresql/NN/bin/pg_config" >&2; exit 1; }
		PG_CONFIG=/usr/lib/postgresql/$PG_MAJOR/bin/pg_config
	fi
fi
if [ -x "$PG_CONFIG" ]; then
	PG_MAJOR=$("$PG_CONFIG" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
	PGBIN=$("$PG_CONFIG" --bindir)
else
	PG_MAJOR=$(printf '%s\n' "$PG_CONFIG" | sed -nE 's|^.*/postgresql/([0-9]+)/bin/pg_config$|\1|p')
	[ -n "$PG_MAJOR" ] || { echo "PG_CONFIG=$PG_CONFIG does not exist and names no major (/usr/lib/postgresql/NN/bin/pg_config)" >&2; exit 1; }
	PGBIN=$(dirname "$PG_CONFIG")
fi
export PG_CONFIG PG_MAJOR PGBIN
