-- PostgreSQL schema, version 1: the SQLite schema after its migration 0003, in
-- PostgreSQL's types, with the secrets in a table of their own. Applied by wxtoken in one
-- transaction under an advisory lock (see store_pg.rs), together with its row in
-- schema_migrations. Times are Unix seconds (bigint), as in SQLite, and on PostgreSQL they
-- come from the database server's clock, never from a host's.

-- An Official Account or Mini Program is (appid, agent = ''); a WeCom app is (corpid,
-- agentid or module name). No secret here: a reader role may read this table.
CREATE TABLE accounts (
    id          bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    appid       text    NOT NULL CHECK (appid <> ''),
    agent       text    NOT NULL DEFAULT '',
    api         text    NOT NULL DEFAULT 'token' CHECK (api IN ('token', 'stable', 'work')),
    enabled     boolean NOT NULL DEFAULT true,
    created_at  bigint  NOT NULL,
    updated_at  bigint  NOT NULL,
    -- Refresh skips the account until then (the largest bigint: until its configuration
    -- changes), with the reason shown by status.
    held_until  bigint,
    held_reason text,
    -- JS-SDK tickets fetched with each new token: a comma-separated list of kinds.
    tickets     text    NOT NULL DEFAULT '',
    UNIQUE (appid, agent)
);

-- The secrets, apart, so that granting a reader the accounts table never shows one.
-- wxtoken's reader grant never names this table.
CREATE TABLE account_secrets (
    account_id  bigint  PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    secret      text    NOT NULL CHECK (secret <> '')
);

-- Insert-only history: one row per successful fetch, never updated.
CREATE TABLE tokens (
    id          bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id  bigint  NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    kind        text    NOT NULL DEFAULT 'access_token',
    token       text    NOT NULL,
    expires_in  bigint  NOT NULL,
    fetched_at  bigint  NOT NULL,
    expires_at  bigint  NOT NULL
);
CREATE INDEX tokens_newest ON tokens (account_id, kind, id DESC);

-- Every fetch attempt. outcome: ok | unchanged | errcode | http | transport | not_json |
-- invalid | lost_claim (the fetch worked, but the claim had expired and another holder
-- had taken it, so the token was dropped).
CREATE TABLE attempts (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id   bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    kind         text   NOT NULL DEFAULT 'access_token',
    started_at   bigint NOT NULL,
    duration_ms  bigint NOT NULL,
    tries        bigint NOT NULL,
    outcome      text   NOT NULL,
    errcode      bigint,
    errmsg       text,
    http_status  bigint,
    detail       text
);
CREATE INDEX attempts_newest ON attempts (account_id, kind, id DESC);
CREATE INDEX attempts_age ON attempts (started_at);

-- A lease: the right to fetch one account now, for every host sharing this database.
-- Taken and released in single short statements; never held by an open transaction.
-- expires_at is the database's clock plus the TTL, so host clock skew cannot matter.
CREATE TABLE claims (
    account_id  bigint PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    holder      text   NOT NULL,
    host        text   NOT NULL,
    pid         bigint NOT NULL,
    claimed_at  bigint NOT NULL,
    expires_at  bigint NOT NULL
);

-- Forced stable-token refreshes: WeChat allows 20 a day, at least 30 s apart.
CREATE TABLE forced_refreshes (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id  bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    at          bigint NOT NULL
);
CREATE INDEX forced_refreshes_account ON forced_refreshes (account_id, at);

-- What a reader sees: the newest row per account and kind, without any secret. A view
-- runs with its owner's rights, so a reader granted only this view (and accounts, and
-- schema_migrations) reads tokens without any right on the tables behind it.
-- For one account it is one descent of tokens_newest per kind.
CREATE VIEW latest_tokens AS
SELECT a.appid, a.agent, t.kind, t.token, t.expires_in, t.fetched_at, t.expires_at
FROM accounts a
JOIN tokens t ON t.account_id = a.id
WHERE t.id = (SELECT max(n.id) FROM tokens n
              WHERE n.account_id = t.account_id AND n.kind = t.kind);
