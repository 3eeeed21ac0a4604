/*
 * capture.h
 *		The check of CREATE TRIGGER ... EXECUTE FUNCTION monk_capture(...),
 *		for the ProcessUtility hook (ddl.c); defined in capture_map.c.
 */
#ifndef MONK_CAPTURE_H
#define MONK_CAPTURE_H

#include "nodes/parsenodes.h"

extern void MonkCaptureCheckCreate(CreateTrigStmt *stmt);
extern void MonkCaptureCheckAttach(Oid relid);

#endif
