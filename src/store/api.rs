//! The interface every backend implements, and what it speaks: the error type, claims,
//! the newest rows, runs and what `store copy` moves. No SQL here.

use std::collections::HashMap;
use std::fmt;

use crate::domain::{
    Account, AccountKey, Attempt, Credential, FetchRecord, NewAccount, Secret, Ticket, TokenRow,
};
use crate::freshness::Stored;

/// Why a store operation failed. `exit.rs` turns each into an exit code.
#[derive(Debug)]
pub enum StoreError {
    /// The named account does not exist.
    NotFound(AccountKey),
    /// The account to add exists already.
    AlreadyExists(AccountKey),
    /// Not a wxtoken database, or one of another schema version, or none at all.
    Schema(String),
    /// Another process kept the database locked for longer than the busy timeout.
    Busy(String),
    /// The database could not be read or written.
    Io(String),
    /// The connection was lost while a transaction committed: whether it did is unknown,
    /// so it is not tried again (the intent it would have cleared still covers readers).
    Unsure(String),
    /// The file is not a database, or a damaged one.
    Corrupt(String),
    /// A secret could not be encrypted or opened (the key file: see `vault`).
    Key(String),
    /// This user or role may only read the database, and the command needs more.
    ReadOnly(String),
    /// The fetch outlived this holder's claim and another holder took the account over:
    /// the fetch was recorded as lost and its token dropped. Final, not worth a retry.
    LostClaim(String),
    /// The role to grant reading to does not exist (`store grant-reader`): a bad argument.
    NoSuchRole(String),
    /// `account remove` of a platform that still has tenants: `platform remove
    /// --with-authorizers` is the command for that.
    HasTenants(String),
    /// The server stopped answering in the middle of a unit of work, and so did a new
    /// connection: the watchdog ends the process with this (PostgreSQL).
    Unanswered(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::NotFound(key) => {
                write!(f, "no such account {key} (see wxtoken account list)")
            }
            StoreError::AlreadyExists(key) => write!(
                f,
                "account {key} already exists; use `wxtoken account set-secret` to change its secret"
            ),
            StoreError::Schema(m)
            | StoreError::Busy(m)
            | StoreError::Io(m)
            | StoreError::Unsure(m)
            | StoreError::Corrupt(m)
            | StoreError::Key(m)
            | StoreError::ReadOnly(m)
            | StoreError::LostClaim(m)
            | StoreError::NoSuchRole(m)
            | StoreError::HasTenants(m)
            | StoreError::Unanswered(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for StoreError {}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The result of trying to claim an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    Claimed,
    /// Another live holder has it (its id).
    Busy(String),
}

/// The newest row of one credential of one account, as [`Store::all_newest`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Newest {
    pub account_id: i64,
    pub kind: Credential,
    /// The row's id.
    pub id: i64,
    pub stored: Stored,
}

/// Every row kind, access token first, for the queries that read all of them at once.
pub(crate) fn all_kinds() -> Vec<Credential> {
    std::iter::once(Credential::AccessToken)
        .chain(Ticket::ALL.map(Credential::Ticket))
        .collect()
}

/// The credential a row kind names.
pub(crate) fn parse_kind(kind: &str) -> Option<Credential> {
    all_kinds().into_iter().find(|k| k.as_str() == kind)
}

/// What a recorded fetch did to the token history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Inserted,
    /// WeChat handed back the token that is already newest; no row was added.
    Unchanged,
    Failed,
}

/// A platform's newest pushed ticket (component_verify_ticket, suite_ticket).
#[derive(Debug, Clone)]
pub struct PlatformTicket {
    pub ticket: Secret,
    /// When WeChat created it (the push's CreateTime / TimeStamp), Unix seconds.
    pub create_time: i64,
}

/// What storing a ticket did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketStored {
    Stored,
    /// The stored ticket is as new or newer; it stays.
    Kept,
}

/// How a platform's pushes are verified and decrypted, and who sees each event.
#[derive(Debug, Clone)]
pub struct PlatformCrypto {
    /// The message Token.
    pub token: Secret,
    /// The 43-character EncodingAESKey.
    pub aes_key: Secret,
    /// The hook's shell command, if one is set.
    pub hook: Option<String>,
    pub hook_timeout: i64,
    /// Whether the hook sees auth codes, permanent codes and refresh tokens.
    pub hook_secrets: bool,
}

/// One thing a platform's pushes or onboarding did, as `status` shows it.
#[derive(Debug, Clone)]
pub struct PlatformEvent {
    pub at: i64,
    pub event: String,
    pub tenant: Option<String>,
    pub ok: bool,
    pub detail: Option<String>,
}

/// One credential of an account as the reports read it: its newest row, valid or not (with
/// the start of an unfinished fetch for an access token), and its newest attempt.
#[derive(Debug, Clone)]
pub struct CredentialRows {
    pub kind: Credential,
    /// Its `token` is empty: the reports never show a token, so it is not read.
    pub newest: Option<TokenRow>,
    pub attempt: Option<Attempt>,
}

/// An account with what the reports show of each of its credentials (its access token,
/// then its tickets), as [`ReadStore::account_page`] reads it. Its secrets are not read.
#[derive(Debug, Clone)]
pub struct AccountRows {
    pub account: Account,
    pub credentials: Vec<CredentialRows>,
}

impl AccountRows {
    /// Groups a page's rows (one per account and row kind, an account's rows adjacent)
    /// into accounts, each credential of an account in its order (access token, then its
    /// tickets), with what was found for it.
    pub(crate) fn group(
        rows: Vec<(Account, Credential, Option<TokenRow>, Option<Attempt>)>,
    ) -> Vec<AccountRows> {
        let mut out: Vec<AccountRows> = Vec::new();
        let mut found: Vec<(Credential, Option<TokenRow>, Option<Attempt>)> = Vec::new();
        let mut current: Option<Account> = None;
        let mut flush = |account: Option<Account>, found: &mut Vec<_>| {
            if let Some(account) = account {
                out.push(AccountRows::of(account, std::mem::take(found)));
            }
        };
        for (account, kind, token, attempt) in rows {
            if current.as_ref().is_none_or(|c| c.id != account.id) {
                flush(current.replace(account), &mut found);
            }
            found.push((kind, token, attempt));
        }
        flush(current, &mut found);
        out
    }

    fn of(
        account: Account,
        mut found: Vec<(Credential, Option<TokenRow>, Option<Attempt>)>,
    ) -> AccountRows {
        let credentials = account
            .credentials()
            .map(|kind| {
                let (newest, attempt) = match found.iter().position(|f| f.0 == kind) {
                    Some(i) => {
                        let (_, t, a) = found.swap_remove(i);
                        (t, a)
                    }
                    None => (None, None),
                };
                CredentialRows {
                    kind,
                    newest,
                    attempt,
                }
            })
            .collect();
        AccountRows {
            account,
            credentials,
        }
    }
}

/// A platform's tenants of one kind, counted, as [`ReadStore::tenant_groups`] reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantGroup {
    pub platform_id: i64,
    pub api: crate::domain::Api,
    /// Why refresh skips them, while it does (their hold's reason); `None`: not held.
    pub held_reason: Option<String>,
    pub count: i64,
}

/// How many accounts the reports read per page: one query each, memory bounded by it.
pub const REPORT_PAGE: usize = 1_000;

/// What every command may read.
pub trait ReadStore {
    /// Where the data lives, for people: a path, or a URL without its password.
    fn location(&self) -> String;
    /// False when what was read may be torn by a writer that came by meanwhile (a file
    /// read in place, without locks): read again.
    fn consistent(&self) -> bool {
        true
    }
    /// Every account, ordered by appid then agent.
    fn accounts(&self) -> Result<Vec<Account>>;
    fn account(&self, key: &AccountKey) -> Result<Option<Account>>;
    /// The newest row of an account's credential, valid or not, with the start of an
    /// unfinished fetch of the account if one is open (for an access token). `Ok(None)`
    /// means there is none; `get` tells an unknown account apart with `account`.
    fn latest_token(&self, key: &AccountKey, kind: Credential) -> Result<Option<TokenRow>>;
    /// The largest token row id now: rows above it were inserted later.
    fn newest_token_id(&self) -> Result<i64>;
    /// The ids of accounts with a fetch that started and was never recorded.
    fn unfinished_fetches(&self) -> Result<Vec<i64>>;
    /// The newest attempt at an account's credential, if any.
    fn last_attempt(&self, account_id: i64, kind: Credential) -> Result<Option<Attempt>>;
    /// The newest `refresh` run, and the newest successful one (see
    /// [`RunRow::is_success`]), for monitoring.
    fn last_runs(&self) -> Result<(Option<RunRow>, Option<RunRow>)>;
    /// How many token requests wxtoken sent per account in the quota day (China time) of
    /// the store clock's now (accounts without any are absent): the tries of access-token
    /// attempts, plus one for each forced stable refresh, whose normal-mode call before it
    /// is not recorded as an attempt of its own. The store's clock is `now` on SQLite, the
    /// server's on PostgreSQL, which stamps attempts with it: a host whose clock is off
    /// then neither misses this morning's fetches nor counts yesterday's.
    fn fetches_today(&self, now: i64) -> Result<HashMap<i64, i64>>;
    /// How many quota resets WeChat confirmed for an account in the month (China time) of
    /// the store clock's now, as for [`ReadStore::fetches_today`].
    fn quota_resets_this_month(&self, account_id: i64, now: i64) -> Result<i64>;

    /// Everything `store copy` moves: each account with its secret (as stored) and hold,
    /// and its newest token and tickets if still valid at `now`.
    fn export(&self, now: i64) -> Result<Vec<Exported>>;

    /// When a platform's newest ticket was created and stored, if it has one.
    fn ticket_times(&self, account_id: i64) -> Result<Option<(i64, i64)>>;
    /// A platform's newest events, newest first.
    fn platform_events(&self, account_id: i64, limit: i64) -> Result<Vec<PlatformEvent>>;

    /// Up to `limit` accounts after `after` (all from the first when `None`), in the order
    /// of [`ReadStore::accounts`] (appid, then agent), only the enabled ones if
    /// `enabled_only`, each with the newest row and the newest attempt of each of its
    /// credentials: one query per page (keyset pagination on the accounts' unique index,
    /// one descent of tokens_newest and of attempts_newest per account and kind), however
    /// many accounts and however long their histories. Times in this host's clock, as
    /// `latest_token` and `last_attempt` give them.
    fn account_page(
        &self,
        after: Option<&AccountKey>,
        limit: usize,
        enabled_only: bool,
    ) -> Result<Vec<AccountRows>>;
    /// Every platform (component, suite), ordered by appid then agent.
    fn platforms(&self) -> Result<Vec<Account>>;
    /// Every tenant (an account with a platform: authorizers, corps, 代开发 apps), enabled
    /// or not, counted by platform, kind and hold at `now` (on PostgreSQL, the server's
    /// now): what the platforms' lines in the reports sum up, in one aggregate query.
    fn tenant_groups(&self, now: i64) -> Result<Vec<TenantGroup>>;

    /// The account, or `NotFound`.
    fn require_account(&self, key: &AccountKey) -> Result<Account> {
        self.account(key)?
            .ok_or_else(|| StoreError::NotFound(key.clone()))
    }
}

/// Opens another handle on a store's data, from any thread.
pub type Opener = Box<dyn Fn() -> Result<Box<dyn Store>> + Send + Sync>;

/// What refresh, `get --reject` and the account commands write.
pub trait Store: ReadStore + Sinks + Send {
    /// Opens handles on the same data, one per worker thread. The workers call it
    /// themselves, so that their handles open in parallel: on PostgreSQL each is a
    /// connection (a backend process and a runtime), a few milliseconds apiece.
    fn opener(&self) -> Opener;

    /// The keys this store seals and opens secrets with (`keys::Keys`): none until the
    /// command unlocks the key file into them.
    fn keys(&self) -> &crate::keys::Keys;

    /// Makes sure that a handle that sat idle still reaches the database, replacing a
    /// connection the server or the network dropped meanwhile (PostgreSQL; a file always
    /// does). Called before work that follows a long wait, never inside a unit of work.
    fn revive(&self) -> Result<()> {
        Ok(())
    }

    fn add_account(&self, new: &NewAccount, now: i64) -> Result<()>;
    /// Removes an account with its whole history; refused (`HasTenants`) for a platform
    /// that still has tenants, which `remove_platform` removes with it.
    fn remove_account(&self, key: &AccountKey) -> Result<()>;
    /// Enabling or disabling also lifts a hold; enabling makes the account due.
    fn set_enabled(&self, key: &AccountKey, enabled: bool, now: i64) -> Result<()>;
    fn set_tickets(&self, key: &AccountKey, tickets: &[Ticket], now: i64) -> Result<()>;
    /// A new secret also lifts a hold and makes the account due, and drops a tenant's
    /// previous credential: a fetch made with that one, recorded later, must not put its
    /// renewal over the new secret (see `rows::plan_record`).
    fn set_secret(&self, key: &AccountKey, secret: &Secret, now: i64) -> Result<()>;
    /// Encrypts every secret still stored in plain text (by a version before encryption)
    /// with the current key, or with `all` every secret (`key rotate`), in one
    /// transaction, and leaves no old copy in free pages or the -wal. Returns how many it
    /// encrypted. A sealed secret the keys do not open is an error, and nothing changes.
    fn reseal(&self, all: bool) -> Result<usize>;
    /// Forgets every encrypted secret (their key is lost): each becomes `crypto::LOST`,
    /// its account held (`reason`) until its secret is set again. Tokens stay. Returns how
    /// many accounts and sinks lost theirs.
    fn forget_sealed(&self, reason: &str) -> Result<(usize, usize)>;
    /// Runs `work` holding the secrets lock, which every command that writes a secret or
    /// replaces the key file takes before it reads the key file: so a secret is sealed
    /// only with a key the file holds at that moment, and `key rotate` drops a key only
    /// while nothing can be sealed with it. SQLite: the write lock (one transaction,
    /// committed when `work` succeeds); PostgreSQL: an advisory lock of this session.
    fn with_secrets_lock(&self, work: &mut dyn FnMut() -> anyhow::Result<()>)
    -> anyhow::Result<()>;
    /// One sealed secret, an account's (except `except`'s) or else a sink's password: what
    /// a key file is checked against before it seals a new one. One row, found without
    /// reading the others, so that adding an account costs the same at any size.
    fn sealed_sample(&self, except: Option<&AccountKey>) -> Result<Option<SealedSample>>;
    /// The key ids that stored secrets are sealed with.
    fn sealed_kids(&self) -> Result<std::collections::BTreeSet<String>>;
    /// Whether secrets are still stored in plain text by a version before encryption,
    /// judged without reading every row: by the oldest account (until the first command
    /// that needs the key encrypts them all, every secret of such a database is in plain
    /// text, the oldest one included) and by the sinks (a few rows).
    fn has_plaintext(&self) -> Result<bool>;

    /// Stores a platform's ticket, sealed, unless the stored one was created at the same
    /// time or later (by `create_time`): pushes may arrive out of order.
    fn set_platform_ticket(
        &self,
        account_id: i64,
        ticket: &Secret,
        create_time: i64,
        now: i64,
    ) -> Result<TicketStored>;
    /// A platform's newest ticket, opened.
    fn platform_ticket(&self, account_id: i64) -> Result<Option<PlatformTicket>>;
    /// Sets how a platform's pushes are verified and decrypted (both sealed); keeps its hook.
    fn set_platform_crypto(
        &self,
        account_id: i64,
        token: &Secret,
        aes_key: &Secret,
        now: i64,
    ) -> Result<()>;
    /// Sets (or with `None` removes) a platform's hook; `NotFound`-like error without crypto.
    fn set_platform_hook(
        &self,
        account_id: i64,
        hook: Option<&str>,
        timeout: i64,
        secrets: bool,
        now: i64,
    ) -> Result<bool>;
    /// A platform's push settings, opened.
    fn platform_crypto(&self, account_id: i64) -> Result<Option<PlatformCrypto>>;
    /// Records what a push or an onboarding did (`failure`: why it failed).
    fn record_platform_event(
        &self,
        account_id: i64,
        at: i64,
        event: &str,
        tenant: Option<&str>,
        failure: Option<&str>,
    ) -> Result<()>;
    /// Holds an account until its configuration changes (a new secret, `account enable`),
    /// with the reason status shows: a revoked authorization.
    fn hold_account(&self, key: &AccountKey, reason: &str, now: i64) -> Result<()>;
    /// Removes a platform with its tenants (and their whole history); returns how many
    /// tenants went with it.
    fn remove_platform(&self, key: &AccountKey) -> Result<usize>;

    /// The enabled accounts a run takes, by id, found by index without reading their rows:
    /// every one (`window` None), or those due within `window` seconds of the store's now
    /// (`due_at` before then or unknown, asked for with fetch_due, or with an unfinished
    /// fetch), plus with `plain` every enabled account that is not a platform kind (a
    /// plain `refresh` fetches those whatever their age). Non-tenants first, then tenants;
    /// within each, unfinished fetches first, then the earliest due.
    fn target_ids(&self, now: i64, window: Option<i64>, plain: bool) -> Result<Vec<i64>>;
    /// How many accounts are enabled.
    fn count_enabled(&self) -> Result<i64>;
    /// Whether a token row was fetched later than `now` (on PostgreSQL, the server's now):
    /// the clock stepped back since, and expiries by the due index cannot be trusted.
    fn clock_stepped_back(&self, now: i64) -> Result<bool>;
    /// The accounts with these ids, in that order (an id that is gone is left out).
    fn accounts_by_ids(&self, ids: &[i64]) -> Result<Vec<Account>>;

    /// Claims an account for fetching, atomically across processes. A claim that expired,
    /// or whose holder is known to be gone, is taken over.
    fn claim(&self, account_id: i64, now: i64, ttl: i64) -> Result<Claim>;
    /// Gives this process's claim back.
    fn release(&self, account_id: i64) -> Result<()>;
    /// The newest row of every credential of every enabled account, with the start of an
    /// unfinished fetch for an access token, in one query: what refresh-ahead looks at
    /// before it claims anything (the claim path reads each account again under its claim).
    /// Times are in this host's clock, as `latest_token` gives them.
    fn all_newest(&self) -> Result<Vec<Newest>>;
    /// Notes that this process is about to send a token request for the account. Written
    /// before the request leaves: if the outcome is never recorded, readers know that the
    /// stored token may have been replaced at WeChat.
    fn begin_fetch(&self, account_id: i64, now: i64) -> Result<()>;
    /// Ends a token WeChat says is dead (40001 to `quota`) at `now` (on PostgreSQL, the
    /// server's now), unless it expired already: `get` stops serving it and the next
    /// refresh finds the account due. The row stays, as every fetch's does.
    fn retire_token(&self, token_id: i64, now: i64) -> Result<()>;
    /// Records a fetch all at once: the new row (unless WeChat handed back the newest one
    /// again), the attempt, and for an access token the account's hold and due flag (only
    /// while its secret is still the one the fetch used) and the end of this process's
    /// intent (unless the request may have created a token we never saw).
    fn record_fetch(&self, record: &FetchRecord) -> Result<Recorded>;

    /// When this account's forced refreshes happened, over the retention window, on the
    /// store's clock, and that clock's now to judge them by: `now` on SQLite, the server's
    /// on PostgreSQL (so that a host whose clock is off cannot overspend WeChat's budget).
    fn forced_refreshes(&self, account_id: i64, now: i64) -> Result<ForcedRefreshes>;
    /// Notes a forced refresh at `now` (on PostgreSQL, at the server's now).
    fn note_forced_refresh(&self, account_id: i64, now: i64) -> Result<()>;

    /// Records a quota reset at `at` (on PostgreSQL, at the server's now; `failure`: its
    /// errcode, if any, and the message shown);
    /// after a successful one, releases the account's hold if its last token fetch failed
    /// with 45009 (the daily quota), all at once. Returns whether a hold was released.
    fn record_quota_reset(
        &self,
        account_id: i64,
        at: i64,
        failure: Option<(Option<i64>, &str)>,
    ) -> Result<bool>;

    /// Deletes token rows beyond the newest `keep` per account and kind, except those still
    /// valid; attempts older than `attempts_before`; old forced-refresh records; expired
    /// claims. Returns (tokens, attempts) deleted.
    fn prune(&self, now: i64, keep: i64, attempts_before: i64) -> Result<(usize, usize)>;

    /// Fills an empty store with what `export` gave and the source's sinks (their
    /// passwords sealed again), all or nothing; a store that has any account is refused.
    fn import(&self, items: &[Exported], sinks: &[SinkRow]) -> Result<()>;
    /// Records a `refresh` run, and forgets runs older than `before`, except the newest
    /// success: its time is what the main alert watches.
    fn record_run(&self, run: &RunRow, before: i64) -> Result<()>;
}

/// A stored secret to check a key file against: whose it is (for people), the owner it is
/// bound to (`crypto::account_owner`, `crypto::sink_owner`) and the stored value.
pub struct SealedSample {
    pub whose: String,
    pub owner: Vec<u8>,
    pub stored: String,
}

/// An account's recent forced refreshes, with the store clock's now they are judged by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForcedRefreshes {
    pub at: Vec<i64>,
    pub now: i64,
}

/// One account as `store copy` moves it.
#[derive(Debug, Clone)]
pub struct Exported {
    /// Its secret and previous secret opened (sealed again for the target); its
    /// `platform` is the source's id, which means nothing in the target: see below.
    pub account: Account,
    /// (kind, row): the newest valid row of the token and of each ticket.
    pub tokens: Vec<(String, TokenRow)>,
    /// The key of its platform (a tenant's, or a 代开发 corp's template): ids differ
    /// between stores, keys do not.
    pub platform: Option<AccountKey>,
    /// A platform's newest pushed ticket, opened, with when it was stored.
    pub ticket: Option<(PlatformTicket, i64)>,
    /// A platform's push settings, opened, with when they were set.
    pub crypto: Option<(PlatformCrypto, i64)>,
    /// A platform's newest events (at most [`EXPORTED_EVENTS`]), newest first.
    pub events: Vec<PlatformEvent>,
}

/// How many of each platform's newest events `store copy` moves.
pub const EXPORTED_EVENTS: i64 = 100;

impl Exported {
    /// An account with its tokens and nothing of a platform yet (`export` fills those in).
    pub(crate) fn plain(account: Account, tokens: Vec<(String, TokenRow)>) -> Exported {
        Exported {
            account,
            tokens,
            platform: None,
            ticket: None,
            crypto: None,
            events: Vec::new(),
        }
    }
}

/// One `refresh` run, as monitoring sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunRow {
    pub started_at: i64,
    pub finished_at: i64,
    pub duration_ms: i64,
    /// `all` (every enabled account), `ahead` (--if-expiring-within) or `named` (--appid).
    pub scope: String,
    pub accounts: i64,
    pub refreshed: i64,
    pub fresh: i64,
    pub busy: i64,
    pub held: i64,
    pub failed: i64,
}

impl RunRow {
    /// A run counts as a success when it covered every enabled account (not only named
    /// ones) and none of them failed or was held.
    pub fn is_success(&self) -> bool {
        self.scope != "named" && self.failed == 0 && self.held == 0
    }
}

/// A sink as stored.
#[derive(Debug, Clone)]
pub struct SinkRow {
    pub id: i64,
    pub name: String,
    /// `redis` or `exec`.
    pub kind: String,
    /// The Redis URL without its password, or the command.
    pub target: String,
    pub password: Option<Secret>,
    pub format: Option<String>,
    pub prefix: Option<String>,
    pub key_template: Option<String>,
    /// Selectors (`sink::Selector`): accounts as `AccountKey` prints them, and
    /// `component:APPID` / `suite:SUITEID` for a platform with all its tenants; empty means
    /// every account that is neither a platform nor a tenant.
    pub accounts: Vec<String>,
    /// `--include-refresh-tokens`: publish authorizers' refresh tokens too (never
    /// permanent codes).
    pub refresh_tokens: bool,
    pub timeout: i64,
    pub created_at: i64,
    pub last: Option<SinkResult>,
}

/// The outcome of one publish to one sink. `error` never holds a key or a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkResult {
    pub at: i64,
    pub ok: bool,
    pub published: i64,
    pub failed: i64,
    pub error: Option<String>,
}

/// The newest row of one kind of an account, with its id.
#[derive(Debug, Clone)]
pub struct NewestRow {
    pub id: i64,
    pub token: String,
    pub expires_at: i64,
}

/// What the sink commands and publishing need from the store.
pub trait Sinks {
    /// Adds a sink; false if one of that name exists already.
    fn add_sink(&self, sink: &SinkRow) -> Result<bool>;
    /// Every sink, by name.
    fn sinks(&self) -> Result<Vec<SinkRow>>;
    fn sink(&self, name: &str) -> Result<Option<SinkRow>>;
    /// Removes a sink; false if there is none of that name.
    fn remove_sink(&self, name: &str) -> Result<bool>;
    fn record_sink_result(&self, sink_id: i64, result: &SinkResult) -> Result<()>;
    /// The newest row of each credential of each of these accounts, valid or not, with its
    /// id and its token: one query, however many ids (the caller bounds a batch). An
    /// account or credential without a row has no entry; the order is unspecified.
    fn newest_rows(&self, account_ids: &[i64]) -> Result<Vec<(i64, Credential, NewestRow)>>;
    /// The token row an exec sink last received, for each account and credential it has
    /// received one of: (account id, credential, token row id).
    fn published_rows(&self, sink_id: i64) -> Result<Vec<(i64, Credential, i64)>>;
    fn note_published(
        &self,
        sink_id: i64,
        account_id: i64,
        kind: Credential,
        token_id: i64,
    ) -> Result<()>;
}
