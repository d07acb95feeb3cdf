//! The PostgreSQL backend of the `Store` interface, for a fleet of hosts sharing one
//! database. The only module with SQL besides `../sqlite`; what the two decide alike is
//! written once, in `../rows.rs` and `../schema.rs`, and the sinks' SQL is in `sinks.rs`.
//!
//! What differs from SQLite, and why:
//! - Every time that decides something (claims, token times, `get`'s validity check)
//!   comes from the server's clock, `now()`, so clock skew between hosts cannot let two
//!   holders fetch one account or a reader hand out an expired token.
//! - A claim is a lease row taken and released in single autocommit statements. No
//!   transaction or session lock is held across the HTTP request: a host that dies
//!   mid-fetch blocks the account only until the lease expires.
//! - Recording a fetch first checks that this holder still has the lease (fencing); one
//!   that lost it records a `lost_claim` attempt and drops its token.
//! - Secrets live in `account_secrets`, which the reader grant never names.

pub(crate) mod conf;
pub(crate) mod conn;
mod platforms;
mod reports;
mod sinks;

use crate::store::rows::{
    AccountColumns, DUE_FROM_TOKENS, ImportedAccount, new_account_columns, plan_record, resealed,
    ticket_list,
};
use sinks::insert_sink;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use ::postgres::Client;
use ::postgres::types::{ToSql, Type};

use crate::domain::{
    Account, AccountKey, Attempt, Credential, FetchRecord, NewAccount, Secret, Ticket, TokenRow,
};
use crate::store::postgres::conf::PgConfig;
use crate::store::{
    AccountRows, AttemptColumns, Claim, Exported, ForcedRefreshes, Holder, Newest, Opener,
    PlatformCrypto, PlatformEvent, PlatformTicket, RUN_COLUMNS, ReadStore, Recorded, Result,
    RunRow, SUCCESSFUL_RUNS, SealedSample, SinkRow, Store, StoreError, TenantGroup, TicketStored,
    all_kinds, not_empty, pid_alive, seal_secret, stored_password,
};

/// Every PostgreSQL migration, in order; the schema version is how many are applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../../../migrations/postgres/0001_init.sql"),
    include_str!("../../../migrations/postgres/0002_quota.sql"),
    include_str!("../../../migrations/postgres/0003_runs.sql"),
    include_str!("../../../migrations/postgres/0004_sinks.sql"),
    include_str!("../../../migrations/postgres/0005_intents.sql"),
    include_str!("../../../migrations/postgres/0006_platforms.sql"),
    include_str!("../../../migrations/postgres/0007_due.sql"),
];

/// The key of the advisory lock that serialises migrations. Advisory locks are per
/// database, so other wxtoken databases on the server do not contend for it.
const MIGRATION_LOCK: i64 = 0x7778_746f_6b65_6e00; // "wxtoken\0"
/// The advisory lock that commands writing a secret or replacing the key file hold
/// (`with_secrets_lock`), for this session: it outlives their transactions, and ends with
/// the connection if the process dies. (A role that can connect can take it too, and so
/// delay those commands; the wait is bounded by `LOCK_TIMEOUT`.)
const SECRETS_LOCK: i64 = 0x7778_746f_6b65_6e02;
/// The row lock that recording transactions hold shared and `newest_token_id` takes alone
/// for an instant: schema version 1's row, which every wxtoken database has. Not an
/// advisory lock: any role that can connect may take those (a reader holding it stopped
/// every refresher), while locking a row needs UPDATE on its table, which only the
/// refresher's role has.
const RECORD_LOCK_ROW: &str = "SELECT 1 FROM schema_migrations WHERE version = 1";

/// How long a writing session waits for a lock (another session's transaction) before the
/// statement fails, unless the role or the database sets its own `lock_timeout`: as long
/// as SQLite's busy timeout.
pub const LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The database clock, in the Unix seconds every time column holds: whole seconds cut
/// down, as a host reads its own clock. (A plain `::bigint` cast rounds, which put the
/// server up to half a second ahead: a reader on the same clock saw every time shifted by
/// one second, a token's expiry a second early, and a sink a TTL a second longer than the
/// token's lifetime.)
const NOW: &str = "floor(extract(epoch from now()))::bigint";
/// The database clock to the microsecond, for [`host_offset`].
const NOW_EXACT: &str = "extract(epoch from now())::float8";

/// This host's clock, to the microsecond.
fn host_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// How many whole seconds this host's clock is ahead of the server's: the server's `now()`
/// against the middle of the round trip (`sent`..`received`) that read it. Rounded from the
/// exact times, so two clocks that agree give 0 and a stored time reads back as the same
/// second; whole seconds taken at two instants were off by one whenever a second began
/// between them, and a published `expires_at` then differed from the stored one.
fn host_offset(sent: f64, server_now: f64, received: f64) -> i64 {
    ((sent + received) / 2.0 - server_now).round() as i64
}

/// How long `revive` waits for the server to answer an empty query.
const REVIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A parameter whose PostgreSQL type is known without asking the server. The refresh path
/// sends its statements with `query_typed`: one round trip each (parse, bind and execute
/// together) instead of two (`query` prepares a named statement first), and no named
/// statement is left on the server, so a transaction pooler in between is fine.
trait Typed: ToSql + Sync {
    fn pg_type(&self) -> Type;
    fn as_sql(&self) -> &(dyn ToSql + Sync);
}

macro_rules! typed {
    ($($t:ty => $pg:ident),* $(,)?) => {$(
        impl Typed for $t {
            fn pg_type(&self) -> Type {
                Type::$pg
            }
            fn as_sql(&self) -> &(dyn ToSql + Sync) {
                self
            }
        }
    )*};
}

typed!(
    i64 => INT8,
    Option<i64> => INT8,
    bool => BOOL,
    &str => TEXT,
    Option<&str> => TEXT,
    String => TEXT,
    Option<String> => TEXT,
);

fn typed<'a>(params: &[&'a dyn Typed]) -> Vec<(&'a (dyn ToSql + Sync), Type)> {
    params.iter().map(|p| (p.as_sql(), p.pg_type())).collect()
}

/// A connection to a wxtoken database on a PostgreSQL server.
pub struct Postgres {
    client: RefCell<Client>,
    /// How long its current unit of work has waited for the server (see [`answering`]).
    watch: std::sync::Arc<answering::Watch>,
    /// Why the last reconnect failed, while the connection stays lost (see `c`).
    lost: RefCell<Option<String>>,
    config: PgConfig,
    holder: Holder,
    /// Whether the schema version is known to match. A read handle checks it within its
    /// first query, so that `get` stays one round trip after connecting.
    verified: Cell<bool>,
    /// What secrets are sealed and opened with (`keys::Keys`).
    keys: crate::keys::Keys,
}

/// A server error as one line (the client's own `Display` says only "db error"), in the
/// store's error vocabulary.
fn pg_error(config: &PgConfig, err: &postgres::Error) -> StoreError {
    let text = match err.as_db_error() {
        Some(db) => format!("{}: {}", db.severity().to_lowercase(), db.message()),
        None => err.to_string(),
    };
    let message = format!("could not use database {config}: {text}");
    let code = err.code().map(|c| c.code());
    if code == Some("55P03") && text.contains("lock timeout") {
        return StoreError::Busy(format!("{message}: {}", lock_holders(config)));
    }
    match code {
        // serialization_failure, deadlock_detected, lock_not_available
        // ... and query_canceled: a wait that a stop signal (or statement_timeout) cut short
        Some("40001" | "40P01" | "55P03" | "57014") => StoreError::Busy(message),
        // undefined_table, undefined_column: not (or not yet) a wxtoken database
        Some("42P01" | "42703") => StoreError::Schema(message),
        // insufficient_privilege: a role short of a grant, most likely a reader's
        Some("42501") => StoreError::ReadOnly(format!(
            "{message} (this role lacks that grant: a reader made by `wxtoken store \
             grant-reader` can run `get`, `account list` and `refresh --dry-run`; run the rest \
             with the refresher's role)"
        )),
        _ => StoreError::Io(message),
    }
}

/// A server that takes a statement and never answers (stopped, or its host frozen, while
/// the kernel still acknowledges): TCP's timeouts never fire, since nothing goes
/// unacknowledged. A watchdog thread looks at every handle's unit of work in progress: past
/// the bound (60 s, or the role's `statement_timeout` and 5 s) it asks the server, on a
/// connection of its own, for `SELECT 1`. An answer within 10 s means the server is alive
/// and the work merely long (a big `store copy`): the clock starts again. No answer: the
/// process ends with exit 5 and one line, as for a database that cannot be reached.
/// Claims are leases and expire on their own; an intent left behind caps the token as for
/// any unrecorded fetch.
mod answering {
    use std::cell::RefMut;
    use std::ops::{Deref, DerefMut};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex, OnceLock, Weak};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use postgres::Client;

    use crate::store::StoreError;
    use crate::store::postgres::conf::PgConfig;

    /// Without a statement_timeout: as long as TCP's user timeout.
    pub const DEFAULT_BOUND: Duration = Duration::from_secs(60);
    /// Beyond the statement_timeout, for the server to notice and say so.
    const SLACK: Duration = Duration::from_secs(5);
    /// For the server to answer the probe.
    pub const GRACE: Duration = Duration::from_secs(10);

    static WATCHED: Mutex<Vec<Weak<Watch>>> = Mutex::new(Vec::new());
    static WATCHDOG: OnceLock<()> = OnceLock::new();

    fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    pub struct Watch {
        /// When the unit of work in progress began (ms), 0 when none is.
        since: AtomicU64,
        bound_ms: AtomicU64,
        /// A probe of the server is under way.
        probing: AtomicBool,
        config: PgConfig,
    }

    impl Watch {
        pub fn new(config: &PgConfig) -> Arc<Watch> {
            let watch = Arc::new(Watch {
                since: AtomicU64::new(0),
                bound_ms: AtomicU64::new(DEFAULT_BOUND.as_millis() as u64),
                probing: AtomicBool::new(false),
                config: config.clone(),
            });
            if let Ok(mut watched) = WATCHED.lock() {
                watched.retain(|w| w.strong_count() > 0);
                watched.push(Arc::downgrade(&watch));
            }
            WATCHDOG.get_or_init(|| {
                std::thread::spawn(watchdog);
            });
            watch
        }

        /// The role's statement_timeout (0: none), which sets the bound.
        pub fn set_statement_timeout(&self, ms: u64) {
            let bound = match ms {
                0 => DEFAULT_BOUND.as_millis() as u64,
                ms => ms + SLACK.as_millis() as u64,
            };
            self.bound_ms.store(bound, Ordering::SeqCst);
        }
    }

    /// The connection, borrowed for one unit of work, which the watchdog times.
    pub struct Answering<'a> {
        client: RefMut<'a, Client>,
        watch: &'a Watch,
    }

    impl<'a> Answering<'a> {
        pub fn start(client: RefMut<'a, Client>, watch: &'a Watch) -> Answering<'a> {
            watch.since.store(now_ms(), Ordering::SeqCst);
            Answering { client, watch }
        }
    }

    impl Drop for Answering<'_> {
        fn drop(&mut self) {
            self.watch.since.store(0, Ordering::SeqCst);
        }
    }

    impl Deref for Answering<'_> {
        type Target = Client;
        fn deref(&self) -> &Client {
            &self.client
        }
    }

    impl DerefMut for Answering<'_> {
        fn deref_mut(&mut self) -> &mut Client {
            &mut self.client
        }
    }

    /// Asks the server for `SELECT 1` on a new connection: an answer restarts the clock,
    /// none within [`GRACE`] ends the process.
    fn probe(w: &Watch, bound: u64) {
        let (done, answered) = std::sync::mpsc::channel();
        let config = w.config.clone();
        // On a thread of its own: connecting to a frozen server may hang past any timeout.
        std::thread::spawn(move || {
            let alive = crate::store::postgres::conn::connect(&config)
                .is_ok_and(|mut c| c.simple_query("SELECT 1").is_ok());
            let _ = done.send(alive);
        });
        if answered.recv_timeout(GRACE) == Ok(true) {
            // Alive: the work is long, not lost. Unless it ended meanwhile, time it anew.
            let since = w.since.load(Ordering::SeqCst);
            if since != 0 {
                let _ =
                    w.since
                        .compare_exchange(since, now_ms(), Ordering::SeqCst, Ordering::SeqCst);
            }
            w.probing.store(false, Ordering::SeqCst);
            return;
        }
        let err = StoreError::Unanswered(format!(
            "database {} did not answer for {} s, nor a new connection \
             (a server that stopped, or a network that drops its answers); gave up",
            w.config,
            (bound + GRACE.as_millis() as u64) / 1000
        ));
        eprintln!("wxtoken: error: {err}");
        // The exit code `exit.rs` gives this error, as for any other the store returns.
        std::process::exit(i32::from(u8::from(&err)));
    }

    fn watchdog() {
        loop {
            std::thread::sleep(Duration::from_millis(250));
            let watched: Vec<Arc<Watch>> = match WATCHED.lock() {
                Ok(w) => w.iter().filter_map(Weak::upgrade).collect(),
                Err(_) => return,
            };
            let now = now_ms();
            for w in watched {
                let since = w.since.load(Ordering::SeqCst);
                let bound = w.bound_ms.load(Ordering::SeqCst);
                if since == 0
                    || now.saturating_sub(since) <= bound
                    || w.probing.swap(true, Ordering::SeqCst)
                {
                    continue;
                }
                std::thread::spawn(move || probe(&w, bound));
            }
        }
    }
}

/// Who holds the locks that a statement gave up on, asked on a connection of its own (the
/// session that waited is inside a failed transaction): the sessions with an open
/// transaction that locked rows of wxtoken's tables, and those holding an advisory lock,
/// with their pid, role and application name. The session that waited has locked no row.
fn lock_holders(config: &PgConfig) -> String {
    let ask = || -> std::result::Result<(String, Vec<String>), String> {
        let mut c = crate::store::postgres::conn::connect(config)?;
        // This session has not set wxtoken's bound: '0' means it applied.
        let timeout: String = c
            .query_one("SELECT current_setting('lock_timeout')", &[])
            .map_err(|e| e.to_string())?
            .get(0);
        let timeout = match timeout.as_str() {
            "0" => format!("{}s", LOCK_TIMEOUT.as_secs()),
            _ => timeout,
        };
        let rows = c
            .query(
                "SELECT DISTINCT a.pid, a.usename::text, a.application_name
                 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                 WHERE l.granted AND l.pid <> pg_backend_pid()
                   AND l.database = (SELECT oid FROM pg_database
                                     WHERE datname = current_database())
                   AND ((l.locktype = 'advisory' AND l.classid::bigint = $1)
                        OR (l.locktype = 'relation' AND l.mode <> 'AccessShareLock'
                            AND l.relation IN (to_regclass('schema_migrations'),
                                to_regclass('accounts'), to_regclass('claims'),
                                to_regclass('tokens'))
                            AND EXISTS (SELECT 1 FROM pg_locks x
                                        WHERE x.pid = l.pid AND x.locktype = 'transactionid')))
                 ORDER BY a.pid LIMIT 5",
                &[&(MIGRATION_LOCK >> 32)],
            )
            .map_err(|e| e.to_string())?;
        let holders = rows
            .iter()
            .map(|r| {
                let app: Option<String> = r.get(2);
                format!(
                    "pid {} (role {}, application {})",
                    r.get::<_, i32>(0),
                    crate::text::escaped(&r.get::<_, Option<String>>(1).unwrap_or_default()),
                    crate::text::escaped(
                        app.as_deref()
                            .filter(|a| !a.is_empty())
                            .unwrap_or("unnamed")
                    )
                )
            })
            .collect();
        Ok((timeout, holders))
    };
    match ask() {
        Ok((timeout, holders)) if !holders.is_empty() => format!(
            "waited {timeout}, the lock is held by {}: end that transaction (or \
             SELECT pg_terminate_backend(PID))",
            holders.join(", ")
        ),
        Ok((timeout, _)) => format!(
            "waited {timeout}; its holder has gone (see pg_locks and pg_stat_activity if it \
             happens again)"
        ),
        Err(e) => format!("could not tell who holds the lock: {e}"),
    }
}

impl Postgres {
    /// Connects and applies pending migrations.
    pub fn open(config: &PgConfig, holder: Holder) -> Result<Postgres> {
        let store = Postgres::connect(config, holder)?;
        store.migrate()?;
        store.verified.set(true);
        store.require_writer()?;
        Ok(store)
    }

    /// Connects and applies pending migrations to a wxtoken database, but refuses an empty
    /// one as a reader does: `get --reject` upgrades a store, never creates one (as on
    /// SQLite, where it needs the file to exist).
    pub fn open_existing(config: &PgConfig, holder: Holder) -> Result<Postgres> {
        let store = Postgres::connect(config, holder)?;
        if store.version()? == 0 {
            store.require_version(0)?;
        }
        store.migrate()?;
        store.verified.set(true);
        store.require_writer()?;
        Ok(store)
    }

    /// Refuses, in one line that names the missing grant, a role that may only read
    /// tokens (what `store grant-reader` gives): a writing handle would otherwise fail
    /// later, on whichever table it reached first.
    fn require_writer(&self) -> Result<()> {
        let row = self
            .c()
            .query_one(
                "SELECT current_user::text, has_table_privilege('tokens', 'INSERT'),
                        has_table_privilege('account_secrets', 'SELECT')",
                &[],
            )
            .map_err(|e| self.err(e))?;
        let (role, insert, secrets): (String, bool, bool) = (row.get(0), row.get(1), row.get(2));
        let missing = match (insert, secrets) {
            (true, true) => return Ok(()),
            (false, _) => "INSERT on tokens",
            (true, false) => "SELECT on account_secrets",
        };
        Err(StoreError::ReadOnly(format!(
            "role {role} may only read tokens on {} (it has no {missing}, like a role made by \
             `wxtoken store grant-reader`): this command needs the refresher's role; a reader \
             can run `get`, `account list` and `refresh --dry-run`",
            self.config
        )))
    }

    /// Connects for reading: no migration, and a schema of another version is refused,
    /// by the first query rather than by one of its own.
    pub fn open_read(config: &PgConfig) -> Result<Postgres> {
        Postgres::connect(config, Holder::nobody())
    }

    /// Refuses a schema other than this binary's; a reader never migrates.
    fn require_version(&self, version: i64) -> Result<()> {
        if version != MIGRATIONS.len() as i64 {
            self.check_version(version)?;
            return Err(StoreError::Schema(format!(
                "database {} has schema version {version}, this wxtoken needs {}; \
                 run any writing command (e.g. wxtoken status) once to upgrade it",
                self.config,
                MIGRATIONS.len()
            )));
        }
        self.verified.set(true);
        Ok(())
    }

    /// For read methods other than `latest_token`, which checks within its own query.
    fn verify(&self) -> Result<()> {
        if self.verified.get() {
            return Ok(());
        }
        self.require_version(self.version()?)
    }

    fn connect(config: &PgConfig, holder: Holder) -> Result<Postgres> {
        let client = crate::store::postgres::conn::connect(config).map_err(StoreError::Io)?;
        let store = Postgres {
            watch: answering::Watch::new(config),
            client: RefCell::new(client),
            lost: RefCell::new(None),
            config: config.clone(),
            holder,
            verified: Cell::new(false),
            keys: Default::default(),
        };
        store.bound_lock_waits(&mut store.client.borrow_mut())?;
        Ok(store)
    }

    /// A writing session waits at most [`LOCK_TIMEOUT`] for a lock, unless the role or the
    /// database has a `lock_timeout` of its own. Without a bound, any session that kept a
    /// transaction open on a row wxtoken locks would stop every refresher for as long as
    /// it liked. A reader's handle takes no locks, and `get` stays one round trip.
    fn bound_lock_waits(&self, client: &mut Client) -> Result<()> {
        if self.holder.id.is_empty() {
            return Ok(());
        }
        // In the same round trip: the statement_timeout the role or database sets, which
        // a server that stopped answering is then given before the run gives up on it.
        let messages = client
            .simple_query(&format!(
                "SELECT set_config('lock_timeout', '{}s', false)
                 WHERE current_setting('lock_timeout') = '0';
                 SELECT (extract(epoch FROM current_setting('statement_timeout')::interval)
                         * 1000)::bigint",
                LOCK_TIMEOUT.as_secs()
            ))
            .map_err(|e| self.err(e))?;
        let statement_ms = messages.iter().rev().find_map(|m| match m {
            postgres::SimpleQueryMessage::Row(row) => row.get(0)?.parse::<u64>().ok(),
            _ => None,
        });
        self.watch.set_statement_timeout(statement_ms.unwrap_or(0));
        Ok(())
    }

    /// Runs `statement`, cancelling it on the server if a stop signal comes meanwhile (the
    /// handler only sets a flag, and a statement waiting for a lock would otherwise make
    /// `refresh` wait for the lock timeout after SIGTERM).
    fn cancelled_by_a_stop_signal<T>(
        &self,
        token: postgres::CancelToken,
        statement: impl FnOnce() -> T,
    ) -> T {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let done = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (done, config) = (done.clone(), self.config.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    if crate::signals::caught().is_some() {
                        if let Err(e) = crate::store::postgres::conn::cancel(&token, &config) {
                            log::warn!("{e}");
                        }
                        return;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            })
        };
        let result = statement();
        done.store(true, Ordering::SeqCst);
        let _ = watcher.join();
        result
    }

    /// The connection. Never borrowed across another call of ours.
    ///
    /// One that was lost (a server restart, a network cut) is replaced by a new one first:
    /// every method is a unit of work of its own, so nothing half-done carries over, and
    /// the holder id, hence any lease, stays the same. A failure ends the method with the
    /// old, closed connection, and `err` tells why the new one could not be made. Only a
    /// commit cut off in flight is not simply retried (`StoreError::Unsure`).
    fn c(&self) -> answering::Answering<'_> {
        let mut client = self.client.borrow_mut();
        if client.is_closed() {
            self.reconnect(&mut client);
        }
        answering::Answering::start(client, &self.watch)
    }

    fn reconnect(&self, client: &mut Client) {
        match crate::store::postgres::conn::connect(&self.config) {
            Ok(new) => {
                log::info!("reconnected to {} after losing the connection", self.config);
                *client = new;
                self.lost.replace(None);
                if let Err(e) = self.bound_lock_waits(client) {
                    log::warn!("{e}");
                }
            }
            Err(reason) => {
                self.lost.replace(Some(reason));
            }
        }
    }

    /// Whether a statement failed because the session is gone (a restart, a cut): the
    /// next `c` connects again.
    fn session_lost(&self, e: &postgres::Error) -> bool {
        e.is_closed() || self.client.borrow().is_closed()
    }

    fn err(&self, e: postgres::Error) -> StoreError {
        let err = pg_error(&self.config, &e);
        match (&err, self.lost.borrow().as_deref()) {
            (StoreError::Io(m), Some(reason)) if e.is_closed() => {
                // The reason repeats the server's name that `m` has given already.
                let prefix = format!("could not connect to {}: ", self.config);
                let reason = reason.strip_prefix(&prefix).unwrap_or(reason);
                StoreError::Io(format!("{m}, and connecting again failed: {reason}"))
            }
            _ => err,
        }
    }

    /// A failed commit: refused by the server (known not to have happened), or cut off
    /// with the connection, when whether it happened is unknown.
    fn commit_err(&self, e: postgres::Error) -> StoreError {
        // An ERROR rolled the transaction back; a FATAL (the session ended: a restart,
        // an administrator) may have come after the commit.
        if e.as_db_error().is_some_and(|db| db.severity() == "ERROR") {
            return self.err(e);
        }
        StoreError::Unsure(format!(
            "the connection to {} was lost while committing ({e}): whether the commit \
             happened is unknown",
            self.config
        ))
    }

    /// Runs a query whose rows end in a column `server_now` ([`NOW_EXACT`]), and says how
    /// far this host's clock is ahead of the server's ([`host_offset`], 0 without rows):
    /// what the rows' times need to be shown in this host's clock, as token times are.
    fn query_timed(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<(Vec<postgres::Row>, i64)> {
        let sent = host_now();
        let rows = self.c().query(sql, params).map_err(|e| self.err(e))?;
        let received = host_now();
        let skew = rows.first().map_or(0, |r| {
            host_offset(sent, r.get::<_, f64>("server_now"), received)
        });
        Ok((rows, skew))
    }

    // ---- schema ----

    /// The server clock's now, in Unix seconds.
    fn server_now(&self) -> Result<i64> {
        let row = self
            .c()
            .query_one(&format!("SELECT {NOW}"), &[])
            .map_err(|e| self.err(e))?;
        Ok(row.get(0))
    }

    /// The applied schema version: 0 for an empty database.
    fn version(&self) -> Result<i64> {
        let mut c = self.c();
        let exists: bool = c
            .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
            .map_err(|e| self.err(e))?
            .get(0);
        if !exists {
            return Ok(0);
        }
        let row = c
            .query_one(
                "SELECT coalesce(max(version), 0)::bigint FROM schema_migrations",
                &[],
            )
            .map_err(|e| self.err(e))?;
        Ok(row.get(0))
    }

    fn check_version(&self, version: i64) -> Result<()> {
        crate::store::schema::refuse_newer(&self.config, version, MIGRATIONS.len())
    }

    /// Applies every pending migration in one transaction that first takes an advisory
    /// lock, so that two hosts upgrading at once run one after the other and the second
    /// finds nothing left to do. DDL is transactional in PostgreSQL: all or nothing.
    fn migrate(&self) -> Result<()> {
        if self.version()? == MIGRATIONS.len() as i64 {
            return Ok(());
        }
        let config = &self.config;
        let err = |e: postgres::Error| pg_error(config, &e);
        let mut c = self.c();
        let mut tx = c.transaction().map_err(err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .map_err(err)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .map_err(err)?;
        let version: i64 = tx
            .query_one(
                "SELECT coalesce(max(version), 0)::bigint FROM schema_migrations",
                &[],
            )
            .map_err(err)?
            .get(0);
        self.check_version(version)?;
        if version == 0 {
            let foreign: i64 = tx
                .query_one(
                    "SELECT count(*) FROM pg_tables
                     WHERE schemaname = current_schema() AND tablename = 'accounts'",
                    &[],
                )
                .map_err(err)?
                .get(0);
            if foreign > 0 {
                return Err(StoreError::Schema(format!(
                    "{config} already has an accounts table that wxtoken did not create; \
                     refusing to touch it (use another database or schema)"
                )));
            }
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let n = i as i32 + 1;
            tx.batch_execute(sql).map_err(|e| {
                StoreError::Schema(format!(
                    "postgresql migration {n} failed: {}",
                    pg_error(config, &e)
                ))
            })?;
            tx.execute("INSERT INTO schema_migrations (version) VALUES ($1)", &[&n])
                .map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    // ---- helpers ----

    /// Accounts matching `rest` (a WHERE and/or ORDER BY clause). Only a writing handle
    /// reads the secrets: a reader role may select accounts, never `account_secrets`.
    fn select_accounts(&self, rest: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Account>> {
        self.verify()?;
        let (secret, previous, join) = if self.holder.id.is_empty() {
            ("NULL::text", "NULL::text", "")
        } else {
            (
                "s.secret",
                "s.previous",
                "LEFT JOIN account_secrets s ON s.account_id = a.id",
            )
        };
        let sql = format!(
            "SELECT a.id, a.appid, a.agent, a.api, {secret}, a.enabled, a.created_at,
                    a.updated_at, a.held_until, a.held_reason, a.tickets, a.fetch_due,
                    {NOW_EXACT} AS server_now, a.role, a.platform_id, {previous}, a.receiver
             FROM accounts a {join} {rest}"
        );
        let (rows, skew) = self.query_timed(&sql, params)?;
        Ok(rows
            .iter()
            .map(|r| Self::account_from_row(&self.keys, r, skew))
            .collect())
    }

    /// An account, its times (the hold, when it was added and changed, all stamped by the
    /// server) moved into this host's clock by `skew` (see `query_timed`), as
    /// `latest_token` moves token times: a caller that judges the hold by its own clock
    /// then agrees with the server, however far this host's clock is off.
    fn account_from_row(keys: &crate::keys::Keys, row: &postgres::Row, skew: i64) -> Account {
        AccountColumns {
            id: row.get(0),
            appid: row.get(1),
            agent: row.get(2),
            api: row.get(3),
            // A reader's handle selects no secret (NULL).
            secret: row.get(4),
            enabled: row.get(5),
            created_at: row.get(6),
            updated_at: row.get(7),
            held_until: row.get(8),
            held_reason: row.get(9),
            tickets: row.get(10),
            fetch_due: row.get(11),
            role: row.get(13),
            platform_id: row.get(14),
            previous_secret: row.get(15),
            receiver: row.get(16),
        }
        .account(keys, skew)
    }

    /// Runs an UPDATE of one account (appid $1, agent $2); `NotFound` if it touched none.
    fn change_account(
        &self,
        key: &AccountKey,
        sql: &str,
        rest: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<i64>> {
        let mut values: Vec<&(dyn ToSql + Sync)> = vec![&key.appid, &key.agent];
        values.extend_from_slice(rest);
        let row = self.c().query_opt(sql, &values).map_err(|e| self.err(e))?;
        match row {
            Some(row) => Ok(Some(row.get(0))),
            None => Err(StoreError::NotFound(key.clone())),
        }
    }

    /// The newest run matching `filter` (a WHERE clause or nothing), its times (stamped by
    /// the server, see `record_run`) in this host's clock.
    fn run_row(&self, filter: &str) -> Result<Option<RunRow>> {
        self.verify()?;
        let sql = format!(
            "SELECT {RUN_COLUMNS}, {NOW_EXACT} AS server_now
             FROM runs {filter} ORDER BY id DESC LIMIT 1"
        );
        let (rows, skew) = self.query_timed(&sql, &[])?;
        Ok(rows.first().map(|r| RunRow {
            started_at: r.get::<_, i64>(0) + skew,
            finished_at: r.get::<_, i64>(1) + skew,
            duration_ms: r.get(2),
            scope: r.get(3),
            accounts: r.get(4),
            refreshed: r.get(5),
            fresh: r.get(6),
            busy: r.get(7),
            held: r.get(8),
            failed: r.get(9),
        }))
    }

    // ---- readers ----

    /// Lets `role` read tokens and nothing else: the newest-token view, the accounts
    /// (which hold no secret) and the schema version. Never the secrets, never a write.
    /// Returns the statements applied.
    pub fn grant_reader(&self, role: &str) -> Result<Vec<String>> {
        let mut c = self.c();
        let exists = c
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
            .map_err(|e| self.err(e))?
            .is_some();
        if !exists {
            return Err(StoreError::NoSuchRole(format!(
                "role '{}' does not exist on {}; create it first (CREATE ROLE ... LOGIN)",
                crate::policy::one_line(role, 64),
                self.config
            )));
        }
        let schema: String = c
            .query_one("SELECT current_schema()", &[])
            .map_err(|e| self.err(e))?
            .get(0);
        let statements = reader_grants(role, &schema);
        let mut tx = c.transaction().map_err(|e| self.err(e))?;
        for sql in &statements {
            tx.batch_execute(sql)
                .map_err(|e| pg_error(&self.config, &e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(statements)
    }
}

impl ReadStore for Postgres {
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

    /// On the server's clock, which stamps the holds; `now` is not used.
    fn tenant_groups(&self, _now: i64) -> Result<Vec<TenantGroup>> {
        self.tenant_groups_()
    }

    fn ticket_times(&self, account_id: i64) -> Result<Option<(i64, i64)>> {
        self.ticket_times_(account_id)
    }

    fn platform_events(&self, account_id: i64, limit: i64) -> Result<Vec<PlatformEvent>> {
        self.platform_events_(account_id, limit)
    }
    fn location(&self) -> String {
        self.config.to_string()
    }

    fn accounts(&self) -> Result<Vec<Account>> {
        self.select_accounts("ORDER BY a.appid, a.agent", &[])
    }

    fn account(&self, key: &AccountKey) -> Result<Option<Account>> {
        let found = self.select_accounts(
            "WHERE a.appid = $1 AND a.agent = $2",
            &[&key.appid, &key.agent],
        )?;
        Ok(found.into_iter().next())
    }

    /// One round trip, through the reader view, with no named prepared statement (so it
    /// works for a reader role and behind a transaction pooler). The row's times are
    /// shifted into this host's clock by the server's: a caller that judges validity with
    /// its own clock then agrees with the server, however far this host's clock is off.
    fn latest_token(&self, key: &AccountKey, kind: Credential) -> Result<Option<TokenRow>> {
        let sql = format!(
            "SELECT n.token, n.expires_in, n.fetched_at, n.expires_at, {NOW_EXACT},
                    (SELECT coalesce(max(version), 0)::bigint FROM schema_migrations),
                    n.id, n.unfinished_fetch, n.classic
             FROM (SELECT 1) one LEFT JOIN latest_tokens n
                  ON n.appid = $1 AND n.agent = $2 AND n.kind = $3"
        );
        let kind = kind.as_str();
        let params: [(&(dyn ToSql + Sync), Type); 3] = [
            (&key.appid, Type::TEXT),
            (&key.agent, Type::TEXT),
            (&kind, Type::TEXT),
        ];
        let sent = host_now();
        let result = self.c().query_typed(&sql, &params);
        let received = host_now();
        let rows = result.map_err(|e| match e.code().map(|c| c.code()) {
            // No schema_migrations or latest_tokens (version 0, or someone else's), or a
            // view of another version without a column this one reads: say which version
            // it is and what to do, as the other commands do.
            Some("42P01" | "42703") => self
                .version()
                .ok()
                .and_then(|v| self.require_version(v).err())
                .unwrap_or_else(|| self.err(e)),
            _ => self.err(e),
        })?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        if !self.verified.get() {
            self.require_version(row.get(5))?;
        }
        let skew = host_offset(sent, row.get(4), received);
        Ok(row.get::<_, Option<String>>(0).map(|token| TokenRow {
            id: row.get(6),
            token,
            expires_in: row.get(1),
            fetched_at: row.get::<_, i64>(2) + skew,
            expires_at: row.get::<_, i64>(3) + skew,
            unfinished_fetch: row.get::<_, Option<i64>>(7).map(|t| t + skew),
            classic: row.get(8),
        }))
    }

    /// Waits for every transaction recording a token to commit (they hold the lock shared)
    /// before reading the largest id. Identity values are handed out before commit, so
    /// without the wait a row committed after this read could carry a smaller id and look
    /// fetched before this run started: two hosts would fetch the account twice.
    fn newest_token_id(&self) -> Result<i64> {
        self.verify()?;
        let config = &self.config;
        let err = |e: postgres::Error| pg_error(config, &e);
        let reader = self.holder.id.is_empty();
        let mut c = self.c();
        let mut tx = c.transaction().map_err(err)?;
        // A reader's handle (`refresh --dry-run`, which records nothing) may not lock the
        // row, nor select `tokens`; the newest row of all is the newest of its account and
        // kind, so the view has it too.
        if !reader {
            // Nothing is fetched yet: a stop signal may cut this wait short.
            let token = tx.cancel_token();
            self.cancelled_by_a_stop_signal(token, || {
                tx.execute(&format!("{RECORD_LOCK_ROW} FOR UPDATE"), &[])
            })
            .map_err(err)?;
        }
        let table = if reader { "latest_tokens" } else { "tokens" };
        let newest: i64 = tx
            .query_one(
                &format!("SELECT coalesce(max(id), 0)::bigint FROM {table}"),
                &[],
            )
            .map_err(err)?
            .get(0);
        tx.commit().map_err(err)?;
        Ok(newest)
    }

    fn unfinished_fetches(&self) -> Result<Vec<i64>> {
        self.verify()?;
        // A reader's handle may not select `intents`: the view shows them with the tokens.
        let sql = if self.holder.id.is_empty() {
            "SELECT a.id FROM accounts a JOIN latest_tokens n
                 ON n.appid = a.appid AND n.agent = a.agent AND n.kind = 'access_token'
             WHERE n.unfinished_fetch IS NOT NULL ORDER BY n.unfinished_fetch"
        } else {
            "SELECT account_id FROM intents ORDER BY started_at"
        };
        let rows = self.c().query(sql, &[]).map_err(|e| self.err(e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Its start (stamped by the server) in this host's clock, as token times.
    fn last_attempt(&self, account_id: i64, kind: Credential) -> Result<Option<Attempt>> {
        self.verify()?;
        let (rows, skew) = self.query_timed(
            &format!(
                "SELECT started_at, duration_ms, tries, outcome, errcode, errmsg, http_status, detail,
                        clock_offset, {NOW_EXACT} AS server_now
                 FROM attempts WHERE account_id = $1 AND kind = $2 ORDER BY id DESC LIMIT 1"
            ),
            &[&account_id, &kind.as_str()],
        )?;
        Ok(rows.first().map(|r| {
            let columns = AttemptColumns {
                outcome: r.get::<_, String>(3),
                errcode: r.get(4),
                errmsg: r.get(5),
                http_status: r.get(6),
                detail: r.get(7),
            };
            Attempt {
                started_at: r.get::<_, i64>(0) + skew,
                duration_ms: r.get(1),
                tries: r.get(2),
                result: columns.result(),
                clock_offset: r.get(8),
            }
        }))
    }

    /// On the server's clock, which stamps the attempts; `now` is not used.
    fn fetches_today(&self, _now: i64) -> Result<HashMap<i64, i64>> {
        self.verify()?;
        let since = crate::quota::day_start(self.server_now()?);
        let rows = self
            .c()
            .query(
                "SELECT account_id, sum(n)::bigint FROM (
                     SELECT account_id, tries AS n FROM attempts
                     WHERE started_at >= $1 AND kind = $2
                     UNION ALL
                     SELECT account_id, 1 FROM forced_refreshes WHERE at >= $1) counted
                 GROUP BY account_id",
                &[&since, &Credential::AccessToken.as_str()],
            )
            .map_err(|e| self.err(e))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// On the server's clock, which stamps the resets; `now` is not used.
    fn quota_resets_this_month(&self, account_id: i64, _now: i64) -> Result<i64> {
        self.verify()?;
        let since = crate::quota::month_start(self.server_now()?);
        let row = self
            .c()
            .query_one(
                "SELECT count(*) FROM quota_resets WHERE account_id = $1 AND ok AND at >= $2",
                &[&account_id, &since],
            )
            .map_err(|e| self.err(e))?;
        Ok(row.get(0))
    }

    fn last_runs(&self) -> Result<(Option<RunRow>, Option<RunRow>)> {
        Ok((self.run_row("")?, self.run_row(SUCCESSFUL_RUNS)?))
    }

    /// Token times, like holds (see `account_from_row`), moved into this host's clock: the
    /// target judges them by its own, which on SQLite is this host's.
    fn export(&self, _now: i64) -> Result<Vec<Exported>> {
        let accounts = self.accounts()?;
        let sent = host_now();
        let rows = self
            .c()
            .query(
                &format!(
                    "SELECT t.account_id, t.kind, t.token, t.expires_in, t.fetched_at, t.expires_at,
                            t.id, {NOW_EXACT}
                     FROM tokens t
                     WHERE t.expires_at > {NOW}
                       AND t.id = (SELECT max(n.id) FROM tokens n
                                   WHERE n.account_id = t.account_id AND n.kind = t.kind)
                     ORDER BY t.account_id, t.kind"
                ),
                &[],
            )
            .map_err(|e| self.err(e))?;
        let received = host_now();
        let mut items = accounts
            .into_iter()
            .map(|account| {
                let tokens = rows
                    .iter()
                    .filter(|r| r.get::<_, i64>(0) == account.id)
                    .map(|r| {
                        let skew = host_offset(sent, r.get(7), received);
                        let row = TokenRow {
                            id: r.get(6),
                            token: r.get(2),
                            expires_in: r.get(3),
                            fetched_at: r.get::<_, i64>(4) + skew,
                            expires_at: r.get::<_, i64>(5) + skew,
                            // Not copied: the target has no unfinished fetch of its own.
                            unfinished_fetch: None,
                            classic: false,
                        };
                        (r.get(1), row)
                    })
                    .collect();
                Exported::plain(account, tokens)
            })
            .collect::<Vec<_>>();
        crate::store::rows::link_platforms(&mut items);
        for item in items.iter_mut().filter(|i| i.account.api.is_platform()) {
            self.export_platform_(item)?;
        }
        Ok(items)
    }
}

impl Store for Postgres {
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

    /// Due by the server's clock (which stamps every expiry here).
    fn target_ids(&self, _now: i64, window: Option<i64>, plain: bool) -> Result<Vec<i64>> {
        self.verify()?;
        let chosen = match window {
            None => "SELECT id FROM accounts WHERE enabled".to_string(),
            Some(_) => {
                let mut parts = vec![
                    format!("SELECT id FROM accounts WHERE enabled AND due_at <= {NOW} + $1"),
                    "SELECT id FROM accounts WHERE enabled AND due_at IS NULL".to_string(),
                    "SELECT id FROM accounts WHERE fetch_due AND enabled".to_string(),
                    "SELECT account_id FROM intents".to_string(),
                ];
                if plain {
                    parts.push(
                        "SELECT id FROM accounts
                         WHERE enabled AND role NOT IN ('component', 'authorizer', 'suite',
                                                        'corp', 'provider')"
                            .to_string(),
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
             WHERE a.enabled AND a.id IN ({chosen})
             ORDER BY a.role IN ('authorizer', 'corp'), i.started_at IS NULL, i.started_at,
                      {order}"
        );
        let window = window.unwrap_or(0);
        let params: Vec<&(dyn ToSql + Sync)> = if sql.contains("$1") {
            vec![&window]
        } else {
            vec![]
        };
        let rows = self.c().query(&sql, &params).map_err(|e| self.err(e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn count_enabled(&self) -> Result<i64> {
        let row = self
            .c()
            .query_one("SELECT count(*) FROM accounts WHERE enabled", &[])
            .map_err(|e| self.err(e))?;
        Ok(row.get(0))
    }

    fn clock_stepped_back(&self, _now: i64) -> Result<bool> {
        let row = self
            .c()
            .query_one(
                &format!("SELECT coalesce(max(fetched_at), 0) > {NOW} FROM tokens"),
                &[],
            )
            .map_err(|e| self.err(e))?;
        Ok(row.get(0))
    }

    fn accounts_by_ids(&self, ids: &[i64]) -> Result<Vec<Account>> {
        let list: Vec<i64> = ids.to_vec();
        let found = self.select_accounts("WHERE a.id = ANY($1)", &[&list])?;
        let mut found: HashMap<i64, Account> = found.into_iter().map(|a| (a.id, a)).collect();
        Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
    }

    /// At the server's now, as `add_account`.
    fn hold_account(&self, key: &AccountKey, reason: &str, _now: i64) -> Result<()> {
        let sql = format!(
            "UPDATE accounts SET held_until = $3, held_reason = $4, updated_at = {NOW},
                 fetch_due = false
             WHERE appid = $1 AND agent = $2 RETURNING id"
        );
        let until = crate::policy::UNTIL_FIXED;
        self.change_account(key, &sql, &[&until, &reason]).map(drop)
    }

    fn keys(&self) -> &crate::keys::Keys {
        &self.keys
    }

    fn opener(&self) -> Opener {
        let (config, holder) = (self.config.clone(), self.holder.clone());
        let keys = self.keys.clone();
        Box::new(move || {
            let mut store = Postgres::connect(&config, holder.clone())?;
            store.keys = keys.clone();
            Ok(Box::new(store))
        })
    }

    /// One round trip (an empty query) on a connection that sat idle; a lost one is
    /// replaced, and a failure to connect again is the error.
    fn revive(&self) -> Result<()> {
        let mut client = self.client.borrow_mut();
        if client.is_valid(REVIVE_TIMEOUT).is_ok() {
            return Ok(());
        }
        self.reconnect(&mut client);
        match self.lost.borrow().as_deref() {
            Some(reason) => Err(StoreError::Io(reason.to_string())),
            None => Ok(()),
        }
    }

    /// Stamped by the server's clock, as every time on PostgreSQL; `now` is not used.
    fn add_account(&self, new: &NewAccount, _now: i64) -> Result<()> {
        let key = &new.key;
        let (api_column, role) = new.api.columns();
        let (sealed, tickets) = new_account_columns(&self.keys, new)?;
        let config = &self.config;
        let err = |e: postgres::Error| pg_error(config, &e);
        let mut c = self.c();
        let mut tx = c.transaction().map_err(err)?;
        let row = tx
            .query_opt(
                &format!(
                    "INSERT INTO accounts (appid, agent, api, enabled, created_at, updated_at,
                                           tickets, role, platform_id, receiver)
                     VALUES ($1, $2, $3, true, {NOW}, {NOW}, $4, $5, $6, $7)
                     ON CONFLICT (appid, agent) DO NOTHING RETURNING id"
                ),
                &[
                    &key.appid,
                    &key.agent,
                    &api_column,
                    &tickets,
                    &role,
                    &new.platform,
                    &new.receiver,
                ],
            )
            .map_err(err)?;
        let Some(row) = row else {
            return Err(StoreError::AlreadyExists(key.clone()));
        };
        let id: i64 = row.get(0);
        tx.execute(
            "INSERT INTO account_secrets (account_id, secret) VALUES ($1, $2)",
            &[&id, &sealed],
        )
        .map_err(err)?;
        tx.commit().map_err(err)
    }

    /// A platform with tenants is refused with what to do, not a foreign-key error: its
    /// row is locked first, which a tenant added meanwhile (whose foreign key locks the
    /// platform's row to share) waits for, so the count cannot go stale before the delete.
    fn remove_account(&self, key: &AccountKey) -> Result<()> {
        let config = &self.config;
        let err = |e: postgres::Error| pg_error(config, &e);
        let mut c = self.c();
        let mut tx = c.transaction().map_err(err)?;
        let row = tx
            .query_opt(
                "SELECT id, role FROM accounts WHERE appid = $1 AND agent = $2 FOR UPDATE",
                &[&key.appid, &key.agent],
            )
            .map_err(err)?;
        let Some(row) = row else {
            return Err(StoreError::NotFound(key.clone()));
        };
        // Counted by a statement of its own, whose snapshot (read committed) follows the
        // lock: it sees every tenant the lock waited for.
        let tenants: i64 = tx
            .query_one(
                "SELECT count(*) FROM accounts WHERE platform_id = $1",
                &[&row.get::<_, i64>(0)],
            )
            .map_err(err)?
            .get(0);
        if tenants > 0 {
            return Err(crate::store::rows::has_tenants(key, row.get(1), tenants));
        }
        tx.execute(
            "DELETE FROM accounts WHERE appid = $1 AND agent = $2",
            &[&key.appid, &key.agent],
        )
        .map_err(err)?;
        tx.commit().map_err(err)
    }

    /// At the server's now, as `add_account`.
    fn set_enabled(&self, key: &AccountKey, enabled: bool, _now: i64) -> Result<()> {
        let sql = format!(
            "UPDATE accounts SET enabled = $3, updated_at = {NOW}, fetch_due = $3,
                 held_until = NULL, held_reason = NULL
             WHERE appid = $1 AND agent = $2 RETURNING id"
        );
        self.change_account(key, &sql, &[&enabled]).map(drop)
    }

    /// At the server's now, as `add_account`.
    fn set_tickets(&self, key: &AccountKey, tickets: &[Ticket], _now: i64) -> Result<()> {
        let sql = format!(
            "UPDATE accounts SET tickets = $3, updated_at = {NOW}, due_at = NULL
             WHERE appid = $1 AND agent = $2 RETURNING id"
        );
        self.change_account(key, &sql, &[&ticket_list(tickets)])
            .map(drop)
    }

    fn reseal(&self, all: bool) -> Result<usize> {
        let config = &self.config;
        let err = |e: postgres::Error| pg_error(config, &e);
        let mut c = self.c();
        let mut tx = c.transaction().map_err(err)?;
        let mut n = 0;
        let rows = tx
            .query(
                "SELECT s.account_id, a.appid, a.agent, s.secret, s.previous
                 FROM account_secrets s JOIN accounts a ON a.id = s.account_id FOR UPDATE",
                &[],
            )
            .map_err(err)?;
        for row in rows {
            let owner = crate::crypto::account_owner(&AccountKey {
                appid: row.get(1),
                agent: row.get(2),
            });
            let id: i64 = row.get(0);
            if let Some(sealed) = resealed(&self.keys, &owner, row.get(3), all)? {
                tx.execute(
                    "UPDATE account_secrets SET secret = $2 WHERE account_id = $1",
                    &[&id, &sealed],
                )
                .map_err(err)?;
                n += 1;
            }
            // A tenant's previous credential, as on SQLite (not counted: not a secret of
            // its own account to report).
            if let Some(previous) = row.get::<_, Option<String>>(4)
                && let Some(sealed) = resealed(&self.keys, &owner, previous, all)?
            {
                tx.execute(
                    "UPDATE account_secrets SET previous = $2 WHERE account_id = $1",
                    &[&id, &sealed],
                )
                .map_err(err)?;
            }
        }
        // A platform's ticket and push crypto, each bound to its column's owner.
        for (table, column) in [
            ("platform_tickets", "ticket"),
            ("platform_crypto", "token"),
            ("platform_crypto", "aes_key"),
        ] {
            let rows = tx
                .query(
                    &format!(
                        "SELECT p.account_id, a.appid, a.agent, p.{column}
                         FROM {table} p JOIN accounts a ON a.id = p.account_id
                         FOR UPDATE OF p"
                    ),
                    &[],
                )
                .map_err(err)?;
            for row in rows {
                let key = AccountKey {
                    appid: row.get(1),
                    agent: row.get(2),
                };
                let owner = crate::crypto::platform_owner(&key, column);
                let Some(sealed) = resealed(&self.keys, &owner, row.get(3), all)? else {
                    continue;
                };
                let id: i64 = row.get(0);
                tx.execute(
                    &format!("UPDATE {table} SET {column} = $2 WHERE account_id = $1"),
                    &[&id, &sealed],
                )
                .map_err(err)?;
            }
        }
        let rows = tx
            .query(
                "SELECT id, name, password FROM sinks WHERE password IS NOT NULL FOR UPDATE",
                &[],
            )
            .map_err(err)?;
        for row in rows {
            let owner = crate::crypto::sink_owner(&row.get::<_, String>(1));
            let Some(sealed) = resealed(&self.keys, &owner, row.get(2), all)? else {
                continue;
            };
            let id: i64 = row.get(0);
            tx.execute(
                "UPDATE sinks SET password = $2 WHERE id = $1",
                &[&id, &sealed],
            )
            .map_err(err)?;
            n += 1;
        }
        tx.commit().map_err(err)?;
        Ok(n)
    }

    fn forget_sealed(&self, reason: &str) -> Result<(usize, usize)> {
        let config = &self.config;
        let err = |e: postgres::Error| pg_error(config, &e);
        let mut c = self.c();
        let mut tx = c.transaction().map_err(err)?;
        let accounts = tx
            .execute(
                "UPDATE accounts SET held_until = $1, held_reason = $2
                 WHERE id IN (SELECT account_id FROM account_secrets WHERE secret LIKE 'wxs1:%')",
                &[&crate::policy::UNTIL_SECRET, &reason],
            )
            .map_err(err)?;
        tx.execute(
            "UPDATE account_secrets SET secret = $1 WHERE secret LIKE 'wxs1:%'",
            &[&crate::crypto::LOST],
        )
        .map_err(err)?;
        // A previous credential, a ticket and push crypto sealed with the lost key are
        // gone with it, as on SQLite: the next push brings a ticket, set-crypto the rest.
        tx.batch_execute(
            "UPDATE account_secrets SET previous = NULL WHERE previous LIKE 'wxs1:%';
             DELETE FROM platform_tickets WHERE ticket LIKE 'wxs1:%';
             DELETE FROM platform_crypto WHERE token LIKE 'wxs1:%' OR aes_key LIKE 'wxs1:%';",
        )
        .map_err(err)?;
        let sinks = tx
            .execute(
                "UPDATE sinks SET password = $1 WHERE password LIKE 'wxs1:%'",
                &[&crate::crypto::LOST],
            )
            .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok((accounts as usize, sinks as usize))
    }

    fn with_secrets_lock(
        &self,
        work: &mut dyn FnMut() -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        self.c()
            .execute("SELECT pg_advisory_lock($1)", &[&SECRETS_LOCK])
            .map_err(|e| self.err(e))?;
        let result = work();
        // A connection lost meanwhile took the lock with it.
        let _ = self
            .c()
            .execute("SELECT pg_advisory_unlock($1)", &[&SECRETS_LOCK]);
        result
    }

    fn sealed_sample(&self, except: Option<&AccountKey>) -> Result<Option<SealedSample>> {
        let (appid, agent) = except.map_or(("", ""), |k| (k.appid.as_str(), k.agent.as_str()));
        let row = self
            .c()
            .query_opt(
                "SELECT a.appid, a.agent, s.secret
                 FROM account_secrets s JOIN accounts a ON a.id = s.account_id
                 WHERE left(s.secret, 5) = 'wxs1:' AND NOT (a.appid = $1 AND a.agent = $2)
                 LIMIT 1",
                &[&appid, &agent],
            )
            .map_err(|e| self.err(e))?;
        if let Some(row) = row {
            let key = AccountKey {
                appid: row.get(0),
                agent: row.get(1),
            };
            return Ok(Some(SealedSample::account(&key, row.get(2))));
        }
        let row = self
            .c()
            .query_opt(
                "SELECT name, password FROM sinks WHERE left(password, 5) = 'wxs1:' LIMIT 1",
                &[],
            )
            .map_err(|e| self.err(e))?;
        Ok(row.map(|row| SealedSample::sink(row.get(0), row.get(1))))
    }

    fn sealed_kids(&self) -> Result<std::collections::BTreeSet<String>> {
        let rows = self
            .c()
            .query(
                "SELECT secret FROM account_secrets WHERE left(secret, 5) = 'wxs1:'
                 UNION ALL
                 SELECT previous FROM account_secrets WHERE left(previous, 5) = 'wxs1:'
                 UNION ALL
                 SELECT password FROM sinks WHERE left(password, 5) = 'wxs1:'
                 UNION ALL
                 SELECT ticket FROM platform_tickets WHERE left(ticket, 5) = 'wxs1:'
                 UNION ALL
                 SELECT token FROM platform_crypto WHERE left(token, 5) = 'wxs1:'
                 UNION ALL
                 SELECT aes_key FROM platform_crypto WHERE left(aes_key, 5) = 'wxs1:'",
                &[],
            )
            .map_err(|e| self.err(e))?;
        Ok(rows
            .into_iter()
            .filter_map(|row| {
                crate::crypto::Stored::new(row.get(0))
                    .kid()
                    .map(str::to_string)
            })
            .collect())
    }

    fn has_plaintext(&self) -> Result<bool> {
        let row = self
            .c()
            .query_one(
                "SELECT coalesce((SELECT left(secret, 3) <> 'wxs' FROM account_secrets
                                  ORDER BY account_id LIMIT 1), false)
                     OR EXISTS (SELECT 1 FROM sinks
                                WHERE password IS NOT NULL AND left(password, 3) <> 'wxs')",
                &[],
            )
            .map_err(|e| self.err(e))?;
        Ok(row.get(0))
    }

    /// At the server's now, as `add_account`.
    fn set_secret(&self, key: &AccountKey, secret: &Secret, _now: i64) -> Result<()> {
        let sql = format!(
            "UPDATE accounts SET updated_at = {NOW}, fetch_due = true,
                 held_until = NULL, held_reason = NULL
             WHERE appid = $1 AND agent = $2 RETURNING id"
        );
        let sealed = seal_secret(&self.keys, &crate::crypto::account_owner(key), secret)?;
        // Two statements, both idempotent: a crash between them leaves the old secret.
        let id = self.change_account(key, &sql, &[])?;
        self.c()
            .execute(
                "INSERT INTO account_secrets (account_id, secret) VALUES ($1, $2)
                 ON CONFLICT (account_id) DO UPDATE SET secret = EXCLUDED.secret, previous = NULL",
                &[&id, &sealed],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Takes the account's lease for `ttl` seconds of server time, in one statement: it
    /// succeeds when nobody holds it, the lease expired, or we hold it already. A holder
    /// on this host whose process is gone is taken over at once; one on another host only
    /// when its lease expires (a pid cannot be probed elsewhere). `now` is not used: the
    /// server's clock decides.
    fn claim(&self, account_id: i64, _now: i64, ttl: i64) -> Result<Claim> {
        let h = &self.holder;
        let pid = i64::from(h.pid);
        // The first statement of each account: on a connection a server restart or a cut
        // ended while this worker was busy elsewhere, it fails at once; taking a lease is
        // idempotent for its holder, so it is tried once more on a new connection.
        let take = || {
            self.c().query_typed_opt(
                &format!(
                    "INSERT INTO claims AS c (account_id, holder, host, pid, claimed_at, expires_at)
                     VALUES ($1, $2, $3, $4, {NOW}, {NOW} + $5::bigint)
                     ON CONFLICT (account_id) DO UPDATE SET holder = EXCLUDED.holder,
                         host = EXCLUDED.host, pid = EXCLUDED.pid,
                         claimed_at = EXCLUDED.claimed_at, expires_at = EXCLUDED.expires_at
                     WHERE c.expires_at <= EXCLUDED.claimed_at OR c.holder = EXCLUDED.holder
                     RETURNING claimed_at"
                ),
                &typed(&[&account_id, &h.id, &h.host, &pid, &ttl]),
            )
        };
        let taken = match take() {
            Err(e) if self.session_lost(&e) => {
                log::info!(
                    "lost the connection to {} ({e}); connecting again",
                    self.config
                );
                take()
            }
            first => first,
        }
        .map_err(|e| self.err(e))?;
        if taken.is_some() {
            return Ok(Claim::Claimed);
        }
        let current = self
            .c()
            .query_typed_opt(
                "SELECT holder, host, pid FROM claims WHERE account_id = $1",
                &typed(&[&account_id]),
            )
            .map_err(|e| self.err(e))?;
        let Some(current) = current else {
            // Released between our two statements: try again.
            return self.claim(account_id, _now, ttl);
        };
        let (other, host, other_pid): (String, String, i64) =
            (current.get(0), current.get(1), current.get(2));
        if host == h.host && !pid_alive(other_pid) {
            // Conditional on the dead holder, so that two takers cannot both win.
            let n = self
                .c()
                .execute_typed(
                    &format!(
                        "UPDATE claims SET holder = $3, host = $4, pid = $5, claimed_at = {NOW},
                             expires_at = {NOW} + $6::bigint
                         WHERE account_id = $1 AND holder = $2"
                    ),
                    &typed(&[&account_id, &other, &h.id, &h.host, &pid, &ttl]),
                )
                .map_err(|e| self.err(e))?;
            if n == 1 {
                log::info!("taking over the claim of {other} on account {account_id} (dead)");
                return Ok(Claim::Claimed);
            }
        }
        Ok(Claim::Busy(other))
    }

    /// The intent, on the server's clock like the lease (readers shift it into theirs).
    /// Another holder's intent left for the account is replaced: this fetch supersedes it.
    fn begin_fetch(&self, account_id: i64, _now: i64) -> Result<()> {
        self.c()
            .execute_typed(
                &format!(
                    "INSERT INTO intents (account_id, holder, started_at) VALUES ($1, $2, {NOW})
                     ON CONFLICT (account_id) DO UPDATE
                     SET holder = EXCLUDED.holder, started_at = EXCLUDED.started_at"
                ),
                &typed(&[&account_id, &self.holder.id]),
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// On the server's clock, which judges validity; `now` is not used.
    fn retire_token(&self, token_id: i64, _now: i64) -> Result<()> {
        self.c()
            .execute_typed(
                &format!(
                    "WITH retired AS (
                         UPDATE tokens SET expires_at = {NOW} WHERE id = $1 AND expires_at > {NOW}
                         RETURNING account_id
                     )
                     UPDATE accounts SET due_at = {NOW}
                     WHERE id IN (SELECT account_id FROM retired)
                       AND (due_at IS NULL OR due_at > {NOW})"
                ),
                &typed(&[&token_id]),
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// One round trip (an unnamed statement): per enabled account and kind, one descent of
    /// tokens_newest. Times are shifted into this host's clock as `latest_token` does.
    fn all_newest(&self) -> Result<Vec<Newest>> {
        let kinds: Vec<&str> = all_kinds().iter().map(|k| k.as_str()).collect();
        let sql = format!(
            "SELECT a.id, k.kind, t.id, t.expires_in, t.fetched_at, t.expires_at, i.started_at,
                    a.api = 'token', {NOW_EXACT}
             FROM accounts a CROSS JOIN unnest($1::text[]) AS k(kind)
             CROSS JOIN LATERAL (SELECT n.id, n.expires_in, n.fetched_at, n.expires_at
                                 FROM tokens n WHERE n.account_id = a.id AND n.kind = k.kind
                                 ORDER BY n.id DESC LIMIT 1) t
             LEFT JOIN intents i ON i.account_id = a.id AND k.kind = 'access_token'
             WHERE a.enabled"
        );
        let sent = host_now();
        let rows = self
            .c()
            .query_typed(&sql, &[(&kinds, Type::TEXT_ARRAY)])
            .map_err(|e| self.err(e))?;
        let received = host_now();
        let Some(first) = rows.first() else {
            return Ok(Vec::new());
        };
        let skew = host_offset(sent, first.get(8), received);
        Ok(rows
            .iter()
            .filter_map(|r| {
                let kind = crate::store::parse_kind(r.get(1))?;
                Some(Newest {
                    account_id: r.get(0),
                    kind,
                    id: r.get(2),
                    stored: crate::freshness::Stored {
                        expires_in: r.get(3),
                        fetched_at: r.get::<_, i64>(4) + skew,
                        expires_at: r.get::<_, i64>(5) + skew,
                        unfinished_fetch: r.get::<_, Option<i64>>(6).map(|t| t + skew),
                        classic: r.get(7),
                    },
                })
            })
            .collect())
    }

    fn release(&self, account_id: i64) -> Result<()> {
        self.c()
            .execute_typed(
                "DELETE FROM claims WHERE account_id = $1 AND holder = $2",
                &typed(&[&account_id, &self.holder.id]),
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Records a fetch in one transaction, only while this handle's holder still has the
    /// account's lease (fencing): else a `lost_claim` attempt, and the token is dropped
    /// (the holder that took over fetched later, and the latest fetch is the valid one).
    /// The token's times start at the lease's `claimed_at`, on the server's clock: before
    /// the request was sent, so the stored expiry is never later than WeChat's.
    ///
    /// Four round trips: BEGIN, one statement that takes the locks and reads what the
    /// decisions need, one that writes every row, COMMIT.
    fn record_fetch(&self, record: &FetchRecord) -> Result<Recorded> {
        let (account_id, kind, outcome) =
            (record.account_id, record.kind.as_str(), &record.outcome);
        let err = |e: postgres::Error| self.err(e);
        let tries = i64::from(outcome.tries);
        let mut c = self.c();
        let mut tx = c.transaction().map_err(err)?;
        // The shared record lock: a refresh starting now waits for this commit before it
        // reads the newest token id (see `newest_token_id`). The claim's row lock makes a
        // concurrent takeover wait for this commit, or this check see the new holder:
        // either way only one holder's token is stored. The account's row lock keeps a
        // set-secret from slipping in between the same-secret check below and the update
        // of the account (no other statement locks an account row and then its claim).
        let row = tx
            .query_typed_opt(
                &format!(
                    "SELECT {NOW}, (SELECT claimed_at FROM claims
                         WHERE account_id = $1 AND holder = $2 FOR UPDATE),
                        (SELECT token FROM tokens WHERE account_id = $1 AND kind = $3
                         ORDER BY id DESC LIMIT 1),
                        a.appid, a.agent, s.secret, s.previous
                 FROM (SELECT count(*) FROM ({RECORD_LOCK_ROW} FOR KEY SHARE) r) l,
                      accounts a LEFT JOIN account_secrets s ON s.account_id = a.id
                 WHERE a.id = $1
                 FOR UPDATE OF a"
                ),
                &typed(&[&account_id, &self.holder.id, &kind]),
            )
            .map_err(err)?;
        // No row: the account was removed, and its claim with it.
        let claimed_at = row.as_ref().and_then(|r| r.get::<_, Option<i64>>(1));
        let (Some(row), Some(claimed_at)) = (row, claimed_at) else {
            let detail = format!(
                "the claim of {} expired and was taken over during the fetch",
                self.holder.id
            );
            tx.execute_typed(
                &format!(
                    "INSERT INTO attempts (account_id, kind, started_at, duration_ms, tries, outcome, detail)
                     VALUES ($1, $2, {NOW}, $3, $4, 'lost_claim', $5)"
                ),
                &typed(&[&account_id, &kind, &outcome.duration_ms, &tries, &detail]),
            )
            .map_err(err)?;
            tx.commit().map_err(|e| self.commit_err(e))?;
            return Err(StoreError::LostClaim(format!(
                "{detail}; its token was dropped (a fetch that outlives its claim means the \
                 claim TTL is too short: raise --claim-ttl)"
            )));
        };
        let server_now: i64 = row.get(0);
        let newest: Option<String> = row.get(2);
        let stored = row.get::<_, Option<String>>(5).map(|stored| {
            let key = AccountKey {
                appid: row.get(3),
                agent: row.get(4),
            };
            (key, stored, row.get::<_, Option<String>>(6))
        });
        // On the server's clock: a host whose clock is off can neither cut the hold short
        // nor stretch it.
        let plan = plan_record(&self.keys, record, newest.as_deref(), stored, server_now)?;
        let token = plan.insert.map(|f| f.token.as_str());
        let expires_in = plan.insert.map(|f| f.expires_in);
        let a = AttemptColumns::of(outcome, plan.recorded == Recorded::Unchanged);
        // One statement for every row the outcome writes; each part is switched by its
        // own flag, decided above.
        tx.execute_typed(
            &format!(
                "WITH token AS (
                     INSERT INTO tokens (account_id, kind, token, expires_in, fetched_at, expires_at)
                     SELECT $1, $2, $11, $12, $13, $13 + $12 WHERE $11 IS NOT NULL
                 ), attempt AS (
                     INSERT INTO attempts (account_id, kind, started_at, duration_ms, tries,
                                           outcome, errcode, errmsg, http_status, detail,
                                           clock_offset)
                     VALUES ($1, $2, {NOW} - $3 / 1000, $3, $4, $5, $6, $7, $8, $9, $10)
                 ), account AS (
                     UPDATE accounts SET
                         held_until = CASE WHEN $16 THEN $14 ELSE held_until END,
                         held_reason = CASE WHEN $16 THEN $15 ELSE held_reason END,
                         fetch_due = CASE WHEN $16 THEN false ELSE fetch_due END,
                         due_at = CASE $21::bigint
                             WHEN 1 THEN $13 + $12
                             WHEN 2 THEN least(coalesce(due_at, $13 + $12), $13 + $12)
                             WHEN 3 THEN NULL
                             ELSE due_at END
                     WHERE id = $1 AND ($16 OR $21::bigint <> 0)
                 ), intent AS (
                     DELETE FROM intents WHERE account_id = $1 AND holder = $18 AND $17
                 ), credential AS (
                     UPDATE account_secrets
                     SET previous = CASE WHEN $19::text IS NOT NULL THEN secret END,
                         secret = coalesce($19, secret)
                     WHERE account_id = $1 AND ($19 IS NOT NULL OR ($20 AND previous IS NOT NULL))
                 )
                 SELECT 1"
            ),
            &typed(&[
                &account_id,
                &kind,
                &outcome.duration_ms,
                &tries,
                &a.outcome,
                &a.errcode,
                &a.errmsg,
                &a.http_status,
                &a.detail,
                &outcome.clock_offset,
                &token,
                &expires_in,
                &claimed_at,
                &plan.held_until,
                &plan.held_reason,
                &plan.update_account,
                &plan.clear_intent,
                &self.holder.id,
                &plan.renewed,
                &plan.clear_previous,
                &plan.due.code(),
            ]),
        )
        .map_err(err)?;
        tx.commit().map_err(|e| self.commit_err(e))?;
        Ok(plan.recorded)
    }

    /// On the server's clock, times and now alike; `now` is not used.
    fn forced_refreshes(&self, account_id: i64, _now: i64) -> Result<ForcedRefreshes> {
        // One row even without forced refreshes, to carry the server's now.
        let rows = self
            .c()
            .query(
                &format!(
                    "SELECT {NOW}, f.at FROM (SELECT 1) one
                     LEFT JOIN forced_refreshes f
                       ON f.account_id = $1 AND f.at > {NOW} - $2::bigint"
                ),
                &[&account_id, &crate::policy::FORCED_REFRESH_RETENTION],
            )
            .map_err(|e| self.err(e))?;
        Ok(ForcedRefreshes {
            now: rows.first().map_or(0, |r| r.get(0)),
            at: rows.iter().filter_map(|r| r.get(1)).collect(),
        })
    }

    /// At the server's now; `now` is not used.
    fn note_forced_refresh(&self, account_id: i64, _now: i64) -> Result<()> {
        self.c()
            .execute(
                &format!("INSERT INTO forced_refreshes (account_id, at) VALUES ($1, {NOW})"),
                &[&account_id],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// At the server's now, as `quota_resets_this_month` counts them; `at` is not used.
    fn record_quota_reset(
        &self,
        account_id: i64,
        _at: i64,
        failure: Option<(Option<i64>, &str)>,
    ) -> Result<bool> {
        let config = &self.config;
        let err = |e: postgres::Error| pg_error(config, &e);
        let (errcode, detail) = failure.unzip();
        let mut c = self.c();
        let mut tx = c.transaction().map_err(err)?;
        tx.execute(
            &format!(
                "INSERT INTO quota_resets (account_id, at, ok, errcode, detail)
                 VALUES ($1, {NOW}, $2, $3, $4)"
            ),
            &[&account_id, &failure.is_none(), &errcode.flatten(), &detail],
        )
        .map_err(err)?;
        let released = failure.is_none()
            && tx
                .execute(
                    "UPDATE accounts SET held_until = NULL, held_reason = NULL
                     WHERE id = $1 AND held_until IS NOT NULL
                       AND (SELECT errcode FROM attempts WHERE account_id = $1 AND kind = $2
                            ORDER BY id DESC LIMIT 1) = 45009",
                    &[&account_id, &Credential::AccessToken.as_str()],
                )
                .map_err(err)?
                > 0;
        tx.commit().map_err(err)?;
        Ok(released)
    }

    /// Ends at the server's now and lasts as long as it did on this host's clock, so that
    /// runs from hosts whose clocks differ share one clock, the attempts'; the retention
    /// window (`before`, this many seconds before the run's start) is counted back from it.
    fn record_run(&self, run: &RunRow, before: i64) -> Result<()> {
        let config = &self.config;
        let err = |e: postgres::Error| pg_error(config, &e);
        let lasted = run.finished_at - run.started_at;
        let keep = run.started_at - before;
        let mut c = self.c();
        let mut tx = c.transaction().map_err(err)?;
        tx.execute(
            &format!(
                "INSERT INTO runs ({RUN_COLUMNS})
                 VALUES ({NOW} - $1::bigint, {NOW}, $2, $3, $4, $5, $6, $7, $8, $9)"
            ),
            &[
                &lasted,
                &run.duration_ms,
                &run.scope,
                &run.accounts,
                &run.refreshed,
                &run.fresh,
                &run.busy,
                &run.held,
                &run.failed,
            ],
        )
        .map_err(err)?;
        tx.execute(
            &format!(
                "DELETE FROM runs WHERE started_at < {NOW} - $1::bigint - $2::bigint
                 AND id NOT IN (SELECT max(id) FROM runs {SUCCESSFUL_RUNS})"
            ),
            &[&lasted, &keep],
        )
        .map_err(err)?;
        tx.commit().map_err(err)
    }

    /// As SQLite's prune, in batches (`prune_batches`), except that validity, leases and
    /// the retention windows are judged by the server's clock.
    fn prune(&self, now: i64, keep: i64, attempts_before: i64) -> Result<(usize, usize)> {
        self.prune_batches(now, keep, attempts_before)
    }

    fn import(&self, items: &[Exported], sinks: &[SinkRow]) -> Result<()> {
        let config = &self.config;
        let err = |e: postgres::Error| pg_error(config, &e);
        let mut c = self.c();
        let mut tx = c.transaction().map_err(err)?;
        // Two copies into one database at once: the second waits, then finds it full.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .map_err(err)?;
        let accounts: i64 = tx
            .query_one("SELECT count(*) FROM accounts", &[])
            .map_err(err)?
            .get(0);
        if accounts > 0 {
            return Err(not_empty(&config.to_string(), accounts));
        }
        // Holds, token times and when accounts were added come in this host's clock (as
        // `accounts` and `export` give them): into the server's, which judges them.
        let sent = host_now();
        let server_now: f64 = tx
            .query_one(&format!("SELECT {NOW_EXACT}"), &[])
            .map_err(err)?
            .get(0);
        let skew = -host_offset(sent, server_now, host_now());
        // Ids differ between stores: each account's new id, by key, for the platform links.
        let mut ids = HashMap::new();
        for item in items {
            let (a, tokens) = (&item.account, &item.tokens);
            let row = ImportedAccount::of(&self.keys, a, skew)?;
            let id: i64 = tx
                .query_one(
                    "INSERT INTO accounts (appid, agent, api, enabled, created_at, updated_at,
                                           held_until, held_reason, tickets, role, receiver,
                                           fetch_due)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id",
                    &[
                        &a.key.appid,
                        &a.key.agent,
                        &row.api,
                        &a.enabled,
                        &row.created_at,
                        &row.updated_at,
                        &row.held_until,
                        &a.held_reason,
                        &row.tickets,
                        &row.role,
                        &a.receiver,
                        &a.fetch_due,
                    ],
                )
                .map_err(err)?
                .get(0);
            ids.insert(a.key.clone(), id);
            tx.execute(
                "INSERT INTO account_secrets (account_id, secret, previous) VALUES ($1, $2, $3)",
                &[&id, &row.secret, &row.previous],
            )
            .map_err(err)?;
            for (kind, t) in tokens {
                tx.execute(
                    "INSERT INTO tokens (account_id, kind, token, expires_in, fetched_at, expires_at)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                    &[
                        &id,
                        kind,
                        &t.token,
                        &t.expires_in,
                        &(t.fetched_at + skew),
                        &(t.expires_at + skew),
                    ],
                )
                .map_err(err)?;
            }
        }
        for item in items {
            self.import_platform_(&mut tx, item, &ids)?;
        }
        for sink in sinks {
            let password = stored_password(&self.keys, sink)?;
            insert_sink(&mut tx, sink, password.as_deref()).map_err(err)?;
        }
        tx.batch_execute(DUE_FROM_TOKENS).map_err(err)?;
        tx.commit().map_err(err)
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

/// The PostgreSQL test server, which the integration tests and the benches use too.
#[cfg(test)]
pub(crate) use wxtoken_standin::pg as pgtest;

#[cfg(test)]
mod tests {
    use super::pgtest::{self, PgDb};
    use super::*;
    use crate::domain::{Api, Fetched, Outcome};
    use crate::store::Sinks;

    #[test]
    fn the_host_offset_is_whole_seconds_from_exact_times() {
        // The server read its clock within the round trip: the same clock, whatever the
        // fractions (whole seconds would say 1 for the second: 101 received, 100 read).
        assert_eq!(host_offset(100.60, 100.61, 100.62), 0);
        assert_eq!(host_offset(100.99, 100.995, 101.01), 0);
        // A host 30 s ahead, or 600 s behind.
        assert_eq!(host_offset(130.2, 100.25, 130.3), 30);
        assert_eq!(host_offset(100.0, 700.4, 100.1), -600);
    }

    fn config(url: &str) -> PgConfig {
        PgConfig::from_env(url).unwrap()
    }

    /// A writing handle whose claims are made by `host`.
    fn store_on(db: &PgDb, host: &str) -> Postgres {
        Postgres::open(
            &config(&db.url),
            Holder::new(host.into(), std::process::id()),
        )
        .unwrap()
    }

    fn fetched(id: i64, token: &str) -> FetchRecord {
        FetchRecord {
            account_id: id,
            kind: TOKEN,
            outcome: outcome(token),
            hold: None,
            secret: Secret::new("s3cret".into()),
        }
    }

    fn outcome(token: &str) -> Outcome {
        Outcome {
            result: Ok(Fetched {
                token: token.to_string(),
                expires_in: 7200,
                renewed: None,
            }),
            tries: 1,
            sent_at: 0,
            started_at: 0,
            duration_ms: 5,
            unsure: false,
            clock_offset: None,
        }
    }

    /// One account, `wxa`, added through host `a`'s handle; returns that and the id.
    fn with_account(db: &PgDb) -> (Postgres, i64) {
        let mut s = store_on(db, "a");
        s.keys = crate::keys::test_keys();
        let key = key("wxa");
        let new = NewAccount {
            key: key.clone(),
            api: Api::Token,
            secret: Secret::new("s3cret".into()),
            tickets: vec![],
            platform: None,
            receiver: None,
        };
        s.add_account(&new, 1).unwrap();
        let id = s.account(&key).unwrap().unwrap().id;
        (s, id)
    }

    macro_rules! pg {
        () => {
            match pgtest::server() {
                Some(s) => s.create_db(),
                None => return,
            }
        };
    }

    const TOKEN: Credential = Credential::AccessToken;

    fn key(appid: &str) -> AccountKey {
        AccountKey::appid(appid).unwrap()
    }

    #[test]
    fn hosts_migrating_at_once_apply_each_migration_once() {
        let db = pg!();
        let opened: Vec<bool> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..6)
                .map(|i| {
                    scope.spawn({
                        let db = &db;
                        move || {
                            let holder = Holder::new(format!("h{i}"), 1);
                            Postgres::open(&config(&db.url), holder).is_ok()
                        }
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(opened, vec![true; 6]);
        let want: Vec<String> = (1..=MIGRATIONS.len()).map(|v| v.to_string()).collect();
        assert_eq!(
            db.query(
                "SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_migrations"
            ),
            want.join(",")
        );
    }

    #[test]
    fn a_newer_schema_is_refused_and_a_reader_never_migrates() {
        let db = pg!();
        // A reader's first query finds no schema and says so, in the same round trip.
        let read = |db: &PgDb| {
            Postgres::open_read(&config(&db.url))
                .unwrap()
                .latest_token(&key("wxa"), TOKEN)
                .unwrap_err()
        };
        let err = read(&db);
        assert!(matches!(err, StoreError::Schema(_)), "{err}");
        assert!(err.to_string().contains("schema version 0"), "{err}");
        assert_eq!(db.query("SELECT to_regclass('accounts') IS NULL"), "t");
        drop(store_on(&db, "a"));
        db.query("INSERT INTO schema_migrations (version) VALUES (99)");
        let opened = Postgres::open(&config(&db.url), Holder::nobody())
            .err()
            .unwrap();
        for err in [opened, read(&db)] {
            assert!(matches!(err, StoreError::Schema(_)), "{err}");
            assert!(err.to_string().contains("newer than this wxtoken"), "{err}");
        }
        let reader = Postgres::open_read(&config(&db.url)).unwrap();
        assert!(matches!(reader.accounts(), Err(StoreError::Schema(_))));
    }

    #[test]
    fn a_database_with_someone_elses_accounts_table_is_left_alone() {
        let db = pg!();
        db.query("CREATE TABLE accounts (name text)");
        let err = Postgres::open(&config(&db.url), Holder::nobody())
            .err()
            .unwrap();
        assert!(err.to_string().contains("did not create"), "{err}");
        assert_eq!(db.query("SELECT to_regclass('tokens') IS NULL"), "t");
    }

    #[test]
    fn thirty_hosts_claiming_one_account_get_one_lease() {
        let db = pg!();
        let (_, id) = with_account(&db);
        let claimed = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..30)
                .map(|i| {
                    scope.spawn({
                        let db = &db;
                        move || store_on(db, &format!("host{i}")).claim(id, 0, 60).unwrap()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .filter(|c| *c == Claim::Claimed)
                .count()
        });
        assert_eq!(claimed, 1);
    }

    #[test]
    fn a_lease_on_another_host_blocks_until_it_expires_on_the_servers_clock() {
        let db = pg!();
        let (_, id) = with_account(&db);
        // A pid that no process has here: only a holder on our own host may be probed.
        let far =
            Postgres::open(&config(&db.url), Holder::new("far".into(), u32::MAX - 1)).unwrap();
        assert_eq!(far.claim(id, 0, 60).unwrap(), Claim::Claimed);
        let near = store_on(&db, "near");
        // Whatever this host believes the time is.
        assert!(
            matches!(near.claim(id, i64::MAX / 2, 60).unwrap(), Claim::Busy(h) if h == far.holder.id)
        );
        db.query(&format!("UPDATE claims SET expires_at = {NOW}"));
        assert_eq!(near.claim(id, 0, 60).unwrap(), Claim::Claimed);
    }

    #[test]
    fn a_dead_holder_on_this_host_is_taken_over_at_once() {
        let db = pg!();
        let (_, id) = with_account(&db);
        let dead =
            Postgres::open(&config(&db.url), Holder::new("here".into(), u32::MAX - 1)).unwrap();
        assert_eq!(dead.claim(id, 0, 600).unwrap(), Claim::Claimed);
        let me = store_on(&db, "here");
        assert_eq!(me.claim(id, 0, 600).unwrap(), Claim::Claimed);
        assert_eq!(db.query("SELECT holder FROM claims"), me.holder.id);
    }

    #[test]
    fn a_holder_that_lost_its_lease_drops_its_token_and_says_so() {
        let db = pg!();
        let (a, id) = with_account(&db);
        let b = store_on(&db, "b");
        assert_eq!(a.claim(id, 0, 60).unwrap(), Claim::Claimed);
        db.query("UPDATE claims SET expires_at = 0");
        assert_eq!(b.claim(id, 0, 60).unwrap(), Claim::Claimed);
        let err = a.record_fetch(&fetched(id, "TOKEN-A")).unwrap_err();
        assert!(err.to_string().contains("taken over"), "{err}");
        assert_eq!(db.query_i64("SELECT count(*) FROM tokens"), 0);
        assert_eq!(db.query("SELECT outcome FROM attempts"), "lost_claim");
        // status shows it as a failed attempt.
        let shown = a.last_attempt(id, TOKEN).unwrap().unwrap();
        assert!(
            format!("{:?}", shown.result).contains("dropped"),
            "{shown:?}"
        );
        // The lease is still b's, and b records normally.
        let recorded = b.record_fetch(&fetched(id, "TOKEN-B")).unwrap();
        assert_eq!(recorded, Recorded::Inserted);
        b.release(id).unwrap();
        assert_eq!(db.query("SELECT token FROM tokens"), "TOKEN-B");
        assert_eq!(db.query_i64("SELECT count(*) FROM claims"), 0);
    }

    #[test]
    fn the_servers_clock_is_read_in_whole_seconds_cut_down() {
        let db = pg!();
        let at = |t: &str| {
            let sql = NOW.replace("now()", &format!("timestamptz '{t}'"));
            db.query_i64(&format!("SELECT {sql}"))
        };
        assert_eq!(at("2020-01-01 00:00:00.4+00"), 1_577_836_800);
        assert_eq!(at("2020-01-01 00:00:00.6+00"), 1_577_836_800);
        assert_eq!(at("1969-12-31 23:59:59.5+00"), -1);
    }

    #[test]
    fn token_times_come_from_the_servers_clock() {
        let db = pg!();
        let (a, id) = with_account(&db);
        a.claim(id, 0, 60).unwrap();
        // The lease says when the fetch started, whatever this host's clock says.
        let start = db.query_i64(&format!("SELECT {NOW}")) - 100;
        db.query(&format!("UPDATE claims SET claimed_at = {start}"));
        let mut record = fetched(id, "T");
        record.outcome.sent_at = 5_000_000_000;
        a.record_fetch(&record).unwrap();
        assert_eq!(
            db.query("SELECT fetched_at, expires_at FROM tokens"),
            format!("{start}|{}", start + 7200)
        );
        // Read back in this host's clock: the same instants, shifted by any skew.
        let row = a.latest_token(&key("wxa"), TOKEN).unwrap().unwrap();
        // Same machine, same clock: exactly the stored seconds, every time.
        assert_eq!((row.fetched_at, row.expires_at), (start, start + 7200));
        let newest = a.newest_rows(&[id]).unwrap();
        assert_eq!(newest.len(), 1, "the token, no ticket: {newest:?}");
        assert_eq!(
            newest[0].2.expires_at,
            start + 7200,
            "what a sink publishes"
        );
        assert_eq!(a.latest_token(&key("nope"), TOKEN).unwrap(), None);
    }

    #[test]
    fn holds_and_forced_refreshes_run_on_the_servers_clock() {
        let db = pg!();
        let (a, id) = with_account(&db);
        let server_now = || db.query_i64("SELECT extract(epoch from now())::bigint");
        // A fetch whose host clock said 1970: the hold still ends an hour after the
        // server's now, and reads back in this host's clock.
        a.claim(id, 0, 60).unwrap();
        let mut record = fetched(id, "unused");
        record.outcome.result = Err(crate::domain::Failure::WeChat {
            errcode: 89507,
            errmsg: "risk control".into(),
        });
        record.outcome.started_at = 0;
        record.hold = Some((crate::domain::Hold::For(3600), "89507".into()));
        a.record_fetch(&record).unwrap();
        let stored = db.query_i64("SELECT held_until FROM accounts") - server_now();
        assert!((3598..=3600).contains(&stored), "{stored}");
        let until = a.account(&key("wxa")).unwrap().unwrap().held_until.unwrap();
        let left = until - host_now() as i64;
        assert!((3598..=3601).contains(&left), "{left}");
        // A hold until fixed is no time, and is not shifted.
        db.query(&format!("UPDATE accounts SET held_until = {}", i64::MAX));
        let account = a.account(&key("wxa")).unwrap().unwrap();
        assert_eq!(account.held_until, Some(i64::MAX));

        // Forced refreshes: noted and judged by the server's now, not the one passed.
        a.note_forced_refresh(id, 0).unwrap();
        let budget = a.forced_refreshes(id, 0).unwrap();
        assert!((budget.now - server_now()).abs() <= 1, "{budget:?}");
        assert_eq!(budget.at.len(), 1);
        assert!((budget.at[0] - budget.now).abs() <= 1, "{budget:?}");
        let other = a.forced_refreshes(id + 1, 0).unwrap();
        assert!(other.at.is_empty() && other.now >= budget.now, "{other:?}");
    }

    #[test]
    fn a_reader_reads_tokens_but_no_secret_and_writes_nothing() {
        let db = pg!();
        let (a, id) = with_account(&db);
        a.claim(id, 0, 60).unwrap();
        a.record_fetch(&fetched(id, "TOKEN-1")).unwrap();
        let role = format!("{}_reader", db.name);
        db.query(&format!("CREATE ROLE {role} LOGIN"));
        let applied = a.grant_reader(&role).unwrap();
        assert!(applied.iter().all(|g| !g.contains("secret")), "{applied:?}");

        let url = db.url.replace("user=postgres", &format!("user={role}"));
        let reader = Postgres::open_read(&config(&url)).unwrap();
        let key = key("wxa");
        let row = reader.latest_token(&key, TOKEN).unwrap();
        assert_eq!(row.unwrap().token, "TOKEN-1");
        assert_eq!(reader.account(&key).unwrap().unwrap().secret.expose(), "");
        // What `refresh --dry-run` reads, from the view.
        assert_eq!(
            reader.newest_token_id().unwrap(),
            db.query_i64("SELECT max(id) FROM tokens")
        );
        assert_eq!(reader.unfinished_fetches().unwrap(), Vec::<i64>::new());
        a.begin_fetch(id, 0).unwrap();
        assert_eq!(reader.unfinished_fetches().unwrap(), [id]);
        // A writing handle as the reader is refused at once, naming the missing grant.
        let refused = Postgres::open(&config(&url), Holder::new("r".into(), 1)).err();
        match refused {
            Some(StoreError::ReadOnly(m)) => {
                assert!(
                    m.contains("no INSERT on tokens") && m.contains(&role),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
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
        assert!(
            ok && out.contains("wxa") && !out.contains("s3cret"),
            "{out}"
        );
    }

    #[test]
    fn reader_grants_quote_the_role() {
        let g = reader_grants("we\"ird", "public");
        assert_eq!(g[0], "GRANT USAGE ON SCHEMA \"public\" TO \"we\"\"ird\"");
    }

    #[test]
    fn an_outcome_with_a_replaced_secret_leaves_the_hold_and_due_flag_alone() {
        let db = pg!();
        let (s, id) = with_account(&db);
        s.set_secret(&key("wxa"), &Secret::new("n3w".into()), 2)
            .unwrap();
        assert!(s.account(&key("wxa")).unwrap().unwrap().fetch_due);
        s.claim(id, 0, 60).unwrap();
        let mut old = fetched(id, "T1");
        old.outcome.result = Err(crate::domain::Failure::WeChat {
            errcode: 40125,
            errmsg: "invalid appsecret".into(),
        });
        old.hold = Some((crate::domain::Hold::Attention, "40125".into()));
        s.record_fetch(&old).unwrap();
        let account = s.account(&key("wxa")).unwrap().unwrap();
        assert_eq!((account.held_until, account.fetch_due), (None, true));
        // The same outcome with the secret now stored holds the account and clears the flag.
        old.secret = Secret::new("n3w".into());
        s.record_fetch(&old).unwrap();
        let account = s.account(&key("wxa")).unwrap().unwrap();
        assert_eq!(
            (account.held_until, account.fetch_due),
            (Some(crate::policy::UNTIL_FIXED), false)
        );
    }

    #[test]
    fn an_intent_shows_in_the_readers_row_until_its_outcome_is_recorded() {
        let db = pg!();
        let (s, id) = with_account(&db);
        s.claim(id, 0, 60).unwrap();
        s.record_fetch(&fetched(id, "T1")).unwrap();
        let before = s.newest_token_id().unwrap();
        s.begin_fetch(id, 0).unwrap();
        assert_eq!(s.unfinished_fetches().unwrap(), vec![id]);
        let reader = Postgres::open_read(&config(&db.url)).unwrap();
        let row = reader.latest_token(&key("wxa"), TOKEN).unwrap().unwrap();
        let started = row
            .unfinished_fetch
            .expect("the intent is visible to a reader");
        assert!((started - host_now() as i64).abs() <= 2, "{started}");
        assert!(row.classic);
        assert_eq!(row.id, before);
        s.record_fetch(&fetched(id, "T2")).unwrap();
        assert!(s.unfinished_fetches().unwrap().is_empty());
        let row = reader.latest_token(&key("wxa"), TOKEN).unwrap().unwrap();
        assert_eq!((row.token.as_str(), row.unfinished_fetch), ("T2", None));
        assert!(row.id > before && s.newest_token_id().unwrap() == row.id);
    }
}
