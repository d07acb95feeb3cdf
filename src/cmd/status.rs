//! `wxtoken status`: the database path, and per account its newest token (and tickets),
//! the last attempt at each, and why refresh skips it, if it does.

use anyhow::Result;
use serde_json::{Value, json};

use super::{emit, held_text, human, rfc3339};
use crate::cli::StatusArgs;
use crate::exit;
use crate::policy;
use crate::store::{ACCESS_TOKEN, Account, AttemptRow, Store, TokenRow};

/// One credential of an account: its access token or one of its tickets.
struct Line {
    kind: &'static str,
    newest: Option<TokenRow>,
    attempt: Option<AttemptRow>,
}

pub fn run(store: &Store, args: &StatusArgs, now: i64) -> Result<u8> {
    let json_out = args.json;
    // --appid picks accounts as refresh does; without it, disabled accounts show too.
    let accounts = match args.appid.is_empty() {
        true => store.accounts()?,
        false => super::refresh::targets(store, &args.appid)?,
    };
    let mut rows = Vec::new();
    for account in accounts {
        let kinds = std::iter::once(ACCESS_TOKEN).chain(account.tickets.iter().map(|t| t.as_str()));
        let mut lines = Vec::new();
        for kind in kinds {
            lines.push(Line {
                kind,
                newest: store.latest_token(&account.key, kind)?,
                attempt: store.last_attempt(account.id, kind)?,
            });
        }
        rows.push((account, lines));
    }
    let text = if json_out {
        let accounts: Vec<Value> = rows
            .iter()
            .map(|(a, lines)| account_json(a, lines, now))
            .collect();
        let doc = json!({ "database": store.path().display().to_string(), "accounts": accounts });
        format!("{doc}\n")
    } else {
        let mut text = format!("database {}\n", store.path().display());
        if rows.is_empty() {
            text += "no accounts; add one with `wxtoken account add`\n";
        }
        for (a, lines) in &rows {
            text += &account_text(a, lines, now);
        }
        text
    };
    emit(&text)?;
    Ok(exit::OK)
}

fn account_text(a: &Account, lines: &[Line], now: i64) -> String {
    let mut text = format!(
        "{}  api={} {}\n",
        a.key,
        a.api.as_str(),
        if a.enabled { "enabled" } else { "DISABLED" }
    );
    if let Some((until, reason)) = held(a, now) {
        text += &format!("    SKIPPED by refresh {until}: {reason}\n");
    }
    for line in lines {
        let label = if line.kind == ACCESS_TOKEN {
            "token".to_string()
        } else {
            format!("{} ticket", line.kind)
        };
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

fn account_json(a: &Account, lines: &[Line], now: i64) -> Value {
    let mut obj = json!({
        "appid": a.key.appid,
        "agentid": (!a.key.agent.is_empty()).then_some(&a.key.agent),
        "api": a.api.as_str(),
        "enabled": a.enabled,
        "held": held(a, now).map(|(until, reason)| json!({"until": until, "reason": reason})),
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
        if line.kind == ACCESS_TOKEN {
            obj["token"] = value["newest"].clone();
            obj["last_attempt"] = value["last_attempt"].clone();
        } else {
            tickets.insert(line.kind.to_string(), value);
        }
    }
    obj["tickets"] = Value::Object(tickets);
    obj
}

/// Why refresh skips the account, and until when, if it does.
fn held(a: &Account, now: i64) -> Option<(String, String)> {
    let until = a.held_until.filter(|&t| t > now)?;
    Some((held_text(until), a.held_reason.clone().unwrap_or_default()))
}

fn attempt_text(a: &AttemptRow, kind: &str) -> String {
    let tries = if a.tries > 1 {
        format!(" after {} tries", a.tries)
    } else {
        String::new()
    };
    match a.outcome.as_str() {
        "ok" | "unchanged" => format!("{}{tries}", a.outcome),
        "errcode" => {
            let code = a.errcode.unwrap_or(0);
            let msg = a.errmsg.as_deref().unwrap_or("");
            match hint(code, msg, kind) {
                Some(hint) => format!("errcode {code} ({msg}){tries}: {hint}"),
                None => format!("errcode {code} ({msg}){tries}"),
            }
        }
        "http" => format!("HTTP status {}{tries}", a.http_status.unwrap_or(0)),
        "transport" => format!(
            "network error: {}{tries}",
            a.detail.as_deref().unwrap_or("")
        ),
        other => format!("{other}: {}{tries}", a.detail.as_deref().unwrap_or("")),
    }
}

fn attempt_json(a: &AttemptRow, kind: &str) -> Value {
    json!({
        "at": rfc3339(a.started_at),
        "duration_ms": a.duration_ms,
        "tries": a.tries,
        "outcome": a.outcome,
        "errcode": a.errcode,
        "errmsg": a.errmsg,
        "hint": a.errcode.and_then(|c| hint(c, a.errmsg.as_deref().unwrap_or(""), kind)),
        "http_status": a.http_status,
        "detail": a.detail,
    })
}

/// Errcodes from a ticket fetch mean something else than from a token fetch.
fn hint(errcode: i64, errmsg: &str, kind: &str) -> Option<String> {
    if kind == ACCESS_TOKEN {
        policy::hint(errcode, errmsg)
    } else {
        policy::ticket_hint(errcode, errmsg)
    }
}
