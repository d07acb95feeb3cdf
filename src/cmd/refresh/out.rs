//! What `refresh` reports besides its stderr lines: `--json` lines for log shippers, the
//! progress counter on a terminal, and the run's row for monitoring.

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{Value, json};

use crate::cmd::{Context, emit};
use crate::config::RefreshConfig;
use crate::domain::{Account, Failure, TokenRow};
use crate::engine::Done;
use crate::exit::Exit;
use crate::policy;
use crate::store::{RunRow, Store};
use crate::text::rfc3339;

/// Runs last this long in the `runs` table (the newest success stays whatever its age).
const RUN_RETENTION: i64 = 30 * 86_400;

/// After the stderr report: records the run for monitoring, prints the `--json` lines and
/// writes the metrics file. Returns the exit code, raised to 1 if the metrics file could
/// not be written (a monitoring gap must not pass in silence).
pub fn after_run(
    ctx: &Context,
    store: &dyn Store,
    tallied: RunRow,
    cfg: &RefreshConfig,
    started: Instant,
    exit: Exit,
) -> Result<Exit> {
    let started_at = ctx.now() - started.elapsed().as_secs() as i64;
    let run = RunRow {
        started_at,
        finished_at: ctx.now(),
        duration_ms: started.elapsed().as_millis() as i64,
        scope: match (
            cfg.accounts.is_empty() && cfg.platforms.is_empty(),
            cfg.want,
        ) {
            (false, _) => "named",
            (true, crate::freshness::Want::ExpiringWithin(_)) => "ahead",
            (true, _) => "all",
        }
        .to_string(),
        ..tallied
    };
    if let Err(err) = store.record_run(&run, run.started_at - RUN_RETENTION) {
        log::warn!("could not record the run for monitoring: {err}");
    }
    // The account lines went out batch by batch; the summary ends them.
    if cfg.json {
        emit(&format!("{}\n", summary_line(&run, exit)))?;
    }
    if let Some(path) = &cfg.metrics_file {
        let written = crate::cmd::report::metrics_text(store, ctx.now())
            .and_then(|text| crate::metrics::write_atomic(path, &text));
        if let Err(err) = written {
            eprintln!("wxtoken: error: {err:#}");
            // A run that worked but left monitoring blind is not a success; a failed
            // run keeps its own code.
            return Ok(if exit == Exit::Ok { Exit::Error } else { exit });
        }
    }
    Ok(exit)
}

/// The run's counts, for the `runs` table: held and failed apart, whatever the mode.
pub fn tally(results: &[Done], run: &mut RunRow) {
    run.accounts += results.len() as i64;
    for done in results {
        match done {
            Done::Refreshed => run.refreshed += 1,
            Done::Fresh => run.fresh += 1,
            Done::Busy => run.busy += 1,
            Done::Held(..) => run.held += 1,
            Done::Failed(_)
            | Done::TicketFailed(..)
            | Done::Unrecorded(_)
            | Done::LostClaim(_)
            | Done::Waiting(_) => run.failed += 1,
            // Neither fetched nor failed: left to the next run.
            Done::NotTried => {}
        }
    }
}

/// One `--json` line for an account, given its newest token after the run. Fields are only
/// ever added, never renamed or removed; no field carries a token or a secret.
pub fn account_line(account: &Account, done: &Done, newest: Option<&TokenRow>, now: i64) -> Value {
    let (outcome, failure, ticket, held_until) = match done {
        Done::Refreshed => ("refreshed", None, None, None),
        Done::Fresh => ("fresh", None, None, None),
        Done::Busy => ("busy", None, None, None),
        Done::Held(until, _) => ("held", None, None, Some(*until)),
        Done::Failed(f) => ("failed", Some(f), None, None),
        Done::TicketFailed(t, f) => ("ticket_failed", Some(f), Some(t.as_str()), None),
        Done::Unrecorded(_) => ("unrecorded", None, None, None),
        Done::LostClaim(_) => ("lost_claim", None, None, None),
        Done::NotTried => ("not_tried", None, None, None),
        Done::Waiting(_) => ("waiting", None, None, None),
    };
    let (errcode, errmsg) = match failure {
        Some(Failure::WeChat { errcode, errmsg }) => (Some(*errcode), Some(errmsg.as_str())),
        _ => (None, None),
    };
    let hint = errcode.and_then(|code| {
        let msg = errmsg.unwrap_or("");
        if ticket.is_some() {
            policy::ticket_hint(code, msg)
        } else {
            policy::platform_hint(account.api, code, msg).or_else(|| policy::hint(code, msg))
        }
    });
    let error = match done {
        Done::Held(_, reason) => Some(reason.clone()),
        Done::Failed(f) => Some(f.for_api(account.api)),
        Done::TicketFailed(_, f) => Some(f.for_ticket()),
        Done::Unrecorded(e) | Done::LostClaim(e) | Done::Waiting(e) => Some(e.clone()),
        _ => None,
    };
    let valid = newest.filter(|t| crate::freshness::usable(&t.stored(), now, 0));
    // The platform the account is or belongs to: what a `waiting` line waits for.
    let (platform_kind, platform) = match account.api {
        api if api.is_platform() => (Some(api.noun()), Some(account.key.appid.as_str())),
        api => match api.platform_kind() {
            Some(kind) => (Some(kind.noun()), Some(account.key.agent.as_str())),
            None => (None, None),
        },
    };
    json!({
        "type": "account",
        "account": account.key.to_string(),
        "appid": account.key.appid,
        "agentid": (!account.key.agent.is_empty()).then_some(&account.key.agent),
        "api": account.api.as_str(),
        "platform_kind": platform_kind,
        "platform": platform,
        "outcome": outcome,
        "ticket": ticket,
        "errcode": errcode,
        "errmsg": errmsg,
        "hint": hint,
        "error": error,
        "held_until": held_until.filter(|&t| !policy::until_fixed(t)).map(rfc3339),
        "expires_at": valid.map(|t| rfc3339(t.stored().trusted_until())),
        "expires_in": valid.and_then(|t| t.stored().left(now)),
    })
}

/// The `--json` summary line that ends a run.
pub fn summary_line(run: &RunRow, exit: Exit) -> Value {
    json!({
        "type": "summary",
        "scope": run.scope,
        "accounts": run.accounts,
        "refreshed": run.refreshed,
        "fresh": run.fresh,
        "busy": run.busy,
        "held": run.held,
        "failed": run.failed,
        "started_at": rfc3339(run.started_at),
        "duration_ms": run.duration_ms,
        "exit_code": exit.code(),
    })
}

/// A one-line counter on stderr while a run on a terminal works through its accounts.
/// Off a terminal (cron, systemd) it is off: the journal and cron mail get failures only.
pub struct Progress {
    total: usize,
    state: Option<Mutex<Drawn>>,
}

struct Drawn {
    done: usize,
    failed: usize,
    last: Option<Instant>,
}

/// At most about ten redraws a second.
const REDRAW: Duration = Duration::from_millis(100);

impl Progress {
    pub fn new(total: usize, on: bool) -> Progress {
        let state = on.then(|| {
            Mutex::new(Drawn {
                done: 0,
                failed: 0,
                last: None,
            })
        });
        Progress { total, state }
    }

    /// Counts one finished account and redraws, unless it did so very recently.
    pub fn tick(&self, done: &Done) {
        let Some(state) = &self.state else { return };
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        s.done += 1;
        if matches!(
            done,
            Done::Failed(_)
                | Done::TicketFailed(..)
                | Done::Unrecorded(_)
                | Done::LostClaim(_)
                | Done::Waiting(_)
                | Done::Held(..)
        ) {
            s.failed += 1;
        }
        let due = s.last.is_none_or(|t| t.elapsed() >= REDRAW) || s.done == self.total;
        if due {
            s.last = Some(Instant::now());
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r{}", line(s.done, self.total, s.failed));
            let _ = err.flush();
        }
    }

    /// Erases the counter, so that the lines that follow start clean.
    pub fn finish(&self) {
        if self.state.is_some() && self.total > 0 {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
        }
    }
}

/// The counter's text.
fn line(done: usize, total: usize, failed: usize) -> String {
    let width = total.to_string().len();
    format!("refreshing [{done:>width$}/{total}] {failed} failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_text() {
        assert_eq!(line(7, 1200, 2), "refreshing [   7/1200] 2 failed");
        assert_eq!(line(1, 1, 0), "refreshing [1/1] 0 failed");
    }

    #[test]
    fn tally_keeps_held_and_failed_apart() {
        let mut run = RunRow::default();
        let results = [
            Done::Refreshed,
            Done::Fresh,
            Done::Held(0, String::new()),
            Done::Unrecorded(String::new()),
        ];
        tally(&results, &mut run);
        assert_eq!(
            (run.accounts, run.refreshed, run.fresh, run.held, run.failed),
            (4, 1, 1, 1, 1)
        );
    }
}
