//! The store: where accounts, the insert-only token history and every fetch attempt live.
//! `ReadStore` is what `get` needs, `Store` adds what refresh and the account commands
//! write (both in `api`). Each backend owns its SQL: `sqlite` (one file) and `postgres`
//! (a fleet's shared server); what they decide alike lives once, in `rows`. No SQL, path,
//! PRAGMA or process probe leaks out of this folder.

use std::path::PathBuf;

mod api;
pub(crate) mod filesafety;
#[cfg(test)]
mod platform_tests;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
mod rows;
mod schema;
mod sqlite;

pub use api::{
    AccountRows, Claim, CredentialRows, Exported, ForcedRefreshes, Newest, NewestRow, Opener,
    PlatformCrypto, PlatformEvent, PlatformTicket, REPORT_PAGE, ReadStore, Recorded, Result,
    RunRow, SealedSample, SinkResult, SinkRow, Sinks, Store, StoreError, TenantGroup, TicketStored,
};
pub(crate) use api::{all_kinds, parse_kind};
pub(crate) use rows::{
    AttemptColumns, RUN_COLUMNS, SUCCESSFUL_RUNS, not_empty, seal_secret, stored_password,
};
pub(crate) use sqlite::readers;
use sqlite::{Sqlite, create_private_dir, require_file};

/// Where the data is: an SQLite file, and whether it is the default one (whose directory
/// a writing command may create), or a PostgreSQL server.
#[derive(Debug, Clone)]
pub enum Location {
    File {
        path: PathBuf,
        is_default: bool,
    },
    #[cfg(feature = "postgres")]
    Postgres(Box<crate::store::postgres::conf::PgConfig>),
}

/// For a process that opens SQLite to run one small query and exit (plain `get`), or one
/// that opens a connection per worker (`refresh`): no bulk page-cache allocation and no
/// lookaside buffer per connection. By default SQLite
/// allocates and writes both at the first open (20 cache pages and 120 KB), about 30 of a
/// `get`'s 270 page faults, for nothing a one-row read needs. Process-wide, and only
/// before the process's first connection: SQLite refuses `sqlite3_config` once initialized,
/// and this then changes nothing.
pub fn lean_sqlite_process() {
    use std::os::raw::{c_int, c_void};
    // SAFETY: both options take plain integers (and a null buffer); sqlite3_config only
    // returns SQLITE_MISUSE after initialization, which is harmless here.
    unsafe {
        let none: *mut c_void = std::ptr::null_mut();
        rusqlite::ffi::sqlite3_config(
            rusqlite::ffi::SQLITE_CONFIG_PAGECACHE,
            none,
            0 as c_int,
            0 as c_int,
        );
        rusqlite::ffi::sqlite3_config(
            rusqlite::ffi::SQLITE_CONFIG_LOOKASIDE,
            0 as c_int,
            0 as c_int,
        );
    }
}

/// Opens the store for reading only: never creates, migrates or locks anything.
pub fn open_read(at: &Location) -> Result<Box<dyn ReadStore>> {
    match at {
        Location::File { path, .. } => Ok(Box::new(Sqlite::open_readonly(path)?)),
        #[cfg(feature = "postgres")]
        Location::Postgres(config) => Ok(Box::new(crate::store::postgres::Postgres::open_read(
            config,
        )?)),
    }
}

/// Opens the store for writing, creating it if `create` (and its default directory).
/// Without `create`, a missing database is the same error as for reading. A PostgreSQL
/// database must exist; its tables are created only with `create`.
pub fn open_write(at: &Location, create: bool) -> Result<Box<dyn Store>> {
    match at {
        Location::File { path, is_default } => {
            if !create {
                require_file(path)?;
            } else if *is_default {
                create_private_dir(path.parent().unwrap_or(path))?;
            }
            Ok(Box::new(Sqlite::open(path, Holder::current())?))
        }
        #[cfg(feature = "postgres")]
        Location::Postgres(config) => {
            let holder = Holder::current();
            Ok(Box::new(if create {
                crate::store::postgres::Postgres::open(config, holder)?
            } else {
                crate::store::postgres::Postgres::open_existing(config, holder)?
            }))
        }
    }
}

/// Who holds a claim: this process on this host. The nonce tells apart two runs that got
/// the same pid after a reboot.
#[derive(Debug, Clone)]
pub(crate) struct Holder {
    pub(crate) host: String,
    pub(crate) pid: u32,
    pub(crate) id: String,
}

impl Holder {
    /// This process, on this host: `WXTOKEN_HOST` if set (for hosts that share a hostname,
    /// such as containers, against one PostgreSQL store), else the hostname.
    pub(crate) fn current() -> Holder {
        let host = std::env::var("WXTOKEN_HOST")
            .ok()
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

    pub(crate) fn new(host: String, pid: u32) -> Holder {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let id = format!("{host}:{pid}:{nanos:08x}");
        Holder { host, pid, id }
    }
}

impl Holder {
    /// A read-only store claims nothing.
    pub(crate) fn nobody() -> Holder {
        Holder {
            host: String::new(),
            pid: 0,
            id: String::new(),
        }
    }
}

pub(crate) use crate::process::pid_alive;
