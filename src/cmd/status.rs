//! `wxtoken status`: the database path, and per account its newest token (and tickets),
//! the last attempt at each, and why refresh skips it, if it does.

use anyhow::Result;
use serde_json::{Value, json};

use super::report::{self, AccountState, PlatformView, columns};
use super::{Context, Stream};
use crate::domain::{Account, AccountKey, Attempt, Credential, TokenRow};
use crate::engine;
use crate::exit::Exit;
use crate::freshness;
use crate::policy;
use crate::store::{AccountRows, CredentialRows};
use crate::text::{held_text, human, rfc3339};

/// One credential of an account: its access token or one of its tickets.
type Line = CredentialRows;

/// Opens the store for writing, as before: a writing open is what upgrades an older
/// schema, and the README tells people to run `status` for that.
pub fn run(ctx: &Context, json_out: bool, named: &[AccountKey]) -> Result<Exit> {
    let store = ctx.store()?;
    let now = ctx.now();
    let views = report::platform_views(store.as_ref(), now)?;
    let fetched = store.fetches_today(now)?;
    // Streamed: a page of accounts is read, then each is rendered and written, so that
    // memory does not grow with the number of accounts. The JSON document is the one
    // `json!` would build (keys in the same, sorted, order), written piece by piece.
    let mut out = Stream::new();
    if json_out {
        out.write("{\"accounts\":[")?;
    } else {
        out.write(&format!("database {}\n", store.location()))?;
    }
    let mut shown = 0usize;
    let mut show = |rows: AccountRows| -> Result<()> {
        let account = &rows.account;
        let today = fetched.get(&account.id).copied().unwrap_or(0);
        let seen = Seen {
            today,
            state: report::account_state(account, &views, now),
            platform: views.get(&account.id),
            parent: account.platform.and_then(|id| views.get(&id)),
        };
        let lines = &rows.credentials;
        if json_out {
            let sep = if shown == 0 { "" } else { "," };
            out.write(&format!(
                "{sep}{}",
                account_json(account, lines, &seen, now)
            ))?;
        } else {
            out.write(&account_text(account, lines, &seen, now))?;
        }
        shown += 1;
        Ok(())
    };
    // --appid picks accounts as refresh does; without it, disabled accounts show too.
    if named.is_empty() {
        report::each_account(store.as_ref(), false, &mut show)?;
    } else {
        for rows in report::named_accounts(store.as_ref(), named)? {
            show(rows)?;
        }
    }
    if json_out {
        let sinks = report::sinks_json(store.as_ref(), now)?;
        let database = Value::from(store.location());
        out.write(&format!("],\"database\":{database},\"sinks\":{sinks}}}\n"))?;
    } else {
        if shown == 0 {
            out.write("no accounts; add one with `wxtoken account add`\n")?;
        }
        out.write(&report::sinks_text(store.as_ref(), now)?)?;
    }
    out.finish()?;
    Ok(Exit::Ok)
}

/// What status shows of an account besides its credentials.
struct Seen<'a> {
    /// wxtoken's own token requests today.
    today: i64,
    state: AccountState,
    /// The account's own view, if it is a platform.
    platform: Option<&'a PlatformView>,
    /// Its platform's, if it is a tenant (or a 代开发 app).
    parent: Option<&'a PlatformView>,
}

fn account_text(a: &Account, lines: &[Line], seen: &Seen, now: i64) -> String {
    let today = seen.today;
    let mut text = format!(
        "{}  api={} {}\n",
        a.key,
        a.api.as_str(),
        if a.enabled { "enabled" } else { "DISABLED" }
    );
    if let Some(parent) = seen.parent {
        text += &format!(
            "    {} of {} {}\n",
            a.api.noun(),
            parent.api.noun(),
            parent.key
        );
    }
    match seen.state {
        AccountState::Revoked | AccountState::NeedsReauth => {
            text += &format!("    {}\n", seen.state.words().to_uppercase());
        }
        AccountState::Waiting if seen.platform.is_none() => {
            if let Some(parent) = seen.parent {
                text += &format!(
                    "    WAITING: its {} {} has no valid token (it needs a pushed ticket)\n",
                    parent.api.noun(),
                    parent.key
                );
            }
        }
        _ => {}
    }
    if let Some((until, reason)) = held(a, now) {
        text += &format!("    SKIPPED by refresh {until}: {reason}\n");
    }
    if let Some(view) = seen.platform {
        text += &report::platform_text(view, now);
    }
    text += &format!(
        "    fetches today: {today} (wxtoken's own token requests since midnight China time)\n"
    );
    for line in lines {
        let label = line.kind.label();
        let state = match &line.newest {
            None => format!("no {label} yet"),
            Some(t) => token_state(&label, t, now),
        };
        text += &format!("    {state}\n");
        if let Some(at) = &line.attempt {
            text += &format!(
                "      last attempt {} ago: {}\n",
                human(now - at.started_at),
                attempt_text(at, line.kind)
            );
            if let Some(offset) = freshness::clock_warning(at.clock_offset) {
                text += &format!("      CLOCK: {}\n", engine::clock_text(offset));
            }
        }
    }
    text
}

/// One token's line: its age and what is left, in the words `get` would use.
fn token_state(label: &str, t: &TokenRow, now: i64) -> String {
    let s = t.stored();
    let Some(left) = s.left(now) else {
        return format!(
            "{label} fetched at {}, {} IN THE FUTURE: the clock stepped back; refresh fetches it anew",
            rfc3339(t.fetched_at),
            human(t.fetched_at - now)
        );
    };
    let cut = match s.unfinished_fetch.filter(|_| s.cut_short()) {
        Some(at) => format!(
            " (a fetch started {} ago was never recorded: WeChat retires this token 5 minutes after it)",
            human(now - at)
        ),
        None => String::new(),
    };
    let age = human(now - t.fetched_at);
    if left <= 0 {
        format!(
            "{label} fetched {age} ago, EXPIRED {} ago{cut}",
            human(-left)
        )
    } else {
        format!("{label} fetched {age} ago, {} left{cut}", human(left))
    }
}

fn account_json(a: &Account, lines: &[Line], seen: &Seen, now: i64) -> Value {
    let mut obj = json!({
        "appid": a.key.appid,
        "agentid": a.key.is_wecom().then_some(&a.key.agent),
        "api": a.api.as_str(),
        "enabled": a.enabled,
        "state": seen.state.as_str(),
        "held": held(a, now).map(|(until, reason)| json!({"until": until, "reason": reason})),
        "fetches_today": seen.today,
        "platform": seen.platform.map(|v| report::platform_json(v, now)),
        "of_platform": seen.parent.map(|v| json!({"kind": v.api.noun(), "id": v.key.appid})),
    });
    let mut tickets = serde_json::Map::new();
    for line in lines {
        let value = json!({
            "newest": line.newest.as_ref().map(|t| json!({
                "fetched_at": rfc3339(t.fetched_at),
                "expires_at": rfc3339(t.expires_at),
                "expires_in": t.stored().left(now),
                "valid": freshness::usable(&t.stored(), now, 0),
                "fetched_in_the_future": t.stored().fetched_in_the_future(now),
                "unfinished_fetch_at": t.unfinished_fetch.map(rfc3339),
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
        "clock_offset": a.clock_offset,
        "clock_warning": freshness::clock_warning(a.clock_offset).map(engine::clock_text),
    })
}

/// Errcodes from a ticket fetch mean something else than from a token fetch.
fn hint(errcode: i64, errmsg: &str, kind: Credential) -> Option<String> {
    match kind {
        Credential::AccessToken => policy::hint(errcode, errmsg),
        Credential::Ticket(_) => policy::ticket_hint(errcode, errmsg),
    }
}
