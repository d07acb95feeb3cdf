//! `wxtoken prune`: keep the database small under years of hourly runs.

use anyhow::Result;

use super::Context;
use crate::exit::Exit;
use crate::policy::ATTEMPT_RETENTION;

pub fn run(ctx: &Context, keep: i64) -> Result<Exit> {
    let now = ctx.now();
    let (tokens, attempts) = ctx.store()?.prune(now, keep, now - ATTEMPT_RETENTION)?;
    ctx.say(&format!(
        "pruned {tokens} token rows and {attempts} attempts"
    ));
    Ok(Exit::Ok)
}
