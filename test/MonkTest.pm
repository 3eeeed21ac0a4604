package MonkTest;

# MonkTest -- what monk's TAP tests share: a cluster with monk preloaded and
# pointed at a local Monk API, bounded waits for states, and the check that
# the API holds exactly the committed events, by idempotency key.

use strict;
use warnings;

use Exporter 'import';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);

use MonkApi;

our @EXPORT = qw(monk_cluster monk_node wait_until wait_outbox_empty outbox_count api_holds_exactly
  committed_keys set_monk_conf monk_extra_conf billed_table has_library queue_events monk_status
  hold_wait_point worker_waits_at api_versions key_prefix);

# Lines every test cluster gets besides its own: test/sanitize.sh points
# dynamic_library_path at a sanitizer build this way.
sub monk_extra_conf
{
	return $ENV{MONK_EXTRA_CONF} ? "$ENV{MONK_EXTRA_CONF}\n" : '';
}

# Settings that keep the tests quick: short delays, small batches are set by
# each test where it matters.
my %FAST = (
	'monk.flush_interval'            => '100ms',
	'monk.retry_base_delay'          => '20ms',
	'monk.retry_max_delay'           => '500ms',
	'monk.circuit_open_time'         => '500ms',
	'monk.request_timeout'           => '5s',
	'monk.shutdown_timeout'          => '5s',
);

# A new cluster, initialised in UTF-8 whatever the environment's locale (a
# brand-new machine has none: initdb would choose SQL_ASCII).  %init goes to
# PostgreSQL::Test::Cluster's init.
sub monk_cluster
{
	my ($name, %init) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(%init, extra => [ '--encoding=UTF8', '--no-locale', @{ $init{extra} // [] } ]);
	return $node;
}

# A started cluster with monk preloaded for the given databases, exporting to
# $api; the extension is created in each database (at $opts{version} if given).
sub monk_node
{
	my (%opts) = @_;
	my $api = $opts{api};
	my @dbs = @{ $opts{databases} // ['postgres'] };
	my $node = monk_cluster($opts{name} // 'monk', %{ $opts{init} // {} });
	my %conf = (%FAST, %{ $opts{conf} // {} });
	my $conf = monk_extra_conf() . "shared_preload_libraries = 'monk'\n"
	  . "monk.databases = '" . join(',', @dbs) . "'\n"
	  . "monk.base_url = '" . $api->url . "'\n"
	  . "monk.api_key = '" . ($opts{api_key} // 'test_key') . "'\n";
	$conf .= "$_ = '$conf{$_}'\n" for sort keys %conf;
	$node->append_conf('postgresql.conf', $conf);
	$node->start;
	for my $db (@dbs)
	{
		$node->safe_psql('postgres', "CREATE DATABASE $db " . ($opts{create}{$db} // '')) if $db ne 'postgres';
		$node->safe_psql($db, 'CREATE EXTENSION monk' . ($opts{version} ? " VERSION '$opts{version}'" : ''));
	}
	return $node;
}

# A table whose inserts are billed, as a user would write it: (id, customer,
# tokens) and an AFTER INSERT trigger queueing one event per row, keyed
# $key_prefix || id.
sub billed_table
{
	my ($node, $table, $event, $key_prefix) = @_;
	$node->safe_psql('postgres', qq{
CREATE TABLE $table (id bigserial PRIMARY KEY, customer text NOT NULL, tokens int NOT NULL);
CREATE FUNCTION ${table}_bill() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN
    PERFORM monk_send('$event', NEW.customer, jsonb_build_object('tokens', NEW.tokens),
                      idempotency_key => '$key_prefix' || NEW.id);
    RETURN NEW;
END \$\$;
CREATE TRIGGER ${table}_bill AFTER INSERT ON $table FOR EACH ROW EXECUTE FUNCTION ${table}_bill();
});
}

# Is this shared library installed for the PostgreSQL under test (pg_cron is
# not packaged for every major)?
sub has_library
{
	my ($name) = @_;
	my $libdir = `pg_config --pkglibdir`;
	chomp $libdir;
	return -f "$libdir/$name.so";
}

# Queue $n events with monk_send in one transaction, keyed "${prefix}_1" ..
# "${prefix}_$n" (options: event, customer, db); returns their keys.
sub queue_events
{
	my ($node, $prefix, $n, %opts) = @_;
	my $event = $opts{event} // 'api_call';
	my $customer = $opts{customer} // 'cus_1';
	$node->safe_psql($opts{db} // 'postgres',
		"SELECT monk_send('$event', '$customer', idempotency_key => '${prefix}_' || i) FROM generate_series(1, $n) i");
	return map { "${prefix}_$_" } 1 .. $n;
}

# A column of monk.status (of the only database, or of $db's row).
sub monk_status
{
	my ($node, $column, $db) = @_;
	return $node->safe_psql('postgres', "SELECT $column FROM monk.status"
		  . (defined $db ? " WHERE database = '$db'" : ''));
}

# The prefix of the default keys of $db: sync_, the database's id (the row
# inserted last), _ (read without an operator: test/t/075 shadows || where
# the superuser runs this).
sub key_prefix
{
	my ($node, $db) = @_;
	return 'sync_'
	  . $node->safe_psql($db // 'postgres',
		q{SELECT id FROM monk.database_id ORDER BY pg_catalog.age(xmin) LIMIT 1}) . '_';
}

# Hold the worker at a named step (monk.test_wait_points must list it): a
# session that holds the step's advisory lock until its quit().
sub hold_wait_point
{
	my ($node, $step, $db) = @_;
	my $session = $node->background_psql($db // 'postgres');
	$session->query_safe("SELECT pg_advisory_lock(hashtext('monk'), hashtext('$step'))");
	return $session;
}

# Wait (bounded) until a worker waits at the named step.
sub worker_waits_at
{
	my ($node, $step) = @_;
	return wait_until("the worker at wait point $step", 60, sub {
		$node->safe_psql('postgres', qq{SELECT count(*) FROM pg_stat_activity
		  WHERE query = 'monk: wait point $step' AND wait_event_type = 'Lock'}) > 0 });
}

# The value of property $prop of each key the API holds, and the values it
# received for each, in order.
sub api_versions
{
	my ($api, $prop) = @_;
	my $events = $api->_call('GET', '/_test/events?history=1')->{events};
	my (%final, %history);
	for my $k (keys %$events)
	{
		$final{$k} = $events->{$k}{event}{properties}{$prop};
		$history{$k} = [ map { $_->{properties}{$prop} } @{ $events->{$k}{history} } ];
	}
	return (\%final, \%history);
}

# Change settings by ALTER SYSTEM and reload.
sub set_monk_conf
{
	my ($node, %conf) = @_;
	$node->safe_psql('postgres', "ALTER SYSTEM SET $_ = '$conf{$_}'") for sort keys %conf;
	$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
}

# Poll $check every 50 ms until it returns true, for at most $timeout seconds.
sub wait_until
{
	my ($desc, $timeout, $check) = @_;
	my $deadline = time + $timeout;
	while (time < $deadline)
	{
		return 1 if $check->();
		sleep 0.05;
	}
	diag("timed out after ${timeout}s waiting for: $desc");
	return 0;
}

sub outbox_count
{
	my ($node, $db) = @_;
	return $node->safe_psql($db // 'postgres', 'SELECT count(*) FROM monk.outbox');
}

# Wait (bounded) until the worker has drained the outbox.
sub wait_outbox_empty
{
	my ($node, $db, $timeout) = @_;
	return wait_until('the outbox to drain', $timeout // 60,
		sub { outbox_count($node, $db) == 0 });
}

# The keys of the given committed query as a sorted list.
sub committed_keys
{
	my ($node, $db, $sql) = @_;
	return [ sort split /\n/, $node->safe_psql($db, $sql) ];
}

# The API holds exactly these keys: none missing, none extra.
sub api_holds_exactly
{
	my ($api, $expected, $name) = @_;
	my %have = map { $_ => 1 } @{ $api->keys };
	my %want = map { $_ => 1 } @$expected;
	my @missing = grep { !$have{$_} } sort keys %want;
	my @extra   = grep { !$want{$_} } sort keys %have;
	my $ok = is(scalar(@missing) + scalar(@extra), 0, $name);
	unless ($ok)
	{
		diag('missing: ' . join(',', @missing[0 .. ($#missing < 20 ? $#missing : 19)])) if @missing;
		diag('extra: ' . join(',', @extra[0 .. ($#extra < 20 ? $#extra : 19)])) if @extra;
		diag(scalar(@missing) . ' missing, ' . scalar(@extra) . ' extra');
	}
	return $ok;
}

1;
