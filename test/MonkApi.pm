package MonkApi;

# MonkApi -- start and drive the local Monk Events API (test/monk_api.py) from TAP tests.
#
# The monk extension's TAP tests need an Events API to export to.  This module starts monk_api.py (which
# lives next to this file) as a child process on a free port, waits until it answers, and wraps its
# unauthenticated control API (/_test/*) so a test can switch faults and assert on what was received.
# Core Perl only: HTTP::Tiny, JSON::PP, File::Temp, POSIX.  See the POD at the end for the interface.

use strict;
use warnings;

use Carp qw(croak);
use File::Basename qw(dirname);
use File::Spec;
use File::Temp qw(tempdir);
use HTTP::Tiny;
use JSON::PP;
use POSIX qw(WNOHANG _exit);
use Time::HiRes qw(sleep time);

our $VERSION = '0.1';

my $SCRIPT = File::Spec->catfile(dirname(File::Spec->rel2abs(__FILE__)), 'monk_api.py');
my $JSON   = JSON::PP->new->utf8->canonical->allow_nonref;
my %LIVE;    # pid => object, for the END block

sub new
{
	my ($class, %opts) = @_;
	my $dir = tempdir('monk_api_XXXXXX', TMPDIR => 1, CLEANUP => 1);
	my $port_file = "$dir/port";
	my $python = $opts{python} // $ENV{PYTHON} // 'python3';

	my @cmd = ($python, $SCRIPT, '--port', $opts{port} // 0,
		'--port-file', $port_file, '--host', $opts{host} // '127.0.0.1');
	push @cmd, '--api-key', $opts{api_key} if defined $opts{api_key};
	if (defined $opts{customers})
	{
		my $c = $opts{customers};
		push @cmd, '--customers', ref $c eq 'ARRAY' ? join(',', @$c) : $c;
	}
	push @cmd, '--tls-cert', $opts{tls_cert}, '--tls-key', $opts{tls_key} if $opts{tls_cert};
	push @cmd, '--verbose' if $opts{verbose};

	my $pid = fork;
	croak "MonkApi: fork failed: $!" unless defined $pid;
	if ($pid == 0)
	{
		# child: keep the TAP stream clean -- the server's stdout goes to stderr when verbose,
		# otherwise nowhere; its stderr (tracebacks) stays visible.
		if ($opts{verbose}) { open(STDOUT, '>&', \*STDERR); }
		else { open(STDOUT, '>', File::Spec->devnull); }
		{ no warnings 'exec'; exec { $cmd[0] } @cmd; }
		print STDERR "MonkApi: cannot exec $cmd[0]: $!\n";
		_exit(127);    # no END blocks, no DESTROY in the child
	}

	my $self = bless {
		pid       => $pid,
		owner     => $$,
		dir       => $dir,
		scheme    => $opts{tls_cert} ? 'https' : 'http',
		host      => $opts{host} // '127.0.0.1',
		http      => HTTP::Tiny->new(timeout => $opts{timeout} // 30, keep_alive => 1,
			verify_SSL => 0, agent => "MonkApi.pm/$VERSION"),
	}, $class;
	$LIVE{$pid} = $self;

	# wait (bounded) for the port file, then for the server to answer
	my $deadline = time + ($opts{start_timeout} // 30);
	until (defined $self->{port})
	{
		if (waitpid($pid, WNOHANG) == $pid)
		{
			delete $LIVE{$pid};
			$self->{pid} = undef;
			croak "MonkApi: monk_api.py exited during start-up (status $?): @cmd";
		}
		if (-s $port_file && open(my $fh, '<', $port_file))
		{
			my $p = <$fh>;
			close $fh;
			$self->{port} = $1 if defined $p && $p =~ /^(\d+)/;
		}
		$self->_startup_failed("no port file after the timeout") if time > $deadline;
		sleep 0.05 unless defined $self->{port};
	}
	$self->{url} = "$self->{scheme}://" . ($self->{host} =~ /:/ ? "[$self->{host}]" : $self->{host})
	  . ":$self->{port}";
	until (eval { $self->stats; 1 })
	{
		$self->_startup_failed("it does not answer: $@") if time > $deadline;
		sleep 0.05;
	}
	return $self;
}

sub _startup_failed
{
	my ($self, $why) = @_;
	$self->stop;
	croak "MonkApi: monk_api.py did not start: $why";
}

sub url  { $_[0]{url} }
sub port { $_[0]{port} }
sub pid  { $_[0]{pid} }

# one control API call: decoded JSON answer, or die with the status and body
sub _call
{
	my ($self, $method, $path, $body) = @_;
	my %req = (headers => { 'Content-Type' => 'application/json' });
	$req{content} = $JSON->encode($body) if defined $body;
	my $res = $self->{http}->request($method, $self->{url} . $path, \%req);
	croak "MonkApi: $method $path failed: $res->{status} $res->{reason}"
	  . (length($res->{content} // '') ? ": $res->{content}" : '')
	  unless $res->{success};
	return $JSON->decode($res->{content});
}

sub reset     { my ($self, %opts) = @_; $self->_call('POST', '/_test/reset', \%opts) }
sub faults    { my ($self, $cfg) = @_; $self->_call('POST', '/_test/faults', $cfg // {}) }
sub clear_faults { $_[0]->_call('POST', '/_test/faults', { clear => JSON::PP::true }) }
sub events    { $_[0]->_call('GET', '/_test/events')->{events} }
sub keys      { $_[0]->_call('GET', '/_test/events?keys_only=1')->{keys} }
sub stats     { $_[0]->_call('GET', '/_test/stats') }
sub lose      { my ($self, $keys) = @_; $self->_call('POST', '/_test/lose', { keys => $keys })->{lost} }
sub requests  { my ($self, $n) = @_; $self->_call('GET', '/_test/requests?last=' . ($n // 100))->{requests} }

# poll until at least $n distinct events are stored; true on success, false after $timeout seconds
sub wait_for_events
{
	my ($self, $n, $timeout) = @_;
	my $deadline = time + ($timeout // 30);
	while (1)
	{
		return 1 if $self->stats->{events_stored} >= $n;
		return 0 if time > $deadline;
		sleep 0.05;
	}
}

sub stop
{
	my ($self) = @_;
	my $pid = $self->{pid};
	return unless $pid && $self->{owner} == $$;
	local ($?, $!, $@);    # never change the test's exit status from DESTROY / END
	kill 'TERM', $pid;
	my $deadline = time + 10;
	while (waitpid($pid, WNOHANG) == 0)
	{
		if (time > $deadline) { kill 'KILL', $pid; waitpid($pid, 0); last; }
		sleep 0.02;
	}
	delete $LIVE{$pid};
	$self->{pid} = undef;
	return;
}

sub DESTROY { $_[0]->stop }

END { $_->stop for values %LIVE }

1;

__END__

=head1 NAME

MonkApi - run the local Monk Events API (test/monk_api.py) for TAP tests

=head1 SYNOPSIS

  use lib 'test';
  use MonkApi;

  my $api = MonkApi->new(api_key => 'test_key', customers => [qw(cust_a cust_b)]);
  $node->append_conf('postgresql.conf', "monk.base_url = '" . $api->url . "'");

  $api->faults({ script => [500, 429, 'drop', 'ok'], retry_after => 0 });
  ...
  ok($api->wait_for_events(100, 30), 'all events arrived');
  is(scalar @{ $api->keys }, 100, 'each counted once');
  is($api->events->{sync_1}{receipts}, 2, 'sync_1 was retried once');
  $api->reset;
  $api->stop;    # also done by DESTROY and at END

=head1 CONSTRUCTOR

C<< MonkApi->new(%opts) >> starts C<python3 monk_api.py --port 0 --port-file TMP> and waits (30 s at
most) until it answers.  Options: C<api_key>, C<customers> (array ref or comma-separated string),
C<port> (default 0: a free one), C<host> (127.0.0.1), C<tls_cert> and C<tls_key> (serve HTTPS; the
control calls then need IO::Socket::SSL), C<verbose> (log requests to stderr), C<python>
(interpreter; default C<$ENV{PYTHON}> or C<python3>), C<timeout> (control calls, 30 s),
C<start_timeout> (30 s).

=head1 METHODS

C<url>, C<port>, C<pid>; C<reset(%body)> (forget events, counters and faults; body may give
C<api_key>, C<customers> or fault settings); C<faults(\%cfg)> (merge fault settings, returns the
configuration); C<clear_faults>; C<events> (hash ref: key => {event, receipts, receivedAt});
C<keys> (sorted array ref); C<stats> (hash ref); C<lose(\@keys)> (number lost); C<requests($n)>
(the last $n /v1 requests); C<wait_for_events($n, $timeout)>; C<stop> (SIGTERM, then wait).

Every control call dies with the HTTP status and body when it fails.

=cut
