//! What the commands show about the store, where more than one command shows it: the
//! columns of an attempt (`status`, `metrics`), the metrics snapshot (`metrics`,
//! `refresh --metrics-file`) and the lines about sinks (`sink`, `status`). Shared here so
//! that no command is the library of another.

use std::collections::HashMap;

use anyhow::Result;
use serde_json::{Value, json};

use crate::domain::{Account, AccountKey, Api, Attempt, AttemptResult, Credential, Failure};
use crate::engine::platform::{ticket_problem, ticket_refused};
use crate::metrics::{AccountMetrics, PlatformMetrics, Snapshot, render};
use crate::sink;
use crate::store::{
    AccountRows, CredentialRows, PlatformEvent, REPORT_PAGE, ReadStore, SinkRow, Store,
};
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
/// `refresh --metrics-file` writes. Accounts of their own (direct accounts, platforms,
/// providers) have series of their own; a platform's tenants (authorizers, corps, 代开发
/// apps), which may be 100,000 under one platform, are summed up in their platform's.
pub fn metrics_text(store: &dyn ReadStore, now: i64) -> Result<String> {
    let (last_run, last_success) = store.last_runs()?;
    let views = platform_views(store, now)?;
    let mut platforms: HashMap<i64, PlatformMetrics> = views
        .iter()
        .map(|(&id, v)| {
            let m = PlatformMetrics {
                name: v.key.appid.clone(),
                kind: v.api.noun(),
                ticket_age: v.ticket.map(|t| now - t.0),
                waiting: v.waiting.is_some(),
                last_failed_event: v.last_failed.as_ref().map(|e| e.at),
                ..PlatformMetrics::default()
            };
            (id, m)
        })
        .collect();
    let mut accounts = Vec::new();
    let mut tenants = 0;
    // A page of accounts at a time: a tenant adds to its platform's sums and is dropped.
    each_account(store, true, |rows| {
        let a = &rows.account;
        let access = rows
            .credentials
            .iter()
            .find(|c| c.kind == Credential::AccessToken);
        let expiry = access
            .and_then(|c| c.newest.as_ref())
            .filter(|t| crate::freshness::usable(&t.stored(), now, 0))
            .map(|t| t.stored().trusted_until());
        let last_attempt = access.and_then(|c| c.attempt.as_ref()).map(|at| {
            let (outcome, errcode, ..) = columns(at);
            (at.started_at, outcome.to_string(), errcode)
        });
        if let Some(p) = a.platform.and_then(|id| platforms.get_mut(&id)) {
            tenants += 1;
            let state = account_state(a, &views, now);
            p.tenants += 1;
            p.held += i64::from(a.held_at(now).is_some());
            p.revoked += i64::from(state == AccountState::Revoked);
            p.needs_reauth += i64::from(state == AccountState::NeedsReauth);
            p.waiting_tenants += i64::from(state == AccountState::Waiting);
            let failed = last_attempt
                .as_ref()
                .is_some_and(|(_, o, _)| !matches!(o.as_str(), "ok" | "unchanged"));
            p.failing += i64::from(failed);
            // A revoked tenant's token runs out for good: no alert on it.
            if state != AccountState::Revoked {
                let e = expiry.unwrap_or(0);
                p.tenant_expiry_min = Some(p.tenant_expiry_min.map_or(e, |m| m.min(e)));
            }
            return Ok(());
        }
        accounts.push(AccountMetrics {
            name: a.key.to_string(),
            expiry,
            held: a.held_at(now).is_some(),
            last_attempt,
        });
        Ok(())
    })?;
    let mut platforms: Vec<PlatformMetrics> = platforms.into_values().collect();
    platforms.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(render(&Snapshot {
        last_run,
        last_success,
        accounts,
        tenants,
        platforms,
    }))
}

/// Calls `each` with every account of the store (only the enabled ones if
/// `enabled_only`), in the order of `ReadStore::accounts`, with the newest row and attempt
/// of each of its credentials: read a page at a time, so that memory does not grow with
/// the number of accounts, and one query per page.
pub fn each_account(
    store: &dyn ReadStore,
    enabled_only: bool,
    mut each: impl FnMut(AccountRows) -> Result<()>,
) -> Result<()> {
    let mut after: Option<AccountKey> = None;
    loop {
        let page = store.account_page(after.as_ref(), REPORT_PAGE, enabled_only)?;
        let full = page.len() >= REPORT_PAGE;
        after = page.last().map(|r| r.account.key.clone());
        for rows in page {
            each(rows)?;
        }
        if !full {
            return Ok(());
        }
    }
}

/// What `each_account` gives, for the accounts named (as refresh picks them: see
/// `engine::targets`), a few queries each.
pub fn named_accounts(store: &dyn ReadStore, named: &[AccountKey]) -> Result<Vec<AccountRows>> {
    let mut all = Vec::new();
    for account in crate::engine::targets(store, named)? {
        let mut credentials = Vec::new();
        for kind in account.credentials() {
            credentials.push(CredentialRows {
                kind,
                newest: store.latest_token(&account.key, kind)?,
                attempt: store.last_attempt(account.id, kind)?,
            });
        }
        all.push(AccountRows {
            account,
            credentials,
        });
    }
    Ok(all)
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

/// How refresh treats an account now, in one word (`status --json`'s `state`, the check,
/// the metrics): `ok`; `disabled`; `held` (skipped after an error, see its reason);
/// `revoked` (the authorization was cancelled: no further requests, nothing to fix but
/// removing it or onboarding it again); `needs_reauth` (its durable credential is refused:
/// the merchant or corp must authorize or install again, or a 代开发 secret be reset);
/// `waiting` (a platform without a valid ticket, or a tenant whose platform has no valid
/// token: nothing is sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountState {
    Ok,
    Disabled,
    Held,
    Revoked,
    NeedsReauth,
    Waiting,
}

impl AccountState {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountState::Ok => "ok",
            AccountState::Disabled => "disabled",
            AccountState::Held => "held",
            AccountState::Revoked => "revoked",
            AccountState::NeedsReauth => "needs_reauth",
            AccountState::Waiting => "waiting",
        }
    }

    /// How people read it.
    pub fn words(self) -> &'static str {
        match self {
            AccountState::NeedsReauth => "needs re-authorization",
            other => other.as_str(),
        }
    }
}

/// The errcode a hold's reason names (`WeChat errcode N (...)`), if it names one.
fn reason_errcode(reason: &str) -> Option<i64> {
    let rest = &reason[reason.find("errcode ")? + "errcode ".len()..];
    let digits: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    digits.parse().ok()
}

/// What kind of hold an account of `api` is under, from its reason: a revocation
/// (`authorizer revoke`, 61003, 48004), a refused durable credential (61023 after a
/// resync, 40084, 41025, an expired auth code; for a 代开发 app, a reset secret), or
/// another hold.
pub fn hold_kind(account: &Account, reason: &str) -> AccountState {
    let tenant = account.api.is_tenant() || account.platform.is_some();
    hold_kind_of(account.api, tenant, reason)
}

/// `hold_kind` of an account of `api`, a tenant or not.
fn hold_kind_of(api: Api, tenant: bool, reason: &str) -> AccountState {
    if !tenant {
        return AccountState::Held;
    }
    if reason.starts_with("revoked") {
        return AccountState::Revoked;
    }
    match (api, reason_errcode(reason)) {
        (_, Some(61003 | 48004)) => AccountState::Revoked,
        (Api::Authorizer, Some(61023 | 61009 | 61010)) => AccountState::NeedsReauth,
        (Api::Corp, Some(40084 | 41025)) => AccountState::NeedsReauth,
        (Api::Work, Some(40001 | 40091 | 40084)) => AccountState::NeedsReauth,
        _ => AccountState::Held,
    }
}

/// What status, the check and the metrics show about a platform (a component, a suite).
#[derive(Debug, Clone)]
pub struct PlatformView {
    pub key: AccountKey,
    pub api: Api,
    /// When its newest ticket was created (WeChat's time) and stored.
    pub ticket: Option<(i64, i64)>,
    /// Why refresh sends nothing for it (`engine::platform::ticket_problem`).
    pub waiting: Option<String>,
    /// Seconds left on its newest token, when that is still usable for a tenant's call.
    pub token_left: Option<i64>,
    /// Its tenants (enabled or not), and how many of them refresh skips, by kind.
    pub tenants: usize,
    pub held: usize,
    pub revoked: usize,
    pub needs_reauth: usize,
    /// Its newest failed event (a push refused, an auth-code exchange that failed).
    pub last_failed: Option<PlatformEvent>,
}

/// Events read to find the newest failure: tickets are pushed every 10 minutes, so this
/// reaches back about three days of pushes.
const EVENTS_SCANNED: i64 = 500;

/// The view of every platform of the store, by account id: its ticket, token and newest
/// failed event (a few queries per platform), its tenants counted by one aggregate query,
/// never reading every account.
pub fn platform_views(store: &dyn ReadStore, now: i64) -> Result<HashMap<i64, PlatformView>> {
    let mut views = HashMap::new();
    for p in store.platforms()? {
        let ticket = store.ticket_times(p.id)?;
        let token_left = store
            .latest_token(&p.key, Credential::AccessToken)?
            .filter(|t| crate::freshness::usable(&t.stored(), now, TENANT_CALL_MIN_LEFT))
            .and_then(|t| t.stored().left(now));
        let last_failed = store
            .platform_events(p.id, EVENTS_SCANNED)?
            .into_iter()
            .find(|e| !e.ok);
        let waiting = match ticket_problem(p.api, ticket.map(|t| t.0), now) {
            Some(why) => Some(why),
            None => ticket_refused(store, &p)?,
        };
        let view = PlatformView {
            key: p.key.clone(),
            api: p.api,
            waiting,
            ticket,
            token_left,
            tenants: 0,
            held: 0,
            revoked: 0,
            needs_reauth: 0,
            last_failed,
        };
        views.insert(p.id, view);
    }
    for group in store.tenant_groups(now)? {
        let Some(view) = views.get_mut(&group.platform_id) else {
            continue;
        };
        let count = usize::try_from(group.count).unwrap_or(0);
        view.tenants += count;
        if let Some(reason) = &group.held_reason {
            view.held += count;
            match hold_kind_of(group.api, true, reason) {
                AccountState::Revoked => view.revoked += count,
                AccountState::NeedsReauth => view.needs_reauth += count,
                _ => {}
            }
        }
    }
    Ok(views)
}

/// A platform token must have this long left for a tenant's call (as refresh requires).
const TENANT_CALL_MIN_LEFT: i64 = 60;

/// The state of `account`, given the views of the platforms.
pub fn account_state(
    account: &Account,
    views: &HashMap<i64, PlatformView>,
    now: i64,
) -> AccountState {
    if !account.enabled {
        return AccountState::Disabled;
    }
    if let Some((_, reason)) = account.held_at(now) {
        return hold_kind(account, &reason);
    }
    if let Some(view) = views.get(&account.id)
        && view.waiting.is_some()
    {
        return AccountState::Waiting;
    }
    // A tenant whose platform has no token to call with (a 代开发 app needs none).
    if account.api.is_tenant()
        && let Some(view) = account.platform.and_then(|id| views.get(&id))
        && view.token_left.is_none()
    {
        return AccountState::Waiting;
    }
    AccountState::Ok
}

/// The platform's lines in `status`: its ticket, its tenants and its newest failed event.
pub fn platform_text(view: &PlatformView, now: i64) -> String {
    let mut text = String::new();
    let what = if view.api == Api::Suite {
        "suite_ticket"
    } else {
        "component_verify_ticket"
    };
    match (&view.waiting, view.ticket) {
        (Some(why), _) => text += &format!("    WAITING for a ticket: {why}\n"),
        (None, Some((created, _))) => {
            text += &format!(
                "    {what} created {} ago (valid {})\n",
                human(now - created),
                human(view.api.ticket_validity().unwrap_or(0))
            )
        }
        (None, None) => {}
    }
    let mut tenants = format!("    tenants: {}", view.tenants);
    if view.held > 0 {
        tenants += &format!(
            " ({} held: {} revoked, {} need re-authorization)",
            view.held, view.revoked, view.needs_reauth
        );
    }
    text += &tenants;
    text.push('\n');
    if let Some(e) = &view.last_failed {
        text += &format!(
            "    last failed event {} ago: {}{}: {}\n",
            human(now - e.at),
            e.event,
            e.tenant
                .as_deref()
                .map_or(String::new(), |t| format!(" ({t})")),
            e.detail.as_deref().unwrap_or("")
        );
    }
    text
}

/// The platform's object in `status --json`.
pub fn platform_json(view: &PlatformView, now: i64) -> Value {
    json!({
        "kind": view.api.noun(),
        "ticket_created_at": view.ticket.map(|t| rfc3339(t.0)),
        "ticket_received_at": view.ticket.map(|t| rfc3339(t.1)),
        "ticket_age": view.ticket.map(|t| now - t.0),
        "waiting_for_ticket": view.waiting.is_some(),
        "waiting_reason": view.waiting,
        "tenants": view.tenants,
        "tenants_held": view.held,
        "tenants_revoked": view.revoked,
        "tenants_needs_reauth": view.needs_reauth,
        "last_failed_event": view.last_failed.as_ref().map(|e| json!({
            "at": rfc3339(e.at),
            "event": e.event,
            "tenant": e.tenant,
            "detail": e.detail,
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Secret;

    fn account(api: Api, platform: Option<i64>) -> Account {
        Account {
            id: 1,
            key: AccountKey::parse("wwcorp/wwsuite").unwrap(),
            api,
            secret: Secret::new(String::new()),
            enabled: true,
            created_at: 0,
            updated_at: 0,
            held_until: None,
            held_reason: None,
            tickets: Vec::new(),
            fetch_due: false,
            platform,
            previous_secret: None,
            receiver: None,
        }
    }

    #[test]
    fn holds_read_as_revoked_or_needing_reauthorization() {
        let corp = account(Api::Corp, Some(7));
        let kind = |a: &Account, r: &str| hold_kind(a, r);
        assert_eq!(
            kind(&corp, "revoked: the authorization was cancelled"),
            AccountState::Revoked
        );
        assert_eq!(
            kind(
                &corp,
                "WeChat errcode 48004 (api forbidden): the corp cancelled"
            ),
            AccountState::Revoked
        );
        assert_eq!(
            kind(&corp, "WeChat errcode 40084 (invalid permanent_code): ..."),
            AccountState::NeedsReauth
        );
        assert_eq!(
            kind(&corp, "WeChat errcode 45009 (limit)"),
            AccountState::Held
        );
        let auth = account(Api::Authorizer, Some(7));
        assert_eq!(
            kind(
                &auth,
                "WeChat errcode 61023 (refresh_token is invalid): ..."
            ),
            AccountState::NeedsReauth
        );
        let dk = account(Api::Work, Some(7));
        assert_eq!(
            kind(&dk, "WeChat errcode 40091 (invalid corpsecret)"),
            AccountState::NeedsReauth
        );
        // A direct account's hold is a hold, whatever its errcode.
        let direct = account(Api::Work, None);
        assert_eq!(
            kind(&direct, "WeChat errcode 48004 (forbidden)"),
            AccountState::Held
        );
        assert_eq!(reason_errcode("WeChat errcode -1 (busy)"), Some(-1));
        assert_eq!(reason_errcode("no code"), None);
    }
}
