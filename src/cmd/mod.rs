//! One file per subcommand. `run` resolves what every command shares (the database path,
//! the clock) and hands each command only what it needs.

mod account;
pub mod check;
mod dry_run;
mod generate;
mod get;
mod metrics;
mod prune;
mod refresh;
mod refresh_out;
mod status;

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::{DateTime, SecondsFormat};

use crate::cli::{ApiArgs, Cli, Command, check_base};
use crate::exit::{self, fail};
use crate::store::Store;
use crate::wechat::{self, Client};

pub fn run(cli: Cli) -> Result<u8> {
    match &cli.command {
        Command::Completions { shell } => return generate::completions(*shell),
        Command::Manpage { page, list } => return generate::manpage(page.as_deref(), *list),
        Command::Status(args) if args.check => {
            let db = database_path(cli.db.clone()).map(|(db, _)| db);
            return Ok(check::run(db, args, wechat::unix_now()));
        }
        _ => {}
    }
    let (db, is_default) = database_path(cli.db)?;
    let now = wechat::unix_now();
    // Only commands that write may create the default directory; `get` creates nothing.
    let open = || -> Result<Store> {
        if is_default {
            create_private_dir(db.parent().unwrap_or(&db))?;
        }
        Store::open(&db)
    };
    match cli.command {
        Command::Account(cmd) => account::run(&open()?, cmd, now, cli.quiet),
        Command::Get(args) => {
            let key = args.account.key().map_err(|e| fail(exit::USAGE, e))?;
            if args.reject.is_some() {
                check_api(&args.api)?;
            }
            get::run(&db, &key, &args)
        }
        Command::Refresh(args) => {
            check_api(&args.api)?;
            let api = &args.api;
            let client = Client::new(&api.api_base, &api.work_api_base, api.timeout());
            refresh::run(open()?, &client, &args, cli.quiet)
        }
        Command::Prune(args) => prune::run(&open()?, &args, now, cli.quiet),
        Command::Status(args) => status::run(&open()?, &args, now),
        Command::Metrics => metrics::run(&Store::open_readonly(&db)?, now),
        Command::Completions { .. } | Command::Manpage { .. } => unreachable!("handled above"),
    }
}

fn check_api(api: &ApiArgs) -> Result<()> {
    check_base("--api-base", &api.api_base).map_err(|e| fail(exit::USAGE, e))?;
    check_base("--work-api-base", &api.work_api_base).map_err(|e| fail(exit::USAGE, e))
}

/// `--db`, else `WXTOKEN_DB` (clap reads both), else `~/.local/share/wxtoken/wxtoken.db`;
/// and whether it is that default. The default depends on HOME only, which cron sets too,
/// so cron and a login shell of the same user agree on it.
fn database_path(flag: Option<PathBuf>) -> Result<(PathBuf, bool)> {
    if let Some(path) = flag {
        if path.as_os_str().is_empty() {
            return Err(fail(exit::USAGE, "--db / WXTOKEN_DB is empty"));
        }
        return Ok((path, false));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| fail(exit::USAGE, "HOME is not set; pass --db or set WXTOKEN_DB"))?;
    Ok((
        PathBuf::from(home).join(".local/share/wxtoken/wxtoken.db"),
        true,
    ))
}

/// Creates the default directory (0700: the database in it holds secrets). A directory
/// named with --db must exist already, so that a typo does not scatter databases around.
fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("could not create directory {}", dir.display()))
}

/// The first line of stdin (at most 64 KiB of it, so a wrong redirect cannot eat memory),
/// untrimmed; `what` names it in errors.
pub fn stdin_line(what: &str) -> Result<String> {
    use std::io::{BufRead, Read};
    let mut line = String::new();
    io::stdin()
        .lock()
        .take(64 * 1024)
        .read_line(&mut line)
        .with_context(|| format!("could not read {what} from stdin"))?;
    Ok(line)
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

/// Until when refresh skips a held account, in the same words everywhere.
pub fn held_text(until: i64) -> String {
    if until == crate::policy::UNTIL_FIXED {
        "until its secret is updated (account set-secret), it is re-enabled (account enable), \
         or refresh --force"
            .to_string()
    } else {
        format!("until {}", rfc3339(until))
    }
}

/// RFC 3339 in UTC, to the second.
pub fn rfc3339(ts: i64) -> String {
    DateTime::from_timestamp(ts, 0)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_else(|| ts.to_string())
}

/// A short human duration: `59m`, `1h59m`, `45s`, `-3m` for the past.
pub fn human(secs: i64) -> String {
    let sign = if secs < 0 { "-" } else { "" };
    let s = secs.unsigned_abs();
    let text = match s {
        0..=119 => format!("{s}s"),
        120..=3599 => format!("{}m", s / 60),
        3600..=172_799 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d", s / 86_400),
    };
    format!("{sign}{text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(human(45), "45s");
        assert_eq!(human(7199), "1h59m");
        assert_eq!(human(-180), "-3m");
        assert_eq!(human(3 * 86_400), "3d");
    }
}
