# Sourced by the scripts a person runs: what a failed run prints.

# test/setup.sh, test/demo.sh, test/run-tests.sh: a command that fails and so
# ends the script (set -e) is named, with its file and line, and followed by
# what to do: $monk_hint, which the script sets for each step, or a general
# hint.  So no run ends silently.  $1: the script's name in the messages.
monk_trap_errors()
{
	monk_script=$1
	monk_hint=""
	set -o errtrace
	trap 'monk_failed $? "$BASH_COMMAND" "${BASH_SOURCE[0]}" "$LINENO"' ERR
}

monk_failed()
{
	# in a subshell ($(...)): the command in the script that ran it fails next, and is the one to name
	[ "$BASHPID" = "$$" ] || return 0
	printf '%s: FAILED: "%s" exited with status %s (%s, line %s)\n' "$monk_script" "$2" "$1" "$3" "$4" >&2
	printf '%s: %s\n' "$monk_script" \
		"${monk_hint:-the lines above say why; once that is mended, run it again (it starts over safely)}" >&2
}

# test/run-tests.sh and test/sanitize.sh: after a failed
# `make installcheck` whose output is in $1, print what a person needs to see
# and nothing else: pg_regress's diffs (and the isolation tests'), then for each failed TAP test its own
# log and what went wrong in the server logs of its clusters.
monk_show_failures()
{
	local output=$1 t name log
	if [ -s regression.diffs ]; then
		echo "---- regression.diffs"
		cat regression.diffs
	fi
	if [ -s output_iso/regression.diffs ]; then
		echo "---- output_iso/regression.diffs (isolation)"
		cat output_iso/regression.diffs
	fi
	for t in $(sed -nE 's/^(test\/t\/[^ ]+\.pl) +\(Wstat.*/\1/p' "$output" | sort -u); do
		name=$(basename "$t" .pl)
		log=tmp_check/log/regress_log_$name
		if [ -f "$log" ]; then
			echo "---- $log (last 80 lines)"
			tail -n 80 "$log"
		fi
		# the servers' logs may be at debug5: only what went wrong
		for log in tmp_check/log/"$name"_*.log; do
			[ -f "$log" ] || continue
			echo "---- $log (errors, last 40)"
			grep -E 'ERROR|FATAL|PANIC|TRAP|WARNING|terminated by signal|runtime error' "$log" | tail -n 40
		done
	done
}
