//! Every exit code wxtoken uses, in one place. The README's table and the help text are
//! checked against this file by the tests below.

use std::fmt;

use crate::keyfile::KeyFileError;
use crate::store::StoreError;

/// How a run ended, as the shell sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok,
    Error,
    Usage,
    NoToken,
    FetchFailed,
    Database,
    Account,
    /// The secret key file is missing, unsafe or wrong, or a stored secret does not open.
    Key,
    /// `refresh` stopped by a signal.
    Interrupted,
    /// Publishing to a sink failed, and nothing worse happened: the tokens are stored.
    PublishFailed,
    /// A push was refused: a wrong signature, a body that does not decrypt or parse, a
    /// message for another platform, too large. Nothing was stored.
    Refused,
    /// `status --check`, a monitoring plugin: its own 0 OK, 1 WARNING, 2 CRITICAL,
    /// 3 UNKNOWN, outside the table above (monitoring systems know no other codes).
    Plugin(u8),
}

impl Exit {
    #[cfg(test)]
    pub const ALL: [Exit; 11] = [
        Exit::Ok,
        Exit::Error,
        Exit::Usage,
        Exit::NoToken,
        Exit::FetchFailed,
        Exit::Database,
        Exit::Account,
        Exit::Key,
        Exit::Interrupted,
        Exit::PublishFailed,
        Exit::Refused,
    ];

    pub const fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Error => 1,
            Exit::Usage => 2,
            Exit::NoToken => 3,
            Exit::FetchFailed => 4,
            Exit::Database => 5,
            Exit::Account => 6,
            Exit::Key => 7,
            Exit::Interrupted => 8,
            Exit::PublishFailed => 9,
            Exit::Refused => 10,
            Exit::Plugin(code) => code,
        }
    }

    /// Which of two outcomes a run that saw both reports. Not the numeric order: a run
    /// whose database failed lost fetches that worked, which is worse than a failed fetch;
    /// an unexpected error outranks everything because nothing about the run is known.
    fn severity(self) -> u8 {
        match self {
            Exit::Ok => 0,
            // "Redis failed" is the mildest failure: every token is stored and served, and
            // a WeChat failure in the same run says more.
            Exit::PublishFailed => 1,
            Exit::NoToken => 2,
            Exit::FetchFailed => 3,
            Exit::Account => 4,
            Exit::Refused => 4,
            Exit::Key => 5,
            Exit::Usage => 5,
            Exit::Database => 6,
            // A run stopped by a signal says so whatever else happened, but not over a bug.
            Exit::Interrupted => 7,
            Exit::Error => 8,
            // Never merged: a check reports one state.
            Exit::Plugin(_) => 0,
        }
    }

    /// The more severe of the two.
    pub fn merge(self, other: Exit) -> Exit {
        if other.severity() > self.severity() {
            other
        } else {
            self
        }
    }

    /// The README's table row.
    #[cfg(test)]
    pub fn meaning(self) -> &'static str {
        match self {
            Exit::Ok => "Everything worked.",
            Exit::Error => "An unexpected failure: I/O, a bug, anything not classified below.",
            Exit::Usage => {
                "Bad arguments or bad input (clap uses 2 for its own usage errors too); a \
                 `quota reset` not confirmed (no `--yes` off a terminal, or not answered yes)."
            }
            Exit::NoToken => {
                "`get`: there is no valid token to print (unknown account, none fetched yet, \
                 expired, or less than `--min-ttl` left); `quota`: an account has no valid \
                 stored token to ask with."
            }
            Exit::FetchFailed => {
                "`refresh`, `get --reject`: at least one fetch from WeChat failed, or on \
                 PostgreSQL outlived its claim and its token was dropped; `quota`, \
                 `quota reset`: a call to WeChat failed."
            }
            Exit::Database => {
                "The database could not be opened, is not a wxtoken database, or is newer \
                 than this binary; or a writing command was run by a user who may only read \
                 it ([readers in a group](docs/secrets.md#readers-in-a-group)), or by a PostgreSQL reader \
                 role, which may run only `get`, `account list` and `refresh --dry-run`."
            }
            Exit::Account => {
                "An account or sink command named one that does not exist, or one that \
                 already exists."
            }
            Exit::Key => {
                "The secret key file is missing, unsafe (another owner, or readable by group \
                 or others) or not the one that encrypted a stored secret; nothing was changed \
                 (see [secrets at rest](docs/secrets.md#secrets-at-rest)). `refresh`: an account's secret \
                 does not open (or was forgotten with a lost key); the other accounts were \
                 refreshed."
            }
            Exit::Interrupted => {
                "`refresh` was stopped by SIGTERM, SIGINT or SIGHUP: it started no new fetch, \
                 recorded the ones in flight and printed its summary."
            }
            Exit::PublishFailed => {
                "`refresh`, `sink test`: publishing to a sink failed and nothing worse \
                 happened; the tokens are stored (see [sinks](docs/sinks.md#publishing-to-redis-and-hooks-sinks))."
            }
            Exit::Refused => {
                "`platform ingest`: the push was refused (a wrong signature, a body that does \
                 not decrypt or parse, a message for another platform, over 64 KiB); nothing \
                 was stored and no hook ran (see [pushes](docs/platforms.md#receiving-pushes))."
            }
            Exit::Plugin(_) => "`status --check`: its own codes, not in the table.",
        }
    }

    /// The few words `--help` gives it.
    #[cfg(test)]
    pub fn summary(self) -> &'static str {
        match self {
            Exit::Ok => "ok",
            Exit::Error => "unexpected error",
            Exit::Usage => "bad arguments",
            Exit::NoToken => "no valid token",
            Exit::FetchFailed => "a call to WeChat failed",
            Exit::Database => "database problem",
            Exit::Account => "no such account or sink / already exists",
            Exit::Key => "secret key missing or wrong",
            Exit::Interrupted => "interrupted by a signal",
            Exit::PublishFailed => "publishing to a sink failed",
            Exit::Refused => "a push was refused",
            Exit::Plugin(_) => "status --check",
        }
    }
}

/// An error that carries the exit code `main` should use. Attach context around it freely:
/// `main` finds it anywhere in the chain.
#[derive(Debug)]
pub struct Coded {
    pub exit: Exit,
    pub message: String,
}

impl fmt::Display for Coded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Coded {}

/// Build an error that exits with `exit`.
pub fn fail(exit: Exit, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Coded {
        exit,
        message: message.into(),
    })
}

/// What a store failure means to the shell.
pub fn of_store(err: &StoreError) -> Exit {
    match err {
        StoreError::NotFound(_) | StoreError::AlreadyExists(_) => Exit::Account,
        StoreError::Key(_) => Exit::Key,
        // The fetch produced no token this process may hand out.
        StoreError::LostClaim(_) => Exit::FetchFailed,
        StoreError::NoSuchRole(_) | StoreError::HasTenants(_) => Exit::Usage,
        StoreError::Schema(_)
        | StoreError::Busy(_)
        | StoreError::Io(_)
        | StoreError::Unsure(_)
        | StoreError::ReadOnly(_)
        | StoreError::Corrupt(_)
        | StoreError::Unanswered(_) => Exit::Database,
    }
}

/// What a key file failure means to the shell.
pub fn of_key_file(err: &KeyFileError) -> Exit {
    match err {
        KeyFileError::Key(_) => Exit::Key,
        KeyFileError::Usage(_) => Exit::Usage,
    }
}

/// The exit code of a store failure, for the one place that cannot return it: the
/// PostgreSQL watchdog, which ends the process itself when the server stops answering.
impl From<&StoreError> for u8 {
    fn from(err: &StoreError) -> u8 {
        of_store(err).code()
    }
}

/// The exit code for an error: the innermost coded error in its chain, else `Error`.
pub fn of(err: &anyhow::Error) -> Exit {
    err.chain()
        .filter_map(|e| {
            e.downcast_ref::<Coded>()
                .map(|c| c.exit)
                .or_else(|| e.downcast_ref::<StoreError>().map(of_store))
                .or_else(|| e.downcast_ref::<KeyFileError>().map(of_key_file))
        })
        .last()
        .unwrap_or(Exit::Error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_in_order() {
        for (i, e) in Exit::ALL.iter().enumerate().take(7) {
            assert_eq!(usize::from(e.code()), i, "{e:?}");
        }
        assert_eq!(Exit::Interrupted.code(), 8);
        assert_eq!(Exit::PublishFailed.code(), 9);
    }

    /// The signal handler exits with its own copy of the code (it may import nothing).
    #[test]
    fn the_signal_handler_exits_interrupted() {
        assert_eq!(
            i32::from(Exit::Interrupted.code()),
            crate::signals::INTERRUPTED_CODE
        );
    }

    #[test]
    fn merging_follows_severity_not_numbers() {
        assert_eq!(Exit::Ok.merge(Exit::FetchFailed), Exit::FetchFailed);
        assert_eq!(Exit::FetchFailed.merge(Exit::Ok), Exit::FetchFailed);
        assert_eq!(Exit::FetchFailed.merge(Exit::Database), Exit::Database);
        assert_eq!(Exit::Database.merge(Exit::FetchFailed), Exit::Database);
        assert_eq!(Exit::Account.merge(Exit::Error), Exit::Error);
        // 3 < 4 numerically, and also in severity; 6 > 5 numerically, but not in severity.
        assert_eq!(Exit::Account.merge(Exit::Database), Exit::Database);
        // A publish failure never hides a failed fetch, and shows when nothing else failed.
        assert_eq!(
            Exit::PublishFailed.merge(Exit::FetchFailed),
            Exit::FetchFailed
        );
        assert_eq!(
            Exit::FetchFailed.merge(Exit::PublishFailed),
            Exit::FetchFailed
        );
        assert_eq!(Exit::Ok.merge(Exit::PublishFailed), Exit::PublishFailed);
        for e in Exit::ALL {
            assert_eq!(Exit::Ok.merge(e), e);
            assert_eq!(e.merge(e), e);
        }
    }

    #[test]
    fn the_innermost_coded_error_wins() {
        let err = fail(Exit::NoToken, "inner").context("outer");
        assert_eq!(of(&err), Exit::NoToken);
        assert_eq!(of(&anyhow::anyhow!("plain")), Exit::Error);
        let store = anyhow::Error::new(StoreError::Busy("locked".into())).context("claim");
        assert_eq!(of(&store), Exit::Database);
        let key = crate::keyfile::KeyFile {
            path: "/k".into(),
            source: crate::keyfile::Source::Named,
        }
        .error("is odd".to_string())
        .context("unlock");
        assert_eq!(of(&key), Exit::Key);
        assert_eq!(format!("{key:#}"), "unlock: key file /k is odd");
        let empty = crate::keyfile::KeyFile::locate(Some("".into())).unwrap_err();
        assert_eq!(of(&empty), Exit::Usage);
    }

    /// The store's errors that used to be built as CLI errors keep their codes: a role that
    /// does not exist is a usage error; a server that stopped answering, a database one.
    #[test]
    fn store_errors_without_a_caller_keep_their_codes() {
        let role = anyhow::Error::new(StoreError::NoSuchRole("no role".into()));
        assert_eq!(of(&role), Exit::Usage);
        let gone = StoreError::Unanswered("gave up".into());
        assert_eq!(u8::from(&gone), Exit::Database.code());
    }

    /// The README's exit-code table lists exactly these codes with exactly these meanings.
    #[test]
    fn readme_table_agrees() {
        let readme = include_str!("../README.md");
        let section = readme
            .split("## Exit codes")
            .nth(1)
            .expect("README has an exit-code section");
        let rows: Vec<(u8, String)> = section
            .lines()
            .take_while(|l| !l.starts_with("## "))
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let code = cells.get(1)?.parse().ok()?;
                Some((code, cells.get(2)?.to_string()))
            })
            .collect();
        let want: Vec<(u8, String)> = Exit::ALL
            .iter()
            .map(|e| (e.code(), e.meaning().to_string()))
            .collect();
        assert_eq!(rows, want);
    }

    /// `wxtoken --help` names every code with its summary, in order.
    #[test]
    fn help_text_agrees() {
        use clap::CommandFactory;
        let help = crate::cli::Cli::command().render_long_help().to_string();
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        let list: Vec<String> = Exit::ALL
            .iter()
            .map(|e| format!("{} {}", e.code(), e.summary()))
            .collect();
        let want = format!("Exit codes: {}.", list.join(", "));
        assert!(help.contains(&want), "help lacks {want:?}:\n{help}");
    }
}
