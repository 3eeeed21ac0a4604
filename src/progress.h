/*
 * progress.h
 *		The progress of the monk_batch_export calls running in the server,
 *		behind the view monk.export_progress.
 */
#ifndef MONK_PROGRESS_H
#define MONK_PROGRESS_H

#include "datatype/timestamp.h"

/* how often a running export sends its caller a NOTICE of its progress */
#define MONK_PROGRESS_NOTICE_MS 10000

typedef enum MonkProgressState
{
	MONK_PROGRESS_WAITING = 0,	/* for its snapshot's commits to be durable */
	MONK_PROGRESS_SENDING
} MonkProgressState;

/* What an export has done so far (the reader's copy, or the writer's). */
typedef struct MonkProgress
{
	int64		rows_read;
	int64		events_sent;
	int64		events_failed;
	int			batches;
	bool		cursor_started; /* cursor_last_id is set */
	int64		cursor_last_id;
	int			state;			/* MonkProgressState */
} MonkProgress;

extern Size MonkProgressShmemSize(void);
extern void MonkProgressShmemAttach(void);
extern void MonkProgressBegin(const char *cursor_name, const char *source, double rows_estimated);
extern void MonkProgressUpdate(const MonkProgress *progress);
extern void MonkProgressEnd(void);

#endif
