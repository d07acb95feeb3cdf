//! Every exit code wxtoken uses, in one place. The README's table mirrors this file.

use std::fmt;

/// Everything worked.
pub const OK: u8 = 0;
/// An unexpected failure: I/O, a bug, anything not classified below.
pub const ERROR: u8 = 1;
/// Bad arguments or bad input (clap uses 2 for its own usage errors too).
pub const USAGE: u8 = 2;
/// `get`: there is no valid token to print (unknown account, none fetched yet, expired,
/// or less than `--min-ttl` left).
pub const NO_TOKEN: u8 = 3;
/// `refresh`, `get --reject`: at least one fetch from WeChat failed.
pub const FETCH_FAILED: u8 = 4;
/// The database could not be opened, is not a wxtoken database, or is newer than this binary.
pub const DATABASE: u8 = 5;
/// An account or sink command named one that does not exist, or one that already exists.
pub const ACCOUNT: u8 = 6;
/// `refresh`, `sink test`: publishing to a sink failed (and nothing worse happened). The
/// tokens are stored; ops can tell "Redis failed" from "WeChat failed".
pub const PUBLISH_FAILED: u8 = 9;

/// An error that carries the exit code `main` should use. Attach context around it freely:
/// `main` finds it anywhere in the chain.
#[derive(Debug)]
pub struct Coded {
    pub code: u8,
    pub message: String,
}

impl fmt::Display for Coded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Coded {}

/// Build an error that exits with `code`.
pub fn fail(code: u8, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Coded {
        code,
        message: message.into(),
    })
}

/// The exit code for an error: the innermost `Coded` in its chain, else `ERROR`.
pub fn code_of(err: &anyhow::Error) -> u8 {
    err.chain()
        .filter_map(|e| e.downcast_ref::<Coded>())
        .last()
        .map_or(ERROR, |c| c.code)
}
