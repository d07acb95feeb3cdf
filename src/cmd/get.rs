//! `wxtoken get`: print the newest valid token. Read-only, one indexed query, unless the
//! caller rejects a token (`--reject`), which may fetch a new one under the claim.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;

use super::refresh::{self, Done, lock};
use super::{emit, held_text, human, rfc3339, stdin_line};
use crate::cli::GetArgs;
use crate::exit::{self, fail};
use crate::policy;
use crate::store::{ACCESS_TOKEN, AccountKey, Claim, Holder, Store, TokenRow};
use crate::wechat::{self, Api, Client, Ticket};

/// How often a caller waiting on another process's fetch looks again.
const POLL: Duration = Duration::from_millis(25);

pub fn run(db: &Path, key: &AccountKey, args: &GetArgs) -> Result<u8> {
    let min_ttl = args.min_ttl.as_secs() as i64;
    let now = wechat::unix_now();
    let kind = args.ticket.map_or(ACCESS_TOKEN, Ticket::as_str);
    let row = match &args.reject {
        None => {
            let store = Store::open_readonly(db)?;
            let row = store.latest_token(key, kind)?;
            usable_or_reason(&store, key, kind, row, now, min_ttl)?
        }
        Some(rejected) => {
            let rejected = if rejected == "-" {
                stdin_line("the rejected token")?
            } else {
                rejected.clone()
            };
            let rejected = rejected.trim();
            if rejected.is_empty() {
                return Err(fail(
                    exit::USAGE,
                    "--reject needs the token that failed, or - to read it from stdin",
                ));
            }
            let row = renew(Store::open(db)?, key, rejected, args, min_ttl)?;
            publish_renewed(db, key);
            row
        }
    };
    emit(&render(key, kind, &row, args.json, wechat::unix_now()))?;
    Ok(exit::OK)
}

/// Publishes the account's tokens after `--reject`. The caller gets its token either way:
/// a failure is a warning here, recorded on the sink, and retried by the next refresh.
fn publish_renewed(db: &Path, key: &AccountKey) {
    let result = Store::open(db).and_then(|store| {
        let accounts: Vec<_> = store.account(key)?.into_iter().collect();
        crate::publish::publish_all(&store, &accounts, wechat::unix_now())
    });
    match result {
        Ok(reports) => {
            crate::publish::report_failures(&reports, "warning: ");
        }
        Err(err) => eprintln!("wxtoken: warning: could not publish to the sinks: {err:#}"),
    }
}

fn render(key: &AccountKey, kind: &str, row: &TokenRow, json: bool, now: i64) -> String {
    if !json {
        return format!("{}\n", row.token);
    }
    let mut obj = json!({
        "appid": key.appid,
        (if kind == ACCESS_TOKEN { "access_token" } else { "ticket" }): row.token,
        "expires_in": policy::remaining(row.expires_at, now),
        "fetched_at": rfc3339(row.fetched_at),
        "expires_at": rfc3339(row.expires_at),
    });
    if !key.agent.is_empty() {
        obj["agentid"] = json!(key.agent);
    }
    if kind != ACCESS_TOKEN {
        obj["type"] = json!(kind);
    }
    format!("{obj}\n")
}

/// The row if it may be handed out, else the one-line reason, exiting `NO_TOKEN`.
fn usable_or_reason(
    store: &Store,
    key: &AccountKey,
    kind: &str,
    row: Option<TokenRow>,
    now: i64,
    min_ttl: i64,
) -> Result<TokenRow> {
    let reason = match row {
        Some(row) if policy::usable(row.expires_at, now, min_ttl) => return Ok(row),
        Some(row) if row.expires_at <= now => format!(
            "the newest one expired {} ago, at {}; check `wxtoken status` and that cron runs `wxtoken refresh`",
            human(now - row.expires_at),
            rfc3339(row.expires_at)
        ),
        Some(row) => format!(
            "the newest one has {} left, less than --min-ttl {}",
            human(row.expires_at - now),
            human(min_ttl)
        ),
        // Only on this failure path do we spend a second query to tell the cases apart.
        None => match store.account(key)? {
            None => "no such account (see wxtoken account list)".to_string(),
            Some(a) if a.held_until.is_some_and(|t| t > now) => format!(
                "none fetched yet, and refresh skips it {}: {}",
                held_text(a.held_until.unwrap_or_default()),
                a.held_reason.unwrap_or_default()
            ),
            Some(_) if kind != ACCESS_TOKEN => format!(
                "none fetched yet; turn it on with `wxtoken account set-tickets ... --ticket {kind}` \
                 and run `wxtoken refresh`"
            ),
            Some(_) => "no token fetched yet; run `wxtoken refresh`".to_string(),
        },
    };
    let what = if kind == ACCESS_TOKEN {
        "token".to_string()
    } else {
        format!("{kind} ticket")
    };
    Err(fail(
        exit::NO_TOKEN,
        format!("no valid {what} for {key}: {reason}"),
    ))
}

/// A token other than `rejected`: the newest one if someone already replaced it, else one
/// fetched now. Only the claim holder fetches, so N callers rejecting one token cause one
/// fetch; the others wait for its row.
fn renew(
    store: Store,
    key: &AccountKey,
    rejected: &str,
    args: &GetArgs,
    min_ttl: i64,
) -> Result<TokenRow> {
    let good = |row: &Option<TokenRow>, now| {
        row.as_ref()
            .filter(|r| r.token != rejected && policy::usable(r.expires_at, now, min_ttl))
            .cloned()
    };
    let Some(account) = store.account(key)? else {
        return Err(fail(
            exit::NO_TOKEN,
            format!("no valid token for {key}: no such account"),
        ));
    };
    let timeout = args.api.timeout;
    let ttl = refresh::claim_ttl(timeout);
    let deadline = Instant::now() + Duration::from_secs(ttl as u64 + timeout);
    let holder = Holder::current();
    let store = Mutex::new(store);
    loop {
        let now = wechat::unix_now();
        // Each lock is bound to a statement of its own: a guard taken in an `if let`
        // condition lives through the whole block, and this mutex is not reentrant.
        let newest = lock(&store).latest_token(key, ACCESS_TOKEN)?;
        if let Some(row) = good(&newest, now) {
            return Ok(row);
        }
        let claim = lock(&store).claim(account.id, &holder, now, ttl)?;
        if let Claim::Busy(other) = claim {
            if Instant::now() > deadline {
                return Err(fail(
                    exit::FETCH_FAILED,
                    format!("gave up waiting for {other} to fetch a new token for {key}"),
                ));
            }
            std::thread::sleep(POLL);
            continue;
        }
        // Under the claim: look once more, a holder may have finished just before us.
        let newest = lock(&store).latest_token(key, ACCESS_TOKEN)?;
        if let Some(row) = good(&newest, now) {
            lock(&store).release(account.id, &holder)?;
            return Ok(row);
        }
        if let Some(until) = account.held_until.filter(|&t| t > now) {
            lock(&store).release(account.id, &holder)?;
            let reason = account.held_reason.clone().unwrap_or_default();
            return Err(fail(
                exit::FETCH_FAILED,
                format!("{key} is skipped {}: {reason}", held_text(until)),
            ));
        }
        let client = Client::new(
            &args.api.api_base,
            &args.api.work_api_base,
            args.api.timeout(),
        );
        let creds = refresh::credentials(&account);
        let mut outcome = client.fetch_token(&creds, false);
        let same = matches!(&outcome.result, Ok(f) if f.token == rejected);
        if same && account.api == Api::Stable {
            // Normal mode hands back the current token while it is valid; only force mode
            // replaces it, and WeChat rations that.
            let budget = lock(&store).forced_refreshes(account.id, now)?;
            if let Err(why) = policy::force_allowed(&budget, now) {
                lock(&store).release(account.id, &holder)?;
                return Err(fail(
                    exit::FETCH_FAILED,
                    format!("cannot force a new stable token for {key}: {why}"),
                ));
            }
            lock(&store).note_forced_refresh(account.id, now)?;
            log::warn!("{key}: WeChat still hands out the rejected token; forcing a new one");
            outcome = client.fetch_token(&creds, true);
        }
        return match refresh::record(&store, &account, None, outcome, Some(&holder)) {
            (Done::Refreshed, Some(token)) if token == rejected => Err(fail(
                exit::FETCH_FAILED,
                format!(
                    "WeChat handed out the rejected token again for {key}; it considers it valid"
                ),
            )),
            (Done::Refreshed, _) => {
                let row = lock(&store).latest_token(key, ACCESS_TOKEN)?;
                good(&row, wechat::unix_now()).ok_or_else(|| {
                    fail(
                        exit::NO_TOKEN,
                        format!(
                            "no valid token for {key}: the new token has less than --min-ttl left"
                        ),
                    )
                })
            }
            (Done::Failed(failure), _) => Err(fail(
                exit::FETCH_FAILED,
                format!("could not fetch a new token for {key}: {failure}"),
            )),
            (Done::Unrecorded(err), _) => Err(fail(exit::DATABASE, format!("{key}: {err}"))),
            (other, _) => Err(anyhow::anyhow!(
                "{key}: unexpected refresh result {other:?}"
            )),
        };
    }
}
