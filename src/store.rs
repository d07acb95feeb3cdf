//! The store: the only module that owns SQL. One SQLite file holds accounts, the
//! insert-only token history and every fetch attempt.

use std::fmt;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::exit::{self, fail};
use crate::secret::Secret;
use crate::wechat::{Api, Failure, Fetched, Outcome, Ticket};

/// Every migration, in order. The schema version is `PRAGMA user_version` = how many of
/// these have been applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_init.sql"),
    include_str!("../migrations/0002_claims_holds.sql"),
    include_str!("../migrations/0003_tickets.sql"),
];

/// How long a connection waits for another process's write before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The kind of every access token row; tickets get kinds of their own.
pub const ACCESS_TOKEN: &str = "access_token";

/// How an account is addressed: an appid, or a WeCom corpid plus agentid (or module name).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccountKey {
    pub appid: String,
    /// Empty for Official Accounts and Mini Programs.
    pub agent: String,
}

impl AccountKey {
    pub fn appid(appid: &str) -> AccountKey {
        AccountKey {
            appid: appid.to_string(),
            agent: String::new(),
        }
    }
}

impl fmt::Display for AccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.agent.is_empty() {
            f.write_str(&self.appid)
        } else {
            write!(f, "{}/{}", self.appid, self.agent)
        }
    }
}

#[derive(Debug, Clone)]
pub struct Account {
    pub id: i64,
    pub key: AccountKey,
    pub api: Api,
    pub secret: Secret,
    pub enabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
    /// Refresh skips the account until this Unix time (`policy::UNTIL_FIXED`: until its
    /// configuration changes).
    pub held_until: Option<i64>,
    pub held_reason: Option<String>,
    /// The JS-SDK tickets fetched right after each new token.
    pub tickets: Vec<Ticket>,
}

/// Who holds a claim: this process on this host. The nonce tells apart two runs that got
/// the same pid after a reboot.
#[derive(Debug, Clone)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    id: String,
}

impl Holder {
    /// This process, on this host: `WXTOKEN_HOST` if set (for hosts that share a
    /// hostname, such as containers, against one PostgreSQL store), else the hostname.
    pub fn current() -> Holder {
        let host = std::env::var("WXTOKEN_HOST")
            .ok()
            .filter(|h| !h.trim().is_empty())
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .or_else(|_| std::fs::read_to_string("/etc/hostname"))
                    .ok()
            })
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_string());
        Holder::new(host, std::process::id())
    }

    pub fn new(host: String, pid: u32) -> Holder {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let id = format!("{host}:{pid}:{nanos:08x}");
        Holder { host, pid, id }
    }

    /// `host:pid:nonce`: unique to this run.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// The result of trying to claim an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    Claimed,
    /// Another live holder has it (its id).
    Busy(String),
}

/// What a recorded fetch did to the token history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Inserted,
    /// WeChat handed back the token that is already newest; no row was added.
    Unchanged,
    Failed,
}

/// One row of the token history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub token: String,
    pub expires_in: i64,
    pub fetched_at: i64,
    pub expires_at: i64,
}

/// The newest attempt of an account, as `status` shows it.
#[derive(Debug, Clone)]
pub struct AttemptRow {
    pub started_at: i64,
    pub duration_ms: i64,
    pub tries: i64,
    pub outcome: String,
    pub errcode: Option<i64>,
    pub errmsg: Option<String>,
    pub http_status: Option<i64>,
    pub detail: Option<String>,
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Opens the database for writing, creating it (mode 0600) if it does not exist, and
    /// applies pending migrations.
    pub fn open(path: &Path) -> Result<Store> {
        check_dir(path)?;
        if !path.exists() {
            // Created here, not by SQLite, so that it is 0600 from its first byte.
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .or_else(|e| match e.kind() {
                    std::io::ErrorKind::AlreadyExists => OpenOptions::new().read(true).open(path),
                    _ => Err(e),
                })
                .with_context(|| format!("could not create database {}", path.display()))
                .map_err(|e| db_error(e, path))?;
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| db_error(e, path))?;
        let store = Store {
            conn,
            path: path.to_path_buf(),
        };
        store.configure(true)?;
        store.migrate()?;
        Ok(store)
    }

    /// Opens an existing database read-only, for `get`: no migration, no write, no lock.
    pub fn open_readonly(path: &Path) -> Result<Store> {
        if !path.exists() {
            return Err(fail(
                exit::DATABASE,
                format!(
                    "database {} does not exist; add an account first (wxtoken account add)",
                    path.display()
                ),
            ));
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| db_error(e, path))?;
        let store = Store {
            conn,
            path: path.to_path_buf(),
        };
        let version = store.configure(false)?;
        if version != MIGRATIONS.len() as i64 {
            store.check_version(version)?;
            return Err(fail(
                exit::DATABASE,
                format!(
                    "database {} has schema version {version}, this wxtoken needs {}; \
                     run any writing command (e.g. wxtoken status) once to upgrade it",
                    path.display(),
                    MIGRATIONS.len()
                ),
            ));
        }
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets the connection up and returns the schema version. Reading the version first
    /// proves the file is an SQLite database before anything is written to it.
    fn configure(&self, write: bool) -> Result<i64> {
        let path = &self.path;
        self.conn
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| db_error(e, path))?;
        let version = self.user_version()?;
        if write {
            for (pragma, value) in [
                ("journal_mode", "WAL"),
                ("synchronous", "NORMAL"),
                ("foreign_keys", "ON"),
            ] {
                self.conn
                    .pragma_update(None, pragma, value)
                    .map_err(|e| db_error(e, path))?;
            }
        }
        Ok(version)
    }

    fn user_version(&self) -> Result<i64> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| db_error(e, &self.path))
    }

    fn check_version(&self, version: i64) -> Result<()> {
        if version > MIGRATIONS.len() as i64 {
            return Err(fail(
                exit::DATABASE,
                format!(
                    "database {} has schema version {version}, newer than this wxtoken \
                     understands ({}); upgrade wxtoken",
                    self.path.display(),
                    MIGRATIONS.len()
                ),
            ));
        }
        Ok(())
    }

    /// Applies every pending migration and the version bump in one transaction.
    fn migrate(&self) -> Result<()> {
        let path = &self.path;
        if self.user_version()? == MIGRATIONS.len() as i64 {
            return Ok(());
        }
        let tx = Transaction::immediate(&self.conn, path)?;
        // Read again under the write lock: another process may have migrated meanwhile.
        let version = self.user_version()?;
        self.check_version(version)?;
        if version == 0 {
            let tables: i64 = self
                .conn
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
                    [],
                    |r| r.get(0),
                )
                .map_err(|e| db_error(e, path))?;
            if tables > 0 {
                return Err(fail(
                    exit::DATABASE,
                    format!(
                        "{} is an SQLite database but not a wxtoken one; refusing to touch it",
                        path.display()
                    ),
                ));
            }
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            self.conn
                .execute_batch(sql)
                .with_context(|| format!("migration {} failed", i + 1))?;
        }
        self.conn
            .pragma_update(None, "user_version", MIGRATIONS.len() as i64)
            .map_err(|e| db_error(e, path))?;
        tx.commit()
    }

    // ---- accounts ----

    pub fn add_account(
        &self,
        key: &AccountKey,
        api: Api,
        secret: &Secret,
        tickets: &[Ticket],
        now: i64,
    ) -> Result<()> {
        let tickets: Vec<&str> = tickets.iter().map(|t| t.as_str()).collect();
        let inserted = self
            .conn
            .execute(
                "INSERT INTO accounts (appid, agent, api, secret, enabled, created_at, updated_at, tickets)
                 VALUES (?1, ?2, ?3, ?4, 1, ?5, ?5, ?6)
                 ON CONFLICT (appid, agent) DO NOTHING",
                params![key.appid, key.agent, api.as_str(), secret.expose(), now, tickets.join(",")],
            )
            .map_err(|e| db_error(e, &self.path))?;
        if inserted == 0 {
            return Err(already_exists(key));
        }
        Ok(())
    }

    /// Fails with the "already exists" error if the account exists.
    pub fn ensure_absent(&self, key: &AccountKey) -> Result<()> {
        match self.account(key)? {
            Some(_) => Err(already_exists(key)),
            None => Ok(()),
        }
    }

    const ACCOUNT_COLUMNS: &'static str = "id, appid, agent, api, secret, enabled, created_at, updated_at, held_until, held_reason, tickets";

    fn account_from_row(row: &rusqlite::Row) -> rusqlite::Result<Account> {
        let api: String = row.get(3)?;
        Ok(Account {
            id: row.get(0)?,
            key: AccountKey {
                appid: row.get(1)?,
                agent: row.get(2)?,
            },
            api: Api::parse(&api).unwrap_or(Api::Token),
            secret: Secret::new(row.get(4)?),
            enabled: row.get(5)?,
            created_at: row.get(6)?,
            updated_at: row.get(7)?,
            held_until: row.get(8)?,
            held_reason: row.get(9)?,
            tickets: parse_tickets(&row.get::<_, String>(10)?),
        })
    }

    /// Every account, ordered by appid then agent.
    pub fn accounts(&self) -> Result<Vec<Account>> {
        let sql = format!(
            "SELECT {} FROM accounts ORDER BY appid, agent",
            Self::ACCOUNT_COLUMNS
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map([], Self::account_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn account(&self, key: &AccountKey) -> Result<Option<Account>> {
        let sql = format!(
            "SELECT {} FROM accounts WHERE appid = ?1 AND agent = ?2",
            Self::ACCOUNT_COLUMNS
        );
        Ok(self
            .conn
            .query_row(&sql, params![key.appid, key.agent], Self::account_from_row)
            .optional()?)
    }

    /// The account, or the "no such account" error every account command gives.
    pub fn require_account(&self, key: &AccountKey) -> Result<Account> {
        self.account(key)?.ok_or_else(|| no_such_account(key))
    }

    /// Removes an account with its whole history.
    pub fn remove_account(&self, key: &AccountKey) -> Result<()> {
        let n = self.conn.execute(
            "DELETE FROM accounts WHERE appid = ?1 AND agent = ?2",
            params![key.appid, key.agent],
        )?;
        if n == 0 {
            return Err(no_such_account(key));
        }
        Ok(())
    }

    pub fn set_enabled(&self, key: &AccountKey, enabled: bool, now: i64) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE accounts SET enabled = ?3, updated_at = ?4,
                    held_until = NULL, held_reason = NULL
             WHERE appid = ?1 AND agent = ?2",
            params![key.appid, key.agent, enabled, now],
        )?;
        if n == 0 {
            return Err(no_such_account(key));
        }
        Ok(())
    }

    /// Sets which JS-SDK tickets refresh fetches for this account.
    pub fn set_tickets(&self, key: &AccountKey, tickets: &[Ticket], now: i64) -> Result<()> {
        let list: Vec<&str> = tickets.iter().map(|t| t.as_str()).collect();
        let n = self.conn.execute(
            "UPDATE accounts SET tickets = ?3, updated_at = ?4 WHERE appid = ?1 AND agent = ?2",
            params![key.appid, key.agent, list.join(","), now],
        )?;
        if n == 0 {
            return Err(no_such_account(key));
        }
        Ok(())
    }

    pub fn set_secret(&self, key: &AccountKey, secret: &Secret, now: i64) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE accounts SET secret = ?3, updated_at = ?4,
                    held_until = NULL, held_reason = NULL
             WHERE appid = ?1 AND agent = ?2",
            params![key.appid, key.agent, secret.expose(), now],
        )?;
        if n == 0 {
            return Err(no_such_account(key));
        }
        Ok(())
    }

    // ---- tokens ----

    /// The newest token of an account (of `kind`), valid or not. `Ok(None)` means the
    /// account has none; `get` tells an unknown account apart with `account`.
    pub fn latest_token(&self, key: &AccountKey, kind: &str) -> Result<Option<TokenRow>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT t.token, t.expires_in, t.fetched_at, t.expires_at
             FROM accounts a JOIN tokens t ON t.account_id = a.id AND t.kind = ?3
             WHERE a.appid = ?1 AND a.agent = ?2
             ORDER BY t.id DESC LIMIT 1",
        )?;
        Ok(stmt
            .query_row(params![key.appid, key.agent, kind], |r| {
                Ok(TokenRow {
                    token: r.get(0)?,
                    expires_in: r.get(1)?,
                    fetched_at: r.get(2)?,
                    expires_at: r.get(3)?,
                })
            })
            .optional()?)
    }

    /// Records a fetch in one transaction, so that a crash leaves all of it or none: the
    /// new row (unless WeChat handed back the newest one again), the attempt, for a token
    /// the account's hold (`None` clears it), and the release of the claim if asked.
    pub fn record_fetch(
        &self,
        account_id: i64,
        kind: &str,
        outcome: &Outcome,
        hold: Option<(i64, &str)>,
        release: Option<&Holder>,
    ) -> Result<Recorded> {
        let tx = Transaction::immediate(&self.conn, &self.path)?;
        let recorded = match &outcome.result {
            Ok(fetched) => {
                let newest: Option<String> = self
                    .conn
                    .prepare_cached(
                        "SELECT token FROM tokens WHERE account_id = ?1 AND kind = ?2
                         ORDER BY id DESC LIMIT 1",
                    )?
                    .query_row(params![account_id, kind], |r| r.get(0))
                    .optional()?;
                if newest.as_deref() == Some(fetched.token.as_str()) {
                    Recorded::Unchanged
                } else {
                    self.insert_token(account_id, kind, fetched, outcome.sent_at)?;
                    Recorded::Inserted
                }
            }
            Err(_) => Recorded::Failed,
        };
        self.insert_attempt(account_id, kind, outcome, recorded == Recorded::Unchanged)?;
        if kind == ACCESS_TOKEN {
            self.conn
                .prepare_cached(
                    "UPDATE accounts SET held_until = ?2, held_reason = ?3 WHERE id = ?1",
                )?
                .execute(params![account_id, hold.map(|h| h.0), hold.map(|h| h.1)])?;
        }
        if let Some(holder) = release {
            self.release_in_tx(account_id, holder)?;
        }
        tx.commit()?;
        Ok(recorded)
    }

    // ---- claims ----

    /// Claims an account for fetching, atomically across processes. A claim that expired,
    /// or whose holder on this host is no longer running, is taken over.
    pub fn claim(&self, account_id: i64, holder: &Holder, now: i64, ttl: i64) -> Result<Claim> {
        let tx = Transaction::immediate(&self.conn, &self.path)?;
        let current: Option<(String, String, i64, i64)> = self
            .conn
            .prepare_cached(
                "SELECT holder, host, pid, expires_at FROM claims WHERE account_id = ?1",
            )?
            .query_row(params![account_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()?;
        if let Some((id, host, pid, expires_at)) = current {
            let dead = host == holder.host && !pid_alive(pid);
            if expires_at > now && !dead && id != holder.id {
                return Ok(Claim::Busy(id));
            }
            if id != holder.id {
                log::info!(
                    "taking over the claim of {id} on account {account_id} (expired or dead)"
                );
            }
        }
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO claims (account_id, holder, host, pid, claimed_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![account_id, holder.id, holder.host, holder.pid, now, now + ttl])?;
        tx.commit()?;
        Ok(Claim::Claimed)
    }

    /// Gives a claim back without recording anything (nothing needed fetching).
    pub fn release(&self, account_id: i64, holder: &Holder) -> Result<()> {
        self.release_in_tx(account_id, holder)
    }

    fn release_in_tx(&self, account_id: i64, holder: &Holder) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM claims WHERE account_id = ?1 AND holder = ?2")?
            .execute(params![account_id, holder.id])?;
        Ok(())
    }

    // ---- forced stable-token refreshes ----

    /// When this account's forced refreshes happened, over the last two days.
    pub fn forced_refreshes(&self, account_id: i64, now: i64) -> Result<Vec<i64>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT at FROM forced_refreshes WHERE account_id = ?1 AND at > ?2")?;
        let rows = stmt.query_map(params![account_id, now - 2 * 86_400], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn note_forced_refresh(&self, account_id: i64, now: i64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO forced_refreshes (account_id, at) VALUES (?1, ?2)",
            params![account_id, now],
        )?;
        Ok(())
    }

    // ---- retention ----

    /// Deletes token rows beyond the newest `keep` per account and kind, except those still
    /// valid; attempts older than `attempts_before`; forced-refresh records older than two
    /// days; expired claims. Returns (tokens, attempts) deleted.
    pub fn prune(&self, now: i64, keep: i64, attempts_before: i64) -> Result<(usize, usize)> {
        let tx = Transaction::immediate(&self.conn, &self.path)?;
        let tokens = self.conn.execute(
            "DELETE FROM tokens WHERE expires_at <= ?1 AND id IN (
                 SELECT id FROM (
                     SELECT id, row_number() OVER (PARTITION BY account_id, kind ORDER BY id DESC) AS n
                     FROM tokens)
                 WHERE n > ?2)",
            params![now, keep],
        )?;
        let attempts = self.conn.execute(
            "DELETE FROM attempts WHERE started_at < ?1",
            params![attempts_before],
        )?;
        self.conn.execute(
            "DELETE FROM forced_refreshes WHERE at < ?1",
            params![now - 2 * 86_400],
        )?;
        self.conn
            .execute("DELETE FROM claims WHERE expires_at < ?1", params![now])?;
        tx.commit()?;
        Ok((tokens, attempts))
    }

    fn insert_token(
        &self,
        account_id: i64,
        kind: &str,
        f: &Fetched,
        fetched_at: i64,
    ) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO tokens (account_id, kind, token, expires_in, fetched_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                account_id,
                kind,
                f.token,
                f.expires_in,
                fetched_at,
                fetched_at + f.expires_in
            ])?;
        Ok(())
    }

    fn insert_attempt(
        &self,
        account_id: i64,
        kind: &str,
        o: &Outcome,
        unchanged: bool,
    ) -> Result<()> {
        let (outcome, errcode, errmsg, http_status, detail) = match &o.result {
            Ok(_) if unchanged => ("unchanged", None, None, None, None),
            Ok(_) => ("ok", None, None, None, None),
            Err(Failure::WeChat { errcode, errmsg }) => {
                ("errcode", Some(*errcode), Some(errmsg.clone()), None, None)
            }
            Err(Failure::Http { status }) => ("http", None, None, Some(i64::from(*status)), None),
            Err(Failure::Transport(d)) => ("transport", None, None, None, Some(d.clone())),
            Err(Failure::NotJson(d)) => ("not_json", None, None, None, Some(d.clone())),
            Err(Failure::Invalid(d)) => ("invalid", None, None, None, Some(d.clone())),
        };
        self.conn
            .prepare_cached(
                "INSERT INTO attempts (account_id, kind, started_at, duration_ms, tries, outcome,
                                       errcode, errmsg, http_status, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                account_id,
                kind,
                o.started_at,
                o.duration_ms,
                o.tries,
                outcome,
                errcode,
                errmsg,
                http_status,
                detail
            ])?;
        Ok(())
    }

    /// The newest attempt of an account for `kind` (a token or a ticket), if any.
    pub fn last_attempt(&self, account_id: i64, kind: &str) -> Result<Option<AttemptRow>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT started_at, duration_ms, tries, outcome, errcode, errmsg, http_status, detail
             FROM attempts WHERE account_id = ?1 AND kind = ?2 ORDER BY id DESC LIMIT 1",
        )?;
        Ok(stmt
            .query_row(params![account_id, kind], |r| {
                Ok(AttemptRow {
                    started_at: r.get(0)?,
                    duration_ms: r.get(1)?,
                    tries: r.get(2)?,
                    outcome: r.get(3)?,
                    errcode: r.get(4)?,
                    errmsg: r.get(5)?,
                    http_status: r.get(6)?,
                    detail: r.get(7)?,
                })
            })
            .optional()?)
    }
}

/// A transaction that takes the write lock up front (BEGIN IMMEDIATE), so that a writer
/// waits in the busy handler instead of failing halfway. Rolls back on drop.
struct Transaction<'c> {
    conn: &'c Connection,
    done: bool,
}

impl<'c> Transaction<'c> {
    fn immediate(conn: &'c Connection, path: &Path) -> Result<Transaction<'c>> {
        conn.execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| db_error(e, path))?;
        Ok(Transaction { conn, done: false })
    }

    fn commit(mut self) -> Result<()> {
        self.conn.execute_batch("COMMIT")?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

/// Unknown names are dropped: a newer wxtoken may know more kinds than this one.
fn parse_tickets(list: &str) -> Vec<Ticket> {
    list.split(',').filter_map(Ticket::parse).collect()
}

/// Whether a process runs on this host. A zombie (killed, not yet reaped) counts as dead.
pub(crate) fn pid_alive(pid: i64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself hold ')'.
        Ok(stat) => {
            !matches!(stat.rsplit(')').next().map(str::trim_start), Some(s) if s.starts_with('Z') || s.starts_with('X'))
        }
        Err(_) => !std::path::Path::new("/proc/self").exists(),
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

/// The directory must exist: a typo in --db should not scatter databases around.
fn check_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => return Ok(()),
    };
    if !dir.is_dir() {
        return Err(fail(
            exit::DATABASE,
            format!(
                "database directory {} does not exist; create it or choose another path with --db",
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// Every database failure names the file and exits with `DATABASE`.
fn db_error(err: impl fmt::Display, path: &Path) -> anyhow::Error {
    let text = err.to_string();
    let reason = if text.contains("file is not a database") {
        "not an SQLite database (left untouched)".to_string()
    } else {
        text
    };
    fail(
        exit::DATABASE,
        format!("could not use database {}: {reason}", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_applies_to_an_empty_database() {
        let conn = Connection::open_in_memory().unwrap();
        for sql in MIGRATIONS {
            conn.execute_batch(sql).unwrap();
        }
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type='table'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(tables >= 3);
    }
}
