#!/usr/bin/env bash
# Set everything up (test/setup.sh --tests) and run all of monk's tests: the local
# Monk API's own tests, pg_regress (in a temporary instance with monk
# preloaded) and the TAP tests (clusters, the real worker, the local API),
# then pg_regress and TAP again against an UndefinedBehaviorSanitizer build
# with assertions enabled.
#
# PostgreSQL refuses to run as root, so as root the tests run as the
# "postgres" user in a copy of the tree that user owns; the copy is removed
# after a passing run.  On a failure only the failing tests' diffs and logs
# are printed.
#   bash test/run-tests.sh                                  everything
#   PG_CONFIG=/usr/lib/postgresql/17/bin/pg_config bash test/run-tests.sh
#   PROVE_TESTS=test/t/001_queue.pl bash test/run-tests.sh  one TAP test
#   MONK_SANITIZE=0 bash test/run-tests.sh                  without the sanitizer run
set -euo pipefail
cd "$(dirname "$0")/.."
. test/failures.sh
monk_trap_errors run-tests
monk_hint="test/setup.sh says above what failed and what to do"
bash test/setup.sh --tests
monk_hint=""
. test/pgconfig.sh

if [ "$(id -u)" -eq 0 ]; then
	work=$(mktemp -d /tmp/monk-tests.XXXXXX)
	tar --exclude=./.git --exclude=./tmp_check --exclude=./tmp_regress --exclude=./results -cf - . |
		tar -xf - -C "$work"
	chown -R postgres: "$work"
	as_user=(runuser -u postgres --)
	dir=$work
else
	work=""
	as_user=()
	dir=$PWD
fi
cd "$dir"

failed="" # the parts that failed, each after ", "
echo "== local Monk API: its own tests"
"${as_user[@]}" python3 test/monk_api_test.py > api-tests.out 2>&1 || { failed+=", the local API's own tests"; cat api-tests.out; }
tail -n 3 api-tests.out

# pg_regress and the isolation specs, then the TAP tests: each runs whatever the other's outcome
echo "== pg_regress and TAP tests (PostgreSQL $PG_MAJOR)"
prove_tests=()
[ -n "${PROVE_TESTS:-}" ] && prove_tests=(PROVE_TESTS="$PROVE_TESTS")
: > installcheck.out
for part in "TAP_TESTS=" "REGRESS= ISOLATION="; do
	# shellcheck disable=SC2086 # $part is one or two assignments
	if ! "${as_user[@]}" make -s PG_CONFIG="$PG_CONFIG" installcheck $part "${prove_tests[@]}" 2>&1 | tee -a installcheck.out; then
		installcheck_failed=1
	fi
done
if [ -n "${installcheck_failed:-}" ]; then
	failed+=", pg_regress or TAP tests"
	monk_show_failures installcheck.out
fi
# the same suite against an UndefinedBehaviorSanitizer build (MONK_SANITIZE=0 skips it)
if [ "${MONK_SANITIZE:-1}" != "0" ]; then
	echo "== pg_regress and TAP tests under -fsanitize=undefined, with assertions (PostgreSQL $PG_MAJOR)"
	"${as_user[@]}" env ${PROVE_TESTS:+PROVE_TESTS="$PROVE_TESTS"} bash test/sanitize.sh || failed+=", the sanitizer run"
fi

if [ -z "$failed" ]; then
	[ -z "$work" ] || { cd / && rm -rf "$work"; }
	exit 0
fi
echo "run-tests: FAILED: ${failed#, } (above: what went wrong)" >&2
echo "run-tests: the run's files are in ${work:-$dir}; PROVE_TESTS=test/t/NAME.pl bash test/run-tests.sh runs one TAP test again" >&2
exit 1
