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

#include "commands/extension.h"
#include "fmgr.h"
#include "miscadmin.h"

#include "ddl.h"
#include "settings.h"
#include "shmem.h"
#include "worker.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

/* Is the extension being created (or updated) monk, not one that calls it? */
static bool
IsCreatingMonk(void)
{
	char	   *name = get_extension_name(CurrentExtensionObject);

	return name != NULL && strcmp(name, "monk") == 0;
}

void
_PG_init(void)
{
	MonkSettingsInit();

	if (!process_shared_preload_libraries_in_progress)
	{
		/*
		 * Loaded by CREATE EXTENSION (or its update) in a server that did not
		 * preload it: say so now, not at the application's first event. A
		 * warning, not an error: pg_restore onto such a server must work.
		 */
		if (creating_extension && IsCreatingMonk())
		{
			ereport(WARNING,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("monk is not loaded by shared_preload_libraries: monk_send and monk_capture will fail, and no worker sends events"),
					 errhint("Add monk to shared_preload_libraries (a single line listing every library, e.g. 'pg_cron,monk') and restart the server.")));
			/* the other mistake of the setup, told at once too */
			MonkWarnIfNotExported();
		}
		return;
	}

	MonkShmemInit();
	MonkLauncherRegister();
	MonkDdlInit();
}
