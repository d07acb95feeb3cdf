//! `wxtoken refresh`: fetch a fresh token for each enabled account (the engine does the
//! fetching), prune, and report every failure with what to do about it.

use std::io::IsTerminal;

use anyhow::Result;

mod dry_run;
mod out;

use super::Context;
use crate::config::RefreshConfig;
use crate::domain::Account;
use crate::engine::{self, Done, Plan, Stop};
use crate::exit::{Exit, fail};
use crate::freshness::Want;
use crate::policy::{ATTEMPT_RETENTION, BUSY_TIMEOUT};
use crate::signals;
use crate::store::ReadStore;
use crate::text::held_text;
use out::Progress;

pub fn run(ctx: &Context, cfg: &RefreshConfig) -> Result<Exit> {
    if cfg.dry_run {
        // Reads only, and no secret: a PostgreSQL reader role may ask too.
        let store = ctx.store_or_read()?;
        let accounts = targets_or_warn(store.as_ref(), cfg)?;
        return dry_run::run(store.as_ref(), &accounts, cfg, ctx.now());
    }
    signals::catch_stop_signals();
    let client = ctx.client(&cfg.api);
    let store = ctx.store()?;
    // Before the accounts are read: a secret read before the key is loaded is unread,
    // and an account with one is not fetched (`vault::why_locked`).
    let key_file = ctx.key_file()?;
    crate::vault::unlock_for_refresh(store.as_ref(), &key_file)?;
    let now = ctx.now();
    let started = std::time::Instant::now();
    let all = targets_or_warn(store.as_ref(), cfg)?;
    // A secret that does not open holds its own account in this run, and only that one;
    // one forgotten with a lost key (`key reset`) is held in the store already, and left
    // to the engine to report as such, unless --force would fetch it anyway.
    let keyless: Vec<Option<String>> = all
        .iter()
        .map(|account| {
            (cfg.force || account.held_until.is_none())
                .then(|| crate::vault::why_locked(account, &key_file))
                .flatten()
        })
        .collect();
    // Usually every secret opens and the targets are fetched as they are; copies (an
    // account holds its secret and tickets: ~300 bytes, 3 MB at 10,000 accounts) only
    // when some are left out.
    let accounts: std::borrow::Cow<[Account]> = if keyless.iter().all(Option::is_none) {
        std::borrow::Cow::Borrowed(&all)
    } else {
        all.iter()
            .zip(&keyless)
            .filter(|(_, why)| why.is_none())
            .map(|(account, _)| account.clone())
            .collect()
    };
    let plan = Plan {
        want: cfg.want,
        force: cfg.force,
        jobs: cfg.jobs,
        claim_ttl: cfg.api.claim_ttl,
    };
    let progress = Progress::new(
        accounts.len(),
        !ctx.quiet && std::io::stderr().is_terminal(),
    );
    let stop = Stop::default();
    let results = engine::refresh(
        store.as_ref(),
        &client,
        &accounts,
        plan,
        ctx.clock,
        &stop,
        &|done| progress.tick(done),
    );
    progress.finish();
    // Back in the order of every target, each keyless one as held until its secret is set.
    let (accounts, results) = {
        let mut fetched = results.into_iter();
        let results: Vec<Done> = keyless
            .iter()
            .map(|why| match why {
                Some(why) => Done::Held(crate::policy::UNTIL_SECRET, why.clone()),
                None => fetched.next().expect("one result per account fetched"),
            })
            .collect();
        (all, results)
    };
    // Revive, publish, prune: a failed publish counts into the exit code below (9 when
    // nothing else failed), a database out of reach as a database failure.
    let settled = engine::settle(
        store.as_ref(),
        &accounts,
        ctx.clock,
        &stop,
        Some(now - ATTEMPT_RETENTION),
        "",
    );
    // An account whose fetch went unrecorded has said why already.
    if let Some(err) = &settled.unreachable
        && !results.iter().any(|d| matches!(d, Done::Unrecorded(_)))
    {
        eprintln!("wxtoken: could not publish to the sinks: {err}");
    }
    // The frequent refresh-ahead run leaves held accounts to the hourly run to report, or
    // a crontab with both would mail the same hold every four minutes.
    let report_holds = !matches!(cfg.want, Want::ExpiringWithin(_));
    let mut exit = report(
        &accounts,
        &results,
        &keyless,
        ctx.quiet,
        report_holds,
        &settled.failed_sinks,
    );
    if settled.unreachable.is_some() {
        exit = exit.merge(Exit::Database);
    }
    if stop.locked() && signals::caught().is_none() {
        let db = store.location();
        // PostgreSQL's lock errors say how long they waited and who holds the lock.
        if let Some(reason) = stop.reason().filter(|r| r.contains("lock timeout")) {
            return Err(fail(
                Exit::Database,
                format!("{reason}; accounts not tried are left for the next run"),
            ));
        }
        return Err(fail(
            Exit::Database,
            format!(
                "database {db} is locked by another process (gave up after {} s); accounts not \
                 tried are left for the next run: find the process with `fuser -v {db} \
                 {db}-wal {db}-shm` (a reader holding locks on the -shm counts) and let it \
                 finish",
                BUSY_TIMEOUT.as_secs()
            ),
        ));
    }
    out::after_run(ctx, store.as_ref(), &accounts, &results, cfg, started, exit)
}

fn report(
    accounts: &[Account],
    results: &[Done],
    keyless: &[Option<String>],
    quiet: bool,
    report_holds: bool,
    failed_sinks: &[String],
) -> Exit {
    let mut failed = Vec::new();
    let mut tickets_failed = Vec::new();
    let (mut refreshed, mut fresh, mut busy, mut held, mut not_tried) = (0, 0, 0, 0, 0);
    let mut waiting: std::collections::BTreeMap<String, (usize, String)> = Default::default();
    let mut exit = Exit::Ok;
    for ((account, done), keyless) in accounts.iter().zip(results).zip(keyless) {
        let key = &account.key;
        if let Some(why) = keyless {
            eprintln!("wxtoken: {key}: {why}");
            failed.push(format!("{key}(key)"));
            exit = exit.merge(Exit::Key);
            continue;
        }
        match done {
            Done::Refreshed => refreshed += 1,
            Done::Fresh => fresh += 1,
            Done::Busy => busy += 1,
            Done::NotTried => not_tried += 1,
            Done::Held(..) if !report_holds => held += 1,
            Done::Held(until, reason) => {
                eprintln!("wxtoken: {key}: skipped {}: {reason}", held_text(*until));
                failed.push(format!("{key}(held)"));
                exit = exit.merge(Exit::FetchFailed);
            }
            // A platform without a ticket leaves every tenant waiting: one line per
            // reason and platform, however many tenants, not one per tenant.
            Done::Waiting(why) => {
                let group = waiting.entry(why.clone()).or_insert((0, key.to_string()));
                group.0 += 1;
                failed.push(format!("{key}(waiting)"));
                exit = exit.merge(Exit::FetchFailed);
            }
            Done::Failed(failure) => {
                eprintln!("wxtoken: {key}: {}", failure.for_api(account.api));
                failed.push(format!("{key}({})", failure.label()));
                exit = exit.merge(Exit::FetchFailed);
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
                exit = exit.merge(Exit::FetchFailed);
            }
            Done::Unrecorded(err) => {
                eprintln!("wxtoken: {key}: {err}");
                failed.push(format!("{key}(database)"));
                exit = exit.merge(Exit::Database);
            }
            Done::LostClaim(why) => {
                eprintln!("wxtoken: {key}: {why}");
                failed.push(format!("{key}(claim lost)"));
                exit = exit.merge(Exit::FetchFailed);
            }
        }
    }
    for (why, (n, first)) in &waiting {
        match n {
            1 => eprintln!("wxtoken: {first}: {why}"),
            n => eprintln!("wxtoken: {first} and {} more: {why}", n - 1),
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
        line += &format!("; {} failed: {}", failed.len(), some_of(&failed));
    }
    if !tickets_failed.is_empty() {
        line += &format!("; failed tickets: {}", some_of(&tickets_failed));
    }
    if !failed_sinks.is_empty() {
        line += &format!("; publish failed: {}", failed_sinks.join(", "));
        // Merged by severity: a WeChat or database failure in the same run says more.
        exit = exit.merge(Exit::PublishFailed);
    }
    if let Some(signal) = signals::caught() {
        line += &format!("; stopped by {signal}");
        if not_tried > 0 {
            line += &format!(", {not_tried} not tried");
        }
        exit = Exit::Interrupted;
    } else if not_tried > 0 {
        line += &format!("; {not_tried} not tried: the database is locked");
        exit = exit.merge(Exit::Database);
    }
    if exit != Exit::Ok || !quiet {
        eprintln!("{line}");
    }
    exit
}

/// How many failed accounts the summary line names; the rest it counts.
const SUMMARY_NAMES: usize = 10;

/// The first few names, then how many more: with WeChat down or the IP whitelist changed,
/// hundreds of accounts fail at once, and cron mails the summary as one line. Each failure
/// still has its own line above it, and `--json` and `status` list every account.
fn some_of(names: &[String]) -> String {
    let shown = names[..names.len().min(SUMMARY_NAMES)].join(", ");
    match names.len().saturating_sub(SUMMARY_NAMES) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

/// `targets`, with a warning when there is none to refresh.
fn targets_or_warn(store: &dyn ReadStore, cfg: &RefreshConfig) -> Result<Vec<Account>> {
    let accounts = engine::targets_with(store, &cfg.accounts, &cfg.platforms)?;
    if accounts.is_empty() && !cfg.allow_empty {
        // Even with -q: a cron line whose WXTOKEN_DB has a typo refreshes an empty new
        // database every hour, and silence would hide that until the tokens run out.
        eprintln!(
            "wxtoken: warning: no enabled accounts in {}; nothing to refresh (is --db / WXTOKEN_DB right?)",
            store.location()
        );
    }
    Ok(accounts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_ten_and_counts_the_rest() {
        let names = |n: usize| (1..=n).map(|i| format!("wx{i}(-1)")).collect::<Vec<_>>();
        assert_eq!(some_of(&names(1)), "wx1(-1)");
        assert_eq!(some_of(&names(10)), names(10).join(", "));
        assert_eq!(
            some_of(&names(11)),
            format!("{} and 1 more", names(10).join(", "))
        );
        assert_eq!(
            some_of(&names(500)),
            format!("{} and 490 more", names(10).join(", "))
        );
    }
}
