/*
 * standby.c
 *		monk.standby_names: the standbys that must have flushed a
 *		transaction's commit before the worker sends its events, so that a
 *		failover to one of them never leaves billed a transaction the new
 *		primary does not have.  Empty (the default), the server's synchronous
 *		standbys (synchronous_standby_names): after a crash, recovery makes
 *		visible commits that no synchronous standby acknowledged, and an HA
 *		manager may restart the old primary before it demotes it.
 *
 * The setting has the form of synchronous_standby_names, parsed by the
 * server's own parser (check_synchronous_standby_names): a list of
 * application names (FIRST n (...), the first n connected ones by their
 * order in the list; ANY n (...), any n of them; '*' matches every
 * standby).  A snapshot records no WAL position: the worker reads the end
 * of the WAL inserted right after taking a window's snapshot, which every
 * commit the snapshot sees precedes, and opens the window only once the
 * standbys named have flushed up to there (pg_stat_replication's
 * flush_lsn).  Until then its events wait, and monk.status says so.  A
 * standby named but gone is waited for, as synchronous replication waits
 * for it: change the setting and reload to stop waiting.  Logical
 * replication's walsenders are not standbys and never count.
 */
#include "postgres.h"

#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "replication/syncrep.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#if PG_VERSION_NUM >= 160000
#include "utils/guc_hooks.h"
#endif
#include "utils/pg_lsn.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "standby.h"

/* how often the standbys are looked at while events wait; when a wait is logged */
#define GATE_POLL_MS 100
#define GATE_LOG_MS 60000

char	   *monk_standby_names = NULL;
static SyncRepConfigData *standby_config = NULL;

/* Check hook: the form of synchronous_standby_names, by its own parser. */
bool
MonkStandbyNamesCheck(char **newval, void **extra, GucSource source)
{
	return check_synchronous_standby_names(newval, extra, source);
}

void
MonkStandbyNamesAssign(const char *newval, void *extra)
{
	standby_config = (SyncRepConfigData *) extra;
}

/*
 * The standbys waited for: monk.standby_names's, or when it is empty the
 * server's synchronous standbys (synchronous_standby_names, as parsed in
 * every process).  NULL: none.
 */
static const SyncRepConfigData *
StandbyConfig(const char **text)
{
	if (standby_config != NULL)
	{
		*text = monk_standby_names;
		return standby_config;
	}
	*text = SyncRepStandbyNames;
	return SyncRepConfig;
}

/* Are there standbys to wait for? */
bool
MonkStandbysNamed(void)
{
	const char *text;

	return StandbyConfig(&text) != NULL;
}

/* The priority of a standby by its name: 1 for the first member, 0: none. */
static int
StandbyPriority(const SyncRepConfigData *conf, const char *name)
{
	const char *member = conf->member_names;

	for (int i = 1; i <= conf->nmembers; i++)
	{
		if (strcmp(member, "*") == 0 || pg_strcasecmp(member, name) == 0)
			return i;
		member += strlen(member) + 1;
	}
	return 0;
}

typedef struct Candidate
{
	int			priority;
	bool		flushed;
} Candidate;

/* By priority, then those that flushed first (ties are the server's choice). */
static int
CompareCandidates(const void *a, const void *b)
{
	const Candidate *ca = a;
	const Candidate *cb = b;

	if (ca->priority != cb->priority)
		return ca->priority < cb->priority ? -1 : 1;
	return (int) cb->flushed - (int) ca->flushed;
}

/*
 * Have the standbys monk.standby_names names flushed the WAL up to lsn?
 * True when it names none.  Otherwise, when they have not, *why says how
 * many did.  In a transaction with SPI connected.
 */
bool
MonkStandbysFlushed(XLogRecPtr lsn, char **why)
{
	const char *text;
	const SyncRepConfigData *conf = StandbyConfig(&text);
	Candidate  *cands;
	int			ncands = 0;
	int			nflushed = 0;
	bool		ok;

	if (conf == NULL)
		return true;
	/* physical walsenders only: a logical one has a database */
	if (SPI_execute("SELECT a.application_name, w.flush_lsn"
					"  FROM pg_catalog.pg_stat_get_wal_senders() w"
					"  JOIN pg_catalog.pg_stat_get_activity(NULL) a ON a.pid OPERATOR(pg_catalog.=) w.pid"
					" WHERE a.datid IS NULL", true, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading pg_stat_replication failed");
	cands = palloc(sizeof(Candidate) * Max(SPI_processed, 1));
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		bool		isnull;
		char	   *name = SPI_getvalue(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 1);
		Datum		flush = SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 2, &isnull);
		int			priority = name ? StandbyPriority(conf, name) : 0;

		if (priority == 0)
			continue;
		cands[ncands].priority = priority;
		cands[ncands].flushed = !isnull && DatumGetLSN(flush) >= lsn;
		ncands++;
	}
	if (conf->syncrep_method == SYNC_REP_QUORUM)
	{
		for (int i = 0; i < ncands; i++)
			nflushed += cands[i].flushed ? 1 : 0;
		ok = nflushed >= conf->num_sync;
	}
	else
	{
		/* the num_sync connected standbys of the highest priority */
		qsort(cands, ncands, sizeof(Candidate), CompareCandidates);
		for (int i = 0; i < Min(ncands, conf->num_sync); i++)
			nflushed += cands[i].flushed ? 1 : 0;
		ok = nflushed >= conf->num_sync;
	}
	SPI_freetuptable(SPI_tuptable);
	if (!ok && why)
		*why = psprintf("%d of the %d standbys %s asks for (%s) %s flushed %X/%X; %d of those it names %s connected",
						nflushed, conf->num_sync,
						conf == standby_config ? "monk.standby_names" : "synchronous_standby_names", text,
						nflushed == 1 ? "has" : "have",
						LSN_FORMAT_ARGS(lsn), ncands, ncands == 1 ? "is" : "are");
	pfree(cands);
	return ok;
}

/*
 * Make every commit the caller's snapshot sees durable: a commit was
 * inserted in the WAL before it became visible, so before the end of what
 * was inserted, read now.  With synchronous_commit = off it may not be
 * flushed yet, and a crash would lose a transaction already billed: flush
 * up to there (a no-op when every commit waits for its flush).  The end of
 * what was inserted, not the insert position: at a page's start, that one
 * points past the page header, which nothing has written yet, and
 * XLogFlush fails.  Returns that end (InvalidXLogRecPtr during recovery).
 */
XLogRecPtr
MonkFlushSeenCommits(void)
{
	XLogRecPtr	end;

	if (RecoveryInProgress())
		return InvalidXLogRecPtr;
	end = GetXLogInsertEndRecPtr();
	XLogFlush(end);
	return end;
}

/*
 * For a session that sends rows it reads under its snapshot
 * (monk_batch_export): wait until every commit the snapshot sees is
 * flushed, here and on the standbys named.  Reads the end of the WAL now,
 * after the snapshot was taken; a NOTICE every 10 s says why it waits (a
 * cancel or statement_timeout ends the wait).  Inside SPI.
 */
void
MonkAwaitFlushed(const char *who)
{
	XLogRecPtr	end = MonkFlushSeenCommits();
	TimestampTz told;
	char	   *why = NULL;

	if (XLogRecPtrIsInvalid(end))
		return;
	told = GetCurrentTimestamp();
	while (!MonkStandbysFlushed(end, &why))
	{
		if (TimestampDifferenceExceeds(told, GetCurrentTimestamp(), 10000))
		{
			ereport(NOTICE,
					(errmsg("%s waits for standbys: %s", who, why),
					 errhint("A standby named but gone is waited for: change monk.standby_names and reload, or cancel.")));
			told = GetCurrentTimestamp();
		}
		pfree(why);
		why = NULL;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 100, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/* Close the gate until the standbys have flushed lsn. */
void
MonkGateAt(MonkGate *gate, XLogRecPtr lsn)
{
	if (XLogRecPtrIsInvalid(lsn))
		return;
	gate->lsn = lsn;
	gate->check_at = 0;
	gate->since = GetCurrentTimestamp();
}

/*
 * Is the gate open: have the standbys flushed what it waits for?  If not,
 * look again in GATE_POLL_MS; a wait of a minute is logged.  In a
 * transaction with SPI connected.
 */
bool
MonkGatePass(MonkGate *gate)
{
	char	   *why = NULL;

	if (XLogRecPtrIsInvalid(gate->lsn))
		return true;
	if (MonkStandbysFlushed(gate->lsn, &why))
	{
		if (gate->logged)
			ereport(LOG,
					(errmsg("monk: the standbys have flushed the events waiting for them; sending goes on")));
		gate->lsn = InvalidXLogRecPtr;
		gate->logged = false;
		return true;
	}
	gate->check_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), GATE_POLL_MS);
	if (!gate->logged && TimestampDifferenceExceeds(gate->since, GetCurrentTimestamp(), GATE_LOG_MS))
	{
		ereport(LOG,
				(errmsg("monk: events wait for standbys: %s", why),
				 errhint("A standby named but gone is waited for, as synchronous replication waits: change monk.standby_names (or synchronous_standby_names, when it is empty) and reload to stop waiting.")));
		gate->logged = true;
	}
	return false;
}

/* Milliseconds until the standbys are looked at again (-1: the gate is open). */
long
MonkGateWaitMs(const MonkGate *gate)
{
	long		ms;

	if (XLogRecPtrIsInvalid(gate->lsn))
		return -1;
	ms = (long) ((gate->check_at - GetCurrentTimestamp()) / 1000);
	return Max(ms, 0);
}
