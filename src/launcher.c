/*
 * launcher.c
 *		The monk launcher: starts a worker for each database of
 *		monk.databases, and again when the list changes on reload, without a
 *		restart of the server.
 *
 * The launcher is the one background worker registered at server start (it
 * connects to no database).  Each database listed gets a slot in shared
 * memory and a dynamic background worker (worker.c) bound to it; one that
 * stops (an error, a database that does not exist yet) is started again 5 s
 * later while its database is listed.  A database taken off the list is
 * left by its worker itself, at the reload: it lets its requests in flight
 * finish (monk.shutdown_timeout), frees its slot and exits; its events stay
 * queued and are sent once it is listed again.  The workers never restart
 * on their own (BGW_NEVER_RESTART): after a crash of the server every one is
 * forgotten and this launcher, restarted, starts them again; a worker that
 * finds its slot taken by another exits.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#include "settings.h"
#include "shmem.h"
#include "worker.h"

/* how long a stopped worker waits before it is started again */
#define RESTART_MS 5000
/*
 * How often the launcher looks at its workers: a launcher connected to no
 * database is not woken when one stops (its SIGUSR1 sets no latch).
 */
#define LOOK_MS 1000

typedef struct Launched
{
	BackgroundWorkerHandle *handle; /* NULL: none started by this launcher */
	TimestampTz stopped_at;		/* when its worker was seen stopped */
	bool		full_logged;	/* "no background worker slot" was logged */
} Launched;

static Launched launched[MONK_MAX_DATABASES];

/* Register the launcher (from _PG_init, when preloaded). */
void
MonkLauncherRegister(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS;
	/* a standby does not export; after promotion the launcher starts */
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = RESTART_MS / 1000;
	strlcpy(worker.bgw_library_name, "monk", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "MonkLauncherMain", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "monk launcher", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "monk launcher", BGW_MAXLEN);
	RegisterBackgroundWorker(&worker);
}

/* Start the worker of slot i; false when the server has no room for it. */
static bool
StartWorker(int i)
{
	MonkWorkerSlot *slot = &MonkShmem->slots[i];
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(worker.bgw_library_name, "monk", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "MonkWorkerMain", BGW_MAXLEN);
	snprintf(worker.bgw_name, BGW_MAXLEN, "monk worker for database %s", slot->dbname);
	strlcpy(worker.bgw_type, "monk worker", BGW_MAXLEN);
	worker.bgw_main_arg = Int32GetDatum(i);
	worker.bgw_notify_pid = MyProcPid;
	if (!RegisterDynamicBackgroundWorker(&worker, &launched[i].handle))
	{
		launched[i].handle = NULL;
		launched[i].stopped_at = GetCurrentTimestamp();
		if (!launched[i].full_logged)
			ereport(WARNING,
					(errmsg("monk: no background worker slot is free for the worker of database \"%s\"",
							slot->dbname),
					 errhint("Raise max_worker_processes (one for the launcher and one per database of monk.databases, besides the server's other workers); monk tries again every %d s.",
							 RESTART_MS / 1000)));
		launched[i].full_logged = true;
		return false;
	}
	launched[i].full_logged = false;
	return true;
}

/* The slot of database name, or -1. */
static int
SlotOf(const char *name)
{
	for (int i = 0; i < MONK_MAX_DATABASES; i++)
	{
		if (strcmp(MonkShmem->slots[i].dbname, name) == 0)
			return i;
	}
	return -1;
}

/*
 * Bring the workers in line with monk.databases.  Returns the milliseconds
 * until a stopped worker is due to start again (-1: none).
 */
static long
Reconcile(void)
{
	const List *names = MonkDatabaseList();
	ListCell   *lc;
	TimestampTz now = GetCurrentTimestamp();
	long		timeout = -1;

	/* the slot of a database no longer listed, once its worker is gone */
	for (int i = 0; i < MONK_MAX_DATABASES; i++)
	{
		MonkWorkerSlot *slot = &MonkShmem->slots[i];
		pid_t		pid;

		if (slot->dbname[0] == '\0' || MonkDatabaseListed(slot->dbname))
			continue;
		if (launched[i].handle != NULL &&
			GetBackgroundWorkerPid(launched[i].handle, &pid) != BGWH_STOPPED)
			continue;
		if (launched[i].handle != NULL)
			pfree(launched[i].handle);
		launched[i].handle = NULL;
		if (slot->pid == 0)
			MonkSlotRelease(slot);
	}

	foreach(lc, names)
	{
		const char *name = lfirst(lc);
		int			i = SlotOf(name);
		pid_t		pid;

		if (i < 0)
		{
			i = MonkSlotClaim(name);
			if (i < 0)
			{
				/* slots of databases taken off the list, still draining */
				timeout = timeout < 0 ? LOOK_MS : Min(timeout, LOOK_MS);
				continue;
			}
			launched[i].handle = NULL;
			launched[i].stopped_at = 0;
		}
		if (launched[i].handle != NULL &&
			GetBackgroundWorkerPid(launched[i].handle, &pid) == BGWH_STOPPED)
		{
			pfree(launched[i].handle);
			launched[i].handle = NULL;
			launched[i].stopped_at = now;
		}
		/* a worker runs (perhaps started by an earlier launcher) or starts */
		if (launched[i].handle != NULL || MonkShmem->slots[i].pid != 0)
			continue;
		if (launched[i].stopped_at != 0 &&
			!TimestampDifferenceExceeds(launched[i].stopped_at, now, RESTART_MS))
		{
			long		left = RESTART_MS - (long) ((now - launched[i].stopped_at) / 1000);

			timeout = timeout < 0 ? left : Min(timeout, left);
			continue;
		}
		if (!StartWorker(i))
			timeout = timeout < 0 ? RESTART_MS : Min(timeout, RESTART_MS);
	}
	return timeout;
}

/* Entry point of the launcher. */
void
MonkLauncherMain(Datum arg)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	ereport(LOG, (errmsg("monk launcher started for monk.databases \"%s\"",
						 monk_databases ? monk_databases : "")));

	for (;;)
	{
		long		timeout;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		timeout = Reconcile();
		/* woken by a reload; its workers stopping are seen within LOOK_MS */
		timeout = timeout < 0 ? LOOK_MS : Min(timeout, LOOK_MS);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, timeout, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
