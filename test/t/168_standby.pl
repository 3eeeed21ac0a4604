# A failover never bills a transaction the new primary lacks (issue 22):
# with monk.standby_names naming the standby, an event is sent only once
# the standby has flushed its commit.  An asynchronous standby is stopped,
# so that it falls behind; an event committed then waits (monk.status says
# so, the server log says why after a minute) and is never sent; the
# primary is lost, the standby promoted: the API holds exactly the events of
# the transactions the new primary has.  Without the setting the waiting
# event is sent at once, and billed though the new primary never had it.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use MonkApi;
use MonkTest;

my $api = MonkApi->new(api_key => 'test_key');
my $primary = monk_node(api => $api, name => 'primary', init => { allows_streaming => 1 },
	conf => { 'monk.standby_names' => 'standby1', 'monk.flush_interval' => '10ms' });
$primary->backup('b');
# PostgreSQL::Test::Cluster names a standby's application_name after its node
my $standby = PostgreSQL::Test::Cluster->new('standby1');
$standby->init_from_backup($primary, 'b', has_streaming => 1);
$standby->start;

sub sent { my $k = shift; return scalar grep { $_ eq $k } @{ $api->keys } }

# the form of synchronous_standby_names, checked by the server's own parser
my ($rc, $out, $err) = $primary->psql('postgres', q{ALTER SYSTEM SET monk.standby_names = 'ANY 1 (standby1'});
like($err, qr/invalid value for parameter "monk.standby_names".*\n.*syntax error/s, 'a malformed list is refused');
($rc, $out, $err) = $primary->psql('postgres', q{SET monk.standby_names = 'standby1'});
like($err, qr/cannot be changed now/, 'and it is set in the configuration files only');

$primary->safe_psql('postgres', q{SELECT monk_send('call', 'cus_1', idempotency_key => 'k1')});
ok(wait_until('k1 at the API', 30, sub { sent('k1') }), 'an event is sent once the standby has flushed its commit');

set_monk_conf($primary, 'monk.standby_names' => 'ANY 1 (other, "standby1")');
$primary->safe_psql('postgres', q{SELECT monk_send('call', 'cus_1', idempotency_key => 'k_any')});
ok(wait_until('k_any at the API', 30, sub { sent('k_any') }), 'ANY 1 (...) with the standby among others');

# the standby falls behind: it is gone
$standby->stop;
$primary->safe_psql('postgres', q{SELECT monk_send('call', 'cus_1', idempotency_key => 'k2')});
ok(wait_until('the worker waiting for the standby', 30,
		sub { monk_status($primary, 'worker_state') eq 'waiting for standbys' }),
	'monk.status shows that sending waits for the standby');
ok(!sent('k2'), 'the event waits: the standby has not flushed its commit');
# an export waits too (a cancel ends the wait; nothing was sent)
$primary->safe_psql('postgres', q{CREATE TABLE src (id bigint PRIMARY KEY, event_name text, external_customer_id text);
INSERT INTO src VALUES (1, 'exported', 'cus_1')});
($rc, $out, $err) = $primary->psql('postgres', q{SET statement_timeout = '1s'; SELECT * FROM monk_batch_export('src')});
like($err, qr/canceling statement due to statement timeout/, 'monk_batch_export waits for the standby');
is(scalar(grep { /_1$/ } @{ $api->keys }), 0, 'and sends nothing meanwhile');
is(monk_status($primary, 'outbox_depth'), '1', 'it stays queued');

# the primary is lost; the standby, which never had k2, is promoted
$primary->stop('immediate');
$standby->start;
$standby->promote;
is($standby->safe_psql('postgres', q{SELECT count(*) FROM monk.outbox WHERE idempotency_key = 'k2'}), '0',
	'the new primary lacks the transaction');
# the new primary has no standby: it names none
$standby->safe_psql('postgres', q{ALTER SYSTEM SET monk.standby_names = ''});
$standby->safe_psql('postgres', q{SELECT pg_reload_conf()});
$standby->safe_psql('postgres', q{SELECT monk_send('call', 'cus_1', idempotency_key => 'k3')});
ok(wait_until('k3 at the API', 60, sub { sent('k3') }), 'the new primary sends');
ok(wait_outbox_empty($standby), 'and drains its outbox');
api_holds_exactly($api, [ 'k1', 'k_any', 'k3' ],
	'the API holds exactly the transactions of the surviving timeline: never the lost one');

$standby->stop;
$api->stop;
done_testing();
