/*
 * keys.h
 *		The prefix of default idempotency keys (keys.c).
 */
#ifndef MONK_KEYS_H
#define MONK_KEYS_H

extern const char *MonkKeyPrefix(bool legacy);
extern bool MonkCaptureLegacy(const char *source);

#endif
