//! `wxtoken completions SHELL` and `wxtoken manpage`: generated from the clap definitions,
//! so they never drift from the real options. Hidden from the main help: they are for
//! packagers (the .deb ships their output), not for daily use.

use anyhow::{Context, Result};
use clap::CommandFactory;

use super::emit;
use crate::cli::Cli;
use crate::exit;

pub fn completions(shell: clap_complete::Shell) -> Result<u8> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "wxtoken", &mut out);
    emit(&String::from_utf8_lossy(&out))?;
    Ok(exit::OK)
}

pub fn manpage() -> Result<u8> {
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut out)
        .context("could not render the man page")?;
    emit(&String::from_utf8_lossy(&out))?;
    Ok(exit::OK)
}
