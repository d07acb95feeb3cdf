//! What a platform kind needs around its fetch: a platform's pushed ticket (no valid
//! ticket, no request), a tenant's platform token (held or missing: no request), and the
//! recoveries a tenant's call may need, each at most once per platform per run and shared
//! by every worker (single-flight): one refetch of the platform token when WeChat rejects
//! it (only if the rejected one is still the newest), one `authorizer sync` when a refresh
//! token is refused (61023), and stopping calls for a platform whose failure is its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Claimed, Done, Stop, record, with_claim};
use crate::domain::{Account, AccountKey, Api, Credential, Failure, Outcome, Secret, TokenRow};
use crate::freshness;
use crate::policy;
use crate::store::Store;
use crate::wechat::{Client, Credentials};

/// A platform token must have this long left to be used for a tenant's call.
const PLATFORM_TOKEN_MIN_LEFT: i64 = 60;

/// What a fetch needs, read before anything is sent.
pub(super) enum Prepared {
    /// A plain account, or a provider: its secret is all.
    Plain,
    /// A platform, with its newest valid ticket.
    Platform { ticket: Secret },
    /// A tenant, with its platform and the platform's newest valid token.
    Tenant {
        platform: Box<Account>,
        token: String,
    },
}

/// The run's shared state per platform (see the module's comment).
#[derive(Default)]
pub struct Flights {
    platforms: Mutex<HashMap<i64, Arc<Mutex<Flight>>>>,
    /// Each platform's account and newest token as its tenants last read them, by the
    /// platform's appid: 100,000 tenants read them once every few seconds, not twice each
    /// (on PostgreSQL two round trips per tenant).
    contexts: Mutex<HashMap<String, (Instant, Option<PlatformContext>)>>,
}

/// A platform's account and its newest token row, as its tenants read them.
type PlatformContext = (Account, Option<TokenRow>);

/// How long a platform's account and token read for its tenants are reused.
const CONTEXT_FOR: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Flight {
    refetched: bool,
    synced: bool,
    /// Why the platform's tenants are not called again in this run.
    blocked: Option<String>,
}

impl Flights {
    fn of(&self, platform_id: i64) -> Arc<Mutex<Flight>> {
        let mut map = self.platforms.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(platform_id).or_default().clone()
    }

    fn blocked(&self, platform_id: i64) -> Option<String> {
        let flight = self.of(platform_id);
        let flight = flight.lock().unwrap_or_else(|e| e.into_inner());
        flight.blocked.clone()
    }

    /// The platform's account and newest token, read at most every `CONTEXT_FOR`.
    fn context(
        &self,
        store: &dyn Store,
        key: &AccountKey,
    ) -> Result<Option<PlatformContext>, crate::store::StoreError> {
        {
            let map = self.contexts.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, cached)) = map.get(&key.appid)
                && at.elapsed() < CONTEXT_FOR
            {
                return Ok(cached.clone());
            }
        }
        let read = match store.account(key)? {
            Some(platform) => {
                let token = store.latest_token(key, Credential::AccessToken)?;
                Some((platform, token))
            }
            None => None,
        };
        let mut map = self.contexts.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(key.appid.clone(), (Instant::now(), read.clone()));
        Ok(read)
    }

    /// Forgets what was read about a platform (its token was just refetched).
    fn forget(&self, key: &AccountKey) {
        let mut map = self.contexts.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&key.appid);
    }

    fn block(&self, platform_id: i64, why: String) {
        let flight = self.of(platform_id);
        let mut flight = flight.lock().unwrap_or_else(|e| e.into_inner());
        flight.blocked.get_or_insert(why);
    }
}

/// The key of a tenant's platform: an authorizer (APPID, COMPONENT) belongs to
/// (COMPONENT, ""), a corp (CORPID, SUITE) to (SUITE, "").
pub fn platform_key(tenant: &AccountKey) -> AccountKey {
    AccountKey {
        appid: tenant.agent.clone(),
        agent: String::new(),
    }
}

/// Whether a platform's ticket, created at `created` (WeChat's time), is valid at `now`;
/// else why not, in the words status and refresh use.
pub fn ticket_problem(api: Api, created: Option<i64>, now: i64) -> Option<String> {
    let validity = api.ticket_validity()?;
    let what = if api == Api::Suite {
        "suite_ticket"
    } else {
        "component_verify_ticket"
    };
    match created {
        None => Some(format!(
            "waiting for a ticket: no {what} has been pushed or stored yet"
        )),
        Some(at) if now - at >= validity => Some(format!(
            "waiting for a ticket: the newest {what} is {} old, past its {} validity",
            crate::text::human(now - at),
            crate::text::human(validity)
        )),
        Some(_) => None,
    }
}

/// Why a platform waits although its ticket is young: WeChat refused that very ticket
/// (40085, 61005/61006) on the last attempt, and no ticket arrived since.
pub fn ticket_refused(
    store: &dyn crate::store::ReadStore,
    account: &Account,
) -> Result<Option<String>, crate::store::StoreError> {
    let Some(attempt) = store.last_attempt(account.id, Credential::AccessToken)? else {
        return Ok(None);
    };
    let crate::domain::AttemptResult::Failed(Failure::WeChat { errcode, .. }) = attempt.result
    else {
        return Ok(None);
    };
    if !policy::needs_new_ticket(account.api, errcode) {
        return Ok(None);
    }
    let received = store.ticket_times(account.id)?.map_or(i64::MIN, |t| t.1);
    // Whole seconds: a ticket stored in the second of the refusal counts as newer (one
    // request too many at worst, never a platform stuck on a ticket that was replaced).
    Ok((received < attempt.started_at).then(|| {
        format!(
            "waiting for a ticket: WeChat refused the stored one (errcode {errcode}); the \
             next pushed ticket is used"
        )
    }))
}

/// Reads what the fetch of `account` needs; `Err` is the result when nothing may be sent.
pub(super) fn prepare(
    store: &dyn Store,
    account: &Account,
    now: i64,
    flights: &Flights,
) -> Result<Prepared, Done> {
    let unrecorded = |what: &str, err: &dyn std::fmt::Display| {
        Done::Unrecorded(format!("could not read {what}: {err}"))
    };
    let api = account.api;
    if api.is_platform() {
        let ticket = store
            .platform_ticket(account.id)
            .map_err(|e| unrecorded("the platform's ticket", &e))?;
        if let Some(why) = ticket_problem(api, ticket.as_ref().map(|t| t.create_time), now) {
            return Err(Done::Waiting(why));
        }
        if let Some(why) = ticket_refused(store, account).map_err(|e| unrecorded("attempts", &e))? {
            return Err(Done::Waiting(why));
        }
        let ticket = ticket
            .map(|t| t.ticket)
            .unwrap_or_else(|| Secret::new(String::new()));
        if ticket.locked_kid().is_some() || ticket.is_unread() || ticket.expose().is_empty() {
            return Err(Done::Unrecorded(
                "the platform's ticket does not open with the key file".to_string(),
            ));
        }
        return Ok(Prepared::Platform { ticket });
    }
    if !api.is_tenant() {
        return Ok(Prepared::Plain);
    }
    let key = platform_key(&account.key);
    let noun = api.platform_kind().map_or("platform", Api::noun);
    let (platform, token) = flights
        .context(store, &key)
        .map_err(|e| unrecorded("the platform", &e))?
        .ok_or_else(|| Done::Waiting(format!("its {noun} {key} is not in the store")))?;
    if let Some(why) = flights.blocked(platform.id) {
        return Err(Done::Waiting(why));
    }
    if let Some((until, reason)) = platform.held_at(now) {
        return Err(Done::Held(
            until,
            format!("its {noun} {key} is held: {reason}"),
        ));
    }
    if !platform.enabled {
        return Err(Done::Waiting(format!("its {noun} {key} is disabled")));
    }
    let token = token.filter(|t| freshness::usable(&t.stored(), now, PLATFORM_TOKEN_MIN_LEFT));
    match token {
        Some(t) => Ok(Prepared::Tenant {
            platform: Box::new(platform),
            token: t.token,
        }),
        None => Err(Done::Waiting(format!(
            "no valid {noun} token for {key} yet (it needs a pushed ticket; see wxtoken status)"
        ))),
    }
}

/// The fetch itself, with a tenant's recoveries; the outcome to record and the credential
/// it was fetched with.
#[allow(clippy::too_many_arguments)]
pub(super) fn fetch(
    store: &dyn Store,
    client: &Client,
    account: &Account,
    prepared: &Prepared,
    now: i64,
    ttl: i64,
    flights: &Flights,
    stop: &Stop,
) -> (Outcome, Secret) {
    let (platform, token) = match prepared {
        Prepared::Plain => {
            let creds = Credentials {
                api: account.api,
                appid: &account.key.appid,
                secret: &account.secret,
            };
            return (client.fetch_token(&creds, false), account.secret.clone());
        }
        Prepared::Platform { ticket } => {
            let outcome = client.fetch_platform_token(
                account.api,
                &account.key.appid,
                &account.secret,
                ticket,
            );
            return (outcome, account.secret.clone());
        }
        Prepared::Tenant { platform, token } => (platform, token),
    };
    let api = account.api;
    let call = |token: &str, credential: &Secret| {
        client.fetch_tenant_token(
            api,
            &platform.key.appid,
            token,
            &account.key.appid,
            credential,
        )
    };
    let mut used = account.secret.clone();
    let mut outcome = call(token, &used);
    let mut tries = outcome.tries;
    let code = |o: &Outcome| match &o.result {
        Err(Failure::WeChat { errcode, .. }) => Some(*errcode),
        _ => None,
    };
    // The platform token was rejected: one refetch per platform per run, then one retry.
    if let Some(c) = code(&outcome)
        && policy::platform_token_rejected(api, c)
        && !stop.now()
        && let Some(fresh) = refetch_platform(store, client, platform, token, ttl, flights, stop)
    {
        outcome = call(&fresh, &used);
        tries += outcome.tries;
    }
    // The refresh token was refused: the previous one (if WeChat rotated it lately), then
    // what `authorizer sync` finds, once each.
    if api == Api::Authorizer && code(&outcome) == Some(61023) {
        if let Some(previous) = &account.previous_secret
            && previous.locked_kid().is_none()
            && previous.expose() != used.expose()
            && !stop.now()
        {
            log::info!(
                "{}: refresh token refused; trying the previous one",
                account.key
            );
            used = previous.clone();
            outcome = call(token, &used);
            tries += outcome.tries;
        }
        if code(&outcome) == Some(61023)
            && !stop.now()
            && sync_once(store, client, platform, token, now, flights)
            && let Ok(Some(now_stored)) = store.account(&account.key)
            && now_stored.secret.locked_kid().is_none()
            && now_stored.secret.expose() != used.expose()
            && !now_stored.secret.expose().is_empty()
        {
            log::info!(
                "{}: retrying with the refresh token sync found",
                account.key
            );
            used = now_stored.secret;
            outcome = call(token, &used);
            tries += outcome.tries;
        }
    }
    if let Some(c) = code(&outcome)
        && policy::platform_wide(api, c)
    {
        let noun = api.platform_kind().map_or("platform", Api::noun);
        flights.block(
            platform.id,
            format!(
                "not tried: its {noun} {} failed with errcode {c} in this run",
                platform.key
            ),
        );
    }
    outcome.tries = tries;
    (outcome, used)
}

/// One refetch of a platform's token per run, shared by the workers: only if `rejected` is
/// still its newest token (else another worker or host replaced it: that one is used).
/// The new token, or `None` when there is none to retry with.
fn refetch_platform(
    store: &dyn Store,
    client: &Client,
    platform: &Account,
    rejected: &str,
    ttl: i64,
    flights: &Flights,
    stop: &Stop,
) -> Option<String> {
    let flight = flights.of(platform.id);
    let mut flight = flight.lock().unwrap_or_else(|e| e.into_inner());
    let newest = |store: &dyn Store| {
        store
            .latest_token(&platform.key, Credential::AccessToken)
            .ok()
            .flatten()
            .map(|t| t.token)
    };
    if let Some(t) = newest(store).filter(|t| t != rejected) {
        return Some(t);
    }
    if flight.refetched {
        return None;
    }
    flight.refetched = true;
    let now = crate::wechat::unix_now();
    log::warn!(
        "{}: its token was rejected by a tenant's call; fetching a new one (once)",
        platform.key
    );
    let claimed = with_claim(store, platform.id, now, ttl, || {
        let prepared = prepare(store, platform, now, flights);
        let Ok(prepared) = prepared else { return };
        if store.begin_fetch(platform.id, now).is_err() {
            return;
        }
        let (outcome, used) = fetch(store, client, platform, &prepared, now, ttl, flights, stop);
        let _ = record(store, platform, &used, Credential::AccessToken, outcome);
    });
    // The tenants that start next read the new token, not the rejected one.
    flights.forget(&platform.key);
    if let Ok(Claimed::Busy(other)) = claimed {
        log::info!(
            "{}: {other} is fetching it; using what it stores",
            platform.key
        );
        // Bounded: the other holder's claim ends within its TTL.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(ttl as u64);
        while std::time::Instant::now() < deadline && !stop.now() {
            if let Some(t) = newest(store).filter(|t| t != rejected) {
                return Some(t);
            }
            std::thread::sleep(policy::RENEW_POLL * 4);
        }
    }
    newest(store).filter(|t| t != rejected)
}

/// One `authorizer sync` of a component per run, on the first 61023; whether it ran now
/// or earlier in the run.
fn sync_once(
    store: &dyn Store,
    client: &Client,
    platform: &Account,
    token: &str,
    now: i64,
    flights: &Flights,
) -> bool {
    let flight = flights.of(platform.id);
    let mut flight = flight.lock().unwrap_or_else(|e| e.into_inner());
    if flight.synced {
        return true;
    }
    flight.synced = true;
    log::warn!(
        "{}: a refresh token was refused (61023); resyncing the authorizer list once",
        platform.key
    );
    match sync_authorizers(store, client, platform, token, now) {
        Ok(report) => {
            log::info!("{}: {}", platform.key, report.summary());
            true
        }
        Err(err) => {
            log::warn!("{}: authorizer sync failed: {err}", platform.key);
            false
        }
    }
}

/// What `authorizer sync` did.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub listed: usize,
    pub added: Vec<String>,
    pub updated: Vec<String>,
    /// Listed with an empty refresh token: a new authorization is needed.
    pub empty: Vec<String>,
    /// Known here, no longer listed by WeChat.
    pub unlisted: Vec<String>,
}

impl SyncReport {
    pub fn summary(&self) -> String {
        format!(
            "{} authorizers listed; {} added, {} refresh tokens updated, {} listed without a \
             refresh token, {} known here but no longer listed",
            self.listed,
            self.added.len(),
            self.updated.len(),
            self.empty.len(),
            self.unlisted.len()
        )
    }
}

/// Walks every page of `api_get_authorizer_list` (500 a page): adds authorizers this store
/// does not know, stores refresh tokens that differ, never deletes or blanks one, and
/// reports those it knows that WeChat no longer lists.
pub fn sync_authorizers(
    store: &dyn Store,
    client: &Client,
    platform: &Account,
    token: &str,
    now: i64,
) -> anyhow::Result<SyncReport> {
    const PAGE: i64 = 500;
    let component = &platform.key.appid;
    let mut report = SyncReport::default();
    let mut listed = std::collections::HashSet::new();
    let mut offset = 0;
    loop {
        let page = client.authorizer_list(component, token, offset, PAGE);
        let page = page.result.map_err(|f| {
            anyhow::anyhow!("api_get_authorizer_list: {}", f.for_api(Api::Component))
        })?;
        let n = page.list.len() as i64;
        for (appid, refresh) in page.list {
            listed.insert(appid.clone());
            let key = AccountKey {
                appid: appid.clone(),
                agent: component.clone(),
            };
            let Some(refresh) = refresh else {
                report.empty.push(appid);
                continue;
            };
            match store.account(&key)? {
                None => {
                    let new = crate::domain::NewAccount {
                        key,
                        api: Api::Authorizer,
                        secret: refresh,
                        tickets: Vec::new(),
                        platform: Some(platform.id),
                        receiver: None,
                    };
                    store.add_account(&new, now)?;
                    report.added.push(appid);
                }
                Some(known)
                    if known.secret.locked_kid().is_none()
                        && known.secret.expose() != refresh.expose() =>
                {
                    store.set_secret(&key, &refresh, now)?;
                    report.updated.push(appid);
                }
                Some(_) => {}
            }
        }
        offset += n;
        if n == 0 || offset >= page.total {
            break;
        }
    }
    report.listed = listed.len();
    for known in store.accounts()? {
        if known.api == Api::Authorizer
            && known.platform == Some(platform.id)
            && !listed.contains(&known.key.appid)
        {
            report.unlisted.push(known.key.appid);
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_are_valid_12_hours_on_open_platform_and_30_minutes_on_wecom() {
        let now = 1_800_000_000;
        assert!(ticket_problem(Api::Component, None, now).is_some());
        assert!(ticket_problem(Api::Component, Some(now - 12 * 3600 + 1), now).is_none());
        assert!(ticket_problem(Api::Component, Some(now - 12 * 3600), now).is_some());
        assert!(ticket_problem(Api::Suite, Some(now - 1799), now).is_none());
        assert!(ticket_problem(Api::Suite, Some(now - 1800), now).is_some());
        assert!(ticket_problem(Api::Authorizer, None, now).is_none());
    }

    #[test]
    fn a_tenant_belongs_to_the_platform_named_in_its_key() {
        let k = AccountKey {
            appid: "wxa".into(),
            agent: "wxcomp".into(),
        };
        assert_eq!(platform_key(&k).appid, "wxcomp");
        assert!(platform_key(&k).agent.is_empty());
    }
}
