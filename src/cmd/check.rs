//! `wxtoken status --check`: a Monitoring Plugins check (Nagios, Icinga, Zabbix, Sensu).
//! One line on stdout, `WXTOKEN STATE - text | perfdata`, and only the exit codes 0 OK,
//! 1 WARNING, 2 CRITICAL, 3 UNKNOWN: monitoring systems read any other code as UNKNOWN or
//! worse, so this command bypasses wxtoken's own exit-code table entirely.

use std::ffi::OsString;

use anyhow::Result;

use super::{Context, emit};
use crate::config::CheckConfig;
use crate::domain::{AccountKey, AttemptResult, Credential};
use crate::exit::Exit;
use crate::policy;
use crate::quota;
use crate::store::ReadStore;
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
}

/// The state of one account and the words that explain it.
fn judge(s: &Subject, warn: i64, crit: i64) -> (State, String) {
    let (mut state, mut why) = match s.ttl {
        None => (State::Critical, format!("no valid {}", s.what)),
        Some(t) if t < crit => (State::Critical, format!("{} {} left", s.what, human(t))),
        Some(t) if t < warn => (State::Warning, format!("{} {} left", s.what, human(t))),
        Some(_) => (State::Ok, String::new()),
    };
    let mut extra = Vec::new();
    if s.held {
        extra.push("held".to_string());
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

/// The verdict over every selected account: the state and the one line to print.
pub fn evaluate(subjects: &[Subject], warn: i64, crit: i64) -> (State, String) {
    if subjects.is_empty() {
        return (
            State::Unknown,
            "WXTOKEN UNKNOWN - no enabled accounts (is WXTOKEN_DB right?) | 'accounts'=0;;;0"
                .to_string(),
        );
    }
    let mut judged: Vec<(State, &Subject, String)> = subjects
        .iter()
        .map(|s| {
            let (state, why) = judge(s, warn, crit);
            (state, s, why)
        })
        .collect();
    // Worst first; among equals, the least time left first.
    judged.sort_by_key(|(state, s, _)| (std::cmp::Reverse(*state), s.ttl.unwrap_or(i64::MIN)));
    let state = judged[0].0;
    let count = |st: State| judged.iter().filter(|j| j.0 == st).count();
    let (crits, warns) = (count(State::Critical), count(State::Warning));
    let min_ttl = subjects.iter().map(|s| s.ttl.unwrap_or(0).max(0)).min();
    let min_ttl = min_ttl.unwrap_or(0);
    let text = if state == State::Ok {
        format!(
            "{} account{}, least time left {}",
            subjects.len(),
            if subjects.len() == 1 { "" } else { "s" },
            human(min_ttl)
        )
    } else {
        const SHOWN: usize = 3;
        let bad: Vec<String> = judged
            .iter()
            .filter(|j| j.0 != State::Ok)
            .take(SHOWN)
            .map(|(_, s, why)| format!("{}: {why}", s.name))
            .collect();
        let more = crits + warns - bad.len();
        let mut text = format!(
            "{crits} critical, {warns} warning of {}: {}",
            subjects.len(),
            bad.join("; ")
        );
        if more > 0 {
            text += &format!("; +{more} more");
        }
        text
    };
    let perf = format!(
        "'min_ttl'={min_ttl}s;{warn}:;{crit}:;0 'accounts'={};;;0 'critical'={crits};;;0 'warning'={warns};;;0",
        subjects.len()
    );
    (state, format!("WXTOKEN {} - {text} | {perf}", state.word()))
}

/// Runs the check; never fails: every error is an UNKNOWN line. Opens the store
/// read-only: a check creates, migrates and locks nothing.
pub fn run(ctx: &Context, cfg: &CheckConfig) -> Exit {
    let result = ctx.read_store().and_then(|store| {
        let subjects = gather(store.as_ref(), &cfg.accounts, ctx.now())?;
        Ok(evaluate(&subjects, cfg.warn, cfg.crit))
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

fn gather(store: &dyn ReadStore, named: &[AccountKey], now: i64) -> Result<Vec<Subject>> {
    let mut subjects = Vec::new();
    let fetched = store.fetches_today(now)?;
    for account in crate::engine::targets(store, named)? {
        // The credential with the least time left; no valid row at all counts as least.
        let mut worst: Option<(Option<i64>, Credential)> = None;
        for kind in account.credentials() {
            let left = store
                .latest_token(&account.key, kind)?
                .and_then(|t| t.stored().left(now))
                .filter(|&left| left > 0);
            let rank = |l: Option<i64>| l.unwrap_or(i64::MIN);
            if worst.is_none_or(|(w, _)| rank(left) < rank(w)) {
                worst = Some((left, kind));
            }
        }
        let (ttl, kind) = worst.unwrap_or((None, Credential::AccessToken));
        let last_failure = match store.last_attempt(account.id, Credential::AccessToken)? {
            Some(a) => match a.result {
                AttemptResult::Failed(f) => Some(f.label()),
                AttemptResult::Ok | AttemptResult::Unchanged => None,
            },
            None => None,
        };
        subjects.push(Subject {
            name: account.key.to_string(),
            ttl,
            what: kind.label(),
            held: account.held_at(now).is_some(),
            last_failure,
            fetches_today: fetched.get(&account.id).copied().unwrap_or(0),
            daily_limit: quota::documented_daily_limit(account.api),
        });
    }
    Ok(subjects)
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
        }
    }

    #[test]
    fn thresholds() {
        let ok = evaluate(&[subject("wxA", Some(3600))], 1800, 600);
        assert_eq!(ok.0, State::Ok);
        assert_eq!(
            ok.1,
            "WXTOKEN OK - 1 account, least time left 1h00m | 'min_ttl'=3600s;1800:;600:;0 \
             'accounts'=1;;;0 'critical'=0;;;0 'warning'=0;;;0"
        );
        assert_eq!(
            evaluate(&[subject("wxA", Some(1799))], 1800, 600).0,
            State::Warning
        );
        assert_eq!(
            evaluate(&[subject("wxA", Some(599))], 1800, 600).0,
            State::Critical
        );
        let none = evaluate(&[subject("wxA", None)], 1800, 600);
        assert_eq!(none.0, State::Critical);
        assert!(none.1.contains("wxA: no valid token"), "{}", none.1);
        assert!(none.1.contains("'min_ttl'=0s;"), "{}", none.1);
        assert_eq!(evaluate(&[], 1800, 600).0, State::Unknown);
    }

    #[test]
    fn held_or_failing_is_at_least_warning() {
        let mut held = subject("wxH", Some(7000));
        held.held = true;
        let (state, line) = evaluate(&[subject("wxA", Some(7000)), held.clone()], 1800, 600);
        assert_eq!(state, State::Warning);
        assert!(line.contains("wxH: held"), "{line}");
        held.ttl = None;
        assert_eq!(evaluate(&[held], 1800, 600).0, State::Critical);
        let mut failing = subject("wxF", Some(7000));
        failing.last_failure = Some("40164".into());
        let (state, line) = evaluate(&[failing], 1800, 600);
        assert_eq!(state, State::Warning);
        assert!(line.contains("last fetch failed: 40164"), "{line}");
    }

    #[test]
    fn near_the_daily_quota_is_a_warning() {
        let mut busy = subject("wxQ", Some(7000));
        busy.fetches_today = 1_599;
        assert_eq!(
            evaluate(std::slice::from_ref(&busy), 1800, 600).0,
            State::Ok
        );
        busy.fetches_today = 1_600;
        let (state, line) = evaluate(&[busy], 1800, 600);
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
        let (state, line) = evaluate(&subjects, 1800, 250);
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
