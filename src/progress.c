/*
 * progress.c
 *		The progress of the monk_batch_export calls running in the server: a
 *		slot per backend in shared memory, written by the exporting backend and
 *		read by the view monk.export_progress.
 *
 * A backend's slot is found by its PGPROC's number, so that no two backends
 * ever share one and none is searched for.  Its writer is the backend alone;
 * a spinlock makes each copy whole (an export writes its figures once per
 * wake-up of its sender, not per row).  The slot is emptied when the export
 * returns, and by a transaction callback when it ends with an error, in the
 * transaction or in the subtransaction that called it.  Without
 * shared_preload_libraries there are no slots: the export runs, unlisted.
 */
#include "postgres.h"

#include "access/xact.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "http.h"
#include "progress.h"
#include "shmem.h"

PG_FUNCTION_INFO_V1(monk_export_progress);

/* names longer are cut (on a character) */
#define MONK_PROGRESS_NAME_LEN 256

typedef struct ProgressSlot
{
	slock_t		mutex;
	int			pid;			/* 0: no export runs here */
	Oid			dboid;
	int			encoding;		/* of the names: the writer's database's */
	TimestampTz started_at;
	TimestampTz sending_since;	/* 0 while it waits */
	double		rows_estimated; /* < 0: unknown */
	char		cursor_name[MONK_PROGRESS_NAME_LEN];
	char		source[MONK_PROGRESS_NAME_LEN];
	MonkProgress progress;
} ProgressSlot;

static ProgressSlot *progress_slots = NULL;
static int	nprogress_slots = 0;

/* this backend's slot while an export runs, and the subtransaction that runs it */
static ProgressSlot *my_slot = NULL;
static SubTransactionId my_subid = InvalidSubTransactionId;
static bool callbacks_registered = false;

/* Its share of monk's shared memory (shmem.c requests it with its own). */
Size
MonkProgressShmemSize(void)
{
	return mul_size(sizeof(ProgressSlot), MaxBackends);
}

/* Create or attach to the slots: from shmem.c, under AddinShmemInitLock. */
void
MonkProgressShmemAttach(void)
{
	bool		found;

	progress_slots = ShmemInitStruct("monk export progress", MonkProgressShmemSize(), &found);
	nprogress_slots = MaxBackends;
	if (!found)
	{
		memset(progress_slots, 0, MonkProgressShmemSize());
		for (int i = 0; i < nprogress_slots; i++)
			SpinLockInit(&progress_slots[i].mutex);
	}
}

/* A name of the server's encoding, clipped on a character to fit. */
static void
CopyName(char *dst, const char *src)
{
	int			len = pg_mbcliplen(src, strlen(src), MONK_PROGRESS_NAME_LEN - 1);

	memcpy(dst, src, len);
	dst[len] = '\0';
}

/*
 * A name of the slot as text of the reader's database: as it is in the
 * writer's encoding, else through UTF-8 (MonkTextForDatabase), never with an
 * error: bytes that do not convert (a SQL_ASCII writer's, a character with
 * no equivalent in UTF-8) are shown \xNN.
 */
static Datum
NameDatum(const ProgressSlot *slot, const char *name)
{
	int			len = strlen(name);
	char	   *utf8;
	char	   *valid;

	if (slot->encoding == GetDatabaseEncoding())
		return CStringGetTextDatum(name);
	utf8 = MonkToUtf8NoErrorFrom(slot->encoding, name, len);
	if (utf8 == NULL)
	{
		StringInfoData buf;

		initStringInfo(&buf);
		for (int i = 0; i < len; i++)
		{
			if (IS_HIGHBIT_SET(name[i]))
				appendStringInfo(&buf, "\\x%02x", (unsigned char) name[i]);
			else
				appendStringInfoChar(&buf, name[i]);
		}
		utf8 = buf.data;
	}
	len = strlen(utf8);
	/* a SQL_ASCII writer's bytes may be anything: \xNN takes 4 bytes */
	valid = palloc(len * 4 + 1);
	(void) MonkValidUtf8(utf8, len, valid, len * 4 + 1);
	return CStringGetTextDatum(MonkTextForDatabase(valid));
}

void
MonkProgressEnd(void)
{
	if (my_slot == NULL)
		return;
	SpinLockAcquire(&my_slot->mutex);
	my_slot->pid = 0;
	SpinLockRelease(&my_slot->mutex);
	my_slot = NULL;
	my_subid = InvalidSubTransactionId;
}

/* An export that ended with an error leaves the view. */
static void
ProgressXactCallback(XactEvent event, void *arg)
{
	MonkProgressEnd();
}

static void
ProgressSubXactCallback(SubXactEvent event, SubTransactionId mySubid,
						SubTransactionId parentSubid, void *arg)
{
	/* subtransactions the export itself opened have greater ids */
	if (event == SUBXACT_EVENT_ABORT_SUB && my_slot != NULL && mySubid <= my_subid)
		MonkProgressEnd();
}

/*
 * The export starts: list it, waiting for its snapshot's commits to be
 * durable.  rows_estimated < 0 when unknown.
 */
void
MonkProgressBegin(const char *cursor_name, const char *source, double rows_estimated)
{
	int			procno;
	ProgressSlot *slot;

	MonkProgressEnd();
	if (progress_slots == NULL || MyProc == NULL)
		return;
	procno = MyProc - ProcGlobal->allProcs;
	if (procno < 0 || procno >= nprogress_slots)
		return;
	if (!callbacks_registered)
	{
		RegisterXactCallback(ProgressXactCallback, NULL);
		RegisterSubXactCallback(ProgressSubXactCallback, NULL);
		callbacks_registered = true;
	}
	slot = &progress_slots[procno];
	SpinLockAcquire(&slot->mutex);
	slot->pid = MyProcPid;
	slot->dboid = MyDatabaseId;
	slot->encoding = GetDatabaseEncoding();
	slot->started_at = GetCurrentTimestamp();
	slot->sending_since = 0;
	slot->rows_estimated = rows_estimated;
	CopyName(slot->cursor_name, cursor_name);
	CopyName(slot->source, source);
	memset(&slot->progress, 0, sizeof(MonkProgress));
	slot->progress.state = MONK_PROGRESS_WAITING;
	SpinLockRelease(&slot->mutex);
	my_slot = slot;
	my_subid = GetCurrentSubTransactionId();
}

void
MonkProgressUpdate(const MonkProgress *progress)
{
	TimestampTz now;

	if (my_slot == NULL)
		return;
	now = progress->state == MONK_PROGRESS_SENDING && my_slot->sending_since == 0 ? GetCurrentTimestamp() : 0;
	SpinLockAcquire(&my_slot->mutex);
	my_slot->progress = *progress;
	if (now != 0)
		my_slot->sending_since = now;
	SpinLockRelease(&my_slot->mutex);
}

/*
 * monk.export_progress_rows(): one row per export running in the server.
 * The view monk.export_progress adds the database's name.
 */
Datum
monk_export_progress(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	TimestampTz now = GetCurrentTimestamp();

	MonkRequirePreload();
	InitMaterializedSRF(fcinfo, 0);
	for (int i = 0; i < nprogress_slots; i++)
	{
		ProgressSlot *slot = &progress_slots[i];
		ProgressSlot copy;
		Datum		values[14];
		bool		nulls[14];
		int64		done;

		SpinLockAcquire(&slot->mutex);
		copy = *slot;
		SpinLockRelease(&slot->mutex);
		if (copy.pid == 0)
			continue;

		memset(nulls, 0, sizeof(nulls));
		done = copy.progress.events_sent + copy.progress.events_failed;
		values[0] = Int32GetDatum(copy.pid);
		values[1] = ObjectIdGetDatum(copy.dboid);
		values[2] = NameDatum(&copy, copy.cursor_name);
		values[3] = NameDatum(&copy, copy.source);
		values[4] = CStringGetTextDatum(copy.progress.state == MONK_PROGRESS_SENDING ?
										"sending" : "waiting for standbys");
		values[5] = TimestampTzGetDatum(copy.started_at);
		values[6] = Int64GetDatum(copy.progress.rows_read);
		values[7] = Int64GetDatum(done);
		values[8] = Int64GetDatum((int64) copy.rows_estimated);
		nulls[8] = copy.rows_estimated < 0;
		/* rows settled per second since sending started */
		if (copy.sending_since != 0 && now > copy.sending_since)
			values[9] = Float8GetDatum((double) done * USECS_PER_SEC / (double) (now - copy.sending_since));
		else
			nulls[9] = true;
		values[10] = Int64GetDatum(copy.progress.cursor_last_id);
		nulls[10] = !copy.progress.cursor_started;
		values[11] = Int64GetDatum(copy.progress.events_sent);
		values[12] = Int64GetDatum(copy.progress.events_failed);
		values[13] = Int32GetDatum(copy.progress.batches);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
