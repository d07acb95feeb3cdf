//! The path of a fetch, in one place: claim the account → fetch its token, then the
//! tickets that depend on it → record each → release the claim, on every path. `refresh`
//! runs it over many accounts on a worker pool; `get --reject` runs it for one account
//! when the token a caller rejected is still the newest. Both then `settle` the same way:
//! revive the store's handle → publish to the sinks → prune. Which accounts a run takes
//! (`targets`) is decided here too.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::domain::{
    Account, AccountKey, Api, Credential, Failure, FetchRecord, Outcome, Ticket, TokenRow,
};
use crate::exit::{Exit, fail};
use crate::freshness::{self, Want};
use crate::policy::{self, Hold};
use crate::secret::fingerprint;
use crate::signals;
use crate::store::{Claim, Newest, ReadStore, Recorded, Store, StoreError};
use crate::text;
use crate::wechat::{Client, Credentials};

pub mod onboard;
pub mod platform;
pub use platform::Flights;

/// The clock, passed in so that the engine never reads it behind a caller's back.
pub type Clock = fn() -> i64;

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
    /// The store failed; the fetch may have worked but is not recorded.
    Unrecorded(String),
    /// The fetch outlived the claim and another run took the account over: its token was
    /// dropped (PostgreSQL's fencing). Why, with what to do.
    LostClaim(String),
    /// Not tried: a stop signal came, or the database is locked (see `Stop`).
    NotTried,
    /// Nothing was sent: a platform has no valid ticket, or a tenant's platform has no
    /// valid token (or failed in this run). Why.
    Waiting(String),
}

/// Why a run stops starting fetches: another process holds the database's write lock (one
/// busy timeout is all a run waits, whatever the number of accounts), or a stop signal.
#[derive(Default)]
pub struct Stop {
    locked: AtomicBool,
    /// The first lock error, which on PostgreSQL names the lock's holder.
    reason: Mutex<Option<String>>,
}

impl Stop {
    pub fn now(&self) -> bool {
        self.locked() || signals::caught().is_some()
    }

    /// Whether a store operation gave up on another process's lock.
    pub fn locked(&self) -> bool {
        self.locked.load(Ordering::SeqCst)
    }

    /// The first lock error met, once `locked`.
    pub fn reason(&self) -> Option<String> {
        self.reason.lock().map_or(None, |r| r.clone())
    }

    /// Turns a store failure into `NotTried` (and stops the run) when it is the lock.
    fn failed(&self, err: &StoreError, done: impl FnOnce() -> Done) -> Done {
        if let StoreError::Busy(m) = err {
            if let Ok(mut reason) = self.reason.lock() {
                reason.get_or_insert_with(|| m.clone());
            }
            self.locked.store(true, Ordering::SeqCst);
            Done::NotTried
        } else {
            done()
        }
    }
}

/// What a refresh run fetches.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub want: Want,
    /// Fetch held accounts too.
    pub force: bool,
    pub jobs: usize,
    /// Seconds a claim lasts.
    pub claim_ttl: i64,
    /// Whether a refresh-ahead run reads every account's newest rows first to skip those
    /// not due without claiming them; off when the accounts were chosen by the store's due
    /// index already (`Store::target_ids`).
    pub prefilter: bool,
}

/// The accounts to refresh: every enabled one, or the named ones; those with a fetch that
/// was never recorded first, oldest first, since it may have doomed their stored token.
pub fn targets(store: &dyn ReadStore, named: &[AccountKey]) -> Result<Vec<Account>> {
    targets_with(store, named, &[])
}

/// `targets`, plus the platforms named (`refresh --component`, `--suite`), each with
/// its enabled tenants.
pub fn targets_with(
    store: &dyn ReadStore,
    named: &[AccountKey],
    platforms: &[AccountKey],
) -> Result<Vec<Account>> {
    let mut all = store.accounts()?;
    let unfinished = store.unfinished_fetches()?;
    all.sort_by_key(|a| {
        unfinished
            .iter()
            .position(|&id| id == a.id)
            .unwrap_or(usize::MAX)
    });
    if named.is_empty() && platforms.is_empty() {
        return Ok(all.into_iter().filter(|a| a.enabled).collect());
    }
    let mut picked = Vec::new();
    for key in platforms {
        let Some(platform) = all.iter().find(|a| &a.key == key && a.api.is_platform()) else {
            return Err(fail(
                Exit::Account,
                format!("no such platform {key} (see wxtoken platform list)"),
            ));
        };
        if !platform.enabled {
            return Err(fail(
                Exit::Account,
                format!("platform {key} is disabled; enable it first (wxtoken account enable)"),
            ));
        }
        let id = platform.id;
        for a in &all {
            let ours = a.id == id || a.platform == Some(id);
            if ours && a.enabled && !picked.iter().any(|p: &Account| p.id == a.id) {
                picked.push(a.clone());
            }
        }
    }
    for key in named {
        match all.iter().find(|a| &a.key == key) {
            // Named twice: fetched once.
            Some(a) if picked.iter().any(|p: &Account| p.id == a.id) => {}
            Some(a) if a.enabled => picked.push(a.clone()),
            Some(_) => {
                return Err(fail(
                    Exit::Account,
                    format!("account {key} is disabled; enable it first (wxtoken account enable)"),
                ));
            }
            None => return Err(StoreError::NotFound(key.clone()).into()),
        }
    }
    Ok(picked)
}

/// Refreshes every account on up to `plan.jobs` threads, each with its own handle on the
/// store; results in account order. Once `stop` says so, no new fetch starts; the ones in
/// flight are finished and recorded. `on_done` is called from the worker as each account
/// finishes (for a progress display). `flights` is the run's shared platform state (one
/// per run, across batches).
#[allow(clippy::too_many_arguments)]
pub fn refresh(
    store: &dyn Store,
    client: &Client,
    accounts: &[Account],
    plan: Plan,
    clock: Clock,
    stop: &Stop,
    on_done: &(dyn Fn(&Done) + Sync),
    flights: &Flights,
) -> Vec<Done> {
    // Platforms (and plain accounts) first, then the tenants, which need their platform's
    // new token; results in account order.
    type Indexed<'a> = Vec<(usize, &'a Account)>;
    let (tenants, firsts): (Indexed, Indexed) = accounts
        .iter()
        .enumerate()
        .partition(|(_, a)| a.api.is_tenant());
    if tenants.is_empty() {
        return refresh_set(store, client, accounts, plan, clock, stop, on_done, flights);
    }
    let mut results: Vec<Option<Done>> = accounts.iter().map(|_| None).collect();
    for phase in [firsts, tenants] {
        let set: Vec<Account> = phase.iter().map(|(_, a)| (*a).clone()).collect();
        let done = refresh_set(store, client, &set, plan, clock, stop, on_done, flights);
        for ((i, _), d) in phase.into_iter().zip(done) {
            results[i] = Some(d);
        }
    }
    results
        .into_iter()
        .map(|d| d.unwrap_or(Done::NotTried))
        .collect()
}

/// One phase of `refresh`.
#[allow(clippy::too_many_arguments)]
fn refresh_set(
    store: &dyn Store,
    client: &Client,
    accounts: &[Account],
    plan: Plan,
    clock: Clock,
    stop: &Stop,
    on_done: &(dyn Fn(&Done) + Sync),
    flights: &Flights,
) -> Vec<Done> {
    let now = clock();
    // Rows above the newest id now were inserted by a run that fetched after this one
    // started: those accounts are not due again.
    // Read only when it decides something: it waits for recording transactions.
    let newest = || store.newest_token_id();
    let want = match (
        plan.want,
        matches!(plan.want, Want::Due { .. }).then(newest),
    ) {
        (Want::Due { .. }, Some(Ok(newest_at_start))) => Want::Due { newest_at_start },
        (Want::Due { .. }, Some(Err(err))) => {
            let done = || {
                stop.failed(&err, || {
                    Done::Unrecorded(format!("could not read the newest token id: {err}"))
                })
            };
            return accounts.iter().map(|_| done()).collect();
        }
        (want, _) => want,
    };
    let ttl = plan.claim_ttl;
    let skip = not_due_before_claiming(store, accounts, plan, clock);
    let todo: Vec<&Account> = accounts
        .iter()
        .zip(&skip)
        .filter(|(_, skip)| !**skip)
        .map(|(account, _)| account)
        .collect();
    // Each worker opens its own handle (a handle may be sent to a thread, but not shared
    // between threads), all at once rather than one after another.
    let open = store.opener();
    let workers = plan.jobs.min(todo.len());
    let mut results = run_pool(&todo, workers, &open, |worker, account| {
        let done = match (account.held_at(now), worker) {
            _ if stop.now() => Done::NotTried,
            (Some((until, reason)), _) if !plan.force => Done::Held(until, reason),
            (_, Err(err)) => Done::Unrecorded(format!("could not open the store: {err}")),
            (_, Ok(store)) => refresh_one(
                store.as_ref(),
                client,
                account,
                want,
                ttl,
                clock,
                stop,
                flights,
            ),
        };
        on_done(&done);
        done
    })
    .into_iter();
    skip.into_iter()
        .map(|skip| {
            if !skip {
                return results.next().expect("one result per account not skipped");
            }
            on_done(&Done::Fresh);
            Done::Fresh
        })
        .collect()
}

/// Refresh-ahead (`--if-expiring-within`) runs every few minutes and mostly finds nothing
/// due. One read of every account's newest rows spares each account that is clearly not
/// due its claim and release (on PostgreSQL round trips, on SQLite write transactions).
/// The decision is [`credential_due`]'s, the one the claim path makes, on one snapshot:
/// an account skipped here is one the claim path would have called fresh at this instant.
/// Every account not skipped is read again under its claim. Held accounts are left to the
/// pool, which reports them; on a failed read nothing is skipped.
fn not_due_before_claiming(
    store: &dyn Store,
    accounts: &[Account],
    plan: Plan,
    clock: Clock,
) -> Vec<bool> {
    let none = || vec![false; accounts.len()];
    if !plan.prefilter || !matches!(plan.want, Want::ExpiringWithin(_)) || accounts.is_empty() {
        return none();
    }
    let rows = match store.all_newest() {
        Ok(rows) => rows,
        Err(err) => {
            log::info!("could not read the newest tokens at once, claiming every account: {err}");
            return none();
        }
    };
    let now = clock();
    let mut newest: HashMap<i64, Vec<Newest>> = HashMap::new();
    for row in rows {
        newest.entry(row.account_id).or_default().push(row);
    }
    accounts
        .iter()
        .map(|account| {
            let rows = newest.get(&account.id).map_or(&[][..], Vec::as_slice);
            let row = |kind: Credential| {
                rows.iter()
                    .find(|r| r.kind == kind)
                    .map(|r| (r.id, r.stored))
            };
            let held = account.held_at(now).is_some() && !plan.force;
            let mut kinds = std::iter::once(Credential::AccessToken)
                .chain(account.tickets.iter().map(|&t| Credential::Ticket(t)));
            !held && kinds.all(|kind| !credential_due(account, kind, row(kind), now, plan.want))
        })
        .collect()
}

/// Whether an account's credential should be fetched now, given its newest row: the one
/// decision both the claim path and refresh-ahead's pre-filter make.
fn credential_due(
    account: &Account,
    kind: Credential,
    newest: Option<(i64, freshness::Stored)>,
    now: i64,
    want: Want,
) -> bool {
    let asked = account.fetch_due && kind == Credential::AccessToken;
    freshness::needs_fetch(newest, asked, now, want_for(account.api, want))
}

/// What a run asking for `want` wants of an account of `api`: a platform kind's token is
/// replaced ahead of its expiry only, never again by every run (a second component or
/// suite token breaks every holder of the first, and 100,000 tenants are not refetched by
/// each hourly run). `refresh --dry-run` decides with it too.
pub fn want_for(api: Api, want: Want) -> Want {
    match want {
        Want::Due { .. } if api.is_platform_kind() => {
            Want::ExpiringWithin(policy::PLATFORM_DUE_WINDOW)
        }
        // A refresh-ahead window longer than a platform token's due window (say 3h, past
        // a token's whole life) would refetch it at every run.
        Want::ExpiringWithin(w) if api.is_platform_kind() => {
            Want::ExpiringWithin(w.min(policy::PLATFORM_DUE_WINDOW))
        }
        want => want,
    }
}

/// Runs `work` over every item on `threads` threads, each with its own state made by
/// `init` on that thread; results in item order.
fn run_pool<T: Sync, S, R: Send>(
    items: &[T],
    threads: usize,
    init: impl Fn() -> S + Sync,
    work: impl Fn(&S, &T) -> R + Sync,
) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<R>>> = items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let (next, slots, init, work) = (&next, &slots, &init, &work);
            scope.spawn(move || {
                let state = init();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let result = work(&state, item);
                    // A poisoned slot only means another worker panicked.
                    *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
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

/// How a piece of work under a claim went.
enum Claimed<T> {
    /// Another live holder has the account (its id); nothing was done.
    Busy(String),
    /// The work's result, and whether the claim was given back.
    Done(T, Result<(), StoreError>),
}

/// The one claim protocol: claim, work, release, whatever the work's result.
fn with_claim<T>(
    store: &dyn Store,
    account_id: i64,
    now: i64,
    ttl: i64,
    work: impl FnOnce() -> T,
) -> Result<Claimed<T>, StoreError> {
    match store.claim(account_id, now, ttl)? {
        Claim::Busy(other) => Ok(Claimed::Busy(other)),
        Claim::Claimed => {
            let result = work();
            Ok(Claimed::Done(result, store.release(account_id)))
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn refresh_one(
    store: &dyn Store,
    client: &Client,
    account: &Account,
    want: Want,
    ttl: i64,
    clock: Clock,
    stop: &Stop,
    flights: &Flights,
) -> Done {
    let now = clock();
    let claimed = with_claim(store, account.id, now, ttl, || {
        fetch_claimed(store, client, account, want, now, ttl, stop, flights)
    });
    match claimed {
        Err(err) => stop.failed(&err, || {
            Done::Unrecorded(format!("could not claim the account: {err}"))
        }),
        Ok(Claimed::Busy(other)) => {
            log::info!("{}: {other} is fetching it; skipping", account.key);
            Done::Busy
        }
        // What happened to the fetch matters more; a claim left behind expires on its own.
        Ok(Claimed::Done(done @ Done::Unrecorded(_), Err(err))) => {
            log::info!("{}: could not release the claim: {err}", account.key);
            done
        }
        Ok(Claimed::Done(_, Err(err))) => {
            Done::Unrecorded(format!("could not release the claim: {err}"))
        }
        Ok(Claimed::Done(done, Ok(()))) => done,
    }
}

/// The part of a refresh that runs under the claim. Nobody else can add a row for the
/// account meanwhile, so reading "the newest" here is not racy.
#[allow(clippy::too_many_arguments)]
fn fetch_claimed(
    store: &dyn Store,
    client: &Client,
    account: &Account,
    want: Want,
    now: i64,
    ttl: i64,
    stop: &Stop,
    flights: &Flights,
) -> Done {
    let due = |kind: Credential| -> Result<(bool, Option<String>), StoreError> {
        let newest = store.latest_token(&account.key, kind)?;
        let due = credential_due(
            account,
            kind,
            newest.as_ref().map(|t| (t.id, t.stored())),
            now,
            want,
        );
        Ok((due, newest.map(|t| t.token)))
    };
    let (token_due, newest) = match due(Credential::AccessToken) {
        Ok(v) => v,
        Err(err) => return Done::Unrecorded(format!("could not read the newest token: {err}")),
    };
    let mut tickets_due = Vec::new();
    for &ticket in &account.tickets {
        match due(Credential::Ticket(ticket)) {
            Ok((true, _)) => tickets_due.push(ticket),
            Ok(_) => {}
            Err(err) => {
                return Done::Unrecorded(format!("could not read the newest ticket: {err}"));
            }
        }
    }
    let token = match (token_due, newest) {
        (false, _) if tickets_due.is_empty() => return Done::Fresh,
        (false, Some(token)) => token,
        _ => {
            // Checked again here: a claim may have waited out the lock or a signal.
            if stop.now() {
                return Done::NotTried;
            }
            // A secret read before the key was loaded would reach WeChat empty.
            if account.secret.is_unread() {
                return Done::Unrecorded(format!(
                    "the secret of {} was read before the key file was loaded, so nothing \
                     was fetched",
                    account.key
                ));
            }
            // A platform without a valid ticket, a tenant without its platform's token:
            // nothing is sent.
            let prepared = match platform::prepare(store, account, now, flights) {
                Ok(prepared) => prepared,
                Err(done) => return done,
            };
            if let Err(err) = store.begin_fetch(account.id, now) {
                return stop.failed(&err, || {
                    Done::Unrecorded(format!(
                        "could not note that a fetch starts, so nothing was fetched: {err}"
                    ))
                });
            }
            let (outcome, used) =
                platform::fetch(store, client, account, &prepared, now, ttl, flights, stop);
            match record(store, account, &used, Credential::AccessToken, outcome) {
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
        let (result, _) = record(
            store,
            account,
            &account.secret,
            Credential::Ticket(ticket),
            outcome,
        );
        if matches!(done, Done::Refreshed) {
            done = result;
        }
    }
    done
}

fn credentials(account: &Account) -> Credentials<'_> {
    Credentials {
        api: account.api,
        appid: &account.key.appid,
        secret: &account.secret,
    }
}

/// Records a fetch and turns it into a `Done`, with the new value when there is one.
fn record(
    store: &dyn Store,
    account: &Account,
    used: &crate::domain::Secret,
    kind: Credential,
    outcome: Outcome,
) -> (Done, Option<String>) {
    // The reason stored with a hold is the whole message, hint included, for `status`.
    // The store ends the hold on its own clock.
    let hold = match (&outcome.result, kind) {
        (Err(failure @ Failure::WeChat { errcode, .. }), Credential::AccessToken) => {
            match policy::hold_after_for(account.api, *errcode) {
                Hold::None => None,
                hold => Some((hold, failure.for_api(account.api))),
            }
        }
        _ => None,
    };
    warn_about_clock(outcome.clock_offset);
    let record = FetchRecord {
        account_id: account.id,
        kind,
        outcome,
        hold,
        secret: used.clone(),
    };
    // A failed record is tried again a few times: on the classic API the fetched token has
    // already doomed the stored one.
    let mut tries = 0;
    let recorded = loop {
        tries += 1;
        match store.record_fetch(&record) {
            // A lost claim stays lost; a commit whose outcome is unknown is never sent
            // again: it may have landed (the intent it would have cleared covers readers).
            Err(err)
                if tries < RECORD_TRIES
                    && !matches!(err, StoreError::LostClaim(_) | StoreError::Unsure(_)) =>
            {
                log::warn!(
                    "{}: could not record the fetch (try {tries}): {err}",
                    account.key
                );
                std::thread::sleep(RECORD_PAUSE * tries);
            }
            recorded => break recorded,
        }
    };
    let outcome = record.outcome;
    let doomed = kind == Credential::AccessToken
        && account.api.is_classic()
        && (outcome.result.is_ok() || outcome.unsure);
    match (outcome.result, recorded) {
        (_, Err(StoreError::LostClaim(why))) => (Done::LostClaim(why), None),
        (_, Err(err)) => {
            let consequence = if doomed {
                format!(
                    "; WeChat has replaced the stored token, which dies within 5 minutes: \
                     fix the database and run `wxtoken refresh --appid {}` at once",
                    account.key
                )
            } else {
                String::new()
            };
            (
                Done::Unrecorded(format!(
                    "could not record the fetch after {tries} tries: {err}{consequence}"
                )),
                None,
            )
        }
        (Ok(fetched), Ok(recorded)) => {
            log::info!(
                "{}: {} {} valid for {}s (tries: {}{})",
                account.key,
                kind.as_str(),
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
        (Err(failure), Ok(_)) => match kind {
            Credential::AccessToken => (Done::Failed(failure), None),
            Credential::Ticket(t) => (Done::TicketFailed(t, failure), None),
        },
    }
}

/// How often recording a fetch is tried before giving up, and the pause between tries.
const RECORD_TRIES: u32 = 3;
const RECORD_PAUSE: Duration = Duration::from_millis(500);

/// Says once per process when WeChat's clock and ours differ by more than a minute: every
/// expiry is judged by the local clock, so a wrong one serves dead tokens or wastes fresh
/// ones.
fn warn_about_clock(offset: Option<i64>) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if let Some(offset) = freshness::clock_warning(offset)
        && !WARNED.swap(true, Ordering::SeqCst)
    {
        eprintln!("wxtoken: warning: {}", clock_text(offset));
    }
}

/// The clock warning, in the same words on stderr and in `status`.
pub fn clock_text(offset: i64) -> String {
    let (way, by) = if offset > 0 {
        ("behind", offset)
    } else {
        ("ahead of", -offset)
    };
    format!(
        "this machine's clock is {by} s {way} WeChat's (the Date header of its reply); \
         token lifetimes are judged by the local clock: fix its time synchronisation (NTP)"
    )
}

/// What settling after a run's fetches did.
#[derive(Debug, Default)]
pub struct Settled {
    /// The sinks whose publish failed, by name; `(database)` when the rows could not be
    /// read to publish them, or the database could not be reached again.
    pub failed_sinks: Vec<String>,
    /// Why the database could not be reached again after the fetches, if it could not:
    /// publishing and pruning were skipped.
    pub unreachable: Option<StoreError>,
}

/// After a run's fetches are committed, the one way to settle it: make the handle that sat
/// idle while the fetches ran reach the database again (a server restart or a network cut
/// meanwhile ended its connection), publish every valid token of `accounts` to the sinks
/// (the new ones and every still-valid one, so that a flushed Redis is whole again after
/// one run), then prune old rows if `prune_attempts_before` says from when. A failed
/// publish never undoes a fetch: it is reported on stderr (its lines begin with
/// `prefix`), recorded on the sink and retried by the next run; what it means for the
/// exit code is the caller's to say. After a stop (a signal, a locked database) nothing
/// is done: these steps write, and would wait out the lock again or delay an exit that
/// was asked for.
pub fn settle(
    store: &dyn Store,
    accounts: &[Account],
    clock: Clock,
    stop: &Stop,
    prune_attempts_before: Option<i64>,
    prefix: &str,
) -> Settled {
    if stop.now() {
        return Settled::default();
    }
    if let Err(err) = store.revive() {
        return Settled {
            failed_sinks: vec!["(database)".to_string()],
            unreachable: Some(err),
        };
    }
    let failed_sinks = match crate::publish::publish_all(store, accounts, clock()) {
        Ok(reports) => crate::publish::report_failures(&reports, prefix),
        Err(err) => {
            eprintln!("wxtoken: {prefix}could not publish to the sinks: {err:#}");
            vec!["(database)".to_string()]
        }
    };
    if let Some(before) = prune_attempts_before
        && let Err(err) = store.prune(clock(), policy::DEFAULT_KEEP, before)
    {
        log::warn!("could not prune old rows: {err}");
    }
    Settled {
        failed_sinks,
        unreachable: None,
    }
}

/// `get --reject`: a token other than `rejected`, with at least `min_ttl` left: the
/// newest one if someone already replaced it, else one fetched now. Only the claim holder
/// fetches, so N callers rejecting one token cause one fetch; the others wait for its row.
pub fn renew(
    store: &dyn Store,
    client: &Client,
    account: &Account,
    rejected: &str,
    min_ttl: i64,
    ttl: i64,
    clock: Clock,
) -> Result<TokenRow> {
    let good = |row: Option<TokenRow>, now| {
        row.filter(|r| r.token != rejected && freshness::usable(&r.stored(), now, min_ttl))
    };
    let key = &account.key;
    let timeout = client.timeout().as_secs();
    let deadline = Instant::now() + Duration::from_secs(ttl as u64 + timeout);
    loop {
        let now = clock();
        if let Some(row) = good(store.latest_token(key, Credential::AccessToken)?, now) {
            return Ok(row);
        }
        log::debug!("{key}: the rejected token is still the newest; claiming the account");
        let claimed = with_claim(store, account.id, now, ttl, || -> Result<TokenRow> {
            // Under the claim: look once more, a holder may have finished just before us.
            if let Some(row) = good(store.latest_token(key, Credential::AccessToken)?, now) {
                return Ok(row);
            }
            if let Some((until, reason)) = account.held_at(now) {
                return Err(fail(
                    Exit::FetchFailed,
                    format!("{key} is skipped {}: {reason}", text::held_text(until)),
                ));
            }
            let (outcome, used) = fetch_replacing(store, client, account, rejected, now, ttl)?;
            match record(store, account, &used, Credential::AccessToken, outcome) {
                (Done::Refreshed, Some(token)) if token == rejected => Err(fail(
                    Exit::FetchFailed,
                    format!(
                        "WeChat handed out the rejected token again for {key}; it considers it valid"
                    ),
                )),
                (Done::Refreshed, _) => good(
                    store.latest_token(key, Credential::AccessToken)?,
                    clock(),
                )
                .ok_or_else(|| {
                    fail(
                        Exit::NoToken,
                        format!(
                            "no valid token for {key}: the new token has less than --min-ttl left"
                        ),
                    )
                }),
                (Done::Failed(failure), _) => Err(fail(
                    Exit::FetchFailed,
                    format!("could not fetch a new token for {key}: {failure}"),
                )),
                // Nothing this process may hand out; the run that took over has the token.
                (Done::LostClaim(why), _) => Err(fail(
                    Exit::FetchFailed,
                    format!("could not fetch a new token for {key}: {why}"),
                )),
                (Done::Unrecorded(err), _) => Err(fail(Exit::Database, format!("{key}: {err}"))),
                (Done::Waiting(why), _) => Err(fail(
                    Exit::FetchFailed,
                    format!("could not fetch a new token for {key}: {why}"),
                )),
                (Done::Held(until, reason), _) => Err(fail(
                    Exit::FetchFailed,
                    format!("{key} is skipped {}: {reason}", text::held_text(until)),
                )),
                (other, _) => Err(anyhow::anyhow!(
                    "{key}: unexpected refresh result {other:?}"
                )),
            }
        })?;
        match claimed {
            Claimed::Done(row, released) => {
                let row = row?;
                released?;
                return Ok(row);
            }
            Claimed::Busy(other) => {
                if Instant::now() > deadline {
                    return Err(fail(
                        Exit::FetchFailed,
                        format!("gave up waiting for {other} to fetch a new token for {key}"),
                    ));
                }
                std::thread::sleep(policy::RENEW_POLL);
            }
        }
    }
}

/// Fetches a token to replace `rejected`. A stable account hands back its current token
/// while it is valid; only force mode replaces it, and WeChat rations that.
fn fetch_replacing(
    store: &dyn Store,
    client: &Client,
    account: &Account,
    rejected: &str,
    now: i64,
    ttl: i64,
) -> Result<(Outcome, crate::domain::Secret)> {
    let creds = credentials(account);
    let flights = Flights::default();
    let prepared = match platform::prepare(store, account, now, &flights) {
        Ok(prepared) => prepared,
        Err(Done::Waiting(why)) => {
            return Err(fail(
                Exit::FetchFailed,
                format!("could not fetch a new token for {}: {why}", account.key),
            ));
        }
        Err(Done::Held(until, reason)) => {
            return Err(fail(
                Exit::FetchFailed,
                format!(
                    "{} is skipped {}: {reason}",
                    account.key,
                    text::held_text(until)
                ),
            ));
        }
        Err(other) => return Err(anyhow::anyhow!("{}: {other:?}", account.key)),
    };
    store.begin_fetch(account.id, now)?;
    let (outcome, used) = platform::fetch(
        store,
        client,
        account,
        &prepared,
        now,
        ttl,
        &flights,
        &Stop::default(),
    );
    let same = matches!(&outcome.result, Ok(f) if f.token == rejected);
    if !(same && account.api == Api::Stable) {
        return Ok((outcome, used));
    }
    let key = &account.key;
    // Judged on the store's clock: on PostgreSQL the server's, whatever this host's says.
    let budget = store.forced_refreshes(account.id, now)?;
    if let Err(why) = policy::force_allowed(&budget.at, budget.now) {
        return Err(fail(
            Exit::FetchFailed,
            format!("cannot force a new stable token for {key}: {why}"),
        ));
    }
    store.note_forced_refresh(account.id, now)?;
    log::warn!("{key}: WeChat still hands out the rejected token; forcing a new one");
    Ok((client.fetch_token(&creds, true), used))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_keeps_order_and_bounds_threads() {
        let items: Vec<u32> = (0..100).collect();
        let running = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let opened = AtomicUsize::new(0);
        let init = || opened.fetch_add(1, Ordering::SeqCst);
        let out = run_pool(&items, 4, init, |_, &i| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            std::thread::yield_now();
            running.fetch_sub(1, Ordering::SeqCst);
            i * 2
        });
        assert_eq!(out, items.iter().map(|i| i * 2).collect::<Vec<_>>());
        assert!(peak.load(Ordering::SeqCst) <= 4);
        // One state per thread, each made once.
        assert_eq!(opened.load(Ordering::SeqCst), 4);
        assert!(run_pool(&[] as &[u32], 1, || (), |_, &i| i).is_empty());
    }
}
