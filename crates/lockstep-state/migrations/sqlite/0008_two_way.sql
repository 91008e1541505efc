-- Two-way syncs: the base ledger and the conflict queue. The PostgreSQL migration defines the
-- same tables, columns and indexes; keep the two in step.

-- The base ledger: per record of a two-way sync, the values both sides last agreed on (a JSON
-- object in the sync's mapped space, as text) and each side's fingerprint as Lockstep last
-- read or wrote it.
CREATE TABLE "two_way_ledger" (
    "sync"          TEXT NOT NULL,
    -- The record key, as in the ledger (canonical JSON of the key values).
    "key"           TEXT NOT NULL,
    "base"          TEXT NOT NULL,
    -- 16 bytes, big-endian, as the ledger's fingerprint.
    "fingerprint_a" BLOB NOT NULL,
    "fingerprint_b" BLOB NOT NULL,
    "synced_at"     TEXT NOT NULL,
    PRIMARY KEY ("sync", "key")
) WITHOUT ROWID;

-- Conflicts: records both sides changed differently since they last agreed. `status` is
-- `open` while the conflict waits for a person, `resolved` once a person decided (the next run
-- writes the decision), `applied` once it did, and `auto` when the sync's policy decided
-- during the run that found it. At most one conflict per sync and key is `open`: a run that
-- finds the record in conflict again updates that row.
CREATE TABLE "conflicts" (
    "id"                 INTEGER PRIMARY KEY AUTOINCREMENT,
    "sync"               TEXT    NOT NULL,
    -- The run that found it (for an open conflict, the last run that found it).
    "run"                INTEGER NOT NULL REFERENCES "runs" ("id"),
    "key"                TEXT    NOT NULL,
    -- JSON objects as text; `base` is NULL for a record new on both sides, `a` or `b` for a
    -- record that side deleted, `resolution` for a delete and while undecided.
    "base"               TEXT,
    "a"                  TEXT,
    "b"                  TEXT,
    -- A JSON array of the field names that differ between a and b.
    "fields"             TEXT    NOT NULL,
    "policy"             TEXT    NOT NULL,
    "decision"           TEXT    NOT NULL,
    "resolution"         TEXT,
    -- 1 when the resolution deletes the record on both sides.
    "resolution_deletes" INTEGER NOT NULL DEFAULT 0,
    "status"             TEXT    NOT NULL,
    "created_at"         TEXT    NOT NULL,
    "resolved_by"        TEXT,
    "resolved_at"        TEXT
);
CREATE INDEX "conflicts_by_status" ON "conflicts" ("sync", "status", "id");
-- A sync's conflicts of a key: where a commit looks for the conflict it finds again.
CREATE INDEX "conflicts_by_key" ON "conflicts" ("sync", "key", "id");
-- The unsettled (open and resolved) conflicts of a sync, by key: what a run reads before it
-- starts, and where a commit looks for the open conflict of a key.
CREATE INDEX "conflicts_unsettled" ON "conflicts" ("sync", "key", "id")
    WHERE "status" IN ('open', 'resolved');
