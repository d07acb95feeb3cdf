-- Quota resets (`wxtoken quota reset`), as SQLite's migration 0004: successful or not, so
-- that wxtoken can say how many of the month's 10 resets it has used.
CREATE TABLE quota_resets (
    id          bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id  bigint  NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    at          bigint  NOT NULL,
    ok          boolean NOT NULL,
    errcode     bigint,
    detail      text
);
CREATE INDEX quota_resets_account ON quota_resets (account_id, at);
