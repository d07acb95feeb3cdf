//! `wxtoken status`: the database path, and per account its newest token (and tickets),
//! the last attempt at each, and why refresh skips it, if it does.

use anyhow::Result;
use serde_json::{Value, json};

use super::{Context, emit};
use crate::domain::{Account, AccountKey, Attempt, AttemptResult, Credential, Failure, TokenRow};
use crate::exit::Exit;
use crate::policy;
use crate::quota;
use crate::text::{held_text, human, rfc3339};

/// One credential of an account: its access token or one of its tickets.
struct Line {
    kind: Credential,
    newest: Option<TokenRow>,
    attempt: Option<Attempt>,
}

/// Opens the store for writing, as before: a writing open is what upgrades an older
/// schema, and the README tells people to run `status` for that.
pub fn run(ctx: &Context, json_out: bool, named: &[AccountKey]) -> Result<Exit> {
    let store = ctx.store()?;
    let now = ctx.now();
    // --appid picks accounts as refresh does; without it, disabled accounts show too.
    let accounts = match named.is_empty() {
        true => store.accounts()?,
        false => super::refresh::targets(store.as_ref(), named)?,
    };
    let mut rows = Vec::new();
    let fetched = store.fetches_since(quota::day_start(now))?;
    for account in accounts {
        let mut lines = Vec::new();
        for kind in account.credentials() {
            lines.push(Line {
                kind,
                newest: store.latest_token(&account.key, kind)?,
                attempt: store.last_attempt(account.id, kind)?,
            });
        }
        let today = fetched.get(&account.id).copied().unwrap_or(0);
        rows.push((account, lines, today));
    }
    let text = if json_out {
        let accounts: Vec<Value> = rows
            .iter()
            .map(|(a, lines, today)| account_json(a, lines, *today, now))
            .collect();
        let sinks = super::sink::status_json(store.as_ref(), now)?;
        let doc = json!({ "database": store.location(), "accounts": accounts, "sinks": sinks });
        format!("{doc}\n")
    } else {
        let mut text = format!("database {}\n", store.location());
        if rows.is_empty() {
            text += "no accounts; add one with `wxtoken account add`\n";
        }
        for (a, lines, today) in &rows {
            text += &account_text(a, lines, *today, now);
        }
        text + &super::sink::status_text(store.as_ref(), now)?
    };
    emit(&text)?;
    Ok(Exit::Ok)
}

fn account_text(a: &Account, lines: &[Line], today: i64, now: i64) -> String {
    let mut text = format!(
        "{}  api={} {}\n",
        a.key,
        a.api.as_str(),
        if a.enabled { "enabled" } else { "DISABLED" }
    );
    if let Some((until, reason)) = held(a, now) {
        text += &format!("    SKIPPED by refresh {until}: {reason}\n");
    }
    text += &format!(
        "    fetches today: {today} (wxtoken's own token requests since midnight China time)\n"
    );
    for line in lines {
        let label = line.kind.label();
        let state = match &line.newest {
            None => format!("no {label} yet"),
            Some(t) if t.expires_at <= now => format!(
                "{label} fetched {} ago, EXPIRED {} ago",
                human(now - t.fetched_at),
                human(now - t.expires_at)
            ),
            Some(t) => format!(
                "{label} fetched {} ago, {} left",
                human(now - t.fetched_at),
                human(t.expires_at - now)
            ),
        };
        text += &format!("    {state}\n");
        if let Some(at) = &line.attempt {
            text += &format!(
                "      last attempt {} ago: {}\n",
                human(now - at.started_at),
                attempt_text(at, line.kind)
            );
        }
    }
    text
}

fn account_json(a: &Account, lines: &[Line], today: i64, now: i64) -> Value {
    let mut obj = json!({
        "appid": a.key.appid,
        "agentid": a.key.is_wecom().then_some(&a.key.agent),
        "api": a.api.as_str(),
        "enabled": a.enabled,
        "held": held(a, now).map(|(until, reason)| json!({"until": until, "reason": reason})),
        "fetches_today": today,
    });
    let mut tickets = serde_json::Map::new();
    for line in lines {
        let value = json!({
            "newest": line.newest.as_ref().map(|t| json!({
                "fetched_at": rfc3339(t.fetched_at),
                "expires_at": rfc3339(t.expires_at),
                "expires_in": policy::remaining(t.expires_at, now),
                "valid": policy::usable(t.expires_at, now, 0),
            })),
            "last_attempt": line.attempt.as_ref().map(|a| attempt_json(a, line.kind)),
        });
        if line.kind == Credential::AccessToken {
            obj["token"] = value["newest"].clone();
            obj["last_attempt"] = value["last_attempt"].clone();
        } else {
            tickets.insert(line.kind.as_str().to_string(), value);
        }
    }
    obj["tickets"] = Value::Object(tickets);
    obj
}

/// Why refresh skips the account, and until when, if it does.
fn held(a: &Account, now: i64) -> Option<(String, String)> {
    a.held_at(now)
        .map(|(until, reason)| (held_text(until), reason))
}

/// The columns an attempt had in the database: outcome, errcode, errmsg, HTTP status and
/// detail, as `status --json` has always shown them.
pub(super) type Columns<'a> = (
    &'static str,
    Option<i64>,
    Option<&'a str>,
    Option<u16>,
    Option<&'a str>,
);

pub(super) fn columns(a: &Attempt) -> Columns<'_> {
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

fn attempt_text(a: &Attempt, kind: Credential) -> String {
    let tries = if a.tries > 1 {
        format!(" after {} tries", a.tries)
    } else {
        String::new()
    };
    let (outcome, errcode, errmsg, status, detail) = columns(a);
    let detail = detail.unwrap_or("");
    match outcome {
        "ok" | "unchanged" => format!("{outcome}{tries}"),
        "errcode" => {
            let code = errcode.unwrap_or(0);
            let msg = errmsg.unwrap_or("");
            match hint(code, msg, kind) {
                Some(hint) => format!("errcode {code} ({msg}){tries}: {hint}"),
                None => format!("errcode {code} ({msg}){tries}"),
            }
        }
        "http" => format!("HTTP status {}{tries}", status.unwrap_or(0)),
        "transport" => format!("network error: {detail}{tries}"),
        other => format!("{other}: {detail}{tries}"),
    }
}

fn attempt_json(a: &Attempt, kind: Credential) -> Value {
    let (outcome, errcode, errmsg, status, detail) = columns(a);
    json!({
        "at": rfc3339(a.started_at),
        "duration_ms": a.duration_ms,
        "tries": a.tries,
        "outcome": outcome,
        "errcode": errcode,
        "errmsg": errmsg,
        "hint": errcode.and_then(|c| hint(c, errmsg.unwrap_or(""), kind)),
        "http_status": status,
        "detail": detail,
    })
}

/// Errcodes from a ticket fetch mean something else than from a token fetch.
fn hint(errcode: i64, errmsg: &str, kind: Credential) -> Option<String> {
    match kind {
        Credential::AccessToken => policy::hint(errcode, errmsg),
        Credential::Ticket(_) => policy::ticket_hint(errcode, errmsg),
    }
}
