//! `wxtoken metrics`: the monitoring metrics on stdout, the same text that
//! `refresh --metrics-file` writes.

use anyhow::Result;

use super::report::metrics_text;
use super::{Context, emit};
use crate::exit::Exit;

/// Reads only: the metrics never create, migrate or lock the database.
pub fn run(ctx: &Context) -> Result<Exit> {
    emit(&metrics_text(ctx.read_store()?.as_ref(), ctx.now())?)?;
    Ok(Exit::Ok)
}
