//! The third-party platform calls: an Open Platform component's token (with the pushed
//! ticket), its authorizers' tokens (with the component token and each refresh token),
//! exchanging an authorization code, listing authorizers, restarting ticket pushes; a
//! WeCom suite's token, its corps' tokens (with each permanent code), exchanging an
//! install's auth code for a permanent code, and a corp's auth info. Part of the HTTP
//! module: every secret, ticket and platform token travels in a JSON body or the query
//! string and is scrubbed from every failure like a secret.

use serde::Deserialize;

use super::quota::parse_ack;
use super::{
    BODY_CAP, Client, Failure, Outcome, check_errcode, decode, exchange, read_body,
    read_body_capped,
};
use crate::domain::{Api, Fetched, Secret};

/// What `api_query_auth` hands back: the authorizer, its first token, and its refresh
/// token (absent when the merchant granted no API permission).
#[derive(Debug)]
pub struct Authorized {
    pub appid: String,
    pub token: Fetched,
    pub refresh_token: Option<Secret>,
}

/// One page of `api_get_authorizer_list`: the total, and each authorizer's appid with its
/// current refresh token (`None`: WeChat sent an empty one, the merchant must authorize
/// again).
#[derive(Debug)]
pub struct AuthorizerPage {
    pub total: i64,
    pub list: Vec<(String, Option<Secret>)>,
}

/// What exchanging an install's auth code gives: the corp and its permanent code.
#[derive(Debug)]
pub struct PermanentCode {
    pub corpid: String,
    pub corp_name: String,
    pub code: Secret,
}

/// A corp's authorization as `get_auth_info` gives it: its agents, each with whether it is
/// a 代开发 (customized) app.
#[derive(Debug)]
pub struct CorpAuth {
    pub agents: Vec<(i64, bool)>,
}

/// A page of 500 authorizers is about 75 KB.
const LIST_CAP: u64 = 512 * 1024;

impl Client {
    fn post_json(
        &self,
        base: &str,
        path: &str,
        query: Option<(&str, &str)>,
        body: &serde_json::Value,
    ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        let mut request = self.agent.post(format!("{base}{path}"));
        if let Some((name, value)) = query {
            request = request.query(name, value);
        }
        request
            .header("Content-Type", "application/json")
            .send(body.to_string())
    }

    /// A platform's token: `api_component_token` or `get_suite_token`, with its secret and
    /// the newest pushed ticket.
    pub fn fetch_platform_token(
        &self,
        api: Api,
        id: &str,
        secret: &Secret,
        ticket: &Secret,
    ) -> Outcome {
        let (base, path, body, field) = match api {
            Api::Component => (
                &self.api_base,
                "/cgi-bin/component/api_component_token",
                serde_json::json!({
                    "component_appid": id,
                    "component_appsecret": secret.expose(),
                    "component_verify_ticket": ticket.expose(),
                }),
                "component_access_token",
            ),
            _ => (
                &self.work_api_base,
                "/cgi-bin/service/get_suite_token",
                serde_json::json!({
                    "suite_id": id,
                    "suite_secret": secret.expose(),
                    "suite_ticket": ticket.expose(),
                }),
                "suite_access_token",
            ),
        };
        self.with_retries(&[secret, ticket], || {
            let response = self.post_json(base, path, None, &body);
            exchange(base, response, field)
        })
    }

    /// A tenant's token: `api_authorizer_token` (which may hand back a new refresh token,
    /// in `Fetched::renewed`) or `get_corp_token`, with its platform's token and its
    /// durable credential.
    pub fn fetch_tenant_token(
        &self,
        api: Api,
        platform_id: &str,
        platform_token: &str,
        tenant: &str,
        credential: &Secret,
    ) -> Outcome {
        let token_secret = Secret::new(platform_token.to_string());
        let (base, path, query, body, field) = match api {
            Api::Authorizer => (
                &self.api_base,
                "/cgi-bin/component/api_authorizer_token",
                "component_access_token",
                serde_json::json!({
                    "component_appid": platform_id,
                    "authorizer_appid": tenant,
                    "authorizer_refresh_token": credential.expose(),
                }),
                "authorizer_access_token",
            ),
            _ => (
                &self.work_api_base,
                "/cgi-bin/service/get_corp_token",
                "suite_access_token",
                serde_json::json!({
                    "auth_corpid": tenant,
                    "permanent_code": credential.expose(),
                }),
                "access_token",
            ),
        };
        let mut outcome = self.with_retries(&[credential, &token_secret], || {
            let response = self.post_json(base, path, Some((query, platform_token)), &body);
            exchange(base, response, field)
        });
        // Only an authorizer's reply carries a credential, and only a different one is new.
        if let Ok(fetched) = &mut outcome.result
            && (api != Api::Authorizer
                || fetched
                    .renewed
                    .as_ref()
                    .is_some_and(|r| r.expose() == credential.expose()))
        {
            fetched.renewed = None;
        }
        outcome
    }

    /// `api_query_auth`: exchanges an authorization code for the authorizer's first token
    /// and its refresh token.
    pub fn query_auth(&self, component: &str, token: &str, code: &Secret) -> Outcome<Authorized> {
        let token_secret = Secret::new(token.to_string());
        let body = serde_json::json!({
            "component_appid": component,
            "authorization_code": code.expose(),
        });
        self.with_retries(&[code, &token_secret], || {
            let response = self.post_json(
                &self.api_base,
                "/cgi-bin/component/api_query_auth",
                Some(("component_access_token", token)),
                &body,
            );
            parse_query_auth(read_body(&self.api_base, response)?)
        })
    }

    /// One page of `api_get_authorizer_list` (at most 500).
    pub fn authorizer_list(
        &self,
        component: &str,
        token: &str,
        offset: i64,
        count: i64,
    ) -> Outcome<AuthorizerPage> {
        let token_secret = Secret::new(token.to_string());
        let body = serde_json::json!({
            "component_appid": component,
            "offset": offset,
            "count": count,
        });
        self.with_retries(&[&token_secret], || {
            let response = self.post_json(
                &self.api_base,
                "/cgi-bin/component/api_get_authorizer_list",
                Some(("access_token", token)),
                &body,
            );
            parse_list(read_body_capped(&self.api_base, response, LIST_CAP)?)
        })
    }

    /// `api_start_push_ticket`: asks WeChat to resume pushing the component's ticket.
    pub fn start_push_ticket(&self, component: &str, secret: &Secret) -> Outcome<()> {
        let body = serde_json::json!({
            "component_appid": component,
            "component_secret": secret.expose(),
        });
        self.with_retries(&[secret], || {
            let response = self.post_json(
                &self.api_base,
                "/cgi-bin/component/api_start_push_ticket",
                None,
                &body,
            );
            parse_ack(read_body(&self.api_base, response)?)
        })
    }

    /// `v2/get_permanent_code`: exchanges an install's auth code for the corp's permanent
    /// code.
    pub fn permanent_code(&self, suite_token: &str, code: &Secret) -> Outcome<PermanentCode> {
        let token_secret = Secret::new(suite_token.to_string());
        let body = serde_json::json!({ "auth_code": code.expose() });
        self.with_retries(&[code, &token_secret], || {
            let response = self.post_json(
                &self.work_api_base,
                "/cgi-bin/service/v2/get_permanent_code",
                Some(("suite_access_token", suite_token)),
                &body,
            );
            parse_permanent_code(read_body(&self.work_api_base, response)?)
        })
    }

    /// `v2/get_auth_info`: a corp's agents, to tell a 代开发 app and find its agentid.
    pub fn auth_info(&self, suite_token: &str, corpid: &str, code: &Secret) -> Outcome<CorpAuth> {
        let token_secret = Secret::new(suite_token.to_string());
        let body = serde_json::json!({ "auth_corpid": corpid, "permanent_code": code.expose() });
        self.with_retries(&[code, &token_secret], || {
            let response = self.post_json(
                &self.work_api_base,
                "/cgi-bin/service/v2/get_auth_info",
                Some(("suite_access_token", suite_token)),
                &body,
            );
            parse_auth_info(read_body(&self.work_api_base, response)?)
        })
    }
}

/// An identifier from a reply: printable ASCII, no '/', at most 128 bytes.
fn identifier(what: &str, value: Option<String>) -> Result<String, Failure> {
    match value {
        Some(v)
            if !v.is_empty()
                && v.len() <= 128
                && v.bytes().all(|b| b.is_ascii_graphic() && b != b'/') =>
        {
            Ok(v)
        }
        Some(_) => Err(Failure::Invalid(format!(
            "{what} is not a valid identifier"
        ))),
        None => Err(Failure::Invalid(format!("no {what} in the reply"))),
    }
}

/// A credential from a reply: `None` when empty, refused when not one.
fn credential(what: &str, value: Option<String>) -> Result<Option<Secret>, Failure> {
    match value {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) if v.len() <= 1024 && v.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(Secret::new(v)))
        }
        Some(_) => Err(Failure::Invalid(format!(
            "{what} has characters no credential has"
        ))),
    }
}

#[derive(Deserialize)]
struct QueryAuthReply {
    errcode: Option<i64>,
    errmsg: Option<String>,
    authorization_info: Option<AuthorizationInfo>,
}

#[derive(Deserialize)]
struct AuthorizationInfo {
    authorizer_appid: Option<String>,
    authorizer_access_token: Option<String>,
    expires_in: Option<i64>,
    authorizer_refresh_token: Option<String>,
}

fn parse_query_auth(body: String) -> Result<Authorized, Failure> {
    let reply: QueryAuthReply = decode(body)?;
    check_errcode(reply.errcode, reply.errmsg)?;
    let info = reply
        .authorization_info
        .ok_or_else(|| Failure::Invalid("no authorization_info in the reply".into()))?;
    let appid = identifier("authorizer_appid", info.authorizer_appid)?;
    // The token part is checked like any token reply.
    let token_reply = serde_json::json!({
        "access_token": info.authorizer_access_token,
        "expires_in": info.expires_in,
    });
    let token = super::parse_reply(token_reply.to_string(), "access_token")?;
    Ok(Authorized {
        appid,
        token: Fetched {
            renewed: None,
            ..token
        },
        refresh_token: credential("authorizer_refresh_token", info.authorizer_refresh_token)?,
    })
}

#[derive(Deserialize)]
struct ListReply {
    errcode: Option<i64>,
    errmsg: Option<String>,
    total_count: Option<i64>,
    list: Option<Vec<ListItem>>,
}

#[derive(Deserialize)]
struct ListItem {
    authorizer_appid: Option<String>,
    refresh_token: Option<String>,
}

fn parse_list(body: String) -> Result<AuthorizerPage, Failure> {
    let reply: ListReply = decode(body)?;
    check_errcode(reply.errcode, reply.errmsg)?;
    let total = reply
        .total_count
        .filter(|&n| n >= 0)
        .ok_or_else(|| Failure::Invalid("no valid total_count in the reply".into()))?;
    let list = reply
        .list
        .unwrap_or_default()
        .into_iter()
        .map(|item| {
            Ok((
                identifier("authorizer_appid", item.authorizer_appid)?,
                credential("refresh_token", item.refresh_token)?,
            ))
        })
        .collect::<Result<_, Failure>>()?;
    Ok(AuthorizerPage { total, list })
}

#[derive(Deserialize)]
struct PermanentCodeReply {
    errcode: Option<i64>,
    errmsg: Option<String>,
    permanent_code: Option<String>,
    auth_corp_info: Option<CorpInfo>,
}

#[derive(Deserialize)]
struct CorpInfo {
    corpid: Option<String>,
    corp_name: Option<String>,
}

fn parse_permanent_code(body: String) -> Result<PermanentCode, Failure> {
    let reply: PermanentCodeReply = decode(body)?;
    check_errcode(reply.errcode, reply.errmsg)?;
    let info = reply
        .auth_corp_info
        .ok_or_else(|| Failure::Invalid("no auth_corp_info in the reply".into()))?;
    let code = credential("permanent_code", reply.permanent_code)?
        .ok_or_else(|| Failure::Invalid("no permanent_code in the reply".into()))?;
    Ok(PermanentCode {
        corpid: identifier("auth_corp_info.corpid", info.corpid)?,
        corp_name: info
            .corp_name
            .unwrap_or_default()
            .chars()
            .filter(|c| !c.is_control())
            .take(100)
            .collect(),
        code,
    })
}

#[derive(Deserialize)]
struct AuthInfoReply {
    errcode: Option<i64>,
    errmsg: Option<String>,
    auth_info: Option<AuthInfo>,
}

#[derive(Deserialize)]
struct AuthInfo {
    agent: Option<Vec<Agent>>,
}

#[derive(Deserialize)]
struct Agent {
    agentid: Option<i64>,
    is_customized_app: Option<bool>,
}

fn parse_auth_info(body: String) -> Result<CorpAuth, Failure> {
    let reply: AuthInfoReply = decode(body)?;
    check_errcode(reply.errcode, reply.errmsg)?;
    let agents = reply
        .auth_info
        .and_then(|i| i.agent)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|a| Some((a.agentid?, a.is_customized_app.unwrap_or(false))))
        .collect();
    Ok(CorpAuth { agents })
}

/// The token part of a reply is never larger than a token's.
const _: () = assert!(BODY_CAP <= LIST_CAP);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_page_keeps_empty_refresh_tokens_as_missing() {
        let page = parse_list(
            r#"{"total_count":2,"list":[{"authorizer_appid":"wxa","refresh_token":"r1","auth_time":1},
               {"authorizer_appid":"wxb","refresh_token":"","auth_time":2}]}"#
                .into(),
        )
        .unwrap();
        assert_eq!(page.total, 2);
        assert_eq!(page.list[0].1.as_ref().unwrap().expose(), "r1");
        assert!(page.list[1].1.is_none());
        assert!(
            parse_list(r#"{"total_count":1,"list":[{"authorizer_appid":"a/b"}]}"#.into()).is_err()
        );
    }

    #[test]
    fn query_auth_checks_the_token_like_any_reply() {
        let ok = parse_query_auth(
            r#"{"authorization_info":{"authorizer_appid":"wxa","authorizer_access_token":"T1",
                "expires_in":7200,"authorizer_refresh_token":"R1","func_info":[]}}"#
                .into(),
        )
        .unwrap();
        assert_eq!((ok.appid.as_str(), ok.token.token.as_str()), ("wxa", "T1"));
        assert_eq!(ok.refresh_token.unwrap().expose(), "R1");
        let long = parse_query_auth(
            r#"{"authorization_info":{"authorizer_appid":"wxa","authorizer_access_token":"T1",
                "expires_in":99999}}"#
                .into(),
        );
        assert!(long.is_err());
        let err = parse_query_auth(r#"{"errcode":61010,"errmsg":"code expired"}"#.into());
        assert!(matches!(err, Err(Failure::WeChat { errcode: 61010, .. })));
    }
}
