-- What people did through the daemon's status page (or any other front end that records it):
-- approving or discarding held deletes, retrying rejected records, resolving conflicts. One
-- row per action, never updated. The PostgreSQL migration defines the same table; keep the
-- two in step.
CREATE TABLE "actions" (
    "id"     INTEGER PRIMARY KEY AUTOINCREMENT,
    -- RFC 3339 UTC, the state store's clock.
    "at"     TEXT    NOT NULL,
    -- Who: the authenticated user, or `local` on a loopback page without authentication.
    "actor"  TEXT    NOT NULL,
    -- `deletes-approve`, `deletes-discard`, `rejects-retry`, `conflict-resolve`.
    "action" TEXT    NOT NULL,
    "sync"   TEXT    NOT NULL,
    -- What the action did, in words (counts, ids); never a record's values.
    "detail" TEXT    NOT NULL
);
CREATE INDEX "actions_by_sync" ON "actions" ("sync", "id");
