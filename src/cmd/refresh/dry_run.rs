//! `refresh --dry-run`: which accounts a refresh would fetch now, and why. It never calls
//! WeChat, because a fetch rotates the token (the classic API invalidates the previous
//! one), and writes nothing: no claim, no attempt, no run.

use anyhow::Result;
use serde_json::json;

use crate::cmd::emit;
use crate::config::RefreshConfig;
use crate::domain::{Account, Credential, TokenRow};
use crate::exit::Exit;
use crate::freshness::{self, Want};
use crate::store::ReadStore;
use crate::text::{held_text, human};

pub fn run(
    store: &dyn ReadStore,
    accounts: &[Account],
    cfg: &RefreshConfig,
    now: i64,
) -> Result<Exit> {
    let json_out = cfg.json;
    // As a run starting now would see it: every row there is older than the run.
    let want = match cfg.want {
        Want::Due { .. } => Want::Due {
            newest_at_start: store.newest_token_id()?,
        },
        other => other,
    };
    let mut text = String::new();
    let mut due_count = 0;
    for account in accounts {
        let (due, reason) = account_due(store, account, want, now)?;
        due_count += usize::from(due);
        if json_out {
            let line = json!({
                "type": "account",
                "account": account.key.to_string(),
                "appid": account.key.appid,
                "agentid": (!account.key.agent.is_empty()).then_some(&account.key.agent),
                "due": due,
                "reason": reason,
            });
            text += &format!("{line}\n");
        } else {
            let word = if due { "due" } else { "not due" };
            text += &format!("{}  {word}: {reason}\n", account.key);
        }
    }
    if json_out {
        let line = json!({
            "type": "summary",
            "dry_run": true,
            "accounts": accounts.len(),
            "due": due_count,
        });
        text += &format!("{line}\n");
    }
    emit(&text)?;
    Ok(Exit::Ok)
}

/// Whether refresh would fetch this account now, and why, tickets included.
fn account_due(
    store: &dyn ReadStore,
    account: &Account,
    want: Want,
    now: i64,
) -> Result<(bool, String)> {
    if let Some((until, reason)) = account.held_at(now)
        && want != Want::Always
    {
        return Ok((false, format!("held {}: {reason}", held_text(until))));
    }
    let mut first = None;
    for kind in account.credentials() {
        let newest = store.latest_token(&account.key, kind)?;
        let asked = account.fetch_due && kind == Credential::AccessToken;
        // As refresh decides: a platform kind's token only ahead of its expiry.
        let want = crate::engine::want_for(account.api, want);
        let (due, reason) = due_reason(&kind.label(), newest.as_ref(), asked, now, want);
        if due {
            return Ok((true, reason));
        }
        // Not due: the token's reason speaks for the account.
        first.get_or_insert(reason);
    }
    Ok((false, first.unwrap_or_default()))
}

/// Why a credential (`what`: "token", "jsapi ticket") is due or not under `want`; the same
/// decision as `freshness::needs_fetch`, in words. `asked`: set-secret or enable since the
/// last fetch.
pub fn due_reason(
    what: &str,
    newest: Option<&TokenRow>,
    asked: bool,
    now: i64,
    want: Want,
) -> (bool, String) {
    let due = freshness::needs_fetch(newest.map(|t| (t.id, t.stored())), asked, now, want);
    let Some(t) = newest else {
        return (due, format!("no {what} yet"));
    };
    let stored = t.stored();
    let Some(left) = stored.left(now) else {
        return (
            due,
            format!(
                "newest {what} fetched {} in the future: the clock stepped back",
                human(t.fetched_at - now)
            ),
        );
    };
    let left_text = if left > 0 {
        format!("{} left", human(left))
    } else {
        format!("expired {} ago", human(-left))
    };
    let age = now - t.fetched_at;
    let reason = match (want, stored.unfinished_fetch) {
        (Want::Always, _) => format!("--force fetches every account ({what} {left_text})"),
        (_, Some(at)) => format!(
            "a fetch that started {} ago was never recorded ({what} {left_text})",
            human(now - at)
        ),
        _ if asked => format!(
            "its secret was replaced or it was re-enabled since the last fetch ({what} {left_text})"
        ),
        (Want::Due { .. }, _) if due => {
            format!("newest {what} fetched {} ago, {left_text}", human(age))
        }
        (Want::Due { .. }, _) => format!(
            "newest {what} fetched {} ago by a run that started after this one",
            human(age)
        ),
        (Want::ExpiringWithin(w), _) if due => {
            format!("newest {what} {left_text}, within {}", human(w))
        }
        (Want::ExpiringWithin(w), _) => {
            format!("newest {what} {left_text}, more than {}", human(w))
        }
    };
    (due, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(fetched_at: i64, expires_at: i64) -> TokenRow {
        TokenRow {
            id: 5,
            token: String::new(),
            expires_in: expires_at - fetched_at,
            fetched_at,
            expires_at,
            unfinished_fetch: None,
            classic: true,
        }
    }

    #[test]
    fn reasons() {
        let now = 10_000;
        let run = Want::Due { newest_at_start: 5 };
        assert_eq!(
            due_reason("token", None, false, now, run),
            (true, "no token yet".into())
        );
        let old = row(now - 3600, now + 3600);
        assert_eq!(
            due_reason("token", Some(&old), false, now, run),
            (true, "newest token fetched 1h00m ago, 1h00m left".into())
        );
        let later = Want::Due { newest_at_start: 4 };
        let (due, why) = due_reason("token", Some(&old), false, now, later);
        assert!(!due && why.contains("started after this one"), "{why}");
        let (due, why) = due_reason("token", Some(&old), true, now, Want::ExpiringWithin(300));
        assert!(due && why.contains("secret was replaced"), "{why}");
        let (due, why) = due_reason("token", Some(&old), false, now, Want::ExpiringWithin(300));
        assert!(!due && why.contains("more than 5m"), "{why}");
        let ending = row(now - 7000, now + 200);
        let (due, why) = due_reason(
            "jsapi ticket",
            Some(&ending),
            false,
            now,
            Want::ExpiringWithin(300),
        );
        assert!(
            due && why == "newest jsapi ticket 3m left, within 5m",
            "{why}"
        );
        let gone = row(now - 9000, now - 1800);
        let (due, why) = due_reason("token", Some(&gone), false, now, Want::Always);
        assert!(due && why.contains("expired 30m ago"), "{why}");
    }
}
