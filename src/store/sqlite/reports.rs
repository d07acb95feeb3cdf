//! What the reports (`status`, `metrics`, `status --check`) read on SQLite, in pages and
//! aggregates, so that they cost the same per account at 100,000 accounts as at 10; and
//! `prune` in bounded batches. Called from the implementations in `mod.rs`.

use rusqlite::params;

use super::{Sqlite, Transaction};
use crate::domain::{Account, AccountKey, Api, Attempt, TokenRow};
use crate::policy;
use crate::store::rows::AccountColumns;
use crate::store::{AccountRows, AttemptColumns, Result, TenantGroup, all_kinds, parse_kind};

/// Rows a prune deletes per transaction: each holds the write lock (which `refresh` and
/// `get --reject` need, `get` does not) for a few tens of milliseconds at most.
pub(super) const PRUNE_BATCH: i64 = 10_000;

impl Sqlite {
    pub(super) fn account_page_(
        &self,
        after: Option<&AccountKey>,
        limit: usize,
        enabled_only: bool,
    ) -> Result<Vec<AccountRows>> {
        let kinds = all_kinds()
            .iter()
            .map(|k| format!("('{}')", k.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        // The page is found on the unique (appid, agent) index from where the last one
        // ended; per account and kind, one descent of tokens_newest and of attempts_newest.
        let sql = format!(
            "WITH p AS (
                 SELECT id, appid, agent, api, enabled, created_at, updated_at, held_until,
                        held_reason, tickets, fetch_due, role, platform_id, receiver
                 FROM accounts
                 WHERE (appid, agent) > (?1, ?2) AND (enabled OR NOT ?4)
                 ORDER BY appid, agent LIMIT ?3),
             k(kind) AS (VALUES {kinds})
             SELECT p.id, p.appid, p.agent, p.api, p.enabled, p.created_at, p.updated_at,
                    p.held_until, p.held_reason, p.tickets, p.fetch_due, p.role,
                    p.platform_id, p.receiver, k.kind,
                    t.id, t.expires_in, t.fetched_at, t.expires_at, i.started_at,
                    p.api = 'token',
                    l.started_at, l.duration_ms, l.tries, l.outcome, l.errcode, l.errmsg,
                    l.http_status, l.detail, l.clock_offset
             FROM p CROSS JOIN k
             LEFT JOIN tokens t ON t.id = (SELECT n.id FROM tokens n
                                           WHERE n.account_id = p.id AND n.kind = k.kind
                                           ORDER BY n.id DESC LIMIT 1)
             LEFT JOIN attempts l ON l.id = (SELECT m.id FROM attempts m
                                             WHERE m.account_id = p.id AND m.kind = k.kind
                                             ORDER BY m.id DESC LIMIT 1)
             LEFT JOIN intents i ON i.account_id = p.id AND k.kind = 'access_token'
             WHERE k.kind = 'access_token' OR t.id IS NOT NULL OR l.id IS NOT NULL
             ORDER BY p.appid, p.agent"
        );
        let (appid, agent) = after.map_or(("", ""), |k| (k.appid.as_str(), k.agent.as_str()));
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(params![appid, agent, limit as i64, enabled_only], |r| {
            let account = AccountColumns {
                id: r.get(0)?,
                appid: r.get(1)?,
                agent: r.get(2)?,
                api: r.get(3)?,
                secret: None,
                enabled: r.get(4)?,
                created_at: r.get(5)?,
                updated_at: r.get(6)?,
                held_until: r.get(7)?,
                held_reason: r.get(8)?,
                tickets: r.get(9)?,
                fetch_due: r.get(10)?,
                role: r.get(11)?,
                platform_id: r.get(12)?,
                previous_secret: None,
                receiver: r.get(13)?,
            }
            .account(&self.keys, 0);
            let kind: String = r.get(14)?;
            let token = match r.get::<_, Option<i64>>(15)? {
                None => None,
                Some(id) => Some(TokenRow {
                    id,
                    token: String::new(),
                    expires_in: r.get(16)?,
                    fetched_at: r.get(17)?,
                    expires_at: r.get(18)?,
                    unfinished_fetch: r.get(19)?,
                    classic: r.get(20)?,
                }),
            };
            let attempt = match r.get::<_, Option<i64>>(21)? {
                None => None,
                Some(started_at) => Some(Attempt {
                    started_at,
                    duration_ms: r.get(22)?,
                    tries: r.get(23)?,
                    result: AttemptColumns {
                        outcome: r.get::<_, String>(24)?,
                        errcode: r.get(25)?,
                        errmsg: r.get(26)?,
                        http_status: r.get(27)?,
                        detail: r.get(28)?,
                    }
                    .result(),
                    clock_offset: r.get(29)?,
                }),
            };
            Ok((account, kind, token, attempt))
        })?;
        let mut found = Vec::new();
        for row in rows {
            let (account, kind, token, attempt) = row?;
            if let Some(kind) = parse_kind(&kind) {
                found.push((account, kind, token, attempt));
            }
        }
        Ok(AccountRows::group(found))
    }

    pub(super) fn platforms_(&self) -> Result<Vec<Account>> {
        let sql = format!(
            "SELECT {} FROM accounts WHERE role IN ('component', 'suite') ORDER BY appid, agent",
            Self::ACCOUNT_COLUMNS
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map([], |r| Self::account_from_row(&self.keys, r))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub(super) fn tenant_groups_(&self, now: i64) -> Result<Vec<TenantGroup>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT platform_id, api, role,
                    CASE WHEN held_until > ?1 THEN coalesce(held_reason, '') END AS reason,
                    count(*)
             FROM accounts WHERE platform_id IS NOT NULL
             GROUP BY platform_id, api, role, reason",
        )?;
        let rows = stmt.query_map(params![now], |r| {
            Ok(TenantGroup {
                platform_id: r.get(0)?,
                api: Api::from_columns(&r.get::<_, String>(1)?, &r.get::<_, String>(2)?),
                held_reason: r.get(3)?,
                count: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Deletes the token rows beyond the newest `keep` of each account and kind that are
    /// no longer valid, then the attempts older than `attempts_before`, at most
    /// `PRUNE_BATCH` rows per transaction. The rows to delete are found outside the write
    /// lock (a range of accounts at a time, on tokens_newest); a row found surplus stays
    /// surplus (newer rows only push it further down), and its expiry is checked again as
    /// it is deleted. Between transactions the write lock is free: a refresh waiting for
    /// it gets it at once. Returns (tokens, attempts) deleted.
    pub(super) fn prune_batches(
        &self,
        now: i64,
        keep: i64,
        attempts_before: i64,
    ) -> Result<(usize, usize)> {
        let mut tokens = 0;
        let mut after = 0i64;
        let mut find = self.conn.prepare_cached(
            "SELECT id FROM (
                 SELECT id, expires_at,
                        row_number() OVER (PARTITION BY account_id, kind ORDER BY id DESC) AS n
                 FROM tokens WHERE account_id > ?1 AND account_id <= ?2)
             WHERE n > ?3 AND expires_at <= ?4 LIMIT ?5",
        )?;
        let mut range_end = self.conn.prepare_cached(
            "SELECT max(id) FROM (SELECT id FROM accounts WHERE id > ?1 ORDER BY id LIMIT ?2)",
        )?;
        let mut delete = self.conn.prepare_cached(
            "DELETE FROM tokens WHERE expires_at <= ?2
                 AND id IN (SELECT value FROM json_each(?1))",
        )?;
        loop {
            let last: Option<i64> =
                range_end.query_row(params![after, PRUNE_ACCOUNT_RANGE], |r| r.get(0))?;
            let Some(last) = last else { break };
            loop {
                let ids: Vec<i64> = find
                    .query_map(params![after, last, keep, now, PRUNE_BATCH], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                let ids_json = serde_json::Value::from(ids.as_slice()).to_string();
                let tx = Transaction::immediate(&self.conn, &self.path)?;
                tokens += delete.execute(params![ids_json, now])?;
                tx.commit()?;
                if (ids.len() as i64) < PRUNE_BATCH {
                    break;
                }
            }
            after = last;
        }
        let mut attempts = 0;
        let mut delete = self.conn.prepare_cached(
            "DELETE FROM attempts WHERE id IN (
                 SELECT id FROM attempts WHERE started_at < ?1 LIMIT ?2)",
        )?;
        loop {
            let tx = Transaction::immediate(&self.conn, &self.path)?;
            let deleted = delete.execute(params![attempts_before, PRUNE_BATCH])?;
            tx.commit()?;
            attempts += deleted;
            if (deleted as i64) < PRUNE_BATCH {
                break;
            }
        }
        let tx = Transaction::immediate(&self.conn, &self.path)?;
        self.conn.execute(
            "DELETE FROM forced_refreshes WHERE at < ?1",
            params![now - policy::FORCED_REFRESH_RETENTION],
        )?;
        self.conn
            .execute("DELETE FROM claims WHERE expires_at < ?1", params![now])?;
        tx.commit()?;
        Ok((tokens, attempts))
    }
}

/// Accounts whose token rows a prune ranks at a time (outside the write lock): a day at
/// 100,000 accounts adds about 12 token rows to each.
const PRUNE_ACCOUNT_RANGE: i64 = 1_000;
