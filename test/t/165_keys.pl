# Default keys never collide (issue 22).  Two databases of one cluster and a
# second cluster send to one account with no setting: each database's
# default keys (monk_send, monk_capture, monk_batch_export) hold its own id,
# and the API counts every event.  Under 0.3 they collided: sync_outbox_1,
# sync_public.t:1:ev and sync_1 in every database, and the API counted a
# third of them.
# A copy made by pg_dump and pg_restore keeps the id: a correction made
# there lands on the key already billed.  An update from 0.3 keeps 0.3's
# keys where they were billed: an export cursor moved back sends the keys it
# sent, monk_verify_export follows, and a correction of a table captured
# under 0.3 lands on its key; what is new gets the new keys.
use strict;
use warnings;
use File::Spec;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use MonkApi;
use MonkTest;

my $api = MonkApi->new(api_key => 'test_key');
my $one = monk_node(api => $api, name => 'one', databases => [ 'postgres', 'app2', 'old' ]);
my $two = monk_node(api => $api, name => 'two', databases => [ 'postgres', 'restored' ]);

my $setup = q{
CREATE TABLE t (id int PRIMARY KEY, customer text NOT NULL, tokens int NOT NULL);
CREATE TRIGGER t_monk AFTER INSERT OR UPDATE ON t FOR EACH ROW
  EXECUTE FUNCTION monk_capture('ev', 'external_customer_id=customer', 'properties=tokens');
CREATE TABLE src (id bigint PRIMARY KEY, event_name text, external_customer_id text);
INSERT INTO src VALUES (1, 'exported', 'cus_1'), (2, 'exported', 'cus_1');
};

# --- three databases, two clusters, the defaults everywhere
my @keys;
my %prefix;
for my $place ([ $one, 'postgres' ], [ $one, 'app2' ], [ $two, 'postgres' ])
{
	my ($node, $db) = @$place;
	my $where = $node->name . "/$db";
	$node->safe_psql($db, $setup);
	my @queued = split /\n/, $node->safe_psql($db, q{SELECT monk_send('call', 'cus_1') FROM generate_series(1, 5)});
	push @keys, @queued;
	$node->safe_psql($db, q{INSERT INTO t VALUES (1, 'cus_1', 1)});
	is($node->safe_psql($db, q{SELECT events_sent FROM monk_batch_export('src')}), '2', "$where exports its rows");
	my $kp = $prefix{$where} = key_prefix($node, $db);
	like($kp, qr/^sync_[0-9a-f]{16}_$/, "$where: default keys begin with sync_ and the database's id");
	is(join(',', @queued), join(',', map { "${kp}outbox_$_" } 1 .. 5), "$where: the keys monk_send assigned");
	push @keys, "${kp}public.t:1:ev", "${kp}1", "${kp}2";
	ok(wait_outbox_empty($node, $db), "$where: its outbox drains");
}
is(scalar(keys %{ { map { $_ => 1 } @keys } }), 24, 'no two of the 24 default keys are equal');
api_holds_exactly($api, \@keys, 'the API counts every event of the three databases');

# --- pg_dump and pg_restore into the other cluster: the copy keeps the id
my $dump = File::Spec->catfile(PostgreSQL::Test::Utils::tempdir(), 'app2.dump');
$two->safe_psql('restored', 'DROP EXTENSION monk');
command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', $one->connstr('app2') ], 'pg_dump of app2');
command_ok([ 'pg_restore', '-d', $two->connstr('restored'), $dump ], 'pg_restore into the other cluster');
is(key_prefix($two, 'restored'), $prefix{'one/app2'}, 'the restored database keeps the id');
$two->safe_psql('restored', q{UPDATE t SET tokens = 2 WHERE id = 1});
ok(wait_outbox_empty($two, 'restored'), 'the correction made in the copy is sent');
my ($tokens) = api_versions($api, 'tokens');
is($tokens->{"$prefix{'one/app2'}public.t:1:ev"}, 2, 'on the key the original billed');
api_holds_exactly($api, \@keys, 'and nothing else');
# a copy that sends events of its own takes an id of its own
$two->safe_psql('restored', 'INSERT INTO monk.database_id DEFAULT VALUES');
my $copy_key = $two->safe_psql('restored', q{SELECT monk_send('call', 'cus_1')});
isnt(key_prefix($two, 'restored'), $prefix{'one/app2'}, 'a new id replaces it');
like($copy_key, qr/^\Q@{[ key_prefix($two, 'restored') ]}\Eoutbox_\d+$/, 'and the next default key holds the new id');
ok(wait_outbox_empty($two, 'restored'), 'it is sent');
push @keys, $copy_key;

# --- 0.3, then the update: what 0.3 billed keeps its keys.  Only 0.4's
# library is installed: the export 0.3 made is what it left, the rows at the
# API under 0.3's keys and the cursor past them; 0.4's library refuses to
# export before the update.
$one->safe_psql('old', 'DROP EXTENSION monk');
$one->safe_psql('old', q{CREATE EXTENSION monk VERSION '0.3'});
$one->safe_psql('old', $setup);
$one->safe_psql('old', q{INSERT INTO t VALUES (1, 'cus_1', 1)});
$one->safe_psql('old', q{
SELECT monk_send(event_name, external_customer_id, idempotency_key => 'sync_' || id) FROM src;
INSERT INTO monk.sync_state (cursor_name, source, last_id, events_sent) VALUES ('public.src', 'public.src', 2, 2);
});
my ($rc, $out, $err) = $one->psql('old', q{SELECT events_sent FROM monk_batch_export('src')});
like($err, qr/older than its library.*\n.*nothing was sent.*\n.*ALTER EXTENSION monk UPDATE/s,
	'0.4 refuses to export with the tables of 0.3, and says what to run');
ok(wait_outbox_empty($one, 'old'), "0.3's captured row is sent");
push @keys, 'sync_public.t:1:ev', 'sync_1', 'sync_2';
api_holds_exactly($api, \@keys, "0.3's default keys: sync_ alone");

$one->safe_psql('old', 'ALTER EXTENSION monk UPDATE');
my $kp = key_prefix($one, 'old');
$one->safe_psql('old', q{
UPDATE t SET tokens = 2 WHERE id = 1;
INSERT INTO t VALUES (2, 'cus_1', 1);
CREATE TABLE t2 (id int PRIMARY KEY, customer text NOT NULL);
CREATE TRIGGER t2_monk AFTER INSERT ON t2 FOR EACH ROW EXECUTE FUNCTION monk_capture('ev', 'external_customer_id=customer');
INSERT INTO t2 VALUES (1, 'cus_1');
UPDATE monk.sync_state SET last_id = NULL;
});
is($one->safe_psql('old', q{SELECT events_sent FROM monk_batch_export('src')}), '2',
	'the cursor of 0.3, moved back, exports its rows again');
is($one->safe_psql('old', q{SELECT count(*) FROM monk_verify_export('src')}), '0',
	'monk_verify_export finds them under the keys of 0.3');
my $new_key = $one->safe_psql('old', q{SELECT monk_send('call', 'cus_1')});
like($new_key, qr/^\Q$kp\Eoutbox_\d+$/, 'monk_send assigns the new keys after the update');
ok(wait_outbox_empty($one, 'old'), 'everything is sent');
($tokens) = api_versions($api, 'tokens');
is($tokens->{'sync_public.t:1:ev'}, 2, 'a correction of a row captured under 0.3 lands on its key');
push @keys, 'sync_public.t:2:ev', "${kp}public.t2:1:ev", $new_key;
api_holds_exactly($api, \@keys,
	"a table captured under 0.3 keeps 0.3's keys, one captured after the update takes the new ones; the re-export billed nothing twice");
# the cursor of 0.3 deleted: a new one of its source keeps 0.3's keys
$one->safe_psql('old', 'DELETE FROM monk.sync_state');
is($one->safe_psql('old', q{SELECT events_sent FROM monk_batch_export('src')}), '2', 'a new cursor of a source 0.3 exported');
api_holds_exactly($api, \@keys, 'sends the keys 0.3 sent: nothing twice');

# a data-only restore with the triggers disabled (as pg_dump advises) carries the id too
$two->safe_psql('postgres', 'CREATE DATABASE copy2');
$two->safe_psql('copy2', 'CREATE EXTENSION monk');
isnt(key_prefix($two, 'copy2'), $prefix{'one/app2'}, 'a new database has an id of its own');
command_ok([ 'pg_restore', '--data-only', '--disable-triggers', '--schema=monk', '--table=database_id',
		'-d', $two->connstr('copy2'), $dump ], 'pg_restore --data-only --disable-triggers of the id');
is(key_prefix($two, 'copy2'), $prefix{'one/app2'}, 'the row restored is the id');
$two->safe_psql('copy2', 'VACUUM (FREEZE) monk.database_id');
my $app2_prefix = $prefix{'one/app2'};
like($two->safe_psql('copy2', q{SELECT monk_send('call', 'cus_1')}), qr/^\Q$app2_prefix\E/,
	'and stays the id once vacuum froze both rows');

# an id replaced while a transaction queues: the transaction keeps one key per row
my $session = $one->background_psql('postgres');
$session->query_safe(q{BEGIN; INSERT INTO t VALUES (5, 'cus_1', 1)});
$one->safe_psql('postgres', 'INSERT INTO monk.database_id DEFAULT VALUES');
$session->query_safe(q{UPDATE t SET tokens = 2 WHERE id = 5; COMMIT});
$session->quit;
ok(wait_outbox_empty($one, 'postgres'), 'the row and its correction are sent');
my @five = grep { /public\.t:5:ev$/ } @{ $api->keys };
is(scalar(@five), 1, 'under one key, the id of the transaction\'s start (' . join(',', @five) . ')');
my $old = $prefix{'one/postgres'};
like($five[0], qr/^\Q$old\E/, 'the old one');

$one->stop;
$two->stop;
$api->stop;
done_testing();
