# monk.max_outbox_events follows what is really queued: events of rolled-back
# subtransactions (PL/pgSQL exception blocks, an ORM's savepoints) never
# count, nor do dead letters; events discarded with DELETE FROM monk.outbox
# and prepared transactions are counted again by the worker within seconds;
# and a full outbox refuses the next event (53400) while the API keeps
# failing.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use MonkApi;
use MonkTest;

my $api = MonkApi->new(api_key => 'test_key', customers => ['cus_1']);
my $node = monk_node(api => $api,
	conf => { 'monk.max_outbox_events' => 1000, 'max_prepared_transactions' => 2 });

sub psql { return $node->safe_psql('postgres', $_[0]) }
sub depth { return monk_status($node, 'outbox_depth') }

# Would one more monk_send pass the limit?  The SQLSTATE it fails with, or
# '' (the probe's event is rolled back either way: it queues nothing).
sub send_code
{
	my ($rc, $out, $err) = $node->psql('postgres',
		q{DO $$ BEGIN PERFORM monk_send('call', 'cus_1'); RAISE EXCEPTION 'probe';
		  EXCEPTION WHEN OTHERS THEN RAISE NOTICE 'code=%', SQLSTATE; END $$});
	return $err =~ /code=(\w+)/ ? ($1 eq 'P0001' ? '' : $1) : 'none';
}

ok(wait_until('the worker', 30, sub { monk_status($node, 'worker_state') eq 'idle' }), 'the worker runs');

# 1. 1,500 events queued in subtransactions that roll back, in an exception block and with savepoints
psql(q{DO $$
BEGIN
    FOR i IN 1 .. 1500 LOOP
        BEGIN
            PERFORM monk_send('call', 'cus_1', idempotency_key => 'undone_' || i);
            RAISE EXCEPTION 'undo';
        EXCEPTION WHEN raise_exception THEN NULL;
        END;
    END LOOP;
END $$});
psql(q{BEGIN;
SAVEPOINT a; SELECT monk_send('call', 'cus_1', idempotency_key => 'sp_undone_1'); ROLLBACK TO SAVEPOINT a;
SAVEPOINT a; SAVEPOINT b; SELECT monk_send('call', 'cus_1', idempotency_key => 'sp_undone_2'); RELEASE SAVEPOINT b;
  ROLLBACK TO SAVEPOINT a;
SAVEPOINT c; SELECT monk_send('call', 'cus_1', idempotency_key => 'sp_kept'); RELEASE SAVEPOINT c;
COMMIT});
ok(wait_outbox_empty($node), 'the one event kept is sent');
is(send_code(), '', 'events of rolled-back subtransactions never count: with 1,500 of them and a limit of 1,000, monk_send is accepted');
ok(wait_outbox_empty($node), 'drained');
api_holds_exactly($api, [ 'sp_kept', grep { !/^(undone|sp_undone)/ } @{ $api->keys } ], 'only the committed event of them arrived');
is(scalar(grep { /undone/ } @{ $api->keys }), 0, 'no rolled-back event was sent');
set_monk_conf($node, 'monk.max_outbox_events' => 2);
is(send_code(), '', 'the drained outbox counts as empty: with a limit of 2, monk_send is accepted');

# 2. dead letters do not count
psql(q{SELECT monk_send('call', 'cus_unknown') FROM generate_series(1, 20)});
ok(wait_until('the dead letters', 30, sub { psql('SELECT count(*) FROM monk.dead_letter') == 20 }), 'refused events are dead-lettered');
is(depth(), '0', 'and leave the outbox empty');
set_monk_conf($node, 'monk.max_outbox_events' => 20);
is(send_code(), '', 'and count nothing towards the limit');

# 3. the worker paused (a wrong key): the outbox fills, the next event is refused
set_monk_conf($node, 'monk.api_key' => 'wrong_key', 'monk.max_outbox_events' => 3);
psql(q{SELECT monk_send('call', 'cus_1', idempotency_key => 'held_1')});
ok(wait_until('the pause', 30, sub { monk_status($node, 'worker_state') eq 'paused: authentication failed' }), 'the worker is paused');
psql(qq{SELECT monk_send('call', 'cus_1', idempotency_key => 'held_$_')}) for 2 .. 3;
is(send_code(), '53400', 'with 3 queued and monk.max_outbox_events = 3, the 4th event is refused');
is(send_code(), '53400', 'and the 5th');

# 4. events discarded with DELETE FROM monk.outbox are counted again
psql('DELETE FROM monk.outbox');
is(depth(), '0', 'DELETE FROM monk.outbox discards the queued events');
ok(wait_until('monk_send to be accepted', 30, sub { send_code() eq '' }),
	'within seconds the worker counts them again, and monk_send is accepted again');

# 5. a prepared transaction's events count once committed
psql(q{BEGIN; SELECT monk_send('call', 'cus_1', idempotency_key => 'prep_' || i) FROM generate_series(1, 2) i; PREPARE TRANSACTION 'p'});
psql(q{COMMIT PREPARED 'p'});
psql(q{SELECT monk_send('call', 'cus_1', idempotency_key => 'after_prep')});
ok(wait_until('the limit to count them', 30, sub { send_code() eq '53400' }),
	'the events of a committed prepared transaction count towards the limit');

set_monk_conf($node, 'monk.api_key' => 'test_key');
ok(wait_outbox_empty($node), 'the outbox drains once the key is right');
is(depth(), '0', 'the depth is 0 again');

$node->stop;
$api->stop;
done_testing();
