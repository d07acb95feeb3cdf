-- A claim is the right to fetch one account's token now: at most one holder per account,
-- across every process on every host that shares this file. A holder that dies is
-- detected by its pid (same host) or outlives expires_at.
CREATE TABLE claims (
    account_id  INTEGER PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    holder      TEXT    NOT NULL,
    host        TEXT    NOT NULL,
    pid         INTEGER NOT NULL,
    claimed_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);

-- A hold makes refresh skip an account that cannot succeed now, so no quota is wasted:
-- held_until is a Unix time, or the largest integer for "until the configuration changes"
-- (the secret is replaced, the account is re-enabled, or refresh --force).
ALTER TABLE accounts ADD COLUMN held_until INTEGER;
ALTER TABLE accounts ADD COLUMN held_reason TEXT;

-- Forced stable-token refreshes: WeChat allows 20 a day, at least 30 s apart.
CREATE TABLE forced_refreshes (
    id          INTEGER PRIMARY KEY,
    account_id  INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    at          INTEGER NOT NULL
);
CREATE INDEX forced_refreshes_account ON forced_refreshes (account_id, at);
