-- JS-SDK tickets are opt-in per account: a comma-separated list of kinds
-- ('jsapi', 'wx_card' for Official Accounts; 'jsapi', 'agent_config' for WeCom apps).
-- Their rows live in tokens, with the ticket kind in tokens.kind.
ALTER TABLE accounts ADD COLUMN tickets TEXT NOT NULL DEFAULT '';

-- status reads the newest attempt per account and kind.
DROP INDEX attempts_newest;
CREATE INDEX attempts_newest ON attempts (account_id, kind, id DESC);
