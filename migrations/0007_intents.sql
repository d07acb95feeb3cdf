-- An intent is written before a token request leaves and deleted in the transaction that
-- records its outcome. One left behind (the holder died, the record failed, or the answer
-- was lost on the way back) means WeChat may have issued a token that was never stored:
-- on the classic API that kills the stored token 300 s after the request, so readers cap
-- the stored token there, and the next refresh fetches the account first.
CREATE TABLE intents (
    account_id  INTEGER PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    holder      TEXT    NOT NULL,
    started_at  INTEGER NOT NULL
);

-- set-secret and enable make an account due at the next refresh of either kind, even one
-- with --if-expiring-within; the recorded outcome of a fetch with that secret clears it.
ALTER TABLE accounts ADD COLUMN fetch_due INTEGER NOT NULL DEFAULT 0;

-- WeChat's Date header minus the local clock when the reply came, in seconds.
ALTER TABLE attempts ADD COLUMN clock_offset INTEGER;
