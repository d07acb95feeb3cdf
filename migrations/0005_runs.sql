-- One row per `refresh` run (not dry runs), for monitoring: the metrics textfile and
-- `status --check` read the last run and the last successful one from here, so that the
-- time of the last success survives a failed run and a restart.
-- IF NOT EXISTS: a database rolled back to an older schema version may keep the table.
-- scope: 'all' (every enabled account), 'ahead' (--if-expiring-within), 'named' (--appid).
CREATE TABLE IF NOT EXISTS runs (
    id           INTEGER PRIMARY KEY,
    started_at   INTEGER NOT NULL,
    finished_at  INTEGER NOT NULL,
    duration_ms  INTEGER NOT NULL,
    scope        TEXT    NOT NULL,
    accounts     INTEGER NOT NULL,
    refreshed    INTEGER NOT NULL,
    fresh        INTEGER NOT NULL,
    busy         INTEGER NOT NULL,
    held         INTEGER NOT NULL,
    failed       INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_success ON runs (failed, held, scope, id DESC);
