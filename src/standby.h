/*
 * standby.h
 *		monk.standby_names: the standbys that flush a commit before its events
 *		are sent (standby.c).
 */
#ifndef MONK_STANDBY_H
#define MONK_STANDBY_H

#include "access/xlogdefs.h"
#include "utils/guc.h"

extern char *monk_standby_names;

extern bool MonkStandbyNamesCheck(char **newval, void **extra, GucSource source);
extern void MonkStandbyNamesAssign(const char *newval, void *extra);
extern bool MonkStandbysNamed(void);
extern bool MonkStandbysFlushed(XLogRecPtr lsn, char **why);
extern void MonkAwaitFlushed(const char *who);

#endif
