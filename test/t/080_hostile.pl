# Hostile input through the whole path: strings with quotes, backslashes,
# every control character and every plane of Unicode, a megabyte string,
# thousands of properties, numbers at the edges -- sent by monk_send, drained
# by the worker, and compared with what the local API holds: byte-identical.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Digest::MD5 qw(md5_hex);
use Encode qw(encode_utf8);
use MonkApi;
use MonkTest;

my $api = MonkApi->new(api_key => 'test_key');
my $node = monk_node(api => $api, conf => { 'monk.flush_interval' => '10ms', 'monk.max_event_size' => '4MB', 'monk.max_request_size' => '8MB' });

# hostile strings, built in SQL so that psql's quoting plays no part
$node->safe_psql('postgres', <<'SQL');
CREATE TABLE hostile (n int PRIMARY KEY, s text NOT NULL);
INSERT INTO hostile VALUES
  (1, E'quote " backslash \\ slash / apostrophe \''),
  (2, (SELECT string_agg(chr(c), '') FROM generate_series(1, 31) c) || chr(127)),
  (3, E'\u0080\u07ff\u0800\ufffd\uffff\ufeff\u2028\u2029'),
  (4, (SELECT string_agg(chr(65536 * p + 1234), '') FROM generate_series(1, 16) p)),
  (5, E'\U0001F600\U0010FFFD\U000E0001'),
  (6, E'\\u0000 is not a NUL, \\n not a newline'),
  (7, repeat(E'\u00e9\u4e2d\U0001F600"\\', 1024 * 1024 / 10)),
  (8, E'</script><script>alert(1)</script>'),
  (9, E'%s %n %x {} ${x} \x01');
SQL
my %strings = map { my ($n, $hex) = split /\|/; ($n => $hex) }
  split /\n/, $node->safe_psql('postgres', q{SELECT n, md5(convert_to(s, 'UTF8')) FROM hostile ORDER BY n});
is(scalar keys %strings, 9, 'nine hostile strings');

# each string as event name, customer, key, property key and property value
$node->safe_psql('postgres', q{
SELECT monk_send(s, s, jsonb_build_object(s, s, 'n', n), idempotency_key => 'hostile_' || n || '_' || s)
  FROM hostile WHERE n <> 7;
SELECT monk_send('big', 'cus_1', jsonb_build_object('value', s), idempotency_key => 'megabyte') FROM hostile WHERE n = 7;
SELECT monk_send('many', 'cus_1', (SELECT jsonb_object_agg('k' || i, i) FROM generate_series(1, 5000) i), idempotency_key => 'many_keys');
SELECT monk_send('edges', 'cus_1', '{"u64max": 18446744073709551615, "i64min": -9223372036854775808, "dblmax": 1.7976931348623157e308, "tiny": 5e-324, "third": 0.3333333333333333, "zero": 0, "t": true, "f": false}', idempotency_key => 'edges');
});
ok(wait_outbox_empty($node, 'postgres', 60), 'the worker delivers every hostile event');

my $events = $api->events;
is(scalar keys %$events, 11, 'the API holds all eleven events');
for my $n (sort { $a <=> $b } grep { $_ != 7 } keys %strings)
{
	my ($key) = grep { /^hostile_${n}_/ } keys %$events;
	ok($key, "event $n arrived");
	next unless $key;
	my $ev = $events->{$key}{event};
	my @fields = ($ev->{eventName}, $ev->{externalCustomerId}, substr($key, length("hostile_${n}_")));
	my @props = grep { $_ ne 'n' } keys %{ $ev->{properties} };
	push @fields, $props[0], $ev->{properties}{ $props[0] };
	is(join(',', map { md5_hex(encode_utf8($_)) } @fields), join(',', ($strings{$n}) x 5),
		"string $n arrives byte-identical as event name, customer, key, property key and value");
}
is(md5_hex(encode_utf8($events->{megabyte}{event}{properties}{value})), $strings{7},
	'a megabyte string arrives byte-identical');
is(scalar keys %{ $events->{many_keys}{event}{properties} }, 5000, 'an event with 5,000 properties arrives whole');
is($events->{many_keys}{event}{properties}{k4999}, 4999, 'with their values');

# numbers at the edges arrive as the same numbers (compared in SQL, exactly)
is($node->safe_psql('postgres', q{
SELECT properties = '{"u64max": 18446744073709551615, "i64min": -9223372036854775808, "dblmax": 1.7976931348623157e308, "tiny": 5e-324, "third": 0.3333333333333333, "zero": 0, "t": true, "f": false}'
  FROM monk_list_events(event_name => 'edges')}), 't', 'numbers at the edges arrive unchanged');

# and the same hostile strings come back through monk_list_events
is($node->safe_psql('postgres', q{
SELECT count(*) FROM monk_list_events() e JOIN hostile h ON e.event_name = h.s AND e.external_customer_id = h.s
 WHERE e.properties ->> h.s = h.s AND e.idempotency_key = 'hostile_' || h.n || '_' || h.s}),
	'8', 'monk_list_events reads them back unchanged');

$node->stop;
$api->stop;
done_testing();
