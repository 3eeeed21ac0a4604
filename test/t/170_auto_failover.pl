# A failover under a real HA manager, pg_auto_failover, bills exactly the
# transactions of the surviving timeline.
#
# A pg_auto_failover monitor and two data nodes, both preloading monk, with
# monk.standby_names left empty: monk then waits for the server's
# synchronous standbys, the ones pg_auto_failover writes into
# synchronous_standby_names (MONK_AF_STANDBY_NAMES sets another value, e.g.
# '*').  pg_auto_failover runs two nodes with synchronous
# replication (synchronous_standby_names = 'ANY 1 (...)' on the primary), so
# a COMMIT that returned is on the standby.  A writer, connecting for each
# transaction through the multi-host connection string with
# target_session_attrs=read-write, inserts rows of a table captured by
# monk_capture, corrects rows it inserted before (an UPDATE of the mapped
# property: same key, newer version), rolls some transactions back, and
# records which COMMITs returned; transaction k writes tokens = k, so that
# each version names its transaction.  Then:
#   - replication stalls (the primary's walsender is stopped): a probe
#     transaction (a new row and a correction) commits on the primary only
#     and waits for the standby, as may the writer's transaction in flight;
#   - the primary's postmaster is killed with SIGKILL.  Its pg_autoctl
#     reports Postgres down, the monitor promotes the secondary, and
#     pg_autoctl restarts the old Postgres -- as the primary it still
#     believes it is, for about a second until it hears of the failover.
#     (When pg_autoctl restarts Postgres before reporting it down, there is
#     no failover: a race, lost about one time in eight here, and every time
#     on a loaded machine; node1 is then killed again the same way, with a new
#     probe, and from the third kill on with its pg_autoctl frozen until the
#     monitor has promoted node2.)
#     Crash recovery has made the probe visible there, and with PostgreSQL's
#     default wal_retrieve_retry_interval (5 s) the promoted standby has
#     usually not streamed it: the window in which an exporter that does not
#     wait for a standby bills a transaction the new primary lacks.  The old
#     primary is then demoted, rewound, and rejoins as the secondary;
#   - the writer goes on through the new primary, alone and then with the
#     old one as its synchronous standby.
# At the end, by idempotency key, the API holds exactly the keys of the rows
# of the surviving primary, each at its row's current value, and no version
# it ever received (of the last 16 of each key) came from a transaction that
# primary lacks: rolled back, lost with the old primary, or in flight at the
# crash and not there.  Every transaction whose COMMIT returned is on the
# surviving primary; those whose outcome is unknown (the probe among them)
# are looked up there, not assumed either way.
#
# What it does not prove: asynchronous replication (pg_auto_failover with
# number_sync_standbys = 0 and replication quorum off: see 168_standby.pl for
# monk.standby_names with an asynchronous standby), more than two data
# nodes, a crash of the monitor, a network partition between live nodes, or
# that the window above occurs on every run (it is timing; the test says
# when it saw it).  While the new primary runs alone (pg_auto_failover's
# wait_primary), pg_auto_failover empties synchronous_standby_names and its
# events go at once; with MONK_AF_STANDBY_NAMES='*' they wait until the old
# primary has rejoined.  A monk that waited for no standby (0.4 before this
# test) billed the probe when the window occurred and it was lost.
#
# Skipped when pg_auto_failover is not installed for the PostgreSQL under
# test (test/setup.sh installs postgresql-NN-auto-failover where Debian has it).
use strict;
use warnings;
use File::Path qw(make_path);
use IPC::Run;
use POSIX ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);
use MonkApi;
use MonkTest;

# --- pg_auto_failover for this major: pg_autoctl and the monitor's extension
sub pg_config
{
	my $v = `pg_config --$_[0]`;
	chomp $v;
	return $v;
}
my ($major) = pg_config('version') =~ /(\d+)/;
my $bindir = pg_config('bindir');
my ($autoctl) = grep { -x $_ } map { "$_/pg_autoctl" } $bindir, split(/:/, $ENV{PATH});
plan skip_all => "pg_auto_failover is not installed for PostgreSQL $major "
  . "(needs pg_autoctl and the pgautofailover extension: apt-get install postgresql-$major-auto-failover)"
  unless $autoctl
  && -f pg_config('pkglibdir') . '/pgautofailover.so'
  && -f pg_config('sharedir') . '/extension/pgautofailover.control';

my $standby_names = $ENV{MONK_AF_STANDBY_NAMES} // '';
my $tmp = PostgreSQL::Test::Utils::tempdir('af');
my %autoctl_env = (
	XDG_CONFIG_HOME => "$tmp/config",
	XDG_DATA_HOME   => "$tmp/data",
	XDG_RUNTIME_DIR => "$tmp/run");
make_path(values %autoctl_env);
my %autoctl;    # name => { pid (also its process group), node }
my @stopped;    # processes stopped with SIGSTOP, killed at the end
my $writer_pid;
my $writer_log = "$tmp/writer.log";
my $writer_stop = "$tmp/writer.stop";

sub autoctl_log { return "$PostgreSQL::Test::Utils::log_path/170_auto_failover_$_[0]_autoctl.log" }

# Run a pg_autoctl command for $node (create, show...), output to its log.
sub autoctl_cmd
{
	my ($name, $node, @args) = @_;
	local %ENV = (%ENV, %autoctl_env, PGHOST => $node->host);
	my $log = autoctl_log($name);
	return eval {
		IPC::Run::run([ $autoctl, @args ], '<', \undef, '>>', $log, '2>>', $log, IPC::Run::timeout(180));
	};
}

# Start "pg_autoctl run" for $node in a process group of its own.
sub autoctl_run
{
	my ($name, $node) = @_;
	my $pid = fork;
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		POSIX::setsid();
		open(STDIN, '<', '/dev/null');
		open(STDOUT, '>>', autoctl_log($name));
		open(STDERR, '>&', \*STDOUT);
		%ENV = (%ENV, %autoctl_env, PGHOST => $node->host);
		exec($autoctl, 'run', '--pgdata', $node->data_dir) or POSIX::_exit(127);
	}
	$autoctl{$name} = { pid => $pid, node => $node };
}

# Stop everything this test started, whatever state it is in: the writer,
# the pg_autoctl services (SIGTERM, which stops their Postgres; SIGKILL after
# 20 s), any postmaster left, processes left stopped.
sub stop_everything
{
	if ($writer_pid)
	{
		kill 'KILL', $writer_pid;
		waitpid($writer_pid, 0);
		$writer_pid = undef;
	}
	kill 'KILL', @stopped if @stopped;
	@stopped = ();
	my @groups = map { $_->{pid} } values %autoctl;
	kill 'CONT', -$_ for @groups;
	kill 'TERM', -$_ for @groups;
	my $deadline = time + 20;
	while (time < $deadline && grep { waitpid($_, POSIX::WNOHANG()) == 0 } @groups)
	{
		sleep 0.1;
	}
	for my $pid (@groups)
	{
		next unless kill 0, $pid;
		kill 'KILL', -$pid;
		waitpid($pid, 0);
	}
	for my $a (values %autoctl)
	{
		my $pidfile = $a->{node}->data_dir . '/postmaster.pid';
		next unless -f $pidfile;
		my ($pm) = split /\n/, slurp_file($pidfile);
		next unless $pm && kill 0, $pm;
		system('pg_ctl', '-D', $a->{node}->data_dir, '-m', 'immediate', 'stop');
	}
	%autoctl = ();
}

END
{
	local ($?, $!, $@);
	stop_everything();
}

# The answer of a query, undef if it fails: a node may be down (and
# PostgreSQL::Test::Cluster's psql dies writing to a psql that could not
# connect).
sub query
{
	my ($node, $sql, $db) = @_;
	my ($out, $err) = ('', '');
	my $ok = eval {
		IPC::Run::run([ 'psql', '-X', '-A', '-t', '-d', $node->connstr($db // 'postgres'), '-c', $sql ],
			'<', \undef, '>', \$out, '2>', \$err, IPC::Run::timeout(30));
	};
	chomp $out;
	return $ok ? $out : undef;
}

# The children of a process, and a process's command line.
sub children_of
{
	my ($ppid) = @_;
	opendir(my $d, '/proc') or return ();
	my @c;
	for my $pid (grep { /^\d+$/ } readdir $d)
	{
		open(my $f, '<', "/proc/$pid/stat") or next;
		my $stat = <$f> // '';
		push @c, $pid if $stat =~ /^\d+ \(.*\) \S (\d+)/ && $1 == $ppid;
	}
	return @c;
}

sub cmdline
{
	open(my $f, '<', "/proc/$_[0]/cmdline") or return '';
	local $/;
	my $c = <$f> // '';
	$c =~ s/\0+/ /g;
	return $c;
}

# The processes of a node's postmaster, for a diagnostic.
sub processes_of
{
	my ($node) = @_;
	my $pidfile = $node->data_dir . '/postmaster.pid';
	return ('no postmaster.pid') unless -f $pidfile;
	my ($pm) = split /\n/, slurp_file($pidfile);
	return map { "$_ " . cmdline($_) } $pm, children_of($pm);
}

# The nodes as the monitor sees them: name => "reported/assigned".
my $monitor;
sub states
{
	my $out = query($monitor, q{SELECT nodename || '=' || reportedstate || '/' || goalstate FROM pgautofailover.node},
		'pg_auto_failover');
	return () unless defined $out;
	return map { split /=/ } split /\n/, $out;
}

sub states_text
{
	my %s = states();
	return join(', ', map { "$_ $s{$_}" } sort keys %s);
}

sub in_state
{
	my ($name, $re) = @_;
	my %s = states();
	return defined $s{$name} && $s{$name} =~ $re;
}

# Settings of the data nodes, in postgresql.auto.conf: after pg_autoctl's
# own postgresql-auto-failover.conf, whose tuning follows the machine's
# memory (gigabytes of shared_buffers), and copied to the standby with its
# base backup.
sub auto_conf
{
	my ($node, %conf) = @_;
	open(my $fh, '>>', $node->data_dir . '/postgresql.auto.conf') or die $!;
	print $fh "$_ = '$conf{$_}'\n" for sort keys %conf;
	close $fh;
}
my %small = (
	shared_buffers       => '16MB',
	work_mem             => '4MB',
	maintenance_work_mem => '16MB',
	effective_cache_size => '128MB',
	max_connections      => '40',
	logging_collector    => 'off');

# --- the monitor
my $api = MonkApi->new(api_key => 'test_key');
$monitor = monk_cluster('monitor');
auto_conf($monitor, %small);
ok(autoctl_cmd('monitor', $monitor, 'create', 'monitor', '--pgctl', "$bindir/pg_ctl",
		'--pgdata', $monitor->data_dir, '--pgport', $monitor->port, '--hostname', '127.0.0.1',
		'--skip-pg-hba', '--no-ssl'),
	'pg_autoctl creates the monitor') or BAIL_OUT('see ' . autoctl_log('monitor'));
autoctl_run('monitor', $monitor);
ok(wait_until('the monitor', 60, sub { defined query($monitor, 'SELECT 1', 'pg_auto_failover') }),
	'the monitor runs') or BAIL_OUT('see ' . autoctl_log('monitor'));
# fail over within seconds, not a minute
my %fast_monitor = (
	'pgautofailover.health_check_period'               => 1000,
	'pgautofailover.health_check_timeout'              => 1000,
	'pgautofailover.health_check_max_retries'          => 1,
	'pgautofailover.health_check_retry_delay'          => 500,
	'pgautofailover.node_considered_unhealthy_timeout' => 2000,
	'pgautofailover.primary_demote_timeout'            => 3000,
	'pgautofailover.startup_grace_period'              => 1000);
$monitor->safe_psql('pg_auto_failover', "ALTER SYSTEM SET $_ = $fast_monitor{$_}") for sort keys %fast_monitor;
$monitor->safe_psql('pg_auto_failover', 'SELECT pg_reload_conf()');
my $monitor_uri = 'postgres://autoctl_node@127.0.0.1:' . $monitor->port . '/pg_auto_failover?sslmode=disable';

# --- the data nodes: node1 from a cluster initialised here (UTF-8), node2 a
# base backup of it made by pg_autoctl
sub create_node
{
	my ($name, $node) = @_;
	return autoctl_cmd($name, $node, 'create', 'postgres', '--pgctl', "$bindir/pg_ctl",
		'--pgdata', $node->data_dir, '--pgport', $node->port, '--pghost', $node->host,
		'--hostname', '127.0.0.1', '--listen', '127.0.0.1', '--name', $name,
		'--monitor', $monitor_uri, '--skip-pg-hba', '--no-ssl');
}
my $node1 = monk_cluster('node1', allows_streaming => 1);
$node1->append_conf('postgresql.conf', monk_extra_conf()) if monk_extra_conf() ne '';
auto_conf($node1, %small,
	# pg_autoctl's own file preloads pg_stat_statements
	shared_preload_libraries     => 'pg_stat_statements,monk',
	'monk.databases'             => 'postgres',
	'monk.base_url'              => $api->url,
	'monk.api_key'               => 'test_key',
	'monk.standby_names'         => $standby_names,
	'monk.flush_interval'        => '10ms',
	'monk.retry_base_delay'      => '20ms',
	'monk.retry_max_delay'       => '500ms',
	'monk.circuit_open_time'     => '500ms',
	'monk.request_timeout'       => '5s',
	'monk.shutdown_timeout'      => '5s',
	# PostgreSQL's default, which PostgreSQL::Test::Cluster lowers to 500ms:
	# a standby that lost its primary waits this long to stream again
	wal_retrieve_retry_interval  => '5s');
ok(create_node('node1', $node1), 'pg_autoctl registers node1') or BAIL_OUT('see ' . autoctl_log('node1'));
autoctl_run('node1', $node1);
ok(wait_until('node1 single', 60, sub { in_state('node1', qr{^single/single$}) }), 'node1 runs alone');
my $node2 = PostgreSQL::Test::Cluster->new('node2');
ok(create_node('node2', $node2), 'pg_autoctl makes node2 a standby of node1')
  or BAIL_OUT('see ' . autoctl_log('node2'));
autoctl_run('node2', $node2);
ok( wait_until('node1 primary, node2 secondary', 90, sub {
			my %s = states();
			($s{node1} // '') eq 'primary/primary' && ($s{node2} // '') eq 'secondary/secondary' }),
	'node1 is the primary, node2 its secondary');
like($node1->safe_psql('postgres', 'SHOW synchronous_standby_names'), qr/^ANY 1 \(/,
	'pg_auto_failover replicates synchronously');

$node1->safe_psql('postgres', q{
CREATE EXTENSION monk;
CREATE TABLE usage (id bigint PRIMARY KEY, customer text NOT NULL, tokens bigint NOT NULL);
CREATE TRIGGER usage_monk AFTER INSERT OR UPDATE ON usage FOR EACH ROW
  EXECUTE FUNCTION monk_capture('usage_call', 'external_customer_id=customer', 'properties=tokens');
-- the transactions of the writer that committed, on this timeline
CREATE TABLE applied (txn bigint PRIMARY KEY);
});
my $kp = key_prefix($node1);
sub key_of { return "${kp}public.usage:$_[0]:usage_call" }

# --- the writer: a forked process; transaction k writes tokens = k, so that
# every version of a row names the transaction that wrote it
my $multi = 'host=127.0.0.1,127.0.0.1 port=' . $node1->port . ',' . $node2->port
  . ' dbname=postgres target_session_attrs=read-write connect_timeout=2';

sub writer
{
	open(my $log, '>>', $writer_log) or POSIX::_exit(1);
	$log->autoflush(1);
	my @rows;    # rows whose inserting transaction committed: corrected later
	my $k = 0;
	until (-e $writer_stop)
	{
		$k++;
		my ($op, $row, $target, @sql);
		if ($k % 10 == 0)
		{
			($op, $row, $target) = ('rollback', $k, @rows ? $rows[ $k % @rows ] : undef);
		}
		elsif (@rows && $k % 3 == 0)
		{
			($op, $target) = ('correct', $rows[ ($k * 7) % @rows ]);
		}
		elsif (@rows && $k % 7 == 1)
		{
			($op, $row, $target) = ('insert+correct', $k, $rows[ ($k * 5) % @rows ]);
		}
		else
		{
			($op, $row) = ('insert', $k);
		}
		push @sql, "INSERT INTO usage VALUES ($row, 'cus_" . ($k % 7) . "', $k)" if defined $row;
		push @sql, "UPDATE usage SET tokens = $k WHERE id = $target" if defined $target;
		my ($out, $err) = ('', '');
		my $ok = eval {
			IPC::Run::run([ 'psql', '-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-d', $multi,
					map { ('-c', $_) } 'BEGIN', @sql, "INSERT INTO applied VALUES ($k)",
					q{SELECT current_setting('port')}, $op eq 'rollback' ? 'ROLLBACK' : 'COMMIT' ],
				'<', \undef, '>', \$out, '2>', \$err, IPC::Run::timeout(30));
		};
		chomp $out;
		# a rolled-back transaction never commits, whatever psql says
		my $status = $op eq 'rollback' ? 'rolledback' : $ok ? 'ok' : 'unknown';
		print $log join("\t", $k, $status, $op, $ok ? $out : '-', $row // '-', $target // '-'), "\n";
		push @rows, $row if $status eq 'ok' && defined $row;
		sleep 0.05 unless $ok;    # no primary at the moment: try again soon
	}
	POSIX::_exit(0);
}

# The writer's transactions so far.
sub written
{
	open(my $fh, '<', $writer_log) or return ();
	my @t;
	while (<$fh>)
	{
		chomp;
		my @f = split /\t/;
		next unless @f == 6;
		push @t, { k => $f[0], status => $f[1], op => $f[2], port => $f[3], row => $f[4], target => $f[5] };
	}
	return @t;
}

sub acked_on
{
	my ($port) = @_;
	return scalar grep { $_->{status} eq 'ok' && $_->{port} eq $port } written();
}

$writer_pid = fork;
die "fork: $!" unless defined $writer_pid;
writer() if $writer_pid == 0;

ok(wait_until('commits on node1, billed', 60, sub { acked_on($node1->port) >= 40 && @{ $api->keys } >= 20 }),
	'the writer commits on node1, and its rows are billed');

# --- node1's postmaster is killed, after replication stalled so that a
# probe transaction (a new row and a correction) has committed on node1 only.
# pg_autoctl restarts the postmaster; when it does so before reporting it down
# there is no failover (a race), and node1 is killed again, with a new probe.
my @probes;       # { k, row, target }
my %node1_seen;   # what node1 answered after a kill, while it was up

# Does node1 answer as a primary, and does it see the probes?
sub watch_node1
{
	return unless @probes;
	my $ks = join(',', map { $_->{k} } @probes);
	my $r = query($node1, "SELECT pg_is_in_recovery()::text || ' ' || count(*) FROM applied WHERE txn IN ($ks)");
	return unless defined $r;
	$node1_seen{primary}++ if $r =~ /^false/;
	$node1_seen{primary_with_probe}++ if $r =~ /^false [1-9]/;
}

my $crash_at;
for my $attempt (1 .. 4)
{
	my ($walsender) = split /\n/, $node1->safe_psql('postgres', 'SELECT pid FROM pg_stat_replication');
	if ($walsender)
	{
		kill 'STOP', $walsender;
		push @stopped, $walsender;
	}
	my ($target) = map { $_->{row} } grep { $_->{status} eq 'ok' && $_->{row} ne '-' } written();
	my $probe = { k => 1_000_000_000 + $attempt, row => 1_000_000_000 + $attempt, target => $target };
	push @probes, $probe;
	$probe->{run} = IPC::Run::start(
		[ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node1->connstr('postgres') . ' application_name=probe',
			'-c', 'BEGIN',
			'-c', "INSERT INTO usage VALUES ($probe->{row}, 'cus_probe', $probe->{k})",
			'-c', "UPDATE usage SET tokens = $probe->{k} WHERE id = $target",
			'-c', "INSERT INTO applied VALUES ($probe->{k})",
			'-c', 'COMMIT' ],
		'<', \undef, '>', \my $probe_out, '2>', \my $probe_err);
	ok( wait_until('the probe waiting for the standby', 30, sub {
				$node1->safe_psql('postgres',
					q{SELECT count(*) FROM pg_stat_activity WHERE application_name = 'probe' AND wait_event = 'SyncRep'}) == 1 }),
		"kill $attempt: a probe has committed on node1 and waits for the standby");

	# two races lost (a loaded machine loses them all): node1's pg_autoctl is
	# frozen with its Postgres, as by a crash of the whole machine, so that
	# the monitor alone decides; it resumes once node2 is promoted, restarts
	# the old Postgres as the primary it believes it is, and hears of the
	# failover -- the same window
	my $frozen = $attempt >= 3;
	kill 'STOP', -$autoctl{node1}{pid} if $frozen;
	my ($postmaster) = split /\n/, slurp_file($node1->data_dir . '/postmaster.pid');
	$crash_at = time;
	kill 'KILL', $postmaster, @stopped;
	@stopped = ();
	eval { $probe->{run}->finish };
	isnt($probe->{run}->result(0) // -1, 0, "kill $attempt: the probe's COMMIT never returned");
	my $promoted = wait_until('node2 promoted', $frozen ? 120 : 12,
		sub { watch_node1(); in_state('node2', qr{^(wait_primary|primary)/}) });
	kill 'CONT', -$autoctl{node1}{pid} if $frozen;
	last if $promoted;
	note("kill $attempt: no failover: pg_autoctl restarted node1 before reporting it down; states: " . states_text());
	# node1 back at work, with node2 streaming from it again
	wait_until('node1 and node2 back', 60, sub {
			my %s = states();
			($s{node1} // '') eq 'primary/primary' && ($s{node2} // '') eq 'secondary/secondary'
			  && (query($node1, 'SELECT count(*) FROM pg_stat_replication') // '') eq '1' })
	  or diag('states: ' . states_text());
}
ok(in_state('node2', qr{^(wait_primary|primary)/}), 'pg_auto_failover promotes node2')
  or diag('states: ' . states_text());
note(sprintf('node2 promoted %.1f s after the kill', time - $crash_at));

ok(wait_until('commits on node2', 60, sub { watch_node1(); acked_on($node2->port) >= 30 }),
	'the writer commits on node2 through the same connection string');
ok( wait_until('node1 back as secondary', 60, sub {
			watch_node1();
			my %s = states();
			($s{node1} // '') eq 'secondary/secondary' && ($s{node2} // '') eq 'primary/primary' }),
	'node1 is demoted, rewound and rejoins as the secondary of node2')
  or diag('states: ' . states_text() . "; node1's processes: " . join('; ', processes_of($node1)));
my %survived = map { $_ => 1 } split /\n/, $node2->safe_psql('postgres',
	'SELECT txn FROM applied WHERE txn IN (' . join(',', map { $_->{k} } @probes) . ')');
note('after the kill node1 answered as a primary ' . ($node1_seen{primary} // 0) . ' time(s), with a probe visible '
	  . ($node1_seen{primary_with_probe} // 0) . ' time(s); probes on node2: '
	  . scalar(keys %survived) . ' of ' . scalar(@probes));
my $rejoined = acked_on($node2->port);
ok(wait_until('commits with node1 as standby', 60, sub { acked_on($node2->port) >= $rejoined + 20 }),
	'the writer commits on node2 with node1 as its synchronous standby');

# --- the end of the writer
open(my $stop, '>', $writer_stop) or die $!;
close $stop;
ok(wait_until('the writer to stop', 60, sub { waitpid($writer_pid, POSIX::WNOHANG()) == $writer_pid }),
	'the writer stops');
$writer_pid = undef;
ok(wait_outbox_empty($node2, 'postgres', 90), "node2's outbox drains");

# --- what survived, and what the API holds
my @t = written();
my %applied = map { $_ => 1 } split /\n/, $node2->safe_psql('postgres', 'SELECT txn FROM applied');
my %tokens = map { split /\|/ } split /\n/, $node2->safe_psql('postgres', 'SELECT id, tokens FROM usage');
my @acked = grep { $_->{status} eq 'ok' } @t;
my @unknown = grep { $_->{status} eq 'unknown' } @t;
my @lost = grep { !$applied{ $_->{k} } } @unknown;
note(sprintf('%d transactions: %d committed (%d on node1, %d on node2), %d rolled back, '
		. '%d unknown (%d of them on node2, %d not)',
		scalar(@t), scalar(@acked), scalar(grep { $_->{port} eq $node1->port } @acked),
		scalar(grep { $_->{port} eq $node2->port } @acked), scalar(grep { $_->{status} eq 'rolledback' } @t),
		scalar(@unknown), @unknown - @lost, scalar(@lost)));

my @missing = grep { !$applied{ $_->{k} } } @acked;
is(scalar(@missing), 0, 'every transaction whose COMMIT returned is on the surviving primary')
  or diag('missing: ' . join(', ', map { $_->{k} } @missing[ 0 .. ($#missing < 9 ? $#missing : 9) ]));
is(scalar(grep { $applied{ $_->{k} } } grep { $_->{status} eq 'rolledback' } @t), 0,
	'no rolled-back transaction is there');

api_holds_exactly($api, [ map { key_of($_) } keys %tokens ],
	'the API holds exactly the keys of the rows of the surviving primary');
my ($final, $history) = api_versions($api, 'tokens');
my @stale = grep { exists $final->{ key_of($_) } && ($final->{ key_of($_) } // '') ne $tokens{$_} } sort { $a <=> $b } keys %tokens;
is(scalar(@stale), 0, "each key's latest version at the API is its row's current value")
  or diag(join(', ', map { "$_: api=" . ($final->{ key_of($_) } // 'none') . " row=$tokens{$_}" } @stale[ 0 .. ($#stale < 9 ? $#stale : 9) ]));
my @billed_lost;
for my $key (sort keys %$history)
{
	push @billed_lost, map { "$key=$_" } grep { !$applied{$_} } @{ $history->{$key} };
}
is(scalar(@billed_lost), 0,
	'no version the API received came from a transaction the surviving primary lacks')
  or diag('billed but lost or rolled back: ' . join(', ', @billed_lost[ 0 .. ($#billed_lost < 9 ? $#billed_lost : 9) ]));
for my $probe (@probes)
{
	if ($survived{ $probe->{k} })
	{
		is($final->{ key_of($probe->{row}) }, $probe->{k}, "probe $probe->{k}, which survived, is billed");
	}
	else
	{
		ok( !exists $final->{ key_of($probe->{row}) }
			  && !grep({ $_ eq $probe->{k} } @{ $history->{ key_of($probe->{target}) } // [] }),
			"probe $probe->{k}, lost with node1, is not billed: neither its row nor its correction");
	}
}

stop_everything();
$api->stop;
done_testing();
