//! `wxtoken account ...`: add, list, remove, enable, disable, set-secret.

use std::io::{self, BufRead, IsTerminal, Write};

use anyhow::{Context, Result};
use serde_json::json;

use super::{emit, rfc3339, stdin_line};
use crate::cli::{AccountArgs, AccountCommand, SecretSource};
use crate::exit::{self, fail};
use crate::secret::{self, Secret};
use crate::store::{AccountKey, Store};
use crate::wechat::{Api, Ticket};

/// Confirmations go to stderr unless `quiet`: stdout is for data only.
pub fn run(store: &Store, cmd: AccountCommand, now: i64, quiet: bool) -> Result<u8> {
    let say = |text: String| {
        if !quiet {
            eprintln!("{text}");
        }
    };
    match cmd {
        AccountCommand::Add(args) => {
            let key = key(&args.account)?;
            let api = if key.agent.is_empty() {
                Api::from(args.api)
            } else {
                Api::Work
            };
            // Before asking for the secret, so nobody types it for nothing.
            store.ensure_absent(&key)?;
            check_tickets(api, &args.tickets)?;
            let secret = read_secret(&args.secret, &key)?;
            store.add_account(&key, api, &secret, &args.tickets, now)?;
            say(format!("added {key} (api {})", api.as_str()));
        }
        AccountCommand::List(args) => list(store, args.json)?,
        AccountCommand::Remove(a) => {
            let key = key(&a)?;
            store.remove_account(&key)?;
            say(format!("removed {key} and its token history"));
        }
        AccountCommand::Enable(a) => {
            let key = key(&a)?;
            store.set_enabled(&key, true, now)?;
            say(format!("enabled {key}"));
        }
        AccountCommand::Disable(a) => {
            let key = key(&a)?;
            store.set_enabled(&key, false, now)?;
            say(format!("disabled {key}"));
        }
        AccountCommand::SetTickets(args) => {
            let key = key(&args.account)?;
            check_tickets(store.require_account(&key)?.api, &args.tickets)?;
            store.set_tickets(&key, &args.tickets, now)?;
            let names: Vec<&str> = args.tickets.iter().map(|t| t.as_str()).collect();
            say(format!(
                "{key} tickets: {}",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ));
        }
        AccountCommand::SetSecret(args) => {
            let key = key(&args.account)?;
            store.require_account(&key)?;
            let secret = read_secret(&args.secret, &key)?;
            store.set_secret(&key, &secret, now)?;
            say(format!("updated the secret of {key}"));
        }
    }
    Ok(exit::OK)
}

fn key(args: &AccountArgs) -> Result<AccountKey> {
    args.key().map_err(|e| fail(exit::USAGE, e))
}

fn check_tickets(api: Api, tickets: &[Ticket]) -> Result<()> {
    match tickets.iter().find(|t| !t.fits(api)) {
        Some(t) => Err(fail(
            exit::USAGE,
            format!("a {} account has no {} ticket", api.as_str(), t.as_str()),
        )),
        None => Ok(()),
    }
}

fn list(store: &Store, json: bool) -> Result<()> {
    let accounts = store.accounts()?;
    if json {
        let items: Vec<_> = accounts
            .iter()
            .map(|a| {
                json!({
                    "appid": a.key.appid,
                    "agentid": (!a.key.agent.is_empty()).then_some(&a.key.agent),
                    "api": a.api.as_str(),
                    "enabled": a.enabled,
                    "secret": secret::mask(&a.secret),
                    "tickets": a.tickets.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
                    "created_at": rfc3339(a.created_at),
                    "updated_at": rfc3339(a.updated_at),
                })
            })
            .collect();
        return emit(&format!("{}\n", json!({ "accounts": items })));
    }
    let mut text = String::from(
        "ACCOUNT                                  API     ENABLED  SECRET           TICKETS\n",
    );
    for a in &accounts {
        let tickets: Vec<&str> = a.tickets.iter().map(|t| t.as_str()).collect();
        text += &format!(
            "{:<40} {:<7} {:<8} {:<16} {}\n",
            a.key.to_string(),
            a.api.as_str(),
            if a.enabled { "yes" } else { "no" },
            secret::mask(&a.secret),
            if tickets.is_empty() {
                "-".to_string()
            } else {
                tickets.join(",")
            }
        );
    }
    emit(&text)
}

/// Reads a secret from `--secret-env VAR`, or stdin: a prompt without echo on a terminal,
/// else its first line. Never from argv.
fn read_secret(source: &SecretSource, key: &AccountKey) -> Result<Secret> {
    let raw = if let Some(var) = &source.secret_env {
        std::env::var(var).map_err(|_| {
            fail(
                exit::USAGE,
                format!("environment variable {var} is not set or not UTF-8"),
            )
        })?
    } else if io::stdin().is_terminal() {
        prompt_without_echo(&format!("secret for {key}: "))?
    } else {
        stdin_line("the secret")?
    };
    let value = raw.trim();
    if value.is_empty() {
        return Err(fail(
            exit::USAGE,
            "the secret is empty: give it on stdin (one line) or with --secret-env VAR",
        ));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(fail(
            exit::USAGE,
            "the secret has spaces or non-ASCII characters; WeChat secrets have none",
        ));
    }
    Ok(Secret::new(value.to_string()))
}

/// Turns terminal echo off with stty for the duration of one line.
fn prompt_without_echo(prompt: &str) -> Result<String> {
    let stty = |arg: &str| {
        std::process::Command::new("stty")
            .arg(arg)
            .stdin(std::fs::File::open("/dev/tty")?)
            .status()
    };
    eprint!("{prompt}");
    io::stderr().flush().ok();
    let echo_off = stty("-echo").map(|s| s.success()).unwrap_or(false);
    let mut line = String::new();
    let read = io::stdin().lock().read_line(&mut line);
    if echo_off {
        let _ = stty("echo");
    }
    eprintln!();
    read.context("could not read the secret from the terminal")?;
    Ok(line)
}
