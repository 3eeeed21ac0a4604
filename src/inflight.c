/*
 * inflight.c
 *		Rows of an export's source that its snapshot does not see yet
 *		(inflight.h).
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "catalog/pg_am.h"
#include "catalog/pg_class.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_type.h"
#include "nodes/parsenodes.h"
#include "parser/parsetree.h"
#include "rewrite/rewriteHandler.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"

#include "inflight.h"

/* One table to look at (the source, or a partition of it). */
typedef struct Leaf
{
	Oid			relid;
	Oid			index;			/* btree, id its first column */
	AttrNumber	attnum;			/* of id */
	Oid			type;			/* of id: int2, int4 or int8 */
	Oid			collation;
	RegProcedure gt;			/* id > int8, id <= int8, id = int8 */
	RegProcedure le;
	RegProcedure eq;
} Leaf;

struct MonkInFlight
{
	Leaf	   *leaves;
	int			nleaves;
};

/* The comparison of the index's opfamily between id's type and int8. */
static RegProcedure
Proc(Relation index, int strategy)
{
	Oid			op = get_opfamily_member(index->rd_opfamily[0], index->rd_opcintype[0], INT8OID, strategy);

	return OidIsValid(op) ? get_opcode(op) : InvalidOid;
}

/* A plain btree index of rel whose first column is attnum, if any. */
static bool
FindIndex(Relation rel, AttrNumber attnum, Leaf *leaf)
{
	List	   *indexes = RelationGetIndexList(rel);
	ListCell   *lc;
	bool		found = false;

	foreach(lc, indexes)
	{
		Relation	index = index_open(lfirst_oid(lc), AccessShareLock);
		Form_pg_index form = index->rd_index;

		if (!found && index->rd_rel->relam == BTREE_AM_OID && form->indisvalid && form->indisready &&
			form->indkey.values[0] == attnum && RelationGetIndexPredicate(index) == NIL)
		{
			leaf->index = RelationGetRelid(index);
			leaf->collation = index->rd_indcollation[0];
			leaf->gt = Proc(index, BTGreaterStrategyNumber);
			leaf->le = Proc(index, BTLessEqualStrategyNumber);
			leaf->eq = Proc(index, BTEqualStrategyNumber);
			found = OidIsValid(leaf->gt) && OidIsValid(leaf->le) && OidIsValid(leaf->eq);
		}
		index_close(index, AccessShareLock);
	}
	list_free(indexes);
	return found;
}

/*
 * The table a view reads its id from, when it is a plain view over one
 * table whose id is a column of it (a view that renames columns, filters
 * rows, computes properties: the README's billing_export); InvalidOid for
 * any other view.  *id_name is that column's name in the table.
 */
static Oid
ViewBase(Oid view, const char **id_name)
{
	Relation	rel = table_open(view, AccessShareLock);
	Query	   *q = get_view_query(rel);
	Oid			base = InvalidOid;
	ListCell   *lc;

	if (q->setOperations == NULL && q->groupClause == NIL && !q->hasAggs && !q->hasWindowFuncs &&
		q->distinctClause == NIL && q->limitCount == NULL && q->limitOffset == NULL &&
		q->havingQual == NULL && q->cteList == NIL && !q->hasTargetSRFs &&
		list_length(q->jointree->fromlist) == 1 && IsA(linitial(q->jointree->fromlist), RangeTblRef))
	{
		int			rtindex = ((RangeTblRef *) linitial(q->jointree->fromlist))->rtindex;
		RangeTblEntry *rte = rt_fetch(rtindex, q->rtable);

		if (rte->rtekind == RTE_RELATION)
		{
			foreach(lc, q->targetList)
			{
				TargetEntry *te = lfirst(lc);

				if (te->resjunk || te->resname == NULL || strcmp(te->resname, "id") != 0)
					continue;
				if (IsA(te->expr, Var) && ((Var *) te->expr)->varno == rtindex &&
					((Var *) te->expr)->varlevelsup == 0 && ((Var *) te->expr)->varattno > 0)
				{
					base = rte->relid;
					*id_name = get_attname(base, ((Var *) te->expr)->varattno, false);
				}
			}
		}
	}
	table_close(rel, AccessShareLock);
	return base;
}

/*
 * What to look at for the source: the table, or each partition of a
 * partitioned table, with an index on id; NULL for a view, or when a table
 * has no such index.
 */
MonkInFlight *
MonkInFlightCreate(Oid source)
{
	char		relkind = get_rel_relkind(source);
	List	   *rels;
	ListCell   *lc;
	MonkInFlight *inf;
	const char *id_name = "id";

	/*
	 * Row-level security hides rows from the caller: their ids must neither
	 * be looked at nor kept.
	 */
	if (check_enable_rls(source, InvalidOid, true) == RLS_ENABLED)
		return NULL;
	if (relkind == RELKIND_VIEW)
	{
		source = ViewBase(source, &id_name);
		if (!OidIsValid(source) || check_enable_rls(source, InvalidOid, true) == RLS_ENABLED)
			return NULL;
		relkind = get_rel_relkind(source);
	}
	/* a table's inheritance children, and a partitioned table's partitions */
	if (relkind == RELKIND_RELATION || relkind == RELKIND_PARTITIONED_TABLE)
		rels = find_all_inheritors(source, AccessShareLock, NULL);
	else
		return NULL;
	inf = palloc0(sizeof(MonkInFlight));
	inf->leaves = palloc0(sizeof(Leaf) * list_length(rels));
	foreach(lc, rels)
	{
		Oid			relid = lfirst_oid(lc);
		Relation	rel;
		Leaf	   *leaf = &inf->leaves[inf->nleaves];

		if (get_rel_relkind(relid) != RELKIND_RELATION)
			continue;
		rel = table_open(relid, AccessShareLock);
		leaf->relid = relid;
		leaf->attnum = get_attnum(relid, id_name);
		leaf->type = leaf->attnum > 0 ? get_atttype(relid, leaf->attnum) : InvalidOid;
		if (!(leaf->type == INT2OID || leaf->type == INT4OID || leaf->type == INT8OID) ||
			!FindIndex(rel, leaf->attnum, leaf))
		{
			/* a part without an index on id: no rows of the source are found */
			table_close(rel, AccessShareLock);
			return NULL;
		}
		table_close(rel, AccessShareLock);
		inf->nleaves++;
	}
	return inf;
}

static int64
IdOf(const Leaf *leaf, Datum d)
{
	switch (leaf->type)
	{
		case INT2OID:
			return DatumGetInt16(d);
		case INT4OID:
			return DatumGetInt32(d);
		default:
			return DatumGetInt64(d);
	}
}

/* qsort/bsearch order of int64 ids (the export sorts its ids with it too) */
int
MonkCompareIds(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return x < y ? -1 : x > y;
}

/* Does the export's snapshot see a row of this leaf with this id? */
static bool
VisibleNow(Relation rel, const Leaf *leaf, int64 id)
{
	ScanKeyData key;
	SysScanDesc scan;
	bool		found;

	ScanKeyEntryInitialize(&key, 0, leaf->attnum, BTEqualStrategyNumber, INT8OID,
						   leaf->collation, leaf->eq, Int64GetDatum(id));
	scan = systable_beginscan(rel, leaf->index, true, GetActiveSnapshot(), 1, &key);
	found = systable_getnext(scan) != NULL;
	systable_endscan(scan);
	return found;
}

/*
 * Scan one leaf with a dirty snapshot under the given keys; each id found
 * that is not in seen (sorted) goes to *ids.
 */
static void
ScanLeaf(const Leaf *leaf, ScanKey keys, int nkeys, const int64 *seen, int nseen, bool unseen_only,
		 int64 **ids, int *nids, int *cap)
{
	MemoryContext outcxt = CurrentMemoryContext;

	/* what a scan allocates goes with it: an export scans once per slice */
	MemoryContext scancxt = AllocSetContextCreate(outcxt, "monk rows not seen", ALLOCSET_SMALL_SIZES);
	MemoryContext old = MemoryContextSwitchTo(scancxt);
	Relation	rel = table_open(leaf->relid, AccessShareLock);
	SnapshotData dirty;
	SysScanDesc scan;
	HeapTuple	tuple;

	InitDirtySnapshot(dirty);
	scan = systable_beginscan(rel, leaf->index, true, &dirty, nkeys, keys);
	while ((tuple = systable_getnext(scan)) != NULL)
	{
		bool		isnull;
		Datum		d = heap_getattr(tuple, leaf->attnum, RelationGetDescr(rel), &isnull);
		int64		id;

		if (isnull)
			continue;
		id = IdOf(leaf, d);
		if (nseen > 0 && bsearch(&id, seen, nseen, sizeof(int64), MonkCompareIds) != NULL)
			continue;
		/* a row the snapshot sees was left out by the view: not pending */
		if (unseen_only && VisibleNow(rel, leaf, id))
			continue;
		if (*nids == *cap)
		{
			*cap = Max(*cap * 2, 64);
			*ids = *ids ? repalloc(*ids, sizeof(int64) * *cap) : MemoryContextAlloc(outcxt, sizeof(int64) * *cap);
		}
		(*ids)[(*nids)++] = id;
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	MemoryContextSwitchTo(old);
	MemoryContextDelete(scancxt);
}

/*
 * Append to *ids (capacity *cap) the ids in (lo, hi] (no lower bound unless
 * has_lo) of rows that exist -- committed or not -- but are not in seen (the
 * ids the export read, sorted): rows its snapshot does not see.
 */
void
MonkInFlightFind(MonkInFlight *inf, bool has_lo, int64 lo, int64 hi,
				 const int64 *seen, int nseen, int64 **ids, int *nids, int *cap)
{
	for (int i = 0; i < inf->nleaves; i++)
	{
		const Leaf *leaf = &inf->leaves[i];
		ScanKeyData keys[2];
		int			nkeys = 0;

		if (has_lo)
			ScanKeyEntryInitialize(&keys[nkeys++], 0, leaf->attnum, BTGreaterStrategyNumber, INT8OID,
								   leaf->collation, leaf->gt, Int64GetDatum(lo));
		ScanKeyEntryInitialize(&keys[nkeys++], 0, leaf->attnum, BTLessEqualStrategyNumber, INT8OID,
							   leaf->collation, leaf->le, Int64GetDatum(hi));
		ScanLeaf(leaf, keys, nkeys, seen, nseen, true, ids, nids, cap);
	}
}

/*
 * Does a row with this id exist (committed or not), and, with unseen_only,
 * is it one the export's snapshot does not see?
 */
bool
MonkInFlightExists(MonkInFlight *inf, int64 id, bool unseen_only)
{
	int64	   *ids = NULL;
	int			nids = 0;
	int			cap = 0;

	for (int i = 0; i < inf->nleaves && nids == 0; i++)
	{
		const Leaf *leaf = &inf->leaves[i];
		ScanKeyData key;

		ScanKeyEntryInitialize(&key, 0, leaf->attnum, BTEqualStrategyNumber, INT8OID,
							   leaf->collation, leaf->eq, Int64GetDatum(id));
		ScanLeaf(leaf, &key, 1, NULL, 0, unseen_only, &ids, &nids, &cap);
	}
	if (ids)
		pfree(ids);
	return nids > 0;
}
