/*
 * settings.h
 *		The monk.* configuration parameters (GUCs).
 */
#ifndef MONK_SETTINGS_H
#define MONK_SETTINGS_H

#include "nodes/pg_list.h"

#define MONK_MAX_BATCH_SIZE 10000
#define MONK_MAX_DATABASES 64

extern char *monk_databases;
extern int	monk_batch_size;
extern int	monk_flush_interval;
extern int	monk_max_parallel_requests;
extern int	monk_request_timeout;
extern int	monk_max_retries;
extern int	monk_retry_base_delay;
extern int	monk_retry_max_delay;
extern int	monk_circuit_failure_threshold;
extern int	monk_circuit_open_time;
extern int	monk_shutdown_timeout;
extern char *monk_idempotency_prefix;
extern int	monk_max_outbox_events;
extern int	monk_retention;
extern int	monk_max_event_size;
extern int	monk_max_request_size;
extern char *monk_ca_file;
extern char *monk_test_wait_points;

extern void MonkSettingsInit(void);
extern const char *MonkApiKey(void);
extern char *MonkBaseUrl(void);
extern uint64 MonkDestinationHash(void);
extern int	MonkMaxEventBytes(void);
extern int	MonkMaxRequestBytes(void);
extern const List *MonkDatabaseList(void);
extern bool MonkDatabaseListed(const char *name);

#endif
