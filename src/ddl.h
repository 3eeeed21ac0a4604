/*
 * ddl.h
 *		monk's guard on the DDL that concerns it.
 */
#ifndef MONK_DDL_H
#define MONK_DDL_H

extern void MonkDdlInit(void);
extern void MonkWarnIfNotExported(void);

#endif
