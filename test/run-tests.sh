#!/usr/bin/env bash
# Set everything up (test/setup.sh) and run all of monk's tests: the local
# Monk API's own tests, pg_regress (in a temporary instance with monk
# preloaded) and the TAP tests (clusters, the real worker, the local API),
# then pg_regress and TAP again against an UndefinedBehaviorSanitizer build
# with assertions enabled.
#
# PostgreSQL refuses to run as root, so as root the tests run as the
# "postgres" user in a copy of the tree that user owns.
#   test/run-tests.sh                      everything
#   PROVE_TESTS=test/t/001_queue.pl test/run-tests.sh   one TAP test
set -euo pipefail
cd "$(dirname "$0")/.."
bash test/setup.sh

PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
if [ "$(id -u)" -eq 0 ]; then
	work=$(mktemp -d /tmp/monk-tests.XXXXXX)
	cp -a . "$work/monk"
	chown -R postgres: "$work"
	as_user=(runuser -u postgres --)
	dir="$work/monk"
else
	as_user=()
	dir=$PWD
fi

status=0
echo "== local Monk API: its own tests"
(cd "$dir" && "${as_user[@]}" python3 test/monk_api_test.py 2>&1 | tail -n 5) || status=1

echo "== pg_regress and TAP tests"
prove_tests=()
[ -n "${PROVE_TESTS:-}" ] && prove_tests=(PROVE_TESTS="$PROVE_TESTS")
if ! (cd "$dir" && "${as_user[@]}" make -s PG_CONFIG="$PG_CONFIG" installcheck "${prove_tests[@]}"); then
	status=1
	[ -f "$dir/regression.diffs" ] && cat "$dir/regression.diffs"
	for log in "$dir"/tmp_check/log/regress_log_*; do
		[ -f "$log" ] || continue
		echo "---- $log (last 60 lines)"
		tail -n 60 "$log"
	done
fi
# the same suite against an UndefinedBehaviorSanitizer build (MONK_SANITIZE=0 skips it)
if [ "${MONK_SANITIZE:-1}" != "0" ]; then
	echo "== pg_regress and TAP tests under -fsanitize=undefined, with assertions"
	(cd "$dir" && "${as_user[@]}" env ${PROVE_TESTS:+PROVE_TESTS="$PROVE_TESTS"} bash test/sanitize.sh) || status=1
fi

exit $status
