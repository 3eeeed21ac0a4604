# A long monk_batch_export shows its progress where a DBA looks for it: a
# row in monk.export_progress (rows done, rows estimated, rate, cursor) seen
# from another session while it runs, and a NOTICE every 10 s to its caller.
# The row goes when the export ends: returned, cancelled, or rolled back to a
# savepoint.  Monitoring roles read the view; other roles do not.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use MonkApi;
use MonkTest;

my $api = MonkApi->new(api_key => 'test_key', customers => ['cus_1']);
my $node = monk_node(api => $api, conf => { 'monk.max_parallel_requests' => 2 });
my $kp = key_prefix($node);

sub psql { return $node->safe_psql('postgres', $_[0]) }
sub progress { return psql(qq{SELECT $_[0] FROM monk.export_progress}) }

psql(q{
CREATE TABLE usage_rows (id bigint PRIMARY KEY, external_customer_id text, event_name text);
INSERT INTO usage_rows SELECT i, 'cus_1', 'call' FROM generate_series(1, 12000) i;
ANALYZE usage_rows;
});
is(progress('count(*)'), '0', 'no export runs: the view is empty');

# 24 requests of 500 rows, two at a time, each answered after 1 s: about 12 s
$api->faults({ delay_ms => 1000 });
my $export = $node->background_psql('postgres');
$export->query_until(qr/started/, q{\echo started
SELECT events_sent FROM monk_batch_export('usage_rows', 500);
});
ok(wait_until('rows settled by the running export', 30, sub { progress('coalesce(max(rows_done), 0)') > 0 }),
	'a row for the running export, with rows done');
my ($pid, $db, $cursor, $source, $state, $estimated, $done, $percent, $rate, $last_id, $sent) = split /\|/,
	progress(q{pid, database, cursor_name, source, state, rows_estimated, rows_done, percent_done,
	           rows_per_second, cursor_last_id, events_sent});
is(psql(qq{SELECT query LIKE '%monk_batch_export%' FROM pg_stat_activity WHERE pid = $pid}), 't',
	'its pid is the exporting backend');
is("$db $cursor $source $state", 'postgres public.usage_rows public.usage_rows sending',
	'database, cursor, source and state');
cmp_ok(abs($estimated - 12000), '<=', 1200, "rows estimated by the planner: $estimated of 12000");
cmp_ok($done, '<', 12000, "rows done so far: $done");
cmp_ok($percent, '>', 0, "percent done: $percent");
cmp_ok($rate, '>', 0, "rows per second: $rate");
cmp_ok($last_id, '<=', $done, "the cursor ($last_id) is behind the rows done");
is($sent, $done, 'every row done was sent');

# the caller hears of it every 10 s
$export->query('SELECT 1');
like($export->{stderr}, qr/NOTICE:  monk_batch_export: \d+ rows done of about \d+ \(\d+%\), \d+ rows\/s; \d+ events sent, 0 failed; cursor at \d+/,
	'a NOTICE told the caller how far it was');
is(progress('count(*)'), '0', 'the finished export left the view');
api_holds_exactly($api, [ map { "$kp$_" } 1 .. 12000 ], 'and sent every row once');

# cancelled: the row goes with it
psql(q{INSERT INTO usage_rows SELECT i, 'cus_1', 'call' FROM generate_series(12001, 14000) i});
my $cancelled = $node->background_psql('postgres', on_error_stop => 0);
# start an export in $cancelled (after $before), see it in the view, cancel it
sub export_cancelled
{
	my ($before, $shows) = @_;
	$cancelled->{stderr} = '';
	$cancelled->query_until(qr/started/, qq{\\echo started
$before
SELECT events_sent FROM monk_batch_export('usage_rows', 500);
});
	ok(wait_until('the export to show', 30, sub { progress('count(*)') eq '1' }), $shows);
	psql(q{SELECT pg_cancel_backend(pid) FROM monk.export_progress});
	ok(wait_until('the cancel', 30, sub {
			$cancelled->{run}->pump_nb;
			$cancelled->{stderr} =~ /canceling statement due to user request/ }), 'it is cancelled');
	$cancelled->{stderr} = '';
}
export_cancelled('', 'a second export shows');
is(progress('count(*)'), '0', 'the cancelled export left the view');

# an error caught at a savepoint, in the same session: the view is read after it
export_cancelled("BEGIN;\nSAVEPOINT s;", 'an export in a savepoint shows');
is($cancelled->query_safe('ROLLBACK TO s; SELECT count(*) FROM monk.export_progress'), '0',
	'rolled back to its savepoint, the session sees no export of its own');
is(progress('count(*)'), '0', 'nor does another, while the transaction goes on');
$cancelled->query_safe('COMMIT');
$cancelled->quit;
$api->faults({ delay_ms => 0 });

# edges: a LATIN1 database, read from a UTF8 one and by a LATIN1 client; a
# cursor name past the slot's 255 bytes; the planner wrong both ways (a
# function declared to return 1e19 rows, one declared to return 10)
$node->safe_psql('postgres', q{CREATE DATABASE latin TEMPLATE template0 ENCODING 'LATIN1' LOCALE 'C'});
$node->safe_psql('latin', q{SET client_encoding = UTF8;
CREATE EXTENSION monk;
CREATE FUNCTION many() RETURNS SETOF record LANGUAGE sql ROWS 1e19
    AS $$ SELECT i::bigint, 'cus_1'::text, 'call'::text FROM generate_series(1, 600) i $$;
CREATE VIEW "tablè" AS SELECT * FROM many() AS m(id bigint, external_customer_id text, event_name text);
CREATE FUNCTION few() RETURNS SETOF record LANGUAGE sql ROWS 10
    AS $$ SELECT i::bigint, 'cus_1'::text, 'call'::text FROM generate_series(1, 600) i $$;
CREATE VIEW few_rows AS SELECT * FROM few() AS m(id bigint, external_customer_id text, event_name text);
});
$api->faults({ delay_ms => 1000 });
my $long_name = 'naïve_' . ('x' x 300);
my $latin = $node->background_psql('latin');
$latin->query_safe('SET client_encoding = UTF8');
$latin->query_until(qr/started/, qq{\\echo started
SELECT events_sent FROM monk_batch_export('"tablè"', 100, NULL, '$long_name');
SELECT events_sent FROM monk_batch_export('few_rows', 100);
});
ok(wait_until('the LATIN1 export to show', 30, sub { progress('count(*)') eq '1' }), 'an export in a LATIN1 database shows');
is(progress(q{length(cursor_name) || ' ' || left(cursor_name, 6) || ' ' || source || ' ' || rows_estimated || ' ' || (percent_done < 1)}),
	'255 naïve_ public."tablè" 1000000000000000000 true',
	'read from UTF8: its names, cut on a character at 255 bytes; 1e19 rows estimated kept a bigint');
is($node->safe_psql('latin', q{SET client_encoding = LATIN1; SELECT length(cursor_name) FROM monk.export_progress}), '255',
	'read by a LATIN1 client in its own database');
is($node->safe_psql('latin', q{SET client_encoding = UTF8; SELECT left(cursor_name, 6) || ' ' || source FROM monk.export_progress}),
	'naïve_ public."tablè"', 'as it was written');
ok(wait_until('the second export, of a view estimated at 10 rows, past them', 30, sub {
			progress(q{coalesce(bool_and(cursor_name = 'public.few_rows' AND rows_done > rows_estimated AND percent_done IS NULL), false)}) eq 't' }),
	'past its estimate, percent_done is NULL, not 100');
$latin->query('SELECT 1');
$latin->quit;
$api->faults({ delay_ms => 0 });
is(progress('count(*)'), '0', 'both left the view');

# a SQL_ASCII database's names may be any bytes: read elsewhere, shown \xNN, never an error
$node->safe_psql('postgres', q{CREATE DATABASE bytes TEMPLATE template0 ENCODING 'SQL_ASCII' LOCALE 'C'});
$node->safe_psql('bytes', q{CREATE EXTENSION monk;
CREATE TABLE usage_rows AS SELECT i::bigint AS id, 'cus_1'::text AS external_customer_id, 'call'::text AS event_name
  FROM generate_series(1, 400) i});
$api->faults({ delay_ms => 1000 });
my $bytes = $node->background_psql('bytes');
$bytes->query_until(qr/started/, q{\echo started
SELECT events_sent FROM monk_batch_export('usage_rows', 100, NULL, E'raw\\xff\\xfe');
});
ok(wait_until('the SQL_ASCII export to show', 30, sub { progress('count(*)') eq '1' }), 'an export of a SQL_ASCII database shows');
is(progress('cursor_name'), 'raw\xff\xfe', 'its name, not UTF-8, read from UTF8 as \xNN');
is($node->safe_psql('latin', 'SELECT cursor_name FROM monk.export_progress'), 'raw\xff\xfe', 'and from LATIN1');
$bytes->query('SELECT 1');
$bytes->quit;
$api->faults({ delay_ms => 0 });

# who may read it: members of pg_monitor; not a role that has only been
# given the view (the view checks EXECUTE on its function as the reader)
psql(q{CREATE ROLE watcher LOGIN IN ROLE pg_monitor; CREATE ROLE nobody LOGIN; CREATE ROLE halfway LOGIN;
       GRANT USAGE ON SCHEMA monk TO halfway; GRANT SELECT ON monk.export_progress TO halfway});
is($node->safe_psql('postgres', 'SELECT count(*) FROM monk.export_progress', extra_params => [ '-U', 'watcher' ]),
	'0', 'a member of pg_monitor reads monk.export_progress');
my ($rc, $out, $err) = $node->psql('postgres', 'SELECT count(*) FROM monk.export_progress', extra_params => [ '-U', 'nobody' ]);
like($err, qr/permission denied for schema monk/, 'another role does not');
($rc, $out, $err) = $node->psql('postgres', 'SELECT count(*) FROM monk.export_progress_rows()', extra_params => [ '-U', 'halfway' ]);
like($err, qr/permission denied for function export_progress_rows/, 'nor through the function, given only the view');

done_testing();
