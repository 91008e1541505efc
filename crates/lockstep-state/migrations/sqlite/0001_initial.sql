-- The Lockstep state store, SQLite flavour. The PostgreSQL migration defines the same tables,
-- columns and indexes; keep the two in step. Times are RFC 3339 UTC text with microseconds
-- (fixed width, so text order is time order).

-- One row per run of a sync. Metrics are updated at every batch commit (progress) and at the end.
CREATE TABLE "runs" (
    "id"            INTEGER PRIMARY KEY AUTOINCREMENT,
    "sync"          TEXT    NOT NULL,
    "status"        TEXT    NOT NULL,
    "started_at"    TEXT    NOT NULL,
    "finished_at"   TEXT,
    "duration_ms"   INTEGER,
    "read"          INTEGER NOT NULL DEFAULT 0,
    "added"         INTEGER NOT NULL DEFAULT 0,
    "updated"       INTEGER NOT NULL DEFAULT 0,
    "unchanged"     INTEGER NOT NULL DEFAULT 0,
    "deleted"       INTEGER NOT NULL DEFAULT 0,
    "conflicts"     INTEGER NOT NULL DEFAULT 0,
    "rejected"      INTEGER NOT NULL DEFAULT 0,
    "error_kind"    TEXT,
    "error"         TEXT,
    "cursor_before" TEXT,
    "cursor_after"  TEXT,
    "exit_detail"   TEXT,
    -- The lease token the run was started or committed under, if any.
    "lease_token"   INTEGER,
    "progress_at"   TEXT
);
CREATE INDEX "runs_by_sync" ON "runs" ("sync", "id");
CREATE INDEX "runs_by_status" ON "runs" ("status", "sync");

-- The source checkpoint of a sync (an opaque JSON document).
CREATE TABLE "checkpoints" (
    "sync"       TEXT    NOT NULL PRIMARY KEY,
    "value"      TEXT    NOT NULL,
    "run"        INTEGER,
    "updated_at" TEXT    NOT NULL
);

-- The record ledger: one row per matched record per sync.
CREATE TABLE "ledger" (
    "sync"           TEXT NOT NULL,
    "key"            TEXT NOT NULL,
    "dest_key"       TEXT,
    -- 16 bytes, big-endian.
    "fingerprint"    BLOB NOT NULL,
    "source_version" TEXT,
    "synced_at"      TEXT NOT NULL,
    PRIMARY KEY ("sync", "key")
) WITHOUT ROWID;

-- Records that could not be mapped or that the destination refused.
CREATE TABLE "rejected" (
    "id"         INTEGER PRIMARY KEY AUTOINCREMENT,
    "sync"       TEXT    NOT NULL,
    "run"        INTEGER NOT NULL REFERENCES "runs" ("id"),
    "key"        TEXT,
    "field"      TEXT,
    "reason"     TEXT    NOT NULL,
    -- The raw value as JSON text.
    "raw"        TEXT    NOT NULL,
    "created_at" TEXT    NOT NULL,
    "retried"    TEXT
);
CREATE INDEX "rejected_by_sync" ON "rejected" ("sync", "id");
CREATE INDEX "rejected_by_run" ON "rejected" ("run", "id");

-- At most one lease per sync. Rows are never deleted, so the fencing token only grows.
CREATE TABLE "leases" (
    "sync"       TEXT    NOT NULL PRIMARY KEY,
    "token"      INTEGER NOT NULL,
    "host"       TEXT    NOT NULL,
    "pid"        INTEGER NOT NULL,
    "since"      TEXT    NOT NULL,
    "expires_at" TEXT    NOT NULL
);
