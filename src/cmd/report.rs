//! What the commands show about the store, where more than one command shows it: the
//! columns of an attempt (`status`, `metrics`), the metrics snapshot (`metrics`,
//! `refresh --metrics-file`) and the lines about sinks (`sink`, `status`). Shared here so
//! that no command is the library of another.

use anyhow::Result;
use serde_json::{Value, json};

use crate::domain::{Attempt, AttemptResult, Credential, Failure};
use crate::metrics::{AccountMetrics, Snapshot, render};
use crate::sink;
use crate::store::{ReadStore, SinkRow, Store};
use crate::text::{human, rfc3339};

/// The columns an attempt had in the database: outcome, errcode, errmsg, HTTP status and
/// detail, as `status --json` has always shown them.
pub type Columns<'a> = (
    &'static str,
    Option<i64>,
    Option<&'a str>,
    Option<u16>,
    Option<&'a str>,
);

pub fn columns(a: &Attempt) -> Columns<'_> {
    match &a.result {
        AttemptResult::Ok => ("ok", None, None, None, None),
        AttemptResult::Unchanged => ("unchanged", None, None, None, None),
        AttemptResult::Failed(f) => match f {
            Failure::WeChat { errcode, errmsg } => {
                ("errcode", Some(*errcode), Some(errmsg), None, None)
            }
            Failure::Http { status } => ("http", None, None, Some(*status), None),
            Failure::Transport(d) => ("transport", None, None, None, Some(d)),
            Failure::NotJson(d) => ("not_json", None, None, None, Some(d)),
            Failure::Invalid(d) => ("invalid", None, None, None, Some(d)),
        },
    }
}

/// The metrics as they stand in the store at `now`: what `metrics` prints and
/// `refresh --metrics-file` writes.
pub fn metrics_text(store: &dyn ReadStore, now: i64) -> Result<String> {
    let (last_run, last_success) = store.last_runs()?;
    let mut accounts = Vec::new();
    for a in store.accounts()?.into_iter().filter(|a| a.enabled) {
        let expiry = store
            .latest_token(&a.key, Credential::AccessToken)?
            .filter(|t| crate::freshness::usable(&t.stored(), now, 0))
            .map(|t| t.stored().trusted_until());
        let last_attempt = store
            .last_attempt(a.id, Credential::AccessToken)?
            .map(|at| {
                let (outcome, errcode, ..) = columns(&at);
                (at.started_at, outcome.to_string(), errcode)
            });
        accounts.push(AccountMetrics {
            name: a.key.to_string(),
            expiry,
            held: a.held_at(now).is_some(),
            last_attempt,
        });
    }
    Ok(render(&Snapshot {
        last_run,
        last_success,
        accounts,
    }))
}

/// One line about a sink, for `sink list` and `status`.
pub fn describe(s: &SinkRow) -> String {
    let mut accounts = if s.accounts.is_empty() {
        "every account".to_string()
    } else {
        s.accounts.join(",")
    };
    if s.refresh_tokens {
        accounts += " with refresh tokens";
    }
    if s.kind == "exec" {
        return format!(
            "exec {:?} accounts={accounts} timeout={}s",
            s.target, s.timeout
        );
    }
    let mut text = format!(
        "redis {} format={}",
        sink::shown_url(&s.target, s.password.is_some()),
        s.format.as_deref().unwrap_or("")
    );
    if let Some(p) = &s.prefix {
        text += &format!(" prefix={p:?}");
    }
    if let Some(k) = &s.key_template {
        text += &format!(" key={k}");
    }
    text + &format!(" accounts={accounts} timeout={}s", s.timeout)
}

pub fn sink_json(s: &SinkRow, now: i64) -> Value {
    json!({
        "name": s.name,
        "kind": s.kind,
        "target": if s.kind == "exec" { s.target.clone() } else { sink::shown_url(&s.target, s.password.is_some()) },
        "format": s.format,
        "prefix": s.prefix,
        "key": s.key_template,
        "accounts": s.accounts,
        "refresh_tokens": s.refresh_tokens,
        "timeout": s.timeout,
        "last_publish": s.last.as_ref().map(|l| json!({
            "at": rfc3339(l.at),
            "age": now - l.at,
            "ok": l.ok,
            "published": l.published,
            "failed": l.failed,
            "error": l.error,
        })),
    })
}

/// The sinks block of `status`: each sink and the outcome of its newest publish.
pub fn sinks_text(store: &dyn Store, now: i64) -> Result<String> {
    let mut text = String::new();
    for s in store.sinks()? {
        text += &format!("sink {}  {}\n", s.name, describe(&s));
        let last = match &s.last {
            None => "never published yet".to_string(),
            Some(l) if l.ok => format!(
                "last publish {} ago: ok, {} written",
                human(now - l.at),
                l.published
            ),
            Some(l) => format!(
                "last publish {} ago: FAILED, {} of {} not published: {}",
                human(now - l.at),
                l.failed,
                l.failed + l.published,
                l.error.as_deref().unwrap_or("")
            ),
        };
        text += &format!("    {last}\n");
    }
    Ok(text)
}

pub fn sinks_json(store: &dyn Store, now: i64) -> Result<Value> {
    Ok(Value::Array(
        store.sinks()?.iter().map(|s| sink_json(s, now)).collect(),
    ))
}
