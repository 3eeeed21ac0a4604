#!/usr/bin/env bash
# Indent monk's C sources as PostgreSQL's pgindent does: pg_bsd_indent (Debian
# package pg-bsd-indent) with pgindent's options, between pgindent's own pre-
# and post-processing steps.  The typedef list is made from the server headers
# of PG_CONFIG and monk's sources (pgindent's list is not installed by Debian).
#   bash test/indent.sh           rewrite src/*.c src/*.h in place
#   bash test/indent.sh --check   change nothing; print the differences and
#                                 fail when a file is not indented (CI runs this)
set -euo pipefail
cd "$(dirname "$0")/.."
. test/pgconfig.sh

check=0
[ "${1:-}" = "--check" ] && check=1
if ! command -v pg_bsd_indent > /dev/null; then
	echo "indent: pg_bsd_indent is missing (apt-get install pg-bsd-indent)" >&2
	exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# typedef names: "typedef ... Name;", "} Name;" closing a typedef, and
# function pointer types; less the names pgindent leaves out, and words of
# the headers' that are variables in C code (pgindent excludes the same kind)
{ find "$("$PG_CONFIG" --includedir-server)" -name '*.h' -print0 | xargs -0 cat; cat src/*.[ch]; } |
	perl -0777 -ne '
		print "$1\n" while /^typedef\s[^;{}]*?(\w+)\s*;/mg;
		print "$1\n" while /^\}\s*(\w+)\s*;/mg;
		print "$1\n" while /^typedef\s+[^;]*?\(\s*\*\s*(\w+)\s*\)/mg;' |
	grep -vxE '[0-9]+|ANY|FD_SET|U|abs|allocfunc|boolean|date|digit|ilist|interval|iterator|other|pointer|printfunc|reference|string|timestamp|type|wrap|accepted|alloc|chr|color|endif|symbol|uchr' > "$tmp/typedefs"
printf '%s\n' bool CURL CURLM CURLMcode CURLMsg CURLcode CURLoption curl_socket_t FILE size_t ssize_t \
	sig_atomic_t va_list time_t uint8_t uint32_t uint64_t int64_t >> "$tmp/typedefs"
LC_ALL=C sort -u -o "$tmp/typedefs" "$tmp/typedefs"

status=0
for f in src/*.c src/*.h; do
	out="$tmp/$(basename "$f")"
	# pgindent's pre-processing: // comments, dash-protected block comments
	perl -0777 -pe 's!^([ \t]*)//(.*)$!$1/* $2 */!gm; s!/\* +---!/*---X_X!g' "$f" > "$out.in"
	pg_bsd_indent -bad -bap -bbb -bc -bl -cli1 -cp33 -cdb -nce -d0 -di12 -nfc1 -i4 -l79 -lp -lpl \
		-nip -npro -sac -tpg -ts4 "-U$tmp/typedefs" "$out.in" "$out" 2> "$out.err" || true
	if [ -s "$out.err" ]; then
		echo "indent: $f: $(cat "$out.err")" >&2
		status=1
		continue
	fi
	# and its post-processing: dash comments back, one space before '*' of a return type
	perl -0777 -pi -e 's!/\*---X_X!/* ---!g; s!\*/(/\*.*\*/)$!*/\t$1!gm; s!^([A-Za-z_]\S*)[ \t]+\*$!$1 *!gm' "$out"
	if ! cmp -s "$f" "$out"; then
		if [ $check -eq 1 ]; then
			diff -u "$f" "$out" | sed "s|$out|$f (indented)|" || true
			status=1
		else
			cp "$out" "$f"
		fi
	fi
done
[ $check -eq 1 ] && [ $status -ne 0 ] && echo "indent: run bash test/indent.sh to indent the files above" >&2
[ $check -eq 1 ] && [ $status -eq 0 ] && echo "indent: src/ is indented as pgindent does"
exit $status
