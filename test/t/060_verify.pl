# Verify from SQL: monk_list_events returns exactly what the API holds, page
# after page and filter by filter; monk_verify_export finds nothing missing
# after an export, and exactly the keys the API was made to lose; the usage
# cost passes through; errors and retries behave as in the worker.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use MonkApi;
use MonkTest;

my $api = MonkApi->new(api_key => 'test_key');
my $node = monk_node(api => $api);
my $kp = key_prefix($node);

# 2,500 events for cus_1 over ten days, 500 for cus_2, exported from a table
$node->safe_psql('postgres', q{
CREATE TABLE usage (id bigint PRIMARY KEY, external_customer_id text, event_name text, "timestamp" timestamptz, properties jsonb);
INSERT INTO usage
    SELECT i, CASE WHEN i % 6 = 0 THEN 'cus_2' ELSE 'cus_1' END,
           CASE WHEN i % 2 = 0 THEN 'api_call' ELSE 'tokens' END,
           timestamptz '2026-03-01 00:00:00+00' + (i * interval '5 minutes'),
           jsonb_build_object('n', i)
      FROM generate_series(1, 3000) i;
});
is($node->safe_psql('postgres', q{SELECT events_sent FROM monk_batch_export('usage')}), '3000', 'the source is exported');

sub keys_of
{
	my ($sql) = @_;
	return join(',', sort split /\n/, $node->safe_psql('postgres', $sql));
}

sub api_keys_where
{
	my ($filter) = @_;
	my $events = $api->events;
	return join(',', sort grep { $filter->($events->{$_}{event}) } keys %$events);
}

# every page, key by key
is(keys_of(q{SELECT idempotency_key FROM monk_list_events(external_customer_id => 'cus_1')}),
	api_keys_where(sub { $_[0]{externalCustomerId} eq 'cus_1' }),
	'monk_list_events returns exactly the API\'s events of a customer, across 3 pages');
is($node->safe_psql('postgres', q{SELECT count(*) FROM monk_list_events(external_customer_id => 'cus_1')}), '2500', 'all 2,500 of them');
cmp_ok(scalar(grep { $_->{path} =~ m{^/v1/events\?} } @{ $api->requests(20) }), '>=', 3, 'following the pagination');

# a time range: start inclusive, end exclusive
my ($s, $e) = ('2026-03-03T00:00:00Z', '2026-03-05T00:00:00Z');
is(keys_of(qq{SELECT idempotency_key FROM monk_list_events(external_customer_id => 'cus_1', start => '$s', "end" => '$e')}),
	api_keys_where(sub { $_[0]{externalCustomerId} eq 'cus_1' && $_[0]{timestamp} ge $s && $_[0]{timestamp} lt $e }),
	'a customer and a time range: exactly the API\'s events, start inclusive, end exclusive');
is($node->safe_psql('postgres', qq{SELECT count(*), min("timestamp") >= '$s', bool_and("timestamp" < '$e') FROM monk_list_events(external_customer_id => 'cus_1', start => '$s', "end" => '$e')}),
	'480|t|t', 'the range is bounded as asked');
is(keys_of(q{SELECT idempotency_key FROM monk_list_events(event_name => 'tokens', external_customer_id => 'cus_2')}),
	'', 'event_name filters too (cus_2 has only api_call events)');
is($node->safe_psql('postgres', qq{SELECT event_name, external_customer_id, "timestamp", properties FROM monk_list_events(external_customer_id => 'cus_2') WHERE idempotency_key = '${kp}6'}),
	'api_call|cus_2|2026-03-01 00:30:00+00|{"n": 6}', 'each row carries the event');

# verification after an export: nothing missing, then exactly what was lost
is($node->safe_psql('postgres', q{SELECT count(*) FROM monk_verify_export('usage')}), '0', 'monk_verify_export: nothing missing after the export');
$api->lose([ "${kp}10", "${kp}1500", "${kp}2999" ]);
is($node->safe_psql('postgres', q{SELECT string_agg(idempotency_key || ':' || reason, ',' ORDER BY id) FROM monk_verify_export('usage')}),
	"${kp}10:missing,${kp}1500:missing,${kp}2999:missing", 'it reports exactly the keys the API lost');
is($node->safe_psql('postgres', q{SELECT string_agg(idempotency_key, ',' ORDER BY id) FROM monk_verify_export('usage', since => '2026-03-06')}),
	"${kp}1500,${kp}2999", 'since limits the check to newer rows');
$node->safe_psql('postgres', q{INSERT INTO usage VALUES (3001, '', 'api_call', '2026-03-20', NULL)});
like($node->safe_psql('postgres', q{SELECT reason FROM monk_verify_export('usage') WHERE id = 3001}),
	qr/^missing: the row is invalid \(external_customer_id must not be empty\)/, 'an invalid row is reported with its reason');

# the usage cost passes the request through and returns the answer
is($node->safe_psql('postgres', q{SELECT monk_usage_cost('{"externalCustomerId": "cus_2", "unitPrice": 2}')->>'eventCount'}),
	'499', 'monk_usage_cost returns the API\'s answer as jsonb (500 events less the lost one)');

# transient errors are retried as in the worker; cancellation is honoured
$api->faults({ script => [ '500', '503', '429' ], retry_after => 0 });
is($node->safe_psql('postgres', q{SELECT count(*) FROM monk_list_events(external_customer_id => 'cus_2')}), '499',
	'5xx and 429 are retried (cus_2 has 500 events, less row 1500 which the API lost)');
$api->faults({ delay_ms => 5000 });
my ($rc, $out, $err) = $node->psql('postgres', q{SET statement_timeout = '300ms'; SELECT count(*) FROM monk_list_events()});
like($err, qr/canceling statement due to statement timeout/, 'statement_timeout is honoured while waiting');
$api->clear_faults;

# clear errors
($rc, $out, $err) = $node->psql('postgres', q{SELECT * FROM monk_list_events(start => '2026-03-05', "end" => '2026-03-01')},
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err, qr/ERROR:  22023: "end" must not be before start/, 'end before start: 22023');
($rc, $out, $err) = $node->psql('postgres', q{SELECT monk_usage_cost('[1]')}, extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err, qr/ERROR:  22023: request must be a JSON object/, 'a usage request that is not an object: 22023');
$api->faults({ script => ['400'] });
($rc, $out, $err) = $node->psql('postgres', q{SELECT monk_usage_cost('{}')}, extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err, qr/ERROR:  22023: the Events API refused the request \(HTTP 400\)/, 'a refused request: 22023 with the API\'s answer');
$node->append_conf('postgresql.conf', "monk.api_key = 'wrong'");
$node->reload;
ok(wait_until('a refused key', 10, sub {
		my ($r, $o, $e) = $node->psql('postgres', q{SELECT count(*) FROM monk_list_events()}, extra_params => [ '-v', 'VERBOSITY=verbose' ]);
		$e =~ /ERROR:  28000: the Events API refused the API key \(HTTP 401\)/ }), 'a refused key: 28000');
$node->append_conf('postgresql.conf', "monk.api_key = 'test_key'");
$node->reload;

# privileges: not for PUBLIC; verifying needs SELECT on the source
$node->safe_psql('postgres', q{CREATE ROLE auditor LOGIN});
($rc, $out, $err) = $node->psql('postgres', q{SET ROLE auditor; SELECT * FROM monk_list_events()});
like($err, qr/permission denied for function monk_list_events/, 'monk_list_events is not granted to PUBLIC');
$node->safe_psql('postgres', q{GRANT EXECUTE ON FUNCTION monk_verify_export(regclass, timestamptz) TO auditor});
($rc, $out, $err) = $node->psql('postgres', q{SET ROLE auditor; SELECT * FROM monk_verify_export('usage')});
like($err, qr/permission denied for table usage/, 'monk_verify_export needs SELECT on the source');

$node->stop;
$api->stop;
done_testing();
