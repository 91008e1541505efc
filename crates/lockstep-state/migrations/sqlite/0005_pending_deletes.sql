-- Deletes that runs found (tombstones and key-set reconciliation) and that wait to be applied
-- to the destination. The PostgreSQL migration defines the same table; keep the two in step.
--
-- `status` is `pending` from the moment a run finds the delete until the end of that run,
-- when every pending and held delete is checked against the sync's max_delete_fraction:
-- within it they become `approved`, past it `pending` ones become `held` and wait for a
-- person (`lockstep deletes approve`). `approved` deletes are applied at the end of a run,
-- page by page, and their rows removed once the destination has flushed. A source record seen
-- again (not deleted) removes its row, whatever its status.
CREATE TABLE "pending_deletes" (
    "sync"       TEXT    NOT NULL,
    -- The record key, as in the ledger (canonical JSON of the key values).
    "key"        TEXT    NOT NULL,
    -- `tombstone` or `reconcile`: what found the delete.
    "origin"     TEXT    NOT NULL,
    "status"     TEXT    NOT NULL,
    -- The run that found it.
    "run"        INTEGER NOT NULL,
    "created_at" TEXT    NOT NULL,
    PRIMARY KEY ("sync", "key")
) WITHOUT ROWID;
CREATE INDEX "pending_deletes_by_status" ON "pending_deletes" ("sync", "status", "key");
