-- PostgreSQL schema, version 5: the intents of SQLite's migration 0007. An intent is
-- written (server time) before a token request leaves and deleted in the transaction that
-- records its outcome. One left behind (the holder died, the record failed, the answer was
-- lost) means WeChat may have issued a token that was never stored: on the classic API that
-- kills the stored token 300 s after the request, on every host, so readers cap it there and
-- the next refresh fetches the account first.
CREATE TABLE intents (
    account_id  bigint  PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    holder      text    NOT NULL,
    started_at  bigint  NOT NULL
);

-- set-secret and enable make an account due at the next refresh of either kind; the
-- recorded outcome of a fetch with that secret clears it.
ALTER TABLE accounts ADD COLUMN fetch_due boolean NOT NULL DEFAULT false;

-- WeChat's Date header minus the local clock when the reply came, in seconds.
ALTER TABLE attempts ADD COLUMN clock_offset bigint;

-- The reader view gains the row id (a refresh's "fetched after this run started"), the
-- start of an unfinished fetch and whether the account is on the classic API: a reader
-- caps the token at started_at + 300 from it without being granted the intents table.
-- New columns go last, as CREATE OR REPLACE VIEW requires.
CREATE OR REPLACE VIEW latest_tokens AS
SELECT a.appid, a.agent, t.kind, t.token, t.expires_in, t.fetched_at, t.expires_at,
       t.id, i.started_at AS unfinished_fetch, a.api = 'token' AS classic
FROM accounts a
JOIN tokens t ON t.account_id = a.id
LEFT JOIN intents i ON i.account_id = a.id AND t.kind = 'access_token'
WHERE t.id = (SELECT max(n.id) FROM tokens n
              WHERE n.account_id = t.account_id AND n.kind = t.kind);
