//! What the reports (`status`, `metrics`, `status --check`) read on PostgreSQL, in pages
//! and aggregates, and `prune` in bounded batches. Called from the implementations in
//! `mod.rs`.

use ::postgres::types::Type;

use super::{NOW, NOW_EXACT, Postgres, host_now, host_offset};
use crate::domain::{Account, AccountKey, Api, Attempt, TokenRow};
use crate::store::rows::AccountColumns;
use crate::store::{AccountRows, AttemptColumns, Result, TenantGroup, all_kinds, parse_kind};

/// Rows a prune deletes per statement (each its own transaction).
const PRUNE_BATCH: i64 = 10_000;
/// Accounts whose token rows a prune ranks at a time.
const PRUNE_ACCOUNT_RANGE: i64 = 1_000;

impl Postgres {
    /// One round trip per page. The accounts' secrets are not selected, so the query
    /// touches neither `account_secrets` nor a secret.
    pub(super) fn account_page_(
        &self,
        after: Option<&AccountKey>,
        limit: usize,
        enabled_only: bool,
    ) -> Result<Vec<AccountRows>> {
        self.verify()?;
        let kinds: Vec<&str> = all_kinds().iter().map(|k| k.as_str()).collect();
        let sql = format!(
            "WITH p AS (
                 SELECT id, appid, agent, api, enabled, created_at, updated_at, held_until,
                        held_reason, tickets, fetch_due, role, platform_id, receiver
                 FROM accounts
                 WHERE (appid, agent) > ($1, $2) AND (enabled OR NOT $4)
                 ORDER BY appid, agent LIMIT $3)
             SELECT p.id, p.appid, p.agent, p.api, p.enabled, p.created_at, p.updated_at,
                    p.held_until, p.held_reason, p.tickets, p.fetch_due, p.role,
                    p.platform_id, p.receiver, k.kind,
                    t.id, t.expires_in, t.fetched_at, t.expires_at, i.started_at,
                    p.api = 'token',
                    l.started_at, l.duration_ms, l.tries, l.outcome, l.errcode, l.errmsg,
                    l.http_status, l.detail, l.clock_offset, {NOW_EXACT}
             FROM p CROSS JOIN unnest($5::text[]) AS k(kind)
             LEFT JOIN LATERAL (SELECT n.id, n.expires_in, n.fetched_at, n.expires_at
                                FROM tokens n WHERE n.account_id = p.id AND n.kind = k.kind
                                ORDER BY n.id DESC LIMIT 1) t ON true
             LEFT JOIN LATERAL (SELECT m.started_at, m.duration_ms, m.tries, m.outcome,
                                       m.errcode, m.errmsg, m.http_status, m.detail,
                                       m.clock_offset
                                FROM attempts m WHERE m.account_id = p.id AND m.kind = k.kind
                                ORDER BY m.id DESC LIMIT 1) l ON true
             LEFT JOIN intents i ON i.account_id = p.id AND k.kind = 'access_token'
             WHERE k.kind = 'access_token' OR t.id IS NOT NULL OR l.started_at IS NOT NULL
             ORDER BY p.appid, p.agent"
        );
        let (appid, agent) = after.map_or(("", ""), |k| (k.appid.as_str(), k.agent.as_str()));
        let limit = limit as i64;
        let sent = host_now();
        let rows = self
            .c()
            .query_typed(
                &sql,
                &[
                    (&appid, Type::TEXT),
                    (&agent, Type::TEXT),
                    (&limit, Type::INT8),
                    (&enabled_only, Type::BOOL),
                    (&kinds, Type::TEXT_ARRAY),
                ],
            )
            .map_err(|e| self.err(e))?;
        let received = host_now();
        let Some(first) = rows.first() else {
            return Ok(Vec::new());
        };
        let skew = host_offset(sent, first.get(30), received);
        let mut found = Vec::with_capacity(rows.len());
        for r in &rows {
            let Some(kind) = parse_kind(r.get(14)) else {
                continue;
            };
            let account = AccountColumns {
                id: r.get(0),
                appid: r.get(1),
                agent: r.get(2),
                api: r.get(3),
                secret: None,
                enabled: r.get(4),
                created_at: r.get(5),
                updated_at: r.get(6),
                held_until: r.get(7),
                held_reason: r.get(8),
                tickets: r.get(9),
                fetch_due: r.get(10),
                role: r.get(11),
                platform_id: r.get(12),
                previous_secret: None,
                receiver: r.get(13),
            }
            .account(&self.keys, skew);
            let token = r.get::<_, Option<i64>>(15).map(|id| TokenRow {
                id,
                token: String::new(),
                expires_in: r.get(16),
                fetched_at: r.get::<_, i64>(17) + skew,
                expires_at: r.get::<_, i64>(18) + skew,
                unfinished_fetch: r.get::<_, Option<i64>>(19).map(|t| t + skew),
                classic: r.get(20),
            });
            let attempt = r.get::<_, Option<i64>>(21).map(|started_at| Attempt {
                started_at: started_at + skew,
                duration_ms: r.get(22),
                tries: r.get(23),
                result: AttemptColumns {
                    outcome: r.get::<_, String>(24),
                    errcode: r.get(25),
                    errmsg: r.get(26),
                    http_status: r.get(27),
                    detail: r.get(28),
                }
                .result(),
                clock_offset: r.get(29),
            });
            found.push((account, kind, token, attempt));
        }
        Ok(AccountRows::group(found))
    }

    pub(super) fn platforms_(&self) -> Result<Vec<Account>> {
        self.select_accounts(
            "WHERE a.role IN ('component', 'suite') ORDER BY a.appid, a.agent",
            &[],
        )
    }

    /// Holds judged by the server's clock, which stamps them.
    pub(super) fn tenant_groups_(&self) -> Result<Vec<TenantGroup>> {
        self.verify()?;
        let rows = self
            .c()
            .query(
                &format!(
                    "SELECT platform_id, api, role,
                            CASE WHEN held_until > {NOW} THEN coalesce(held_reason, '') END
                                AS reason,
                            count(*)
                     FROM accounts WHERE platform_id IS NOT NULL
                     GROUP BY platform_id, api, role, reason"
                ),
                &[],
            )
            .map_err(|e| self.err(e))?;
        Ok(rows
            .iter()
            .map(|r| TenantGroup {
                platform_id: r.get(0),
                api: Api::from_columns(r.get(1), r.get(2)),
                held_reason: r.get(3),
                count: r.get(4),
            })
            .collect())
    }

    /// As SQLite's (`prune_batches`): the surplus token rows are ranked a range of
    /// accounts at a time and deleted at most `PRUNE_BATCH` per statement, each statement
    /// its own transaction; then the attempts, as many per statement. Validity and the
    /// retention windows are judged by the server's clock.
    pub(super) fn prune_batches(
        &self,
        now: i64,
        keep: i64,
        attempts_before: i64,
    ) -> Result<(usize, usize)> {
        let err = |e: postgres::Error| self.err(e);
        let mut tokens = 0;
        let mut after = 0i64;
        loop {
            let last: Option<i64> = self
                .c()
                .query_one(
                    "SELECT max(id) FROM (SELECT id FROM accounts WHERE id > $1
                                          ORDER BY id LIMIT $2) r",
                    &[&after, &PRUNE_ACCOUNT_RANGE],
                )
                .map_err(err)?
                .get(0);
            let Some(last) = last else { break };
            loop {
                let n = self
                    .c()
                    .execute(
                        &format!(
                            "DELETE FROM tokens WHERE expires_at <= {NOW} AND id IN (
                                 SELECT id FROM (
                                     SELECT id, expires_at, row_number() OVER
                                         (PARTITION BY account_id, kind ORDER BY id DESC) AS n
                                     FROM tokens WHERE account_id > $1 AND account_id <= $2
                                 ) ranked
                                 WHERE n > $3 AND expires_at <= {NOW} LIMIT $4)"
                        ),
                        &[&after, &last, &keep, &PRUNE_BATCH],
                    )
                    .map_err(err)?;
                tokens += n as usize;
                if (n as i64) < PRUNE_BATCH {
                    break;
                }
            }
            after = last;
        }
        // The windows' lengths come from `now`, their ends from the server's clock, which
        // stamps attempts and forced refreshes: a host a day ahead must not prune today's
        // forced refreshes out of the budget.
        let mut attempts = 0;
        loop {
            let n = self
                .c()
                .execute(
                    &format!(
                        "DELETE FROM attempts WHERE id IN (
                             SELECT id FROM attempts WHERE started_at < {NOW} - $1::bigint
                             LIMIT $2)"
                    ),
                    &[&(now - attempts_before), &PRUNE_BATCH],
                )
                .map_err(err)?;
            attempts += n as usize;
            if (n as i64) < PRUNE_BATCH {
                break;
            }
        }
        let mut c = self.c();
        let mut tx = c.transaction().map_err(err)?;
        tx.execute(
            &format!("DELETE FROM forced_refreshes WHERE at < {NOW} - $1::bigint"),
            &[&crate::policy::FORCED_REFRESH_RETENTION],
        )
        .map_err(err)?;
        tx.execute(&format!("DELETE FROM claims WHERE expires_at < {NOW}"), &[])
            .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok((tokens, attempts))
    }
}
