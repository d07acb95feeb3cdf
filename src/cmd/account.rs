//! `wxtoken account ...`: add, list, remove, enable, disable, set-secret.

use std::io::{self, BufRead, IsTerminal, Read, Write};

use anyhow::{Context as _, Result};
use serde_json::json;

use super::{Context, emit, stdin_line};
use crate::config::{AccountOp, check_tickets};
use crate::domain::{AccountKey, NewAccount, Secret};
use crate::exit::{Exit, fail};
use crate::secret;
use crate::store::{ReadStore, StoreError};
use crate::text::rfc3339;
use crate::vault;

pub fn run(ctx: &Context, op: AccountOp) -> Result<Exit> {
    // Reads only, so a PostgreSQL reader role may list too (without the secrets).
    if let AccountOp::List { json } = op {
        list(ctx.store_or_read()?.as_ref(), json)?;
        return Ok(Exit::Ok);
    }
    let store = ctx.store()?;
    let now = ctx.now();
    match op {
        AccountOp::Add {
            key,
            api,
            tickets,
            secret_env,
        } => {
            // Before asking for the secret, so nobody types it for nothing.
            if store.account(&key)?.is_some() {
                return Err(StoreError::AlreadyExists(key).into());
            }
            let file = ctx.key_file()?;
            vault::check_for_writing(store.as_ref(), &file, None)?;
            let secret = read_secret(secret_env.as_deref(), &key)?;
            let new = NewAccount {
                key,
                api,
                secret,
                tickets,
                platform: None,
                receiver: None,
            };
            // The key file is read again under the lock that `key rotate` takes.
            store.with_secrets_lock(&mut || {
                vault::load_for_sealing(store.as_ref(), &file, None)?;
                Ok(store.add_account(&new, now)?)
            })?;
            ctx.say(&format!("added {} (api {})", new.key, api.as_str()));
        }
        // Listed above.
        AccountOp::List { json } => list(store.as_ref(), json)?,
        AccountOp::Remove(key) => {
            store.remove_account(&key)?;
            ctx.say(&format!("removed {key} and its token history"));
        }
        AccountOp::Enable(key) => {
            // Enabled, it would still have no secret to fetch with.
            if store.require_account(&key)?.secret.locked_kid() == Some(crate::crypto::LOST_KID) {
                return Err(fail(
                    Exit::Key,
                    format!(
                        "the secret of {key} was forgotten with its lost key (wxtoken key \
                         reset): set it again with `wxtoken account set-secret`, which \
                         lifts the hold; enabling it alone would not"
                    ),
                ));
            }
            store.set_enabled(&key, true, now)?;
            ctx.say(&format!("enabled {key}"));
        }
        AccountOp::Disable(key) => {
            store.set_enabled(&key, false, now)?;
            ctx.say(&format!("disabled {key}"));
        }
        AccountOp::SetTickets { key, tickets } => {
            check_tickets(store.require_account(&key)?.api, &tickets)?;
            store.set_tickets(&key, &tickets, now)?;
            let names: Vec<&str> = tickets.iter().map(|t| t.as_str()).collect();
            ctx.say(&format!(
                "{key} tickets: {}",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ));
        }
        AccountOp::SetSecret { key, secret_env } => {
            store.require_account(&key)?;
            let file = ctx.key_file()?;
            vault::check_for_writing(store.as_ref(), &file, Some(&key))?;
            let secret = read_secret(secret_env.as_deref(), &key)?;
            store.with_secrets_lock(&mut || {
                vault::load_for_sealing(store.as_ref(), &file, Some(&key))?;
                Ok(store.set_secret(&key, &secret, now)?)
            })?;
            ctx.say(&format!("updated the secret of {key}"));
        }
    }
    Ok(Exit::Ok)
}

fn list(store: &dyn ReadStore, json: bool) -> Result<()> {
    let accounts = store.accounts()?;
    if json {
        let items: Vec<_> = accounts
            .iter()
            .map(|a| {
                json!({
                    "appid": a.key.appid,
                    "agentid": a.key.is_wecom().then_some(&a.key.agent),
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
        "ACCOUNT                                  API     ENABLED  SECRET              TICKETS\n",
    );
    for a in &accounts {
        let tickets: Vec<&str> = a.tickets.iter().map(|t| t.as_str()).collect();
        text += &format!(
            "{:<40} {:<7} {:<8} {:<19} {}\n",
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
pub(super) fn read_secret(secret_env: Option<&str>, key: &AccountKey) -> Result<Secret> {
    let raw = if let Some(var) = secret_env {
        std::env::var(var).map_err(|_| {
            fail(
                Exit::Usage,
                format!("environment variable {var} is not set or not UTF-8"),
            )
        })?
    } else if io::stdin().is_terminal() {
        prompt_without_echo(&format!("secret for {key}: "))?
    } else {
        stdin_line("the secret")?
    };
    super::check_length("the secret", &raw)?;
    let value = raw.trim();
    if value.is_empty() {
        return Err(fail(
            Exit::Usage,
            "the secret is empty: give it on stdin (one line) or with --secret-env VAR",
        ));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(fail(
            Exit::Usage,
            "the secret has spaces or non-ASCII characters; WeChat secrets have none",
        ));
    }
    Ok(Secret::new(value.to_string()))
}

/// Reads one line from the terminal on stdin with echo off. A signal meanwhile (Ctrl-C)
/// turns echo back on before the process dies, so the shell is not left typing blind.
/// Echo goes off before the prompt shows, so that whatever is typed after it is hidden.
fn prompt_without_echo(prompt: &str) -> Result<String> {
    let guard = crate::signals::echo_off(0);
    eprint!("{prompt}");
    io::stderr().flush().ok();
    let mut line = String::new();
    let read = io::stdin()
        .lock()
        .take(super::STDIN_LIMIT + 1)
        .read_line(&mut line);
    drop(guard);
    eprintln!();
    read.context("could not read the secret from the terminal")?;
    Ok(line)
}
