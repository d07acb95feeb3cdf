//! `wxtoken get`: print the newest valid token. Read-only, one indexed query.

use anyhow::Result;
use serde_json::json;

use super::{emit, human, rfc3339};
use crate::cli::GetArgs;
use crate::exit::{self, fail};
use crate::policy;
use crate::store::{ACCESS_TOKEN, AccountKey, Store, TokenRow};

pub fn run(store: &Store, key: &AccountKey, args: &GetArgs, now: i64) -> Result<u8> {
    let min_ttl = args.min_ttl.as_secs() as i64;
    let row = store.latest_token(key, ACCESS_TOKEN)?;
    let row = usable_or_reason(store, key, row, now, min_ttl)?;
    let text = if args.json {
        let mut obj = json!({
            "appid": key.appid,
            "access_token": row.token,
            "expires_in": policy::remaining(row.expires_at, now),
            "fetched_at": rfc3339(row.fetched_at),
            "expires_at": rfc3339(row.expires_at),
        });
        if !key.agent.is_empty() {
            obj["agentid"] = json!(key.agent);
        }
        format!("{obj}\n")
    } else {
        format!("{}\n", row.token)
    };
    emit(&text)?;
    Ok(exit::OK)
}

/// The row if it may be handed out, else the one-line reason, exiting `NO_TOKEN`.
fn usable_or_reason(
    store: &Store,
    key: &AccountKey,
    row: Option<TokenRow>,
    now: i64,
    min_ttl: i64,
) -> Result<TokenRow> {
    let reason = match row {
        Some(row) if policy::usable(row.expires_at, now, min_ttl) => return Ok(row),
        Some(row) if row.expires_at <= now => format!(
            "the newest token expired {} ago, at {}; check `wxtoken status` and that cron runs `wxtoken refresh`",
            human(now - row.expires_at),
            rfc3339(row.expires_at)
        ),
        Some(row) => format!(
            "the newest token has {} left, less than --min-ttl {}",
            human(row.expires_at - now),
            human(min_ttl)
        ),
        // Only on this failure path do we spend a second query to tell the cases apart.
        None if store.account(key)?.is_none() => {
            "no such account (see wxtoken account list)".to_string()
        }
        None => "no token fetched yet; run `wxtoken refresh`".to_string(),
    };
    Err(fail(
        exit::NO_TOKEN,
        format!("no valid token for {key}: {reason}"),
    ))
}
