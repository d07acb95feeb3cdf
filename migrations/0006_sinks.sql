-- Sinks: where refresh publishes every valid token after it is committed, so that
-- applications read it where their SDK already looks (a Redis key in the SDK's format) or a
-- hook delivers it. kind 'redis': target is the URL without its password, which lives in
-- password (a secret, stored like the AppSecrets); format/prefix/key_template pick the key
-- and value layout. kind 'exec': target is the shell command.
-- accounts is a JSON array of selectors (APPID or CORPID/AGENTID); empty means every account.
-- The last_* columns are the outcome of the newest publish to this sink, for status.
CREATE TABLE sinks (
    id              INTEGER PRIMARY KEY,
    name            TEXT    NOT NULL UNIQUE CHECK (name <> ''),
    kind            TEXT    NOT NULL CHECK (kind IN ('redis', 'exec')),
    target          TEXT    NOT NULL,
    password        TEXT,
    format          TEXT,
    prefix          TEXT,
    key_template    TEXT,
    accounts        TEXT    NOT NULL DEFAULT '[]',
    timeout         INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    last_at         INTEGER,
    last_ok         INTEGER,
    last_published  INTEGER,
    last_failed     INTEGER,
    last_error      TEXT
);

-- Which token row an exec sink last received per account and kind: a hook runs once per new
-- token, and again at the next run when it failed.
CREATE TABLE sink_published (
    sink_id     INTEGER NOT NULL REFERENCES sinks (id) ON DELETE CASCADE,
    account_id  INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    kind        TEXT    NOT NULL,
    token_id    INTEGER NOT NULL,
    PRIMARY KEY (sink_id, account_id, kind)
);
