#!/usr/bin/env bash
# Run monk's tests against a build under UndefinedBehaviorSanitizer (integer
# overflow, misaligned or null pointers, out-of-bounds array indexes, invalid
# shifts, ...) with assertions enabled (-DUSE_ASSERT_CHECKING: monk's Assert()s
# and those of PostgreSQL's inline functions it uses); any report or failed
# assertion aborts the process and fails the run.
#
# The sanitized monk.so is built in a scratch copy and found through
# dynamic_library_path, so the installed library is left alone.  (Debian's
# postgres 15 does not start with the AddressSanitizer runtime preloaded -- it
# hangs at startup, even for postgres -V -- so ASan is not used.)  Run it as
# the user that runs the tests (not root): test/run-tests.sh calls it.
#   bash test/sanitize.sh                          pg_regress and every TAP test
#   PROVE_TESTS=test/t/020_faults.pl bash test/sanitize.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. test/pgconfig.sh
. test/failures.sh

san=$(mktemp -d "${TMPDIR:-/tmp}/monk-sanitize.XXXXXX")
mkdir -p "$san/lib" "$san/reports"
echo "== building monk with -fsanitize=undefined and assertions in $san"
tar --exclude=./tmp_check --exclude=./tmp_regress --exclude=./results -cf - . | (mkdir "$san/src" && tar -xf - -C "$san/src")
make -s -C "$san/src" PG_CONFIG="$PG_CONFIG" clean >/dev/null
make -s -C "$san/src" PG_CONFIG="$PG_CONFIG" SANITIZE=1
cp "$san/src/monk.so" "$san/lib/monk.so"

extra="dynamic_library_path = '$san/lib:\$libdir'"
{ cat test/regress.conf; echo "$extra"; } > "$san/regress.conf"

status=0
export MONK_EXTRA_CONF="$extra"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$san/reports/ubsan"
: > "$san/installcheck.out"
# pg_regress and the isolation specs, then the TAP tests: each runs whatever the other's outcome
for part in "TAP_TESTS=" "REGRESS= ISOLATION="; do
	# shellcheck disable=SC2086 # $part is one or two assignments
	make -s PG_CONFIG="$PG_CONFIG" installcheck $part \
		REGRESS_OPTS="--temp-instance=./tmp_regress --temp-config=$san/regress.conf --dbname=contrib_regression" \
		ISOLATION_OPTS="--inputdir=test/isolation --temp-instance=./tmp_isolation --temp-config=$san/regress.conf --dbname=isolation_regression" \
		${PROVE_TESTS:+PROVE_TESTS="$PROVE_TESTS"} 2>&1 | tee -a "$san/installcheck.out" || status=1
done
[ $status -eq 0 ] || monk_show_failures "$san/installcheck.out"

# any report fails the run
reports=$(ls "$san"/reports/* 2>/dev/null || true)
if [ -n "$reports" ]; then
	echo "== sanitizer reports:"
	for r in $reports; do echo "---- $r"; cat "$r"; done
	status=1
fi
if [ $status -eq 0 ]; then
	echo "== sanitizers: no report"
	rm -rf "$san"
fi
exit $status
