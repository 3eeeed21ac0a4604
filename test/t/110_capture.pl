# monk_capture delivers: rows captured by a row-level trigger and by a
# statement-level one reach the API exactly once, each key with the newest
# version of its row after UPDATEs (corrections), through 5xx, 429, lost
# answers and an immediate stop mid-export; rolled-back rows never arrive.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use MonkApi;
use MonkTest;

my $api = MonkApi->new(api_key => 'test_key');
my $node = monk_node(api => $api,
	conf => {
		'monk.batch_size'            => 200,
		'monk.flush_interval'        => '10ms',
		'monk.max_parallel_requests' => 4,
		'monk.request_timeout'       => '2s',
	});
$node->append_conf('postgresql.conf', "restart_after_crash = on\n");
my $kp = key_prefix($node);

sub psql { return $node->safe_psql('postgres', $_[0]) }

# For each key the API holds under $prefix: the tokens of the version it holds
# and whether the versions it received ever went backwards.
sub api_tokens
{
	my ($prefix) = @_;
	my $events = $api->_call('GET', '/_test/events?history=1')->{events};
	my (%tokens, @backwards);
	for my $k (grep { index($_, $prefix) == 0 } keys %$events)
	{
		$tokens{$k} = $events->{$k}{event}{properties}{tokens};
		my @h = map { $_->{properties}{v} // 0 } @{ $events->{$k}{history} };
		push @backwards, $k if grep { $h[$_] < $h[ $_ - 1 ] } 1 .. $#h;
	}
	return (\%tokens, \@backwards);
}

# The table's rows as "key => tokens", for the keys monk_capture derives.
sub table_tokens
{
	my ($table, $event) = @_;
	my %rows = map { split /\|/ }
	  split /\n/, psql("SELECT format('%spublic.%s:%s:%s', '$kp', '$table', id, '$event') || '|' || tokens FROM $table");
	return \%rows;
}

sub same_tokens
{
	my ($got, $want, $name) = @_;
	my @diff = grep { ($got->{$_} // 'missing') ne $want->{$_} } sort keys %$want;
	diag('differ: ' . join(', ', map { "$_ api=" . ($got->{$_} // 'missing') . " table=$want->{$_}" } @diff[0 .. ($#diff < 5 ? $#diff : 4)]))
	  if @diff;
	return is(scalar(@diff), 0, $name);
}

# --- the row-level form of the issue, under faults; updates are corrections
psql(q{
CREATE TABLE api_calls (id bigserial PRIMARY KEY, customer text NOT NULL, endpoint text,
                        tokens int NOT NULL, v int NOT NULL DEFAULT 1,
                        created_at timestamptz NOT NULL DEFAULT now());
CREATE TRIGGER api_calls_monk AFTER INSERT OR UPDATE ON api_calls FOR EACH ROW
  EXECUTE FUNCTION monk_capture('api_call', 'external_customer_id=customer',
                                'properties=endpoint,tokens,v', 'timestamp=created_at');
});
$api->faults({
		fail_rate             => { 503 => 0.15, 429 => 0.1 },
		drop_rate             => 0.05,
		drop_after_store_rate => 0.1,
		delay_ms              => 10,
		retry_after           => 0 });
for my $i (1 .. 100)
{
	psql("INSERT INTO api_calls (customer, endpoint, tokens) VALUES ('cus_" . ($i % 10) . "', '/v1/chat', $i)");
}
psql(q{BEGIN; INSERT INTO api_calls (customer, tokens) SELECT 'cus_rolled_back', g FROM generate_series(1, 50) g; ROLLBACK});
# three rounds of corrections, each in its own transactions, while earlier versions are in flight
for my $v (2 .. 4)
{
	psql("UPDATE api_calls SET tokens = tokens * 10 + $v, v = $v WHERE id % 3 = 0");
	psql("UPDATE api_calls SET endpoint = '/v1/chat' WHERE id % 5 = 0");    # changes nothing mapped
}
ok(wait_outbox_empty($node, undef, 120), 'the captured rows and their corrections settle under faults');
$api->clear_faults;
my ($tokens, $backwards) = api_tokens("${kp}public.api_calls:");
my $table = table_tokens('api_calls', 'api_call');
is(scalar(keys %$tokens), 100, 'one key per committed row, none for the rolled-back rows');
same_tokens($tokens, $table, 'the API holds the newest version of every row');
is(scalar(@$backwards), 0, 'no key ever received an older version after a newer one');
is($api->stats->{batches_with_repeated_keys}, 0, 'no batch carried two versions of a key');
is(psql(q{SELECT count(*) FROM api_calls WHERE customer = 'cus_rolled_back'}), '0', 'the rollback left nothing');

# --- the statement-level form: a bulk insert, a rolled-back one, a bulk correction
psql(q{
CREATE TABLE bulk (id bigint PRIMARY KEY, customer text NOT NULL, tokens int NOT NULL);
CREATE TRIGGER bulk_monk AFTER INSERT ON bulk REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
  EXECUTE FUNCTION monk_capture('bulk_call', 'external_customer_id=customer', 'properties=tokens');
CREATE TRIGGER bulk_monk_update AFTER UPDATE ON bulk REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION monk_capture('bulk_call', 'external_customer_id=customer', 'properties=tokens');
});
my $before = $api->stats->{events_received};
psql(q{INSERT INTO bulk SELECT g, 'cus_' || g % 10, g FROM generate_series(1, 20000) g});
psql(q{BEGIN; INSERT INTO bulk SELECT g, 'cus_x', g FROM generate_series(20001, 25000) g; ROLLBACK});
psql(q{UPDATE bulk SET tokens = tokens + 1000000 WHERE id % 2 = 0});
psql(q{UPDATE bulk SET customer = customer WHERE id % 7 = 0});    # the same events: nothing queued
ok(wait_outbox_empty($node, undef, 120), 'the bulk insert and its correction settle');
($tokens, $backwards) = api_tokens("${kp}public.bulk:");
is(scalar(keys %$tokens), 20000, 'the API holds one key per committed row');
same_tokens($tokens, table_tokens('bulk', 'bulk_call'), 'each with its newest version');
cmp_ok($api->stats->{events_received} - $before, '<=', 30000,
	'an UPDATE that changes no event queues nothing (at most 20,000 + 10,000 versions received, retries aside)');

# --- an immediate stop while a captured bulk insert is being exported
$api->faults({ delay_ms => 30 });
psql(q{INSERT INTO bulk SELECT g, 'cus_' || g % 10, g FROM generate_series(30001, 50000) g});
ok(wait_until('the export to be under way', 60, sub { $api->stats->{events_received} - $before > 30000 }),
	'the export has started');
$node->stop('immediate');
$node->start;
$api->clear_faults;
ok(wait_outbox_empty($node, undef, 120), 'the rest is sent after the restart');
($tokens) = api_tokens("${kp}public.bulk:");
is(scalar(keys %$tokens), 40000, 'every committed row of both bulk inserts is held once');
same_tokens($tokens, table_tokens('bulk', 'bulk_call'), 'with its newest version');

done_testing();
