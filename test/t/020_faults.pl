# Faults of the API, each caused for real: 5xx, 429 with Retry-After,
# timeouts, dropped connections, a circuit breaker, a batch with one bad
# event, 413, a wrong API key.  After each, the API holds exactly the
# committed events, by idempotency key, and nothing good is dead-lettered.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use Time::Local qw(timegm);
use MonkApi;
use MonkTest;

my $api = MonkApi->new(api_key => 'test_key');
my $node = monk_node(api => $api,
	conf => { 'monk.batch_size' => 10, 'monk.flush_interval' => '20ms', 'monk.max_parallel_requests' => 2 });
my @all;    # every committed key so far

sub send_events
{
	my ($prefix, $n, $customer) = @_;
	my @keys = queue_events($node, $prefix, $n, customer => $customer // 'cus_ok');
	push @all, @keys;
	return @keys;
}

sub status { monk_status($node, $_[0]) }

# When the API logged a request, in seconds since the epoch.
sub request_time
{
	my ($y, $mo, $d, $h, $mi, $sec) = $_[0]{time} =~ /^(\d+)-(\d+)-(\d+)T(\d+):(\d+):([\d.]+)Z$/
	  or die "unexpected request time $_[0]{time}";
	return timegm(0, $mi, $h, $d, $mo - 1, $y) + $sec;
}

# transient failures: every kind, then success
$api->faults({ retry_after => 0,
	script => [ '500', '502', '503', '429', 'drop', 'drop_after_store', '408', '504' ] });
send_events('transient', 10);
ok(wait_outbox_empty($node), 'events get through 5xx, 429, 408 and dropped connections');
api_holds_exactly($api, \@all, 'the API holds exactly the committed events');
cmp_ok(status('requests_5xx'), '>=', 4, 'monk.status counts the 5xx answers');
cmp_ok(status('requests_failed'), '>=', 1, 'and the requests without an answer');
cmp_ok(status('events_retried'), '>=', 10, 'and the retried events');
is(status('dead_letters'), '0', 'nothing was dead-lettered');
my %receipts = map { $_ => $api->events->{$_}{receipts} } @all;
ok((grep { $receipts{$_} > 1 } @all) > 0, 'an answer lost after the API stored the events was sent again (idempotency absorbed it)');

# Retry-After is honoured: the retry waits at least that long
$api->faults({ retry_after => 2, script => ['429'] });
my $t0 = time;
send_events('after', 3);
ok(wait_outbox_empty($node), 'a 429 is retried');
cmp_ok(time - $t0, '>=', 2, 'not before its Retry-After (2 s), though the backoff base is 20 ms');
api_holds_exactly($api, \@all, 'exactly the committed events');

# a request slower than monk.request_timeout is abandoned and retried
set_monk_conf($node, 'monk.request_timeout' => '300ms');
$api->faults({ delay_ms => 1000 });
my $failed_before = status('requests_failed');
send_events('slow', 5);
ok(wait_until('a timeout', 30, sub { status('requests_failed') > $failed_before }), 'the slow request timed out');
$api->faults({ delay_ms => 0 });
ok(wait_outbox_empty($node), 'the events went through once the API was fast again');
api_holds_exactly($api, \@all, 'exactly the committed events');
set_monk_conf($node, 'monk.request_timeout' => '5s');

# the circuit breaker opens after consecutive failures and closes on success; while it is open no
# request reaches the API, and each time it half-opens a single probe does (one request at a time
# here, so that no request sent before the opening lands after it)
set_monk_conf($node, 'monk.circuit_failure_threshold' => 3, 'monk.circuit_open_time' => '1s',
	'monk.max_parallel_requests' => 1);
$api->faults({ fail_rate => { 500 => 1.0 } });
my $logged_before = scalar(@{ $api->requests(10000) });
# the requests answered 500 since (late answers of the slow requests above carry other statuses)
my $failed = sub {
	my $logged = $api->requests(10000);
	return [ grep { $_->{status} eq '500' } @$logged[ $logged_before .. $#$logged ] ];
};
send_events('circuit', 5);
ok(wait_until('the circuit to open', 30, sub { status('circuit') eq 'open' }), 'the circuit opens');
like(status('worker_state'), qr/circuit open|backing off/, 'the worker reports it');
like(status('last_error'), qr/^HTTP 500/, 'with the last error');
ok(wait_until('two probes of the open circuit', 20, sub { scalar(@{ $failed->() }) >= 5 }),
	'the open circuit is probed');
my @times = map { request_time($_) } @{ $failed->() }[ 2 .. 4 ];
my @gaps = map { sprintf('%.3f', $times[$_] - $times[ $_ - 1 ]) } 1 .. $#times;
is(scalar(grep { $_ < 0.9 } @gaps), 0,
	"after the 3rd failure no request while the circuit is open, then one probe per opening (gaps: @gaps s)");
$api->clear_faults;
ok(wait_outbox_empty($node), 'after the API recovers, the events go through');
ok(wait_until('the circuit to close', 10, sub { status('circuit') eq 'closed' }), 'the circuit closes');
ok($node->log_contains(qr/monk: the circuit breaker opened after 3 consecutive failed requests; no request is sent for 1000 ms/),
	'the server log says when the circuit opened');
ok($node->log_contains(qr/monk: the circuit breaker closed: the Events API answered again/),
	'and when it closed');
set_monk_conf($node, 'monk.max_parallel_requests' => 2);
api_holds_exactly($api, \@all, 'exactly the committed events');

# a batch with one bad event: only it is dead-lettered, with the API's answer
my $listener = $node->background_psql('postgres');
$listener->query_safe('LISTEN monk_alert');
$api->faults({ customers => ['cus_ok'] });
$node->safe_psql('postgres', q{
SELECT monk_send('api_call', CASE WHEN i = 7 THEN 'cus_unknown' ELSE 'cus_ok' END,
                 idempotency_key => 'mixed_' || i)
  FROM generate_series(1, 10) i});
ok(wait_outbox_empty($node), 'the batch with one bad event drains');
my @good = map { "mixed_$_" } grep { $_ != 7 } 1 .. 10;
push @all, @good;
api_holds_exactly($api, \@all, 'every good event of the batch was delivered');
is($node->safe_psql('postgres',
	q{SELECT idempotency_key, http_status, source, response_body LIKE '%cus_unknown%' FROM monk.dead_letter}),
	'mixed_7|400|outbox|t', 'only the bad event is dead-lettered, with the status and the API\'s answer');
is($node->safe_psql('postgres', q{SELECT event::json->>'externalCustomerId' FROM monk.dead_letter}),
	'cus_unknown', 'the dead letter keeps the event');
my $notes = $listener->query_safe('SELECT 1');
like($listener->{stdout} . $notes, qr/Asynchronous notification "monk_alert" with payload "\{"event": "dead_letter".*"status": 400\}"/,
	'a NOTIFY monk_alert told of the dead letter');
cmp_ok(status('events_failed'), '==', 1, 'monk.status counts one failed event');

# once the customer exists, the dead letter can be sent again with its key
$api->faults({ customers => [ 'cus_ok', 'cus_unknown' ] });
is($node->safe_psql('postgres', 'SELECT monk_retry_dead_letters()'), '1', 'monk_retry_dead_letters queues it again');
ok(wait_outbox_empty($node), 'and it drains');
push @all, 'mixed_7';
api_holds_exactly($api, \@all, 'the retried event arrived with its original key');
is($node->safe_psql('postgres', 'SELECT count(*) FROM monk.dead_letter'), '0', 'the dead letters are empty');
$api->faults({ customers => undef });

# 413: the batch is split
$api->faults({ script => ['413'] });
send_events('large', 10);
ok(wait_outbox_empty($node), 'a 413 batch is split and sent');
api_holds_exactly($api, \@all, 'exactly the committed events');

# a batch failing monk.max_retries times is parked, never dropped
set_monk_conf($node, 'monk.max_retries' => 2);
$api->faults({ fail_rate => { 503 => 1.0 }, retry_after => 0 });
send_events('parked', 3);
ok(wait_until('the batch to be parked', 30, sub {
		$node->safe_psql('postgres', q{SELECT count(*) FROM monk.outbox WHERE next_attempt_at IS NOT NULL AND last_status = 503}) == 3 }),
	'after its retries the batch is parked, its events still queued with the last error');
$api->clear_faults;
ok(wait_outbox_empty($node), 'the parked batch is retried later and delivered');
api_holds_exactly($api, \@all, 'exactly the committed events');
set_monk_conf($node, 'monk.max_retries' => 10);

# a wrong API key pauses sending; nothing is dead-lettered; fixing it resumes
# (through the configuration file: ALTER SYSTEM would be logged by log_statement)
$node->append_conf('postgresql.conf', "monk.api_key = 'wrong_key'");
$node->reload;
send_events('auth', 5);
ok(wait_until('the pause', 30, sub { status('worker_state') eq 'paused: authentication failed' }),
	'a 401 pauses the worker');
is(outbox_count($node), '5', 'the events stay queued');
is(status('dead_letters'), '0', 'nothing is dead-lettered');
like(status('last_error'), qr/^HTTP 401/, 'monk.status shows the error');
unlike(status('last_error'), qr/wrong_key/, 'without the key');
$notes = $listener->query_safe('SELECT 1');
like($listener->{stdout} . $notes, qr/"event": "auth_failed"/, 'a NOTIFY monk_alert told of the pause');
$node->append_conf('postgresql.conf', "monk.api_key = 'test_key'");
$node->reload;
ok(wait_outbox_empty($node), 'after the key is fixed and reloaded, the events go through');
ok(wait_until('the worker idle without an error', 10, sub {
			$node->safe_psql('postgres', q{SELECT coalesce(last_error, 'none') || ' ' || (last_error_at < last_success_at) || ' ' || worker_state FROM monk.status})
			  eq 'none true idle' }),
	'the trouble over, monk.status shows no stale 401 beside the idle worker (last_error_at stays)');
api_holds_exactly($api, \@all, 'exactly the committed events, none lost');
$listener->quit;

# 403 too
$api->faults({ forbidden_keys => ['test_key'] });
send_events('forbidden', 2);
ok(wait_until('the pause', 30, sub { status('worker_state') eq 'paused: authentication failed' }), 'a 403 pauses the worker');
$api->faults({ forbidden_keys => [] });
$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
ok(wait_outbox_empty($node), 'a reload resumes it');
api_holds_exactly($api, \@all, 'exactly the committed events');

my $log = slurp_file($node->logfile);
like($log, qr/parameter "monk.api_key"|configuration reloaded/, 'the key was changed by reloads');
unlike($log, qr/wrong_key|test_key/, 'the server log never shows an API key, not even when a reload changes it');

$node->stop;
$api->stop;
done_testing();
