-- When each account is next due, where an index finds it: the expiry of its newest access
-- token, lowered by the expiry of a newer ticket, NULL when it has none yet or a ticket
-- fetch failed. A refresh-ahead run selects the due accounts (due_at before its window's
-- end, NULL, asked for with fetch_due, or with an unfinished fetch) without reading every
-- account's rows: 100,000 authorizers cost what their due ones cost.
ALTER TABLE accounts ADD COLUMN due_at INTEGER;
UPDATE accounts SET due_at = (SELECT t.expires_at FROM tokens t
                              WHERE t.account_id = accounts.id AND t.kind = 'access_token'
                              ORDER BY t.id DESC LIMIT 1);
CREATE INDEX accounts_due ON accounts (due_at) WHERE enabled = 1;
CREATE INDEX accounts_asked ON accounts (id) WHERE fetch_due = 1;
-- The newest fetch time, in one index descent: a clock stepped back since (a token
-- "fetched in the future") makes refresh judge every account, not only the due set.
CREATE INDEX tokens_fetched ON tokens (fetched_at);
