# monk: PGXS build of the PostgreSQL extension that exports usage events to the Monk Events API.
#
#   make && make install                 build and install (as root)
#   make installcheck                    pg_regress and isolation specs (own temporary instances,
#                                        library preloaded) + TAP
#   make installcheck REGRESS= ISOLATION= ...  only the TAP tests, or PROVE_TESTS=test/t/010_x.pl for one
#
# Run installcheck as an unprivileged user: PostgreSQL refuses to run as root (see test/run-tests.sh).

EXTENSION = monk
# the one definition of the version: monk.control's default_version names the
# install script and goes into the User-Agent
EXTVERSION = $(shell sed -n "s/^default_version = '\(.*\)'/\1/p" $(EXTENSION).control)
MODULE_big = monk
OBJS = src/monk.o src/settings.o src/event.o src/outbox.o src/outbox_consumer.o src/store.o src/shmem.o src/send.o src/http.o src/delivery.o src/sender.o src/worker.o src/log.o src/window_keys.o src/source.o src/inflight.o src/export.o src/query.o src/ddl.o src/capture.o src/capture_map.o src/xact.o src/keys.o src/standby.o src/launcher.o src/progress.o
# every install and upgrade script (0.1's too: the upgrade test installs it)
DATA = $(sort sql/$(EXTENSION)--$(EXTVERSION).sql $(wildcard sql/$(EXTENSION)--*.sql))
PGFILEDESC = "monk - export usage events to the Monk Events API"

PG_CPPFLAGS += -DMONK_VERSION='"$(EXTVERSION)"'
SHLIB_LINK += -lcurl -luuid
PG_CFLAGS += -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers -Wno-sign-compare

# make SANITIZE=1: UndefinedBehaviorSanitizer (any report fatal) and assertions
# (Assert) enabled in monk's code, and a window's keys kept in memory few (so
# that the suite's windows take the path of a large backlog); test/sanitize.sh
# runs the whole suite against such a build
ifdef SANITIZE
PG_CFLAGS += -fsanitize=undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -DUSE_ASSERT_CHECKING -DMONK_WINDOW_KEYS=8
SHLIB_LINK += -fsanitize=undefined
endif

REGRESS = init settings validation rendering keys privileges export property capture robustness ddl
# UTF-8 whatever the environment's locale (a new machine may have none)
ENCODING = UTF8
NO_LOCALE = 1
REGRESS_OPTS = --temp-instance=./tmp_regress --temp-config=$(srcdir)/test/regress.conf

# races, with isolationtester: specs in test/isolation/specs, outputs in test/isolation/expected
ISOLATION = export_cursor export_late_commit outbox_visibility segment_lock version_order dead_letter_retry
ISOLATION_OPTS = --inputdir=$(srcdir)/test/isolation --temp-instance=./tmp_isolation --temp-config=$(srcdir)/test/regress.conf

TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl

EXTRA_CLEAN = tmp_regress tmp_isolation output_iso tmp_check results regression.diffs regression.out

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# after PGXS, which resets it
# two test files at a time: most of a TAP test waits (on the worker, the API, a restart)
PROVE_JOBS ?= 2
PROVE_FLAGS += -I $(srcdir)/test -j$(PROVE_JOBS)
