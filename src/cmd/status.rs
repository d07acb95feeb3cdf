//! `wxtoken status`: the database path, and per account its newest token and last attempt.

use anyhow::Result;
use serde_json::{Value, json};

use super::{emit, human, rfc3339};
use crate::exit;
use crate::policy;
use crate::store::{ACCESS_TOKEN, Account, AttemptRow, Store};

pub fn run(store: &Store, json_out: bool, now: i64) -> Result<u8> {
    let mut rows = Vec::new();
    for account in store.accounts()? {
        let token = store.latest_token(&account.key, ACCESS_TOKEN)?;
        let attempt = store.last_attempt(account.id)?;
        rows.push((account, token, attempt));
    }
    if json_out {
        let accounts: Vec<Value> = rows
            .iter()
            .map(|(a, token, attempt)| {
                json!({
                    "appid": a.key.appid,
                    "agentid": (!a.key.agent.is_empty()).then_some(&a.key.agent),
                    "api": a.api.as_str(),
                    "enabled": a.enabled,
                    "token": token.as_ref().map(|t| json!({
                        "fetched_at": rfc3339(t.fetched_at),
                        "expires_at": rfc3339(t.expires_at),
                        "expires_in": policy::remaining(t.expires_at, now),
                        "valid": policy::usable(t.expires_at, now, 0),
                    })),
                    "held": held(a, now).map(|(until, reason)| json!({"until": until, "reason": reason})),
                    "last_attempt": attempt.as_ref().map(attempt_json),
                })
            })
            .collect();
        let doc = json!({ "database": store.path().display().to_string(), "accounts": accounts });
        emit(&format!("{doc}\n"))?;
        return Ok(exit::OK);
    }
    let mut text = format!("database {}\n", store.path().display());
    if rows.is_empty() {
        text += "no accounts; add one with `wxtoken account add`\n";
    }
    for (a, token, attempt) in &rows {
        let token_text = match token {
            None => "no token yet".to_string(),
            Some(t) if t.expires_at <= now => {
                format!(
                    "token fetched {} ago, EXPIRED {} ago",
                    human(now - t.fetched_at),
                    human(now - t.expires_at)
                )
            }
            Some(t) => format!(
                "token fetched {} ago, {} left",
                human(now - t.fetched_at),
                human(t.expires_at - now)
            ),
        };
        text += &format!(
            "{}  api={} {}  {}\n",
            a.key,
            a.api.as_str(),
            if a.enabled { "enabled" } else { "DISABLED" },
            token_text
        );
        if let Some((until, reason)) = held(a, now) {
            text += &format!("    SKIPPED by refresh {until}: {reason}\n");
        }
        if let Some(at) = attempt {
            text += &format!(
                "    last attempt {} ago: {}\n",
                human(now - at.started_at),
                attempt_text(at)
            );
        }
    }
    emit(&text)?;
    Ok(exit::OK)
}

/// Why refresh skips the account, and until when, if it does.
fn held(a: &Account, now: i64) -> Option<(String, String)> {
    let until = a.held_until.filter(|&t| t > now)?;
    let until = if until == policy::UNTIL_FIXED {
        "until its secret is updated or it is re-enabled".to_string()
    } else {
        format!("until {}", rfc3339(until))
    };
    Some((until, a.held_reason.clone().unwrap_or_default()))
}

fn attempt_text(a: &AttemptRow) -> String {
    let tries = if a.tries > 1 {
        format!(" after {} tries", a.tries)
    } else {
        String::new()
    };
    match a.outcome.as_str() {
        "ok" => format!("ok{tries}"),
        "errcode" => {
            let code = a.errcode.unwrap_or(0);
            let msg = a.errmsg.as_deref().unwrap_or("");
            match policy::hint(code, msg) {
                Some(hint) => format!("errcode {code} ({msg}){tries}: {hint}"),
                None => format!("errcode {code} ({msg}){tries}"),
            }
        }
        "http" => format!("HTTP status {}{tries}", a.http_status.unwrap_or(0)),
        other => format!("{other}: {}{tries}", a.detail.as_deref().unwrap_or("")),
    }
}

fn attempt_json(a: &AttemptRow) -> Value {
    json!({
        "at": rfc3339(a.started_at),
        "duration_ms": a.duration_ms,
        "tries": a.tries,
        "outcome": a.outcome,
        "errcode": a.errcode,
        "errmsg": a.errmsg,
        "hint": a.errcode.and_then(|c| policy::hint(c, a.errmsg.as_deref().unwrap_or(""))),
        "http_status": a.http_status,
        "detail": a.detail,
    })
}
