-- One row per `refresh` run, for monitoring, as SQLite's migration 0005: the metrics
-- textfile and `status --check` read the last run and the last successful one from here.
-- With several refreshers, every host's runs land here.
CREATE TABLE runs (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at   bigint NOT NULL,
    finished_at  bigint NOT NULL,
    duration_ms  bigint NOT NULL,
    scope        text   NOT NULL,
    accounts     bigint NOT NULL,
    refreshed    bigint NOT NULL,
    fresh        bigint NOT NULL,
    busy         bigint NOT NULL,
    held         bigint NOT NULL,
    failed       bigint NOT NULL
);
CREATE INDEX runs_success ON runs (failed, held, scope, id DESC);
