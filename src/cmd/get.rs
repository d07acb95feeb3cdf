//! `wxtoken get`: print the newest valid token. Read-only, one indexed query, unless the
//! caller rejects a token (`--reject`), which has the engine fetch a new one.

use anyhow::Result;
use serde_json::json;

use super::{Context, emit, stdin_line};
use crate::config::GetConfig;
use crate::domain::{AccountKey, Api, Credential, TokenRow};
use crate::engine::{self, Stop};
use crate::exit::{Exit, fail};
use crate::freshness;
use crate::store::ReadStore;
use crate::text::{held_text, human, rfc3339};

pub fn run(ctx: &Context, cfg: &GetConfig) -> Result<Exit> {
    let key = &cfg.key;
    let row = match &cfg.reject {
        None => {
            crate::store::lean_sqlite_process();
            let mut tries = 0;
            loop {
                tries += 1;
                // Not closed: the process ends right after, and the kernel releases what
                // closing would (file locks, maps, the socket) for less than closing
                // costs (under callgrind, ~100,000 instructions of a 1.9 M `get` on SQLite).
                let store = std::mem::ManuallyDrop::new(ctx.read_store()?);
                let row = store.latest_token(key, cfg.kind)?;
                // Read in place in a read-only directory: a writer that came by meanwhile
                // may have torn what we read, so read again.
                if store.consistent() || tries == 3 {
                    break usable_or_reason(store.as_ref(), cfg, row, ctx.now())?;
                }
            }
        }
        Some((rejected, api)) => {
            let rejected = if rejected == "-" {
                stdin_line("the rejected token")?
            } else {
                rejected.clone()
            };
            let rejected = rejected.trim();
            if rejected.is_empty() {
                return Err(fail(
                    Exit::Usage,
                    "--reject needs the token that failed, or - to read it from stdin",
                ));
            }
            let store = ctx.existing_store()?;
            ctx.unlock(store.as_ref(), false)?;
            // Read once, after the key is loaded (its secret opens only then), for the
            // fetch and the publish alike.
            let Some(account) = store.account(key)? else {
                return Err(fail(
                    Exit::NoToken,
                    format!("no valid token for {key}: no such account"),
                ));
            };
            crate::vault::require_open(&account)?;
            let client = ctx.client(api);
            let row = engine::renew(
                store.as_ref(),
                &client,
                &account,
                rejected,
                cfg.min_ttl,
                api.claim_ttl,
                ctx.clock,
            )?;
            // The caller gets its token either way: a failed publish is a warning here,
            // recorded on the sink, and retried by the next refresh. Pruning is left to it.
            let settled = engine::settle(
                store.as_ref(),
                std::slice::from_ref(&account),
                ctx.clock,
                &Stop::default(),
                None,
                "warning: ",
            );
            if let Some(err) = settled.unreachable {
                eprintln!("wxtoken: warning: could not publish to the sinks: {err}");
            }
            row
        }
    };
    emit(&render(key, cfg.role, cfg.kind, &row, cfg.json, ctx.now()))?;
    Ok(Exit::Ok)
}

fn render(
    key: &AccountKey,
    role: Option<Api>,
    kind: Credential,
    row: &TokenRow,
    json: bool,
    now: i64,
) -> String {
    if !json {
        return format!("{}\n", row.token);
    }
    let field = match kind {
        Credential::AccessToken => "access_token",
        Credential::Ticket(_) => "ticket",
    };
    let mut obj = json!({
        "appid": key.appid,
        field: row.token,
        "expires_in": row.stored().left(now).unwrap_or(0),
        "fetched_at": rfc3339(row.fetched_at),
        // The end get believes in: an unrecorded classic fetch may have brought it forward.
        "expires_at": rfc3339(row.stored().trusted_until()),
    });
    match role {
        None if key.is_wecom() => obj["agentid"] = json!(key.agent),
        None => {}
        Some(Api::Component) => obj["component"] = json!(key.appid),
        Some(Api::Suite) => obj["suite"] = json!(key.appid),
        Some(Api::Provider) => obj["provider_corpid"] = json!(key.appid),
        Some(Api::Authorizer) => obj["component"] = json!(key.agent),
        Some(_) => {
            obj["corpid"] = json!(key.appid);
            obj["suite"] = json!(key.agent);
        }
    }
    if matches!(
        role,
        Some(Api::Component | Api::Suite | Api::Provider | Api::Corp)
    ) {
        if let Some(o) = obj.as_object_mut() {
            o.remove("appid");
        }
        if role == Some(Api::Corp) {
            obj["corpid"] = json!(key.appid);
        }
    }
    if let Credential::Ticket(t) = kind {
        obj["type"] = json!(t.as_str());
    }
    format!("{obj}\n")
}

/// The row if it may be handed out, else the one-line reason, exiting `NoToken`.
fn usable_or_reason(
    store: &dyn ReadStore,
    cfg: &GetConfig,
    row: Option<TokenRow>,
    now: i64,
) -> Result<TokenRow> {
    let (key, kind, min_ttl) = (&cfg.key, cfg.kind, cfg.min_ttl);
    let stored = row.as_ref().map(TokenRow::stored);
    let reason = match (row, stored) {
        (Some(row), Some(s)) if freshness::usable(&s, now, min_ttl) => return Ok(row),
        (Some(row), Some(s)) if s.fetched_in_the_future(now) => format!(
            "the newest one was fetched at {}, {} in the future: the clock stepped back since; \
             run `wxtoken refresh` to fetch a token this clock can judge",
            rfc3339(row.fetched_at),
            human(row.fetched_at - now)
        ),
        (Some(_), Some(s)) if s.cut_short() && s.trusted_until() <= now => format!(
            "a fetch that started at {} was never recorded (the refresher died or could not \
             write), and WeChat retires the old token 5 minutes after a new fetch; run \
             `wxtoken refresh` (see `wxtoken status`)",
            rfc3339(s.unfinished_fetch.unwrap_or_default())
        ),
        (Some(_), Some(s)) if s.trusted_until() <= now => format!(
            "the newest one expired {} ago, at {}; check `wxtoken status` and that cron runs `wxtoken refresh`",
            human(now - s.trusted_until()),
            rfc3339(s.trusted_until())
        ),
        (Some(_), Some(s)) => format!(
            "the newest one has {} left, less than --min-ttl {}{}",
            human(s.left(now).unwrap_or(0)),
            human(min_ttl),
            if s.cut_short() {
                " (an unrecorded fetch shortened its life)"
            } else {
                ""
            }
        ),
        // Only on this failure path do we spend a second query to tell the cases apart.
        _ => match store.account(key)? {
            None => "no such account (see wxtoken account list)".to_string(),
            Some(a) if cfg.role.is_some_and(|r| r != a.api) => format!(
                "{key} is a {}, not a {}",
                a.api.noun(),
                cfg.role.map_or("account", Api::noun)
            ),
            Some(a) if a.api.is_platform() && kind == Credential::AccessToken => {
                let created = store.ticket_times(a.id)?.map(|t| t.0);
                match crate::engine::platform::ticket_problem(a.api, created, now) {
                    Some(why) => format!("none fetched yet; {why}"),
                    None => "no token fetched yet; run `wxtoken refresh`".to_string(),
                }
            }
            Some(a) => match (a.held_at(now), kind) {
                (Some((until, reason)), _) => format!(
                    "none fetched yet, and refresh skips it {}: {reason}",
                    held_text(until)
                ),
                (None, Credential::Ticket(t)) => format!(
                    "none fetched yet; turn it on with `wxtoken account set-tickets ... --ticket {}` \
                     and run `wxtoken refresh`",
                    t.as_str()
                ),
                (None, Credential::AccessToken) => {
                    "no token fetched yet; run `wxtoken refresh`".to_string()
                }
            },
        },
    };
    Err(fail(
        Exit::NoToken,
        format!("no valid {} for {key}: {reason}", kind.label()),
    ))
}
