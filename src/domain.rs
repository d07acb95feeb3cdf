//! The words of the domain: accounts and how they are named, the token APIs, the kinds of
//! credential, a token row and the record of one fetch. Every other module speaks these;
//! this module imports nothing of wxtoken's, so that a store, a publisher or a new kind of
//! credential can be added without dragging the HTTP client or the CLI along.

use std::fmt;

use crate::freshness::Stored;

/// Where WeChat's API lives unless `--api-base` / `WXTOKEN_API_BASE` says otherwise.
pub const DEFAULT_API_BASE: &str = "https://api.weixin.qq.com";
/// Where WeCom's API lives unless `--work-api-base` / `WXTOKEN_WORK_API_BASE` says otherwise.
pub const DEFAULT_WORK_API_BASE: &str = "https://qyapi.weixin.qq.com";

/// An AppSecret / corpsecret. `Debug` and `Display` never show it; only `expose` does, and
/// only the HTTP client and the store call that.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String, Option<String>, bool);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value, None, false)
    }

    /// A secret stored encrypted with key `kid` that the keys loaded did not open (or a
    /// marker: forgotten with a lost key, a newer scheme); one read with no keys loaded at
    /// all is `unread`. `expose` gives the empty string; commands that use a secret unlock
    /// the vault first, which refuses to go on while any secret stays locked.
    pub fn locked(kid: String) -> Self {
        Secret(String::new(), Some(kid), false)
    }

    /// A secret stored encrypted with key `kid` and read by a store that was given no keys
    /// (`keys::Keys`): locked like any other, and an error to use (`vault::require_open`).
    pub fn unread(kid: String) -> Self {
        Secret(String::new(), Some(kid), true)
    }

    /// Whether this secret was read without the key loaded (see `unread`).
    pub fn is_unread(&self) -> bool {
        self.2
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The id of the key that encrypted this secret, when it is still locked.
    pub fn locked_kid(&self) -> Option<&str> {
        self.1.as_deref()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// How an account is addressed: an appid, or a WeCom corpid plus agentid (or module name).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccountKey {
    pub appid: String,
    /// Empty for Official Accounts and Mini Programs.
    pub agent: String,
}

impl AccountKey {
    /// An Official Account or Mini Program, checked like every identifier.
    pub fn appid(appid: &str) -> Result<AccountKey, String> {
        check_identifier("appid/corpid", appid)?;
        Ok(AccountKey {
            appid: appid.to_string(),
            agent: String::new(),
        })
    }

    /// A WeCom app (or a module without an agentid, such as `contacts`).
    pub fn wecom(corpid: &str, agent: &str) -> Result<AccountKey, String> {
        check_identifier("appid/corpid", corpid)?;
        check_identifier("agentid", agent)?;
        Ok(AccountKey {
            appid: corpid.to_string(),
            agent: agent.to_string(),
        })
    }

    /// The one parser for an account written as one word: `APPID`, or `CORPID/AGENTID` for
    /// a WeCom app, the way `Display` writes it.
    pub fn parse(text: &str) -> Result<AccountKey, String> {
        match text.split_once('/') {
            Some((corpid, agent)) => AccountKey::wecom(corpid, agent),
            None => AccountKey::appid(text),
        }
    }

    pub fn is_wecom(&self) -> bool {
        !self.agent.is_empty()
    }
}

impl fmt::Display for AccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.agent.is_empty() {
            f.write_str(&self.appid)
        } else {
            write!(f, "{}/{}", self.appid, self.agent)
        }
    }
}

/// Identifiers end up in SQL parameters, URLs and one-line messages: printable ASCII only,
/// no '/', which separates corpid and agentid.
fn check_identifier(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if value.len() > 128 || !value.bytes().all(|b| b.is_ascii_graphic()) || value.contains('/') {
        let shown: String = value
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(40)
            .collect();
        let more = if value.chars().count() > 40 {
            "…"
        } else {
            ""
        };
        return Err(format!(
            "{what} '{shown}{more}' is not valid: use up to 128 printable ASCII characters, no spaces or '/'"
        ));
    }
    Ok(())
}

/// Which token endpoint an account uses. The platform kinds (a third-party platform and
/// the accounts it manages) are accounts too, so that claims, leases, intents, holds,
/// status, metrics, sinks and `store copy` cover them without a second model: a
/// *platform* (an Open Platform component, a WeCom suite) fetches its token with a pushed
/// ticket; a *tenant* (an authorizer, a corp) fetches its token with its platform's token
/// and its durable credential (a refresh token, a permanent code), kept where an
/// account keeps its secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `GET /cgi-bin/token`: each fetch invalidates the previous token after 5 minutes.
    Token,
    /// `POST /cgi-bin/stable_token`: isolated from the classic token.
    Stable,
    /// WeCom `GET /cgi-bin/gettoken`.
    Work,
    /// An Open Platform third-party platform: `api_component_token`, with the pushed
    /// component_verify_ticket. Key: (component appid, "").
    Component,
    /// An Official Account or Mini Program managed by a component: `api_authorizer_token`
    /// with the component token and its refresh token (the secret). Key: (its appid,
    /// the component appid).
    Authorizer,
    /// A WeCom third-party app or 代开发 template: `get_suite_token`, with the pushed
    /// suite_ticket. Key: (suite id, "").
    Suite,
    /// A corp that installed a suite: `get_corp_token` with the suite token and its
    /// permanent code (the secret). Key: (corpid, suite id).
    Corp,
    /// A WeCom provider (服务商): `get_provider_token` with the provider secret; no
    /// ticket, no tenants. Key: (provider corpid, "").
    Provider,
}

impl Api {
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Token => "token",
            Api::Stable => "stable",
            Api::Work => "work",
            Api::Component => "component",
            Api::Authorizer => "authorizer",
            Api::Suite => "suite",
            Api::Corp => "corp",
            Api::Provider => "provider",
        }
    }

    /// The APIs `account add --api` takes; the platform kinds are added by their own
    /// commands.
    pub fn parse(s: &str) -> Option<Api> {
        match s {
            "token" => Some(Api::Token),
            "stable" => Some(Api::Stable),
            "work" => Some(Api::Work),
            _ => None,
        }
    }

    /// How the store keeps it: the host family (`token` for Open Platform, `work` for
    /// WeCom) and the platform role ('' for a plain account).
    pub fn columns(self) -> (&'static str, &'static str) {
        match self {
            Api::Token | Api::Stable | Api::Work => (self.as_str(), ""),
            Api::Component | Api::Authorizer => ("token", self.as_str()),
            Api::Suite | Api::Corp | Api::Provider => ("work", self.as_str()),
        }
    }

    /// The inverse of [`Api::columns`]; unknown values (a newer wxtoken's) read as the
    /// classic API, as before.
    pub fn from_columns(api: &str, role: &str) -> Api {
        match role {
            "component" => Api::Component,
            "authorizer" => Api::Authorizer,
            "suite" => Api::Suite,
            "corp" => Api::Corp,
            "provider" => Api::Provider,
            _ => Api::parse(api).unwrap_or(Api::Token),
        }
    }

    /// A platform: its token needs a pushed ticket.
    pub fn is_platform(self) -> bool {
        matches!(self, Api::Component | Api::Suite)
    }

    /// A tenant: its token needs its platform's token.
    pub fn is_tenant(self) -> bool {
        matches!(self, Api::Authorizer | Api::Corp)
    }

    /// One of the platform kinds, whose tokens are fetched ahead of expiry only (never
    /// again while they have more than the due window left: a platform token fetched
    /// twice breaks every holder of the first).
    pub fn is_platform_kind(self) -> bool {
        self.is_platform() || self.is_tenant() || self == Api::Provider
    }

    /// Whether a new token kills the one before it (within 5 minutes): the classic API,
    /// and, to be safe, the Open Platform's component and authorizer tokens (a second
    /// component fetch breaks the first with 40001).
    pub fn is_classic(self) -> bool {
        matches!(self, Api::Token | Api::Component | Api::Authorizer)
    }

    /// Whether it lives on WeCom's host.
    pub fn is_wecom(self) -> bool {
        matches!(self, Api::Work | Api::Suite | Api::Corp | Api::Provider)
    }

    /// How long a pushed ticket stays valid: 12 h on Open Platform, 30 min for a suite.
    pub fn ticket_validity(self) -> Option<i64> {
        match self {
            Api::Component => Some(12 * 3600),
            Api::Suite => Some(30 * 60),
            _ => None,
        }
    }

    /// The platform kind a tenant belongs to.
    pub fn platform_kind(self) -> Option<Api> {
        match self {
            Api::Authorizer => Some(Api::Component),
            Api::Corp => Some(Api::Suite),
            _ => None,
        }
    }

    /// How people call the account's durable credential.
    pub fn secret_name(self) -> &'static str {
        match self {
            Api::Token | Api::Stable => "AppSecret",
            Api::Work => "secret",
            Api::Component => "component_appsecret",
            Api::Authorizer => "refresh token",
            Api::Suite => "suite_secret",
            Api::Corp => "permanent code",
            Api::Provider => "provider_secret",
        }
    }

    /// How people call its kind, in messages.
    pub fn noun(self) -> &'static str {
        match self {
            Api::Token | Api::Stable | Api::Work => "account",
            Api::Component => "component",
            Api::Authorizer => "authorizer",
            Api::Suite => "suite",
            Api::Corp => "corp",
            Api::Provider => "provider",
        }
    }
}

/// A JS-SDK ticket, derived from an access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ticket {
    /// Official Account `jsapi`, or a WeCom corp's `jsapi` ticket.
    Jsapi,
    /// Official Account card ticket.
    WxCard,
    /// WeCom app ticket for `wx.agentConfig`.
    AgentConfig,
}

impl Ticket {
    pub const ALL: [Ticket; 3] = [Ticket::Jsapi, Ticket::WxCard, Ticket::AgentConfig];

    /// The name used on the command line and as the row kind in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Ticket::Jsapi => "jsapi",
            Ticket::WxCard => "wx_card",
            Ticket::AgentConfig => "agent_config",
        }
    }

    pub fn parse(s: &str) -> Option<Ticket> {
        Ticket::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Whether accounts of this API have this ticket.
    pub fn fits(self, api: Api) -> bool {
        match self {
            Ticket::Jsapi => !matches!(api, Api::Component | Api::Suite | Api::Provider),
            Ticket::WxCard => matches!(api, Api::Token | Api::Stable | Api::Authorizer),
            Ticket::AgentConfig => matches!(api, Api::Work | Api::Corp),
        }
    }
}

/// A kind of credential wxtoken keeps per account: the access token, or a ticket fetched
/// with it. Each has its own timestamped rows and attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    AccessToken,
    Ticket(Ticket),
}

impl Credential {
    /// The row kind in the store (and the `type` in `get --json` for a ticket).
    pub fn as_str(self) -> &'static str {
        match self {
            Credential::AccessToken => "access_token",
            Credential::Ticket(t) => t.as_str(),
        }
    }

    /// How messages name it: `token`, or `jsapi ticket`.
    pub fn label(self) -> String {
        match self {
            Credential::AccessToken => "token".to_string(),
            Credential::Ticket(t) => format!("{} ticket", t.as_str()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Account {
    pub id: i64,
    pub key: AccountKey,
    pub api: Api,
    pub secret: Secret,
    pub enabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
    /// Refresh skips the account until this Unix time (`policy::UNTIL_FIXED`: until its
    /// configuration changes).
    pub held_until: Option<i64>,
    pub held_reason: Option<String>,
    /// The JS-SDK tickets fetched right after each new token.
    pub tickets: Vec<Ticket>,
    /// set-secret or enable asked for a fetch at the next refresh of either kind.
    pub fetch_due: bool,
    /// A tenant's platform (an authorizer's component, a corp's suite), or the 代开发
    /// template a WeCom account came from: the platform account's id.
    pub platform: Option<i64>,
    /// A tenant's credential before WeChat's last rotation of it, kept until the new one
    /// has worked once (a refresh token that WeChat replaced in a reply).
    pub previous_secret: Option<Secret>,
    /// A suite's provider corpid: the other receiveid its pushes may carry.
    pub receiver: Option<String>,
}

impl Account {
    /// The hold refresh honours at `now`, if any: until when, and why.
    pub fn held_at(&self, now: i64) -> Option<(i64, String)> {
        let until = self.held_until.filter(|&t| t > now)?;
        Some((until, self.held_reason.clone().unwrap_or_default()))
    }

    /// Its access token, then its tickets.
    pub fn credentials(&self) -> impl Iterator<Item = Credential> + '_ {
        std::iter::once(Credential::AccessToken)
            .chain(self.tickets.iter().map(|&t| Credential::Ticket(t)))
    }
}

/// What `account add` stores.
#[derive(Debug, Clone)]
pub struct NewAccount {
    pub key: AccountKey,
    pub api: Api,
    pub secret: Secret,
    pub tickets: Vec<Ticket>,
    /// The platform account's id, for a tenant or a 代开发 corp.
    pub platform: Option<i64>,
    /// A suite's provider corpid.
    pub receiver: Option<String>,
}

/// One row of the token history (a token or a ticket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub id: i64,
    pub token: String,
    pub expires_in: i64,
    pub fetched_at: i64,
    pub expires_at: i64,
    /// For an access token: when an unfinished fetch of the account started, if one is open.
    pub unfinished_fetch: Option<i64>,
    /// The account uses the classic API, where a new token kills the old one.
    pub classic: bool,
}

impl TokenRow {
    /// What readers judge the row by.
    pub fn stored(&self) -> Stored {
        Stored {
            fetched_at: self.fetched_at,
            expires_in: self.expires_in,
            expires_at: self.expires_at,
            unfinished_fetch: self.unfinished_fetch,
            classic: self.classic,
        }
    }
}

/// A token (or ticket) as WeChat handed it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub token: String,
    pub expires_in: i64,
    /// A new durable credential that came with the token (an authorizer's refresh token
    /// that differs from the one sent): stored in the transaction that records the token.
    pub renewed: Option<Secret>,
}

/// Why a fetch failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// WeChat answered with an errcode.
    WeChat { errcode: i64, errmsg: String },
    /// The HTTP status was not 200 (a proxy, a load balancer, a wrong base URL).
    Http { status: u16 },
    /// No answer: connection refused or dropped, DNS, TLS, timeout.
    Transport(String),
    /// An answer that is not a WeChat reply at all: not JSON, empty, too large.
    NotJson(String),
    /// JSON, but not a valid token reply: a missing or malformed field.
    Invalid(String),
}

/// One call, after retries: the result (a token, unless the call is about something
/// else), how many tries it took, and when the successful request was sent (Unix seconds).
#[derive(Debug)]
pub struct Outcome<T = Fetched> {
    pub result: Result<T, Failure>,
    pub tries: u32,
    pub sent_at: i64,
    pub started_at: i64,
    pub duration_ms: i64,
    /// Some try reached the server without a usable answer (a timeout after sending, a
    /// proxy's error page, a reply we refused): WeChat may have issued a token we never saw.
    pub unsure: bool,
    /// WeChat's `Date` header minus the local clock, in seconds, from the last reply.
    pub clock_offset: Option<i64>,
}

impl<T> Outcome<T> {
    /// Whether WeChat may have issued a token that this outcome does not carry.
    pub fn may_have_issued(&self) -> bool {
        self.result.is_err() && self.unsure
    }
}

/// What a failed fetch means for the account beyond the attempt: how long refresh skips it.
/// A length, not an end: the store ends it on its own clock (the server's, on PostgreSQL),
/// so that a host whose clock is off can neither cut a hold short nor stretch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Nothing: the next run tries again as usual.
    None,
    /// The configuration is wrong; skip the account until its secret changes, it is
    /// re-enabled, or `refresh --force` is given.
    Attention,
    /// Until the next midnight in China (UTC+8), when WeChat's daily quotas reset.
    UntilQuotaReset,
    /// For this many seconds.
    For(i64),
}

/// The record of one fetch, as the engine hands it to the store: which credential of which
/// account, how the fetch went, and for an access token the hold it puts the account on
/// (`None` lifts any): for how long, and why.
#[derive(Debug)]
pub struct FetchRecord {
    pub account_id: i64,
    pub kind: Credential,
    pub outcome: Outcome,
    pub hold: Option<(Hold, String)>,
    /// The secret the fetch used: its outcome changes the account's hold and due flag only
    /// while that is still the account's secret.
    pub secret: Secret,
}

/// How a recorded attempt ended, as the store gives it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    Ok,
    /// WeChat handed back the token that was already newest; no row was added.
    Unchanged,
    Failed(Failure),
}

/// The record of one fetch attempt, as `status` shows it.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub started_at: i64,
    pub duration_ms: i64,
    pub tries: i64,
    pub result: AttemptResult,
    /// WeChat's clock minus ours, when its reply said.
    pub clock_offset: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_and_display_hide_it() {
        let s = Secret::new("0123456789abcdef0123456789abcdef".into());
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(format!("{s}"), "***");
    }

    #[test]
    fn one_account_parser() {
        let wx = AccountKey::parse("wx1234567890abcdef").unwrap();
        assert_eq!(wx.to_string(), "wx1234567890abcdef");
        assert!(!wx.is_wecom());
        let wecom = AccountKey::parse("ww0123/1000002").unwrap();
        assert_eq!(
            (wecom.appid.as_str(), wecom.agent.as_str()),
            ("ww0123", "1000002")
        );
        assert_eq!(AccountKey::parse(&wecom.to_string()).unwrap(), wecom);
        for bad in ["", "ww/", "/1000002", "a b", "ww/1/2", "wx\u{7f}"] {
            assert!(AccountKey::parse(bad).is_err(), "{bad:?}");
        }
        let long = "x".repeat(129);
        assert!(AccountKey::parse(&long).unwrap_err().contains('…'));
    }

    #[test]
    fn credential_kinds() {
        assert_eq!(Credential::AccessToken.as_str(), "access_token");
        assert_eq!(Credential::Ticket(Ticket::WxCard).as_str(), "wx_card");
        assert_eq!(Credential::Ticket(Ticket::Jsapi).label(), "jsapi ticket");
        for t in Ticket::ALL {
            assert_eq!(Ticket::parse(t.as_str()), Some(t));
        }
        assert!(!Ticket::AgentConfig.fits(Api::Token));
        assert!(!Ticket::WxCard.fits(Api::Work));
    }
}
