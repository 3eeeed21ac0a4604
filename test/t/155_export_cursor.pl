# monk_batch_export never skips a committed row: rows committed late below
# the cursor (two sessions inserting into the README's bigserial table, a
# prepared transaction), ids of 0 and below; a row whose id is NULL and
# duplicate ids are refused with an error naming them; a row rolled back is
# never sent.  Checked by key at the local Monk API.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use MonkApi;
use MonkTest;

my $api = MonkApi->new(api_key => 'test_key', customers => ['cus_1']);
my $node = monk_node(api => $api, conf => { 'max_prepared_transactions' => 5 });
my $kp = key_prefix($node);

sub psql { return $node->safe_psql('postgres', $_[0]) }
sub export { return psql(qq{SELECT events_sent FROM monk_batch_export('$_[0]')}) }
my ($rc, $out, $err);

psql(q{
CREATE TABLE billing_events (
    id                   bigserial PRIMARY KEY,
    external_customer_id text NOT NULL,
    event_name           text NOT NULL,
    properties           jsonb);
});

# 1. a late commit: s1 takes id 1, s2 inserts id 2 and commits, the export
# sends id 2; s1 commits; the next export sends id 1
my $s1 = $node->background_psql('postgres');
$s1->query_safe(q{BEGIN; INSERT INTO billing_events (external_customer_id, event_name) VALUES ('cus_1', 'late')});
psql(q{INSERT INTO billing_events (external_customer_id, event_name) VALUES ('cus_1', 'early')});
is(export('billing_events'), '1', 'the first export sends the row committed');
is(psql(q{SELECT last_id || ' ' || pending_ids::text FROM monk.sync_state}), '2 {1}',
	'the cursor passed id 2 and keeps id 1, still being inserted, pending');
$s1->query_safe('COMMIT');
is(export('billing_events'), '1', 'the next export sends the row committed late');
is(psql(q{SELECT pending_ids::text FROM monk.sync_state}), '{}', 'and lets it go');
api_holds_exactly($api, [ "${kp}1", "${kp}2" ], 'the API holds both rows');

# 2. a prepared transaction committed after the export; a row rolled back
psql(q{BEGIN; INSERT INTO billing_events (external_customer_id, event_name) VALUES ('cus_1', 'prepared'); PREPARE TRANSACTION 'p1'});
$s1->query_safe(q{BEGIN; INSERT INTO billing_events (external_customer_id, event_name) VALUES ('cus_1', 'rolled back')});
psql(q{INSERT INTO billing_events (external_customer_id, event_name) VALUES ('cus_1', 'after')});
is(export('billing_events'), '1', 'an export while a transaction is prepared and another open');
is(psql(q{SELECT pending_ids::text FROM monk.sync_state}), '{3,4}', 'both their ids pending');
psql(q{COMMIT PREPARED 'p1'});
$s1->query_safe('ROLLBACK');
$s1->quit;
is(export('billing_events'), '1', 'the prepared row is sent once committed');
is(psql(q{SELECT pending_ids::text FROM monk.sync_state}), '{}', 'the rolled back one is let go');
is(export('billing_events'), '0', 'and nothing is sent again');
api_holds_exactly($api, [ map { "$kp$_" } 1, 2, 3, 5 ], 'the API holds every committed row once, and not the rolled back one');

# the README's pattern: a plain view over the table, filtering and renaming
psql(q{CREATE VIEW billing_export AS
    SELECT id, external_customer_id, 'renamed_' || event_name AS event_name FROM billing_events WHERE event_name <> 'skipped'});
is(export('billing_export'), '4', 'a first export of the view');
$s1 = $node->background_psql('postgres');
$s1->query_safe(q{BEGIN; INSERT INTO billing_events (external_customer_id, event_name) VALUES ('cus_1', 'late in view')});
psql(q{INSERT INTO billing_events (external_customer_id, event_name) VALUES ('cus_1', 'skipped'), ('cus_1', 'early in view')});
is(export('billing_export'), '1', 'the view: the row committed is sent');
is(psql(q{SELECT pending_ids::text FROM monk.sync_state WHERE cursor_name = 'public.billing_export'}), '{6}',
	'the row still being inserted is pending, the one the view filters out is not');
$s1->query_safe('COMMIT');
$s1->quit;
is(export('billing_export'), '1', 'the view: the row committed late is sent');
is(psql(q{SELECT pending_ids::text FROM monk.sync_state WHERE cursor_name = 'public.billing_export'}), '{}', 'nothing pending');

# red team: max_events ends a run before it read every pending id: the ids
# it did not read stay pending (before: dropped, their rows never sent)
$api->reset;
psql(q{CREATE TABLE cut_src (id bigserial PRIMARY KEY, external_customer_id text DEFAULT 'cus_1', event_name text DEFAULT 'e');
BEGIN; INSERT INTO cut_src DEFAULT VALUES; PREPARE TRANSACTION 'c1';});
psql(q{BEGIN; INSERT INTO cut_src DEFAULT VALUES; PREPARE TRANSACTION 'c2';});
psql(q{INSERT INTO cut_src DEFAULT VALUES});
is(export('cut_src'), '1', 'id 3 sent, ids 1 and 2 being inserted');
psql(q{COMMIT PREPARED 'c1'; COMMIT PREPARED 'c2'});
is(psql(q{SELECT events_sent FROM monk_batch_export('cut_src', max_events => 1)}), '1', 'a run of one event reads id 1');
is(psql(q{SELECT pending_ids::text FROM monk.sync_state WHERE cursor_name = 'public.cut_src'}), '{2}', 'id 2 stays pending');
is(export('cut_src'), '1', 'and is sent by the next run');
api_holds_exactly($api, [ "${kp}1", "${kp}2", "${kp}3" ], 'the API holds the three rows');

# red team: a table's inheritance children are looked at too
$api->reset;
psql(q{CREATE TABLE parent_src (id bigserial PRIMARY KEY, external_customer_id text DEFAULT 'cus_1', event_name text DEFAULT 'e');
CREATE TABLE child_src () INHERITS (parent_src); CREATE UNIQUE INDEX ON child_src (id);
BEGIN; INSERT INTO child_src DEFAULT VALUES; PREPARE TRANSACTION 'c3';});
psql(q{INSERT INTO parent_src DEFAULT VALUES});
is(export('parent_src'), '1', 'the parent row is sent while the child row is being inserted');
psql(q{COMMIT PREPARED 'c3'});
is(export('parent_src'), '1', 'the child row committed late is sent');

# red team: an export in a transaction that wrote rows could send them and
# then roll back: refused
($rc, $out, $err) = $node->psql('postgres', q{BEGIN; INSERT INTO cut_src DEFAULT VALUES; SELECT * FROM monk_batch_export('cut_src'); ROLLBACK});
like($err, qr/monk_batch_export must run in a transaction that has written nothing/, 'an export after a write in its transaction is refused');
is(export('cut_src'), '0', 'and nothing of the rolled back row is sent');

# 3. ids of 0 and below: a new cursor starts before every id
psql(q{CREATE TABLE signed (id bigint PRIMARY KEY, external_customer_id text, event_name text);
INSERT INTO signed VALUES (-5, 'cus_1', 'negative'), (0, 'cus_1', 'zero'), (3, 'cus_1', 'positive')});
$api->reset;
is(export('signed'), '3', 'rows with ids -5, 0 and 3 are sent');
api_holds_exactly($api, [ "${kp}-5", "${kp}0", "${kp}3" ], 'the API holds the three');

# 4. a row whose id is NULL is refused, naming the row
psql(q{CREATE TABLE nullable (id bigint, external_customer_id text, event_name text);
INSERT INTO nullable VALUES (1, 'cus_1', 'one'), (NULL, 'cus_1', 'no id')});
($rc, $out, $err) = $node->psql('postgres', q{SELECT * FROM monk_batch_export('nullable')});
like($err, qr/public\.nullable has a row whose id is NULL/, 'a NULL id: an error naming the source');
like($err, qr/"event_name":"no id"/, 'and the row');

# 5. duplicate ids are refused, also where max_events would cut between them
psql(q{CREATE VIEW doubled AS SELECT id, external_customer_id, event_name FROM signed
       UNION ALL SELECT 3, 'cus_1', 'again'});
($rc, $out, $err) = $node->psql('postgres', q{SELECT * FROM monk_batch_export('doubled')});
like($err, qr/the source has several rows with id 3/, 'duplicate ids: an error naming the id');
($rc, $out, $err) = $node->psql('postgres', q{SELECT * FROM monk_batch_export('doubled', max_events => 3, cursor_name => 'cut')});
like($err, qr/the source has several rows with id 3/, 'also when max_events ends on the first of them');

$node->stop;
$api->stop;
done_testing();
