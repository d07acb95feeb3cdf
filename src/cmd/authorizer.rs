//! `wxtoken authorizer ...`: the tenants of a platform: onboard one from an auth code,
//! import a credential, resync a component's list, revoke, list, remove, and reset a
//! 代开发 app's secret.

use std::io::IsTerminal;

use anyhow::Result;
use serde_json::json;

use super::account::read_secret;
use super::platform::{named, read_value, require, sealing};
use super::{Context, Stream, stdin_line};
use crate::cli::{AuthorizerCommand, TenantArgs};
use crate::domain::{Account, AccountKey, Api, NewAccount, Secret};
use crate::engine::{self, Stop, onboard};
use crate::exit::{Exit, fail};
use crate::store::{ReadStore, Store, StoreError};
use crate::text::{held_text, human};

pub fn run(ctx: &Context, cmd: AuthorizerCommand) -> Result<Exit> {
    if let AuthorizerCommand::List(a) = cmd {
        let filter = match (&a.component, &a.suite) {
            (Some(c), _) => Some(AccountKey::appid(c).map_err(|e| fail(Exit::Usage, e))?),
            (_, Some(s)) => Some(AccountKey::appid(s).map_err(|e| fail(Exit::Usage, e))?),
            _ => None,
        };
        list(
            ctx.store_or_read()?.as_ref(),
            filter.as_ref(),
            ctx.now(),
            a.json,
        )?;
        return Ok(Exit::Ok);
    }
    let store = ctx.store()?;
    let now = ctx.now();
    match cmd {
        AuthorizerCommand::List(_) => {}
        AuthorizerCommand::Add(a) => {
            let (key, api) = named(&a.platform)?;
            let platform = require(store.as_ref(), &key, api)?;
            let code = auth_code(&a.auth_code)?;
            let cfg = crate::config::api_config(&a.api)?;
            let client = ctx.client(&cfg);
            let token = onboard::platform_token(store.as_ref(), &platform, now)?;
            let account = if api == Api::Component {
                let outcome = client.query_auth(&key.appid, &token, &code);
                if let Err(f) = &outcome.result {
                    let why = f.for_api(Api::Authorizer);
                    store.record_platform_event(
                        platform.id,
                        now,
                        "authorized",
                        None,
                        Some(&why),
                    )?;
                }
                let account = sealing(ctx, store.as_ref(), None, || {
                    onboard::store_authorized(
                        store.as_ref(),
                        &platform,
                        outcome,
                        now,
                        cfg.claim_ttl,
                    )
                })?;
                store.record_platform_event(
                    platform.id,
                    now,
                    "authorized",
                    Some(&account.key.appid),
                    None,
                )?;
                ctx.say(&format!(
                    "added authorizer {} of component {key} with its refresh token and first token",
                    account.key.appid
                ));
                account
            } else {
                let (code, agent) = onboard::exchange_install(&client, &platform, &token, &code)
                    .inspect_err(|e| {
                        let _ = store.record_platform_event(
                            platform.id,
                            now,
                            "create_auth",
                            None,
                            Some(&format!("{e:#}")),
                        );
                    })?;
                let corp_name = crate::policy::one_line(&code.corp_name, 60);
                let installed = sealing(ctx, store.as_ref(), None, || {
                    onboard::store_installed(store.as_ref(), &platform, code, agent, now)
                })?;
                let corp_name = if corp_name.is_empty() {
                    String::new()
                } else {
                    format!(" ({corp_name})")
                };
                store.record_platform_event(
                    platform.id,
                    now,
                    "create_auth",
                    Some(&installed.account.key.to_string()),
                    None,
                )?;
                ctx.say(&format!(
                    "{} {} {}{} of suite {key} with its permanent code{}",
                    if installed.replaced {
                        "updated"
                    } else {
                        "added"
                    },
                    if installed.customized {
                        "代开发 app"
                    } else {
                        "corp"
                    },
                    installed.account.key,
                    corp_name,
                    if installed.customized {
                        " (its app secret; its token comes from gettoken)"
                    } else {
                        "; `wxtoken refresh` fetches its token"
                    }
                ));
                installed.account
            };
            publish(ctx, store.as_ref(), &account);
        }
        AuthorizerCommand::Reset(a) => {
            let key = AccountKey::appid(&a.suite).map_err(|e| fail(Exit::Usage, e))?;
            let platform = require(store.as_ref(), &key, Api::Suite)?;
            if !key.appid.starts_with("dk") {
                return Err(fail(
                    Exit::Usage,
                    format!("suite {key} is not a 代开发 template (its id starts with dk)"),
                ));
            }
            let code = auth_code(&a.auth_code)?;
            let cfg = crate::config::api_config(&a.api)?;
            let client = ctx.client(&cfg);
            let token = onboard::platform_token(store.as_ref(), &platform, now)?;
            let (code, agent) = onboard::exchange_install(&client, &platform, &token, &code)?;
            let installed = sealing(ctx, store.as_ref(), None, || {
                onboard::store_installed(store.as_ref(), &platform, code, agent, now)
            })?;
            store.record_platform_event(
                platform.id,
                now,
                "reset_permanent_code",
                Some(&installed.account.key.to_string()),
                None,
            )?;
            ctx.say(&format!(
                "replaced the app secret of {} (代开发, template {key})",
                installed.account.key
            ));
        }
        AuthorizerCommand::Import(a) => {
            let (platform_key, api) = named(&a.tenant.platform)?;
            let platform = require(store.as_ref(), &platform_key, api)?;
            let (key, tenant_api) = tenant_key(&a.tenant, a.agentid.as_deref())?;
            let secret = read_secret(a.secret.secret_env.as_deref(), &key)?;
            let existing = store.account(&key)?;
            if let Some(known) = &existing
                && known.api != tenant_api
            {
                return Err(fail(
                    Exit::Account,
                    format!("{key} exists and is a {}", known.api.noun()),
                ));
            }
            sealing(
                ctx,
                store.as_ref(),
                existing.as_ref().map(|a| &a.key),
                || {
                    match &existing {
                        Some(_) => store.set_secret(&key, &secret, now)?,
                        None => store.add_account(
                            &NewAccount {
                                key: key.clone(),
                                api: tenant_api,
                                secret: secret.clone(),
                                tickets: Vec::new(),
                                platform: Some(platform.id),
                                receiver: None,
                            },
                            now,
                        )?,
                    }
                    Ok(())
                },
            )?;
            ctx.say(&format!(
                "{} {} {key} with its {}",
                if existing.is_some() {
                    "updated"
                } else {
                    "imported"
                },
                tenant_api.noun(),
                tenant_api.secret_name()
            ));
        }
        AuthorizerCommand::Sync(a) => {
            let key = AccountKey::appid(&a.component).map_err(|e| fail(Exit::Usage, e))?;
            let platform = require(store.as_ref(), &key, Api::Component)?;
            let cfg = crate::config::api_config(&a.api)?;
            let client = ctx.client(&cfg);
            let token = onboard::platform_token(store.as_ref(), &platform, now)?;
            let report = sealing(ctx, store.as_ref(), None, || {
                engine::platform::sync_authorizers(store.as_ref(), &client, &platform, &token, now)
            })?;
            for appid in &report.empty {
                eprintln!(
                    "wxtoken: {appid}: listed without a refresh token: the merchant must \
                     authorize again"
                );
            }
            for appid in &report.unlisted {
                eprintln!(
                    "wxtoken: {appid}: known here but no longer listed by WeChat (revoked?); \
                     kept: `wxtoken authorizer revoke` or `remove` it if so"
                );
            }
            ctx.say(&format!("component {key}: {}", report.summary()));
        }
        AuthorizerCommand::SetTickets(a) => {
            let (platform_key, api) = named(&a.tenant.platform)?;
            require(store.as_ref(), &platform_key, api)?;
            let (key, _) = tenant_key(&a.tenant, None)?;
            let tenant = require_tenant(store.as_ref(), &key)?;
            crate::config::check_tickets(tenant.api, &a.tickets)?;
            store.set_tickets(&key, &a.tickets, now)?;
            let names: Vec<&str> = a.tickets.iter().map(|t| t.as_str()).collect();
            ctx.say(&format!(
                "{} {key} tickets: {}",
                tenant.api.noun(),
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ));
        }
        AuthorizerCommand::Revoke(t) => {
            let (platform_key, api) = named(&t.platform)?;
            require(store.as_ref(), &platform_key, api)?;
            let (key, _) = tenant_key(&t, None)?;
            require_tenant(store.as_ref(), &key)?;
            store.hold_account(
                &key,
                "revoked: the authorization was cancelled; no further requests are made for it \
                 (onboard it again with `wxtoken authorizer add --auth-code`)",
                now,
            )?;
            ctx.say(&format!(
                "revoked {key}: refresh makes no further requests for it; its last token \
                 serves until it expires"
            ));
        }
        AuthorizerCommand::Remove(a) => {
            let (platform_key, api) = named(&a.tenant.platform)?;
            require(store.as_ref(), &platform_key, api)?;
            let (key, _) = tenant_key(&a.tenant, None)?;
            let tenant = require_tenant(store.as_ref(), &key)?;
            if tenant.api == Api::Corp && !a.yes {
                confirm(&key)?;
            }
            store.remove_account(&key)?;
            ctx.say(&format!(
                "removed {} {key} and its history",
                tenant.api.noun()
            ));
        }
    }
    Ok(Exit::Ok)
}

/// Publishes a new tenant's token to the sinks, as `get --reject` does: a failure is a
/// warning, retried by the next refresh.
fn publish(ctx: &Context, store: &dyn Store, account: &Account) {
    let settled = engine::settle(
        store,
        std::slice::from_ref(account),
        ctx.clock,
        &Stop::default(),
        None,
        "warning: ",
    );
    if let Some(err) = settled.unreachable {
        eprintln!("wxtoken: warning: could not publish to the sinks: {err}");
    }
}

/// An auth code from the command line, or from stdin with `-`.
fn auth_code(arg: &str) -> Result<Secret> {
    if arg == "-" {
        return read_value("the auth code", 1024);
    }
    let value = arg.trim();
    if value.is_empty() || value.len() > 1024 || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(fail(
            Exit::Usage,
            "--auth-code is not valid: give the code WeChat sent (or - to read it from stdin)",
        ));
    }
    Ok(Secret::new(value.to_string()))
}

/// A tenant's key and kind: an authorizer (APPID, COMPONENT), a corp (CORPID, SUITE), or
/// with `agentid` a 代开发 app (CORPID, AGENTID).
fn tenant_key(t: &TenantArgs, agentid: Option<&str>) -> Result<(AccountKey, Api)> {
    let (platform, api) = named(&t.platform)?;
    let usage = |e: String| fail(Exit::Usage, e);
    match (api, &t.appid, &t.corpid, agentid) {
        (Api::Component, Some(appid), None, None) => Ok((
            AccountKey::wecom(appid, &platform.appid).map_err(usage)?,
            Api::Authorizer,
        )),
        (Api::Suite, None, Some(corpid), None) => Ok((
            AccountKey::wecom(corpid, &platform.appid).map_err(usage)?,
            Api::Corp,
        )),
        (Api::Suite, None, Some(corpid), Some(agent)) => {
            Ok((AccountKey::wecom(corpid, agent).map_err(usage)?, Api::Work))
        }
        (Api::Component, ..) => Err(usage("name the authorizer with --appid".into())),
        _ => Err(usage("name the corp with --corpid".into())),
    }
}

fn require_tenant(store: &dyn ReadStore, key: &AccountKey) -> Result<Account> {
    match store.account(key)? {
        Some(a) if a.api.is_tenant() || a.platform.is_some() => Ok(a),
        _ => Err(StoreError::NotFound(key.clone()).into()),
    }
}

/// A corp's permanent code cannot be recovered: on a terminal, the corpid typed back; else
/// `--yes`.
fn confirm(key: &AccountKey) -> Result<()> {
    if !std::io::stdin().is_terminal() {
        return Err(fail(
            Exit::Usage,
            format!(
                "removing {key} drops its permanent code, which cannot be recovered (the corp \
                 must install the app again): pass --yes"
            ),
        ));
    }
    eprint!("removing {key} drops its permanent code for good; type the corpid to confirm: ");
    let line = stdin_line("the confirmation")?;
    if line.trim() != key.appid {
        return Err(fail(Exit::Usage, "not confirmed; nothing was removed"));
    }
    Ok(())
}

fn list(store: &dyn ReadStore, platform: Option<&AccountKey>, now: i64, json: bool) -> Result<()> {
    let accounts = store.accounts()?;
    let platform_id = match platform {
        Some(key) => match accounts
            .iter()
            .find(|a| &a.key == key && a.api.is_platform())
        {
            Some(p) => Some(p.id),
            None => {
                return Err(fail(
                    Exit::Account,
                    format!("no such platform {key} (see wxtoken platform list)"),
                ));
            }
        },
        None => None,
    };
    let mut out = Stream::new();
    if !json {
        out.write(
            "TENANT                                   KIND        PLATFORM                 STATE\n",
        )?;
    }
    for t in accounts.iter().filter(|a| a.platform.is_some()) {
        if platform_id.is_some_and(|id| t.platform != Some(id)) {
            continue;
        }
        let parent = accounts
            .iter()
            .find(|p| Some(p.id) == t.platform)
            .map_or(String::new(), |p| p.key.appid.clone());
        let state = match t.held_at(now) {
            _ if !t.enabled => "disabled".to_string(),
            Some((until, reason)) => format!("held {}: {reason}", held_text(until)),
            None => "ok".to_string(),
        };
        let token = store.latest_token(&t.key, crate::domain::Credential::AccessToken)?;
        let left = token
            .as_ref()
            .and_then(|r| r.stored().left(now))
            .filter(|&l| l > 0);
        if json {
            let line = json!({
                "type": t.api.noun(),
                "appid": (t.api == Api::Authorizer).then_some(&t.key.appid),
                "corpid": (t.api != Api::Authorizer).then_some(&t.key.appid),
                "agentid": (t.api == Api::Work).then_some(&t.key.agent),
                "platform": parent,
                "enabled": t.enabled,
                "held": t.held_at(now).is_some(),
                "held_reason": t.held_at(now).map(|h| h.1),
                "token_expires_in": left,
                "credential_rotated": t.previous_secret.is_some(),
            });
            out.write(&format!("{line}\n"))?;
        } else {
            let kind = if t.api == Api::Work {
                "代开发"
            } else {
                t.api.noun()
            };
            let shown = match t.api {
                Api::Authorizer | Api::Corp => t.key.appid.clone(),
                _ => t.key.to_string(),
            };
            let state = match left {
                Some(l) if state == "ok" => format!("ok, token {} left", human(l)),
                _ => state,
            };
            out.write(&format!("{shown:<40} {kind:<11} {parent:<24} {state}\n"))?;
        }
    }
    out.finish()
}
