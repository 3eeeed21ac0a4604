# shellcheck shell=bash
# Sourced by test/matrix.sh: bare Debian roots, made once with debootstrap and
# copied fresh for each run, so that every run starts on a machine where
# nothing was installed, as a newcomer's does.  As root.
#
#   roots_base SUITE          $base: the bare root of SUITE, made with debootstrap the first time
#   roots_copy SUITE          $copy: a fresh copy of it for one run; gone on exit
#   roots_run CMD [VAR=v...]  bash -c CMD in $copy, from a copy of this tree at /root/monk, with an empty
#                             environment but for PATH, HOME and the VAR=v given
#
# Under $MONK_ROOTS (/var/tmp/monk-roots): bare-SUITE, made in a scratch folder and renamed when complete
# (a broken attempt is never reused), with a recipe number in its marker, bumped when the recipe changes so
# that old bases are made again; apt-SUITE, the .debs apt downloaded in earlier copies, linked into each
# new copy (a download cache: nothing is installed from it unless a run asks apt for that package).  The
# package mirror is the one this machine's own apt sources name.  Whatever still runs inside a copy is
# killed and its mounts are undone on exit, also after a failure; a copy whose run failed is kept for a
# look.

roots=${MONK_ROOTS:-/var/tmp/monk-roots}
roots_recipe=2
roots_copies=()
roots_mounts=()
base=""
copy=""
copy_suite=""

roots_die() { printf 'roots: %s\n' "$*" >&2; exit 1; }

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
	[ -n "$uri" ] || roots_die "no Debian mirror found in /etc/apt/sources.list or /etc/apt/sources.list.d"
	printf '%s\n' "${uri%/}"
}

# The bare root of SUITE in $base, made the first time: debootstrap --variant=minbase and apt's sources,
# nothing more.
roots_base()
{
	local suite=$1 scratch script mirror
	base=$roots/bare-$suite
	if [ ! -f "$base/.monk-bare-$roots_recipe" ]; then
		command -v debootstrap >/dev/null || {
			echo "roots: installing debootstrap"
			apt-get update -qq
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
		}
		mirror=$(apt_mirror)
		mkdir -p "$roots"
		scratch=$(mktemp -d "$roots/.bare-$suite.XXXXXX")
		roots_copies+=("$scratch")
		chmod 755 "$scratch"
		script=/usr/share/debootstrap/scripts/$suite
		[ -e "$script" ] || script=/usr/share/debootstrap/scripts/sid
		echo "roots: making a bare Debian $suite root in $base (debootstrap, a minute or two)"
		debootstrap --variant=minbase "$suite" "$scratch" "$mirror" "$script" > "$scratch.log" 2>&1 ||
			{ tail -n 30 "$scratch.log" >&2; rm -f "$scratch.log"; roots_die "debootstrap $suite from $mirror failed (above)"; }
		rm -f "$scratch.log"
		# this machine's apt accepts lists past their Valid-Until (a mirror snapshot); so must the root's
		if [ "$(apt-config dump Acquire::Check-Valid-Until)" = 'Acquire::Check-Valid-Until "false";' ]; then
			echo 'Acquire::Check-Valid-Until "false";' > "$scratch/etc/apt/apt.conf.d/99monk-valid-until"
		fi
		touch "$scratch/.monk-bare-$roots_recipe"
		roots_release "$scratch"
		rm -rf "$base"
		mv "$scratch" "$base"
	fi
}

# A fresh copy of SUITE's bare root in $copy, with the .debs of earlier copies in apt's archive.
roots_copy()
{
	local suite=$1
	roots_base "$suite"
	copy_suite=$suite
	copy=$(mktemp -d "$roots/run-$suite.XXXXXX")
	roots_copies+=("$copy")
	cp -a "$base/." "$copy"
	mkdir -p "$roots/apt-$suite"
	cp -l "$roots/apt-$suite"/*.deb "$copy/var/cache/apt/archives/" 2>/dev/null || true
}

# Mount what PostgreSQL needs inside ROOT; undone by roots_release.
roots_mount()
{
	local root=$1 m
	for m in proc dev dev/pts dev/shm; do
		mkdir -p "$root/$m"
	done
	mount -t proc proc "$root/proc" && roots_mounts+=("$root/proc")
	mount --bind /dev "$root/dev" && roots_mounts+=("$root/dev")
	mount -t devpts -o newinstance,ptmxmode=0666 devpts "$root/dev/pts" && roots_mounts+=("$root/dev/pts")
	mount -t tmpfs -o mode=1777 shm "$root/dev/shm" && roots_mounts+=("$root/dev/shm")
}

# The processes whose root is ROOT (find fails on those that end while it looks: they need no kill).
roots_pids()
{
	{ find /proc/[0-9]*/root -maxdepth 0 -lname "$1" 2>/dev/null || true; } | cut -d/ -f3
}

# Kill every process whose root is ROOT and wait until none is left (10 s at most), then undo the mounts.
roots_release()
{
	local root=$1 pids deadline=$((SECONDS + 10)) i
	while pids=$(roots_pids "$root") && [ -n "$pids" ]; do
		if [ $SECONDS -ge $deadline ]; then
			echo "roots: processes ${pids//$'\n'/ } still run in $root 10 s after kill -9" >&2
			break
		fi
		# shellcheck disable=SC2086 # one pid a word
		kill -9 $pids 2>/dev/null || true
		sleep 0.1 # a poll until they are gone
	done
	for ((i = ${#roots_mounts[@]} - 1; i >= 0; i--)); do
		[[ ${roots_mounts[$i]} == "$root"/* ]] && umount -l "${roots_mounts[$i]}" 2>/dev/null
	done
	roots_mounts=()
}

# Nothing mounted under ROOT (so that rm -rf cannot reach into the machine's /dev)?
roots_unmounted()
{
	! awk -v r="$1/" 'index($5, r) == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo
}

# On exit: release every copy; remove it unless its run failed.
roots_cleanup()
{
	local status=$? c
	set +e
	for c in "${roots_copies[@]}"; do
		roots_release "$c"
		if ! roots_unmounted "$c"; then
			echo "roots: $c still has mounts: not removed" >&2
		elif [ $status -eq 0 ] || [[ $c == */.bare-* ]]; then
			rm -rf --one-file-system "$c"
		else
			echo "roots: the failed run's root is kept in $c (rm -rf it when done)" >&2
		fi
	done
	exit "$status"
}
trap roots_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Run CMD with bash in $copy, from a copy of this tree at /root/monk; keep the .debs apt downloaded.
roots_run()
{
	local root=$copy cmd=$1 status=0
	shift
	mkdir -p "$root/root/monk"
	tar --exclude=./.git --exclude=./tmp_check --exclude=./tmp_regress --exclude=./results \
		--exclude='*.o' --exclude='*.so' --exclude='*.bc' -cf - . | tar -xf - -C "$root/root/monk"
	cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
	roots_mount "$root"
	# in the background and waited for, so that a signal is acted on at once (bash runs traps only between
	# commands, and "wait" is one)
	chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
		"$@" bash -c "cd /root/monk && $cmd" &
	wait $! || status=$?
	cp -ln "$root/var/cache/apt/archives/"*.deb "$roots/apt-$copy_suite/" 2>/dev/null || true
	roots_release "$root"
	return $status
}
