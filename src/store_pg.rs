//! The PostgreSQL store: the same operations as the SQLite store, for a fleet of hosts
//! sharing one database. The only other module with SQL besides `store.rs`.
//!
//! What differs from SQLite, and why:
//! - Every time that decides something (claims, token expiry, `get`'s validity check)
//!   comes from the server's clock, `now()`, so clock skew between hosts cannot let two
//!   holders fetch one account or a reader hand out an expired token.
//! - A claim is a lease row taken and released in single autocommit statements. No
//!   transaction or session lock is held across the HTTP request: a host that dies
//!   mid-fetch blocks the account only until the lease expires.
//! - Recording a fetch first checks that this holder still has the lease (fencing); one
//!   that lost it records a `lost_claim` attempt and drops its token.
//! - Secrets live in `account_secrets`, which the reader grant never names.

use std::fmt;

use anyhow::{Context, Result};
use postgres::Client;
use postgres::types::{ToSql, Type};

use crate::exit::{self, fail};
use crate::pgconf::PgConfig;
use crate::secret::Secret;
use crate::store::{
    ACCESS_TOKEN, Account, AccountKey, AttemptRow, Claim, Holder, Recorded, TokenRow,
};
use crate::wechat::{Api, Failure, Outcome, Ticket};

/// Every PostgreSQL migration, in order; the schema version is how many are applied.
const MIGRATIONS: &[&str] = &[include_str!("../migrations/postgres/0001_init.sql")];

/// The key of the advisory lock that serialises migrations. Advisory locks are per
/// database, so other wxtoken databases on the server do not contend for it.
const MIGRATION_LOCK: i64 = 0x7778_746f_6b65_6e00; // "wxtoken\0"

/// The database clock, in the Unix seconds every time column holds.
const NOW: &str = "extract(epoch from now())::bigint";

pub struct PgStore {
    client: Client,
    config: PgConfig,
}

/// A fetch recorded after this holder's lease was taken over.
#[derive(Debug)]
pub struct LostClaim;

impl fmt::Display for LostClaim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "the claim expired during the fetch and another refresher took it over; \
             the token was dropped (raise --timeout's margin if this repeats)",
        )
    }
}

impl std::error::Error for LostClaim {}

impl PgStore {
    /// Connects and applies pending migrations.
    pub fn open(config: &PgConfig) -> Result<PgStore> {
        let mut store = PgStore::connect(config)?;
        store.migrate()?;
        Ok(store)
    }

    /// Connects for reading: no migration, and a schema of another version is refused.
    pub fn open_readonly(config: &PgConfig) -> Result<PgStore> {
        let mut store = PgStore::connect(config)?;
        let version = store.version()?;
        if version != MIGRATIONS.len() as i64 {
            store.check_version(version)?;
            return Err(fail(
                exit::DATABASE,
                format!(
                    "database {} has schema version {version}, this wxtoken needs {}; \
                     run any writing command (e.g. wxtoken status) once to upgrade it",
                    store.config,
                    MIGRATIONS.len()
                ),
            ));
        }
        Ok(store)
    }

    fn connect(config: &PgConfig) -> Result<PgStore> {
        let client = crate::pgconn::connect(config).map_err(|e| fail(exit::DATABASE, e))?;
        Ok(PgStore {
            client,
            config: config.clone(),
        })
    }

    /// The server, as `status` shows it: the URL without its password.
    pub fn describe(&self) -> String {
        self.config.to_string()
    }

    fn db_error(&self, err: impl Into<DbText>) -> anyhow::Error {
        fail(
            exit::DATABASE,
            format!("could not use database {}: {}", self.config, err.into().0),
        )
    }

    // ---- schema ----

    /// The applied schema version: 0 for an empty database.
    fn version(&mut self) -> Result<i64> {
        let exists: bool = self
            .client
            .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
            .map_err(|e| self.db_error(e))?
            .get(0);
        if !exists {
            return Ok(0);
        }
        let row = self
            .client
            .query_one(
                "SELECT coalesce(max(version), 0)::bigint FROM schema_migrations",
                &[],
            )
            .map_err(|e| self.db_error(e))?;
        Ok(row.get(0))
    }

    fn check_version(&self, version: i64) -> Result<()> {
        if version > MIGRATIONS.len() as i64 {
            return Err(fail(
                exit::DATABASE,
                format!(
                    "database {} has schema version {version}, newer than this wxtoken \
                     understands ({}); upgrade wxtoken",
                    self.config,
                    MIGRATIONS.len()
                ),
            ));
        }
        Ok(())
    }

    /// Applies every pending migration in one transaction that first takes an advisory
    /// lock, so that two hosts upgrading at once run one after the other and the second
    /// finds nothing left to do. DDL is transactional in PostgreSQL: all or nothing.
    fn migrate(&mut self) -> Result<()> {
        if self.version()? == MIGRATIONS.len() as i64 {
            return Ok(());
        }
        let config = self.config.clone();
        let dberr = |e: postgres::Error| {
            fail(
                exit::DATABASE,
                format!("could not use database {config}: {}", DbText::from(e).0),
            )
        };
        let mut tx = self.client.transaction().map_err(dberr)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .map_err(dberr)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .map_err(dberr)?;
        let version: i64 = tx
            .query_one(
                "SELECT coalesce(max(version), 0)::bigint FROM schema_migrations",
                &[],
            )
            .map_err(dberr)?
            .get(0);
        if version > MIGRATIONS.len() as i64 {
            return Err(fail(
                exit::DATABASE,
                format!(
                    "database {config} has schema version {version}, newer than this wxtoken \
                     understands ({}); upgrade wxtoken",
                    MIGRATIONS.len()
                ),
            ));
        }
        if version == 0 {
            let foreign: i64 = tx
                .query_one(
                    "SELECT count(*) FROM pg_tables
                     WHERE schemaname = current_schema() AND tablename = 'accounts'",
                    &[],
                )
                .map_err(dberr)?
                .get(0);
            if foreign > 0 {
                return Err(fail(
                    exit::DATABASE,
                    format!(
                        "{config} already has an accounts table that wxtoken did not create; \
                         refusing to touch it (use another database or schema)"
                    ),
                ));
            }
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let n = i as i32 + 1;
            tx.batch_execute(sql)
                .with_context(|| format!("postgresql migration {n} failed"))?;
            tx.execute("INSERT INTO schema_migrations (version) VALUES ($1)", &[&n])
                .map_err(dberr)?;
        }
        tx.commit().map_err(dberr)
    }

    /// The server's clock, in Unix seconds.
    pub fn now(&mut self) -> Result<i64> {
        let row = self
            .client
            .query_one(&format!("SELECT {NOW}"), &[])
            .map_err(|e| self.db_error(e))?;
        Ok(row.get(0))
    }

    // ---- accounts ----

    pub fn add_account(
        &mut self,
        key: &AccountKey,
        api: Api,
        secret: &Secret,
        tickets: &[Ticket],
        now: i64,
    ) -> Result<()> {
        let tickets: Vec<&str> = tickets.iter().map(|t| t.as_str()).collect();
        let mut tx = self.client.transaction()?;
        let row = tx.query_opt(
            "INSERT INTO accounts (appid, agent, api, enabled, created_at, updated_at, tickets)
             VALUES ($1, $2, $3, true, $4, $4, $5)
             ON CONFLICT (appid, agent) DO NOTHING RETURNING id",
            &[
                &key.appid,
                &key.agent,
                &api.as_str(),
                &now,
                &tickets.join(","),
            ],
        )?;
        let Some(row) = row else {
            return Err(already_exists(key));
        };
        let id: i64 = row.get(0);
        tx.execute(
            "INSERT INTO account_secrets (account_id, secret) VALUES ($1, $2)",
            &[&id, &secret.expose()],
        )?;
        tx.commit()?;
        Ok(())
    }

    const ACCOUNT_SELECT: &'static str =
        "SELECT a.id, a.appid, a.agent, a.api, s.secret, a.enabled, a.created_at,
                a.updated_at, a.held_until, a.held_reason, a.tickets
         FROM accounts a LEFT JOIN account_secrets s ON s.account_id = a.id";

    fn account_from_row(row: &postgres::Row) -> Account {
        let api: String = row.get(3);
        let tickets: String = row.get(10);
        Account {
            id: row.get(0),
            key: AccountKey {
                appid: row.get(1),
                agent: row.get(2),
            },
            api: Api::parse(&api).unwrap_or(Api::Token),
            secret: Secret::new(row.get::<_, Option<String>>(4).unwrap_or_default()),
            enabled: row.get(5),
            created_at: row.get(6),
            updated_at: row.get(7),
            held_until: row.get(8),
            held_reason: row.get(9),
            tickets: tickets.split(',').filter_map(Ticket::parse).collect(),
        }
    }

    /// Every account, ordered by appid then agent.
    pub fn accounts(&mut self) -> Result<Vec<Account>> {
        let sql = format!("{} ORDER BY a.appid, a.agent", Self::ACCOUNT_SELECT);
        let rows = self.client.query(&sql, &[])?;
        Ok(rows.iter().map(Self::account_from_row).collect())
    }

    pub fn account(&mut self, key: &AccountKey) -> Result<Option<Account>> {
        let sql = format!(
            "{} WHERE a.appid = $1 AND a.agent = $2",
            Self::ACCOUNT_SELECT
        );
        let row = self.client.query_opt(&sql, &[&key.appid, &key.agent])?;
        Ok(row.as_ref().map(Self::account_from_row))
    }

    pub fn remove_account(&mut self, key: &AccountKey) -> Result<()> {
        let n = self.client.execute(
            "DELETE FROM accounts WHERE appid = $1 AND agent = $2",
            &[&key.appid, &key.agent],
        )?;
        if n == 0 {
            return Err(no_such_account(key));
        }
        Ok(())
    }

    pub fn set_enabled(&mut self, key: &AccountKey, enabled: bool, now: i64) -> Result<()> {
        let n = self.client.execute(
            "UPDATE accounts SET enabled = $3, updated_at = $4, held_until = NULL, held_reason = NULL
             WHERE appid = $1 AND agent = $2",
            &[&key.appid, &key.agent, &enabled, &now],
        )?;
        if n == 0 {
            return Err(no_such_account(key));
        }
        Ok(())
    }

    pub fn set_tickets(&mut self, key: &AccountKey, tickets: &[Ticket], now: i64) -> Result<()> {
        let list: Vec<&str> = tickets.iter().map(|t| t.as_str()).collect();
        let n = self.client.execute(
            "UPDATE accounts SET tickets = $3, updated_at = $4 WHERE appid = $1 AND agent = $2",
            &[&key.appid, &key.agent, &list.join(","), &now],
        )?;
        if n == 0 {
            return Err(no_such_account(key));
        }
        Ok(())
    }

    pub fn set_secret(&mut self, key: &AccountKey, secret: &Secret, now: i64) -> Result<()> {
        let mut tx = self.client.transaction()?;
        let row = tx.query_opt(
            "UPDATE accounts SET updated_at = $3, held_until = NULL, held_reason = NULL
             WHERE appid = $1 AND agent = $2 RETURNING id",
            &[&key.appid, &key.agent, &now],
        )?;
        let Some(row) = row else {
            return Err(no_such_account(key));
        };
        let id: i64 = row.get(0);
        tx.execute(
            "INSERT INTO account_secrets (account_id, secret) VALUES ($1, $2)
             ON CONFLICT (account_id) DO UPDATE SET secret = EXCLUDED.secret",
            &[&id, &secret.expose()],
        )?;
        tx.commit()?;
        Ok(())
    }

    // ---- tokens ----

    /// The newest token of an account (of `kind`), valid or not, and the server's clock to
    /// judge it by. One round trip, through the reader view, with no named prepared
    /// statement, so that it works for a reader role and behind a transaction pooler.
    pub fn latest_token(
        &mut self,
        key: &AccountKey,
        kind: &str,
    ) -> Result<(Option<TokenRow>, i64)> {
        let sql = format!(
            "SELECT n.token, n.expires_in, n.fetched_at, n.expires_at, {NOW}
             FROM (SELECT 1) one LEFT JOIN latest_tokens n
                  ON n.appid = $1 AND n.agent = $2 AND n.kind = $3"
        );
        let params: [(&(dyn ToSql + Sync), Type); 3] = [
            (&key.appid, Type::TEXT),
            (&key.agent, Type::TEXT),
            (&kind, Type::TEXT),
        ];
        let row = self
            .client
            .query_typed(&sql, &params)
            .map_err(|e| self.db_error(e))?
            .pop()
            .ok_or_else(|| self.db_error("no row from the clock"))?;
        let now: i64 = row.get(4);
        let token = row.get::<_, Option<String>>(0).map(|token| TokenRow {
            token,
            expires_in: row.get(1),
            fetched_at: row.get(2),
            expires_at: row.get(3),
        });
        Ok((token, now))
    }

    /// Records a fetch in one transaction, only if `holder` still holds the account's
    /// lease: the new row (unless WeChat handed back the newest one again), the attempt,
    /// the hold for a token, and the lease's release if asked. The token's times are the
    /// lease's `claimed_at` on the server's clock: taken before the request was sent, so
    /// the stored expiry is never later than WeChat's.
    pub fn record_fetch(
        &mut self,
        account_id: i64,
        kind: &str,
        outcome: &Outcome,
        hold: Option<(i64, &str)>,
        holder: &Holder,
        release: bool,
    ) -> Result<Recorded> {
        let mut tx = self.client.transaction()?;
        // The row lock makes a concurrent takeover wait for this commit, or this check see
        // the new holder: either way one holder's token is stored.
        let claimed_at: Option<i64> = tx
            .query_opt(
                "SELECT claimed_at FROM claims WHERE account_id = $1 AND holder = $2 FOR UPDATE",
                &[&account_id, &holder.id()],
            )?
            .map(|r| r.get(0));
        let Some(claimed_at) = claimed_at else {
            tx.execute(
                &format!(
                    "INSERT INTO attempts (account_id, kind, started_at, duration_ms, tries, outcome, detail)
                     VALUES ($1, $2, {NOW}, $3, $4, 'lost_claim', $5)"
                ),
                &[
                    &account_id,
                    &kind,
                    &outcome.duration_ms,
                    &i64::from(outcome.tries),
                    &format!("claim of {} taken over", holder.id()),
                ],
            )?;
            tx.commit()?;
            return Err(anyhow::Error::new(LostClaim));
        };
        let recorded = match &outcome.result {
            Ok(fetched) => {
                let newest: Option<String> = tx
                    .query_opt(
                        "SELECT token FROM tokens WHERE account_id = $1 AND kind = $2
                         ORDER BY id DESC LIMIT 1",
                        &[&account_id, &kind],
                    )?
                    .map(|r| r.get(0));
                if newest.as_deref() == Some(fetched.token.as_str()) {
                    Recorded::Unchanged
                } else {
                    tx.execute(
                        "INSERT INTO tokens (account_id, kind, token, expires_in, fetched_at, expires_at)
                         VALUES ($1, $2, $3, $4::bigint, $5::bigint, $5::bigint + $4::bigint)",
                        &[&account_id, &kind, &fetched.token, &fetched.expires_in, &claimed_at],
                    )?;
                    Recorded::Inserted
                }
            }
            Err(_) => Recorded::Failed,
        };
        let a = attempt_columns(outcome, recorded == Recorded::Unchanged);
        tx.execute(
            &format!(
                "INSERT INTO attempts (account_id, kind, started_at, duration_ms, tries, outcome,
                                       errcode, errmsg, http_status, detail)
                 VALUES ($1, $2, {NOW} - $3::bigint / 1000, $3, $4, $5, $6, $7, $8, $9)"
            ),
            &[
                &account_id,
                &kind,
                &outcome.duration_ms,
                &i64::from(outcome.tries),
                &a.0,
                &a.1,
                &a.2,
                &a.3,
                &a.4,
            ],
        )?;
        if kind == ACCESS_TOKEN {
            tx.execute(
                "UPDATE accounts SET held_until = $2, held_reason = $3 WHERE id = $1",
                &[&account_id, &hold.map(|h| h.0), &hold.map(|h| h.1)],
            )?;
        }
        if release {
            tx.execute(
                "DELETE FROM claims WHERE account_id = $1 AND holder = $2",
                &[&account_id, &holder.id()],
            )?;
        }
        tx.commit()?;
        Ok(recorded)
    }

    // ---- claims ----

    /// Takes the account's lease for `ttl` seconds of server time, in one statement: it
    /// succeeds when nobody holds it, the lease expired, or we hold it already. A holder
    /// on this host whose process is gone is taken over at once; one on another host only
    /// when its lease expires (there is no way to probe a pid elsewhere).
    pub fn claim(&mut self, account_id: i64, holder: &Holder, ttl: i64) -> Result<Claim> {
        let taken = self.client.query_opt(
            &format!(
                "INSERT INTO claims AS c (account_id, holder, host, pid, claimed_at, expires_at)
                 VALUES ($1, $2, $3, $4, {NOW}, {NOW} + $5)
                 ON CONFLICT (account_id) DO UPDATE SET holder = EXCLUDED.holder,
                     host = EXCLUDED.host, pid = EXCLUDED.pid,
                     claimed_at = EXCLUDED.claimed_at, expires_at = EXCLUDED.expires_at
                 WHERE c.expires_at <= EXCLUDED.claimed_at OR c.holder = EXCLUDED.holder
                 RETURNING claimed_at"
            ),
            &[
                &account_id,
                &holder.id(),
                &holder.host,
                &i64::from(holder.pid),
                &ttl,
            ],
        )?;
        if taken.is_some() {
            return Ok(Claim::Claimed);
        }
        let current = self.client.query_opt(
            "SELECT holder, host, pid FROM claims WHERE account_id = $1",
            &[&account_id],
        )?;
        let Some(current) = current else {
            // Released between our two statements: try once more.
            return self.claim(account_id, holder, ttl);
        };
        let (other, host, pid): (String, String, i64) =
            (current.get(0), current.get(1), current.get(2));
        if host == holder.host && !crate::store::pid_alive(pid) {
            // Conditional on the dead holder, so that two takers cannot both win.
            let n = self.client.execute(
                &format!(
                    "UPDATE claims SET holder = $3, host = $4, pid = $5, claimed_at = {NOW},
                         expires_at = {NOW} + $6
                     WHERE account_id = $1 AND holder = $2"
                ),
                &[
                    &account_id,
                    &other,
                    &holder.id(),
                    &holder.host,
                    &i64::from(holder.pid),
                    &ttl,
                ],
            )?;
            if n == 1 {
                log::info!("taking over the claim of {other} on account {account_id} (dead)");
                return Ok(Claim::Claimed);
            }
        }
        Ok(Claim::Busy(other))
    }

    /// Gives a lease back without recording anything.
    pub fn release(&mut self, account_id: i64, holder: &Holder) -> Result<()> {
        self.client.execute(
            "DELETE FROM claims WHERE account_id = $1 AND holder = $2",
            &[&account_id, &holder.id()],
        )?;
        Ok(())
    }

    // ---- forced stable-token refreshes ----

    pub fn forced_refreshes(&mut self, account_id: i64, now: i64) -> Result<Vec<i64>> {
        let rows = self.client.query(
            "SELECT at FROM forced_refreshes WHERE account_id = $1 AND at > $2",
            &[&account_id, &(now - 2 * 86_400)],
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    pub fn note_forced_refresh(&mut self, account_id: i64, now: i64) -> Result<()> {
        self.client.execute(
            "INSERT INTO forced_refreshes (account_id, at) VALUES ($1, $2)",
            &[&account_id, &now],
        )?;
        Ok(())
    }

    // ---- retention ----

    /// As SQLite's prune, on the server's clock: token rows beyond the newest `keep` per
    /// account and kind unless still valid, attempts older than `attempt_age` seconds,
    /// old forced-refresh records, expired leases. Returns (tokens, attempts) deleted.
    pub fn prune(&mut self, keep: i64, attempt_age: i64) -> Result<(usize, usize)> {
        let mut tx = self.client.transaction()?;
        let tokens = tx.execute(
            &format!(
                "DELETE FROM tokens WHERE expires_at <= {NOW} AND id IN (
                     SELECT id FROM (
                         SELECT id, row_number() OVER (PARTITION BY account_id, kind ORDER BY id DESC) AS n
                         FROM tokens) ranked
                     WHERE n > $1)"
            ),
            &[&keep],
        )?;
        let attempts = tx.execute(
            &format!("DELETE FROM attempts WHERE started_at < {NOW} - $1"),
            &[&attempt_age],
        )?;
        tx.execute(
            &format!("DELETE FROM forced_refreshes WHERE at < {NOW} - 2 * 86400"),
            &[],
        )?;
        tx.execute(&format!("DELETE FROM claims WHERE expires_at < {NOW}"), &[])?;
        tx.commit()?;
        Ok((tokens as usize, attempts as usize))
    }

    /// The newest attempt of an account for `kind`, if any.
    pub fn last_attempt(&mut self, account_id: i64, kind: &str) -> Result<Option<AttemptRow>> {
        let row = self.client.query_opt(
            "SELECT started_at, duration_ms, tries, outcome, errcode, errmsg, http_status, detail
             FROM attempts WHERE account_id = $1 AND kind = $2 ORDER BY id DESC LIMIT 1",
            &[&account_id, &kind],
        )?;
        Ok(row.map(|r| AttemptRow {
            started_at: r.get(0),
            duration_ms: r.get(1),
            tries: r.get(2),
            outcome: r.get(3),
            errcode: r.get(4),
            errmsg: r.get(5),
            http_status: r.get(6),
            detail: r.get(7),
        }))
    }

    // ---- readers ----

    /// Lets `role` read tokens and nothing else: the newest-token view, the accounts
    /// (which hold no secret) and the schema version. Never the secrets, never a write.
    /// Returns the statements applied, for the operator's record.
    pub fn grant_reader(&mut self, role: &str) -> Result<Vec<String>> {
        let exists = self
            .client
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])?
            .is_some();
        if !exists {
            return Err(fail(
                exit::USAGE,
                format!(
                    "role '{}' does not exist on {}; create it first (CREATE ROLE ... LOGIN)",
                    crate::policy::one_line(role, 64),
                    self.config
                ),
            ));
        }
        let schema: String = self
            .client
            .query_one("SELECT current_schema()", &[])?
            .get(0);
        let statements = reader_grants(role, &schema);
        let mut tx = self.client.transaction()?;
        for sql in &statements {
            tx.batch_execute(sql)
                .with_context(|| format!("could not apply: {sql}"))?;
        }
        tx.commit()?;
        Ok(statements)
    }
}

/// A server error as one line: the client's own `Display` says only "db error".
pub struct DbText(pub String);

impl From<postgres::Error> for DbText {
    fn from(e: postgres::Error) -> DbText {
        DbText(match e.as_db_error() {
            Some(db) => format!("{}: {}", db.severity().to_lowercase(), db.message()),
            None => e.to_string(),
        })
    }
}

impl From<&str> for DbText {
    fn from(e: &str) -> DbText {
        DbText(e.to_string())
    }
}

/// The GRANTs that make `role` a reader of the tables in `schema`. Built as text because
/// GRANT takes no parameters; names are quoted as identifiers.
pub fn reader_grants(role: &str, schema: &str) -> Vec<String> {
    let (role, schema) = (quote_ident(role), quote_ident(schema));
    vec![
        format!("GRANT USAGE ON SCHEMA {schema} TO {role}"),
        format!(
            "GRANT SELECT ON {schema}.latest_tokens, {schema}.accounts, {schema}.schema_migrations TO {role}"
        ),
    ]
}

/// `"name"`, with inner quotes doubled: safe for any role name.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The columns an attempt row stores for an outcome.
type AttemptColumns = (
    &'static str,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<String>,
);

fn attempt_columns(o: &Outcome, unchanged: bool) -> AttemptColumns {
    match &o.result {
        Ok(_) if unchanged => ("unchanged", None, None, None, None),
        Ok(_) => ("ok", None, None, None, None),
        Err(Failure::WeChat { errcode, errmsg }) => {
            ("errcode", Some(*errcode), Some(errmsg.clone()), None, None)
        }
        Err(Failure::Http { status }) => ("http", None, None, Some(i64::from(*status)), None),
        Err(Failure::Transport(d)) => ("transport", None, None, None, Some(d.clone())),
        Err(Failure::NotJson(d)) => ("not_json", None, None, None, Some(d.clone())),
        Err(Failure::Invalid(d)) => ("invalid", None, None, None, Some(d.clone())),
    }
}

fn already_exists(key: &AccountKey) -> anyhow::Error {
    fail(
        exit::ACCOUNT,
        format!(
            "account {key} already exists; use `wxtoken account set-secret` to change its secret"
        ),
    )
}

fn no_such_account(key: &AccountKey) -> anyhow::Error {
    fail(
        exit::ACCOUNT,
        format!("no such account {key} (see wxtoken account list)"),
    )
}

#[cfg(test)]
#[path = "../tests/support/pg.rs"]
pub(crate) mod pgtest;

#[cfg(test)]
mod tests {
    use super::pgtest::{self, PgDb};
    use super::*;
    use crate::wechat::Fetched;

    fn store(db: &PgDb) -> PgStore {
        PgStore::open(&PgConfig::from_env(&db.url).unwrap()).unwrap()
    }

    fn outcome(token: &str) -> Outcome {
        Outcome {
            result: Ok(Fetched {
                token: token.to_string(),
                expires_in: 7200,
            }),
            tries: 1,
            sent_at: 0,
            started_at: 0,
            duration_ms: 5,
        }
    }

    fn with_account(db: &PgDb) -> (PgStore, i64) {
        let mut s = store(db);
        let key = AccountKey::appid("wxa");
        s.add_account(&key, Api::Token, &Secret::new("s3cret".into()), &[], 1)
            .unwrap();
        let id = s.account(&key).unwrap().unwrap().id;
        (s, id)
    }

    fn host(name: &str) -> Holder {
        Holder::new(name.to_string(), std::process::id())
    }

    macro_rules! pg {
        () => {
            match pgtest::server() {
                Some(s) => s.create_db(),
                None => return,
            }
        };
    }

    #[test]
    fn hosts_migrating_at_once_apply_each_migration_once() {
        let db = pg!();
        let url = db.url.clone();
        let opened: Vec<bool> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..6)
                .map(|_| {
                    let url = url.clone();
                    scope.spawn(move || PgStore::open(&PgConfig::from_env(&url).unwrap()).is_ok())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(opened, vec![true; 6]);
        assert_eq!(
            db.query("SELECT string_agg(version::text, ',') FROM schema_migrations"),
            (1..=MIGRATIONS.len())
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let db = pg!();
        drop(store(&db));
        db.query("INSERT INTO schema_migrations (version) VALUES (99)");
        let config = PgConfig::from_env(&db.url).unwrap();
        for err in [
            PgStore::open(&config).err().unwrap(),
            PgStore::open_readonly(&config).err().unwrap(),
        ] {
            assert_eq!(exit::code_of(&err), exit::DATABASE);
            assert!(
                format!("{err:#}").contains("newer than this wxtoken"),
                "{err:#}"
            );
        }
    }

    #[test]
    fn a_database_with_someone_elses_accounts_table_is_left_alone() {
        let db = pg!();
        db.query("CREATE TABLE accounts (name text)");
        let err = PgStore::open(&PgConfig::from_env(&db.url).unwrap())
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("did not create"), "{err:#}");
        assert_eq!(db.query("SELECT to_regclass('tokens') IS NULL"), "t");
    }

    #[test]
    fn thirty_hosts_claiming_one_account_get_one_lease() {
        let db = pg!();
        let (_, id) = with_account(&db);
        let url = db.url.clone();
        let claimed = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..30)
                .map(|i| {
                    let url = url.clone();
                    scope.spawn(move || {
                        let mut s = PgStore::open(&PgConfig::from_env(&url).unwrap()).unwrap();
                        s.claim(id, &host(&format!("host{i}")), 60).unwrap() == Claim::Claimed
                    })
                })
                .collect();
            handles
                .into_iter()
                .filter(|_| true)
                .map(|h| h.join().unwrap())
                .filter(|&c| c)
                .count()
        });
        assert_eq!(claimed, 1);
    }

    #[test]
    fn a_live_lease_on_another_host_blocks_until_it_expires_even_if_its_pid_is_unused() {
        let db = pg!();
        let (mut s, id) = with_account(&db);
        // A pid that no process has here: only a same-host holder may be probed.
        let far = Holder::new("far-away".into(), u32::MAX - 1);
        assert_eq!(s.claim(id, &far, 60).unwrap(), Claim::Claimed);
        let near = host("near");
        assert_eq!(
            s.claim(id, &near, 60).unwrap(),
            Claim::Busy(far.id().into())
        );
        // Expired on the server's clock: now it can be taken.
        db.query("UPDATE claims SET expires_at = extract(epoch from now())::bigint");
        assert_eq!(s.claim(id, &near, 60).unwrap(), Claim::Claimed);
    }

    #[test]
    fn a_dead_holder_on_this_host_is_taken_over_at_once() {
        let db = pg!();
        let (mut s, id) = with_account(&db);
        let me = host("here");
        let dead = Holder::new("here".into(), u32::MAX - 1);
        assert_eq!(s.claim(id, &dead, 600).unwrap(), Claim::Claimed);
        assert_eq!(s.claim(id, &me, 600).unwrap(), Claim::Claimed);
        assert_eq!(db.query("SELECT holder FROM claims"), me.id());
    }

    #[test]
    fn a_holder_that_lost_its_lease_drops_its_token_and_says_so() {
        let db = pg!();
        let (mut s, id) = with_account(&db);
        let (a, b) = (host("a"), host("b"));
        assert_eq!(s.claim(id, &a, 60).unwrap(), Claim::Claimed);
        db.query("UPDATE claims SET expires_at = 0");
        assert_eq!(s.claim(id, &b, 60).unwrap(), Claim::Claimed);
        let err = s
            .record_fetch(id, ACCESS_TOKEN, &outcome("TOKEN-A"), None, &a, true)
            .unwrap_err();
        assert!(err.downcast_ref::<LostClaim>().is_some(), "{err:#}");
        assert_eq!(db.query_i64("SELECT count(*) FROM tokens"), 0);
        assert_eq!(db.query("SELECT outcome FROM attempts"), "lost_claim");
        // The lease is still b's, and b records normally.
        let recorded = s
            .record_fetch(id, ACCESS_TOKEN, &outcome("TOKEN-B"), None, &b, true)
            .unwrap();
        assert_eq!(recorded, Recorded::Inserted);
        assert_eq!(db.query("SELECT token FROM tokens"), "TOKEN-B");
        assert_eq!(db.query_i64("SELECT count(*) FROM claims"), 0);
    }

    #[test]
    fn token_times_come_from_the_servers_clock() {
        let db = pg!();
        let (mut s, id) = with_account(&db);
        let a = host("a");
        s.claim(id, &a, 60).unwrap();
        // The lease says when the fetch started, whatever this host's clock says.
        db.query("UPDATE claims SET claimed_at = 1000");
        let mut o = outcome("T");
        o.sent_at = 5_000_000_000;
        s.record_fetch(id, ACCESS_TOKEN, &o, None, &a, true)
            .unwrap();
        let (row, now) = s
            .latest_token(&AccountKey::appid("wxa"), ACCESS_TOKEN)
            .unwrap();
        let row = row.unwrap();
        assert_eq!((row.fetched_at, row.expires_at), (1000, 8200));
        assert_eq!(
            now,
            db.query_i64("SELECT extract(epoch from now())::bigint")
        );
        let (none, _) = s
            .latest_token(&AccountKey::appid("nope"), ACCESS_TOKEN)
            .unwrap();
        assert_eq!(none, None);
    }

    #[test]
    fn a_reader_reads_tokens_but_no_secret_and_writes_nothing() {
        let db = pg!();
        let (mut s, id) = with_account(&db);
        let a = host("a");
        s.claim(id, &a, 60).unwrap();
        s.record_fetch(id, ACCESS_TOKEN, &outcome("TOKEN-1"), None, &a, true)
            .unwrap();
        let role = format!("{}_reader", db.name);
        db.query(&format!("CREATE ROLE {role} LOGIN"));
        let applied = s.grant_reader(&role).unwrap();
        assert!(
            applied.iter().all(|g| !g.contains("account_secrets")),
            "{applied:?}"
        );

        let url = format!("{}&user={role}", db.url.replace("&user=postgres", ""));
        let mut reader = PgStore::open_readonly(&PgConfig::from_env(&url).unwrap()).unwrap();
        let (row, _) = reader
            .latest_token(&AccountKey::appid("wxa"), ACCESS_TOKEN)
            .unwrap();
        assert_eq!(row.unwrap().token, "TOKEN-1");
        for sql in [
            "SELECT secret FROM account_secrets",
            "SELECT * FROM account_secrets",
            "SELECT token FROM tokens",
            "INSERT INTO tokens (account_id, token, expires_in, fetched_at, expires_at) VALUES (1, 'x', 1, 1, 1)",
            "UPDATE accounts SET enabled = false",
            "DELETE FROM claims",
        ] {
            let (ok, _, err) = db.server.psql_as(&role, &db.name, sql);
            assert!(!ok && err.contains("permission denied"), "{sql}: {err}");
        }
        let (ok, out, _) = db.server.psql_as(&role, &db.name, "SELECT * FROM accounts");
        assert!(ok && !out.contains("s3cret"), "{out}");
    }

    #[test]
    fn reader_grants_quote_the_role() {
        let g = reader_grants("we\"ird", "public");
        assert_eq!(g[0], "GRANT USAGE ON SCHEMA \"public\" TO \"we\"\"ird\"");
    }
}
