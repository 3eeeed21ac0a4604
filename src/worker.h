/*
 * worker.h
 *		The background worker that drains a database's outbox.
 */
#ifndef MONK_WORKER_H
#define MONK_WORKER_H

extern void MonkLauncherRegister(void);
extern PGDLLEXPORT void MonkLauncherMain(Datum arg);
extern PGDLLEXPORT void MonkWorkerMain(Datum arg);

#endif
