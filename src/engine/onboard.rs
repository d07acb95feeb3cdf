//! Onboarding a tenant, for `authorizer add`, `authorizer reset` and the pushes that
//! announce one (`authorized`, `create_auth`, `reset_permanent_code`): exchange the code
//! with the platform's token, then store the durable credential at once (a refresh token,
//! a permanent code), before anything else can fail, and the first token when WeChat
//! sends one. The exchange never fetches a platform token: refresh does that.

use anyhow::{Result, anyhow};

use super::{Claimed, with_claim};
use crate::domain::{
    Account, AccountKey, Api, Credential, Failure, FetchRecord, NewAccount, Outcome, Secret,
};
use crate::exit::{Exit, fail};
use crate::freshness;
use crate::store::Store;
use crate::wechat::{Authorized, Client, PermanentCode};

/// The platform's newest token with at least a minute left, or why there is none.
pub fn platform_token(store: &dyn Store, platform: &Account, now: i64) -> Result<String> {
    let row = store.latest_token(&platform.key, Credential::AccessToken)?;
    match row.filter(|t| freshness::usable(&t.stored(), now, 60)) {
        Some(t) => Ok(t.token),
        None => Err(fail(
            Exit::NoToken,
            format!(
                "no valid {} token for {} yet: it is fetched by `wxtoken refresh` once a \
                 ticket has arrived (see wxtoken platform list)",
                platform.api.noun(),
                platform.key
            ),
        )),
    }
}

/// The failure of an exchange, as a one-line error that names the errcode.
pub fn exchange_failed(what: &str, platform: &Account, failure: &Failure) -> anyhow::Error {
    fail(
        Exit::FetchFailed,
        format!(
            "{what} for {} {}: {}",
            platform.api.noun(),
            platform.key,
            failure.for_api(if platform.api == Api::Suite {
                Api::Corp
            } else {
                Api::Authorizer
            })
        ),
    )
}

/// Stores what `api_query_auth` returned: the authorizer (added, or its refresh token
/// replaced: a re-authorization, which also lifts a hold such as a revocation), then its
/// first token. Returns the authorizer as stored. Run with the key file loaded for sealing.
pub fn store_authorized(
    store: &dyn Store,
    platform: &Account,
    outcome: Outcome<Authorized>,
    now: i64,
    ttl: i64,
) -> Result<Account> {
    let Outcome {
        result,
        tries,
        sent_at,
        started_at,
        duration_ms,
        unsure,
        clock_offset,
    } = outcome;
    let authorized = result.map_err(|f| exchange_failed("api_query_auth", platform, &f))?;
    let key = AccountKey {
        appid: authorized.appid.clone(),
        agent: platform.key.appid.clone(),
    };
    let Some(refresh) = authorized.refresh_token else {
        return Err(fail(
            Exit::FetchFailed,
            format!(
                "api_query_auth for {key} returned no refresh token: the merchant granted no \
                 API permission to the platform; nothing was stored"
            ),
        ));
    };
    match store.account(&key)? {
        Some(known) if known.api != Api::Authorizer => {
            return Err(fail(
                Exit::Account,
                format!(
                    "{key} exists and is a {}, not an authorizer",
                    known.api.noun()
                ),
            ));
        }
        Some(_) => store.set_secret(&key, &refresh, now)?,
        None => store.add_account(
            &NewAccount {
                key: key.clone(),
                api: Api::Authorizer,
                secret: refresh.clone(),
                tickets: Vec::new(),
                platform: Some(platform.id),
                receiver: None,
            },
            now,
        )?,
    }
    let account = store.require_account(&key)?;
    let record = FetchRecord {
        account_id: account.id,
        kind: Credential::AccessToken,
        outcome: Outcome {
            result: Ok(authorized.token),
            tries,
            sent_at,
            started_at,
            duration_ms,
            unsure,
            clock_offset,
        },
        hold: None,
        secret: refresh,
    };
    // The first token, under the account's claim like any fetch (PostgreSQL fences on it).
    let recorded = with_claim(store, account.id, now, ttl, || store.record_fetch(&record))?;
    match recorded {
        Claimed::Done(Ok(_), released) => released?,
        Claimed::Done(Err(err), _) => {
            log::warn!("{key}: its first token was not stored ({err}); refresh fetches one");
        }
        Claimed::Busy(other) => {
            log::info!("{key}: {other} holds it; its first token was not stored");
        }
    }
    Ok(account)
}

/// What storing an install did.
pub struct Installed {
    pub account: Account,
    /// A 代开发 app: stored as a WeCom app whose secret is the code.
    pub customized: bool,
    /// The install replaced a known corp's code (a reinstall, a reset).
    pub replaced: bool,
}

/// Stores what `get_permanent_code` returned, for a suite: the corp (`corp` tenant), or for
/// a 代开发 template the WeCom app (corpid, agentid) whose secret is the code, recording
/// the template it came from. A known one gets the new code (a reinstall or a reset).
/// `agentid`: the 代开发 app's agentid, from `get_auth_info`.
pub fn store_installed(
    store: &dyn Store,
    suite: &Account,
    code: PermanentCode,
    agentid: Option<i64>,
    now: i64,
) -> Result<Installed> {
    let customized = agentid.is_some();
    let key = match agentid {
        Some(agent) => AccountKey::wecom(&code.corpid, &agent.to_string()),
        None => AccountKey::wecom(&code.corpid, &suite.key.appid),
    }
    .map_err(|e| anyhow!("the corp in the reply: {e}"))?;
    let api = if customized { Api::Work } else { Api::Corp };
    let replaced = match store.account(&key)? {
        Some(known) if known.api != api => {
            return Err(fail(
                Exit::Account,
                format!(
                    "{key} exists and is a {}, not a {}",
                    known.api.noun(),
                    api.noun()
                ),
            ));
        }
        Some(_) => {
            store.set_secret(&key, &code.code, now)?;
            true
        }
        None => {
            store.add_account(
                &NewAccount {
                    key: key.clone(),
                    api,
                    secret: code.code,
                    tickets: Vec::new(),
                    platform: Some(suite.id),
                    receiver: None,
                },
                now,
            )?;
            false
        }
    };
    Ok(Installed {
        account: store.require_account(&key)?,
        customized,
        replaced,
    })
}

/// Exchanges an install's auth code with the suite's token: the permanent code, and for a
/// 代开发 template (`dk…`) the app's agentid from `get_auth_info`.
pub fn exchange_install(
    client: &Client,
    suite: &Account,
    token: &str,
    code: &Secret,
) -> Result<(PermanentCode, Option<i64>)> {
    let exchanged = client
        .permanent_code(token, code)
        .result
        .map_err(|f| exchange_failed("get_permanent_code", suite, &f))?;
    if !suite.key.appid.starts_with("dk") {
        return Ok((exchanged, None));
    }
    let info = client
        .auth_info(token, &exchanged.corpid, &exchanged.code)
        .result
        .map_err(|f| exchange_failed("get_auth_info", suite, &f))?;
    let agent = info
        .agents
        .iter()
        .find(|(_, customized)| *customized)
        .or(info.agents.first())
        .map(|(id, _)| *id);
    match agent {
        Some(agent) => Ok((exchanged, Some(agent))),
        None => Err(fail(
            Exit::FetchFailed,
            format!(
                "get_auth_info for corp {} named no agent: cannot store the 代开发 app \
                 (its permanent code is not stored; ask the corp to reinstall)",
                exchanged.corpid
            ),
        )),
    }
}
