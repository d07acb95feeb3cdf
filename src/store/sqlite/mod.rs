//! The SQLite backend: one file, and the only module that knows SQLite's SQL, paths,
//! PRAGMAs and file rules (`readers`, `../filesafety`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::filesafety::{self, Access};
use super::rows::{
    AccountColumns, DUE_FROM_TOKENS, ImportedAccount, new_account_columns, plan_record, resealed,
    ticket_list,
};
use super::schema;
use super::{
    AccountRows, AttemptColumns, Claim, Exported, ForcedRefreshes, Holder, Newest, Opener,
    PlatformCrypto, PlatformEvent, PlatformTicket, RUN_COLUMNS, ReadStore, Recorded, Result,
    RunRow, SUCCESSFUL_RUNS, SealedSample, SinkRow, Sinks, Store, StoreError, TenantGroup,
    TicketStored, all_kinds, not_empty, parse_kind, pid_alive, seal_secret,
};
use crate::domain::{
    Account, AccountKey, Attempt, Credential, FetchRecord, Fetched, NewAccount, Outcome, Secret,
    Ticket, TokenRow,
};
use crate::freshness::Stored;
use crate::policy;

mod platforms;
pub(crate) mod readers;
mod reports;
mod sinks;

/// Every migration, in order. The schema version is `PRAGMA user_version` = how many of
/// these have been applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../../../migrations/0001_init.sql"),
    include_str!("../../../migrations/0002_claims_holds.sql"),
    include_str!("../../../migrations/0003_tickets.sql"),
    include_str!("../../../migrations/0004_quota.sql"),
    include_str!("../../../migrations/0005_runs.sql"),
    include_str!("../../../migrations/0006_sinks.sql"),
    include_str!("../../../migrations/0007_intents.sql"),
    include_str!("../../../migrations/0008_platforms.sql"),
    include_str!("../../../migrations/0009_due.sql"),
];

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> StoreError {
        classify(err.sqlite_error_code(), err.to_string())
    }
}

fn classify(code: Option<rusqlite::ErrorCode>, text: String) -> StoreError {
    use rusqlite::ErrorCode as C;
    match code {
        Some(C::DatabaseBusy | C::DatabaseLocked) => StoreError::Busy(text),
        Some(C::NotADatabase | C::DatabaseCorrupt) => StoreError::Corrupt(text),
        Some(C::DiskFull) => StoreError::Io(text.replace(
            "database or disk is full",
            "disk full (free some space on the filesystem that holds the database)",
        )),
        // A file, directory or mount this user may only read: a reading command can still
        // open it read-only.
        Some(C::ReadOnly) => StoreError::ReadOnly(text),
        _ => StoreError::Io(text),
    }
}

/// The SQLite backend: one file.
pub(super) struct Sqlite {
    conn: Connection,
    path: PathBuf,
    holder: Holder,
    /// For a database read in place without SQLite's shared memory (a read-only directory
    /// or mount): the file's size and modification time when it was opened.
    immutable: Option<FileStamp>,
    /// Secrets were replaced inside `with_secrets_lock`'s transaction: the file is
    /// rebuilt (`scrub`) once it commits, since VACUUM cannot run inside it.
    scrub_after: std::cell::Cell<bool>,
    /// What secrets are sealed and opened with (`keys::Keys`).
    keys: crate::keys::Keys,
}

/// What tells a changed file: its size and its modification time, to the nanosecond.
type FileStamp = (u64, i64, i64);

fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.mtime(), m.mtime_nsec()))
}

impl Drop for Sqlite {
    fn drop(&mut self) {
        if !self.conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(true) {
            crate::store::readers::empty_wal_on_close(&self.conn);
        }
    }
}

impl Sqlite {
    /// Opens the database for writing, creating it (mode 0600) if it does not exist, and
    /// applies pending migrations. A file that is not this user's alone is refused (see
    /// `filesafety`), and so is a zero-byte file: wxtoken never leaves one, so someone else
    /// put it there.
    pub(super) fn open(path: &Path, holder: Holder) -> Result<Sqlite> {
        if let Some(refusal) = crate::store::readers::read_only_refusal(path) {
            // ReadOnly: a command that only reads falls back to a reading handle.
            return Err(StoreError::ReadOnly(refusal));
        }
        check_dir(path)?;
        let is_link = match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                create(path)?;
                false
            }
            Err(e) => return Err(io_error(e, path)),
            Ok(meta) => meta.file_type().is_symlink(),
        };
        filesafety::check(path, Access::Write).map_err(StoreError::Io)?;
        if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
            return Err(StoreError::Io(format!(
                "refusing {}: it is an empty file that wxtoken did not create; if it is yours, \
                 remove it and run the command again",
                path.display()
            )));
        }
        let store = Sqlite::connect(path, holder, true)?;
        let version = store.configure(true)?;
        if is_link && version != MIGRATIONS.len() as i64 {
            return Err(StoreError::Io(format!(
                "refusing {}: it is a symbolic link, and wxtoken creates and migrates a \
                 database only at its real path; point --db / WXTOKEN_DB at the file itself",
                path.display()
            )));
        }
        store.migrate()?;
        crate::store::readers::align_sidecars(path);
        Ok(store)
    }

    /// Opens the file read-only with SQLite's `immutable` flag: no lock, no -shm.
    fn open_in_place(path: &Path) -> Result<Sqlite> {
        let before = stamp(path);
        let mut uri = std::ffi::OsString::from("file:");
        // A URI path: percent-encode what would end or confuse it.
        for &byte in path.as_os_str().as_encoded_bytes() {
            uri.push(uri_char(byte));
        }
        uri.push("?mode=ro&immutable=1");
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(PathBuf::from(uri), flags)
            .map_err(|e| db_error(e, path))?;
        Ok(Sqlite {
            conn,
            path: path.to_path_buf(),
            holder: Holder::nobody(),
            immutable: before,
            scrub_after: Default::default(),
            keys: Default::default(),
        })
    }

    fn connect(path: &Path, holder: Holder, write: bool) -> Result<Sqlite> {
        let mode = if write {
            OpenFlags::SQLITE_OPEN_READ_WRITE
        } else {
            OpenFlags::SQLITE_OPEN_READ_ONLY
        };
        let conn = Connection::open_with_flags(path, mode | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .map_err(|e| db_error(e, path))?;
        Ok(Sqlite {
            conn,
            path: path.to_path_buf(),
            holder,
            immutable: None,
            scrub_after: Default::default(),
            keys: Default::default(),
        })
    }

    /// Opens an existing database read-only, for `get`: no migration, no write, no lock.
    pub(super) fn open_readonly(path: &Path) -> Result<Sqlite> {
        require_file(path)?;
        filesafety::check(path, Access::Read).map_err(StoreError::Io)?;
        let mut store = Sqlite::connect(path, Holder::nobody(), false)?;
        let version = match store.configure(false) {
            Ok(version) => version,
            // SQLite needs a -shm beside a WAL database, and cannot create one in a
            // read-only directory or mount. With no -wal there, every committed write is in
            // the file itself, which can then be read as it is; `consistent` tells the
            // caller whether a writer came by meanwhile.
            Err(err) if !filesafety::companions(path)[1].exists() => {
                log::debug!("reading {} in place: {err}", path.display());
                store = Sqlite::open_in_place(path)?;
                store.configure(false)?
            }
            Err(e) => {
                return Err(
                    crate::store::readers::explain_open_error(&e.to_string(), path)
                        .map_or(e, StoreError::Io),
                );
            }
        };
        if version != MIGRATIONS.len() as i64 {
            store.check_version(version)?;
            return Err(StoreError::Schema(format!(
                "database {} has schema version {version}, this wxtoken needs {}; \
                 run any writing command (e.g. wxtoken status) once to upgrade it",
                path.display(),
                MIGRATIONS.len()
            )));
        }
        Ok(store)
    }

    /// Sets the connection up and returns the schema version. Reading the version first
    /// proves the file is an SQLite database before anything is written to it.
    fn configure(&self, write: bool) -> Result<i64> {
        let path = &self.path;
        self.conn
            .busy_timeout(policy::BUSY_TIMEOUT)
            .map_err(|e| db_error(e, path))?;
        let version = self.user_version()?;
        if write {
            // A persistent WAL, so that readers in the database's group find the -wal and
            // -shm they cannot create (see `readers`).
            crate::store::readers::persist_wal(&self.conn).map_err(|rc| {
                StoreError::Io(format!(
                    "could not use database {}: cannot keep the WAL (code {rc})",
                    path.display()
                ))
            })?;
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
        schema::refuse_newer(&self.path.display(), version, MIGRATIONS.len())
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
                return Err(StoreError::Schema(format!(
                    "{} is an SQLite database but not a wxtoken one; refusing to touch it",
                    path.display()
                )));
            }
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            self.conn
                .execute_batch(sql)
                .map_err(|e| StoreError::Schema(format!("migration {} failed: {e}", i + 1)))?;
        }
        self.conn
            .pragma_update(None, "user_version", MIGRATIONS.len() as i64)
            .map_err(|e| db_error(e, path))?;
        tx.commit()
    }

    const ACCOUNT_COLUMNS: &'static str = "id, appid, agent, api, secret, enabled, created_at, updated_at, held_until, held_reason, tickets, fetch_due, role, platform_id, previous_secret, receiver";

    fn account_from_row(
        keys: &crate::keys::Keys,
        row: &rusqlite::Row,
    ) -> rusqlite::Result<Account> {
        Ok(AccountColumns {
            id: row.get(0)?,
            appid: row.get(1)?,
            agent: row.get(2)?,
            api: row.get(3)?,
            secret: Some(row.get(4)?),
            enabled: row.get(5)?,
            created_at: row.get(6)?,
            updated_at: row.get(7)?,
            held_until: row.get(8)?,
            held_reason: row.get(9)?,
            tickets: row.get(10)?,
            fetch_due: row.get(11)?,
            role: row.get(12)?,
            platform_id: row.get(13)?,
            previous_secret: row.get(14)?,
            receiver: row.get(15)?,
        }
        .account(keys, 0))
    }

    /// `reseal`'s transaction.
    fn reseal_in_tx(&self, all: bool) -> Result<usize> {
        let tx = Transaction::immediate(&self.conn, &self.path)?;
        type Row = (i64, String, String, String, Option<String>);
        let accounts: Vec<Row> = self
            .conn
            .prepare("SELECT id, appid, agent, secret, previous_secret FROM accounts")?
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut n = 0;
        for (id, appid, agent, stored, previous) in accounts {
            let key = AccountKey { appid, agent };
            let owner = crate::crypto::account_owner(&key);
            if let Some(sealed) = resealed(&self.keys, &owner, stored, all)? {
                self.conn.execute(
                    "UPDATE accounts SET secret = ?1 WHERE id = ?2",
                    params![sealed, id],
                )?;
                n += 1;
            }
            if let Some(previous) = previous
                && let Some(sealed) = resealed(&self.keys, &owner, previous, all)?
            {
                self.conn.execute(
                    "UPDATE accounts SET previous_secret = ?1 WHERE id = ?2",
                    params![sealed, id],
                )?;
            }
            for (table, column) in [
                ("platform_tickets", "ticket"),
                ("platform_crypto", "token"),
                ("platform_crypto", "aes_key"),
            ] {
                let stored: Option<String> = self
                    .conn
                    .query_row(
                        &format!("SELECT {column} FROM {table} WHERE account_id = ?1"),
                        params![id],
                        |r| r.get(0),
                    )
                    .optional()?;
                let owner = crate::crypto::platform_owner(&key, column);
                if let Some(stored) = stored
                    && let Some(sealed) = resealed(&self.keys, &owner, stored, all)?
                {
                    self.conn.execute(
                        &format!("UPDATE {table} SET {column} = ?1 WHERE account_id = ?2"),
                        params![sealed, id],
                    )?;
                }
            }
        }
        let sinks: Vec<(i64, String, String)> = self
            .conn
            .prepare("SELECT id, name, password FROM sinks WHERE password IS NOT NULL")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (id, name, stored) in sinks {
            let owner = crate::crypto::sink_owner(&name);
            let Some(sealed) = resealed(&self.keys, &owner, stored, all)? else {
                continue;
            };
            self.conn.execute(
                "UPDATE sinks SET password = ?1 WHERE id = ?2",
                params![sealed, id],
            )?;
            n += 1;
        }
        tx.commit()?;
        Ok(n)
    }

    /// Free pages and the -wal may still hold old secrets: rebuilds the file, then copies
    /// the -wal back and truncates it. Inside `with_secrets_lock`'s transaction, where
    /// VACUUM cannot run, it is left for the lock's commit.
    fn scrub(&self) -> Result<()> {
        if !self.conn.is_autocommit() {
            self.scrub_after.set(true);
            return Ok(());
        }
        self.conn.execute_batch("VACUUM")?;
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// Runs `work` with secure_delete FAST: the secret it replaces or deletes is zeroed in
    /// its page, not left in free space. Only around such statements: on every write it
    /// cost a large refresh 30 % (issue 10's measurement).
    fn zeroing<T>(&self, work: impl FnOnce() -> Result<T>) -> Result<T> {
        self.conn.pragma_update(None, "secure_delete", "FAST")?;
        let result = work();
        self.conn.pragma_update(None, "secure_delete", "OFF")?;
        result
    }

    /// Runs an UPDATE or DELETE of one account; `NotFound` if it touched none.
    fn change_account(
        &self,
        key: &AccountKey,
        sql: &str,
        rest: &[&dyn rusqlite::ToSql],
    ) -> Result<()> {
        let mut values: Vec<&dyn rusqlite::ToSql> = vec![&key.appid, &key.agent];
        values.extend_from_slice(rest);
        let n = self.conn.execute(sql, values.as_slice())?;
        if n == 0 {
            return Err(StoreError::NotFound(key.clone()));
        }
        Ok(())
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
        let AttemptColumns {
            outcome,
            errcode,
            errmsg,
            http_status,
            detail,
        } = AttemptColumns::of(o, unchanged);
        self.conn
            .prepare_cached(
                "INSERT INTO attempts (account_id, kind, started_at, duration_ms, tries, outcome,
                                       errcode, errmsg, http_status, detail, clock_offset)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
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
                detail,
                o.clock_offset
            ])?;
        Ok(())
    }
}

impl ReadStore for Sqlite {
    fn last_runs(&self) -> Result<(Option<RunRow>, Option<RunRow>)> {
        Ok((self.run_rows("")?, self.run_rows(SUCCESSFUL_RUNS)?))
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn consistent(&self) -> bool {
        match self.immutable {
            None => true,
            Some(before) => {
                stamp(&self.path) == Some(before) && !filesafety::companions(&self.path)[1].exists()
            }
        }
    }

    fn account_page(
        &self,
        after: Option<&AccountKey>,
        limit: usize,
        enabled_only: bool,
    ) -> Result<Vec<AccountRows>> {
        self.account_page_(after, limit, enabled_only)
    }

    fn platforms(&self) -> Result<Vec<Account>> {
        self.platforms_()
    }

    fn tenant_groups(&self, now: i64) -> Result<Vec<TenantGroup>> {
        self.tenant_groups_(now)
    }

    fn ticket_times(&self, account_id: i64) -> Result<Option<(i64, i64)>> {
        self.ticket_times_(account_id)
    }

    fn platform_events(&self, account_id: i64, limit: i64) -> Result<Vec<PlatformEvent>> {
        self.platform_events_(account_id, limit)
    }

    fn export(&self, now: i64) -> Result<Vec<Exported>> {
        let mut items = self
            .accounts()?
            .into_iter()
            .map(|account| {
                let tokens = self.newest_valid_tokens(account.id, now)?;
                Ok(Exported::plain(account, tokens))
            })
            .collect::<Result<Vec<_>>>()?;
        super::rows::link_platforms(&mut items);
        for item in items.iter_mut().filter(|i| i.account.api.is_platform()) {
            self.export_platform_(item)?;
        }
        Ok(items)
    }

    fn accounts(&self) -> Result<Vec<Account>> {
        let sql = format!(
            "SELECT {} FROM accounts ORDER BY appid, agent",
            Self::ACCOUNT_COLUMNS
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map([], |r| Self::account_from_row(&self.keys, r))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn account(&self, key: &AccountKey) -> Result<Option<Account>> {
        let sql = format!(
            "SELECT {} FROM accounts WHERE appid = ?1 AND agent = ?2",
            Self::ACCOUNT_COLUMNS
        );
        Ok(self
            .conn
            .query_row(&sql, params![key.appid, key.agent], |r| {
                Self::account_from_row(&self.keys, r)
            })
            .optional()?)
    }

    fn latest_token(&self, key: &AccountKey, kind: Credential) -> Result<Option<TokenRow>> {
        // One descent of tokens_newest and one primary-key lookup in intents: `get` stays
        // one query.
        let mut stmt = self.conn.prepare_cached(
            "SELECT t.id, t.token, t.expires_in, t.fetched_at, t.expires_at, i.started_at,
                    a.api = 'token'
             FROM accounts a JOIN tokens t ON t.account_id = a.id AND t.kind = ?3
             LEFT JOIN intents i ON i.account_id = a.id AND ?3 = 'access_token'
             WHERE a.appid = ?1 AND a.agent = ?2
             ORDER BY t.id DESC LIMIT 1",
        )?;
        Ok(stmt
            .query_row(params![key.appid, key.agent, kind.as_str()], |r| {
                Ok(TokenRow {
                    id: r.get(0)?,
                    token: r.get(1)?,
                    expires_in: r.get(2)?,
                    fetched_at: r.get(3)?,
                    expires_at: r.get(4)?,
                    unfinished_fetch: r.get(5)?,
                    classic: r.get(6)?,
                })
            })
            .optional()?)
    }

    fn newest_token_id(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT coalesce(max(id), 0) FROM tokens", [], |r| r.get(0))?)
    }

    fn unfinished_fetches(&self) -> Result<Vec<i64>> {
        let mut stmt = self
            .conn
            .prepare("SELECT account_id FROM intents ORDER BY started_at")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn last_attempt(&self, account_id: i64, kind: Credential) -> Result<Option<Attempt>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT started_at, duration_ms, tries, outcome, errcode, errmsg, http_status, detail,
                    clock_offset
             FROM attempts WHERE account_id = ?1 AND kind = ?2 ORDER BY id DESC LIMIT 1",
        )?;
        Ok(stmt
            .query_row(params![account_id, kind.as_str()], |r| {
                let columns = AttemptColumns {
                    outcome: r.get(3)?,
                    errcode: r.get(4)?,
                    errmsg: r.get(5)?,
                    http_status: r.get(6)?,
                    detail: r.get(7)?,
                };
                Ok(Attempt {
                    started_at: r.get(0)?,
                    duration_ms: r.get(1)?,
                    tries: r.get(2)?,
                    result: columns.result(),
                    clock_offset: r.get(8)?,
                })
            })
            .optional()?)
    }

    /// One pass over the rows since the day's start through the `attempts_age` index, for every
    /// account at once: a query per account would read each one's 30 days of attempts.
    fn fetches_today(&self, now: i64) -> Result<HashMap<i64, i64>> {
        let since = crate::quota::day_start(now);
        let mut stmt = self.conn.prepare_cached(
            "SELECT account_id, sum(n) FROM (
                 SELECT account_id, tries AS n FROM attempts
                 WHERE started_at >= ?1 AND kind = ?2
                 UNION ALL
                 SELECT account_id, 1 FROM forced_refreshes WHERE at >= ?1)
             GROUP BY account_id",
        )?;
        let rows = stmt.query_map(params![since, Credential::AccessToken.as_str()], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn quota_resets_this_month(&self, account_id: i64, now: i64) -> Result<i64> {
        let since = crate::quota::month_start(now);
        let mut stmt = self.conn.prepare_cached(
            "SELECT count(*) FROM quota_resets WHERE account_id = ?1 AND ok = 1 AND at >= ?2",
        )?;
        Ok(stmt.query_row(params![account_id, since], |r| r.get(0))?)
    }
}

impl Sqlite {
    fn newest_valid_tokens(&self, account_id: i64, now: i64) -> Result<Vec<(String, TokenRow)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT kind, token, expires_in, fetched_at, expires_at, id FROM tokens t
             WHERE account_id = ?1 AND expires_at > ?2
               AND id = (SELECT max(id) FROM tokens n
                         WHERE n.account_id = t.account_id AND n.kind = t.kind)
             ORDER BY kind",
        )?;
        let rows = stmt.query_map(params![account_id, now], |r| {
            Ok((
                r.get(0)?,
                TokenRow {
                    id: r.get(5)?,
                    token: r.get(1)?,
                    expires_in: r.get(2)?,
                    fetched_at: r.get(3)?,
                    expires_at: r.get(4)?,
                    // Not copied: the target has no unfinished fetch of its own.
                    unfinished_fetch: None,
                    classic: false,
                },
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

impl Store for Sqlite {
    fn import(&self, items: &[Exported], sinks: &[SinkRow]) -> Result<()> {
        let tx = Transaction::immediate(&self.conn, &self.path)?;
        let accounts: i64 = self
            .conn
            .query_row("SELECT count(*) FROM accounts", [], |r| r.get(0))?;
        if accounts > 0 {
            return Err(not_empty(&self.location(), accounts));
        }
        // Ids differ between stores: each account's new id, by key, for the platform links.
        let mut ids = HashMap::new();
        for item in items {
            let (a, tokens) = (&item.account, &item.tokens);
            let row = ImportedAccount::of(&self.keys, a, 0)?;
            self.conn.execute(
                "INSERT INTO accounts (appid, agent, api, secret, enabled, created_at, updated_at,
                                       held_until, held_reason, tickets, role, previous_secret,
                                       receiver, fetch_due)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                params![
                    a.key.appid,
                    a.key.agent,
                    row.api,
                    row.secret,
                    a.enabled,
                    row.created_at,
                    row.updated_at,
                    row.held_until,
                    a.held_reason,
                    row.tickets,
                    row.role,
                    row.previous,
                    a.receiver,
                    a.fetch_due
                ],
            )?;
            let id = self.conn.last_insert_rowid();
            ids.insert(a.key.clone(), id);
            for (kind, t) in tokens {
                self.conn.execute(
                    "INSERT INTO tokens (account_id, kind, token, expires_in, fetched_at, expires_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![id, kind, t.token, t.expires_in, t.fetched_at, t.expires_at],
                )?;
            }
        }
        for item in items {
            self.import_platform_(item, &ids)?;
        }
        for sink in sinks {
            self.add_sink(sink)?;
        }
        self.conn.execute_batch(DUE_FROM_TOKENS)?;
        tx.commit()
    }

    fn record_run(&self, run: &RunRow, before: i64) -> Result<()> {
        let tx = Transaction::immediate(&self.conn, &self.path)?;
        self.conn.execute(
            &format!(
                "INSERT INTO runs ({RUN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
            ),
            params![
                run.started_at,
                run.finished_at,
                run.duration_ms,
                run.scope,
                run.accounts,
                run.refreshed,
                run.fresh,
                run.busy,
                run.held,
                run.failed
            ],
        )?;
        self.conn.execute(
            &format!(
                "DELETE FROM runs WHERE started_at < ?1
                 AND id NOT IN (SELECT max(id) FROM runs {SUCCESSFUL_RUNS})"
            ),
            params![before],
        )?;
        tx.commit()
    }

    fn keys(&self) -> &crate::keys::Keys {
        &self.keys
    }

    fn opener(&self) -> Opener {
        let (path, holder) = (self.path.clone(), self.holder.clone());
        let keys = self.keys.clone();
        Box::new(move || {
            let mut store = Sqlite::connect(&path, holder.clone(), true)?;
            store.keys = keys.clone();
            store.configure(true)?;
            // A worker reads and writes a few pages per account; 64 of them with SQLite's
            // default 2 MB cache each were most of a large run's memory.
            store
                .conn
                .pragma_update(None, "cache_size", -256)
                .map_err(|e| db_error(e, &path))?;
            Ok(Box::new(store))
        })
    }

    fn add_account(&self, new: &NewAccount, now: i64) -> Result<()> {
        let (key, api) = (&new.key, new.api);
        let (sealed, tickets) = new_account_columns(&self.keys, new)?;
        let (api, role) = api.columns();
        let inserted = self.conn.execute(
            "INSERT INTO accounts (appid, agent, api, secret, enabled, created_at, updated_at,
                                   tickets, role, platform_id, receiver)
             VALUES (?1, ?2, ?3, ?4, 1, ?5, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (appid, agent) DO NOTHING",
            params![
                key.appid,
                key.agent,
                api,
                sealed,
                now,
                tickets,
                role,
                new.platform,
                new.receiver
            ],
        )?;
        if inserted == 0 {
            return Err(StoreError::AlreadyExists(key.clone()));
        }
        Ok(())
    }

    fn remove_account(&self, key: &AccountKey) -> Result<()> {
        self.zeroing(|| {
            let tx = Transaction::immediate(&self.conn, &self.path)?;
            // A platform's tenants point at it (with no ON DELETE): say what to do rather
            // than fail on the foreign key.
            let tenants: Option<(String, i64)> = self
                .conn
                .query_row(
                    "SELECT a.role, (SELECT count(*) FROM accounts t WHERE t.platform_id = a.id)
                     FROM accounts a WHERE a.appid = ?1 AND a.agent = ?2",
                    params![key.appid, key.agent],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            if let Some((role, n)) = tenants
                && n > 0
            {
                return Err(super::rows::has_tenants(key, &role, n));
            }
            self.change_account(
                key,
                "DELETE FROM accounts WHERE appid = ?1 AND agent = ?2",
                &[],
            )?;
            tx.commit()
        })
    }

    fn set_enabled(&self, key: &AccountKey, enabled: bool, now: i64) -> Result<()> {
        self.change_account(
            key,
            "UPDATE accounts SET enabled = ?3, updated_at = ?4, fetch_due = ?3,
                    held_until = NULL, held_reason = NULL
             WHERE appid = ?1 AND agent = ?2",
            &[&enabled, &now],
        )
    }

    fn set_tickets(&self, key: &AccountKey, tickets: &[Ticket], now: i64) -> Result<()> {
        self.change_account(
            key,
            "UPDATE accounts SET tickets = ?3, updated_at = ?4, due_at = NULL
             WHERE appid = ?1 AND agent = ?2",
            &[&ticket_list(tickets), &now],
        )
    }

    fn set_secret(&self, key: &AccountKey, secret: &Secret, now: i64) -> Result<()> {
        let sealed = seal_secret(&self.keys, &crate::crypto::account_owner(key), secret)?;
        self.zeroing(|| {
            self.change_account(
                key,
                "UPDATE accounts SET secret = ?3, updated_at = ?4, fetch_due = 1,
                        held_until = NULL, held_reason = NULL, previous_secret = NULL
                 WHERE appid = ?1 AND agent = ?2",
                &[&sealed, &now],
            )
        })
    }

    fn forget_sealed(&self, reason: &str) -> Result<(usize, usize)> {
        let n = self.zeroing(|| {
            let tx = Transaction::immediate(&self.conn, &self.path)?;
            let accounts = self.conn.execute(
                "UPDATE accounts SET secret = ?1, held_until = ?2, held_reason = ?3
                 WHERE secret LIKE 'wxs1:%'",
                params![crate::crypto::LOST, policy::UNTIL_SECRET, reason],
            )?;
            let sinks = self.conn.execute(
                "UPDATE sinks SET password = ?1 WHERE password LIKE 'wxs1:%'",
                params![crate::crypto::LOST],
            )?;
            // A previous credential, a ticket and push crypto sealed with the lost key
            // are gone with it: the next push brings a ticket, set-crypto the rest.
            self.conn.execute_batch(
                "UPDATE accounts SET previous_secret = NULL WHERE previous_secret LIKE 'wxs1:%';
                 DELETE FROM platform_tickets WHERE ticket LIKE 'wxs1:%';
                 DELETE FROM platform_crypto WHERE token LIKE 'wxs1:%' OR aes_key LIKE 'wxs1:%';",
            )?;
            tx.commit()?;
            Ok((accounts, sinks))
        })?;
        if n != (0, 0) {
            self.scrub()?;
        }
        Ok(n)
    }

    fn reseal(&self, all: bool) -> Result<usize> {
        let n = self.zeroing(|| self.reseal_in_tx(all))?;
        if n > 0 {
            self.scrub()?;
        }
        Ok(n)
    }

    fn with_secrets_lock(
        &self,
        work: &mut dyn FnMut() -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let tx = Transaction::immediate(&self.conn, &self.path)?;
        work()?;
        tx.commit()?;
        if self.scrub_after.replace(false) {
            self.scrub()?;
        }
        Ok(())
    }

    fn sealed_sample(&self, except: Option<&AccountKey>) -> Result<Option<SealedSample>> {
        let (appid, agent) = except.map_or(("", ""), |k| (k.appid.as_str(), k.agent.as_str()));
        let account = self
            .conn
            .query_row(
                "SELECT appid, agent, secret FROM accounts
                 WHERE substr(secret, 1, 5) = 'wxs1:' AND NOT (appid = ?1 AND agent = ?2)
                 LIMIT 1",
                params![appid, agent],
                |r| {
                    let key = AccountKey {
                        appid: r.get(0)?,
                        agent: r.get(1)?,
                    };
                    Ok(SealedSample::account(&key, r.get(2)?))
                },
            )
            .optional()?;
        if account.is_some() {
            return Ok(account);
        }
        Ok(self
            .conn
            .query_row(
                "SELECT name, password FROM sinks WHERE substr(password, 1, 5) = 'wxs1:' LIMIT 1",
                [],
                |r| Ok(SealedSample::sink(&r.get::<_, String>(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    fn sealed_kids(&self) -> Result<std::collections::BTreeSet<String>> {
        let mut stmt = self.conn.prepare(
            "SELECT secret FROM accounts WHERE substr(secret, 1, 5) = 'wxs1:'
             UNION ALL
             SELECT previous_secret FROM accounts WHERE substr(previous_secret, 1, 5) = 'wxs1:'
             UNION ALL
             SELECT password FROM sinks WHERE substr(password, 1, 5) = 'wxs1:'
             UNION ALL
             SELECT ticket FROM platform_tickets WHERE substr(ticket, 1, 5) = 'wxs1:'
             UNION ALL
             SELECT token FROM platform_crypto WHERE substr(token, 1, 5) = 'wxs1:'
             UNION ALL
             SELECT aes_key FROM platform_crypto WHERE substr(aes_key, 1, 5) = 'wxs1:'",
        )?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut kids = std::collections::BTreeSet::new();
        for stored in rows {
            if let Some(kid) = crate::crypto::Stored::new(stored?).kid() {
                kids.insert(kid.to_string());
            }
        }
        Ok(kids)
    }

    fn has_plaintext(&self) -> Result<bool> {
        Ok(self.conn.query_row(
            "SELECT coalesce((SELECT substr(secret, 1, 3) <> 'wxs' FROM accounts
                              ORDER BY id LIMIT 1), 0)
                 OR EXISTS (SELECT 1 FROM sinks
                            WHERE password IS NOT NULL AND substr(password, 1, 3) <> 'wxs')",
            [],
            |r| r.get(0),
        )?)
    }

    fn set_platform_ticket(
        &self,
        account_id: i64,
        ticket: &Secret,
        create_time: i64,
        now: i64,
    ) -> Result<TicketStored> {
        self.set_platform_ticket_(account_id, ticket, create_time, now)
    }

    fn platform_ticket(&self, account_id: i64) -> Result<Option<PlatformTicket>> {
        self.platform_ticket_(account_id)
    }

    fn set_platform_crypto(
        &self,
        account_id: i64,
        token: &Secret,
        aes_key: &Secret,
        now: i64,
    ) -> Result<()> {
        self.set_platform_crypto_(account_id, token, aes_key, now)
    }

    fn set_platform_hook(
        &self,
        account_id: i64,
        hook: Option<&str>,
        timeout: i64,
        secrets: bool,
        now: i64,
    ) -> Result<bool> {
        self.set_platform_hook_(account_id, hook, timeout, secrets, now)
    }

    fn platform_crypto(&self, account_id: i64) -> Result<Option<PlatformCrypto>> {
        self.platform_crypto_(account_id)
    }

    fn record_platform_event(
        &self,
        account_id: i64,
        at: i64,
        event: &str,
        tenant: Option<&str>,
        failure: Option<&str>,
    ) -> Result<()> {
        self.record_platform_event_(account_id, at, event, tenant, failure)
    }

    fn remove_platform(&self, key: &AccountKey) -> Result<usize> {
        self.remove_platform_(key)
    }

    fn hold_account(&self, key: &AccountKey, reason: &str, now: i64) -> Result<()> {
        self.change_account(
            key,
            "UPDATE accounts SET held_until = ?3, held_reason = ?4, updated_at = ?5,
                    fetch_due = 0
             WHERE appid = ?1 AND agent = ?2",
            &[&policy::UNTIL_FIXED, &reason, &now],
        )
    }

    fn target_ids(&self, now: i64, window: Option<i64>, plain: bool) -> Result<Vec<i64>> {
        let chosen = match window {
            None => "SELECT id FROM accounts WHERE enabled = 1".to_string(),
            Some(_) => {
                let mut parts = vec![
                    "SELECT id FROM accounts WHERE enabled = 1 AND due_at <= ?1",
                    "SELECT id FROM accounts WHERE enabled = 1 AND due_at IS NULL",
                    "SELECT id FROM accounts WHERE fetch_due = 1 AND enabled = 1",
                    "SELECT account_id FROM intents",
                ];
                if plain {
                    parts.push(
                        "SELECT id FROM accounts
                         WHERE enabled = 1 AND role NOT IN ('component', 'authorizer', 'suite',
                                                            'corp', 'provider')",
                    );
                }
                parts.join(" UNION ")
            }
        };
        // Refresh-ahead takes the most urgent first; a whole run goes by name, as always.
        let order = if window.is_some() && !plain {
            "coalesce(a.due_at, 0), a.id"
        } else {
            "a.appid, a.agent"
        };
        let sql = format!(
            "SELECT a.id FROM accounts a LEFT JOIN intents i ON i.account_id = a.id
             WHERE a.enabled = 1 AND a.id IN ({chosen})
             ORDER BY a.role IN ('authorizer', 'corp'), i.started_at IS NULL, i.started_at,
                      {order}"
        );
        let until = now.saturating_add(window.unwrap_or(0));
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = if window.is_some() {
            stmt.query_map(params![until], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        } else {
            stmt.query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        Ok(rows)
    }

    fn count_enabled(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM accounts WHERE enabled = 1", [], |r| {
                r.get(0)
            })?)
    }

    fn clock_stepped_back(&self, now: i64) -> Result<bool> {
        Ok(self.conn.query_row(
            "SELECT coalesce(max(fetched_at), 0) > ?1 FROM tokens",
            params![now],
            |r| r.get(0),
        )?)
    }

    fn accounts_by_ids(&self, ids: &[i64]) -> Result<Vec<Account>> {
        let list = serde_json::to_string(ids).map_err(|e| StoreError::Io(e.to_string()))?;
        let sql = format!(
            "SELECT {} FROM accounts WHERE id IN (SELECT value FROM json_each(?1))",
            Self::ACCOUNT_COLUMNS
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(params![list], |r| Self::account_from_row(&self.keys, r))?;
        let mut found: HashMap<i64, Account> = HashMap::new();
        for a in rows {
            let a = a?;
            found.insert(a.id, a);
        }
        Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
    }

    fn claim(&self, account_id: i64, now: i64, ttl: i64) -> Result<Claim> {
        let holder = &self.holder;
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

    fn release(&self, account_id: i64) -> Result<()> {
        let _pass = gate::enter();
        self.conn
            .prepare_cached("DELETE FROM claims WHERE account_id = ?1 AND holder = ?2")?
            .execute(params![account_id, self.holder.id])?;
        Ok(())
    }

    fn all_newest(&self) -> Result<Vec<Newest>> {
        // One descent of tokens_newest per account and kind, and a primary-key lookup in
        // intents: no scan of the token history, however long it is.
        let kinds = all_kinds()
            .iter()
            .map(|k| format!("('{}')", k.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "WITH k(kind) AS (VALUES {kinds})
             SELECT a.id, k.kind, t.id, t.expires_in, t.fetched_at, t.expires_at, i.started_at,
                    a.api = 'token'
             FROM accounts a CROSS JOIN k
             JOIN tokens t ON t.id = (SELECT n.id FROM tokens n
                                      WHERE n.account_id = a.id AND n.kind = k.kind
                                      ORDER BY n.id DESC LIMIT 1)
             LEFT JOIN intents i ON i.account_id = a.id AND k.kind = 'access_token'
             WHERE a.enabled"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(1)?,
                Newest {
                    account_id: r.get(0)?,
                    kind: Credential::AccessToken,
                    id: r.get(2)?,
                    stored: Stored {
                        expires_in: r.get(3)?,
                        fetched_at: r.get(4)?,
                        expires_at: r.get(5)?,
                        unfinished_fetch: r.get(6)?,
                        classic: r.get(7)?,
                    },
                },
            ))
        })?;
        let mut all = Vec::new();
        for row in rows {
            let (kind, newest) = row?;
            if let Some(kind) = parse_kind(&kind) {
                all.push(Newest { kind, ..newest });
            }
        }
        Ok(all)
    }

    fn begin_fetch(&self, account_id: i64, now: i64) -> Result<()> {
        let _pass = gate::enter();
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO intents (account_id, holder, started_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![account_id, self.holder.id, now])?;
        Ok(())
    }

    fn retire_token(&self, token_id: i64, now: i64) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE tokens SET expires_at = ?2 WHERE id = ?1 AND expires_at > ?2")?
            .execute(params![token_id, now])?;
        self.conn
            .prepare_cached(
                "UPDATE accounts SET due_at = ?2
                 WHERE id = (SELECT account_id FROM tokens WHERE id = ?1)
                   AND (due_at IS NULL OR due_at > ?2)",
            )?
            .execute(params![token_id, now])?;
        Ok(())
    }

    fn record_fetch(&self, record: &FetchRecord) -> Result<Recorded> {
        let (account_id, kind, outcome) = (record.account_id, record.kind, &record.outcome);
        let tx = Transaction::immediate(&self.conn, &self.path)?;
        let newest: Option<String> = match &outcome.result {
            Ok(_) => self
                .conn
                .prepare_cached(
                    "SELECT token FROM tokens WHERE account_id = ?1 AND kind = ?2
                     ORDER BY id DESC LIMIT 1",
                )?
                .query_row(params![account_id, kind.as_str()], |r| r.get(0))
                .optional()?,
            Err(_) => None,
        };
        let stored: Option<(AccountKey, String, Option<String>)> =
            if kind == Credential::AccessToken {
                self.conn
                    .prepare_cached(
                        "SELECT appid, agent, secret, previous_secret FROM accounts WHERE id = ?1",
                    )?
                    .query_row(params![account_id], |r| {
                        Ok((
                            AccountKey {
                                appid: r.get(0)?,
                                agent: r.get(1)?,
                            },
                            r.get(2)?,
                            r.get(3)?,
                        ))
                    })
                    .optional()?
            } else {
                None
            };
        // One host, one clock: a hold starts when the fetch did.
        let plan = plan_record(
            &self.keys,
            record,
            newest.as_deref(),
            stored,
            outcome.started_at,
        )?;
        if let Some(fetched) = plan.insert {
            self.insert_token(account_id, kind.as_str(), fetched, outcome.sent_at)?;
        }
        self.insert_attempt(
            account_id,
            kind.as_str(),
            outcome,
            plan.recorded == Recorded::Unchanged,
        )?;
        // Every statement below rewrites the account's row, which holds its sealed secret:
        // with secure_delete, the old image of the row is zeroed in its page, not left in
        // free space (a row that grows moves). Only around these statements: on every
        // write it cost a large refresh 30 % (issue 10).
        self.zeroing(|| {
            if plan.update_account {
                self.conn
                    .prepare_cached(
                        "UPDATE accounts SET held_until = ?2, held_reason = ?3, fetch_due = 0
                         WHERE id = ?1",
                    )?
                    .execute(params![account_id, plan.held_until, plan.held_reason])?;
            }
            if plan.clear_intent {
                self.conn
                    .prepare_cached("DELETE FROM intents WHERE account_id = ?1 AND holder = ?2")?
                    .execute(params![account_id, self.holder.id])?;
            }
            match plan.due {
                super::rows::Due::Keep => {}
                super::rows::Due::Token | super::rows::Due::Ticket => {
                    let expiry = plan
                        .insert
                        .map(|f| outcome.sent_at + f.expires_in)
                        .unwrap_or(0);
                    let sql = if plan.due == super::rows::Due::Token {
                        "UPDATE accounts SET due_at = ?2 WHERE id = ?1"
                    } else {
                        "UPDATE accounts SET due_at = min(coalesce(due_at, ?2), ?2) WHERE id = ?1"
                    };
                    self.conn
                        .prepare_cached(sql)?
                        .execute(params![account_id, expiry])?;
                }
                super::rows::Due::Now => {
                    self.conn
                        .prepare_cached("UPDATE accounts SET due_at = NULL WHERE id = ?1")?
                        .execute(params![account_id])?;
                }
            }
            if let Some(renewed) = &plan.renewed {
                // The stored credential becomes the previous one; neither is ever blanked (the
                // columns refuse an empty value, and `renewed` is never empty).
                self.conn
                    .prepare_cached(
                        "UPDATE accounts SET previous_secret = secret, secret = ?2 WHERE id = ?1",
                    )?
                    .execute(params![account_id, renewed])?;
            } else if plan.clear_previous {
                self.conn
                    .prepare_cached(
                        "UPDATE accounts SET previous_secret = NULL
                         WHERE id = ?1 AND previous_secret IS NOT NULL",
                    )?
                    .execute(params![account_id])?;
            }
            Ok(())
        })?;
        tx.commit()?;
        Ok(plan.recorded)
    }

    fn forced_refreshes(&self, account_id: i64, now: i64) -> Result<ForcedRefreshes> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT at FROM forced_refreshes WHERE account_id = ?1 AND at > ?2")?;
        let since = now - policy::FORCED_REFRESH_RETENTION;
        let rows = stmt.query_map(params![account_id, since], |r| r.get(0))?;
        let at = rows.collect::<rusqlite::Result<_>>()?;
        Ok(ForcedRefreshes { at, now })
    }

    fn note_forced_refresh(&self, account_id: i64, now: i64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO forced_refreshes (account_id, at) VALUES (?1, ?2)",
            params![account_id, now],
        )?;
        Ok(())
    }

    fn record_quota_reset(
        &self,
        account_id: i64,
        at: i64,
        failure: Option<(Option<i64>, &str)>,
    ) -> Result<bool> {
        let tx = Transaction::immediate(&self.conn, &self.path)?;
        let (errcode, detail) = failure.unzip();
        self.conn
            .prepare_cached(
                "INSERT INTO quota_resets (account_id, at, ok, errcode, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                account_id,
                at,
                failure.is_none(),
                errcode.flatten(),
                detail
            ])?;
        let released = failure.is_none()
            && self
                .conn
                .prepare_cached(
                    "UPDATE accounts SET held_until = NULL, held_reason = NULL
                     WHERE id = ?1 AND held_until IS NOT NULL
                       AND (SELECT errcode FROM attempts WHERE account_id = ?1 AND kind = ?2
                            ORDER BY id DESC LIMIT 1) = 45009",
                )?
                .execute(params![account_id, Credential::AccessToken.as_str()])?
                > 0;
        tx.commit()?;
        Ok(released)
    }

    /// In batches: see `prune_batches`.
    fn prune(&self, now: i64, keep: i64, attempts_before: i64) -> Result<(usize, usize)> {
        self.prune_batches(now, keep, attempts_before)
    }
}

/// A transaction that takes the write lock up front (BEGIN IMMEDIATE), so that a writer
/// waits in the busy handler instead of failing halfway. Rolls back on drop. Inside one
/// already open (`with_secrets_lock`), which holds the write lock, it is a savepoint.
struct Transaction<'c> {
    conn: &'c Connection,
    done: bool,
    nested: bool,
    /// This process's write gate, held until the transaction ends.
    _pass: gate::Pass,
}

/// This process's SQLite writers queue on a mutex before they ask SQLite for its write lock.
/// SQLite's busy handler waits by sleeping (1, 2, 5, 10 ms ...): with 64 workers of one
/// `refresh` asking for the lock at once, most of a large run went to those sleeps, not to
/// the writes. A thread that gets no pass within `WAIT` (the holder waits on another
/// process's lock) goes on without one: SQLite's own locking still decides, as before.
mod gate {
    use std::sync::{Condvar, Mutex};
    use std::thread::ThreadId;
    use std::time::{Duration, Instant};

    struct State {
        owner: Option<ThreadId>,
        depth: usize,
    }

    static STATE: Mutex<State> = Mutex::new(State {
        owner: None,
        depth: 0,
    });
    static FREED: Condvar = Condvar::new();
    const WAIT: Duration = Duration::from_secs(2);

    /// A place in the queue, or none (`held` false); given back when dropped.
    pub(super) struct Pass {
        held: bool,
    }

    /// Waits for the gate (re-entrant: a thread that holds it gets it again).
    pub(super) fn enter() -> Pass {
        let me = std::thread::current().id();
        let deadline = Instant::now() + WAIT;
        let mut s = STATE.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match s.owner {
                None => {
                    s.owner = Some(me);
                    s.depth = 1;
                    return Pass { held: true };
                }
                Some(owner) if owner == me => {
                    s.depth += 1;
                    return Pass { held: true };
                }
                Some(_) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Pass { held: false };
                    }
                    s = FREED
                        .wait_timeout(s, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }

    impl Drop for Pass {
        fn drop(&mut self) {
            if !self.held {
                return;
            }
            let mut s = STATE.lock().unwrap_or_else(|e| e.into_inner());
            s.depth = s.depth.saturating_sub(1);
            if s.depth == 0 {
                s.owner = None;
                FREED.notify_one();
            }
        }
    }
}

impl<'c> Transaction<'c> {
    fn immediate(conn: &'c Connection, path: &Path) -> Result<Transaction<'c>> {
        let nested = !conn.is_autocommit();
        let pass = gate::enter();
        conn.execute_batch(if nested {
            "SAVEPOINT nested"
        } else {
            "BEGIN IMMEDIATE"
        })
        .map_err(|e| db_error(e, path))?;
        Ok(Transaction {
            conn,
            done: false,
            nested,
            _pass: pass,
        })
    }

    fn commit(mut self) -> Result<()> {
        self.conn.execute_batch(if self.nested {
            "RELEASE nested"
        } else {
            "COMMIT"
        })?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.conn.execute_batch(if self.nested {
                "ROLLBACK TO nested; RELEASE nested"
            } else {
                "ROLLBACK"
            });
        }
    }
}

/// One byte of a path as URI text (paths are bytes; SQLite decodes them back).
fn uri_char(byte: u8) -> String {
    if (byte.is_ascii_graphic() || byte == b' ') && !matches!(byte, b'%' | b'?' | b'#') {
        (byte as char).to_string()
    } else {
        format!("%{byte:02X}")
    }
}

/// Creates a new database at `path` without ever showing an empty file there: it is built
/// and migrated under a temporary name beside it (0600 from its first byte), then linked
/// into place, which fails rather than replaces if anything appeared at `path` meanwhile.
fn create(path: &Path) -> Result<()> {
    // A random name (not one a planted symlink could wait at for its -wal / -shm, which
    // SQLite opens by name), created exclusively and never through a link.
    let (file, tmp) =
        crate::atomicfile::create_temp(path, ".new", 0o600).map_err(|e| io_error(e, path))?;
    drop(file);
    let built = (|| -> Result<()> {
        let store = Sqlite::connect(&tmp, Holder::nobody(), true)?;
        store.configure(true)?;
        store.migrate()?;
        // Closing the last connection checkpoints the -wal into the file; the temporary
        // -wal / -shm are removed below.
        drop(store);
        match std::fs::hard_link(&tmp, path) {
            // Another process created it first: use theirs, checked like any other.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            other => other.map_err(|e| io_error(e, path)),
        }
    })();
    for file in filesafety::companions(&tmp) {
        let _ = std::fs::remove_file(file);
    }
    built
}

fn io_error(err: std::io::Error, path: &Path) -> StoreError {
    StoreError::Io(format!(
        "could not create database {}: {err}",
        path.display()
    ))
}

/// A path that must already hold a database: reading never creates one.
pub(super) fn require_file(path: &Path) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    Err(StoreError::Schema(format!(
        "database {} does not exist; add an account first (wxtoken account add)",
        path.display()
    )))
}

/// The directory must exist: a typo in --db should not scatter databases around.
fn check_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => return Ok(()),
    };
    if !dir.is_dir() {
        return Err(StoreError::Io(format!(
            "database directory {} does not exist; create it or choose another path with --db",
            dir.display()
        )));
    }
    Ok(())
}

/// Creates the default directory (0700: the database in it holds secrets). A directory
/// named with --db must exist already, so that a typo does not scatter databases around.
pub(super) fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| StoreError::Io(format!("could not create directory {}: {e}", dir.display())))
}

/// A failure to open or lock the database names the file.
fn db_error(err: rusqlite::Error, path: &Path) -> StoreError {
    let code = err.sqlite_error_code();
    let text = err.to_string();
    let reason = if text.contains("file is not a database") {
        "not an SQLite database (left untouched)".to_string()
    } else if code == Some(rusqlite::ErrorCode::FileLockingProtocolFailed) {
        crate::store::readers::explain_shm_locks(&text, path)
    } else if let Some(full) = disk_full(code, path) {
        full
    } else if text.contains("unable to open database file") {
        // Whose the file and its directory are, and their modes: what decides who may open.
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        let dir = dir.unwrap_or(Path::new("."));
        let files: Vec<String> = filesafety::companions(path)
            .iter()
            .map(PathBuf::as_path)
            .filter(|f| *f == path || f.exists())
            .chain([dir])
            .map(|f| format!("{}: {}", f.display(), filesafety::owner_and_mode(f)))
            .collect();
        format!(
            "{text} ({}; this user is uid {})",
            files.join("; "),
            filesafety::euid()
        )
    } else {
        text
    };
    classify(
        code,
        format!("could not use database {}: {reason}", path.display()),
    )
}

/// "disk full", with the space left, for SQLITE_FULL, and for the I/O error a write on a
/// full filesystem gives (SQLite reports some of those as "disk I/O error") when the
/// filesystem has less than 1 MiB left.
fn disk_full(code: Option<rusqlite::ErrorCode>, path: &Path) -> Option<String> {
    use rusqlite::ErrorCode as C;
    let free = filesafety::free_bytes(path);
    let full = match code {
        Some(C::DiskFull) => true,
        Some(C::SystemIoFailure) => free.is_some_and(|f| f < 1024 * 1024),
        _ => false,
    };
    full.then(|| {
        let left = free.map_or(String::new(), |f| format!(" ({} KiB free)", f / 1024));
        format!("disk full{left}: free some space on the filesystem that holds it")
    })
}

// Runs: for monitoring (metrics, status --check).
impl Sqlite {
    fn run_rows(&self, filter: &str) -> Result<Option<RunRow>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs {filter} ORDER BY id DESC LIMIT 1");
        Ok(self
            .conn
            .query_row(&sql, [], |r| {
                Ok(RunRow {
                    started_at: r.get(0)?,
                    finished_at: r.get(1)?,
                    duration_ms: r.get(2)?,
                    scope: r.get(3)?,
                    accounts: r.get(4)?,
                    refreshed: r.get(5)?,
                    fresh: r.get(6)?,
                    busy: r.get(7)?,
                    held: r.get(8)?,
                    failed: r.get(9)?,
                })
            })
            .optional()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::os::unix::fs::OpenOptionsExt;

    fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wxtoken-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Private from its first byte, as wxtoken would create it: the store refuses a
        // database others may read.
        let path = dir.join("wxtoken.db");
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap();
        path
    }

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

    /// The real migrate step, from every older version: its transaction applies what is
    /// missing and bumps the version, and a row written at the old version survives.
    #[test]
    fn migrate_upgrades_every_older_version() {
        for from in 1..MIGRATIONS.len() {
            let path = temp_path(&format!("migrate-{from}"));
            {
                let conn = Connection::open(&path).unwrap();
                for sql in &MIGRATIONS[..from] {
                    conn.execute_batch(sql).unwrap();
                }
                conn.pragma_update(None, "user_version", from as i64)
                    .unwrap();
                conn.execute(
                    "INSERT INTO accounts (appid, agent, api, secret, enabled, created_at, updated_at)
                     VALUES ('wxold', '', 'token', 's', 1, 1, 1)",
                    [],
                )
                .unwrap();
            }
            assert!(matches!(
                Sqlite::open_readonly(&path),
                Err(StoreError::Schema(m)) if m.contains("run any writing command")
            ));
            let store = Sqlite::open(&path, Holder::current()).unwrap();
            assert_eq!(store.user_version().unwrap(), MIGRATIONS.len() as i64);
            let key = AccountKey::appid("wxold").unwrap();
            assert!(store.account(&key).unwrap().is_some(), "from {from}");
            drop(store);
            Sqlite::open_readonly(&path).unwrap();
        }
    }

    #[test]
    fn a_failed_migration_leaves_the_old_version() {
        let path = temp_path("migrate-fails");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            // Makes migration 2 fail halfway: a table it creates exists already.
            conn.execute_batch("CREATE TABLE claims (x)").unwrap();
        }
        let err = Sqlite::open(&path, Holder::current()).err().unwrap();
        assert!(
            matches!(err, StoreError::Schema(ref m) if m.contains("migration 2")),
            "{err}"
        );
        let conn = Connection::open(&path).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 1, "rolled back, version unchanged");
    }
}
