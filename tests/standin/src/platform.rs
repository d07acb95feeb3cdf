//! Third-party platforms: Open Platform components (and their authorizers) and WeCom suites
//! (and their corps), plus the WeCom provider token. See `platforms.md` §2–§4.
//!
//! Default behaviour, all on the virtual clock ([`StandIn::advance`]):
//! - A component ticket is valid [`COMPONENT_TICKET_LIFE`] (12 h) from
//!   [`StandIn::push_component_ticket`]; any pushed ticket still that young is accepted. A
//!   suite ticket is valid [`SUITE_TICKET_LIFE`] (30 min) the same way.
//! - Every platform and tenant token lives 7200 s.
//! - A new component token leaves the older ones of that component valid for
//!   [`REPLACED_GRACE`] (300 s) more, then they are refused with 40001 (never 42001, which
//!   is kept for a token that simply ran out). The same holds for authorizer tokens of one
//!   (component, authorizer). [`StandIn::set_replaced_token_grace`] changes it; zero
//!   retires them at once. (The classic `/cgi-bin/token` stand-in instead keeps exactly the
//!   previous token until the next fetch.)
//! - Suite, provider and corp tokens: a repeat fetch within a token's life returns the same
//!   token with its remaining life, as WeCom's staff describe (for corp tokens this is
//!   *uncertain* on the real platform).
//! - The refresh token of an authorizer never changes unless a test asks
//!   ([`StandIn::rotate_refresh_token_on_next`]) or the authorizer re-authorizes (an auth code
//!   added for a known authorizer: exchanging it issues a new refresh token, kills the old one
//!   and the authorizer's live tokens at once).
//! - Authorization codes (Open Platform) live [`AUTH_CODE_LIFE`] (1 h), WeCom auth codes
//!   [`SUITE_AUTH_CODE_LIFE`] (10 min); both are single use.
//! - Authorizer tokens and corp tokens are accepted by the business stand-ins
//!   ([`MENU_GET`](crate::MENU_GET), [`WORK_USER_GET`](crate::WORK_USER_GET)) and the ticket paths; component, suite and provider tokens are not.
//!
//! Scripted replies ([`StandIn::push`] / [`StandIn::push_for`]) override the default for the
//! next call. The key of `push_for` and `hits_for`: the component appid for
//! [`COMPONENT_TOKEN`], [`QUERY_AUTH`], [`AUTHORIZER_LIST`] and [`START_PUSH_TICKET`]; the
//! authorizer appid for [`AUTHORIZER_TOKEN`]; the suite id for [`SUITE_TOKEN`] and the
//! permanent-code paths (the owner of the suite token); the provider corpid for
//! [`PROVIDER_TOKEN`]; the `auth_corpid` for [`CORP_TOKEN`] and the auth-info paths. A
//! scripted [`Reply::Token`] on a token path is answered in that path's shape and adopted as
//! a token of that kind (without retiring others).

use std::collections::HashMap;
use std::time::Duration;

use super::{Kind, LIFETIME, Reply, Request, StandIn, State};
use super::{json_escape, parse_flat_json};

pub const COMPONENT_TOKEN: &str = "/cgi-bin/component/api_component_token";
pub const AUTHORIZER_TOKEN: &str = "/cgi-bin/component/api_authorizer_token";
pub const QUERY_AUTH: &str = "/cgi-bin/component/api_query_auth";
pub const AUTHORIZER_LIST: &str = "/cgi-bin/component/api_get_authorizer_list";
pub const START_PUSH_TICKET: &str = "/cgi-bin/component/api_start_push_ticket";
pub const SUITE_TOKEN: &str = "/cgi-bin/service/get_suite_token";
pub const PROVIDER_TOKEN: &str = "/cgi-bin/service/get_provider_token";
pub const PERMANENT_CODE: &str = "/cgi-bin/service/v2/get_permanent_code";
pub const PERMANENT_CODE_V1: &str = "/cgi-bin/service/get_permanent_code";
pub const AUTH_INFO: &str = "/cgi-bin/service/v2/get_auth_info";
pub const AUTH_INFO_V1: &str = "/cgi-bin/service/get_auth_info";
pub const CORP_TOKEN: &str = "/cgi-bin/service/get_corp_token";

/// How long a pushed component ticket is accepted, in virtual seconds.
pub const COMPONENT_TICKET_LIFE: u64 = 12 * 3600;
/// How long a pushed suite ticket is accepted, in virtual seconds.
pub const SUITE_TICKET_LIFE: u64 = 30 * 60;
/// How long an Open Platform authorization code can be exchanged.
pub const AUTH_CODE_LIFE: u64 = 3600;
/// How long a WeCom auth code can be exchanged.
pub const SUITE_AUTH_CODE_LIFE: u64 = 600;
/// How long a replaced component or authorizer token stays valid, unless a test sets another.
pub const REPLACED_GRACE: u64 = 300;
/// Most authorizers one `api_get_authorizer_list` page may ask for.
pub const AUTHORIZER_PAGE_MAX: u64 = 500;
/// Unix time of virtual second 0, for `auth_time`.
const EPOCH: u64 = 1_700_000_000;
const FIRST_AGENTID: u64 = 1_000_002;

const INVALID_TOKEN: &str = "invalid credential, access_token is invalid or not latest";

pub(crate) fn is_platform_route(route: &str) -> bool {
    matches!(
        route,
        COMPONENT_TOKEN
            | AUTHORIZER_TOKEN
            | QUERY_AUTH
            | AUTHORIZER_LIST
            | START_PUSH_TICKET
            | SUITE_TOKEN
            | PROVIDER_TOKEN
            | PERMANENT_CODE
            | PERMANENT_CODE_V1
            | AUTH_INFO
            | AUTH_INFO_V1
            | CORP_TOKEN
    )
}

/// Whether a suite id names a 代开发 (customized app) template.
fn customized(suite_id: &str) -> bool {
    suite_id.starts_with("dk")
}

#[derive(Default)]
pub(crate) struct Platforms {
    components: HashMap<String, Component>,
    suites: HashMap<String, Suite>,
    /// Provider corpid → provider_secret.
    providers: HashMap<String, String>,
    /// `None`: [`REPLACED_GRACE`].
    grace: Option<u64>,
    /// Orders authorizers and corps by when they were added.
    order: u64,
}

#[derive(Default)]
struct Component {
    secret: String,
    /// Ticket → the virtual second it was pushed.
    tickets: HashMap<String, u64>,
    authorizers: HashMap<String, Authorizer>,
    codes: HashMap<String, AuthCode>,
    push_starts: u64,
}

struct Authorizer {
    refresh: String,
    /// The refresh token before a rotation, accepted until the new one is first used.
    previous: Option<String>,
    rotate: bool,
    revoked: bool,
    auth_time: u64,
    order: u64,
}

struct AuthCode {
    appid: String,
    created: u64,
    used: bool,
    /// The authorizer existed when the code was added: exchanging it re-authorizes.
    reauth: bool,
}

#[derive(Default)]
struct Suite {
    secret: String,
    tickets: HashMap<String, u64>,
    corps: HashMap<String, Corp>,
    codes: HashMap<String, SuiteCode>,
}

struct Corp {
    permanent_code: String,
    /// Permanent codes this corp had before (refused).
    retired: Vec<String>,
    cancelled: bool,
    agentid: u64,
}

struct SuiteCode {
    corpid: String,
    permanent_code: String,
    created: u64,
    used: bool,
}

/// Tests' view of the platforms.
impl StandIn {
    /// Makes a component (third-party platform) known with this secret (replacing an older one).
    pub fn add_component(&self, cid: &str, secret: &str) {
        let mut st = self.state();
        st.plat
            .components
            .entry(cid.to_string())
            .or_default()
            .secret = secret.to_string();
    }

    /// Records a `component_verify_ticket` as pushed now (virtual clock): accepted for 12 h.
    pub fn push_component_ticket(&self, cid: &str, ticket: &str) {
        let mut st = self.state();
        let now = st.now;
        let c = st.plat.components.entry(cid.to_string()).or_default();
        c.tickets.insert(ticket.to_string(), now);
    }

    /// Successful `api_start_push_ticket` calls for this component.
    pub fn push_ticket_starts(&self, cid: &str) -> u64 {
        let st = self.state();
        st.plat.components.get(cid).map_or(0, |c| c.push_starts)
    }

    /// Makes `appid` an authorizer of `cid` with this refresh token (replacing an older one,
    /// which is refused from now on; un-revokes).
    pub fn add_authorizer(&self, cid: &str, appid: &str, refresh_token: &str) {
        self.state()
            .plat
            .set_authorizer(cid, appid, refresh_token.to_string());
    }

    /// The authorizer revokes the component: its token calls get 61003, its live authorizer
    /// tokens are refused at once, and it leaves the authorizer list.
    pub fn revoke_authorizer(&self, cid: &str, appid: &str) {
        let mut st = self.state();
        if let Some(a) = st.plat.authorizer_mut(cid, appid) {
            a.revoked = true;
        }
        st.kill(Kind::Authorizer, appid, Some(cid));
    }

    /// The next successful `api_authorizer_token` for this authorizer returns a new refresh
    /// token. The old one stays accepted until the new one has been used once, then 61023.
    pub fn rotate_refresh_token_on_next(&self, cid: &str, appid: &str) {
        if let Some(a) = self.state().plat.authorizer_mut(cid, appid) {
            a.rotate = true;
        }
    }

    /// The newest refresh token the stand-in accepts for this authorizer.
    pub fn refresh_token_of(&self, cid: &str, appid: &str) -> Option<String> {
        let st = self.state();
        let c = st.plat.components.get(cid)?;
        c.authorizers.get(appid).map(|a| a.refresh.clone())
    }

    /// Adds a single-use authorization code (valid 1 h) for `appid`. An unknown authorizer is
    /// created now with a fresh refresh token; for a known one, exchanging the code is a
    /// re-authorization: a new refresh token, the old one and its live tokens dead at once.
    pub fn add_auth_code(&self, cid: &str, code: &str, appid: &str) {
        let mut st = self.state();
        let (now, known) = (st.now, st.plat.authorizer_mut(cid, appid).is_some());
        if !known {
            let refresh = st.mint("RT");
            st.plat.set_authorizer(cid, appid, refresh);
        }
        let c = st.plat.components.entry(cid.to_string()).or_default();
        let code_state = AuthCode {
            appid: appid.to_string(),
            created: now,
            used: false,
            reauth: known,
        };
        c.codes.insert(code.to_string(), code_state);
    }

    /// The component tokens of `cid` valid now, oldest first.
    pub fn live_component_tokens(&self, cid: &str) -> Vec<String> {
        self.state().live_of(Kind::Component, cid, None)
    }

    /// The authorizer tokens of `appid` under `cid` valid now, oldest first.
    pub fn live_authorizer_tokens(&self, cid: &str, appid: &str) -> Vec<String> {
        self.state().live_of(Kind::Authorizer, appid, Some(cid))
    }

    /// How long a replaced component or authorizer token stays valid (default 300 s; zero:
    /// it is refused as soon as the new one is issued).
    pub fn set_replaced_token_grace(&self, grace: Duration) {
        self.state().plat.grace = Some(grace.as_secs());
    }

    /// Makes a WeCom suite (or, with a `dk` id, a 代开发 template) known with this secret.
    pub fn add_suite(&self, sid: &str, secret: &str) {
        let mut st = self.state();
        st.plat.suites.entry(sid.to_string()).or_default().secret = secret.to_string();
    }

    /// Records a `suite_ticket` as pushed now (virtual clock): accepted for 30 min.
    pub fn push_suite_ticket(&self, sid: &str, ticket: &str) {
        let mut st = self.state();
        let now = st.now;
        let s = st.plat.suites.entry(sid.to_string()).or_default();
        s.tickets.insert(ticket.to_string(), now);
    }

    /// Makes `corpid` an installed corp of `sid` with this permanent code (a new code retires
    /// the old one; un-cancels). For a `dk` template the code is the app secret, which
    /// `gettoken(corpid, code)` ([`WORK_TOKEN`](crate::WORK_TOKEN)) then accepts.
    pub fn add_corp(&self, sid: &str, corpid: &str, permanent_code: &str) {
        self.state().plat.set_corp(sid, corpid, permanent_code);
    }

    /// The corp cancels the suite: 48004 on `get_corp_token`, `get_auth_info` (and, for 代开发,
    /// on `gettoken` with its code); its live corp tokens are refused at once.
    pub fn cancel_corp(&self, sid: &str, corpid: &str) {
        let mut st = self.state();
        let code = match st.plat.corp_mut(sid, corpid) {
            Some(corp) => {
                corp.cancelled = true;
                corp.permanent_code.clone()
            }
            None => return,
        };
        st.kill(Kind::Corp, corpid, Some(sid));
        if customized(sid) {
            st.kill(Kind::Work, corpid, Some(&code));
        }
    }

    /// Adds a single-use auth code (valid 10 min) that `get_permanent_code` exchanges for this
    /// permanent code of `corpid`, installing the corp (or replacing its code: a reinstall, or
    /// for 代开发 a secret reset).
    pub fn add_suite_auth_code(&self, sid: &str, code: &str, corpid: &str, permanent_code: &str) {
        let mut st = self.state();
        let now = st.now;
        let s = st.plat.suites.entry(sid.to_string()).or_default();
        let code_state = SuiteCode {
            corpid: corpid.to_string(),
            permanent_code: permanent_code.to_string(),
            created: now,
            used: false,
        };
        s.codes.insert(code.to_string(), code_state);
    }

    /// The permanent code the stand-in accepts for this corp (cancelled or not).
    pub fn permanent_code_of(&self, sid: &str, corpid: &str) -> Option<String> {
        let st = self.state();
        let corp = st.plat.suites.get(sid)?.corps.get(corpid)?;
        Some(corp.permanent_code.clone())
    }

    /// The agentid the suite's app has in this corp (from 1000002, in order of install).
    pub fn agentid_of(&self, sid: &str, corpid: &str) -> Option<u64> {
        let st = self.state();
        Some(st.plat.suites.get(sid)?.corps.get(corpid)?.agentid)
    }

    /// The suite tokens of `sid` valid now, oldest first.
    pub fn live_suite_tokens(&self, sid: &str) -> Vec<String> {
        self.state().live_of(Kind::Suite, sid, None)
    }

    /// The corp tokens `get_corp_token` issued for `corpid` through `sid`, valid now.
    pub fn live_corp_tokens(&self, sid: &str, corpid: &str) -> Vec<String> {
        self.state().live_of(Kind::Corp, corpid, Some(sid))
    }

    /// Makes a WeCom provider (its corpid) known with this provider_secret.
    pub fn add_provider(&self, corpid: &str, secret: &str) {
        let mut st = self.state();
        st.plat
            .providers
            .insert(corpid.to_string(), secret.to_string());
    }
}

impl Platforms {
    fn grace(&self) -> u64 {
        self.grace.unwrap_or(REPLACED_GRACE)
    }

    fn next_order(&mut self) -> u64 {
        self.order += 1;
        self.order
    }

    fn authorizer_mut(&mut self, cid: &str, appid: &str) -> Option<&mut Authorizer> {
        self.components.get_mut(cid)?.authorizers.get_mut(appid)
    }

    fn corp_mut(&mut self, sid: &str, corpid: &str) -> Option<&mut Corp> {
        self.suites.get_mut(sid)?.corps.get_mut(corpid)
    }

    fn set_authorizer(&mut self, cid: &str, appid: &str, refresh: String) {
        let order = self.next_order();
        let c = self.components.entry(cid.to_string()).or_default();
        let a = c
            .authorizers
            .entry(appid.to_string())
            .or_insert(Authorizer {
                refresh: String::new(),
                previous: None,
                rotate: false,
                revoked: false,
                auth_time: 0,
                order,
            });
        a.refresh = refresh;
        (a.previous, a.rotate, a.revoked) = (None, false, false);
    }

    fn set_corp(&mut self, sid: &str, corpid: &str, code: &str) {
        let s = self.suites.entry(sid.to_string()).or_default();
        let agentid = FIRST_AGENTID + s.corps.len() as u64;
        let corp = s.corps.entry(corpid.to_string()).or_insert(Corp {
            permanent_code: String::new(),
            retired: Vec::new(),
            cancelled: false,
            agentid,
        });
        if !corp.permanent_code.is_empty() && corp.permanent_code != code {
            let old = std::mem::take(&mut corp.permanent_code);
            corp.retired.push(old);
        }
        corp.permanent_code = code.to_string();
        corp.cancelled = false;
    }
}

impl State {
    /// The key of a platform route (see the module docs); `None` for other routes.
    pub(crate) fn platform_key(&self, req: &Request) -> Option<Option<String>> {
        let body = |k: &str| {
            parse_flat_json(&req.body)
                .and_then(|mut b| b.remove(k))
                .filter(|v| !v.is_empty())
        };
        Some(match req.path.as_str() {
            COMPONENT_TOKEN | QUERY_AUTH | AUTHORIZER_LIST | START_PUSH_TICKET => {
                body("component_appid")
            }
            AUTHORIZER_TOKEN => body("authorizer_appid"),
            SUITE_TOKEN => body("suite_id"),
            PROVIDER_TOKEN => body("corpid"),
            PERMANENT_CODE | PERMANENT_CODE_V1 => {
                let token = req.query.get("suite_access_token")?;
                self.live.get(token).map(|l| l.key.clone())
            }
            AUTH_INFO | AUTH_INFO_V1 | CORP_TOKEN => body("auth_corpid"),
            _ => return None,
        })
    }

    /// A 代开发 corp's (corpid, permanent code) on `gettoken`: `Some(Ok)` if current,
    /// `Some(Err)` if retired (40091) or cancelled (48004), `None` if not such a pair.
    pub(crate) fn customized_creds(
        &mut self,
        corpid: &str,
        secret: &str,
    ) -> Option<Result<(), Reply>> {
        let suites = self.plat.suites.iter().filter(|(sid, _)| customized(sid));
        let corps: Vec<_> = suites.filter_map(|(_, s)| s.corps.get(corpid)).collect();
        let current = corps.iter().find(|c| c.permanent_code == secret);
        let retired = || corps.iter().any(|c| c.retired.iter().any(|r| r == secret));
        let outcome = match current.map(|c| c.cancelled) {
            Some(false) => return Some(Ok(())),
            Some(true) => (48004, "api forbidden, authorization is invalid"),
            None if retired() => (40091, "invalid corpsecret"),
            None => return None,
        };
        Some(Err(self.err(outcome.0, outcome.1)))
    }

    /// Tokens of this kind and key (and secret, if given) valid now, oldest first.
    fn live_of(&self, kind: Kind, key: &str, secret: Option<&str>) -> Vec<String> {
        let mut found: Vec<_> = (self.live.iter())
            .filter(|(_, l)| l.kind == kind && l.key == key && l.expires_at > self.now)
            .filter(|(_, l)| secret.is_none_or(|s| l.secret == s))
            .map(|(t, l)| (l.seq, t.clone()))
            .collect();
        found.sort();
        found.into_iter().map(|(_, t)| t).collect()
    }

    /// Refuses these tokens from now on (40001).
    fn kill(&mut self, kind: Kind, key: &str, secret: Option<&str>) {
        self.live.retain(|_, l| {
            !(l.kind == kind && l.key == key && secret.is_none_or(|s| l.secret == s))
        });
    }

    /// Cuts the life of these tokens to the grace period, then issues a new one.
    fn replace(&mut self, kind: Kind, key: &str, secret: &str) -> String {
        let until = self.now + self.plat.grace();
        let mut issued = (self.issued.remove(&(kind, key.to_string()))).unwrap_or_default();
        issued.retain(|t| self.live.contains_key(t));
        for t in &issued {
            if let Some(l) = self.live.get_mut(t)
                && l.secret == secret
                && l.expires_at > until
            {
                (l.expires_at, l.cut) = (until, true);
            }
        }
        self.issued.insert((kind, key.to_string()), issued);
        self.issue_token(kind, key, secret)
    }

    fn issue_token(&mut self, kind: Kind, key: &str, secret: &str) -> String {
        match self.issue(kind, key, secret) {
            Reply::Token { token, .. } => token,
            _ => unreachable!("issue always returns a token"),
        }
    }

    /// The token of this kind, key and secret valid now, or a new one: WeCom's repeat fetch.
    fn same_or_new(&mut self, kind: Kind, key: &str, secret: &str) -> (String, u64) {
        match self.current(kind, key, Some(secret)) {
            Some(found) => found,
            None => (self.issue_token(kind, key, secret), LIFETIME),
        }
    }

    /// The owner of a component token: 41001 if missing, 42001 if it ran out, 40001 if it
    /// is unknown, replaced, or not a component token.
    fn component_owner(&mut self, req: &Request) -> Result<String, Reply> {
        let q = |k: &str| req.query.get(k).filter(|v| !v.is_empty());
        let Some(token) = q("component_access_token").or_else(|| q("access_token")) else {
            return Err(self.err(41001, "component_access_token missing"));
        };
        match self.live.get(token.as_str()) {
            Some(l) if l.kind == Kind::Component && l.expires_at > self.now => Ok(l.key.clone()),
            Some(l) if l.kind == Kind::Component && !l.cut => {
                Err(self.err(42001, "access_token expired"))
            }
            _ => Err(self.err(40001, INVALID_TOKEN)),
        }
    }

    /// The suite of a suite token: 40082 if missing, unknown or not a suite token, 42009 if
    /// it ran out.
    fn suite_owner(&mut self, req: &Request) -> Result<String, Reply> {
        let token = req
            .query
            .get("suite_access_token")
            .map_or("", String::as_str);
        match self.live.get(token) {
            Some(l) if l.kind == Kind::Suite && l.expires_at > self.now => Ok(l.key.clone()),
            Some(l) if l.kind == Kind::Suite => Err(self.err(42009, "suite_access_token expired")),
            _ => Err(self.err(40082, "invalid suite_token")),
        }
    }

    /// The component token's owner, which must be the body's `component_appid` (else 40001).
    fn component_call(
        &mut self,
        req: &Request,
    ) -> Result<(String, HashMap<String, String>), Reply> {
        let body = self.json_post(req)?;
        let cid = self.component_owner(req)?;
        if body.get("component_appid") != Some(&cid) {
            return Err(self.err(40001, INVALID_TOKEN));
        }
        Ok((cid, body))
    }

    /// The default answer of a platform route; `None` for other routes.
    pub(crate) fn platform_reply(&mut self, req: &Request) -> Option<Result<Reply, Reply>> {
        Some(match req.path.as_str() {
            COMPONENT_TOKEN => self.component_token(req),
            AUTHORIZER_TOKEN => self.authorizer_token(req),
            QUERY_AUTH => self.query_auth(req),
            AUTHORIZER_LIST => self.authorizer_list(req),
            START_PUSH_TICKET => self.start_push_ticket(req),
            SUITE_TOKEN => self.suite_token(req),
            PROVIDER_TOKEN => self.provider_token(req),
            PERMANENT_CODE => self.permanent_code(req, false),
            PERMANENT_CODE_V1 => self.permanent_code(req, true),
            AUTH_INFO | AUTH_INFO_V1 => self.auth_info(req),
            CORP_TOKEN => self.corp_token(req),
            _ => return None,
        })
    }

    /// A component's id and secret: 41002/41004 if missing, 40013 unknown, 40125 wrong.
    fn component_creds(&mut self, cid: &str, secret: &str) -> Result<(), Reply> {
        if cid.is_empty() {
            return Err(self.err(41002, "component_appid missing"));
        }
        if secret.is_empty() {
            return Err(self.err(41004, "component_appsecret missing"));
        }
        match self.plat.components.get(cid) {
            None => Err(self.err(40013, "invalid appid")),
            Some(c) if c.secret != secret => Err(self.err(40125, "invalid appsecret")),
            Some(_) => Ok(()),
        }
    }

    fn component_token(&mut self, req: &Request) -> Result<Reply, Reply> {
        let body = self.json_post(req)?;
        let b = |k: &str| body.get(k).map_or("", String::as_str);
        let cid = b("component_appid");
        self.component_creds(cid, b("component_appsecret"))?;
        let pushed = self.plat.components[cid]
            .tickets
            .get(b("component_verify_ticket"));
        match pushed.copied() {
            None => return Err(self.err(61006, "component ticket is invalid")),
            Some(at) if self.now >= at + COMPONENT_TICKET_LIFE => {
                return Err(self.err(61005, "component ticket is expired"));
            }
            Some(_) => {}
        }
        let token = self.replace(Kind::Component, cid, "");
        Ok(Reply::Body(format!(
            r#"{{"component_access_token":"{token}","expires_in":{LIFETIME}}}"#
        )))
    }

    fn authorizer_token(&mut self, req: &Request) -> Result<Reply, Reply> {
        let (cid, body) = self.component_call(req)?;
        let b = |k: &str| body.get(k).map_or("", String::as_str);
        let (appid, sent) = (b("authorizer_appid"), b("authorizer_refresh_token"));
        let Some(a) = self.plat.authorizer_mut(&cid, appid).filter(|a| !a.revoked) else {
            return Err(self.err(61003, "component is not authorized by this account"));
        };
        if sent.is_empty() || (sent != a.refresh && a.previous.as_deref() != Some(sent)) {
            return Err(self.err(61023, "refresh_token is invalid"));
        }
        if sent == a.refresh {
            // The new refresh token has been used: the one before it is dead.
            a.previous = None;
        }
        if std::mem::take(&mut a.rotate) {
            let fresh = self.mint("RT");
            let a = self
                .plat
                .authorizer_mut(&cid, appid)
                .expect("checked above");
            a.previous = Some(std::mem::replace(&mut a.refresh, fresh));
        }
        let refresh = self.plat.components[&cid].authorizers[appid]
            .refresh
            .clone();
        let token = self.replace(Kind::Authorizer, appid, &cid);
        Ok(Reply::Body(format!(
            r#"{{"authorizer_access_token":"{token}","expires_in":{LIFETIME},"authorizer_refresh_token":"{}"}}"#,
            json_escape(&refresh)
        )))
    }

    fn query_auth(&mut self, req: &Request) -> Result<Reply, Reply> {
        let (cid, body) = self.component_call(req)?;
        let code = body.get("authorization_code").map_or("", String::as_str);
        let now = self.now;
        let c = self.plat.components.get_mut(&cid);
        let Some(found) = c.and_then(|c| c.codes.get_mut(code)) else {
            return Err(self.err(61009, "code is invalid"));
        };
        if found.used || now >= found.created + AUTH_CODE_LIFE {
            return Err(self.err(61010, "code is expired"));
        }
        found.used = true;
        let (appid, reauth) = (found.appid.clone(), found.reauth);
        if reauth {
            // Re-authorizing: a new refresh token; the old one and the live tokens die.
            let fresh = self.mint("RT");
            self.plat.set_authorizer(&cid, &appid, fresh);
            self.kill(Kind::Authorizer, &appid, Some(&cid));
        }
        let a = self
            .plat
            .authorizer_mut(&cid, &appid)
            .expect("added with the code");
        a.auth_time = now;
        let refresh = a.refresh.clone();
        let token = self.replace(Kind::Authorizer, &appid, &cid);
        Ok(Reply::Body(authorization_info(
            &appid, &token, LIFETIME, &refresh,
        )))
    }

    fn authorizer_list(&mut self, req: &Request) -> Result<Reply, Reply> {
        let (cid, body) = self.component_call(req)?;
        let num = |k: &str| body.get(k).map_or(Some(0), |v| v.parse::<u64>().ok());
        let (Some(offset), Some(count)) = (num("offset"), num("count")) else {
            return Err(self.err(40097, "invalid args"));
        };
        if count == 0 || count > AUTHORIZER_PAGE_MAX {
            return Err(self.err(40097, "invalid args, count must be 1-500"));
        }
        let mut all: Vec<_> = (self.plat.components[&cid].authorizers.iter())
            .filter(|(_, a)| !a.revoked)
            .map(|(appid, a)| (a.order, appid, a))
            .collect();
        all.sort_by_key(|(order, ..)| *order);
        let page: Vec<String> = (all.iter().skip(offset as usize).take(count as usize))
            .map(|(_, appid, a)| {
                format!(
                    r#"{{"authorizer_appid":"{}","refresh_token":"{}","auth_time":{}}}"#,
                    json_escape(appid),
                    json_escape(&a.refresh),
                    EPOCH + a.auth_time
                )
            })
            .collect();
        Ok(Reply::Body(format!(
            r#"{{"total_count":{},"list":[{}]}}"#,
            all.len(),
            page.join(",")
        )))
    }

    fn start_push_ticket(&mut self, req: &Request) -> Result<Reply, Reply> {
        let body = self.json_post(req)?;
        let b = |k: &str| body.get(k).map_or("", String::as_str);
        let cid = b("component_appid");
        self.component_creds(cid, b("component_secret"))?;
        self.plat
            .components
            .get_mut(cid)
            .expect("checked")
            .push_starts += 1;
        Ok(Reply::Body(r#"{"errcode":0,"errmsg":"ok"}"#.to_string()))
    }

    fn suite_token(&mut self, req: &Request) -> Result<Reply, Reply> {
        let body = self.json_post(req)?;
        let b = |k: &str| body.get(k).map_or("", String::as_str);
        let (sid, secret, ticket) = (b("suite_id"), b("suite_secret"), b("suite_ticket"));
        let Some(suite) = self.plat.suites.get(sid) else {
            return Err(self.err(40083, "invalid suite_id"));
        };
        if secret.is_empty() || suite.secret != secret {
            return Err(self.err(40080, "invalid suite_secret"));
        }
        match suite.tickets.get(ticket).copied() {
            Some(at) if self.now < at + SUITE_TICKET_LIFE => {}
            _ => return Err(self.err(40085, "invalid suite_ticket")),
        }
        let (token, left) = self.same_or_new(Kind::Suite, sid, "");
        Ok(Reply::Body(format!(
            r#"{{"suite_access_token":"{token}","expires_in":{left}}}"#
        )))
    }

    fn provider_token(&mut self, req: &Request) -> Result<Reply, Reply> {
        let body = self.json_post(req)?;
        let b = |k: &str| body.get(k).map_or("", String::as_str);
        let (corpid, secret) = (b("corpid"), b("provider_secret"));
        if corpid.is_empty() {
            return Err(self.err(41002, "corpid missing"));
        }
        if secret.is_empty() {
            return Err(self.err(41004, "provider_secret missing"));
        }
        match self.plat.providers.get(corpid) {
            None => return Err(self.err(40013, "invalid corpid")),
            Some(known) if known != secret => return Err(self.err(40091, "secret is invalid")),
            Some(_) => {}
        }
        let (token, left) = self.same_or_new(Kind::Provider, corpid, "");
        Ok(Reply::Body(format!(
            r#"{{"provider_access_token":"{token}","expires_in":{left}}}"#
        )))
    }

    /// v2 (`v1` false) or v1 `get_permanent_code`. v2 carries no agent list and no token, as
    /// on WeCom; v1 adds `auth_info.agent` and, except for 代开发, the first corp token.
    fn permanent_code(&mut self, req: &Request, v1: bool) -> Result<Reply, Reply> {
        let body = self.json_post(req)?;
        let sid = self.suite_owner(req)?;
        let code = body.get("auth_code").map_or("", String::as_str);
        let now = self.now;
        let found = self
            .plat
            .suites
            .get_mut(&sid)
            .and_then(|s| s.codes.get_mut(code));
        let Some(found) = found.filter(|c| !c.used && now < c.created + SUITE_AUTH_CODE_LIFE)
        else {
            return Err(self.err(40078, "invalid auth_code"));
        };
        found.used = true;
        let (corpid, pcode) = (found.corpid.clone(), found.permanent_code.clone());
        self.plat.set_corp(&sid, &corpid, &pcode);
        let agentid = self.plat.suites[&sid].corps[&corpid].agentid;
        let mut extra = String::new();
        if v1 {
            if !customized(&sid) {
                let (token, left) = self.same_or_new(Kind::Corp, &corpid, &sid);
                extra = format!(r#""access_token":"{token}","expires_in":{left},"#);
            }
            extra.push_str(&format!(r#""auth_info":{},"#, agents(&sid, agentid)));
        }
        Ok(Reply::Body(format!(
            r#"{{{extra}"permanent_code":"{}","auth_corp_info":{},"auth_user_info":{{"userid":"admin","open_userid":"admin","name":"admin"}},"state":""}}"#,
            json_escape(&pcode),
            corp_info(&corpid)
        )))
    }

    /// The corp of a suite-token call with `auth_corpid` and `permanent_code`: 40082 if the
    /// suite does not know the corp, 41025 if the code is empty, 40084 if it is wrong, 48004
    /// if the corp cancelled.
    fn suite_corp(&mut self, req: &Request) -> Result<(String, String, u64), Reply> {
        let body = self.json_post(req)?;
        let sid = self.suite_owner(req)?;
        let b = |k: &str| body.get(k).map_or("", String::as_str);
        let (corpid, code) = (b("auth_corpid"), b("permanent_code"));
        let Some(corp) = self.plat.suites.get(&sid).and_then(|s| s.corps.get(corpid)) else {
            return Err(self.err(40082, "invalid suite_token, no authorization for this corp"));
        };
        let (agentid, cancelled) = (corp.agentid, corp.cancelled);
        if code.is_empty() {
            return Err(self.err(41025, "permanent_code missing"));
        }
        if corp.permanent_code != code {
            return Err(self.err(40084, "invalid permanent_code"));
        }
        if cancelled {
            return Err(self.err(48004, "api forbidden, authorization is invalid"));
        }
        Ok((sid, corpid.to_string(), agentid))
    }

    fn auth_info(&mut self, req: &Request) -> Result<Reply, Reply> {
        let (sid, corpid, agentid) = self.suite_corp(req)?;
        Ok(Reply::Body(format!(
            r#"{{"errcode":0,"errmsg":"ok","auth_corp_info":{},"auth_info":{}}}"#,
            corp_info(&corpid),
            agents(&sid, agentid)
        )))
    }

    fn corp_token(&mut self, req: &Request) -> Result<Reply, Reply> {
        let (sid, corpid, _) = self.suite_corp(req)?;
        if customized(&sid) {
            // A 代开发 code is an app secret: its token comes from gettoken.
            return Err(self.err(40084, "invalid permanent_code"));
        }
        let (token, left) = self.same_or_new(Kind::Corp, &corpid, &sid);
        Ok(Reply::Body(format!(
            r#"{{"access_token":"{token}","expires_in":{left}}}"#
        )))
    }

    /// A scripted reply on a platform route: a [`Reply::Token`] on a token path becomes that
    /// path's success body and a live token of its kind; other replies are sent as they are.
    pub(crate) fn platform_scripted(
        &mut self,
        route: &str,
        key: Option<&str>,
        reply: Reply,
        req: &Request,
    ) -> Reply {
        let (token, expires_in) = match reply {
            Reply::Token { token, expires_in } => (token, expires_in),
            Reply::Delay(by, then) => {
                let then = self.platform_scripted(route, key, *then, req);
                return Reply::Delay(by, Box::new(then));
            }
            other => return other,
        };
        let body = parse_flat_json(&req.body).unwrap_or_default();
        let b = |k: &str| body.get(k).cloned().unwrap_or_default();
        let key = key.unwrap_or("").to_string();
        let esc = json_escape(&token);
        let shaped = |field: &str| format!(r#"{{"{field}":"{esc}","expires_in":{expires_in}}}"#);
        let (kind, owner, secret, body) = match route {
            COMPONENT_TOKEN => (
                Kind::Component,
                key,
                String::new(),
                shaped("component_access_token"),
            ),
            SUITE_TOKEN => (
                Kind::Suite,
                key,
                String::new(),
                shaped("suite_access_token"),
            ),
            PROVIDER_TOKEN => (
                Kind::Provider,
                key,
                String::new(),
                shaped("provider_access_token"),
            ),
            CORP_TOKEN => {
                let q = req.query.get("suite_access_token");
                let sid = q.and_then(|t| self.live.get(t)).map(|l| l.key.clone());
                (
                    Kind::Corp,
                    key,
                    sid.unwrap_or_default(),
                    shaped("access_token"),
                )
            }
            AUTHORIZER_TOKEN => {
                let cid = b("component_appid");
                let refresh = self
                    .plat
                    .components
                    .get(&cid)
                    .and_then(|c| c.authorizers.get(&key));
                let refresh =
                    refresh.map_or_else(|| b("authorizer_refresh_token"), |a| a.refresh.clone());
                let body = format!(
                    r#"{{"authorizer_access_token":"{esc}","expires_in":{expires_in},"authorizer_refresh_token":"{}"}}"#,
                    json_escape(&refresh)
                );
                (Kind::Authorizer, key, cid, body)
            }
            QUERY_AUTH => {
                let c = self.plat.components.get(&key);
                let code = c.and_then(|c| c.codes.get(&b("authorization_code")));
                let appid = code.map(|c| c.appid.clone()).unwrap_or_default();
                let a = c.and_then(|c| c.authorizers.get(&appid));
                let refresh = a.map(|a| a.refresh.clone()).unwrap_or_default();
                let body = authorization_info(&appid, &token, expires_in, &refresh);
                (Kind::Authorizer, appid, key, body)
            }
            _ => return Reply::Token { token, expires_in },
        };
        self.adopt(&token, kind, &owner, &secret, expires_in);
        Reply::Body(body)
    }
}

fn authorization_info(appid: &str, token: &str, expires_in: u64, refresh: &str) -> String {
    format!(
        r#"{{"authorization_info":{{"authorizer_appid":"{}","authorizer_access_token":"{}","expires_in":{expires_in},"authorizer_refresh_token":"{}","func_info":[]}}}}"#,
        json_escape(appid),
        json_escape(token),
        json_escape(refresh)
    )
}

fn corp_info(corpid: &str) -> String {
    let id = json_escape(corpid);
    format!(r#"{{"corpid":"{id}","corp_name":"Corp {id}"}}"#)
}

fn agents(sid: &str, agentid: u64) -> String {
    let custom = customized(sid);
    format!(
        r#"{{"agent":[{{"agentid":{agentid},"name":"app","auth_mode":0,"is_customized_app":{custom}}}]}}"#
    )
}

#[cfg(test)]
mod tests;
