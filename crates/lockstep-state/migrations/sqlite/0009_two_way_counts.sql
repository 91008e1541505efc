-- How many records each two-way sync's base ledger holds, kept up to date by every two-way
-- commit in the same transaction, so that a run learns it without counting a table that may
-- hold millions of rows (a WITHOUT ROWID table is counted by reading all of it). The
-- PostgreSQL migration defines the same table; keep the two in step.
CREATE TABLE "two_way_counts" (
    "sync"    TEXT NOT NULL PRIMARY KEY,
    "records" INTEGER NOT NULL
);

INSERT INTO "two_way_counts" ("sync", "records")
SELECT "sync", COUNT(*) FROM "two_way_ledger" GROUP BY "sync";
