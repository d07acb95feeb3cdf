//! `wxtoken quota`: each account's daily token quota as WeChat counts it, next to
//! wxtoken's own fetches, and `quota reset`, which clears it.

use std::io::{self, IsTerminal, Write};

use anyhow::Result;
use serde_json::{Value, json};

use super::{check_api, emit, stdin_line};
use crate::cli::{QuotaArgs, QuotaCommand, ResetArgs};
use crate::exit::{self, fail};
use crate::policy;
use crate::quota::{self, RESETS_PER_MONTH};
use crate::store::{ACCESS_TOKEN, Account, AccountKey, Store};
use crate::wechat::{Api, Client, Failure, Quota};

pub fn run(store: &Store, args: &QuotaArgs, now: i64, quiet: bool) -> Result<u8> {
    if let Some(QuotaCommand::Reset(reset_args)) = &args.reset {
        return reset(store, reset_args, now, quiet);
    }
    check_api(&args.api)?;
    let api = &args.api;
    let client = Client::new(&api.api_base, &api.work_api_base, api.timeout());
    let mut code = exit::OK;
    let mut text = String::new();
    let mut entries = Vec::new();
    let fetched = store.fetches_since(quota::day_start(now))?;
    for account in targets(store, &args.appid)? {
        let own = fetched.get(&account.id).copied().unwrap_or(0);
        let checked = check(store, &client, &account, now)?;
        let (mut entry, account_code) = report(&account, &checked, own, quiet, &mut text);
        code = code.max(account_code);
        let key = &account.key;
        entry["appid"] = json!(key.appid);
        entry["agentid"] = json!((!key.agent.is_empty()).then_some(&key.agent));
        entry["api"] = json!(account.api.as_str());
        entry["own_fetches_today"] = json!(own);
        entries.push(entry);
    }
    if args.json {
        emit(&format!("{}\n", json!({ "accounts": entries })))?;
    } else {
        emit(&text)?;
    }
    Ok(code)
}

/// One account's result: its lines of text (appended to `text`), its JSON entry and its
/// exit code. Skips and failures go to stderr, where cron mail and humans see them.
fn report(
    account: &Account,
    checked: &Checked,
    own: i64,
    quiet: bool,
    text: &mut String,
) -> (Value, u8) {
    let key = &account.key;
    match checked {
        Checked::Skipped(reason) => {
            if !quiet || reason.no_token {
                eprintln!("wxtoken: {key}: skipped: {}", reason.text);
            }
            let code = if reason.no_token {
                exit::NO_TOKEN
            } else {
                exit::OK
            };
            (json!({ "skipped": reason.text }), code)
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
                exit::FETCH_FAILED,
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
            (entry, exit::OK)
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

fn check(store: &Store, client: &Client, account: &Account, now: i64) -> Result<Checked> {
    let Some(path) = quota::cgi_path(account.api) else {
        return Ok(Checked::Skipped(Skip {
            text: wecom_note(),
            no_token: false,
        }));
    };
    let token = store
        .latest_token(&account.key, ACCESS_TOKEN)?
        .filter(|t| policy::usable(t.expires_at, now, 0));
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
        Err(failure) => Checked::Failed(path, failure),
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
fn targets(store: &Store, named: &[String]) -> Result<Vec<Account>> {
    let all = store.accounts()?;
    if named.is_empty() {
        return Ok(all.into_iter().filter(|a| a.enabled).collect());
    }
    named
        .iter()
        .map(|name| find(&all, &AccountKey::from_name(name)))
        .collect()
}

/// The named account, or an error that says how to name it.
fn find(all: &[Account], key: &AccountKey) -> Result<Account> {
    if let Some(account) = all.iter().find(|a| &a.key == key) {
        return Ok(account.clone());
    }
    let corp = all
        .iter()
        .any(|a| a.key.appid == key.appid && a.api == Api::Work);
    let hint = if corp && key.agent.is_empty() {
        format!(" ({} is a WeCom corp: {})", key.appid, wecom_note())
    } else {
        " (see wxtoken account list)".to_string()
    };
    Err(fail(exit::ACCOUNT, format!("no such account {key}{hint}")))
}

fn reset(store: &Store, args: &ResetArgs, now: i64, quiet: bool) -> Result<u8> {
    check_api(&args.api)?;
    let key = AccountKey::from_name(&args.appid);
    let account = find(&store.accounts()?, &key)?;
    if account.api == Api::Work {
        return Err(fail(exit::USAGE, format!("{key}: {}", wecom_note())));
    }
    let month = quota::month_start(now);
    let used = store.quota_resets_since(account.id, month)?;
    let spent =
        format!("wxtoken has used {used} of this month's {RESETS_PER_MONTH} resets for {key}");
    if !args.yes {
        confirm(&format!(
            "Reset today's API call counts of {key} on WeChat? This spends one of the \
             {RESETS_PER_MONTH} resets WeChat allows a month; {spent}. [y/N] "
        ))?;
    }
    let api = &args.api;
    let client = Client::new(&api.api_base, &api.work_api_base, api.timeout());
    let outcome = client.clear_quota(&account.key.appid, &account.secret);
    match outcome.result {
        Ok(()) => {
            let released = store.record_quota_reset(account.id, outcome.sent_at, None)?;
            if !quiet {
                eprintln!(
                    "reset the API call quota of {key}; wxtoken has now used {} of this \
                     month's {RESETS_PER_MONTH} resets (China time; resets made in the \
                     console or by other tools are not counted here)",
                    used + 1
                );
                if released {
                    eprintln!(
                        "released {key} from its hold after errcode 45009: the next refresh \
                         fetches it again"
                    );
                }
            }
            Ok(exit::OK)
        }
        Err(failure) => {
            let message = failure.explained(quota::reset_hint);
            let errcode = match failure {
                Failure::WeChat { errcode, .. } => Some(errcode),
                _ => None,
            };
            store.record_quota_reset(account.id, outcome.sent_at, Some((errcode, &message)))?;
            Err(fail(
                exit::FETCH_FAILED,
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
            exit::USAGE,
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
        Err(fail(exit::USAGE, "not reset: not confirmed"))
    }
}
