-- Deletes that runs found (tombstones and key-set reconciliation) and that wait to be applied
-- to the destination. The SQLite migration defines the same table and explains the statuses;
-- keep the two in step.
CREATE TABLE "pending_deletes" (
    "sync"       TEXT COLLATE "C" NOT NULL,
    -- The record key, as in the ledger (canonical JSON of the key values).
    "key"        TEXT COLLATE "C" NOT NULL,
    -- `tombstone` or `reconcile`: what found the delete.
    "origin"     TEXT   NOT NULL,
    "status"     TEXT   NOT NULL,
    -- The run that found it.
    "run"        BIGINT NOT NULL,
    "created_at" TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY ("sync", "key")
);
CREATE INDEX "pending_deletes_by_status" ON "pending_deletes" ("sync", "status", "key");
