//! `wxtoken refresh`: fetch a fresh token for each enabled account, insert a row each,
//! and report every failure with what to do about it.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Result;

use super::held_text;
use super::refresh_out::Progress;
use crate::cli::{DEFAULT_KEEP, RefreshArgs};
use crate::exit::{self, fail};
use crate::policy::{self, Hold, Want};
use crate::secret::fingerprint;
use crate::store::{ACCESS_TOKEN, Account, AccountKey, Claim, Holder, Recorded, Store};
use crate::wechat::{self, Client, Credentials, Failure, Outcome, Ticket};

/// Attempts older than this are pruned after every refresh.
pub const ATTEMPT_RETENTION: i64 = 30 * 86_400;

/// How one account's refresh ended.
#[derive(Debug)]
pub enum Done {
    Refreshed,
    /// Nothing to do: the newest token is fresh enough (maybe fetched by another run).
    Fresh,
    /// Another run holds the account's claim and is fetching it right now.
    Busy,
    /// Skipped: an earlier error put the account on hold.
    Held(i64, String),
    Failed(Failure),
    /// The token is fine, but this ticket could not be fetched.
    TicketFailed(Ticket, Failure),
    /// The database failed; the fetch may have worked but is not recorded.
    Unrecorded(String),
}

pub fn run(store: Store, client: &Client, args: &RefreshArgs, quiet: bool) -> Result<u8> {
    let now = wechat::unix_now();
    let want = match (args.force, args.if_expiring_within) {
        (true, _) => Want::Always,
        (false, Some(d)) => Want::ExpiringWithin(d.as_secs() as i64),
        (false, None) => Want::Stale,
    };
    let started = std::time::Instant::now();
    let accounts = targets(&store, &args.appid)?;
    if accounts.is_empty() && !args.allow_empty {
        // Even with -q: a cron line whose WXTOKEN_DB has a typo refreshes an empty new
        // database every hour, and silence would hide that until the tokens run out.
        eprintln!(
            "wxtoken: warning: no enabled accounts in {}; nothing to refresh (is --db / WXTOKEN_DB right?)",
            store.path().display()
        );
    }
    if args.dry_run {
        return super::dry_run::run(&store, &accounts, want, now, args.json);
    }
    let holder = Holder::current();
    let ttl = claim_ttl(args.api.timeout);
    let store = Mutex::new(store);
    let progress = Progress::new(accounts.len(), !quiet && std::io::stderr().is_terminal());
    let results = run_pool(&accounts, args.jobs, |account| {
        let done = match account.held_until.filter(|&t| t > now && !args.force) {
            Some(until) => Done::Held(until, account.held_reason.clone().unwrap_or_default()),
            None => refresh_one(&store, client, account, &holder, want, ttl),
        };
        progress.tick(&done);
        done
    });
    progress.finish();
    let store = store.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Err(err) = store.prune(wechat::unix_now(), DEFAULT_KEEP, now - ATTEMPT_RETENTION) {
        log::warn!("could not prune old rows: {err:#}");
    }
    // The frequent refresh-ahead run leaves held accounts to the hourly run to report, or
    // a crontab with both would mail the same hold every four minutes.
    let report_holds = !matches!(want, Want::ExpiringWithin(_));
    let code = report(&accounts, &results, quiet, report_holds)?;
    super::refresh_out::after_run(&store, &accounts, &results, args, now, started, code)
}

/// Runs `work` over every account on up to `jobs` threads; results in account order.
fn run_pool<T: Sync, R: Send>(items: &[T], jobs: usize, work: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<R>>> = items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(items.len()) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    *lock(&slots[i]) = Some(work(item));
                }
            });
        }
    });
    slots
        .into_iter()
        .map(|slot| slot.into_inner().unwrap_or_else(|e| e.into_inner()))
        .map(|r| r.expect("every slot is filled once the scope ends"))
        .collect()
}

fn report(accounts: &[Account], results: &[Done], quiet: bool, report_holds: bool) -> Result<u8> {
    let mut failed = Vec::new();
    let mut tickets_failed = Vec::new();
    let (mut refreshed, mut fresh, mut busy, mut held) = (0, 0, 0, 0);
    let mut code = exit::OK;
    for (account, done) in accounts.iter().zip(results) {
        let key = &account.key;
        match done {
            Done::Refreshed => refreshed += 1,
            Done::Fresh => fresh += 1,
            Done::Busy => busy += 1,
            Done::Held(..) if !report_holds => held += 1,
            Done::Held(until, reason) => {
                eprintln!("wxtoken: {key}: skipped {}: {reason}", held_text(*until));
                failed.push(format!("{key}(held)"));
                code = code.max(exit::FETCH_FAILED);
            }
            Done::Failed(failure) => {
                eprintln!("wxtoken: {key}: {failure}");
                failed.push(format!("{key}({})", failure.label()));
                code = code.max(exit::FETCH_FAILED);
            }
            Done::TicketFailed(ticket, failure) => {
                // The token itself was refreshed; only the ticket is missing.
                refreshed += 1;
                eprintln!(
                    "wxtoken: {key}: {} ticket: {}",
                    ticket.as_str(),
                    failure.for_ticket()
                );
                tickets_failed.push(format!("{key}({} {})", ticket.as_str(), failure.label()));
                code = code.max(exit::FETCH_FAILED);
            }
            Done::Unrecorded(err) => {
                eprintln!("wxtoken: {key}: {err}");
                failed.push(format!("{key}(database)"));
                code = exit::DATABASE;
            }
        }
    }
    let mut line = format!("refreshed {refreshed} of {} accounts", accounts.len());
    if fresh > 0 {
        line += &format!("; {fresh} already fresh");
    }
    if busy > 0 {
        line += &format!("; {busy} being refreshed by another run");
    }
    if held > 0 {
        line += &format!("; {held} held after an error (see wxtoken status)");
    }
    if !failed.is_empty() {
        line += &format!("; {} failed: {}", failed.len(), failed.join(", "));
    }
    if !tickets_failed.is_empty() {
        line += &format!("; failed tickets: {}", tickets_failed.join(", "));
    }
    if code != exit::OK || !quiet {
        eprintln!("{line}");
    }
    Ok(code)
}

/// The accounts to refresh: every enabled one, or the named ones.
pub fn targets(store: &Store, named: &[String]) -> Result<Vec<Account>> {
    let all = store.accounts()?;
    if named.is_empty() {
        return Ok(all.into_iter().filter(|a| a.enabled).collect());
    }
    let mut picked = Vec::new();
    for name in named {
        let key = match name.split_once('/') {
            Some((corpid, agent)) => AccountKey {
                appid: corpid.to_string(),
                agent: agent.to_string(),
            },
            None => AccountKey::appid(name),
        };
        match all.iter().find(|a| a.key == key) {
            Some(a) if a.enabled => picked.push(a.clone()),
            Some(_) => {
                return Err(fail(
                    exit::ACCOUNT,
                    format!("account {key} is disabled; enable it first (wxtoken account enable)"),
                ));
            }
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

/// How long a claim lasts: long enough for every try of one fetch, short enough that a
/// holder that died on another host blocks nobody for long.
pub fn claim_ttl(timeout_secs: u64) -> i64 {
    wechat::MAX_TRIES as i64 * timeout_secs as i64 + 10
}

fn refresh_one(
    store: &Mutex<Store>,
    client: &Client,
    account: &Account,
    holder: &Holder,
    want: Want,
    ttl: i64,
) -> Done {
    let now = wechat::unix_now();
    let claimed = lock(store).claim(account.id, holder, now, ttl);
    match claimed {
        Err(err) => return Done::Unrecorded(format!("could not claim the account: {err:#}")),
        Ok(Claim::Busy(other)) => {
            log::info!("{}: {other} is fetching it; skipping", account.key);
            return Done::Busy;
        }
        Ok(Claim::Claimed) => {}
    }
    let done = fetch_claimed(store, client, account, want, now);
    if let Err(err) = lock(store).release(account.id, holder) {
        return Done::Unrecorded(format!("could not release the claim: {err:#}"));
    }
    done
}

/// The part of a refresh that runs under the claim. Nobody else can add a row for the
/// account meanwhile, so reading "the newest" here is not racy.
fn fetch_claimed(
    store: &Mutex<Store>,
    client: &Client,
    account: &Account,
    want: Want,
    now: i64,
) -> Done {
    let due = |kind: &str| -> Result<(bool, Option<String>)> {
        let newest = lock(store).latest_token(&account.key, kind)?;
        let due = policy::needs_fetch(
            newest.as_ref().map(|t| (t.fetched_at, t.expires_at)),
            now,
            want,
        );
        Ok((due, newest.map(|t| t.token)))
    };
    let (token_due, newest) = match due(ACCESS_TOKEN) {
        Ok(v) => v,
        Err(err) => return Done::Unrecorded(format!("could not read the newest token: {err:#}")),
    };
    let mut tickets_due = Vec::new();
    for &ticket in &account.tickets {
        match due(ticket.as_str()) {
            Ok((true, _)) => tickets_due.push(ticket),
            Ok(_) => {}
            Err(err) => {
                return Done::Unrecorded(format!("could not read the newest ticket: {err:#}"));
            }
        }
    }
    let token = match (token_due, newest) {
        (false, _) if tickets_due.is_empty() => return Done::Fresh,
        (false, Some(token)) => token,
        _ => {
            let outcome = client.fetch_token(&credentials(account), false);
            match record(store, account, None, outcome, None) {
                (Done::Refreshed, Some(token)) => token,
                (done, _) => return done,
            }
        }
    };
    // A new token gets every ticket anew, fetched with it; else only the due ones.
    let tickets = if token_due {
        account.tickets.clone()
    } else {
        tickets_due
    };
    let mut done = Done::Refreshed;
    for ticket in tickets {
        let outcome = client.fetch_ticket(account.api, ticket, &token);
        let (result, _) = record(store, account, Some(ticket), outcome, None);
        if matches!(done, Done::Refreshed) {
            done = result;
        }
    }
    done
}

pub fn credentials(account: &Account) -> Credentials<'_> {
    Credentials {
        api: account.api,
        appid: &account.key.appid,
        secret: &account.secret,
    }
}

/// Records a fetch of the token (`ticket` None) or of a ticket, releasing the claim if
/// `release` says so, and turns it into a `Done`, with the new value when there is one.
pub fn record(
    store: &Mutex<Store>,
    account: &Account,
    ticket: Option<Ticket>,
    outcome: Outcome,
    release: Option<&Holder>,
) -> (Done, Option<String>) {
    // The reason stored with a hold is the whole message, hint included, for `status`.
    let hold = match (&outcome.result, ticket) {
        (Err(failure @ Failure::WeChat { errcode, .. }), None) => {
            match policy::hold_after(*errcode, outcome.started_at) {
                Hold::None => None,
                Hold::Attention => Some((policy::UNTIL_FIXED, failure.to_string())),
                Hold::Until(t) => Some((t, failure.to_string())),
            }
        }
        _ => None,
    };
    let hold_ref = hold.as_ref().map(|(t, r)| (*t, r.as_str()));
    let kind = ticket.map_or(ACCESS_TOKEN, Ticket::as_str);
    let recorded = lock(store).record_fetch(account.id, kind, &outcome, hold_ref, release);
    match (outcome.result, recorded) {
        (_, Err(err)) => (
            Done::Unrecorded(format!("could not record the fetch: {err:#}")),
            None,
        ),
        (Ok(fetched), Ok(recorded)) => {
            log::info!(
                "{}: {kind} {} valid for {}s (tries: {}{})",
                account.key,
                fingerprint(&fetched.token),
                fetched.expires_in,
                outcome.tries,
                if recorded == Recorded::Unchanged {
                    ", unchanged"
                } else {
                    ""
                }
            );
            (Done::Refreshed, Some(fetched.token))
        }
        (Err(failure), Ok(_)) => match ticket {
            None => (Done::Failed(failure), None),
            Some(t) => (Done::TicketFailed(t, failure), None),
        },
    }
}

/// A poisoned lock only means another worker panicked; the connection itself is fine.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_keeps_order_and_bounds_threads() {
        let items: Vec<u32> = (0..100).collect();
        let running = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let out = run_pool(&items, 4, |&i| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            std::thread::yield_now();
            running.fetch_sub(1, Ordering::SeqCst);
            i * 2
        });
        assert_eq!(out, items.iter().map(|i| i * 2).collect::<Vec<_>>());
        assert!(peak.load(Ordering::SeqCst) <= 4);
        assert!(run_pool(&[] as &[u32], 4, |&i| i).is_empty());
    }
}
