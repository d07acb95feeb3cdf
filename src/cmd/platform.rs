//! `wxtoken platform ...`: add a component or a suite, replace its secret, store a pushed
//! ticket, restart Open Platform ticket pushes, list, remove, and the push settings
//! (`set-crypto`, `set-hook`). `ingest` is in `cmd::push`.

use anyhow::Result;
use serde_json::json;

use super::account::read_secret;
use super::{Context, Stream, stdin_line};
use crate::cli::{PlatformArgs, PlatformCommand};
use crate::domain::{Account, AccountKey, Api, NewAccount, Secret};
use crate::engine::platform::ticket_problem;
use crate::exit::{Exit, fail};
use crate::store::{ReadStore, Store, StoreError, TicketStored};
use crate::text::{human, rfc3339};
use crate::vault;

/// A platform as the command line names it: its key and kind.
pub fn named(args: &PlatformArgs) -> Result<(AccountKey, Api)> {
    let (id, api) = match (&args.component, &args.suite) {
        (Some(c), None) => (c, Api::Component),
        (None, Some(s)) => (s, Api::Suite),
        _ => {
            return Err(fail(
                Exit::Usage,
                "name the platform with --component or --suite",
            ));
        }
    };
    let key = AccountKey::appid(id).map_err(|e| fail(Exit::Usage, e))?;
    Ok((key, api))
}

/// The platform, or "no such component/suite" (exit 6).
pub fn require(store: &dyn ReadStore, key: &AccountKey, api: Api) -> Result<Account> {
    match store.account(key)? {
        Some(a) if a.api == api => Ok(a),
        Some(a) => Err(fail(
            Exit::Account,
            format!("{key} is a {}, not a {}", a.api.noun(), api.noun()),
        )),
        None => Err(fail(
            Exit::Account,
            format!(
                "no such {} {key} (see wxtoken platform list; add it with wxtoken platform add)",
                api.noun()
            ),
        )),
    }
}

/// Runs `work` with the key file loaded for sealing, under the secrets lock (see
/// `account add`), and gives back what it returned.
pub fn sealing<T>(
    ctx: &Context,
    store: &dyn Store,
    except: Option<&AccountKey>,
    work: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let file = ctx.key_file()?;
    vault::check_for_writing(store, &file, except)?;
    let (mut work, mut out) = (Some(work), None);
    store.with_secrets_lock(&mut || {
        vault::load_for_sealing(store, &file, except)?;
        if let Some(work) = work.take() {
            out = Some(work()?);
        }
        Ok(())
    })?;
    out.ok_or_else(|| anyhow::anyhow!("the secrets lock ran nothing"))
}

pub fn run(ctx: &Context, cmd: PlatformCommand) -> Result<Exit> {
    if let PlatformCommand::List(a) = cmd {
        list(ctx.store_or_read()?.as_ref(), ctx.now(), a.json)?;
        return Ok(Exit::Ok);
    }
    if let PlatformCommand::Ingest(a) = cmd {
        return super::push::ingest(ctx, &a);
    }
    let store = ctx.store()?;
    let now = ctx.now();
    match cmd {
        PlatformCommand::List(_) | PlatformCommand::Ingest(_) => {}
        PlatformCommand::Add(a) => {
            let (key, api) = named(&a.platform)?;
            if store.account(&key)?.is_some() {
                return Err(StoreError::AlreadyExists(key).into());
            }
            let receiver = match &a.provider_corpid {
                Some(p) => Some(
                    AccountKey::appid(p)
                        .map_err(|e| fail(Exit::Usage, e))?
                        .appid,
                ),
                None => None,
            };
            let secret = read_secret(a.secret.secret_env.as_deref(), &key)?;
            let new = NewAccount {
                key,
                api,
                secret,
                tickets: Vec::new(),
                platform: None,
                receiver,
            };
            sealing(ctx, store.as_ref(), None, || {
                Ok(store.add_account(&new, now)?)
            })?;
            ctx.say(&format!(
                "added {} {}; its token is fetched by `wxtoken refresh` once a ticket arrives",
                api.noun(),
                new.key
            ));
        }
        PlatformCommand::SetSecret(a) => {
            let (key, api) = named(&a.platform)?;
            require(store.as_ref(), &key, api)?;
            let secret = read_secret(a.secret.secret_env.as_deref(), &key)?;
            sealing(ctx, store.as_ref(), Some(&key), || {
                Ok(store.set_secret(&key, &secret, now)?)
            })?;
            ctx.say(&format!("updated the secret of {} {key}", api.noun()));
        }
        PlatformCommand::SetTicket(a) => {
            let (key, api) = named(&a.platform)?;
            let platform = require(store.as_ref(), &key, api)?;
            let ticket = read_value("the ticket", 512)?;
            let create_time = a.create_time.unwrap_or(now);
            if create_time > now + 300 {
                return Err(fail(
                    Exit::Usage,
                    format!(
                        "--create-time {create_time} is {} in the future; give WeChat's \
                         CreateTime in Unix seconds",
                        human(create_time - now)
                    ),
                ));
            }
            let stored = sealing(ctx, store.as_ref(), None, || {
                Ok(store.set_platform_ticket(platform.id, &ticket, create_time, now)?)
            })?;
            match stored {
                TicketStored::Stored => ctx.say(&format!(
                    "stored the ticket of {} {key} (created {})",
                    api.noun(),
                    rfc3339(create_time)
                )),
                TicketStored::Kept => ctx.say(&format!(
                    "kept the stored ticket of {} {key}: it is as new or newer",
                    api.noun()
                )),
            }
        }
        PlatformCommand::StartPush(a) => {
            let key = AccountKey::appid(&a.component).map_err(|e| fail(Exit::Usage, e))?;
            let platform = require(store.as_ref(), &key, Api::Component)?;
            ctx.unlock(store.as_ref(), false)?;
            let platform = store.require_account(&platform.key)?;
            vault::require_open(&platform)?;
            let api = crate::config::api_config(&a.api)?;
            let outcome = ctx
                .client(&api)
                .start_push_ticket(&key.appid, &platform.secret);
            if let Err(failure) = outcome.result {
                return Err(fail(
                    Exit::FetchFailed,
                    format!(
                        "api_start_push_ticket for {key}: {}",
                        failure.for_api(Api::Component)
                    ),
                ));
            }
            ctx.say(&format!(
                "WeChat will resume pushing the ticket of {key} (within about 10 minutes)"
            ));
        }
        PlatformCommand::Remove(a) => {
            let (key, api) = named(&a.platform)?;
            let platform = require(store.as_ref(), &key, api)?;
            let tenants = store
                .accounts()?
                .into_iter()
                .filter(|t| t.platform == Some(platform.id))
                .count();
            if tenants > 0 && !a.with_authorizers {
                return Err(fail(
                    Exit::Usage,
                    format!(
                        "{} {key} has {tenants} tenant(s); removing it would drop their \
                         credentials: pass --with-authorizers to remove them too",
                        api.noun()
                    ),
                ));
            }
            if tenants > 0 && api == Api::Suite && !a.yes {
                return Err(fail(
                    Exit::Usage,
                    format!(
                        "removing suite {key} drops {tenants} permanent code(s), which cannot \
                         be recovered (each corp must install the app again): pass --yes"
                    ),
                ));
            }
            let n = store.remove_platform(&key)?;
            ctx.say(&format!(
                "removed {} {key}, its history and {n} tenant(s)",
                api.noun()
            ));
        }
        PlatformCommand::SetCrypto(a) => {
            let (key, api) = named(&a.platform)?;
            let platform = require(store.as_ref(), &key, api)?;
            let (token, aes_key) = read_crypto()?;
            sealing(ctx, store.as_ref(), None, || {
                Ok(store.set_platform_crypto(platform.id, &token, &aes_key, now)?)
            })?;
            ctx.say(&format!(
                "stored the message Token and EncodingAESKey of {} {key}",
                api.noun()
            ));
        }
        PlatformCommand::SetHook(a) => {
            let (key, api) = named(&a.platform)?;
            let platform = require(store.as_ref(), &key, api)?;
            let hook = if a.none { None } else { a.exec.as_deref() };
            if let Some(h) = hook
                && (h.trim().is_empty() || h.chars().any(char::is_control))
            {
                return Err(fail(Exit::Usage, "--exec needs a command on one line"));
            }
            if !store.set_platform_hook(platform.id, hook, a.timeout, a.with_secrets, now)? {
                return Err(fail(
                    Exit::Usage,
                    format!(
                        "{} {key} has no push settings yet: run `wxtoken platform set-crypto` first",
                        api.noun()
                    ),
                ));
            }
            ctx.say(&match hook {
                Some(_) => format!("set the hook of {} {key}", api.noun()),
                None => format!("removed the hook of {} {key}", api.noun()),
            });
        }
    }
    Ok(Exit::Ok)
}

/// One value from stdin (a ticket, an auth code): printable ASCII, at most `max` bytes.
pub fn read_value(what: &str, max: usize) -> Result<Secret> {
    let line = stdin_line(what)?;
    let value = line.trim();
    if value.is_empty() {
        return Err(fail(
            Exit::Usage,
            format!("{what} is empty: give it on stdin"),
        ));
    }
    if value.len() > max || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(fail(
            Exit::Usage,
            format!("{what} is not valid: at most {max} printable ASCII characters"),
        ));
    }
    Ok(Secret::new(value.to_string()))
}

/// The message Token and the EncodingAESKey: two lines on stdin.
fn read_crypto() -> Result<(Secret, Secret)> {
    use std::io::Read;
    let mut text = String::new();
    std::io::stdin()
        .lock()
        .take(4096)
        .read_to_string(&mut text)
        .map_err(|e| fail(Exit::Usage, format!("could not read stdin: {e}")))?;
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let (Some(token), Some(key), None) = (lines.next(), lines.next(), lines.next()) else {
        return Err(fail(
            Exit::Usage,
            "stdin must hold two lines: the message Token, then the 43-character EncodingAESKey",
        ));
    };
    // The push layer's own rules: what it accepts here is what it can decrypt with.
    crate::push::crypto::MsgCrypto::from_parts(token, key).map_err(|e| {
        fail(
            Exit::Usage,
            format!(
                "{e}: stdin must hold the message Token (letters and digits), then the \
                 43-character EncodingAESKey"
            ),
        )
    })?;
    Ok((Secret::new(token.to_string()), Secret::new(key.to_string())))
}

fn list(store: &dyn ReadStore, now: i64, json: bool) -> Result<()> {
    let accounts = store.accounts()?;
    let mut out = Stream::new();
    if !json {
        out.write("PLATFORM                         KIND       TICKET                              TOKEN        TENANTS\n")?;
    }
    for p in accounts.iter().filter(|a| a.api.is_platform()) {
        let tenants = accounts.iter().filter(|t| t.platform == Some(p.id)).count();
        let times = store.ticket_times(p.id)?;
        let problem = ticket_problem(p.api, times.map(|t| t.0), now);
        let token = store.latest_token(&p.key, crate::domain::Credential::AccessToken)?;
        let left = token
            .as_ref()
            .and_then(|t| t.stored().left(now))
            .filter(|&l| l > 0);
        let failed = store.platform_events(p.id, 20)?.into_iter().find(|e| !e.ok);
        if json {
            let line = json!({
                "last_failed_event": failed.as_ref().map(|e| json!({
                    "at": rfc3339(e.at),
                    "event": e.event,
                    "tenant": e.tenant,
                    "detail": e.detail,
                })),
                "type": p.api.noun(),
                "id": p.key.appid,
                "enabled": p.enabled,
                "provider_corpid": p.receiver,
                "ticket_created_at": times.map(|t| rfc3339(t.0)),
                "ticket_received_at": times.map(|t| rfc3339(t.1)),
                "ticket_age": times.map(|t| now - t.0),
                "waiting_for_ticket": problem.is_some(),
                "token_expires_in": left,
                "tenants": tenants,
            });
            out.write(&format!("{line}\n"))?;
        } else {
            let ticket = match (times, &problem) {
                (None, Some(_)) => "waiting: none yet".to_string(),
                (Some((created, _)), Some(_)) => format!("waiting: {} old", human(now - created)),
                (Some((created, _)), None) => format!("{} old", human(now - created)),
                (None, None) => "-".to_string(),
            };
            let token = left.map_or("none".to_string(), |l| format!("{} left", human(l)));
            out.write(&format!(
                "{:<32} {:<10} {:<35} {:<12} {}\n",
                p.key.appid,
                p.api.noun(),
                ticket,
                token,
                tenants
            ))?;
            if let Some(e) = failed {
                out.write(&format!(
                    "  last failed event: {} {} at {}: {}\n",
                    e.event,
                    e.tenant.unwrap_or_default(),
                    rfc3339(e.at),
                    e.detail.unwrap_or_default()
                ))?;
            }
        }
    }
    out.finish()
}
