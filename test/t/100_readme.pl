# The README's path, run as written: its configuration blocks make the
# cluster's configuration, and its SQL examples (Installation, Getting
# started, Capturing a table, Scheduled export with pg_cron, Uninstalling)
# run in order, each in
# the database its marker names, against the local Monk API; then every event
# they queued or exported has arrived, pg_cron runs the README's job in the
# database it names, and the extension drops once the outbox is empty.  A
# README edit that breaks an example fails here.
#
# A block runs when the line before its fence is
#   <!-- readme-test: WHERE [cron] [last] -->
# WHERE is "conf" (postgresql.conf lines) or a database; "cron" blocks need
# pg_cron; "last" blocks run after all the others.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use File::Basename qw(dirname);
use MonkApi;
use MonkTest;

my $has_cron = has_library('pg_cron');
my $readme = slurp_file(dirname(__FILE__) . '/../../README.md');
my @lines = split /\n/, $readme;
my @blocks;
for (my $i = 0; $i < @lines; $i++)
{
	next unless $lines[$i] =~ /^<!-- readme-test: (\S+)((?: \w+)*) -->$/;
	my ($where, $flags) = ($1, $2);
	$lines[ ++$i ] =~ /^```(sql|ini)$/ or BAIL_OUT("README line " . ($i + 1) . ": a readme-test marker without a fence after it");
	my @text;
	push @text, $lines[$i] while $lines[ ++$i ] ne '```';
	push @blocks, { where => $where, cron => ($flags =~ /\bcron\b/ ? 1 : 0), last => ($flags =~ /\blast\b/ ? 1 : 0),
		text => join("\n", @text), line => $i - scalar(@text) };
}
cmp_ok(scalar(@blocks), '>=', 10, 'the README has its tested examples');

my $api = MonkApi->new(api_key => 'readme_key');

# the configuration, as the README writes it, pointed at the local API
my $conf = monk_extra_conf();
for my $b (grep { $_->{where} eq 'conf' && (!$_->{cron} || $has_cron) } @blocks)
{
	$conf .= "$b->{text}\n";
}
like($conf, qr/^monk\.base_url = /m, 'the README sets monk.base_url');
$conf =~ s/^monk\.base_url = .*$/monk.base_url = '@{[ $api->url ]}'/m;
$conf =~ s/^monk\.api_key = .*$/monk.api_key = 'readme_key'/m;
my $node = monk_cluster('readme');
$node->append_conf('postgresql.conf', $conf);
$node->start;
# the README's shell steps: the database and the role, before they are named
$node->safe_psql('postgres', 'CREATE DATABASE app');
$node->safe_psql('postgres', 'CREATE ROLE app_role LOGIN');

my @sql = grep { $_->{where} ne 'conf' } @blocks;
for my $b ((grep { !$_->{last} } @sql), (grep { $_->{last} } @sql))
{
	if ($b->{cron} && !$has_cron)
	{
		diag("README line $b->{line} skipped: pg_cron is not installed (Debian packages none for this major)");
		next;
	}
	if ($b->{last})
	{
		ok(wait_outbox_empty($node, 'app'), 'the outbox is empty before the last examples');
		# pg_cron's job, scheduled hourly by the README, runs now
		if ($has_cron)
		{
			$node->safe_psql('app', q{INSERT INTO billing_events (external_customer_id, event_type) VALUES ('cus_789', 'completion')});
			# every 2 seconds where pg_cron has seconds (1.5 and later), else every minute
			my ($rc) = $node->psql('postgres', q{SELECT cron.alter_job(jobid, schedule => '2 seconds') FROM cron.job WHERE jobname = 'monk-sync'});
			$node->safe_psql('postgres', q{SELECT cron.alter_job(jobid, schedule => '* * * * *') FROM cron.job WHERE jobname = 'monk-sync'})
			  if $rc != 0;
			ok(wait_until("pg_cron to run the README's job", 90, sub { grep { /^sync_[0-9a-f]{16}_3\z/ } @{ $api->keys } }),
				"pg_cron runs the README's export in the database it names");
			is($node->safe_psql('postgres', q{SELECT bool_or(status = 'succeeded'), bool_and(status <> 'failed'), min(database), max(database)
			                                   FROM cron.job_run_details}),
				't|t|app|app', 'in database app, successfully');
			$node->safe_psql('postgres', q{SELECT cron.unschedule('monk-sync')});
		}
	}
	my ($rc, $out, $err) = $node->psql($b->{where}, $b->{text}, on_error_stop => 1);
	is($rc, 0, "README line $b->{line} runs in database $b->{where}") or diag($err);
}

# what the examples captured (two rows, one corrected; a bulk insert), queued (four monk_send calls) and
# exported (two rows) arrived
# (default keys begin with sync_ and database app's id, one for all)
my %have = map { $_ => 1 } @{ $api->keys };
my %ids = map { /^sync_([0-9a-f]{16})_/ ? ($1 => 1) : () } keys %have;
is(join(',', keys %ids) =~ tr/,//, 0, 'default keys hold one database id');
my ($id) = keys %ids;
ok($have{$_}, "the API holds $_")
  for ("sync_${id}_public.api_calls:1:api_call", "sync_${id}_public.api_calls:2:api_call", 'backfill_42',
	"sync_${id}_1", "sync_${id}_2");
is($api->events->{"sync_${id}_public.api_calls:1:api_call"}{event}{properties}{tokens}, 120,
	'the corrected row arrived in its newest version');
is(scalar(grep { /^sync_${id}_outbox_/ } keys %have), 3, 'and the events queued with assigned keys');
is(scalar(grep { /^sync_${id}_public\.bulk_calls:\d+:bulk_call$/ } keys %have), 1000,
	'and every row of the statement-level capture');
is($node->safe_psql('app', q{SELECT count(*) FROM pg_extension WHERE extname = 'monk'}), '0',
	'the Uninstalling example dropped the extension once its outbox was empty');

$node->stop;
$api->stop;
done_testing();
