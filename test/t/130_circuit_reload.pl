# The circuit breaker, the authentication pause, Retry-After and reloads
# compose: a reload that changes where events go or with which key resumes
# sending at once, from every state the sender can be in (circuit open, a
# half-open probe answered 401, paused, backing off); a reload that changes
# none of them leaves the breaker as it was.  The circuit's open time is a
# minute here, so that waiting it out cannot pass for resuming.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use MonkApi;
use MonkTest;

my $api = MonkApi->new(api_key => 'test_key');
my $node = monk_node(api => $api, api_key => 'wrong_key',
	conf => {
		'monk.circuit_failure_threshold' => 2,
		'monk.circuit_open_time'         => '60s',
		'monk.flush_interval'            => '100ms',
	});
my @all;

sub status { monk_status($node, $_[0]) }

# Resumed: the outbox drains within a bound far below the circuit's open time.
sub resumes_at_once
{
	my ($name) = @_;
	my $t = time;
	ok(wait_outbox_empty($node, 'postgres', 20), "$name: sending resumes");
	cmp_ok(time - $t, '<', 20, "$name: without waiting out the open circuit");
	api_holds_exactly($api, \@all, "$name: the API holds exactly the committed events");
}

# 1. the circuit opens (the API failing), the half-open probe is answered
# 401 (the key is wrong), the key is fixed and reloaded
set_monk_conf($node, 'monk.circuit_open_time' => '1s');
$api->faults({ script => [ 503, 503 ], retry_after => 0 });
push @all, queue_events($node, 'probe', 3);
ok(wait_until('the pause', 30, sub { status('worker_state') eq 'paused: authentication failed' }),
	'the circuit opened, and its probe was answered 401: paused');
isnt(status('circuit'), 'half-open', 'the probe answered, the circuit is not left half-open');
set_monk_conf($node, 'monk.api_key' => 'test_key', 'monk.circuit_open_time' => '60s');
resumes_at_once('a 401 probe, then the key fixed');

# 2. the circuit open on a wrong base_url; the URL fixed by a reload
set_monk_conf($node, 'monk.base_url' => 'http://127.0.0.1:9');
push @all, queue_events($node, 'url', 3);
ok(wait_until('the circuit to open', 30, sub { status('circuit') eq 'open' }), 'a wrong URL opens the circuit');
# a reload that changes nothing of the destination leaves it open
set_monk_conf($node, 'monk.batch_size' => 100);
is(status('circuit'), 'open', 'a reload of another setting leaves the circuit open');
set_monk_conf($node, 'monk.base_url' => $api->url);
resumes_at_once('the base_url fixed while the circuit is open');

# 3. paused with the circuit open: the circuit opens (the API failing),
# then a reload puts a wrong key (the probe at once, answered 401: paused),
# then the right key again
$api->faults({ script => [ 503, 503 ], retry_after => 0 });
push @all, queue_events($node, 'paused', 3);
ok(wait_until('the circuit to open', 30, sub { status('circuit') eq 'open' }), 'the circuit opens again');
set_monk_conf($node, 'monk.api_key' => 'another_wrong_key');
ok(wait_until('the pause', 30, sub { status('worker_state') eq 'paused: authentication failed' }),
	'a new wrong key is tried at once, and refused');
set_monk_conf($node, 'monk.api_key' => 'test_key');
resumes_at_once('paused after the circuit opened, then the key fixed');

# 4. Retry-After of an hour: a new key ends it too
$api->faults({ script => [503], retry_after => 3600 });
push @all, queue_events($node, 'retry_after', 3);
ok(wait_until('the 503', 30, sub { ($api->stats->{by_status}{503} // 0) > 0 }), 'the API asks to wait an hour');
set_monk_conf($node, 'monk.api_key_file' => do {
	my $f = PostgreSQL::Test::Utils::tempdir . '/key';
	PostgreSQL::Test::Utils::append_to_file($f, "test_key\n");
	chmod 0600, $f;
	$f });
# the key in force is the same, read from a file now: the destination did not change
is(scalar(grep { /^retry_after_/ } @{ $api->keys }), 0, 'the same key from a file leaves the Retry-After in force');
set_monk_conf($node, 'monk.base_url' => $api->url . '/');
is(scalar(grep { /^retry_after_/ } @{ $api->keys }), 0, 'the same URL written differently too');
$api->_call('POST', '/_test/faults', { api_key => 'rotated_key' });
set_monk_conf($node, 'monk.api_key_file' => '', 'monk.api_key' => 'rotated_key');
resumes_at_once('a new key during a Retry-After');

# 5. open, then probes that cannot even start (libcurl refusing them:
# monk.test_wait_points lists fail_start): each ends as a failure, and the
# circuit opens again and probes again after its open time (a probe that
# never left must not hold the circuit half-open for good); once requests
# start again -- a reload that changes neither the destination nor the key,
# so that the breaker itself must recover -- sending resumes
set_monk_conf($node, 'monk.circuit_open_time' => '1s');
$api->faults({ script => [ 503, 503 ], retry_after => 0 });
push @all, queue_events($node, 'failed_start', 3);
ok(wait_until('the circuit to open', 30, sub { status('circuit') eq 'open' }), 'the API failing opens the circuit');
set_monk_conf($node, 'monk.test_wait_points' => 'fail_start');
my $failed = status('requests_failed');
ok(wait_until('three probes that could not start', 30, sub { status('requests_failed') >= $failed + 3 }),
	'the circuit probes again and again (a probe that could not start ends)');
like(status('last_error'), qr/could not start the request/, 'last_error says the request could not start');
set_monk_conf($node, 'monk.test_wait_points' => '');
resumes_at_once('probes that could not start, then requests start again');

$node->stop;
$api->stop;
done_testing();
