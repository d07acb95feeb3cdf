-- Third-party platforms (Open Platform components, WeCom suites) and the accounts they
-- manage (authorizers, corps) are accounts: one model, so that claims, intents, holds,
-- status, metrics, sinks and store copy cover them. role names the platform kind ('' for a
-- plain account); api stays the host family ('token' for Open Platform, 'work' for WeCom).
-- platform_id links a tenant to its platform's account (and a 代开发 corp to its template).
-- A tenant's secret is its durable credential (refresh token, permanent code), sealed like
-- an AppSecret; previous_secret is the one WeChat replaced in a reply, kept until the new
-- one has worked once.
ALTER TABLE accounts ADD COLUMN role TEXT NOT NULL DEFAULT ''
    CHECK (role IN ('', 'component', 'authorizer', 'suite', 'corp', 'provider'));
ALTER TABLE accounts ADD COLUMN platform_id INTEGER REFERENCES accounts (id);
ALTER TABLE accounts ADD COLUMN previous_secret TEXT CHECK (previous_secret <> '');
-- A suite's provider corpid: the receiveid WeCom's URL check (and some pushes) carry.
ALTER TABLE accounts ADD COLUMN receiver TEXT;
CREATE INDEX accounts_platform ON accounts (platform_id);

-- The newest pushed ticket of a platform (component_verify_ticket, suite_ticket), sealed:
-- only a newer create time replaces it. received_at is when it was stored.
CREATE TABLE platform_tickets (
    account_id   INTEGER PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    ticket       TEXT    NOT NULL CHECK (ticket <> ''),
    create_time  INTEGER NOT NULL,
    received_at  INTEGER NOT NULL
);

-- How a platform's pushes are checked and decrypted (the message Token and the
-- EncodingAESKey, sealed), and the hook that sees each decrypted event.
CREATE TABLE platform_crypto (
    account_id    INTEGER PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    token         TEXT    NOT NULL CHECK (token <> ''),
    aes_key       TEXT    NOT NULL CHECK (aes_key <> ''),
    hook          TEXT,
    hook_timeout  INTEGER NOT NULL DEFAULT 10,
    hook_secrets  INTEGER NOT NULL DEFAULT 0 CHECK (hook_secrets IN (0, 1)),
    updated_at    INTEGER NOT NULL
);

-- What a platform's pushes and onboarding did, for status: an exchange of an auth code
-- that failed is recorded here, never dropped. outcome: ok | failed.
CREATE TABLE platform_events (
    id           INTEGER PRIMARY KEY,
    account_id   INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    at           INTEGER NOT NULL,
    event        TEXT    NOT NULL,
    tenant       TEXT,
    outcome      TEXT    NOT NULL,
    detail       TEXT
);
CREATE INDEX platform_events_newest ON platform_events (account_id, id DESC);
