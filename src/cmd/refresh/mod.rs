//! `wxtoken refresh`: fetch a fresh token for each enabled account (the engine does the
//! fetching), prune, and report every failure with what to do about it.

use std::io::IsTerminal;

use anyhow::Result;

mod dry_run;
mod out;

use super::Context;
use crate::config::RefreshConfig;
use crate::domain::{Account, Credential};
use crate::engine::{self, Done, Plan, Stop};
use crate::exit::{Exit, fail};
use crate::freshness::Want;
use crate::policy::{self, ATTEMPT_RETENTION, BUSY_TIMEOUT};
use crate::signals;
use crate::store::{ReadStore, RunRow};
use crate::text::held_text;
use out::Progress;

/// How many accounts a run reads, fetches and publishes at a time: memory stays flat in the
/// number of accounts (100,000 authorizers are 20 batches), and each batch's publishing
/// and `--json` lines go out as it ends.
const BATCH: usize = 5_000;

pub fn run(ctx: &Context, cfg: &RefreshConfig) -> Result<Exit> {
    if cfg.dry_run {
        // Reads only, and no secret: a PostgreSQL reader role may ask too.
        let store = ctx.store_or_read()?;
        let accounts = targets_or_warn(store.as_ref(), cfg)?;
        return dry_run::run(store.as_ref(), &accounts, cfg, ctx.now());
    }
    signals::catch_stop_signals();
    // Up to 256 worker connections: without SQLite's per-connection lookaside buffer and
    // bulk page cache, memory stays flat in the number of workers (before the first
    // connection opens, or it changes nothing).
    crate::store::lean_sqlite_process();
    let client = ctx.client(&cfg.api);
    let store = ctx.store()?;
    // Before the accounts are read: a secret read before the key is loaded is unread,
    // and an account with one is not fetched (`vault::why_locked`).
    let key_file = ctx.key_file()?;
    crate::vault::unlock_for_refresh(store.as_ref(), &key_file)?;
    let now = ctx.now();
    let started = std::time::Instant::now();
    let (ids, by_index) = target_ids(store.as_ref(), cfg, now)?;
    let plan = Plan {
        want: cfg.want,
        force: cfg.force,
        jobs: cfg.jobs,
        claim_ttl: cfg.api.claim_ttl,
        // The store's due index chose the accounts already.
        prefilter: !by_index,
    };
    let progress = Progress::new(ids.len(), !ctx.quiet && std::io::stderr().is_terminal());
    let stop = Stop::default();
    let flights = engine::Flights::default();
    // The frequent refresh-ahead run leaves held accounts to the hourly run to report, or
    // a crontab with both would mail the same hold every four minutes.
    let report_holds = !matches!(cfg.want, Want::ExpiringWithin(_));
    let mut summary = Summary::new(report_holds);
    let mut lines = cfg.json.then(super::Stream::new);
    let mut unreachable = None;
    for chunk in ids.chunks(BATCH) {
        if stop.now() {
            // Left for the next run, as the engine leaves the rest of a batch.
            summary.not_tried += chunk.len();
            summary.run.accounts += chunk.len() as i64;
            continue;
        }
        let all = store.accounts_by_ids(chunk)?;
        // A secret that does not open holds its own account in this run, and only that
        // one; one forgotten with a lost key (`key reset`) is held in the store already,
        // and left to the engine to report as such, unless --force would fetch it anyway.
        let keyless: Vec<Option<String>> = all
            .iter()
            .map(|account| {
                (cfg.force || account.held_until.is_none())
                    .then(|| crate::vault::why_locked(account, &key_file))
                    .flatten()
            })
            .collect();
        let fetched: Vec<Account> = all
            .iter()
            .zip(&keyless)
            .filter(|(_, why)| why.is_none())
            .map(|(account, _)| account.clone())
            .collect();
        let results = engine::refresh(
            store.as_ref(),
            &client,
            &fetched,
            plan,
            ctx.clock,
            &stop,
            &|done| progress.tick(done),
            &flights,
        );
        // Back in the order of every target, each keyless one as held until its secret
        // is set.
        let mut fetched = results.into_iter();
        let results: Vec<Done> = keyless
            .iter()
            .map(|why| match why {
                Some(why) => Done::Held(crate::policy::UNTIL_SECRET, why.clone()),
                None => fetched.next().expect("one result per account fetched"),
            })
            .collect();
        if let Some(out) = &mut lines {
            let now = ctx.now();
            for (account, done) in all.iter().zip(&results) {
                let newest = store.latest_token(&account.key, Credential::AccessToken)?;
                out.write(&format!(
                    "{}\n",
                    out::account_line(account, done, newest.as_ref(), now)
                ))?;
            }
        }
        for ((account, done), keyless) in all.iter().zip(&results).zip(&keyless) {
            summary.add(account, done, keyless.as_deref());
        }
    }
    progress.finish();
    // The handle sat idle while the workers fetched: a server restart or a network cut
    // meanwhile ended its connection. Reach the database again before reading more; if
    // it cannot be reached, the fetches stand and nothing else is done.
    if !stop.now()
        && let Err(err) = store.revive()
    {
        summary.sinks_failed(vec!["(database)".to_string()]);
        unreachable = Some(err);
    }
    let reachable = unreachable.is_none() && !stop.now();
    // The enabled accounts the due index left out are fresh: counted, and listed with
    // --json, without being claimed or fetched.
    // The enabled accounts the due index left out are fresh: counted, and listed with
    // --json, without being claimed or fetched. Their ids are read only when something
    // needs them (--json, a sink): a run with nothing due stays as cheap as its due set.
    let has_sinks = reachable && !store.sinks()?.is_empty();
    let in_scope = if by_index && reachable {
        let all = if lines.is_some() || has_sinks {
            Some(store.target_ids(now, None, true)?)
        } else {
            None
        };
        let chosen: std::collections::HashSet<i64> = ids.iter().copied().collect();
        let rest: Vec<i64> = all
            .iter()
            .flatten()
            .copied()
            .filter(|id| !chosen.contains(id))
            .collect();
        let fresh = match &all {
            Some(_) => rest.len() as i64,
            None => store.count_enabled()? - ids.len() as i64,
        }
        .max(0);
        summary.fresh += fresh as usize;
        summary.run.fresh += fresh;
        summary.run.accounts += fresh;
        let listed = if lines.is_some() { &rest[..] } else { &[] };
        for chunk in listed.chunks(BATCH) {
            let accounts = store.accounts_by_ids(chunk)?;
            if let Some(out) = &mut lines {
                let now = ctx.now();
                for account in &accounts {
                    let newest = store.latest_token(&account.key, Credential::AccessToken)?;
                    out.write(&format!(
                        "{}\n",
                        out::account_line(account, &Done::Fresh, newest.as_ref(), now)
                    ))?;
                }
            }
        }
        all.unwrap_or_default()
    } else {
        ids
    };
    // Publish every valid token of every account in scope, batch by batch, so that a
    // flushed Redis is whole again after one run: a failed publish counts into the exit
    // code below (9 when nothing else failed), a database out of reach as a database
    // failure. Without a sink there is nothing to read.
    if has_sinks {
        for chunk in in_scope.chunks(BATCH) {
            let accounts = store.accounts_by_ids(chunk)?;
            let settled = engine::settle(store.as_ref(), &accounts, ctx.clock, &stop, None, "");
            summary.sinks_failed(settled.failed_sinks);
            if settled.unreachable.is_some() {
                unreachable = settled.unreachable;
                break;
            }
        }
    }
    // Pruning reads every account's rows: the hourly run does it, not the frequent
    // refresh-ahead run.
    if !stop.now()
        && unreachable.is_none()
        && !matches!(cfg.want, Want::ExpiringWithin(_))
        && let Err(err) = store.prune(ctx.now(), policy::DEFAULT_KEEP, now - ATTEMPT_RETENTION)
    {
        log::warn!("could not prune old rows: {err}");
    }
    // An account whose fetch went unrecorded has said why already.
    if let Some(err) = &unreachable
        && !summary.unrecorded
    {
        eprintln!("wxtoken: could not publish to the sinks: {err}");
    }
    let mut exit = summary.finish(ctx.quiet);
    if unreachable.is_some() {
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
    if let Some(out) = lines {
        out.finish()?;
    }
    out::after_run(ctx, store.as_ref(), summary.run, cfg, started, exit)
}

/// Whether the run names what it refreshes (`--appid`, `--component`, `--suite`).
fn named(cfg: &RefreshConfig) -> bool {
    !cfg.accounts.is_empty() || !cfg.platforms.is_empty()
}

/// The accounts a run takes, by id, and whether the store's due index chose them: the
/// named ones (and the platforms' tenants); or a plain run's every plain account and the
/// platform kinds due within their window; refresh-ahead's accounts due within its window;
/// `--force`'s every enabled account. After the clock stepped back, expiries cannot be
/// judged by the index: every enabled account is taken, and judged one by one.
fn target_ids(
    store: &dyn crate::store::Store,
    cfg: &RefreshConfig,
    now: i64,
) -> Result<(Vec<i64>, bool)> {
    if named(cfg) {
        let accounts = targets_or_warn(store, cfg)?;
        return Ok((accounts.iter().map(|a| a.id).collect(), false));
    }
    let stepped = !matches!(cfg.want, Want::Always) && store.clock_stepped_back(now)?;
    let ids = match cfg.want {
        _ if stepped => store.target_ids(now, None, true)?,
        Want::Always => store.target_ids(now, None, true)?,
        Want::ExpiringWithin(window) => store.target_ids(now, Some(window), false)?,
        Want::Due { .. } => store.target_ids(now, Some(policy::PLATFORM_DUE_WINDOW), true)?,
    };
    let by_index = !stepped && !matches!(cfg.want, Want::Always);
    // Even with -q: a cron line whose WXTOKEN_DB has a typo refreshes an empty new
    // database every hour, and silence would hide that until the tokens run out.
    if ids.is_empty() && !cfg.allow_empty && store.target_ids(now, None, true)?.is_empty() {
        eprintln!(
            "wxtoken: warning: no enabled accounts in {}; nothing to refresh (is --db / WXTOKEN_DB right?)",
            store.location()
        );
    }
    Ok((ids, by_index))
}

/// The stderr report, gathered batch by batch: counts, the failed accounts' names (the
/// summary line names ten), one line per failure, one line per waiting reason however many
/// tenants wait on it, and the run's counts for monitoring.
struct Summary {
    report_holds: bool,
    refreshed: usize,
    fresh: usize,
    busy: usize,
    held: usize,
    not_tried: usize,
    /// How many failed, and the first names (bounded: see `KEPT_NAMES`).
    failed: usize,
    failed_names: Vec<String>,
    tickets_failed: Vec<String>,
    waiting: std::collections::BTreeMap<String, (usize, String)>,
    failed_sinks: Vec<String>,
    unrecorded: bool,
    exit: Exit,
    run: RunRow,
}

/// At most this many failed names are kept (the line names ten; `--json` and `status`
/// list every account): a run where 100,000 tenants fail keeps a bounded list.
const KEPT_NAMES: usize = 1_000;

impl Summary {
    fn new(report_holds: bool) -> Summary {
        Summary {
            report_holds,
            refreshed: 0,
            fresh: 0,
            busy: 0,
            held: 0,
            not_tried: 0,
            failed: 0,
            failed_names: Vec::new(),
            tickets_failed: Vec::new(),
            waiting: Default::default(),
            failed_sinks: Vec::new(),
            unrecorded: false,
            exit: Exit::Ok,
            run: RunRow::default(),
        }
    }

    fn sinks_failed(&mut self, names: Vec<String>) {
        for name in names {
            if !self.failed_sinks.contains(&name) {
                self.failed_sinks.push(name);
            }
        }
    }

    fn failed(&mut self, name: String, exit: Exit) {
        self.failed += 1;
        if self.failed_names.len() < KEPT_NAMES {
            self.failed_names.push(name);
        }
        self.exit = self.exit.merge(exit);
    }

    /// One account's outcome (`keyless`: why its secret did not open).
    fn add(&mut self, account: &Account, done: &Done, keyless: Option<&str>) {
        out::tally(std::slice::from_ref(done), &mut self.run);
        let key = &account.key;
        if let Some(why) = keyless {
            eprintln!("wxtoken: {key}: {why}");
            self.failed(format!("{key}(key)"), Exit::Key);
            return;
        }
        match done {
            Done::Refreshed => self.refreshed += 1,
            Done::Fresh => self.fresh += 1,
            Done::Busy => self.busy += 1,
            Done::NotTried => self.not_tried += 1,
            Done::Held(..) if !self.report_holds => self.held += 1,
            Done::Held(until, reason) => {
                eprintln!("wxtoken: {key}: skipped {}: {reason}", held_text(*until));
                self.failed(format!("{key}(held)"), Exit::FetchFailed);
            }
            // A platform without a ticket leaves every tenant waiting: one line per
            // reason and platform, however many tenants, not one per tenant.
            Done::Waiting(why) => {
                let group = self
                    .waiting
                    .entry(why.clone())
                    .or_insert((0, key.to_string()));
                group.0 += 1;
                self.failed(format!("{key}(waiting)"), Exit::FetchFailed);
            }
            Done::Failed(failure) => {
                eprintln!("wxtoken: {key}: {}", failure.for_api(account.api));
                self.failed(format!("{key}({})", failure.label()), Exit::FetchFailed);
            }
            Done::TicketFailed(ticket, failure) => {
                // The token itself was refreshed; only the ticket is missing.
                self.refreshed += 1;
                eprintln!(
                    "wxtoken: {key}: {} ticket: {}",
                    ticket.as_str(),
                    failure.for_ticket()
                );
                if self.tickets_failed.len() < KEPT_NAMES {
                    self.tickets_failed.push(format!(
                        "{key}({} {})",
                        ticket.as_str(),
                        failure.label()
                    ));
                }
                self.exit = self.exit.merge(Exit::FetchFailed);
            }
            Done::Unrecorded(err) => {
                eprintln!("wxtoken: {key}: {err}");
                self.unrecorded = true;
                self.failed(format!("{key}(database)"), Exit::Database);
            }
            Done::LostClaim(why) => {
                eprintln!("wxtoken: {key}: {why}");
                self.failed(format!("{key}(claim lost)"), Exit::FetchFailed);
            }
        }
    }

    /// Prints the waiting lines and the summary line; the run's exit code.
    fn finish(&mut self, quiet: bool) -> Exit {
        let mut exit = self.exit;
        for (why, (n, first)) in &self.waiting {
            match n {
                1 => eprintln!("wxtoken: {first}: {why}"),
                n => eprintln!("wxtoken: {first} and {} more: {why}", n - 1),
            }
        }
        let accounts = self.run.accounts;
        let mut line = format!("refreshed {} of {accounts} accounts", self.refreshed);
        if self.fresh > 0 {
            line += &format!("; {} already fresh", self.fresh);
        }
        if self.busy > 0 {
            line += &format!("; {} being refreshed by another run", self.busy);
        }
        if self.held > 0 {
            line += &format!("; {} held after an error (see wxtoken status)", self.held);
        }
        if self.failed > 0 {
            let shown = &self.failed_names[..self.failed_names.len().min(SUMMARY_NAMES)];
            let mut names = shown.join(", ");
            if self.failed > shown.len() {
                names += &format!(" and {} more", self.failed - shown.len());
            }
            line += &format!("; {} failed: {names}", self.failed);
        }
        if !self.tickets_failed.is_empty() {
            line += &format!("; failed tickets: {}", some_of(&self.tickets_failed));
        }
        if !self.failed_sinks.is_empty() {
            line += &format!("; publish failed: {}", self.failed_sinks.join(", "));
            // Merged by severity: a WeChat or database failure in the same run says more.
            exit = exit.merge(Exit::PublishFailed);
        }
        let not_tried = self.not_tried;
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
