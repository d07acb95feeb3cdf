//! `wxtoken prune`: keep the database small under years of hourly runs.

use anyhow::Result;

use super::refresh::ATTEMPT_RETENTION;
use crate::cli::PruneArgs;
use crate::exit;
use crate::store::Store;

pub fn run(store: &Store, args: &PruneArgs, now: i64, quiet: bool) -> Result<u8> {
    let (tokens, attempts) = store.prune(now, args.keep, now - ATTEMPT_RETENTION)?;
    if !quiet {
        eprintln!("pruned {tokens} token rows and {attempts} attempts");
    }
    Ok(exit::OK)
}
