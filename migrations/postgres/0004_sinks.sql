-- Sinks, as SQLite's migration 0006: where refresh publishes every valid token after it is
-- committed (a Redis key in an SDK's format, or a hook), and which token row each exec sink
-- last received. password is a secret (a Redis password); the reader grant never names
-- these tables.
CREATE TABLE sinks (
    id              bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text    NOT NULL UNIQUE CHECK (name <> ''),
    kind            text    NOT NULL CHECK (kind IN ('redis', 'exec')),
    target          text    NOT NULL,
    password        text,
    format          text,
    prefix          text,
    key_template    text,
    accounts        text    NOT NULL DEFAULT '[]',
    timeout         bigint  NOT NULL,
    created_at      bigint  NOT NULL,
    last_at         bigint,
    last_ok         boolean,
    last_published  bigint,
    last_failed     bigint,
    last_error      text
);

CREATE TABLE sink_published (
    sink_id     bigint NOT NULL REFERENCES sinks (id) ON DELETE CASCADE,
    account_id  bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    kind        text   NOT NULL,
    token_id    bigint NOT NULL,
    PRIMARY KEY (sink_id, account_id, kind)
);
