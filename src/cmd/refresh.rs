//! `wxtoken refresh`: fetch a fresh token for each enabled account, insert a row each,
//! and report every failure with what to do about it.

use std::sync::Mutex;

use anyhow::Result;

use crate::cli::RefreshArgs;
use crate::exit::{self, fail};
use crate::secret::fingerprint;
use crate::store::{ACCESS_TOKEN, Account, AccountKey, Store};
use crate::wechat::{Client, Credentials, Failure};

/// How one account's refresh ended.
enum Done {
    Refreshed,
    Failed(Failure),
    /// The fetch may have worked, but the database could not record it.
    Unrecorded(String),
}

pub fn run(store: &Store, client: &Client, args: &RefreshArgs, quiet: bool) -> Result<u8> {
    let accounts = targets(store, &args.appid)?;
    let store = Mutex::new(store);
    let mut failed = Vec::new();
    let mut unrecorded = false;
    for account in &accounts {
        match refresh_one(&store, client, account) {
            Done::Refreshed => {}
            Done::Failed(failure) => {
                eprintln!("wxtoken: {}: {failure}", account.key);
                failed.push(format!("{}({})", account.key, failure.label()));
            }
            Done::Unrecorded(err) => {
                eprintln!("wxtoken: {}: {err}", account.key);
                failed.push(format!("{}(database)", account.key));
                unrecorded = true;
            }
        }
    }
    let total = accounts.len();
    let ok = total - failed.len();
    if failed.is_empty() {
        if !quiet {
            eprintln!("refreshed {ok} of {total} accounts");
        }
        return Ok(exit::OK);
    }
    eprintln!(
        "refreshed {ok} of {total} accounts; {} failed: {}",
        failed.len(),
        failed.join(", ")
    );
    Ok(if unrecorded {
        exit::DATABASE
    } else {
        exit::FETCH_FAILED
    })
}

/// The accounts to refresh: every enabled one, or the named ones.
fn targets(store: &Store, named: &[String]) -> Result<Vec<Account>> {
    let all = store.accounts()?;
    if named.is_empty() {
        return Ok(all.into_iter().filter(|a| a.enabled).collect());
    }
    let mut picked = Vec::new();
    for appid in named {
        let key = AccountKey::appid(appid);
        match all.iter().find(|a| a.key == key) {
            Some(a) if a.enabled => picked.push(a.clone()),
            Some(_) => log::warn!("{key} is disabled; not refreshing it"),
            None => {
                return Err(fail(
                    exit::ACCOUNT,
                    format!("no such account {key} (see wxtoken account list)"),
                ));
            }
        }
    }
    Ok(picked)
}

fn refresh_one(store: &Mutex<&Store>, client: &Client, account: &Account) -> Done {
    let creds = Credentials {
        api: account.api,
        appid: &account.key.appid,
        secret: &account.secret,
    };
    let outcome = client.fetch_token(&creds, false);
    let recorded = lock(store).record_fetch(account.id, ACCESS_TOKEN, &outcome);
    match (outcome.result, recorded) {
        (_, Err(err)) => Done::Unrecorded(format!("could not record the fetch: {err:#}")),
        (Ok(fetched), Ok(())) => {
            log::info!(
                "{}: new token {} valid for {}s ({} tries)",
                account.key,
                fingerprint(&fetched.token),
                fetched.expires_in,
                outcome.tries
            );
            Done::Refreshed
        }
        (Err(failure), Ok(())) => Done::Failed(failure),
    }
}

/// A poisoned lock only means another worker panicked; the connection itself is fine.
fn lock<'a, T>(m: &'a Mutex<T>) -> std::sync::MutexGuard<'a, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
