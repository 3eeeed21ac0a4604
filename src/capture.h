/*
 * capture.h
 *		monk_capture, the trigger function that turns rows into events.
 */
#ifndef MONK_CAPTURE_H
#define MONK_CAPTURE_H

#include "nodes/parsenodes.h"

extern void MonkCaptureCheckCreate(CreateTrigStmt *stmt);

#endif
