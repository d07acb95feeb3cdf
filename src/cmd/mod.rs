//! One file per subcommand, one signature for all of them: a command gets the `Context`
//! (the clock, the output mode, the store, the WeChat client) and its own validated
//! configuration, and returns its outcome.

mod account;
mod authorizer;
pub mod check;
mod generate;
mod get;
mod key;
mod metrics;
mod platform;
mod prune;
mod push;
mod quota;
mod refresh;
mod report;
mod sink;
mod status;
mod store_admin;

use std::io::{self, Write};

use anyhow::{Context as _, Result};

use crate::config::{ApiConfig, Cmd, Config};
use crate::domain::AccountKey;
use crate::engine::Clock;
use crate::exit::{Exit, fail};
use crate::keyfile::KeyFile;
use crate::store::{self, Location, ReadStore, Store, StoreError};
use crate::vault;
use crate::wechat::{self, Client};

/// What every command may use. Stores open on demand, in the role the command needs.
pub struct Context {
    pub clock: Clock,
    /// `-q`: confirmations and summaries are left out.
    pub quiet: bool,
    db: Location,
    key_file: Option<std::path::PathBuf>,
}

impl Context {
    pub fn now(&self) -> i64 {
        (self.clock)()
    }

    /// For commands that only read: nothing is created, migrated or locked.
    pub fn read_store(&self) -> Result<Box<dyn ReadStore>> {
        Ok(store::open_read(&self.db)?)
    }

    /// For commands that write; creates the database (and its default directory).
    pub fn store(&self) -> Result<Box<dyn Store>> {
        Ok(store::open_write(&self.db, true)?)
    }

    /// For commands that only read, yet open for writing as they always did (so that they
    /// create or upgrade the database): a role that may only read, such as a PostgreSQL
    /// reader role, gets a reading handle instead.
    pub fn store_or_read(&self) -> Result<Box<dyn ReadStore>> {
        match store::open_write(&self.db, true) {
            Ok(store) => Ok(store),
            Err(StoreError::ReadOnly(_)) => self.read_store(),
            Err(err) => Err(err.into()),
        }
    }

    /// For a read path that may write (`get --reject`): never creates a database.
    pub fn existing_store(&self) -> Result<Box<dyn Store>> {
        Ok(store::open_write(&self.db, false)?)
    }

    /// For commands that use or store a secret: loads the key file (see `vault::unlock`).
    /// `will_store`: the command stores a new secret, so a missing key file may be created.
    pub fn unlock(&self, store: &dyn Store, will_store: bool) -> Result<()> {
        self.unlock_except(store, will_store, None)
    }

    /// `unlock` for `account set-secret`: the secret it replaces need not open (it may be
    /// the damaged or misplaced one being fixed).
    pub fn unlock_except(
        &self,
        store: &dyn Store,
        will_store: bool,
        except: Option<&AccountKey>,
    ) -> Result<()> {
        vault::unlock(store, &self.key_file()?, will_store, except)
    }

    /// Where the key file is (`--key-file`, `WXTOKEN_KEY_FILE` or the defaults).
    pub fn key_file(&self) -> Result<KeyFile> {
        KeyFile::locate(self.key_file.clone())
    }

    /// Where the store is, for commands that deal with the store itself.
    pub fn location(&self) -> &Location {
        &self.db
    }

    pub fn client(&self, api: &ApiConfig) -> Client {
        Client::new(&api.api_base, &api.work_api_base, api.timeout)
    }

    /// A confirmation for people, on stderr unless `-q`: stdout is for data only.
    pub fn say(&self, text: &str) {
        if !self.quiet {
            eprintln!("{text}");
        }
    }
}

pub fn run(config: Config) -> Result<Exit> {
    let ctx = Context {
        clock: wechat::unix_now,
        quiet: config.quiet,
        db: config.db,
        key_file: config.key_file,
    };
    let result = match config.command {
        Cmd::Account(op) => account::run(&ctx, op),
        Cmd::Get(cfg) => get::run(&ctx, &cfg),
        Cmd::Refresh(cfg) => refresh::run(&ctx, &cfg),
        Cmd::Prune { keep } => prune::run(&ctx, keep),
        Cmd::Sink(cmd) => sink::run(&ctx, cmd),
        Cmd::Status { json, accounts } => status::run(&ctx, json, &accounts),
        Cmd::Check(cfg) => Ok(check::run(&ctx, &cfg)),
        Cmd::Metrics => metrics::run(&ctx),
        Cmd::Completions(shell) => generate::completions(shell),
        Cmd::Manpage { page, list } => generate::manpage(page.as_deref(), list),
        Cmd::Quota(cfg) => quota::run(&ctx, &cfg),
        Cmd::Key(cmd) => key::run(&ctx, cmd),
        Cmd::Copy { to } => store_admin::copy(&ctx, &to),
        Cmd::GrantReader { role } => store_admin::grant_reader(&ctx, &role),
        Cmd::Platform(cmd) => platform::run(&ctx, cmd),
        Cmd::Authorizer(cmd) => authorizer::run(&ctx, cmd),
        Cmd::Receive(args) => push::receive(&ctx, &args),
    };
    result.map_err(|err| name_the_database(err, &ctx.db))
}

/// A store failure found after opening (a damaged page, a full disk) names the database,
/// like every failure to open it does (a PostgreSQL URL without its password).
fn name_the_database(err: anyhow::Error, db: &Location) -> anyhow::Error {
    let name = match db {
        Location::File { path, .. } => path.display().to_string(),
        #[cfg(feature = "postgres")]
        Location::Postgres(config) => config.to_string(),
    };
    let unnamed = err.chain().any(|e| {
        matches!(
            e.downcast_ref::<StoreError>(),
            Some(StoreError::Corrupt(m) | StoreError::Io(m) | StoreError::Unsure(m) | StoreError::Busy(m)) if !m.contains(&name)
        )
    });
    if unnamed {
        err.context(format!("database {name}"))
    } else {
        err
    }
}

/// The longest line read from stdin, so that a wrong redirect cannot eat memory.
pub const STDIN_LIMIT: u64 = 64 * 1024;

/// The first line of stdin, untrimmed; `what` names it in errors. A line longer than
/// `STDIN_LIMIT` is refused, never cut: a cut secret would fail later with a wrong errcode.
pub fn stdin_line(what: &str) -> Result<String> {
    use std::io::{BufRead, Read};
    let mut line = String::new();
    io::stdin()
        .lock()
        .take(STDIN_LIMIT + 1)
        .read_line(&mut line)
        .with_context(|| format!("could not read {what} from stdin"))?;
    check_length(what, &line)?;
    Ok(line)
}

/// Refuses a value longer than `STDIN_LIMIT` (its line end aside).
pub fn check_length(what: &str, value: &str) -> Result<()> {
    if value.trim_end_matches(['\n', '\r']).len() as u64 > STDIN_LIMIT {
        return Err(fail(
            Exit::Usage,
            format!(
                "{what} is longer than {} KiB; refusing it",
                STDIN_LIMIT / 1024
            ),
        ));
    }
    Ok(())
}

/// Buffered stdout that goes quiet once the reader has gone away (`| head`).
pub struct Stream {
    out: std::io::BufWriter<std::io::StdoutLock<'static>>,
    gone: bool,
}

impl Stream {
    pub fn new() -> Stream {
        Stream {
            out: std::io::BufWriter::new(std::io::stdout().lock()),
            gone: false,
        }
    }

    pub fn write(&mut self, text: &str) -> Result<()> {
        use std::io::Write;
        if !self.gone {
            let written = self.out.write_all(text.as_bytes());
            self.check(written)?;
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<()> {
        use std::io::Write;
        if !self.gone {
            let flushed = self.out.flush();
            self.check(flushed)?;
        }
        Ok(())
    }

    fn check(&mut self, result: std::io::Result<()>) -> Result<()> {
        match result {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.gone = true;
                Ok(())
            }
            other => other.context("could not write to stdout"),
        }
    }
}

/// Writes data to stdout. A reader that went away (`| head`) is not an error.
pub fn emit(text: &str) -> Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(e).context("could not write to stdout")
        }
        _ => Ok(()),
    }
}
