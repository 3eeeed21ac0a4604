# Only the API's documented acceptance settles events, answers are stored as
# valid text, read-back checks what it reads, and every server encoding that
# converts to UTF-8 works end to end.
#
# 1. A catch-all web server answering 200 text/html at monk.base_url settles
#    nothing (0.3 emptied the outbox and counted the events as sent); a
#    redirect is an answer (requests_other), not a missing one.
# 2. A 400 whose body is not UTF-8 and is cut by the 4 kB kept in the middle
#    of a character: the dead letter's response_body and last_error are valid
#    text, and pg_dump's output of the dead letters restores.
# 3. Read-back: an answer that is not an object, an item of "data" that is
#    not an object, a "hasMore" that is not a boolean, a NUL byte, bytes that
#    are not UTF-8, a cursor returned twice: each a clear error, never a loop.
# 4. LATIN1, EUC_JP and SQL_ASCII databases: the worker sends (0.3's worker
#    never ran in LATIN1), capture, export, list with a non-ASCII filter,
#    usage cost, verify; a character LATIN1 cannot hold; SQL_ASCII bytes that
#    are not UTF-8; MULE_INTERNAL refused at CREATE EXTENSION.
use strict;
use warnings;
use Encode qw(decode_utf8 encode_utf8);
use File::Basename qw(dirname);
use File::Spec;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use MonkApi;
use MonkTest;

my $ODD = File::Spec->catfile(dirname(File::Spec->rel2abs(__FILE__)), '..', 'odd_server.py');
my @odd_pids;
END { kill 'TERM', @odd_pids if @odd_pids }

# A server answering every request with this status, Content-Type and body
# (any bytes); returns its URL.
sub odd_server
{
	my ($status, $type, $body, @headers) = @_;
	my $port_file = "$PostgreSQL::Test::Utils::tmp_check/odd_server_" . scalar(@odd_pids);
	unlink $port_file;
	my $pid = fork() // die "fork: $!";
	if ($pid == 0)
	{
		exec('python3', $ODD, $port_file, $status, $type, unpack('H*', $body), @headers)
		  or die "exec: $!";
	}
	push @odd_pids, $pid;
	wait_until('the odd server to listen', 30, sub { -s $port_file }) or die 'the odd server did not start';
	return 'http://127.0.0.1:' . slurp_file($port_file);
}

# (strings of this file are UTF-8 bytes; the API's JSON is decoded to characters)
my $api = MonkApi->new(api_key => 'test_key', customers => [ map { decode_utf8($_) } 'cus_1', 'cus_é', 'cus_日本' ]);
my $node = monk_node(api => $api, databases => [ 'postgres', 'latin1', 'eucjp', 'sqlascii', 'win1252', 'restored' ],
	create => {
		win1252  => "ENCODING 'WIN1252' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
		latin1   => "ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
		eucjp    => "ENCODING 'EUC_JP' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
		sqlascii => "ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
	},
	conf => {
		'monk.max_retries'      => 1,
		'monk.retry_base_delay' => '100ms',
		'monk.retry_max_delay'  => '200ms',
	});
$node->safe_psql('restored', 'DROP EXTENSION monk');

# psql in UTF-8 whatever the database's encoding
sub psql { return $node->safe_psql($_[1] // 'postgres', "SET client_encoding = 'UTF8';\n$_[0]") }
sub psql_err
{
	my ($sql, $db) = @_;
	# (MULE_INTERNAL has no conversion to UTF-8: its session keeps its own encoding)
	my ($rc, $out, $err) = $node->psql($db // 'postgres', ($db // '') eq 'mule' ? $sql : "SET client_encoding = 'UTF8';\n$sql");
	return $err;
}
# an event the API holds, its strings as UTF-8 bytes
sub api_event
{
	my $ev = $api->_call('GET', '/_test/events')->{events}{ $_[0] };
	return $ev ? decode_json_bytes($ev->{event}) : {};
}
sub decode_json_bytes
{
	my ($v) = @_;
	return { map { encode_utf8($_) => decode_json_bytes($v->{$_}) } keys %$v } if ref $v eq 'HASH';
	return ref $v ? $v : encode_utf8($v);
}
sub status { return psql("SELECT $_[0] FROM monk.status", $_[1]) }

# ---- 1. a 200 page of a catch-all server settles nothing ------------------
my $listener = $node->background_psql('postgres');
$listener->query_safe('LISTEN monk_alert');
my $html = odd_server(200, 'text/html', '<html><body>Welcome to nginx!</body></html>');
set_monk_conf($node, 'monk.base_url' => $html);
my @keys = queue_events($node, 'html', 3);
ok(wait_until('the worker to be answered 200', 30, sub { status('requests_2xx') > 0 }), 'the catch-all server answers 200');
ok(wait_until('last_error to say so', 30, sub { status('last_error') =~ /unexpected answer HTTP 200/ }),
	'last_error: an unexpected answer HTTP 200');
like(status('last_error'), qr/Welcome to nginx/, 'with the start of the body');
is(status('events_sent'), '0', 'no event counted as sent');
is(outbox_count($node), '3', 'the events stay queued');
is(status('dead_letters'), '0', 'nothing dead-lettered');
like(slurp_file($node->logfile), qr/unexpected answer HTTP 200 to a batch of 3 events/, 'a WARNING in the log');
my $notes = $listener->query_safe('SELECT 1');
like($listener->{stdout} . $notes, qr/"event": "unexpected_answer".*"status": 200/, 'and a NOTIFY monk_alert');
$listener->quit;

# a redirect is an answer of another class, never followed
my $redirect = odd_server(302, 'text/html', 'moved', "Location: " . $api->url);
my $failed = status('requests_failed');
set_monk_conf($node, 'monk.base_url' => $redirect);
ok(wait_until('a 302', 30, sub { status('requests_other') > 0 }), 'a 302 is counted in requests_other');
is(status('requests_failed'), $failed, 'not as a request without an answer');
is(outbox_count($node), '3', 'and settles nothing');

set_monk_conf($node, 'monk.base_url' => $api->url);
ok(wait_outbox_empty($node), 'the right URL: the events go');
api_holds_exactly($api, \@keys, 'the API holds each event once');

# ---- 2. a refusal whose body is not UTF-8, cut inside a character ---------
# bytes that are not UTF-8, a NUL, then "é" (2 bytes) repeatedly: the 4,096
# bytes kept end inside one
my $bad = "\xff\xfe\xfd\x00x" . ("\xc3\xa9" x 2100);
my $refusing = odd_server(400, 'application/json', $bad);
set_monk_conf($node, 'monk.base_url' => $refusing);
psql(q{SELECT monk_send('call', 'cus_1', idempotency_key => 'refused_badbytes')});
ok(wait_until('the dead letter', 30, sub { status('dead_letters') eq '1' }), 'the refused event is dead-lettered');
set_monk_conf($node, 'monk.base_url' => $api->url);
is(psql(q{SELECT left(response_body, 19) FROM monk.dead_letter}), '\xff\xfe\xfd\x00xéé', 'bytes that are not UTF-8, and NUL, are written \xNN');
is(psql(q{SELECT octet_length(convert_to(response_body, 'UTF8')) <= 4096 FROM monk.dead_letter}), 't',
	'the body is valid text, within 4 kB');
is(psql(q{SELECT right(response_body, 1) FROM monk.dead_letter}), 'é', 'cut on a character');
like(status('last_error'), qr/^HTTP 400: \\xff\\xfe\\xfd\\x00xéé/, 'last_error is valid text too');
my $dump = "$PostgreSQL::Test::Utils::tmp_check/answers.dump";
command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', $node->connstr('postgres') ], 'pg_dump of the database');
command_ok([ 'pg_restore', '-d', $node->connstr('restored'), $dump ], 'pg_restore of it');
is(psql(q{SELECT left(response_body, 19) FROM monk.dead_letter}, 'restored'), '\xff\xfe\xfd\x00xéé',
	'the restored dead letter holds the same answer');

# ---- 3. read-back checks what it reads -----------------------------------
for my $case (
	[ 'an array',              '[]',                                             qr/is not a JSON object/ ],
	[ 'a scalar item',         '{"data": [1], "hasMore": false}',                qr/an item of "data" that is not an object, at index 0/ ],
	[ 'hasMore "yes"',         '{"data": [], "hasMore": "yes"}',                 qr/"hasMore" that is not a boolean/ ],
	[ 'a NUL byte',            qq({"data": [], "hasMore": false}\x00junk),       qr/holds a NUL byte, at byte 30/ ],
	[ 'bytes not UTF-8',       qq({"data": [], "hasMore": false, "x": "\xff"}),  qr/is not valid UTF-8/ ],
	[ 'a cursor returned twice', '{"data": [], "hasMore": true, "nextCursor": "c1"}', qr/returned a "nextCursor" it had returned before, after 2 pages/ ],
  )
{
	my ($what, $body, $error) = @$case;
	set_monk_conf($node, 'monk.base_url' => odd_server(200, 'application/json', $body));
	my ($rc, $out, $err) = $node->psql('postgres', 'SELECT count(*) FROM monk_list_events()');
	like($err, $error, "monk_list_events, an answer with $what: a clear error");
}
set_monk_conf($node, 'monk.base_url' => odd_server(202, 'application/json', '{"data": [], "hasMore": false}'));
my ($rc, $out, $err) = $node->psql('postgres', 'SELECT count(*) FROM monk_list_events()');
like($err, qr/unexpected answer HTTP 202 from the Events API/, 'a read answered 202: unexpected');
set_monk_conf($node, 'monk.base_url' => $api->url);

# ---- 4. encodings -------------------------------------------------------
# LATIN1: é is one byte in the database, two at the API
psql(q{
CREATE TABLE orders (id int PRIMARY KEY, customer text NOT NULL, note text);
CREATE TRIGGER orders_capture AFTER INSERT OR UPDATE ON orders FOR EACH ROW
    EXECUTE FUNCTION monk_capture('order', 'external_customer_id=customer', 'properties=note');
SELECT monk_send('café', 'cus_é', '{"plat": "crème brûlée"}', idempotency_key => 'latin1_send');
INSERT INTO orders VALUES (1, 'cus_é', 'déjà vu');
}, 'latin1');
ok(wait_outbox_empty($node, 'latin1'), 'LATIN1: the worker sends (0.3 never ran there)');
my $ev = api_event('latin1_send');
is("$ev->{eventName}|$ev->{externalCustomerId}|$ev->{properties}{plat}",
	'café|cus_é|crème brûlée', 'LATIN1: monk_send arrives as the same characters in UTF-8');
my ($captured) = grep { /orders:1:order$/ } @{ $api->keys };
is($captured && api_event($captured)->{properties}{note}, 'déjà vu', 'LATIN1: a captured row too');

is(psql(q{SELECT event_name || '|' || (properties->>'plat') FROM monk_list_events(external_customer_id => 'cus_é') WHERE idempotency_key = 'latin1_send'}, 'latin1'),
	'café|crème brûlée', 'LATIN1: monk_list_events finds cus_é, and reads the names back as they were');
like(psql(q{SELECT monk_usage_cost('{"externalCustomerId": "cus_é"}')::text}, 'latin1'), qr/"eventCount": 2/,
	'LATIN1: monk_usage_cost sends the customer in UTF-8');
psql(q{
CREATE TABLE billing_events (id bigint PRIMARY KEY, external_customer_id text, event_name text, properties jsonb);
INSERT INTO billing_events VALUES (1, 'cus_é', 'export_é', '{"n": "ü"}');
}, 'latin1');
is(psql(q{SELECT events_sent FROM monk_batch_export('billing_events')}, 'latin1'), '1', 'LATIN1: the export sends');
is(api_event(key_prefix($node, 'latin1') . '1')->{eventName}, 'export_é', 'LATIN1: exported in UTF-8');
is(psql(q{SELECT count(*) FROM monk_verify_export('billing_events')}, 'latin1'), '0', 'LATIN1: verified');

# a character LATIN1 cannot hold, from the API
psql(q{SELECT monk_send('日本', 'cus_é', idempotency_key => 'utf8_only')});
ok(wait_outbox_empty($node), 'an event named in Japanese, from the UTF8 database');
like(psql_err(q{SELECT count(*) FROM monk_list_events(external_customer_id => 'cus_é')}, 'latin1'), qr/has no equivalent in encoding "LATIN1"/, 'LATIN1: reading it back is an error that names the encodings (22P05)');

# EUC_JP
psql(q{SELECT monk_send('日本語', 'cus_日本', '{"品": "茶"}', idempotency_key => 'eucjp_send')}, 'eucjp');
ok(wait_outbox_empty($node, 'eucjp'), 'EUC_JP: the worker sends');
$ev = api_event('eucjp_send');
is("$ev->{eventName}|$ev->{externalCustomerId}|$ev->{properties}{'品'}", '日本語|cus_日本|茶', 'EUC_JP: in UTF-8 at the API');
is(psql(q{SELECT event_name FROM monk_list_events(external_customer_id => 'cus_日本') WHERE idempotency_key = 'eucjp_send'}, 'eucjp'),
	'日本語', 'EUC_JP: read back');

# SQL_ASCII: UTF-8 bytes pass as they are; other bytes are refused
psql(q{SELECT monk_send('thé', 'cus_é', idempotency_key => 'ascii_send')}, 'sqlascii');
ok(wait_outbox_empty($node, 'sqlascii'), 'SQL_ASCII: the worker sends');
is(api_event('ascii_send')->{eventName}, 'thé', 'SQL_ASCII: UTF-8 bytes arrive as they are');
like(psql_err(q{SELECT monk_send(convert_from('\x746865e9', 'SQL_ASCII'), 'cus_1')}, 'sqlascii'), qr/invalid event: its text is not valid UTF-8/, 'SQL_ASCII: a LATIN1 byte is refused (22021)');

# WIN1252: byte 0x81 has no equivalent in UTF-8: refused when queued
# (before: the worker failed on it forever, and nothing behind it went); an
# export dead-letters such a row and sends the others
like(psql_err(q{SELECT monk_send('bad' || chr(129), 'cus_1')}, 'win1252'), qr/has no equivalent in encoding "UTF8"/,
	'WIN1252: an event with a character UTF-8 lacks is refused (22P05)');
psql(q{SELECT monk_send('good €', 'cus_1', idempotency_key => 'win_send')}, 'win1252');
ok(wait_outbox_empty($node, 'win1252'), 'WIN1252: the worker sends');
is(api_event('win_send')->{eventName}, 'good €', 'WIN1252: € arrives in UTF-8');
psql(q{CREATE TABLE win_src (id bigint PRIMARY KEY, external_customer_id text, event_name text);
INSERT INTO win_src VALUES (1, 'cus_1', 'a'), (2, 'cus_1', 'b' || chr(129)), (3, 'cus_1', 'c €')}, 'win1252');
is(psql(q{SELECT events_sent || '/' || events_failed FROM monk_batch_export('win_src')}, 'win1252'), '2/1',
	'WIN1252: an export dead-letters the row UTF-8 cannot hold and sends the others');
like(psql(q{SELECT error FROM monk.dead_letter WHERE source_id = 2}, 'win1252'), qr/no equivalent in UTF-8/, 'with the reason');

# MULE_INTERNAL has no conversion to UTF-8
my $no_mule = psql_err(q{CREATE DATABASE mule ENCODING 'MULE_INTERNAL' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0});
SKIP:
{
	skip 'this PostgreSQL has no MULE_INTERNAL encoding', 2 if $no_mule =~ /is not a valid encoding name/;
	is($no_mule, '', 'a MULE_INTERNAL database');
	like(psql_err('CREATE EXTENSION monk', 'mule'), qr/monk cannot be used in a database whose encoding is MULE_INTERNAL/, 'MULE_INTERNAL: CREATE EXTENSION refuses');
}

$node->stop;
$api->stop;
done_testing();
