-- Accounts: one row per credential that gets its own token.
-- An Official Account or Mini Program is (appid, agent = '').
-- A WeCom app is (corpid, agentid), or (corpid, module name) for modules without an agentid,
-- because each WeCom app has its own secret and its own token.
CREATE TABLE accounts (
    id          INTEGER PRIMARY KEY,
    appid       TEXT    NOT NULL CHECK (appid <> ''),
    agent       TEXT    NOT NULL DEFAULT '',
    api         TEXT    NOT NULL DEFAULT 'token' CHECK (api IN ('token', 'stable', 'work')),
    secret      TEXT    NOT NULL CHECK (secret <> ''),
    enabled     INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    UNIQUE (appid, agent)
);

-- Insert-only history: one row per successful fetch. Never updated, never overwritten.
-- kind is 'access_token' for tokens; tickets derived from a token use their own kind.
-- Times are Unix seconds, UTC. fetched_at is when the request was sent.
CREATE TABLE tokens (
    id          INTEGER PRIMARY KEY,
    account_id  INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    kind        TEXT    NOT NULL DEFAULT 'access_token',
    token       TEXT    NOT NULL,
    expires_in  INTEGER NOT NULL,
    fetched_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
-- "The newest token of X" is one descent of this index, however long the history grows.
CREATE INDEX tokens_newest ON tokens (account_id, kind, id DESC);

-- Every fetch attempt, successful or not. `status` reads the newest per account.
-- outcome: ok | unchanged | errcode | http | transport | invalid | skipped
CREATE TABLE attempts (
    id           INTEGER PRIMARY KEY,
    account_id   INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    kind         TEXT    NOT NULL DEFAULT 'access_token',
    started_at   INTEGER NOT NULL,
    duration_ms  INTEGER NOT NULL,
    tries        INTEGER NOT NULL,
    outcome      TEXT    NOT NULL,
    errcode      INTEGER,
    errmsg       TEXT,
    http_status  INTEGER,
    detail       TEXT
);
CREATE INDEX attempts_newest ON attempts (account_id, id DESC);
CREATE INDEX attempts_age ON attempts (started_at);
