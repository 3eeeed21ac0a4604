# Security and robustness: the API key never shows (views, errors, the log at
# debug5, reloads that change it), monk.api_key_file, what a non-superuser
# cannot do, bad settings refused at reload, TLS verified (a private CA via
# monk.ca_file), and memory bounded under huge answers.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use MonkApi;
use MonkTest;

my $tmp = PostgreSQL::Test::Utils::tempdir;
my $api = MonkApi->new(api_key => 'sekret-file-key-1');
my $node = monk_node(api => $api, api_key => 'sekret-conf-key',
	conf => { 'log_min_messages' => 'debug5', 'monk.batch_size' => 50, 'monk.flush_interval' => '10ms' });
my @secrets = qw(sekret-conf-key sekret-file-key-1 sekret-file-key-2);
my @all;

sub send_events { push @all, queue_events($node, @_, event => 'e') }

sub status { monk_status($node, $_[0]) }

# the key from monk.api_key is refused (the API wants the file's key)
send_events('before', 3);
ok(wait_until('the pause', 30, sub { status('worker_state') eq 'paused: authentication failed' }), 'a wrong key pauses the worker');

# monk.api_key_file takes precedence and is read at reload
my $keyfile = "$tmp/monk.key";
PostgreSQL::Test::Utils::append_to_file($keyfile, "sekret-file-key-1\n");
chmod 0600, $keyfile;
$node->append_conf('postgresql.conf', "monk.api_key_file = '$keyfile'");
$node->reload;
ok(wait_outbox_empty($node), 'with monk.api_key_file set and reloaded, the events go through');
api_holds_exactly($api, \@all, 'exactly the committed events');

# rotation: the API changes key; the file is rewritten and reloaded
$api->faults({ api_key => 'sekret-file-key-2' });
send_events('rotated', 3);
ok(wait_until('the pause', 30, sub { status('worker_state') eq 'paused: authentication failed' }), 'the old key is refused');
open my $fh, '>', $keyfile or die $!;
print $fh "sekret-file-key-2\n";
close $fh;
$node->reload;
ok(wait_outbox_empty($node), 'after the file is rewritten and reloaded, the events go through');
api_holds_exactly($api, \@all, 'exactly the committed events');

# a key file that cannot be read is refused at reload; the old key stays
$node->append_conf('postgresql.conf', "monk.api_key_file = '$tmp/missing.key'");
$node->reload;
send_events('kept', 2);
ok(wait_outbox_empty($node), 'an unreadable key file is refused and the old key kept');
is($node->safe_psql('postgres', 'SHOW monk.api_key_file'), $keyfile, 'monk.api_key_file keeps its old value');

# bad settings at reload are refused, the old values kept
$node->append_conf('postgresql.conf', "monk.batch_size = 0\nmonk.base_url = 'ftp://example.com'\nmonk.retry_base_delay = -5");
$node->reload;
send_events('badconf', 2);
ok(wait_outbox_empty($node), 'the worker still delivers with the old settings');
is($node->safe_psql('postgres', 'SHOW monk.batch_size'), '50', 'monk.batch_size = 0 was refused');
is($node->safe_psql('postgres', 'SHOW monk.base_url'), $api->url, 'an ftp:// URL was refused');
my $log = slurp_file($node->logfile);
like($log, qr/0 is outside the valid range for parameter "monk.batch_size" \(1 \.\. 10000\)/, 'the log says why');
like($log, qr/monk.base_url must start with "http:\/\/" or "https:\/\/"/, 'for the URL too');
$node->append_conf('postgresql.conf', "monk.batch_size = 50\nmonk.base_url = '" . $api->url . "'\nmonk.retry_base_delay = 20");
$node->reload;

# what a non-superuser sees and may do
$node->safe_psql('postgres', q{CREATE ROLE app LOGIN; GRANT EXECUTE ON FUNCTION monk_send(text, text, jsonb, timestamptz, text, uuid) TO app});
# (the message about pg_read_all_settings was reworded in 16)
my $read_all_settings = qr/must be superuser or have privileges of pg_read_all_settings|Only roles with privileges of the "pg_read_all_settings" role/;
my %denied = (
	q{SHOW monk.api_key}                              => $read_all_settings,
	q{SELECT current_setting('monk.api_key_file')}    => $read_all_settings,
	q{SELECT * FROM pg_file_settings}                 => qr/permission denied/,
	q{SET monk.base_url = 'http://attacker.example'}  => qr/cannot be changed now/,
	q{ALTER SYSTEM SET monk.base_url = 'http://attacker.example'} => qr/permission denied to set parameter "monk.base_url"/,
	q{ALTER SYSTEM SET monk.ca_file = '/tmp/x'}       => qr/permission denied to set parameter "monk.ca_file"/,
	q{SET monk.idempotency_prefix = 'x_'}             => qr/permission denied to set parameter/,
	q{SELECT * FROM monk.outbox}                      => qr/permission denied for schema monk/,
	q{SELECT * FROM monk.dead_letter}                 => qr/permission denied for schema monk/,
	q{SELECT * FROM monk.status}                      => qr/permission denied for schema monk/,
	q{SELECT monk_retry_dead_letters()}               => qr/permission denied for function/,
	q{SELECT * FROM monk_batch_export('pg_authid')}   => qr/permission denied for function/,
);
for my $sql (sort keys %denied)
{
	my ($rc, $out, $err) = $node->psql('postgres', "SET ROLE app; $sql");
	like($err, $denied{$sql}, "a non-superuser cannot: $sql");
}
is($node->safe_psql('postgres', q{SET ROLE app; SELECT count(*) FROM pg_settings WHERE name LIKE 'monk.api_key%' OR name IN ('monk.base_url', 'monk.ca_file')}),
	'0', 'pg_settings hides the key and the destination from a non-superuser');
is($node->safe_psql('postgres', q{SET ROLE app; SELECT monk_send('e', 'cus_1', idempotency_key => 'from_app')}), 'from_app',
	'but it can queue events');
push @all, 'from_app';

# TLS: a self-signed API is refused, then accepted with monk.ca_file (skipped without openssl: the
# checks after it, the key's among them, run either way)
SKIP:
{
	skip 'openssl is not installed: no certificate for the TLS part', 8
	  unless system('openssl version >/dev/null 2>&1') == 0;
	system_or_bail('openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2',
		'-keyout', "$tmp/key.pem", '-out', "$tmp/cert.pem", '-subj', '/CN=127.0.0.1',
		'-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost');
	my $tls = MonkApi->new(api_key => 'sekret-file-key-2', tls_cert => "$tmp/cert.pem", tls_key => "$tmp/key.pem");
	like($tls->url, qr/^https:/, 'a local API over HTTPS with a self-signed certificate');
	$node->append_conf('postgresql.conf', "monk.base_url = '" . $tls->url . "'");
	$node->reload;
	send_events('tls', 4);
	ok(wait_until('a TLS failure', 30, sub { status('last_error') =~ /SSL|certificate/i }), 'the unknown certificate is refused');
	ok(wait_until('the pause', 30, sub { status('worker_state') eq 'paused: TLS certificate refused' }),
		'sending pauses at once (0.3 retried it as a transient failure)');
	my ($rc, $out, $err) = $node->psql('postgres', 'SELECT count(*) FROM monk_list_events()');
	like($err, qr/the Events API's TLS certificate was refused/, 'monk_list_events: an error at once, not after retries');
	is(scalar @{ $tls->keys }, 0, 'nothing was sent to it');
	$node->append_conf('postgresql.conf', "monk.ca_file = '$tmp/cert.pem'");
	$node->reload;
	ok(wait_outbox_empty($node), 'with monk.ca_file naming its CA, the events go through');
	is(join(',', sort @{ $tls->keys }), 'tls_1,tls_2,tls_3,tls_4', 'the HTTPS API holds them');
	is($node->safe_psql('postgres', q{SELECT count(*) FROM monk_list_events()}), '4', 'monk_list_events verifies TLS the same way');
	$node->append_conf('postgresql.conf', "monk.base_url = '" . $api->url . "'");
	$node->reload;
	$tls->stop;
}

# huge answers and a slow API: the worker's memory stays bounded
$api->faults({ pad_bytes => 16 * 1024 * 1024, script => [ map { 500 } 1 .. 8 ], retry_after => 0 });
send_events('huge', 400);
ok(wait_outbox_empty($node, 'postgres', 120), 'events go through answers of 16 MB each');
my $pid = status('worker_pid');
my ($rss) = slurp_file("/proc/$pid/status") =~ /VmHWM:\s+(\d+) kB/;
cmp_ok($rss, '<', 64 * 1024, "the worker's peak resident memory stays under 64 MB ($rss kB)");
$api->clear_faults;
api_holds_exactly($api, [ grep { !/^tls_/ } @all ], 'the plain API holds exactly its events');

# the key appears nowhere: views, statuses, dead letters, activity, the log
my $views = $node->safe_psql('postgres', q{
SELECT concat_ws(' ',
  (SELECT string_agg(concat_ws('=', name, setting, reset_val, boot_val), ' ') FROM pg_settings WHERE name LIKE 'monk.%'),
  (SELECT string_agg(t::text, ' ') FROM monk.status t),
  (SELECT string_agg(t::text, ' ') FROM monk.worker_status() t),
  (SELECT string_agg(t::text, ' ') FROM monk.dead_letter t),
  (SELECT string_agg(t::text, ' ') FROM monk.outbox t),
  (SELECT string_agg(concat_ws(' ', application_name, query, backend_type), ' ') FROM pg_stat_activity),
  current_setting('monk.api_key'))});
like($views, qr/\*\*\*\*\*\*\*\*/, 'SHOW monk.api_key shows ********');
$log = slurp_file($node->logfile);
like($log, qr/DEBUG/, 'the log was written at debug5');
for my $secret (@secrets)
{
	unlike($views, qr/\Q$secret\E/, "no view shows the key $secret");
	unlike($log, qr/\Q$secret\E/, "the server log at debug5 never shows the key $secret");
}

$node->stop;
$api->stop;
done_testing();
