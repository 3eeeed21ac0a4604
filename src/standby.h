/*
 * standby.h
 *		monk.standby_names: the standbys that flush a commit before its events
 *		are sent (standby.c).
 */
#ifndef MONK_STANDBY_H
#define MONK_STANDBY_H

#include "access/xlogdefs.h"
#include "datatype/timestamp.h"
#include "utils/guc.h"

extern char *monk_standby_names;

/*
 * The worker's gate: the next window opens once the standbys have flushed
 * lsn (InvalidXLogRecPtr: nothing to wait for).  Zeroed: open.
 */
typedef struct MonkGate
{
	XLogRecPtr	lsn;
	TimestampTz check_at;		/* when to look at the standbys again */
	TimestampTz since;			/* when the wait began */
	bool		logged;			/* a long wait was logged */
} MonkGate;

extern bool MonkStandbyNamesCheck(char **newval, void **extra, GucSource source);
extern void MonkStandbyNamesAssign(const char *newval, void *extra);
extern bool MonkStandbysNamed(void);
extern bool MonkStandbysFlushed(XLogRecPtr lsn, char **why);
extern XLogRecPtr MonkFlushSeenCommits(void);
extern void MonkAwaitFlushed(const char *who);
extern void MonkGateAt(MonkGate *gate, XLogRecPtr lsn);
extern bool MonkGatePass(MonkGate *gate);
extern long MonkGateWaitMs(const MonkGate *gate);

#endif
