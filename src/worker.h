/*
 * worker.h
 *		The background worker that drains a database's outbox.
 */
#ifndef MONK_WORKER_H
#define MONK_WORKER_H

extern void MonkWorkersRegister(void);
extern PGDLLEXPORT void MonkWorkerMain(Datum arg);

#endif
