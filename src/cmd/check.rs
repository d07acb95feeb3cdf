//! `wxtoken status --check`: a Monitoring Plugins check (Nagios, Icinga, Zabbix, Sensu).
//! One line on stdout, `WXTOKEN STATE - text | perfdata`, and only the exit codes 0 OK,
//! 1 WARNING, 2 CRITICAL, 3 UNKNOWN: monitoring systems read any other code as UNKNOWN or
//! worse, so this command bypasses wxtoken's own exit-code table entirely.

use std::ffi::OsString;

use anyhow::Result;

use super::report::{self, AccountState};
use super::{Context, emit};
use crate::config::CheckConfig;
use crate::domain::{AccountKey, Api, AttemptResult, Credential};
use crate::exit::Exit;
use crate::policy;
use crate::quota;
use crate::store::{AccountRows, ReadStore};
use crate::text::human;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    Ok = 0,
    Warning = 1,
    Critical = 2,
    Unknown = 3,
}

impl State {
    fn word(self) -> &'static str {
        match self {
            State::Ok => "OK",
            State::Warning => "WARNING",
            State::Critical => "CRITICAL",
            State::Unknown => "UNKNOWN",
        }
    }
}

/// What the check knows about one enabled account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// `appid`, or `corpid/agentid`.
    pub name: String,
    /// Seconds left on the credential with the least time left (the token or one of its
    /// tickets), and which one; `None` when one of them has no valid row at all.
    pub ttl: Option<i64>,
    /// `token`, or `jsapi ticket` and the like: what `ttl` is about.
    pub what: String,
    /// Refresh skips the account after an error that retrying cannot fix.
    pub held: bool,
    /// The last token fetch failed: its short label (errcode, `http 502`, `network`).
    pub last_failure: Option<String>,
    /// wxtoken's own token requests today, and the daily quota WeChat documents for them.
    pub fetches_today: i64,
    pub daily_limit: Option<i64>,
    /// A platform's ticket, when the account is a platform.
    pub ticket: Option<TicketCheck>,
    /// How refresh treats it (`revoked`, `needs_reauth`, `waiting` say more than `held`).
    pub state: AccountState,
}

/// What the check knows about a platform's pushed ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketCheck {
    /// `component` or `suite`.
    pub kind: Api,
    /// Seconds since the newest ticket was created; `None` when there is none.
    pub age: Option<i64>,
    /// Past its validity (or none): refresh sends nothing for the platform.
    pub waiting: bool,
}

/// The check's thresholds, in seconds: the time left on a token (`warn`, `crit`) and the
/// age of a suite's ticket (`ticket_warn`, `ticket_crit`).
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub warn: i64,
    pub crit: i64,
    pub ticket_warn: i64,
    pub ticket_crit: i64,
}

/// The state of one account and the words that explain it.
fn judge(s: &Subject, th: &Thresholds) -> (State, String) {
    let (warn, crit) = (th.warn, th.crit);
    if s.state == AccountState::Revoked {
        // Nothing makes its token come back: a warning until it is removed or onboarded
        // again, never a page at night.
        return (
            State::Warning,
            "revoked (remove it, or onboard it again)".to_string(),
        );
    }
    let (mut state, mut why) = match s.ttl {
        None => (State::Critical, format!("no valid {}", s.what)),
        Some(t) if t < crit => (State::Critical, format!("{} {} left", s.what, human(t))),
        Some(t) if t < warn => (State::Warning, format!("{} {} left", s.what, human(t))),
        Some(_) => (State::Ok, String::new()),
    };
    let mut extra = Vec::new();
    if let Some(t) = &s.ticket {
        let (ticket_state, words) = judge_ticket(t, th);
        if ticket_state > State::Ok {
            state = state.max(ticket_state);
            extra.push(words);
        }
    }
    match s.state {
        AccountState::NeedsReauth => extra.push("needs re-authorization".to_string()),
        AccountState::Waiting if s.ticket.is_none() => {
            extra.push("waiting for its platform's token".to_string())
        }
        _ if s.held => extra.push("held".to_string()),
        _ => {}
    }
    if let Some(label) = &s.last_failure {
        extra.push(format!("last fetch failed: {label}"));
    }
    if let Some(limit) = s
        .daily_limit
        .filter(|&l| quota::near_limit(s.fetches_today, l))
    {
        extra.push(format!(
            "{} of {limit} daily token fetches used",
            s.fetches_today
        ));
    }
    if !extra.is_empty() {
        state = state.max(State::Warning);
        if !why.is_empty() {
            why += ", ";
        }
        why += &extra.join(", ");
    }
    (state, why)
}

/// A platform's ticket. A suite's (valid 30 minutes, no API to restart its pushes) is
/// judged by its age, before any token fails: WARNING past `ticket_warn`, CRITICAL past
/// `ticket_crit` or without one. A component's (valid 12 hours) only once it is past its
/// validity: WARNING while the component token still serves; the token's own time left
/// makes it CRITICAL.
fn judge_ticket(t: &TicketCheck, th: &Thresholds) -> (State, String) {
    let name = if t.kind == Api::Suite {
        "suite_ticket"
    } else {
        "component_verify_ticket"
    };
    let Some(age) = t.age else {
        let state = match t.kind {
            Api::Suite => State::Critical,
            _ => State::Warning,
        };
        return (state, format!("waiting for a ticket: no {name} yet"));
    };
    let old = format!("{name} {} old", human(age));
    if t.kind == Api::Suite {
        if t.waiting || age >= th.ticket_crit {
            let waiting = if t.waiting {
                "waiting for a ticket: "
            } else {
                ""
            };
            return (State::Critical, format!("{waiting}{old}"));
        }
        if age >= th.ticket_warn {
            return (State::Warning, old);
        }
        return (State::Ok, String::new());
    }
    match t.waiting {
        true => (State::Warning, format!("waiting for a ticket: {old}")),
        false => (State::Ok, String::new()),
    }
}

/// The verdict over every selected account: the state and the one line to print.
#[cfg(test)]
pub fn evaluate(subjects: &[Subject], th: &Thresholds) -> (State, String) {
    let mut tally = Tally::new(*th);
    for (i, s) in subjects.iter().enumerate() {
        tally.add(s, (0, i));
    }
    tally.finish()
}

/// How many accounts the verdict names; the others are counted.
const SHOWN: usize = 3;

/// An account the verdict may name: its state, time left, the order it was taken in, its
/// name and the words that explain its state.
type Named = (State, i64, (usize, usize), String, String);

/// The verdict, taken in one account at a time in constant memory: the counts, the least
/// time left, the tickets, and the `SHOWN` worst accounts with the words that explain them.
pub struct Tally {
    th: Thresholds,
    accounts: usize,
    crits: usize,
    warns: usize,
    state: State,
    /// Of the accounts that are not revoked.
    min_ttl: Option<i64>,
    /// The worst accounts, worst first: (state, time left, order taken in, name, words).
    worst: Vec<Named>,
    tickets: usize,
    waiting: usize,
    suite_age: Option<i64>,
}

impl Tally {
    pub fn new(th: Thresholds) -> Tally {
        Tally {
            th,
            accounts: 0,
            crits: 0,
            warns: 0,
            state: State::Ok,
            min_ttl: None,
            worst: Vec::new(),
            tickets: 0,
            waiting: 0,
            suite_age: None,
        }
    }

    /// Takes in one account. Among accounts of the same state and time left, the one
    /// with the smaller `order` is named first.
    pub fn add(&mut self, s: &Subject, order: (usize, usize)) {
        let (state, why) = judge(s, &self.th);
        self.accounts += 1;
        self.state = self.state.max(state);
        match state {
            State::Critical => self.crits += 1,
            State::Warning => self.warns += 1,
            _ => {}
        }
        if s.state != AccountState::Revoked {
            let ttl = s.ttl.unwrap_or(0).max(0);
            self.min_ttl = Some(self.min_ttl.map_or(ttl, |m| m.min(ttl)));
        }
        if let Some(t) = &s.ticket {
            self.tickets += 1;
            self.waiting += usize::from(t.waiting);
            if t.kind == Api::Suite {
                let age = t.age.unwrap_or(0);
                self.suite_age = Some(self.suite_age.map_or(age, |a| a.max(age)));
            }
        }
        if state == State::Ok {
            return;
        }
        let key =
            |w: &(State, i64, (usize, usize), String, String)| (std::cmp::Reverse(w.0), w.1, w.2);
        let entry = (state, s.ttl.unwrap_or(i64::MIN), order, s.name.clone(), why);
        if self.worst.len() == SHOWN
            && self
                .worst
                .last()
                .is_some_and(|last| key(last) <= key(&entry))
        {
            return;
        }
        let at = self.worst.partition_point(|w| key(w) <= key(&entry));
        self.worst.insert(at, entry);
        self.worst.truncate(SHOWN);
    }

    pub fn finish(self) -> (State, String) {
        let th = &self.th;
        let (warn, crit) = (th.warn, th.crit);
        let n = self.accounts;
        if n == 0 {
            return (
                State::Unknown,
                "WXTOKEN UNKNOWN - no enabled accounts (is WXTOKEN_DB right?) | 'accounts'=0;;;0"
                    .to_string(),
            );
        }
        let (state, crits, warns) = (self.state, self.crits, self.warns);
        let min_ttl = self.min_ttl.unwrap_or(0);
        let text = if state == State::Ok {
            format!(
                "{n} account{}, least time left {}",
                if n == 1 { "" } else { "s" },
                human(min_ttl)
            )
        } else {
            let bad: Vec<String> = (self.worst.iter())
                .map(|(_, _, _, name, why)| format!("{name}: {why}"))
                .collect();
            let more = crits + warns - bad.len();
            let mut text = format!(
                "{crits} critical, {warns} warning of {n}: {}",
                bad.join("; ")
            );
            if more > 0 {
                text += &format!("; +{more} more");
            }
            text
        };
        let mut perf = format!(
            "'min_ttl'={min_ttl}s;{warn}:;{crit}:;0 'accounts'={n};;;0 'critical'={crits};;;0 'warning'={warns};;;0",
        );
        if self.tickets > 0 {
            perf += &format!(" 'waiting_for_ticket'={};;;0", self.waiting);
            if let Some(age) = self.suite_age {
                perf += &format!(
                    " 'suite_ticket_age'={age}s;{}:;{}:;0",
                    th.ticket_warn, th.ticket_crit
                );
            }
        }
        (state, format!("WXTOKEN {} - {text} | {perf}", state.word()))
    }
}

/// Runs the check; never fails: every error is an UNKNOWN line. Opens the store
/// read-only: a check creates, migrates and locks nothing.
pub fn run(ctx: &Context, cfg: &CheckConfig) -> Exit {
    let result = ctx.read_store().and_then(|store| {
        let th = Thresholds {
            warn: cfg.warn,
            crit: cfg.crit,
            ticket_warn: cfg.ticket_warn,
            ticket_crit: cfg.ticket_crit,
        };
        let mut tally = Tally::new(th);
        gather(store.as_ref(), &cfg.accounts, ctx.now(), &mut tally)?;
        Ok(tally.finish())
    });
    let (state, line) = match result {
        Ok(verdict) => verdict,
        Err(err) => unknown(&format!("{err:#}")),
    };
    let _ = emit(&format!("{line}\n"));
    Exit::Plugin(state as u8)
}

/// Prints the UNKNOWN line for an error met before the check could run (bad arguments,
/// no HOME) and returns its exit code.
pub fn print_unknown(message: &str) -> u8 {
    let (state, line) = unknown(message);
    let _ = emit(&format!("{line}\n"));
    state as u8
}

/// The UNKNOWN line for an error: bad arguments, a database that cannot be opened.
pub fn unknown(message: &str) -> (State, String) {
    (
        State::Unknown,
        format!("WXTOKEN UNKNOWN - {}", policy::one_line(message, 200)),
    )
}

/// Whether these command-line arguments ask for the check, so that even a usage error is
/// reported the way monitoring understands (UNKNOWN, 3) instead of with exit code 2, which
/// a monitoring system would read as CRITICAL.
pub fn wanted(args: &[OsString]) -> bool {
    args.iter().any(|a| a == "status") && args.iter().any(|a| a == "--check")
}

/// Takes every selected account into `tally`, a page at a time: memory stays the same
/// however many accounts there are.
fn gather(store: &dyn ReadStore, named: &[AccountKey], now: i64, tally: &mut Tally) -> Result<()> {
    let fetched = store.fetches_today(now)?;
    let views = report::platform_views(store, now)?;
    let subject = |rows: &AccountRows| {
        let account = &rows.account;
        // The credential with the least time left; no valid row at all counts as least.
        let mut worst: Option<(Option<i64>, Credential)> = None;
        for c in &rows.credentials {
            let left = (c.newest.as_ref())
                .and_then(|t| t.stored().left(now))
                .filter(|&left| left > 0);
            let rank = |l: Option<i64>| l.unwrap_or(i64::MIN);
            if worst.is_none_or(|(w, _)| rank(left) < rank(w)) {
                worst = Some((left, c.kind));
            }
        }
        let (ttl, kind) = worst.unwrap_or((None, Credential::AccessToken));
        let access = (rows.credentials.iter()).find(|c| c.kind == Credential::AccessToken);
        let last_failure = match access.and_then(|c| c.attempt.as_ref()) {
            Some(a) => match &a.result {
                AttemptResult::Failed(f) => Some(f.label()),
                AttemptResult::Ok | AttemptResult::Unchanged => None,
            },
            None => None,
        };
        Subject {
            name: account.key.to_string(),
            ttl,
            what: kind.label(),
            held: account.held_at(now).is_some(),
            last_failure,
            fetches_today: fetched.get(&account.id).copied().unwrap_or(0),
            daily_limit: quota::documented_daily_limit(account.api),
            ticket: views.get(&account.id).map(|v| TicketCheck {
                kind: v.api,
                age: v.ticket.map(|t| now - t.0),
                waiting: v.waiting.is_some(),
            }),
            state: report::account_state(account, &views, now),
        }
    };
    if !named.is_empty() {
        for (i, rows) in report::named_accounts(store, named)?.iter().enumerate() {
            tally.add(&subject(rows), (0, i));
        }
        return Ok(());
    }
    // Refresh's order (`engine::targets`): accounts with an unfinished fetch first, in the
    // order those started, then the others; the verdict names the first among equals.
    let unfinished = store.unfinished_fetches()?;
    let mut seq = 0;
    report::each_account(store, true, |rows| {
        let first = (unfinished.iter())
            .position(|&id| id == rows.account.id)
            .unwrap_or(usize::MAX);
        tally.add(&subject(&rows), (first, seq));
        seq += 1;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(name: &str, ttl: Option<i64>) -> Subject {
        Subject {
            name: name.to_string(),
            ttl,
            what: "token".to_string(),
            held: false,
            last_failure: None,
            fetches_today: 0,
            daily_limit: Some(2_000),
            ticket: None,
            state: AccountState::Ok,
        }
    }

    fn th(warn: i64, crit: i64) -> Thresholds {
        Thresholds {
            warn,
            crit,
            ticket_warn: 1200,
            ticket_crit: 1800,
        }
    }

    fn platform(kind: Api, ttl: Option<i64>, age: Option<i64>) -> Subject {
        let validity = kind.ticket_validity().unwrap();
        let mut s = subject("P", ttl);
        s.ticket = Some(TicketCheck {
            kind,
            age,
            waiting: age.is_none_or(|a| a >= validity),
        });
        s
    }

    #[test]
    fn a_suite_ticket_is_judged_by_its_age() {
        let judge = |age| evaluate(&[platform(Api::Suite, Some(7000), age)], &th(1800, 600));
        assert_eq!(judge(Some(1199)).0, State::Ok);
        let (state, line) = judge(Some(1200));
        assert_eq!(state, State::Warning);
        assert!(line.contains("P: suite_ticket 20m old"), "{line}");
        assert!(
            line.contains("'suite_ticket_age'=1200s;1200:;1800:;0"),
            "{line}"
        );
        assert_eq!(judge(Some(1800)).0, State::Critical);
        let (state, line) = judge(None);
        assert_eq!(state, State::Critical);
        assert!(line.contains("no suite_ticket yet"), "{line}");
        assert!(line.contains("'waiting_for_ticket'=1;;;0"), "{line}");
    }

    #[test]
    fn a_waiting_component_is_critical_only_when_its_token_is() {
        let old = Some(13 * 3600);
        let (state, line) = evaluate(&[platform(Api::Component, Some(5000), old)], &th(1800, 600));
        assert_eq!(state, State::Warning);
        assert!(
            line.contains("waiting for a ticket: component_verify_ticket 13h"),
            "{line}"
        );
        let (state, _) = evaluate(&[platform(Api::Component, Some(599), old)], &th(1800, 600));
        assert_eq!(state, State::Critical);
        let (state, _) = evaluate(&[platform(Api::Component, None, old)], &th(1800, 600));
        assert_eq!(state, State::Critical);
        // A young component ticket says nothing.
        let fresh = platform(Api::Component, Some(5000), Some(11 * 3600));
        assert_eq!(evaluate(&[fresh], &th(1800, 600)).0, State::Ok);
    }

    #[test]
    fn tenant_states() {
        let mut revoked = subject("wwR/S", None);
        (revoked.held, revoked.state) = (true, AccountState::Revoked);
        let (state, line) = evaluate(&[revoked, subject("wxA", Some(7000))], &th(1800, 600));
        assert_eq!(state, State::Warning, "{line}");
        assert!(line.contains("wwR/S: revoked"), "{line}");
        assert!(line.contains("'min_ttl'=7000s"), "{line}");
        let mut reauth = subject("wwN/S", Some(7000));
        (reauth.held, reauth.state) = (true, AccountState::NeedsReauth);
        let (state, line) = evaluate(&[reauth.clone()], &th(1800, 600));
        assert_eq!(state, State::Warning);
        assert!(line.contains("wwN/S: needs re-authorization"), "{line}");
        reauth.ttl = None;
        assert_eq!(evaluate(&[reauth], &th(1800, 600)).0, State::Critical);
    }

    #[test]
    fn thresholds() {
        let ok = evaluate(&[subject("wxA", Some(3600))], &th(1800, 600));
        assert_eq!(ok.0, State::Ok);
        assert_eq!(
            ok.1,
            "WXTOKEN OK - 1 account, least time left 1h00m | 'min_ttl'=3600s;1800:;600:;0 \
             'accounts'=1;;;0 'critical'=0;;;0 'warning'=0;;;0"
        );
        assert_eq!(
            evaluate(&[subject("wxA", Some(1799))], &th(1800, 600)).0,
            State::Warning
        );
        assert_eq!(
            evaluate(&[subject("wxA", Some(599))], &th(1800, 600)).0,
            State::Critical
        );
        let none = evaluate(&[subject("wxA", None)], &th(1800, 600));
        assert_eq!(none.0, State::Critical);
        assert!(none.1.contains("wxA: no valid token"), "{}", none.1);
        assert!(none.1.contains("'min_ttl'=0s;"), "{}", none.1);
        assert_eq!(evaluate(&[], &th(1800, 600)).0, State::Unknown);
    }

    #[test]
    fn held_or_failing_is_at_least_warning() {
        let mut held = subject("wxH", Some(7000));
        held.held = true;
        let (state, line) = evaluate(&[subject("wxA", Some(7000)), held.clone()], &th(1800, 600));
        assert_eq!(state, State::Warning);
        assert!(line.contains("wxH: held"), "{line}");
        held.ttl = None;
        assert_eq!(evaluate(&[held], &th(1800, 600)).0, State::Critical);
        let mut failing = subject("wxF", Some(7000));
        failing.last_failure = Some("40164".into());
        let (state, line) = evaluate(&[failing], &th(1800, 600));
        assert_eq!(state, State::Warning);
        assert!(line.contains("last fetch failed: 40164"), "{line}");
    }

    #[test]
    fn near_the_daily_quota_is_a_warning() {
        let mut busy = subject("wxQ", Some(7000));
        busy.fetches_today = 1_599;
        assert_eq!(
            evaluate(std::slice::from_ref(&busy), &th(1800, 600)).0,
            State::Ok
        );
        busy.fetches_today = 1_600;
        let (state, line) = evaluate(&[busy], &th(1800, 600));
        assert_eq!(state, State::Warning);
        assert!(
            line.contains("1600 of 2000 daily token fetches used"),
            "{line}"
        );
    }

    #[test]
    fn worst_first_and_bounded() {
        let subjects: Vec<Subject> = (0..6)
            .map(|i| subject(&format!("wx{i}"), Some(100 * i)))
            .collect();
        let (state, line) = evaluate(&subjects, &th(1800, 250));
        assert_eq!(state, State::Critical);
        assert!(
            line.starts_with("WXTOKEN CRITICAL - 3 critical, 3 warning of 6: wx0: "),
            "{line}"
        );
        assert!(line.contains("; +3 more |"), "{line}");
        assert!(line.contains("'min_ttl'=0s;1800:;250:;0"), "{line}");
        assert_eq!(line.lines().count(), 1);
    }

    #[test]
    fn recognises_check_arguments() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(wanted(&args(&[
            "wxtoken", "status", "--check", "--warn", "x"
        ])));
        assert!(!wanted(&args(&["wxtoken", "status", "--json"])));
    }
}
