//! `wxtoken quota`: each account's daily token quota as WeChat counts it, next to
//! wxtoken's own fetches, and `quota reset`, which clears it.

use std::io::{self, IsTerminal, Write};

use anyhow::Result;
use serde_json::{Value, json};

use super::{Context, emit, stdin_line};
use crate::config::{ApiConfig, QuotaConfig};
use crate::domain::{Account, AccountKey, Api, Credential, Failure};
use crate::exit::{Exit, fail};
use crate::freshness;
use crate::quota::{self, RESETS_PER_MONTH};
use crate::store::{ReadStore, Store, StoreError};
use crate::wechat::{Client, Quota};

pub fn run(ctx: &Context, cfg: &QuotaConfig) -> Result<Exit> {
    match cfg {
        QuotaConfig::Check {
            accounts,
            json,
            api,
        } => check_all(ctx, accounts, *json, api),
        QuotaConfig::Reset { key, yes, api } => reset(ctx, key, *yes, api),
    }
}

fn check_all(ctx: &Context, named: &[AccountKey], json_out: bool, api: &ApiConfig) -> Result<Exit> {
    // A writing open, like `status`: it is what upgrades an older schema.
    let store = ctx.store()?;
    let client = ctx.client(api);
    let now = ctx.now();
    let mut exit = Exit::Ok;
    let mut text = String::new();
    let mut entries = Vec::new();
    let fetched = store.fetches_today(now)?;
    for account in targets(store.as_ref(), named)? {
        let own = fetched.get(&account.id).copied().unwrap_or(0);
        let checked = check(store.as_ref(), &client, &account, now)?;
        let (mut entry, account_exit) = report(&account, &checked, own, ctx.quiet, &mut text);
        exit = exit.merge(account_exit);
        let key = &account.key;
        entry["appid"] = json!(key.appid);
        entry["agentid"] = json!(key.is_wecom().then_some(&key.agent));
        entry["api"] = json!(account.api.as_str());
        entry["own_fetches_today"] = json!(own);
        entries.push(entry);
    }
    if json_out {
        emit(&format!("{}\n", json!({ "accounts": entries })))?;
    } else {
        emit(&text)?;
    }
    Ok(exit)
}

/// One account's result: its lines of text (appended to `text`), its JSON entry and its
/// exit code. Skips and failures go to stderr, where cron mail and humans see them.
fn report(
    account: &Account,
    checked: &Checked,
    own: i64,
    quiet: bool,
    text: &mut String,
) -> (Value, Exit) {
    let key = &account.key;
    match checked {
        Checked::Skipped(reason) => {
            if !quiet || reason.no_token {
                eprintln!("wxtoken: {key}: skipped: {}", reason.text);
            }
            let exit = if reason.no_token {
                Exit::NoToken
            } else {
                Exit::Ok
            };
            (json!({ "skipped": reason.text }), exit)
        }
        Checked::Failed(path, failure) => {
            let message = failure.explained(|c, m| quota::check_hint(c, m, path));
            eprintln!("wxtoken: {key}: quota check failed: {message}");
            let (errcode, errmsg) = match failure {
                Failure::WeChat { errcode, errmsg } => (Some(*errcode), Some(errmsg.as_str())),
                _ => (None, None),
            };
            let error = json!({ "message": message, "errcode": errcode, "errmsg": errmsg });
            (
                json!({ "cgi_path": path, "error": error }),
                Exit::FetchFailed,
            )
        }
        Checked::Quota(path, q) => {
            let foreign = quota::foreign_fetches(q.used, own);
            let diagnosis = foreign.map(|n| diagnosis(account.api, n));
            *text += &format!(
                "{key}  {path}\n    WeChat today: limit {}, used {}, remaining {}\n    \
                 wxtoken's own fetches today: {own}\n",
                q.daily_limit, q.used, q.remain
            );
            let near_limit = quota::near_limit(q.used, q.daily_limit);
            if near_limit {
                *text += &format!(
                    "    WARNING: {}% of the daily limit used or more; at the limit every \
                     fetch fails with 45009 until midnight China time\n",
                    quota::WARN_SHARE
                );
            }
            if let Some(d) = &diagnosis {
                *text += &format!("    ANOTHER FETCHER: {d}\n");
            }
            let quota = json!({ "daily_limit": q.daily_limit, "used": q.used, "remain": q.remain });
            let entry = json!({ "cgi_path": path, "quota": quota, "near_limit": near_limit,
                "foreign_fetches": foreign, "diagnosis": diagnosis });
            (entry, Exit::Ok)
        }
    }
}

/// What one account's check found.
enum Checked {
    Skipped(Skip),
    Failed(&'static str, Failure),
    Quota(&'static str, Quota),
}

struct Skip {
    text: String,
    /// Skipped for want of a valid token, rather than because the account has no quota.
    no_token: bool,
}

fn check(store: &dyn Store, client: &Client, account: &Account, now: i64) -> Result<Checked> {
    let Some(path) = quota::cgi_path(account.api) else {
        return Ok(Checked::Skipped(Skip {
            text: wecom_note(),
            no_token: false,
        }));
    };
    let token = store
        .latest_token(&account.key, Credential::AccessToken)?
        .filter(|t| freshness::usable(&t.stored(), now, 0));
    let Some(token) = token else {
        return Ok(Checked::Skipped(Skip {
            text: "no valid token stored; the quota check uses the stored token and never \
                   fetches one (run `wxtoken refresh` first)"
                .to_string(),
            no_token: true,
        }));
    };
    let outcome = client.api_quota(&token.token, path);
    Ok(match outcome.result {
        Ok(q) => Checked::Quota(path, q),
        Err(failure) => {
            if let Failure::WeChat { errcode, .. } = &failure
                && quota::token_is_dead(*errcode)
            {
                // WeChat says the stored token is dead: as `get --reject` would, stop
                // serving it, and the next refresh fetches the account.
                store.retire_token(token.id, now)?;
            }
            Checked::Failed(path, failure)
        }
    })
}

fn wecom_note() -> String {
    "WeChat's quota tools are for Official Accounts and Mini Programs; WeCom apps have no \
     daily token quota to check or reset"
        .to_string()
}

/// What `quota` says when WeChat counted `extra` fetches that wxtoken did not make.
fn diagnosis(api: Api, extra: i64) -> String {
    let effect = if api == Api::Token {
        "Each of its fetches invalidates wxtoken's token 5 minutes later, which is why API \
         calls fail with errcode 40001, and all of them spend the daily quota."
    } else {
        "Its fetches spend this account's daily quota (and a forced refresh invalidates \
         wxtoken's token)."
    };
    format!(
        "WeChat counted {extra} more token fetches today than wxtoken made: another program \
         fetches tokens with this appid's secret (an SDK's own refresh, a script, a second \
         server). {effect} Make it read the token from `wxtoken get` instead."
    )
}

/// The accounts to check: every enabled one, or the named ones (enabled or not).
fn targets(store: &dyn ReadStore, named: &[AccountKey]) -> Result<Vec<Account>> {
    let all = store.accounts()?;
    if named.is_empty() {
        return Ok(all.into_iter().filter(|a| a.enabled).collect());
    }
    named.iter().map(|key| find(&all, key)).collect()
}

/// The named account, or an error that says how to name it.
fn find(all: &[Account], key: &AccountKey) -> Result<Account> {
    if let Some(account) = all.iter().find(|a| &a.key == key) {
        return Ok(account.clone());
    }
    let corp = all
        .iter()
        .any(|a| a.key.appid == key.appid && a.api == Api::Work);
    if corp && !key.is_wecom() {
        return Err(fail(
            Exit::Account,
            format!(
                "no such account {key} ({} is a WeCom corp: {})",
                key.appid,
                wecom_note()
            ),
        ));
    }
    Err(StoreError::NotFound(key.clone()).into())
}

fn reset(ctx: &Context, key: &AccountKey, yes: bool, api: &ApiConfig) -> Result<Exit> {
    let store = ctx.store()?;
    ctx.unlock(store.as_ref(), false)?;
    let now = ctx.now();
    let account = find(&store.accounts()?, key)?;
    if account.api == Api::Work {
        return Err(fail(Exit::Usage, format!("{key}: {}", wecom_note())));
    }
    crate::vault::require_open(&account)?;
    let used = store.quota_resets_this_month(account.id, now)?;
    let spent =
        format!("wxtoken has used {used} of this month's {RESETS_PER_MONTH} resets for {key}");
    if !yes {
        confirm(&format!(
            "Reset today's API call counts of {key} on WeChat? This spends one of the \
             {RESETS_PER_MONTH} resets WeChat allows a month; {spent}. [y/N] "
        ))?;
    }
    let outcome = ctx
        .client(api)
        .clear_quota(&account.key.appid, &account.secret);
    match outcome.result {
        Ok(()) => {
            let released = store.record_quota_reset(account.id, outcome.sent_at, None)?;
            ctx.say(&format!(
                "reset the API call quota of {key}; wxtoken has now used {} of this month's \
                 {RESETS_PER_MONTH} resets (China time; resets made in the console or by \
                 other tools are not counted here)",
                used + 1
            ));
            if released {
                ctx.say(&format!(
                    "released {key} from its hold after errcode 45009: the next refresh \
                     fetches it again"
                ));
            }
            Ok(Exit::Ok)
        }
        Err(failure) => {
            let message = failure.explained(quota::reset_hint);
            let errcode = match failure {
                Failure::WeChat { errcode, .. } => Some(errcode),
                _ => None,
            };
            store.record_quota_reset(account.id, outcome.sent_at, Some((errcode, &message)))?;
            Err(fail(
                Exit::FetchFailed,
                format!("could not reset the quota of {key}: {message}; {spent}"),
            ))
        }
    }
}

/// Asks on the terminal; without one, `--yes` is the only way to say yes, so that a
/// script cannot spend a reset by accident.
fn confirm(question: &str) -> Result<()> {
    if !io::stdin().is_terminal() {
        return Err(fail(
            Exit::Usage,
            format!(
                "quota reset spends one of the {RESETS_PER_MONTH} resets WeChat allows a \
                 month; confirm at a terminal, or pass --yes"
            ),
        ));
    }
    eprint!("{question}");
    io::stderr().flush().ok();
    if quota::confirmed(&stdin_line("the answer")?) {
        Ok(())
    } else {
        Err(fail(Exit::Usage, "not reset: not confirmed"))
    }
}
