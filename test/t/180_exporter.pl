# The Prometheus exporters' configurations (contrib/prometheus, issue 21),
# run for real: each exporter Debian packages that is installed here
# (prometheus-postgres-exporter with the queries file, where its version still
# reads one; prometheus-sql-exporter) is started against a cluster exporting
# two databases -- events sent, retried, refused and dead-lettered in one, the
# circuit open with events waiting in the other, export cursors over a view
# the exporter's role may read and over a table it may not -- as a role with
# only the README's grants.  /metrics, scraped over HTTP, holds every metric
# of the configurations for both databases with the value monk.status and
# the tables show at that moment, and never the API key.  Before that, the
# two configurations are checked to define the same metrics with the same
# SQL, and the Grafana dashboard to parse and to plot those metrics only.
use strict;
use warnings;
use CPAN::Meta::YAML;
use File::Basename qw(dirname);
use File::Spec;
use HTTP::Tiny;
use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use MonkApi;
use MonkTest;

my $contrib = File::Spec->rel2abs(dirname(__FILE__) . '/../../contrib/prometheus');
my @dbs = qw(postgres app2);

# --- which exporters are installed, and which of them can read monk's configuration
sub in_path
{
	my ($name) = @_;
	my ($path) = grep { -x $_ } map { "$_/$name" } split(/:/, $ENV{PATH} // '');
	return $path;
}

sub package_version
{
	my $v = `dpkg-query -W -f='\${Version}' $_[0] 2>/dev/null`;
	return $? == 0 && $v ne '' ? $v : 'unknown';
}

my @exporters;
if (my $bin = in_path('prometheus-postgres-exporter'))
{
	my $help = `$bin --help 2>&1`;
	my ($version) = `$bin --version 2>&1` =~ /version (\S+)/;
	$version //= package_version('prometheus-postgres-exporter');
	if ($help =~ /--extend\.query-path/)
	{
		push @exporters, { kind => 'postgres_exporter', bin => $bin, version => $version };
	}
	else
	{
		diag("prometheus-postgres-exporter $version no longer reads a queries file (--extend.query-path): "
			  . 'not used, contrib/prometheus/sql_exporter.yml is the configuration for this release');
	}
}
if (my $bin = in_path('prometheus-sql-exporter'))
{
	push @exporters, { kind => 'sql_exporter', bin => $bin, version => package_version('prometheus-sql-exporter') };
}
plan skip_all => 'neither prometheus-postgres-exporter (with --extend.query-path) nor prometheus-sql-exporter '
  . 'is installed (apt-get install prometheus-postgres-exporter prometheus-sql-exporter)'
  unless @exporters;
diag("exporters: " . join(', ', map { "$_->{kind} $_->{version}" } @exporters));

# --- the configurations: one set of metrics, the same SQL
sub read_yaml
{
	my ($file) = @_;
	my $doc = eval { CPAN::Meta::YAML->read_string(slurp_file($file))->[0] };
	BAIL_OUT("$file does not parse: $@") unless ref $doc eq 'HASH';
	return $doc;
}

sub squash { my ($s) = @_; $s =~ s/\s+/ /g; $s =~ s/^ | $//g; return $s }

my $pg_conf = read_yaml("$contrib/postgres_exporter_queries.yaml");
my $sql_conf = read_yaml("$contrib/sql_exporter.yml");

# name => { type, labels (besides database) } as postgres_exporter names them
my (%metrics, %pg_sql);
for my $ns (sort keys %$pg_conf)
{
	my (@labels, @names);
	$pg_sql{$ns} = $pg_conf->{$ns}{query};
	for my $m (@{ $pg_conf->{$ns}{metrics} })
	{
		my ($col, $spec) = %$m;
		if ($spec->{usage} eq 'LABEL') { push @labels, $col if $col ne 'database'; next }
		push @names, "${ns}_$col";
		$metrics{"${ns}_$col"} = { type => lc $spec->{usage} };
	}
	ok((grep { exists $_->{database} } @{ $pg_conf->{$ns}{metrics} }), "postgres_exporter: $ns is labelled with its database");
	$metrics{$_}{labels} = [ sort @labels ] for @names;
}
cmp_ok(scalar(keys %metrics), '>=', 16, 'postgres_exporter: the queries define the metrics');
for my $name (sort keys %metrics)
{
	is($metrics{$name}{type}, $name =~ /_total$/ ? 'counter' : 'gauge', "postgres_exporter: $name is a " . ($name =~ /_total$/ ? 'counter' : 'gauge'));
}

my %sql_metrics;
is(scalar @{ $sql_conf->{jobs} }, 1, 'sql_exporter: one job');
for my $q (@{ $sql_conf->{jobs}[0]{queries} })
{
	my $name = $q->{name};
	is(squash($q->{query}), squash($pg_sql{$name} // ''), "sql_exporter: $name runs the SQL of postgres_exporter's $name");
	$sql_metrics{"${name}_$_"} = [ sort @{ $q->{labels} // [] } ] for @{ $q->{values} };
}
is_deeply([ sort keys %sql_metrics ], [ sort keys %metrics ], 'both configurations define the same metrics');
is_deeply(\%sql_metrics, { map { $_ => $metrics{$_}{labels} } keys %metrics }, 'with the same labels');

# --- the dashboard: it parses, and plots exactly the metrics defined
my $dashboard = eval { JSON::PP->new->decode(slurp_file("$contrib/grafana-dashboard.json")) };
ok(ref $dashboard eq 'HASH', 'the Grafana dashboard parses') or diag($@);
my @exprs;
my $walk;
$walk = sub {
	my ($v, $key) = @_;
	if (ref $v eq 'HASH') { $walk->($v->{$_}, $_) for sort keys %$v }
	elsif (ref $v eq 'ARRAY') { $walk->($_, $key) for @$v }
	elsif (defined $key && ($key eq 'expr' || $key eq 'definition' || $key eq 'query') && !ref $v) { push @exprs, $v }
};
$walk->($dashboard);
cmp_ok(scalar @exprs, '>=', 10, 'the dashboard has its expressions');
my %plotted;
for my $e (@exprs)
{
	$plotted{$1}++ while $e =~ /\b(monk_[a-z0-9_]+)/g;
}
my @unknown = grep { !$metrics{$_} } sort keys %plotted;
is("@unknown", '', 'every metric the dashboard names is defined by the configurations');
my @unplotted = grep { !$plotted{$_} } sort keys %metrics;
is("@unplotted", '', 'every metric defined is on the dashboard');
my @rated = map { /rate\((\w+)/g } @exprs;
is(join(' ', grep { !/_total$/ } @rated), '', 'the dashboard takes rate() of counters only');

# --- a cluster with monk in two databases
my $key = 'monk_key_180_' . join('', map { ('a' .. 'z')[ int rand 26 ] } 1 .. 24);
my $api = MonkApi->new(api_key => $key, customers => ['cus_1']);
my $node = monk_node(api => $api, api_key => $key, databases => \@dbs,
	conf => { 'monk.circuit_failure_threshold' => 2, 'monk.circuit_open_time' => '1h' });

sub status
{
	my ($db, $cols) = @_;
	return $node->safe_psql($db, "SELECT $cols FROM monk.status");
}

# the exporter's role, with the README's grants only
$node->safe_psql('postgres', 'CREATE ROLE prometheus LOGIN; GRANT pg_monitor TO prometheus');
$node->safe_psql($_, 'GRANT SELECT (cursor_name, source, last_id, pending_ids, events_sent, events_failed, last_run_at)'
	  . ' ON monk.sync_state TO prometheus') for @dbs;

# postgres: 5 events sent, their first request answered 500 and retried; 2
# refused (a customer Monk does not know) and dead-lettered
$api->faults({ script => [500], retry_after => 0 });
queue_events($node, 'sent', 5);
ok(wait_outbox_empty($node, 'postgres'), 'postgres: the events are sent, after a retry');
queue_events($node, 'refused', 2, customer => 'cus_unknown');
ok(wait_outbox_empty($node, 'postgres'), 'postgres: the refused events leave the outbox');
is(status('postgres', 'events_sent, events_failed, dead_letters'), '5|2|2', 'postgres: 5 sent, 2 refused and dead-lettered');
cmp_ok(status('postgres', 'events_retried'), '>', 0, 'postgres: some retried');

# postgres: two export cursors, each with rows past it: over the README's
# view, which the exporter's role may read (one row refused), and over a
# table it may not read
$node->safe_psql('postgres', q{
CREATE TABLE billing_events (id bigserial PRIMARY KEY, external_customer_id text NOT NULL, event_type text NOT NULL);
CREATE VIEW billing_export AS SELECT id, external_customer_id, event_type AS event_name FROM billing_events;
GRANT SELECT ON billing_export TO prometheus;
INSERT INTO billing_events (external_customer_id, event_type) VALUES ('cus_1', 'call'), ('cus_unknown', 'call'), ('cus_1', 'call');
CREATE TABLE internal_usage (id bigint PRIMARY KEY, external_customer_id text NOT NULL, event_name text NOT NULL);
INSERT INTO internal_usage VALUES (1, 'cus_1', 'internal');
});
is($node->safe_psql('postgres', q{SELECT events_sent, events_failed FROM monk_batch_export('billing_export')}), '2|1',
	'postgres: an export of the view sends 2 rows and dead-letters 1');
is($node->safe_psql('postgres', q{SELECT events_sent FROM monk_batch_export('internal_usage')}), '1',
	'postgres: an export of the table sends its row');
$node->safe_psql('postgres', q{
INSERT INTO billing_events (external_customer_id, event_type) VALUES ('cus_1', 'call'), ('cus_1', 'call');
INSERT INTO internal_usage VALUES (7, 'cus_1', 'internal');
});

# app2: the API failing, the circuit opens (for an hour) with 3 events waiting
$api->faults({ fail_rate => { 503 => 1 }, retry_after => 0 });
queue_events($node, 'waiting', 3, db => 'app2');
ok(wait_until("app2's circuit to open", 60, sub { status('app2', 'circuit') eq 'open' }), 'app2: the circuit opens');
is(status('app2', 'outbox_depth'), '3', 'app2: its 3 events wait');
is(status('postgres', 'circuit'), 'closed', "postgres: its circuit stays closed");

# --- what monk shows, read as a superuser, independently of the configurations:
# series key (name and labels) => [low, high] (a number or NaN)
sub series_key
{
	my ($name, %labels) = @_;
	return "$name\{" . join(',', map { "$_=$labels{$_}" } sort keys %labels) . '}';
}

sub monk_shows
{
	my %e;
	for my $db (@dbs)
	{
		my %s;
		@s{qw(running state depth age dead circuit sent failed retried r2 r4 r5 rf ro)} = split /\|/, status($db,
			q{worker_running, worker_state, outbox_depth, coalesce(extract(epoch FROM oldest_event_age), 0),
			  dead_letters, circuit, events_sent, events_failed, events_retried,
			  requests_2xx, requests_4xx, requests_5xx, requests_failed, requests_other});
		my %one = (
			monk_worker_running           => $s{running} eq 't' ? 1 : 0,
			monk_outbox_depth             => $s{depth},
			monk_oldest_event_age_seconds => $s{age},
			monk_dead_letters             => $s{dead},
			monk_circuit_open             => $s{circuit} eq 'open' ? 1 : 0,
			monk_circuit_half_open        => $s{circuit} eq 'half-open' ? 1 : 0,
			monk_events_sent_total        => $s{sent},
			monk_events_failed_total      => $s{failed},
			monk_events_retried_total     => $s{retried});
		$e{ series_key($_, database => $db) } = $one{$_} for keys %one;
		$e{ series_key('monk_worker_info', database => $db, state => $s{state}) } = 1;
		my %class = ('2xx' => $s{r2}, '4xx' => $s{r4}, '5xx' => $s{r5}, failed => $s{rf}, other => $s{ro});
		$e{ series_key('monk_requests_total', database => $db, class => $_) } = $class{$_} for keys %class;

		# the cursors: the lag where the role may read the source, from the source itself
		for my $row (split /\n/, $node->safe_psql($db, q{
			SELECT cursor_name, source, cardinality(pending_ids), extract(epoch FROM now() - last_run_at),
			       events_sent, events_failed,
			       CASE WHEN has_table_privilege('prometheus', source, 'SELECT') THEN 'readable' END
			  FROM monk.sync_state}))
		{
			my ($cursor, $source, $pending, $age, $sent, $failed, $readable) = split /\|/, $row;
			my $lag = 'NaN';
			$lag = $node->safe_psql($db, "SELECT greatest(0, (SELECT max(id) FROM $source)"
				  . " - (SELECT last_id FROM monk.sync_state WHERE cursor_name = '$cursor'))") if $readable;
			my %l = (database => $db, cursor => $cursor, source => $source);
			$e{ series_key('monk_export_lag_ids', %l) } = $lag;
			$e{ series_key('monk_export_pending_ids', %l) } = $pending;
			$e{ series_key('monk_export_last_run_age_seconds', %l) } = $age;
			$e{ series_key('monk_export_events_sent_total', %l) } = $sent;
			$e{ series_key('monk_export_events_failed_total', %l) } = $failed;
		}
	}
	return \%e;
}

# The samples of a scrape, named as Prometheus stores them with the README's
# relabelling (sql_<query>{col="<column>"} becomes <query>_<column>): series
# key => value, for monk's metrics; and the TYPE of each.
sub parse_metrics
{
	my ($text) = @_;
	my (%samples, %types, @other);
	for my $line (split /\n/, $text)
	{
		if ($line =~ /^# TYPE (\S+) (\S+)/) { $types{$1} = $2; next }
		next if $line =~ /^#/ || $line !~ /\S/;
		$line =~ /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/ or next;
		my ($name, $labels, $value) = ($1, $2 // '', $3);
		my %l;
		while ($labels =~ /\G\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?/gc)
		{
			my ($k, $v) = ($1, $2);
			$v =~ s/\\(.)/$1 eq 'n' ? "\n" : $1/ge;
			$l{$k} = $v;
		}
		if ($name =~ /^sql_(monk\w*)$/ && defined $l{col})
		{
			$name = "$1_" . delete $l{col};
		}
		push(@other, [ $name, \%l, $value ]), next unless $name =~ /^monk_/;
		# the labels of the configuration: database, and the query's own
		my %keep = (database => $l{database});
		$keep{$_} = $l{$_} for @{ $metrics{$name}{labels} // [ grep { !/^(database|server|driver|host|user|sql_job)$/ } keys %l ] };
		$samples{ series_key($name, %keep) } = $value;
	}
	return (\%samples, \%types, \@other);
}

# Mismatches between a scrape and what monk showed just before it ($before)
# and just after ($after); an age may also be up to $stale seconds older
# than $before (prometheus-sql-exporter runs its queries on its own schedule).
sub mismatches
{
	my ($samples, $before, $after, $stale) = @_;
	my @bad;
	for my $k (sort keys %$after)
	{
		my ($lo, $hi) = ($before->{$k}, $after->{$k});
		my $got = $samples->{$k};
		if (!defined $got) { push @bad, "$k: missing (monk shows $hi)"; next }
		if (!defined $lo) { push @bad, "$k: not in monk before the scrape"; next }
		if ($k =~ /_age_seconds\{/)
		{
			push @bad, "$k: $got, monk showed $lo then $hi"
			  unless $got =~ /^[0-9.e+-]+$/ && $got >= $lo - $stale - 1e-6 && $got <= $hi + 1e-6;
		}
		elsif ($lo ne $hi) { push @bad, "$k: monk moved from $lo to $hi (not quiesced)" }
		elsif ($hi eq 'NaN') { push @bad, "$k: $got, monk's role may not read the source: NaN" unless $got eq 'NaN' }
		elsif ($got !~ /^[0-9.e+-]+$/ || $got != $hi) { push @bad, "$k: $got, monk shows $hi" }
	}
	push @bad, map { "$_: not a series monk shows" } grep { !exists $after->{$_} } sort keys %$samples;
	return @bad;
}

sub url_escape
{
	my ($s) = @_;
	$s =~ s{([^A-Za-z0-9/._~-])}{sprintf('%%%02X', ord $1)}ge;
	return $s;
}

my $http = HTTP::Tiny->new(timeout => 10);
for my $exp (@exporters)
{
	my $kind = $exp->{kind};
	my $port = PostgreSQL::Test::Cluster::get_free_port();
	my $dir = PostgreSQL::Test::Utils::tempdir("exporter_$kind");
	my $log = "$dir/exporter.log";
	my ($cmd, $stale);
	local $ENV{DATA_SOURCE_NAME};
	local $ENV{LOGLEVEL} = 'info';
	if ($kind eq 'postgres_exporter')
	{
		# every database of monk.databases, as the README starts it
		$ENV{DATA_SOURCE_NAME} = 'host=' . $node->host . ' port=' . $node->port . ' user=prometheus dbname=postgres sslmode=disable';
		$cmd = [ $exp->{bin}, "--web.listen-address=127.0.0.1:$port",
			"--extend.query-path=$contrib/postgres_exporter_queries.yaml",
			'--auto-discover-databases', '--include-databases=' . join(',', @dbs) ];
		$stale = 0;
	}
	else
	{
		# the shipped file, with this cluster's databases and a run every second
		my $conf = slurp_file("$contrib/sql_exporter.yml");
		my $conns = join('', map { "  - 'postgres://prometheus\@/$_?host=" . url_escape($node->host)
			  . '&port=' . $node->port . "&sslmode=disable'\n" } @dbs);
		ok($conf =~ s/^  connections:\n(?:  - .*\n)+/  connections:\n$conns/m && $conf =~ s/^  interval: .*$/  interval: '1s'/m,
			"$kind: the shipped file, with this cluster's connections");
		append_to_file("$dir/sql_exporter.yml", $conf);
		$cmd = [ $exp->{bin}, '-config.file', "$dir/sql_exporter.yml", '-web.listen-address', "127.0.0.1:$port" ];
		$stale = 5;
	}
	my $h = IPC::Run::start($cmd, '<', \undef, '>&', $log);
	my $url = "http://127.0.0.1:$port/metrics";
	ok(wait_until("$kind to answer on $url", 60, sub { $http->get($url)->{success} }),
		"$kind $exp->{version} answers on /metrics") or diag(slurp_file($log));

	# the state monk shows, in a scrape taken between two readings of it
	my ($samples, $types, $other, $text, @bad);
	wait_until("$kind to show what monk shows", 60, sub {
		my $before = monk_shows();
		my $res = $http->get($url);
		my $after = monk_shows();
		return 0 unless $res->{success};
		$text = $res->{content};
		($samples, $types, $other) = parse_metrics($text);
		@bad = mismatches($samples, $before, $after, $stale);
		return !@bad;
	});
	is(join("\n", @bad), '', "$kind: every series of both databases has the value monk shows");
	my %names = map { /^(\w+)\{/ ? ($1 => 1) : () } keys %$samples;
	is(join(' ', grep { !$names{$_} } sort keys %metrics), '', "$kind: every metric of the configuration is scraped");
	is($samples->{ series_key('monk_circuit_open', database => 'app2') }, '1', "$kind: app2's circuit is open");
	is($samples->{ series_key('monk_outbox_depth', database => 'app2') }, '3', "$kind: with 3 events waiting");
	cmp_ok($samples->{ series_key('monk_oldest_event_age_seconds', database => 'app2') } // 0, '>', 0,
		"$kind: the oldest of which has waited");
	is($samples->{ series_key('monk_dead_letters', database => 'postgres') }, '3',
		"$kind: postgres has 3 dead letters, 2 of the outbox and 1 of an export");
	is($samples->{ series_key('monk_export_lag_ids', database => 'postgres', cursor => 'public.billing_export', source => 'public.billing_export') },
		'2', "$kind: the view's cursor is 2 ids behind");
	is($samples->{ series_key('monk_export_lag_ids', database => 'postgres', cursor => 'public.internal_usage', source => 'public.internal_usage') },
		'NaN', "$kind: the lag of a source the role may not read is NaN");
	if ($kind eq 'postgres_exporter')
	{
		my @wrong = grep { ($types->{$_} // '') ne $metrics{$_}{type} } sort keys %metrics;
		is("@wrong", '', "$kind: each metric has its type (counter or gauge)");
		unlike($text, qr/^pg_exporter_user_queries_load_error\{[^}]*\} 1$/m, "$kind: the queries file loads");
	}
	else
	{
		my @failed = map { $_->[1]{query} } grep { $_->[0] eq 'sql_exporter_last_scrape_failed' && $_->[2] ne '0' } @$other;
		is("@failed", '', "$kind: no query failed");
	}
	$h->kill_kill(grace => 5);
	my $all = $text . slurp_file($log);
	unlike($all, qr/\Q$key\E/, "$kind: the API key is in neither /metrics nor the exporter's log");
}

$node->stop;
done_testing();
