-- When each account is next due, where an index finds it: see the SQLite migration
-- 0009_due.sql.
ALTER TABLE accounts ADD COLUMN due_at bigint;
UPDATE accounts SET due_at = (SELECT t.expires_at FROM tokens t
                              WHERE t.account_id = accounts.id AND t.kind = 'access_token'
                              ORDER BY t.id DESC LIMIT 1);
CREATE INDEX accounts_due ON accounts (due_at) WHERE enabled;
CREATE INDEX accounts_asked ON accounts (id) WHERE fetch_due;
-- The newest fetch time, in one index descent: a clock stepped back since (a token
-- "fetched in the future") makes refresh judge every account, not only the due set.
CREATE INDEX tokens_fetched ON tokens (fetched_at);
