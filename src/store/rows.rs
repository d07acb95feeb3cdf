//! What both backends decide alike, written once: how an attempt and a secret are stored
//! and read back, and the refusals and texts they share. Each backend reads its inputs
//! with its own SQL and calls these.

use super::{Recorded, SealedSample, SinkResult};
use super::{Result, SinkRow, StoreError};
use crate::domain::{
    Account, AccountKey, Api, AttemptResult, Credential, Failure, FetchRecord, Fetched, NewAccount,
    Outcome, Secret, Ticket,
};
use crate::keys::Keys;

/// What `import` says about a store that is not empty.
pub(crate) fn not_empty(location: &str, accounts: i64) -> StoreError {
    StoreError::Schema(format!(
        "{location} already has {accounts} account(s); store copy only fills an empty store"
    ))
}

/// What `remove_account` says of a platform (`role`, as stored) that still has `tenants`.
pub(crate) fn has_tenants(key: &AccountKey, role: &str, tenants: i64) -> StoreError {
    let api = Api::from_columns("", role);
    let flag = match api {
        Api::Component => format!("--component {}", key.appid),
        Api::Suite => format!("--suite {}", key.appid),
        _ => format!("--component|--suite {}", key.appid),
    };
    StoreError::HasTenants(format!(
        "{} {key} has {tenants} tenant(s), which would be left without their platform: \
         remove it with `wxtoken platform remove {flag} --with-authorizers`, which removes \
         them too",
        api.noun()
    ))
}

/// How an attempt is stored, in both backends: the outcome's name and its details.
pub(crate) struct AttemptColumns<S> {
    pub(crate) outcome: S,
    pub(crate) errcode: Option<i64>,
    pub(crate) errmsg: Option<String>,
    pub(crate) http_status: Option<i64>,
    pub(crate) detail: Option<String>,
}

impl AttemptColumns<&'static str> {
    pub(crate) fn of(o: &Outcome, unchanged: bool) -> Self {
        let (outcome, errcode, errmsg, http_status, detail) = match &o.result {
            Ok(_) if unchanged => ("unchanged", None, None, None, None),
            Ok(_) => ("ok", None, None, None, None),
            Err(Failure::WeChat { errcode, errmsg }) => {
                ("errcode", Some(*errcode), Some(errmsg.clone()), None, None)
            }
            Err(Failure::Http { status }) => ("http", None, None, Some(i64::from(*status)), None),
            Err(Failure::Transport(d)) => ("transport", None, None, None, Some(d.clone())),
            Err(Failure::NotJson(d)) => ("not_json", None, None, None, Some(d.clone())),
            Err(Failure::Invalid(d)) => ("invalid", None, None, None, Some(d.clone())),
        };
        AttemptColumns {
            outcome,
            errcode,
            errmsg,
            http_status,
            detail,
        }
    }
}

impl AttemptColumns<String> {
    pub(crate) fn result(self) -> AttemptResult {
        let detail = self.detail.unwrap_or_default();
        match self.outcome.as_str() {
            "ok" => AttemptResult::Ok,
            "unchanged" => AttemptResult::Unchanged,
            "errcode" => AttemptResult::Failed(Failure::WeChat {
                errcode: self.errcode.unwrap_or(0),
                errmsg: self.errmsg.unwrap_or_default(),
            }),
            "http" => AttemptResult::Failed(Failure::Http {
                status: u16::try_from(self.http_status.unwrap_or(0)).unwrap_or(0),
            }),
            "transport" => AttemptResult::Failed(Failure::Transport(detail)),
            "not_json" => AttemptResult::Failed(Failure::NotJson(detail)),
            // A PostgreSQL holder whose lease was taken over while it fetched.
            "lost_claim" => {
                AttemptResult::Failed(Failure::Invalid(format!("fetched, but dropped: {detail}")))
            }
            _ => AttemptResult::Failed(Failure::Invalid(detail)),
        }
    }
}

/// How a ticket list is stored: the names, joined by commas (read back by `parse_tickets`).
pub(crate) fn ticket_list(tickets: &[Ticket]) -> String {
    let names: Vec<&str> = tickets.iter().map(|t| t.as_str()).collect();
    names.join(",")
}

/// A new account's stored secret (sealed with the current key) and its ticket list.
pub(crate) fn new_account_columns(keys: &Keys, new: &NewAccount) -> Result<(String, String)> {
    let tickets = ticket_list(&new.tickets);
    let sealed = seal_secret(keys, &crate::crypto::account_owner(&new.key), &new.secret)?;
    Ok((sealed, tickets))
}

/// Unknown names are dropped: a newer wxtoken may know more kinds than this one.
pub(crate) fn parse_tickets(list: &str) -> Vec<Ticket> {
    list.split(',').filter_map(Ticket::parse).collect()
}

/// How a secret is written to its column: encrypted with the store's keys (`keys::Keys`),
/// bound to its `owner` (`crypto::account_owner`, `crypto::sink_owner`). AppSecrets and
/// sink passwords (Redis) both go through this pair. A command that stores a secret
/// unlocks the vault first; without a key nothing is written in plain text.
pub(crate) fn seal_secret(keys: &Keys, owner: &[u8], secret: &Secret) -> Result<String> {
    keys.seal(owner, secret).map_err(StoreError::Key)
}

/// The inverse of [`seal_secret`]. A plaintext value (written before encryption) comes back
/// as it is; a sealed one is opened with the store's keys. It comes back unread when the
/// store holds no keys (readers, or a command that has not unlocked the key file: using
/// it is an error), and locked when the keys do not open it (`vault::unlock` reports that).
pub(crate) fn open_secret(keys: &Keys, owner: &[u8], stored: String) -> Secret {
    let stored = crate::crypto::Stored::new(stored);
    if stored.is_plaintext() {
        return Secret::new(stored.as_str().to_string());
    }
    if stored.as_str() == crate::crypto::LOST {
        return Secret::locked(crate::crypto::LOST_KID.to_string());
    }
    // A scheme this version does not know (a newer one) stays locked too.
    let kid = stored.kid().unwrap_or("unknown").to_string();
    keys.open(owner, &stored, kid)
}

/// What an opened account secret is stored as in another store (`store copy`): sealed
/// again with the same key, or the marker of a secret forgotten with a lost key.
pub(crate) fn stored_form(keys: &Keys, key: &AccountKey, secret: &Secret) -> Result<String> {
    match secret.locked_kid() {
        Some(crate::crypto::LOST_KID) => Ok(crate::crypto::LOST.to_string()),
        Some(kid) => Err(StoreError::Key(format!(
            "the secret of {key} (key {kid}) is not open: cannot copy it"
        ))),
        None => seal_secret(keys, &crate::crypto::account_owner(key), secret),
    }
}

/// What another opened secret (a previous credential, a ticket, push crypto) is stored as
/// in another store (`store copy`): sealed again for `owner`, as [`stored_form`] does for
/// an account's. One that does not open is an error naming `whose`.
pub(crate) fn copied_secret(
    keys: &Keys,
    owner: &[u8],
    secret: &Secret,
    whose: &str,
) -> Result<String> {
    match secret.locked_kid() {
        Some(crate::crypto::LOST_KID) => Ok(crate::crypto::LOST.to_string()),
        Some(kid) => Err(StoreError::Key(format!(
            "{whose} (key {kid}) is not open: cannot copy it"
        ))),
        None => seal_secret(keys, owner, secret),
    }
}

/// Gives each exported account the key of its platform (ids mean nothing in another
/// store). A platform that is not among them (it cannot be: the foreign key) stays none.
pub(crate) fn link_platforms(items: &mut [super::Exported]) {
    let keys: std::collections::HashMap<i64, AccountKey> = items
        .iter()
        .map(|i| (i.account.id, i.account.key.clone()))
        .collect();
    for item in items {
        item.platform = item.account.platform.and_then(|id| keys.get(&id).cloned());
    }
}

/// A platform's push settings as the importing store writes them: (token, aes_key) sealed.
pub(crate) fn copied_crypto(
    keys: &Keys,
    key: &AccountKey,
    crypto: &super::PlatformCrypto,
) -> Result<(String, String)> {
    let whose = |what: &str| format!("the {what} of platform {key}");
    Ok((
        copied_secret(
            keys,
            &crate::crypto::platform_owner(key, "token"),
            &crypto.token,
            &whose("message Token"),
        )?,
        copied_secret(
            keys,
            &crate::crypto::platform_owner(key, "aes_key"),
            &crypto.aes_key,
            &whose("EncodingAESKey"),
        )?,
    ))
}

/// A platform's ticket as the importing store writes it, sealed.
pub(crate) fn copied_ticket(
    keys: &Keys,
    key: &AccountKey,
    ticket: &super::PlatformTicket,
) -> Result<String> {
    copied_secret(
        keys,
        &crate::crypto::platform_owner(key, "ticket"),
        &ticket.ticket,
        &format!("the ticket of platform {key}"),
    )
}

/// `open_secret` for rewriting: a secret that stays locked is an error, never rewritten.
pub(crate) fn open_or_fail(keys: &Keys, owner: &[u8], stored: String) -> Result<Secret> {
    let secret = open_secret(keys, owner, stored);
    match secret.locked_kid() {
        Some(kid) => Err(StoreError::Key(format!(
            "a stored secret does not open with the key file (key {kid}); nothing was changed"
        ))),
        None => Ok(secret),
    }
}

/// What `reseal` writes for one stored secret of `owner`: sealed again with the current
/// key, or nothing when it is left alone (a sealed one unless `all`, and the marker of a
/// secret lost with its key). A sealed secret the keys do not open is an error.
pub(crate) fn resealed(
    keys: &Keys,
    owner: &[u8],
    stored: String,
    all: bool,
) -> Result<Option<String>> {
    if (!all && !is_plaintext(&stored)) || stored == crate::crypto::LOST {
        return Ok(None);
    }
    seal_secret(keys, owner, &open_or_fail(keys, owner, stored)?).map(Some)
}

/// Whether a stored value is a secret left in plain text by a version before encryption.
pub(crate) fn is_plaintext(stored: &str) -> bool {
    crate::crypto::Stored::new(stored.to_string()).is_plaintext()
}

pub(crate) const RUN_COLUMNS: &str =
    "started_at, finished_at, duration_ms, scope, accounts, refreshed, fresh, busy, held, failed";

/// The runs that count as a success (see [`super::RunRow::is_success`]), in SQL.
pub(crate) const SUCCESSFUL_RUNS: &str = "WHERE failed = 0 AND held = 0 AND scope <> 'named'";

/// What a sink's secret column holds in a store: its credentials sealed with the current
/// key (`store copy` seals again what it opened), the marker of credentials forgotten with
/// a lost key, or nothing.
pub(crate) fn stored_password(keys: &Keys, sink: &SinkRow) -> Result<Option<String>> {
    let Some(password) = &sink.password else {
        return Ok(None);
    };
    match password.locked_kid() {
        Some(crate::crypto::LOST_KID) => Ok(Some(crate::crypto::LOST.to_string())),
        Some(kid) => Err(StoreError::Key(format!(
            "the password of sink {} (key {kid}) is not open: cannot copy it",
            sink.name
        ))),
        None => seal_secret(keys, &crate::crypto::sink_owner(&sink.name), password).map(Some),
    }
}

/// An account's columns as either backend reads them, before they become an [`Account`].
pub(crate) struct AccountColumns {
    pub(crate) id: i64,
    pub(crate) appid: String,
    pub(crate) agent: String,
    pub(crate) api: String,
    /// `None` for a reader's handle, which selects no secret.
    pub(crate) secret: Option<String>,
    pub(crate) enabled: bool,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
    pub(crate) held_until: Option<i64>,
    pub(crate) held_reason: Option<String>,
    pub(crate) tickets: String,
    pub(crate) fetch_due: bool,
    /// The platform role ('' for a plain account: see `Api::columns`).
    pub(crate) role: String,
    pub(crate) platform_id: Option<i64>,
    /// A tenant's previous credential, sealed (`None` for a reader's handle too).
    pub(crate) previous_secret: Option<String>,
    pub(crate) receiver: Option<String>,
}

impl AccountColumns {
    /// The account, its secret opened and its times (the hold, when it was added and
    /// changed) moved into this host's clock by `skew` (0 where the host's clock stamped
    /// them: SQLite). A hold until fixed is no time, and is not moved.
    pub(crate) fn account(self, keys: &Keys, skew: i64) -> Account {
        let key = AccountKey {
            appid: self.appid,
            agent: self.agent,
        };
        let secret = match self.secret {
            Some(stored) => open_secret(keys, &crate::crypto::account_owner(&key), stored),
            None => Secret::new(String::new()),
        };
        let previous_secret = self
            .previous_secret
            .map(|stored| open_secret(keys, &crate::crypto::account_owner(&key), stored));
        Account {
            id: self.id,
            key,
            api: Api::from_columns(&self.api, &self.role),
            platform: self.platform_id,
            previous_secret,
            receiver: self.receiver,
            secret,
            enabled: self.enabled,
            created_at: self.created_at + skew,
            updated_at: self.updated_at + skew,
            held_until: self.held_until.map(|t| to_host(t, skew)),
            held_reason: self.held_reason,
            tickets: parse_tickets(&self.tickets),
            fetch_due: self.fetch_due,
        }
    }
}

/// A time moved from one clock to another (`skew`: how far the target's is ahead), except
/// "until fixed", which is no time.
pub(crate) fn to_host(t: i64, skew: i64) -> i64 {
    if crate::policy::until_fixed(t) {
        t
    } else {
        t.saturating_add(skew)
    }
}

/// A sink's columns as either backend reads them, its times already in this host's clock.
pub(crate) struct SinkColumns {
    pub(crate) id: i64,
    pub(crate) name: String,
    pub(crate) kind: String,
    pub(crate) target: String,
    pub(crate) password: Option<String>,
    pub(crate) format: Option<String>,
    pub(crate) prefix: Option<String>,
    pub(crate) key_template: Option<String>,
    /// The selectors, as stored: a JSON list, or (with refresh tokens) a JSON object
    /// (`selectors_column`).
    pub(crate) accounts: String,
    pub(crate) timeout: i64,
    pub(crate) created_at: i64,
    pub(crate) last: Option<SinkResult>,
}

impl SinkColumns {
    /// The sink, its password opened and its account selectors parsed.
    pub(crate) fn sink(self, keys: &Keys) -> SinkRow {
        let (selectors, refresh_tokens) = parse_selectors_column(&self.accounts);
        SinkRow {
            id: self.id,
            password: self
                .password
                .map(|p| open_secret(keys, &crate::crypto::sink_owner(&self.name), p)),
            name: self.name,
            kind: self.kind,
            target: self.target,
            format: self.format,
            prefix: self.prefix,
            key_template: self.key_template,
            accounts: selectors,
            refresh_tokens,
            timeout: self.timeout,
            created_at: self.created_at,
            last: self.last,
        }
    }
}

/// The `accounts` column of a sink: its selectors as a JSON list, as every version wrote
/// them; with `--include-refresh-tokens`, `{"select": [...], "refresh_tokens": true}` (the
/// platforms' migration keeps an older binary from reading it).
pub(crate) fn selectors_column(sink: &SinkRow) -> String {
    let list = serde_json::Value::from(sink.accounts.clone());
    if sink.refresh_tokens {
        serde_json::json!({ "select": list, "refresh_tokens": true }).to_string()
    } else {
        list.to_string()
    }
}

/// The inverse of [`selectors_column`].
pub(crate) fn parse_selectors_column(text: &str) -> (Vec<String>, bool) {
    #[derive(serde::Deserialize)]
    struct Object {
        select: Vec<String>,
        #[serde(default)]
        refresh_tokens: bool,
    }
    if let Ok(object) = serde_json::from_str::<Object>(text) {
        return (object.select, object.refresh_tokens);
    }
    (serde_json::from_str(text).unwrap_or_default(), false)
}

/// What recording a fetch writes, decided once for both backends from what each read
/// inside its transaction; each writes it with its own SQL, in its own order.
pub(crate) struct RecordPlan<'a> {
    pub(crate) recorded: Recorded,
    /// The token row to insert: a new token (WeChat may hand back the newest one again).
    pub(crate) insert: Option<&'a Fetched>,
    /// Whether the account's hold and due flag are written: only for an access token
    /// fetched with the secret the account still has (an outcome computed with a secret
    /// that has since been replaced says nothing about the new one).
    pub(crate) update_account: bool,
    pub(crate) held_until: Option<i64>,
    pub(crate) held_reason: Option<&'a str>,
    /// Whether this holder's intent ends: an access token whose request cannot have
    /// created a token we never saw.
    pub(crate) clear_intent: bool,
    /// A new durable credential to store, sealed, in this transaction (the stored one moves
    /// to the previous column): a non-empty one that differs from the stored one, that
    /// came with a token fetched with the stored (or previous) credential, so that a
    /// re-authorization that stored a newer one meanwhile is never undone.
    pub(crate) renewed: Option<String>,
    /// Whether the previous credential is dropped: the stored one has now worked.
    pub(crate) clear_previous: bool,
    /// What happens to the account's `due_at` (see migration 0009).
    pub(crate) due: Due,
}

/// Sets every account's `due_at` from its newest access token (as migration 0009 does):
/// after `store copy` fills a store.
pub(crate) const DUE_FROM_TOKENS: &str =
    "UPDATE accounts SET due_at = (SELECT t.expires_at FROM tokens t
                                   WHERE t.account_id = accounts.id AND t.kind = 'access_token'
                                   ORDER BY t.id DESC LIMIT 1)";

/// How a recorded fetch moves an account's `due_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// Nothing changes.
    Keep,
    /// A new access token: due when it expires.
    Token,
    /// A new ticket: due by its expiry at the latest.
    Ticket,
    /// A ticket fetch failed: due now.
    Now,
}

impl Due {
    /// The code both backends' SQL switch on.
    pub(crate) fn code(self) -> i64 {
        match self {
            Due::Keep => 0,
            Due::Token => 1,
            Due::Ticket => 2,
            Due::Now => 3,
        }
    }
}

/// The plan for `record`, given the newest stored token of its kind (read when the fetch
/// succeeded), the account's key and stored secret (read for an access token; none when
/// the account is gone), and when a hold starts: the fetch's start on SQLite (one host,
/// one clock), the server's now on PostgreSQL (a host whose clock is off can neither cut
/// the hold short nor stretch it).
pub(crate) fn plan_record<'a>(
    keys: &Keys,
    record: &'a FetchRecord,
    newest: Option<&str>,
    stored: Option<(AccountKey, String, Option<String>)>,
    hold_start: i64,
) -> Result<RecordPlan<'a>> {
    let (recorded, insert) = match &record.outcome.result {
        Ok(f) if newest == Some(f.token.as_str()) => (Recorded::Unchanged, None),
        Ok(f) => (Recorded::Inserted, Some(f)),
        Err(_) => (Recorded::Failed, None),
    };
    let access = record.kind == Credential::AccessToken;
    // Secrets are sealed with a fresh nonce each time: compare what the stored one opens to.
    let opened = stored.map(|(key, stored, previous)| {
        let owner = crate::crypto::account_owner(&key);
        let current = open_secret(keys, &owner, stored);
        let previous = previous.map(|p| open_secret(keys, &owner, p));
        (key, current, previous)
    });
    let is = |s: &Secret| {
        s.locked_kid().is_none()
            && record.secret.locked_kid().is_none()
            && s.expose() == record.secret.expose()
    };
    let used_current = access && opened.as_ref().is_some_and(|(_, c, _)| is(c));
    let used_previous = access
        && opened
            .as_ref()
            .is_some_and(|(_, _, p)| p.as_ref().is_some_and(is));
    let update_account = used_current;
    let mut renewed = None;
    let mut clear_previous = false;
    if let (Ok(f), Some((key, current, _))) = (&record.outcome.result, &opened) {
        match &f.renewed {
            Some(new)
                if !new.expose().is_empty()
                    && new.expose() != current.expose()
                    && (used_current || used_previous) =>
            {
                renewed = Some(seal_secret(keys, &crate::crypto::account_owner(key), new)?);
            }
            _ => clear_previous = used_current,
        }
    }
    let (held_until, held_reason) = record
        .hold
        .as_ref()
        .and_then(|(h, reason)| Some((crate::policy::held_until(*h, hold_start)?, reason.as_str())))
        .unzip();
    Ok(RecordPlan {
        recorded,
        insert,
        update_account,
        held_until,
        held_reason,
        clear_intent: access && !record.outcome.may_have_issued(),
        renewed,
        clear_previous,
        due: match (&record.outcome.result, access, insert.is_some()) {
            (Ok(_), true, true) => Due::Token,
            (Ok(_), false, true) => Due::Ticket,
            (Err(_), false, _) => Due::Now,
            _ => Due::Keep,
        },
    })
}

/// An exported account as the importing store writes it (`store copy`): its secret in
/// stored form, its tickets as a list, its times moved into the store's clock by `skew`
/// (0 on SQLite, whose clock is this host's).
pub(crate) struct ImportedAccount {
    pub(crate) secret: String,
    /// A tenant's previous credential, sealed again.
    pub(crate) previous: Option<String>,
    /// The `api` and `role` columns (`Api::columns`).
    pub(crate) api: &'static str,
    pub(crate) role: &'static str,
    pub(crate) tickets: String,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
    pub(crate) held_until: Option<i64>,
}

impl ImportedAccount {
    pub(crate) fn of(keys: &Keys, a: &Account, skew: i64) -> Result<ImportedAccount> {
        let (api, role) = a.api.columns();
        let previous = match &a.previous_secret {
            Some(p) => Some(copied_secret(
                keys,
                &crate::crypto::account_owner(&a.key),
                p,
                &format!("the previous {} of {}", a.api.secret_name(), a.key),
            )?)
            // The marker of a lost one is no credential: nothing to keep.
            .filter(|p| p != crate::crypto::LOST),
            None => None,
        };
        Ok(ImportedAccount {
            secret: stored_form(keys, &a.key, &a.secret)?,
            previous,
            api,
            role,
            tickets: ticket_list(&a.tickets),
            created_at: a.created_at + skew,
            updated_at: a.updated_at + skew,
            held_until: a.held_until.map(|t| to_host(t, skew)),
        })
    }
}

impl SealedSample {
    /// An account's sealed secret, bound to the account.
    pub(crate) fn account(key: &AccountKey, stored: String) -> SealedSample {
        SealedSample {
            whose: format!("account {key}"),
            owner: crate::crypto::account_owner(key),
            stored,
        }
    }

    /// A sink's sealed password, bound to the sink.
    pub(crate) fn sink(name: &str, stored: String) -> SealedSample {
        SealedSample {
            whose: format!("sink {name}"),
            owner: crate::crypto::sink_owner(name),
            stored,
        }
    }
}
