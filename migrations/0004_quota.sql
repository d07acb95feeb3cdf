-- Quota resets (`wxtoken quota reset`, WeChat's clear_quota/v2), successful or not, so
-- that wxtoken can say how many of the month's 10 resets it has used. ok is 1 for a reset
-- WeChat confirmed; detail is the failure as shown to the user (secret scrubbed).
CREATE TABLE quota_resets (
    id          INTEGER PRIMARY KEY,
    account_id  INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    at          INTEGER NOT NULL,
    ok          INTEGER NOT NULL CHECK (ok IN (0, 1)),
    errcode     INTEGER,
    detail      TEXT
);
CREATE INDEX quota_resets_account ON quota_resets (account_id, at);

