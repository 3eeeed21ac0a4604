/*
 * monk.c
 *		Entry point of the monk extension: exports usage events queued in the
 *		database to the Monk Events API.
 *
 * _PG_init only calls each module's initialisation.  The settings are defined
 * in every process that loads the library; shared memory and the workers
 * exist only when monk is in shared_preload_libraries.
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"

#include "ddl.h"
#include "settings.h"
#include "shmem.h"
#include "worker.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	MonkSettingsInit();

	if (!process_shared_preload_libraries_in_progress)
		return;

	MonkShmemInit();
	MonkLauncherRegister();
	MonkDdlInit();
}
