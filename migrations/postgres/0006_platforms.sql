-- Third-party platforms and their tenants as accounts: see the SQLite migration
-- 0008_platforms.sql. The credentials (a tenant's previous one, tickets, the push crypto)
-- live apart from what a reader role may read, as account_secrets does.
ALTER TABLE accounts ADD COLUMN role text NOT NULL DEFAULT ''
    CHECK (role IN ('', 'component', 'authorizer', 'suite', 'corp', 'provider'));
ALTER TABLE accounts ADD COLUMN platform_id bigint REFERENCES accounts (id);
ALTER TABLE accounts ADD COLUMN receiver text;
CREATE INDEX accounts_platform ON accounts (platform_id);
ALTER TABLE account_secrets ADD COLUMN previous text CHECK (previous <> '');

CREATE TABLE platform_tickets (
    account_id   bigint PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    ticket       text   NOT NULL CHECK (ticket <> ''),
    create_time  bigint NOT NULL,
    received_at  bigint NOT NULL
);

CREATE TABLE platform_crypto (
    account_id    bigint  PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    token         text    NOT NULL CHECK (token <> ''),
    aes_key       text    NOT NULL CHECK (aes_key <> ''),
    hook          text,
    hook_timeout  bigint  NOT NULL DEFAULT 10,
    hook_secrets  boolean NOT NULL DEFAULT false,
    updated_at    bigint  NOT NULL
);

CREATE TABLE platform_events (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id   bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    at           bigint NOT NULL,
    event        text   NOT NULL,
    tenant       text,
    outcome      text   NOT NULL,
    detail       text
);
CREATE INDEX platform_events_newest ON platform_events (account_id, id DESC);
