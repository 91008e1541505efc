-- What kind of run a row of "runs" records: `sync` for a sync's run (and its retries of
-- rejected records), `verify-repair` for a `lockstep verify --repair`. Older rows are runs.
-- The other backend's migration defines the same column; keep the two in step.
ALTER TABLE "runs" ADD COLUMN "kind" TEXT NOT NULL DEFAULT 'sync';
