//! `wxtoken completions SHELL` and `wxtoken manpage`: generated from the clap definitions,
//! so they never drift from the real options. Hidden from the main help: they are for
//! packagers (the .deb ships their output), not for daily use.

use anyhow::{Context, Result};
use clap::CommandFactory;

use super::emit;
use crate::cli::Cli;
use crate::exit::{Exit, fail};

pub fn completions(shell: clap_complete::Shell) -> Result<Exit> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "wxtoken", &mut out);
    emit(&String::from_utf8_lossy(&out))?;
    Ok(Exit::Ok)
}

/// wxtoken(1) lists its subcommands as wxtoken-refresh(1) and so on, as clap_mangen names
/// them: `page` picks one of those, `list` names them all (for the package build).
pub fn manpage(page: Option<&str>, list: bool) -> Result<Exit> {
    let mut root = Cli::command();
    // Building names every subcommand `wxtoken-refresh` and the like, as the pages are.
    root.build();
    let mut pages = Vec::new();
    collect(&root, &mut pages);
    if list {
        let names: Vec<String> = pages.iter().map(page_name).collect();
        emit(&format!("{}\n", names.join("\n")))?;
        return Ok(Exit::Ok);
    }
    let wanted = page.unwrap_or("wxtoken");
    let cmd = pages
        .into_iter()
        .find(|c| page_name(c) == wanted)
        .ok_or_else(|| {
            fail(
                Exit::Usage,
                format!("no man page {wanted} (see wxtoken manpage --list)"),
            )
        })?;
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut out)
        .context("could not render the man page")?;
    emit(&String::from_utf8_lossy(&out))?;
    Ok(Exit::Ok)
}

fn collect(cmd: &clap::Command, pages: &mut Vec<clap::Command>) {
    pages.push(cmd.clone());
    // clap's `help` subcommand has a page (the parent's lists it), but its children only
    // repeat the real subcommands' pages.
    if cmd.get_name() == "help" {
        return;
    }
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        collect(sub, pages);
    }
}

fn page_name(cmd: &clap::Command) -> String {
    cmd.get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_string()
}
