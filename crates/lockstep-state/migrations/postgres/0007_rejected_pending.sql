-- The pending rejected records of a sync, by key. Every batch commit resolves the pending
-- rejects of the keys it writes; this index lets it find out cheaply that there are none (the
-- usual case) and find those there are without reading the sync's resolved history.
-- The other backend's migration defines the same index; keep the two in step.
CREATE INDEX "rejected_pending" ON "rejected" ("sync", "key") WHERE "retried" IS NULL;
