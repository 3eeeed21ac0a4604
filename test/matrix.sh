#!/usr/bin/env bash
# Run monk's whole suite (test/run-tests.sh) on another PostgreSQL major, in a
# brand-new Debian root made with debootstrap: 17 on Debian 13 (trixie), 18 on
# Debian testing (forky), 19 from Debian experimental (on unstable), 15 on
# Debian 12 (bookworm).  16 is not packaged by Debian.
#
#   bash test/matrix.sh 18          as root; builds the root the first time
#
# The root is kept under /var/tmp/monk-roots (MONK_ROOTS) and reused: only the
# first run pays for debootstrap.  A root is made in a scratch folder and
# renamed when complete, so a broken attempt is never reused.  The package
# mirror is the one this machine's own apt sources name.  Inside the root the
# suite runs with an empty environment (no LANG), as on a brand-new machine.
# Whatever still runs inside the root is killed and its mounts are undone on
# exit, also after a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { printf 'matrix: %s\n' "$*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: bash test/matrix.sh MAJOR   (15, 17, 18 or 19)"
major=$1
experimental=""
case $major in
	15) suite=bookworm ;;
	17) suite=trixie ;;
	18) suite=forky ;;
	19) suite=sid; experimental=experimental ;;
	16) die "PostgreSQL 16 is not packaged by any Debian release: monk builds against it but it is not tested here" ;;
	*) die "no Debian release packages PostgreSQL $major (15, 17, 18 or 19)" ;;
esac
[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, chroot and mounts need it)"

# The first Debian mirror named in this machine's apt sources (deb822 or one-line format).
apt_mirror()
{
	local f uri=""
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		uri=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' "$f")
		[ -n "$uri" ] && break
	done
	if [ -z "$uri" ]; then
		for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
			[ -f "$f" ] || continue
			uri=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z+]+:\/\//) { if ($i !~ /security/) print $i; break } }' "$f" | head -n 1)
			[ -n "$uri" ] && break
		done
	fi
	[ -n "$uri" ] || die "no Debian mirror found in /etc/apt/sources.list or /etc/apt/sources.list.d"
	printf '%s\n' "${uri%/}"
}

# Mount what PostgreSQL needs inside the root; undone by release_root.
mounted=()
mount_root()
{
	local root=$1 m
	for m in proc dev dev/pts dev/shm; do
		mkdir -p "$root/$m"
	done
	mount -t proc proc "$root/proc" && mounted+=("$root/proc")
	mount --bind /dev "$root/dev" && mounted+=("$root/dev")
	mount -t devpts -o newinstance,ptmxmode=0666 devpts "$root/dev/pts" && mounted+=("$root/dev/pts")
	mount -t tmpfs -o mode=1777 shm "$root/dev/shm" && mounted+=("$root/dev/shm")
}

# Kill every process whose root is inside the Debian root, then undo the mounts.
release_root()
{
	local root=$1 pid link i
	for _ in 1 2 3 4 5 6 7 8 9 10; do
		local pids=()
		for link in /proc/[0-9]*/root; do
			pid=${link#/proc/}; pid=${pid%/root}
			[ "$(readlink "$link" 2>/dev/null)" = "$root" ] && pids+=("$pid")
		done
		[ ${#pids[@]} -eq 0 ] && break
		kill -9 "${pids[@]}" 2>/dev/null || true
		sleep 0.5
	done
	for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
		umount -l "${mounted[$i]}" 2>/dev/null || true
	done
	mounted=()
}

roots=${MONK_ROOTS:-/var/tmp/monk-roots}
# bump when the recipe below changes, so that old roots are made again
recipe=1
root=$roots/pg$major-$suite
scratch=""
cleanup()
{
	local status=$?
	set +e
	[ -n "$scratch" ] && { release_root "$scratch"; rm -rf "$scratch"; }
	release_root "$root"
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ ! -f "$root/.monk-root-$recipe" ]; then
	command -v debootstrap >/dev/null || {
		echo "matrix: installing debootstrap"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
	}
	mirror=$(apt_mirror)
	rm -rf "$root"
	mkdir -p "$roots"
	scratch=$(mktemp -d "$roots/.pg$major-$suite.XXXXXX")
	chmod 755 "$scratch"
	script=/usr/share/debootstrap/scripts/$suite
	[ -e "$script" ] || script=/usr/share/debootstrap/scripts/sid
	echo "matrix: making a Debian $suite root for PostgreSQL $major in $root (debootstrap, a few minutes)"
	debootstrap --variant=minbase "$suite" "$scratch" "$mirror" "$script" > "$scratch.log" 2>&1 ||
		{ tail -n 30 "$scratch.log"; die "debootstrap $suite failed"; }
	rm -f "$scratch.log"
	{
		echo "deb $mirror $suite main"
		[ -n "$experimental" ] && echo "deb $mirror $experimental main"
	} > "$scratch/etc/apt/sources.list"
	# testing, unstable and experimental lists may be past their Valid-Until here
	echo 'Acquire::Check-Valid-Until "false";' > "$scratch/etc/apt/apt.conf.d/99monk-valid-until"
	if [ -n "$experimental" ]; then
		# PostgreSQL $major and the libpq it needs come from experimental, all else from $suite
		cat > "$scratch/etc/apt/preferences.d/monk-postgresql" <<-EOF
			Package: postgresql-$major postgresql-client-$major postgresql-server-dev-$major postgresql-$major-* libpq5 libpq-dev
			Pin: release a=$experimental
			Pin-Priority: 500
		EOF
	fi
	touch "$scratch/.monk-root-$recipe"
	release_root "$scratch"
	mv "$scratch" "$root"
	scratch=""
fi

# The tree, as it is in this working copy, goes to /root/monk inside the root.
rm -rf "$root/root/monk"
mkdir -p "$root/root/monk"
tar --exclude=./.git --exclude=./tmp_check --exclude=./tmp_regress --exclude=./results \
	--exclude='*.o' --exclude='*.so' --exclude='*.bc' -cf - . | tar -xf - -C "$root/root/monk"
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
mount_root "$root"

echo "matrix: PostgreSQL $major on Debian $suite${experimental:+ + $experimental}: bash test/run-tests.sh"
# in the background and waited for, so that a signal is acted on at once (bash runs traps only between
# commands, and "wait" is one)
chroot "$root" /usr/bin/env -i \
	PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
	${CI:+CI="$CI"} ${MONK_SANITIZE:+MONK_SANITIZE="$MONK_SANITIZE"} ${PROVE_TESTS:+PROVE_TESTS="$PROVE_TESTS"} \
	PG_CONFIG="/usr/lib/postgresql/$major/bin/pg_config" \
	bash -c 'cd /root/monk && bash test/run-tests.sh' &
wait $!
