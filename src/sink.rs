//! Where a token is published, and in which shape: the Redis key and value each SDK reads,
//! as its own source writes them (`shared/sdk-storage.md` and `docs/integrations/`). Pure
//! logic: no I/O, `now` passed in.

use std::fmt;

use crate::domain::{AccountKey, Api, Credential, Secret, Ticket};

const TOKEN: Credential = Credential::AccessToken;
const JSAPI: Credential = Credential::Ticket(Ticket::Jsapi);
const WX_CARD: Credential = Credential::Ticket(Ticket::WxCard);
const AGENT_CONFIG: Credential = Credential::Ticket(Ticket::AgentConfig);

/// How a Redis sink lays out keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The bare token under `--key`.
    Plain,
    /// `{"access_token"|"ticket":…,"expires_in":N,"expires_at":EPOCH}` under `--key`.
    Json,
    Wxjava,
    Silenceper,
    Easywechat,
    Wechatpy,
    Powerwechat,
}

impl Format {
    pub const ALL: [Format; 7] = [
        Format::Plain,
        Format::Json,
        Format::Wxjava,
        Format::Silenceper,
        Format::Easywechat,
        Format::Wechatpy,
        Format::Powerwechat,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Plain => "plain",
            Format::Json => "json",
            Format::Wxjava => "wxjava",
            Format::Silenceper => "silenceper",
            Format::Easywechat => "easywechat",
            Format::Wechatpy => "wechatpy",
            Format::Powerwechat => "powerwechat",
        }
    }

    pub fn parse(s: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.as_str() == s)
    }

    /// Whether keys come from a `--key` template rather than an SDK's rule.
    pub fn templated(self) -> bool {
        matches!(self, Format::Plain | Format::Json)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Redis sink's layout: its format, and the SDK prefix or the key template.
#[derive(Debug, Clone)]
pub struct Layout {
    pub format: Format,
    /// The SDK's configurable prefix or cache namespace; `None` means the SDK's default.
    pub prefix: Option<String>,
    /// `--key` for `plain` and `json`.
    pub key_template: Option<String>,
}

/// One valid token or ticket of one account, ready to publish.
pub struct Item<'a> {
    pub key: &'a AccountKey,
    pub api: Api,
    pub secret: &'a Secret,
    pub kind: Credential,
    pub value: &'a str,
    pub expires_at: i64,
    /// A tenant's platform: an authorizer's component appid, a corp's suite id, the
    /// template suite of a 代开发 WeCom account. `None` for everything else.
    pub platform: Option<&'a str>,
    /// An authorizer's refresh token, on its access-token item, only for a sink added with
    /// `--include-refresh-tokens`. Permanent codes never come here.
    pub refresh_token: Option<&'a str>,
}

impl Item<'_> {
    /// Whether the account's secret is a platform's secret or a tenant's durable
    /// credential (a refresh token, a permanent code, a 代开发 secret): no key may embed
    /// it, in clear, in part or as a hash.
    pub fn durable_secret(&self) -> bool {
        match self.api {
            Api::Token | Api::Stable => false,
            Api::Work => self.platform.is_some(),
            Api::Component | Api::Authorizer | Api::Suite | Api::Corp | Api::Provider => true,
        }
    }
}

/// One `SET key value [EX ttl]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    /// Seconds left; `None` for a key without expiry (a refresh token, which the SDKs
    /// store without a TTL).
    pub ttl: Option<i64>,
    /// The key embeds the AppSecret (or part of it, or a hash of it): never shown or logged.
    pub secret_key: bool,
}

impl Entry {
    /// The key as it may be shown: keys that embed the secret are described, not printed.
    pub fn shown(&self, item: &Item) -> String {
        if self.secret_key {
            format!(
                "<key of {} {}: embeds the secret, not shown>",
                item.key,
                item.kind.as_str()
            )
        } else {
            self.key.clone()
        }
    }
}

/// One of a sink's selectors, as stored in its list: an account (`APPID`,
/// `CORPID/AGENTID`, an authorizer as `APPID/COMPONENT_APPID`, a corp as `CORPID/SUITEID`:
/// the way `AccountKey` prints), or a platform with all its tenants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Account(String),
    /// `component:APPID`: the component token and every authorizer's tokens.
    Component(String),
    /// `suite:SUITEID`: the suite token, every corp's tokens, the 代开发 accounts made from
    /// the suite, and the token of the provider its pushes name.
    Suite(String),
}

impl Selector {
    pub fn parse(stored: &str) -> Selector {
        if let Some(id) = stored.strip_prefix("component:") {
            Selector::Component(id.to_string())
        } else if let Some(id) = stored.strip_prefix("suite:") {
            Selector::Suite(id.to_string())
        } else {
            Selector::Account(stored.to_string())
        }
    }

    pub fn stored(&self) -> String {
        match self {
            Selector::Account(key) => key.clone(),
            Selector::Component(id) => format!("component:{id}"),
            Selector::Suite(id) => format!("suite:{id}"),
        }
    }
}

/// The placeholders a `--key` template may use.
pub const PLACEHOLDERS: [&str; 5] = ["{appid}", "{agentid}", "{kind}", "{component}", "{suite}"];

/// Checks a `--key` template: no unknown `{...}`, not empty.
pub fn check_template(template: &str) -> Result<(), String> {
    if template.is_empty() || template.contains(char::is_whitespace) {
        return Err("--key must be a non-empty key template without spaces".into());
    }
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').map(|c| open + c + 1);
        let Some(close) = close else {
            return Err(format!("--key '{template}' has an unclosed '{{'"));
        };
        let name = &rest[open..close];
        if !PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "--key '{template}' has an unknown placeholder {name}: use {{appid}}, {{agentid}}, \
                 {{kind}}, {{component}} or {{suite}}"
            ));
        }
        rest = &rest[close..];
    }
    Ok(())
}

/// The name of what an item is, in `{kind}`, `WXTOKEN_KIND` and messages: the platform
/// tokens have their own, tenant tokens and tickets are named as any account's.
pub fn kind_name(api: Api, kind: Credential) -> &'static str {
    match (api, kind) {
        (Api::Component, TOKEN) => "component_access_token",
        (Api::Suite, TOKEN) => "suite_access_token",
        (Api::Provider, TOKEN) => "provider_access_token",
        _ => kind.as_str(),
    }
}

/// `{kind}` of a published refresh token.
pub const REFRESH_TOKEN: &str = "refresh_token";

/// What a platform or tenant token is, in messages.
pub fn api_noun(api: Api) -> &'static str {
    match api {
        Api::Component => "component tokens",
        Api::Authorizer => "authorizer tokens",
        Api::Suite => "suite tokens",
        Api::Corp => "corp tokens",
        Api::Provider => "provider tokens",
        Api::Work => "代开发 corp tokens",
        Api::Token | Api::Stable => "account tokens",
    }
}

/// Why `format` does not publish tokens of this platform kind, if it does not: its SDK
/// would name the key with a secret or a durable credential (in clear or as a hash), or
/// has no storage for it (`platforms.md` §6). `None` when it does.
pub fn refused(format: Format, api: Api) -> Option<&'static str> {
    use Api::*;
    use Format::*;
    match (format, api) {
        (_, Token | Stable | Work) | (Plain | Json | Wxjava, _) => None,
        (Easywechat, Component) | (Wechatpy | Silenceper, Component | Authorizer) => None,
        (Easywechat, Authorizer) => Some(
            "EasyWeChat 6 names an authorizer's token key with md5 of its refresh token \
             (open-platform.authorizer_access_token.APPID.MD5): a durable credential in a key \
             name; give EasyWeChat the token with getOfficialAccountWithAccessToken instead",
        ),
        (Easywechat, Suite) => Some(
            "EasyWeChat 6 puts the suite_secret into the suite token's key name \
             (open_work.suite_access_token.SUITEID.SECRET)",
        ),
        (Easywechat, Corp) => Some(
            "EasyWeChat 6 puts the permanent_code into the corp token's key name \
             (open_work.authorizer.access_token.CORPID.PERMANENT_CODE)",
        ),
        (Easywechat, Provider) => Some(
            "EasyWeChat 6 puts the provider_secret into the provider token's key name \
             (open_work.access_token.CORPID.SECRET)",
        ),
        (Powerwechat, Component | Suite) => Some(
            "PowerWeChat names the platform token's key with md5 of the secret and the \
             ticket: a secret in a key name, and a key that changes with every ticket push",
        ),
        (Powerwechat, Authorizer | Corp) => Some(
            "PowerWeChat names a tenant token's key with md5 of its refresh token or \
             permanent code: a durable credential in a key name",
        ),
        (Powerwechat, Provider) => {
            Some("PowerWeChat names the provider token's key with md5 of the provider_secret")
        }
        (Wechatpy, Suite | Corp | Provider) => {
            Some("wechatpy 1.8.18 has no storage for WeCom suites, corps or providers")
        }
        (Silenceper, Suite | Corp | Provider) => {
            Some("silenceper/wechat has no WeCom suite support")
        }
    }
}

/// Whether `format` can publish refresh tokens: only where its SDK reads them from Redis.
pub fn reads_refresh_tokens(format: Format) -> bool {
    matches!(
        format,
        Format::Wxjava | Format::Wechatpy | Format::Plain | Format::Json
    )
}

/// The writes that publish `item`, in `layout`: none when that SDK does not read this kind
/// for this kind of account, or when the item has expired. The TTL is the time the token
/// has left, never more: an SDK must never see a token WeChat no longer accepts. A key
/// that would embed a platform's secret or a tenant's durable credential is never written
/// (`refused`, and the same rule for 代开发 accounts, whose secret is a permanent code).
pub fn entries(layout: &Layout, item: &Item, now: i64) -> Vec<Entry> {
    let ttl = item.expires_at - now;
    if ttl <= 0 || refused(layout.format, item.api).is_some() {
        return Vec::new();
    }
    let mut all = match item.api {
        Api::Token | Api::Stable | Api::Work => account_entries(layout, item, ttl),
        _ if layout.format.templated() => templated_entries(layout, item, ttl),
        _ => platform_entries(layout, item, ttl),
    };
    if item.durable_secret() {
        all.retain(|e| !e.secret_key);
    }
    all
}

/// `plain` and `json` under `--key`. A refresh token goes under `{kind}` = `refresh_token`
/// with no TTL, and only when the template has `{kind}` (else it would overwrite the token).
fn templated_entries(layout: &Layout, item: &Item, ttl: i64) -> Vec<Entry> {
    let template = layout.key_template.as_deref().unwrap_or("");
    // Without {kind}, tickets would overwrite the token under the same key.
    if item.kind != TOKEN && !template.contains("{kind}") {
        return Vec::new();
    }
    let key = |kind: &str| {
        let (component, suite) = match item.api {
            Api::Component => (item.key.appid.as_str(), ""),
            Api::Authorizer => (item.key.agent.as_str(), ""),
            Api::Suite => ("", item.key.appid.as_str()),
            Api::Corp => ("", item.key.agent.as_str()),
            Api::Work => ("", item.platform.unwrap_or("")),
            _ => ("", ""),
        };
        // A tenant's key holds its platform in `agent`; {agentid} is a WeCom agentid only.
        let agent = match item.api {
            Api::Authorizer | Api::Corp => "",
            _ => item.key.agent.as_str(),
        };
        template
            .replace("{appid}", &item.key.appid)
            .replace("{agentid}", agent)
            .replace("{component}", component)
            .replace("{suite}", suite)
            .replace("{kind}", kind)
    };
    let value = if layout.format == Format::Plain {
        item.value.to_string()
    } else {
        let field = if item.kind == TOKEN {
            "access_token"
        } else {
            "ticket"
        };
        serde_json::json!({ field: item.value, "expires_in": ttl, "expires_at": item.expires_at })
            .to_string()
    };
    let mut all = vec![Entry {
        key: key(kind_name(item.api, item.kind)),
        value,
        ttl: Some(ttl),
        secret_key: false,
    }];
    if let Some(refresh) = item.refresh_token.filter(|_| template.contains("{kind}")) {
        let value = match layout.format {
            Format::Plain => refresh.to_string(),
            _ => serde_json::json!({ REFRESH_TOKEN: refresh }).to_string(),
        };
        all.push(Entry {
            key: key(REFRESH_TOKEN),
            value,
            ttl: None,
            secret_key: false,
        });
    }
    all
}

/// The SDK formats for components, authorizers, suites, corps and providers, byte for byte
/// as `platforms.md` §6 has them (what `refused` lets through).
fn platform_entries(layout: &Layout, item: &Item, ttl: i64) -> Vec<Entry> {
    let prefix = layout.prefix.as_deref();
    let (id, platform) = (item.key.appid.as_str(), item.key.agent.as_str());
    let entry = |key: String, value: String, ttl: Option<i64>| Entry {
        key,
        value,
        ttl,
        secret_key: false,
    };
    let token = |key: String, value: String| entry(key, value, Some(ttl));
    match layout.format {
        // weixin-java-open `WxOpenInRedisConfigStorage` ({p:}: the keyPrefix and ':', or
        // nothing) and weixin-java-cp `WxCpTpRedissonConfigImpl` ({p}: the keyPrefix,
        // default empty, so that its keys begin with ':'). Plain values.
        Format::Wxjava => {
            let open = prefix.map(|p| format!("{p}:")).unwrap_or_default();
            let tp = prefix.unwrap_or("");
            let v = item.value.to_string();
            match (item.api, item.kind) {
                (Api::Component, TOKEN) => {
                    vec![token(
                        format!("{open}wechat_component_access_token:{id}"),
                        v,
                    )]
                }
                (Api::Authorizer, TOKEN) => {
                    let mut all = vec![token(
                        format!("{open}wechat_authorizer_access_token:{platform}:{id}"),
                        v,
                    )];
                    if let Some(refresh) = item.refresh_token {
                        all.push(entry(
                            format!("{open}wechat_authorizer_refresh_token:{platform}:{id}"),
                            refresh.to_string(),
                            None,
                        ));
                    }
                    all
                }
                (Api::Suite, TOKEN) => vec![token(format!("{tp}:{id}::suiteAccessTokenKey:"), v)],
                (Api::Corp, TOKEN) => {
                    vec![token(format!("{tp}:{platform}:{id}:accessTokenKey:"), v)]
                }
                (Api::Provider, TOKEN) => {
                    vec![token(format!("{tp}:{id}::providerTokenKey:"), v)]
                }
                _ => Vec::new(),
            }
        }
        // EasyWeChat 6 `OpenPlatform\ComponentAccessToken`, in the store's namespace.
        Format::Easywechat => match (item.api, item.kind) {
            (Api::Component, TOKEN) => {
                let key = format!("open_platform.component_access_token.{id}");
                let key = match prefix.unwrap_or("easywechat") {
                    "" => key,
                    ns => format!("{ns}:{key}"),
                };
                vec![token(key, php_string(item.value))]
            }
            _ => Vec::new(),
        },
        // wechatpy 1.8.18 `WeChatComponent` and `WeChatComponentClient` on `RedisStorage`:
        // JSON values; the component token's key has no component appid (one component per
        // prefix), the refresh token has no TTL. An authorizer's tickets are an Official
        // Account's (its client is a `WeChatClient`).
        Format::Wechatpy => {
            let p = prefix.unwrap_or("wechatpy");
            let v = quote(item.value);
            match (item.api, item.kind) {
                (Api::Component, TOKEN) => vec![token(format!("{p}:component_access_token"), v)],
                (Api::Authorizer, TOKEN) => {
                    let mut all = vec![token(format!("{p}:{id}_access_token"), v)];
                    if let Some(refresh) = item.refresh_token {
                        all.push(entry(
                            format!("{p}:{id}_refresh_token"),
                            quote(refresh),
                            None,
                        ));
                    }
                    all
                }
                (Api::Authorizer, _) => wechatpy_entries(prefix, item, false, ttl),
                _ => Vec::new(),
            }
        }
        // silenceper/wechat `openplatform/context/accessToken.go`: plain values, no prefix.
        Format::Silenceper => match (item.api, item.kind) {
            (Api::Component, TOKEN) => vec![token(
                format!("component_access_token_{id}"),
                item.value.to_string(),
            )],
            (Api::Authorizer, TOKEN) => vec![token(
                format!("authorizer_access_token_{id}"),
                item.value.to_string(),
            )],
            _ => Vec::new(),
        },
        Format::Powerwechat | Format::Plain | Format::Json => Vec::new(),
    }
}

/// PHP `serialize()` of a string, which Symfony's and Laravel's caches write.
fn php_string(value: &str) -> String {
    format!("s:{}:\"{}\";", value.len(), value)
}

/// An ordinary account's keys (Official Accounts, Mini Programs, WeCom apps).
fn account_entries(layout: &Layout, item: &Item, ttl: i64) -> Vec<Entry> {
    let work = item.api == Api::Work;
    let prefix = layout.prefix.as_deref();
    let entry = |key: String, value: String, secret_key: bool| Entry {
        key,
        value,
        ttl: Some(ttl),
        secret_key,
    };
    let plain = |key: Option<String>| key.map(|k| entry(k, item.value.to_string(), false));
    let one = |e: Option<Entry>| e.into_iter().collect();
    match layout.format {
        Format::Plain | Format::Json => templated_entries(layout, item, ttl),
        Format::Wxjava => one(plain(wxjava_key(prefix, item, work))),
        Format::Silenceper => one(plain(silenceper_key(prefix, item, work))),
        Format::Easywechat => one(easywechat_key(item, work).map(|(key, secret_key)| {
            let key = match prefix.unwrap_or("easywechat") {
                "" => key,
                ns => format!("{ns}:{key}"),
            };
            entry(key, php_string(item.value), secret_key)
        })),
        Format::Wechatpy => wechatpy_entries(prefix, item, work, ttl),
        Format::Powerwechat => one(powerwechat_entry(prefix, item, work, ttl)),
    }
}

/// A WeCom agent that WxJava and silenceper can name: a numeric agentid. A module such as
/// `contacts` has none, and those SDKs then key by the corp alone.
fn numeric_agent(key: &AccountKey) -> Option<&str> {
    let a = key.agent.as_str();
    (!a.is_empty() && a.bytes().all(|b| b.is_ascii_digit())).then_some(a)
}

/// WxJava: `WxMpRedisConfigImpl` / `WxMaRedisBetterConfigImpl` and
/// `AbstractWxCpInRedisConfigImpl`.
fn wxjava_key(prefix: Option<&str>, item: &Item, work: bool) -> Option<String> {
    let id = &item.key.appid;
    if work {
        let p = prefix.unwrap_or("wx:cp");
        let ukey = match numeric_agent(item.key) {
            Some(agent) => format!("{id}:{agent}"),
            None => id.clone(),
        };
        let name = match item.kind {
            TOKEN => "wechat_cp_access_token_key",
            JSAPI => "wechat_cp_jsapi_ticket_key",
            AGENT_CONFIG => "wechat_cp_agent_jsapi_ticket_key",
            _ => return None,
        };
        return Some(format!("{p}:{name}:{ukey}"));
    }
    let p = prefix.unwrap_or("wx");
    match item.kind {
        TOKEN => Some(format!("{p}:access_token:{id}")),
        JSAPI | WX_CARD => Some(format!("{p}:ticket:key:{id}:{}", item.kind.as_str())),
        _ => None,
    }
}

/// silenceper/wechat v2: `credential/default_access_token.go`, `default_js_ticket.go`. The
/// prefix already ends in `_` and the format adds another, hence the double underscore.
fn silenceper_key(prefix: Option<&str>, item: &Item, work: bool) -> Option<String> {
    let id = &item.key.appid;
    if work {
        let p = prefix.unwrap_or("gowechat_work_");
        let with_agent = |what: &str| match numeric_agent(item.key) {
            Some(agent) => format!("{p}_{what}_{id}_{agent}"),
            None => format!("{p}_{what}_{id}"),
        };
        return match item.kind {
            TOKEN => Some(with_agent("access_token")),
            JSAPI => Some(format!("{p}_corp_jsapi_ticket_{id}")),
            AGENT_CONFIG => Some(with_agent("agent_jsapi_ticket")),
            _ => None,
        };
    }
    let p = prefix.unwrap_or("gowechat_officialaccount_");
    match item.kind {
        TOKEN => Some(format!("{p}_access_token_{id}")),
        JSAPI => Some(format!("{p}_jsapi_ticket_{id}")),
        _ => None,
    }
}

/// EasyWeChat 6 cache keys (before the store's namespace), and whether they embed the secret.
fn easywechat_key(item: &Item, work: bool) -> Option<(String, bool)> {
    let id = &item.key.appid;
    let secret = item.secret.expose();
    if work {
        return match item.kind {
            TOKEN => Some((format!("work.access_token.{id}.{secret}"), true)),
            JSAPI => Some((format!("work.jsapi_ticket.{id}"), false)),
            AGENT_CONFIG => Some((format!("work.jsapi_ticket.{id}.{}", item.key.agent), false)),
            _ => None,
        };
    }
    let stable = u8::from(item.api == Api::Stable);
    match item.kind {
        TOKEN => Some((
            format!("official_account.access_token.{id}.{secret}.{stable}"),
            true,
        )),
        JSAPI => Some((format!("official_account.jsapi_ticket.{id}"), false)),
        _ => None,
    }
}

/// wechatpy's `RedisStorage` (`{prefix}:{key}`, JSON values) with the keys of
/// `client/base.py`, `client/api/jsapi.py` and `enterprise/`: the value, plus the
/// `_expires_at` key that its ticket readers require and its master branch reads for tokens.
fn wechatpy_entries(prefix: Option<&str>, item: &Item, work: bool, ttl: i64) -> Vec<Entry> {
    let p = prefix.unwrap_or("wechatpy");
    let id = &item.key.appid;
    let (key, expires_key, secret_key) = match (work, item.kind) {
        (false, TOKEN) => (
            format!("{id}_access_token"),
            format!("{id}_access_token"),
            false,
        ),
        (true, TOKEN) => {
            let head: String = item.secret.expose().chars().take(10).collect();
            (
                format!("{id}_{head}_access_token"),
                format!("{id}_access_token"),
                true,
            )
        }
        (_, JSAPI) => (
            format!("{id}_jsapi_ticket"),
            format!("{id}_jsapi_ticket"),
            false,
        ),
        (true, AGENT_CONFIG) => (
            format!("{id}_agent_jsapi_ticket"),
            format!("{id}_agent_jsapi_ticket"),
            false,
        ),
        _ => return Vec::new(),
    };
    vec![
        Entry {
            key: format!("{p}:{key}"),
            value: serde_json::Value::from(item.value).to_string(),
            ttl: Some(ttl),
            secret_key,
        },
        Entry {
            key: format!("{p}:{expires_key}_expires_at"),
            value: item.expires_at.to_string(),
            ttl: Some(ttl),
            secret_key: false,
        },
    ]
}

/// PowerWeChat: `kernel/accessToken.go` (md5 of appid + secret) and the JSSDK ticket key. Go's
/// `json.Marshal` of a map sorts the keys, so these are the bytes it writes itself.
fn powerwechat_entry(prefix: Option<&str>, item: &Item, work: bool, ttl: i64) -> Option<Entry> {
    let id = &item.key.appid;
    match (work, item.kind) {
        (_, TOKEN) => {
            let p = prefix.unwrap_or("powerwechat.access_token.");
            let hash = md5_hex(format!("{id}{}", item.secret.expose()).as_bytes());
            let value = format!(
                r#"{{"access_token":{},"expires_in":{ttl}}}"#,
                quote(item.value)
            );
            Some(Entry {
                key: format!("{p}{hash}"),
                value,
                ttl: Some(ttl),
                secret_key: true,
            })
        }
        (false, JSAPI | WX_CARD) => Some(Entry {
            key: format!(
                "powerwechat.basic_service.jssdk.ticket.{}.{id}",
                item.kind.as_str()
            ),
            value: format!(
                r#"{{"errcode":0,"errmsg":"ok","expires_in":{ttl},"ticket":{}}}"#,
                quote(item.value)
            ),
            ttl: Some(ttl),
            secret_key: false,
        }),
        _ => None,
    }
}

fn quote(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// MD5 as lowercase hex (RFC 1321). PowerWeChat names its cache key with it; a dozen lines
/// here beat a crate for one hash of one short string per token.
pub fn md5_hex(input: &[u8]) -> String {
    const S: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5,
        9, 14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10,
        15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
    ];
    let k: Vec<u32> = (0..64)
        .map(|i| ((i as f64 + 1.0).sin().abs() * 4_294_967_296.0) as u32)
        .collect();
    let mut msg = input.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((input.len() as u64).wrapping_mul(8)).to_le_bytes());
    let mut h: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];
    for chunk in msg.chunks(64) {
        let m: Vec<u32> = chunk
            .chunks(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        let [mut a, mut b, mut c, mut d] = h;
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let f = f.wrapping_add(a).wrapping_add(k[i]).wrapping_add(m[g]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(f.rotate_left(S[i]));
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d]) {
            *x = x.wrapping_add(y);
        }
    }
    h.iter()
        .flat_map(|x| x.to_le_bytes())
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A Redis URL split into what may be stored and shown, and its credentials (secrets).
#[derive(Debug, PartialEq, Eq)]
pub struct RedisUrl {
    /// The URL without the password (`redis://user@host:6379/2`), and with `user=***` for
    /// a `user` query parameter (whose value goes with the password).
    pub url: String,
    pub password: Option<String>,
    /// The `user` query parameter: a credential too, sealed with the password.
    pub user: Option<String>,
}

/// What the stored URL has in place of a `user` query parameter's value.
const USER_MARK: &str = "user=***";

/// The query parameters that carry credentials: `pass` (the Redis client's own, for
/// sockets) and `password` are passwords, `user` the ACL user.
const PASSWORD_PARAMS: [&str; 2] = ["pass", "password"];

impl RedisUrl {
    /// What the secret column holds: the password, or (with a `user` query parameter,
    /// which the stored URL marks) the user and the password as a JSON pair.
    pub fn secret(&self) -> Option<String> {
        match (&self.user, &self.password) {
            (None, None) => None,
            (None, Some(p)) => Some(p.clone()),
            (Some(u), p) => Some(
                serde_json::Value::from(vec![u.clone(), p.clone().unwrap_or_default()]).to_string(),
            ),
        }
    }
}

/// The user and password to log in with: the inverse of [`RedisUrl::secret`] for a URL as
/// stored (`url`) and its opened secret column.
pub fn credentials(url: &str, secret: Option<&str>) -> (Option<String>, Option<String>) {
    let Some(secret) = secret.filter(|s| !s.is_empty()) else {
        return (None, None);
    };
    let marked = query_of(url).is_some_and(|q| q.split('&').any(|p| p == USER_MARK));
    if marked && let Ok([user, password]) = serde_json::from_str::<[String; 2]>(secret) {
        return (Some(user), Some(password).filter(|p| !p.is_empty()));
    }
    (None, Some(secret.to_string()))
}

/// Whether a stored URL still carries a credential in clear text: written by a version
/// before credentials were split off (a password in the user info, or a `pass`, `password`
/// or `user` query parameter other than the `user=***` mark).
pub fn has_clear_credentials(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let in_user_info = rest[..end]
        .rsplit_once('@')
        .is_some_and(|(info, _)| info.contains(':'));
    in_user_info
        || query_of(url).is_some_and(|q| {
            q.split('&').any(|pair| {
                let key = pair.split('=').next().unwrap_or_default();
                pair != USER_MARK && (PASSWORD_PARAMS.contains(&key) || key == "user")
            })
        })
}

/// The query of a URL, without its fragment.
fn query_of(url: &str) -> Option<&str> {
    let query = url.split_once('?')?.1;
    Some(query.split_once('#').map_or(query, |(q, _)| q))
}

/// Splits the credentials out of `redis://[user[:password]@]host[:port][/db][?query]`
/// (also `rediss://`, `redis+unix://`, `unix://`): the user info's password, and the
/// `pass`, `password` and `user` query parameters. Values are percent-decoded. A URL that
/// gives a password twice, or a user both ways, is refused.
pub fn split_redis_url(text: &str) -> Result<RedisUrl, String> {
    let bad = || {
        "the Redis URL is not redis://[USER[:PASSWORD]@]HOST[:PORT][/DB], rediss://... or \
         redis+unix:///PATH"
            .to_string()
    };
    let (scheme, rest) = text.split_once("://").ok_or_else(bad)?;
    if !matches!(scheme, "redis" | "rediss" | "redis+unix" | "unix")
        || text.contains(char::is_whitespace)
    {
        return Err(bad());
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (user_info, host) = match authority.rsplit_once('@') {
        Some((info, host)) => (Some(info), host),
        None => (None, authority),
    };
    let (user, mut password) = match user_info.map(|i| i.split_once(':')) {
        Some(Some((u, p))) => (u, Some(percent_decode(p)).filter(|p| !p.is_empty())),
        Some(None) => (user_info.unwrap_or_default(), None),
        None => ("", None),
    };
    // The query, without its credentials; `user=***` marks where the user was.
    let (path, query, fragment) = {
        let (before, fragment) = match tail.split_once('#') {
            Some((b, f)) => (b, Some(f)),
            None => (tail, None),
        };
        match before.split_once('?') {
            Some((p, q)) => (p, Some(q), fragment),
            None => (before, None, fragment),
        }
    };
    let mut kept = Vec::new();
    let mut query_user = None;
    for pair in query.unwrap_or_default().split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(&value.replace('+', " "));
        if PASSWORD_PARAMS.contains(&key) {
            if password.is_some() {
                return Err("the Redis URL gives a password twice; give it once".into());
            }
            password = Some(value).filter(|v| !v.is_empty());
        } else if key == "user" {
            if query_user.is_some() || !user.is_empty() {
                return Err("the Redis URL gives the user twice; give it once".into());
            }
            query_user = Some(value).filter(|v| !v.is_empty());
            kept.push(USER_MARK.to_string());
        } else if !pair.is_empty() {
            kept.push(pair.to_string());
        }
    }
    if query_user.is_none() {
        kept.retain(|p| p != USER_MARK);
    }
    let mut url = if user.is_empty() {
        format!("{scheme}://{host}{path}")
    } else {
        format!("{scheme}://{user}@{host}{path}")
    };
    if !kept.is_empty() {
        url += &format!("?{}", kept.join("&"));
    }
    if let Some(f) = fragment {
        url += &format!("#{f}");
    }
    Ok(RedisUrl {
        url,
        password,
        user: query_user,
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The URL as shown by `sink list` and `status`: the stored one, with `***` where the
/// password goes when there is one (`redis://user:***@host`, `redis+unix:///s?pass=***`),
/// and any credential a URL stored by an older version still carries masked.
pub fn shown_url(url: &str, has_password: bool) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let masked = match rest.split_once('?') {
        Some((before, query)) => {
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, format!("#{f}")),
                None => (query, String::new()),
            };
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if PASSWORD_PARAMS.contains(&k) || k == "user" => {
                        format!("{k}=***")
                    }
                    _ => pair.to_string(),
                })
                .collect();
            format!("{before}?{}{fragment}", pairs.join("&"))
        }
        None => rest.to_string(),
    };
    let end = masked.find(['/', '?', '#']).unwrap_or(masked.len());
    // A password in the user info of a URL stored before passwords were split off.
    let masked = match masked[..end].rsplit_once('@') {
        Some((info, _)) if info.contains(':') => {
            let user = info.split_once(':').map_or(info, |(u, _)| u);
            format!("{user}:***@{}", &masked[info.len() + 1..])
        }
        _ => masked,
    };
    let stored_pass = query_of(&masked).is_some_and(|q| {
        q.split('&').any(|p| {
            p.split('=')
                .next()
                .is_some_and(|k| PASSWORD_PARAMS.contains(&k))
        })
    });
    let end = masked.find(['/', '?', '#']).unwrap_or(masked.len());
    if !has_password || stored_pass || masked[..end].contains(":***@") {
        return format!("{scheme}://{masked}");
    }
    if matches!(scheme, "redis+unix" | "unix") {
        // A socket path has no user info: the password shows as the client's `pass`.
        let (before, fragment) = match masked.split_once('#') {
            Some((b, f)) => (b.to_string(), format!("#{f}")),
            None => (masked.clone(), String::new()),
        };
        let sep = if before.contains('?') { '&' } else { '?' };
        return format!("{scheme}://{before}{sep}pass=***{fragment}");
    }
    match masked[..end].rsplit_once('@') {
        Some((user, _)) => format!("{scheme}://{user}:***@{}", &masked[user.len() + 1..]),
        None => format!("{scheme}://:***@{masked}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;
    const SECRET: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f9";

    fn layout(format: Format) -> Layout {
        Layout {
            format,
            prefix: None,
            key_template: None,
        }
    }

    fn publish(layout: &Layout, key: &AccountKey, api: Api, kind: Credential) -> Vec<Entry> {
        let secret = Secret::new(SECRET.into());
        let item = Item {
            key,
            api,
            secret: &secret,
            kind,
            value: "TOK",
            expires_at: NOW + 7000,
            platform: None,
            refresh_token: None,
        };
        entries(layout, &item, NOW)
    }

    fn keys(entries: &[Entry]) -> Vec<&str> {
        entries.iter().map(|e| e.key.as_str()).collect()
    }

    #[test]
    fn md5_matches_rfc_1321() {
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            md5_hex(
                b"12345678901234567890123456789012345678901234567890123456789012345678901234567890"
            ),
            "57edf4a22be3c955ac49da2e2107b67a"
        );
    }

    #[test]
    fn every_entry_expires_when_the_token_does() {
        let oa = AccountKey::appid("wx1").unwrap();
        for format in Format::ALL {
            let mut l = layout(format);
            l.key_template = Some("t:{appid}".into());
            for e in publish(&l, &oa, Api::Token, TOKEN) {
                assert_eq!(e.ttl, Some(7000), "{format}");
            }
        }
        let secret = Secret::new(SECRET.into());
        let expired = Item {
            key: &oa,
            api: Api::Token,
            secret: &secret,
            kind: TOKEN,
            value: "T",
            expires_at: NOW,
            platform: None,
            refresh_token: None,
        };
        assert!(entries(&layout(Format::Wxjava), &expired, NOW).is_empty());
    }

    #[test]
    fn sdk_keys_for_official_accounts() {
        let oa = AccountKey::appid("wx1").unwrap();
        let k = |f, kind| publish(&layout(f), &oa, Api::Token, kind);
        assert_eq!(keys(&k(Format::Wxjava, TOKEN)), ["wx:access_token:wx1"]);
        assert_eq!(keys(&k(Format::Wxjava, JSAPI)), ["wx:ticket:key:wx1:jsapi"]);
        assert_eq!(
            keys(&k(Format::Silenceper, TOKEN)),
            ["gowechat_officialaccount__access_token_wx1"]
        );
        assert!(k(Format::Silenceper, WX_CARD).is_empty());
        let ew = k(Format::Easywechat, TOKEN);
        assert_eq!(
            keys(&ew),
            [format!("easywechat:official_account.access_token.wx1.{SECRET}.0").as_str()]
        );
        assert_eq!(ew[0].value, "s:3:\"TOK\";");
        assert!(ew[0].secret_key);
        let py = k(Format::Wechatpy, TOKEN);
        assert_eq!(
            keys(&py),
            [
                "wechatpy:wx1_access_token",
                "wechatpy:wx1_access_token_expires_at"
            ]
        );
        assert_eq!(py[0].value, "\"TOK\"");
        assert_eq!(py[1].value, (NOW + 7000).to_string());
        let pw = k(Format::Powerwechat, TOKEN);
        let hash = md5_hex(format!("wx1{SECRET}").as_bytes());
        assert_eq!(
            keys(&pw),
            [format!("powerwechat.access_token.{hash}").as_str()]
        );
        assert_eq!(pw[0].value, r#"{"access_token":"TOK","expires_in":7000}"#);
        let stable = publish(&layout(Format::Easywechat), &oa, Api::Stable, TOKEN);
        assert!(stable[0].key.ends_with(".1"));
    }

    #[test]
    fn sdk_keys_for_wecom_apps() {
        let app = AccountKey {
            appid: "ww1".into(),
            agent: "1000002".into(),
        };
        let contacts = AccountKey {
            appid: "ww1".into(),
            agent: "contacts".into(),
        };
        let k = |f, key: &AccountKey, kind| publish(&layout(f), key, Api::Work, kind);
        assert_eq!(
            keys(&k(Format::Wxjava, &app, TOKEN)),
            ["wx:cp:wechat_cp_access_token_key:ww1:1000002"]
        );
        assert_eq!(
            keys(&k(Format::Wxjava, &contacts, TOKEN)),
            ["wx:cp:wechat_cp_access_token_key:ww1"]
        );
        assert_eq!(
            keys(&k(Format::Silenceper, &app, AGENT_CONFIG)),
            ["gowechat_work__agent_jsapi_ticket_ww1_1000002"]
        );
        let py = k(Format::Wechatpy, &app, TOKEN);
        assert_eq!(py[0].key, "wechatpy:ww1_0a1b2c3d4e_access_token");
        assert!(py[0].secret_key);
        assert_eq!(
            keys(&k(Format::Easywechat, &app, AGENT_CONFIG)),
            ["easywechat:work.jsapi_ticket.ww1.1000002"]
        );
    }

    fn platform_item<'a>(
        key: &'a AccountKey,
        api: Api,
        secret: &'a Secret,
        refresh_token: Option<&'a str>,
    ) -> Item<'a> {
        Item {
            key,
            api,
            secret,
            kind: TOKEN,
            value: "TOK",
            expires_at: NOW + 7000,
            platform: None,
            refresh_token,
        }
    }

    #[test]
    fn platform_keys_and_refusals() {
        let secret = Secret::new(SECRET.into());
        let component = AccountKey::appid("wxc").unwrap();
        let authorizer = AccountKey {
            appid: "wxa".into(),
            agent: "wxc".into(),
        };
        let corp = AccountKey {
            appid: "wwc".into(),
            agent: "tjs".into(),
        };
        let k = |f, key, api, refresh| {
            entries(&layout(f), &platform_item(key, api, &secret, refresh), NOW)
        };
        let a = k(Format::Wxjava, &authorizer, Api::Authorizer, Some("RT"));
        assert_eq!(
            keys(&a),
            [
                "wechat_authorizer_access_token:wxc:wxa",
                "wechat_authorizer_refresh_token:wxc:wxa"
            ]
        );
        assert_eq!((a[0].ttl, a[1].ttl), (Some(7000), None));
        assert_eq!(a[1].value, "RT");
        assert_eq!(
            keys(&k(Format::Wxjava, &corp, Api::Corp, None)),
            [":tjs:wwc:accessTokenKey:"]
        );
        let py = k(Format::Wechatpy, &authorizer, Api::Authorizer, Some("RT"));
        assert_eq!(
            keys(&py),
            ["wechatpy:wxa_access_token", "wechatpy:wxa_refresh_token"]
        );
        assert_eq!(py[1].value, "\"RT\"");
        assert_eq!(
            keys(&k(Format::Wechatpy, &component, Api::Component, None)),
            ["wechatpy:component_access_token"]
        );
        for (format, api, key) in [
            (Format::Easywechat, Api::Authorizer, &authorizer),
            (Format::Easywechat, Api::Corp, &corp),
            (Format::Powerwechat, Api::Component, &component),
            (Format::Wechatpy, Api::Corp, &corp),
        ] {
            assert!(refused(format, api).is_some());
            assert!(
                k(format, key, api, Some("RT")).is_empty(),
                "{format} {api:?}"
            );
        }
        // A 代开发 account's secret is a permanent code: no key may embed it.
        let custom = AccountKey {
            appid: "wwc".into(),
            agent: "1000002".into(),
        };
        let mut item = platform_item(&custom, Api::Work, &secret, None);
        item.platform = Some("tjs");
        assert!(entries(&layout(Format::Easywechat), &item, NOW).is_empty());
        assert!(entries(&layout(Format::Powerwechat), &item, NOW).is_empty());
        let py = entries(&layout(Format::Wechatpy), &item, NOW);
        assert!(py.iter().all(|e| !e.key.contains("0a1b2c3d4e")), "{py:?}");
        assert_eq!(entries(&layout(Format::Wxjava), &item, NOW).len(), 1);
    }

    #[test]
    fn templates_and_prefixes() {
        let oa = AccountKey::appid("wx1").unwrap();
        let mut l = layout(Format::Json);
        l.key_template = Some("tok:{appid}:{kind}".into());
        let e = publish(&l, &oa, Api::Token, JSAPI);
        assert_eq!(e[0].key, "tok:wx1:jsapi");
        assert_eq!(
            e[0].value,
            format!(
                r#"{{"expires_at":{},"expires_in":7000,"ticket":"TOK"}}"#,
                NOW + 7000
            )
        );
        l.key_template = Some("tok:{appid}".into());
        assert!(publish(&l, &oa, Api::Token, JSAPI).is_empty());
        let mut l = layout(Format::Wxjava);
        l.prefix = Some("wa".into());
        assert_eq!(
            keys(&publish(&l, &oa, Api::Token, TOKEN)),
            ["wa:access_token:wx1"]
        );
        let mut l = layout(Format::Easywechat);
        l.prefix = Some(String::new());
        assert!(
            publish(&l, &oa, Api::Token, JSAPI)[0]
                .key
                .starts_with("official_account.")
        );
        assert!(check_template("t:{appid}:{agentid}").is_ok());
        assert!(check_template("t:{app}").is_err());
        assert!(check_template("t:{appid").is_err());
    }

    #[test]
    fn redis_urls_lose_their_password() {
        let u = split_redis_url("redis://app:p%40ss@127.0.0.1:6380/2").unwrap();
        assert_eq!(u.url, "redis://app@127.0.0.1:6380/2");
        assert_eq!(u.password.as_deref(), Some("p@ss"));
        let u = split_redis_url("rediss://:pw@h/0").unwrap();
        assert_eq!(
            (u.url.as_str(), u.password.as_deref()),
            ("rediss://h/0", Some("pw"))
        );
        let u = split_redis_url("redis://h:6379").unwrap();
        assert_eq!((u.url.as_str(), u.password), ("redis://h:6379", None));
        assert!(split_redis_url("http://h").is_err());
        assert_eq!(shown_url("redis://app@h/2", true), "redis://app:***@h/2");
        assert_eq!(shown_url("redis://h/2", true), "redis://:***@h/2");
        assert_eq!(shown_url("redis://h/2", false), "redis://h/2");
    }

    #[test]
    fn every_credential_in_the_query_is_split_off() {
        let u = split_redis_url("redis+unix:///run/r.sock?db=2&pass=P%26W").unwrap();
        assert_eq!(u.url, "redis+unix:///run/r.sock?db=2");
        assert_eq!(
            (u.password.as_deref(), u.user.as_deref()),
            (Some("P&W"), None)
        );
        assert_eq!(u.secret().as_deref(), Some("P&W"));
        let u = split_redis_url("redis://h:1/0?password=PW&protocol=resp3").unwrap();
        assert_eq!(u.url, "redis://h:1/0?protocol=resp3");
        assert_eq!(u.password.as_deref(), Some("PW"));
        let u = split_redis_url("unix:///s?user=app&pass=PW#x").unwrap();
        assert_eq!(u.url, "unix:///s?user=***#x");
        let secret = u.secret().unwrap();
        assert!(!u.url.contains("app"));
        assert_eq!(
            credentials(&u.url, Some(&secret)),
            (Some("app".into()), Some("PW".into()))
        );
        // A password that looks like the pair stays a password without the mark.
        assert_eq!(
            credentials("redis://h/0", Some(&secret)),
            (None, Some(secret.clone()))
        );
        assert!(split_redis_url("redis://:a@h/0?pass=b").is_err());
        assert!(split_redis_url("redis://u@h/0?user=v").is_err());
        assert_eq!(
            shown_url("redis+unix:///s?db=1", true),
            "redis+unix:///s?db=1&pass=***"
        );
        assert_eq!(
            shown_url("unix:///s?user=***", true),
            "unix:///s?user=***&pass=***"
        );
        // URLs stored in the clear by older versions are masked when shown.
        assert_eq!(
            shown_url("redis+unix:///s?pass=PW&user=u", false),
            "redis+unix:///s?pass=***&user=***"
        );
        assert_eq!(
            shown_url("redis://h/0?password=PW", false),
            "redis://h/0?password=***"
        );
        assert_eq!(shown_url("redis://u:PW@h/0", false), "redis://u:***@h/0");
        assert!(has_clear_credentials("redis+unix:///s?pass=PW"));
        assert!(has_clear_credentials("redis://u:PW@h/0"));
        assert!(has_clear_credentials("redis://h/0?db=1&user=u"));
        assert!(!has_clear_credentials("unix:///s?user=***"));
        assert!(!has_clear_credentials("redis://u@h/0?protocol=resp3"));
    }
}
