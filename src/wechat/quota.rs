//! WeChat's quota tools for Official Accounts and Mini Programs: reading an API's daily
//! quota with a token (`getApiQuota`), and clearing the day's counters with the secret
//! (`clearQuotaByAppSecret`). Part of the HTTP module, like the token fetches.

use serde::Deserialize;

use super::{Client, Failure, Outcome, check_errcode, decode, read_body};
use crate::domain::Secret;

/// `POST ?access_token=TOKEN` with `{"cgi_path": ...}`; costs no token fetch.
pub const QUOTA_GET: &str = "/cgi-bin/openapi/quota/get";
/// `POST` with `{"appid": ..., "appsecret": ...}` in the body; works when the token quota
/// is exhausted, and shares WeChat's 10 resets a month with `/cgi-bin/clear_quota`.
pub const CLEAR_QUOTA: &str = "/cgi-bin/clear_quota/v2";

/// One API's quota for today, as WeChat counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub daily_limit: i64,
    pub used: i64,
    pub remain: i64,
}

impl Client {
    /// Asks for the daily quota of `cgi_path` with `token`, retrying transient failures.
    pub fn api_quota(&self, token: &str, cgi_path: &str) -> Outcome<Quota> {
        // The token is in the query string; keep it out of error texts like a secret.
        let token_secret = Secret::new(token.to_string());
        let body = serde_json::json!({ "cgi_path": cgi_path }).to_string();
        self.with_retries(&[&token_secret], || {
            let response = self
                .agent
                .post(format!("{}{QUOTA_GET}", self.api_base))
                .query("access_token", token)
                .header("Content-Type", "application/json")
                .send(body.as_str());
            parse_quota(read_body(&self.api_base, response)?)
        })
    }

    /// Clears the day's API call counters of `appid`, retrying transient failures. The
    /// secret travels in the JSON body, never in the URL, where proxies and logs keep it.
    pub fn clear_quota(&self, appid: &str, secret: &Secret) -> Outcome<()> {
        let body = serde_json::json!({ "appid": appid, "appsecret": secret.expose() }).to_string();
        self.with_retries(&[secret], || {
            let response = self
                .agent
                .post(format!("{}{CLEAR_QUOTA}", self.api_base))
                .header("Content-Type", "application/json")
                .send(body.as_str());
            parse_ack(read_body(&self.api_base, response)?)
        })
    }
}

#[derive(Deserialize)]
struct QuotaReply {
    errcode: Option<i64>,
    errmsg: Option<String>,
    quota: Option<QuotaFields>,
}

#[derive(Deserialize)]
struct QuotaFields {
    daily_limit: Option<i64>,
    used: Option<i64>,
    remain: Option<i64>,
}

/// Strict parsing: an errcode, or all three counts, none negative.
fn parse_quota(body: String) -> Result<Quota, Failure> {
    let reply: QuotaReply = decode(body)?;
    check_errcode(reply.errcode, reply.errmsg)?;
    let fields = reply
        .quota
        .ok_or_else(|| Failure::Invalid("no quota in the reply".to_string()))?;
    let count = |name: &str, value: Option<i64>| match value {
        Some(n) if n >= 0 => Ok(n),
        Some(n) => Err(Failure::Invalid(format!("quota.{name} is negative ({n})"))),
        None => Err(Failure::Invalid(format!("no quota.{name} in the reply"))),
    };
    Ok(Quota {
        daily_limit: count("daily_limit", fields.daily_limit)?,
        used: count("used", fields.used)?,
        remain: count("remain", fields.remain)?,
    })
}

#[derive(Deserialize)]
struct Ack {
    errcode: Option<i64>,
    errmsg: Option<String>,
}

/// `{"errcode":0,"errmsg":"ok"}`. A reply without an errcode is not taken as success:
/// a reset spends one of ten a month, so it must be confirmed, not assumed.
pub(super) fn parse_ack(body: String) -> Result<(), Failure> {
    let ack: Ack = decode(body)?;
    if ack.errcode.is_none() {
        return Err(Failure::Invalid("no errcode in the reply".to_string()));
    }
    check_errcode(ack.errcode, ack.errmsg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quota_replies() {
        let ok = r#"{"errcode":0,"errmsg":"ok","quota":{"daily_limit":2000,"used":24,"remain":1976},
                    "rate_limit":{"call_count":100,"refresh_second":60}}"#;
        assert_eq!(
            parse_quota(ok.into()),
            Ok(Quota {
                daily_limit: 2000,
                used: 24,
                remain: 1976
            })
        );
        let unknown = r#"{"errcode":76021,"errmsg":"cgi_path not found, please check"}"#;
        assert!(matches!(
            parse_quota(unknown.into()),
            Err(Failure::WeChat { errcode: 76021, .. })
        ));
        for bad in [
            r#"{"errcode":0,"errmsg":"ok"}"#,
            r#"{"quota":{"daily_limit":2000,"used":1}}"#,
            r#"{"quota":{"daily_limit":2000,"used":-1,"remain":1}}"#,
            r#"{"quota":{"daily_limit":"2000","used":1,"remain":1}}"#,
        ] {
            let failure = parse_quota(bad.into()).unwrap_err();
            assert!(matches!(failure, Failure::Invalid(_)), "{bad}: {failure:?}");
            assert!(!failure.is_transient());
        }
        assert!(
            parse_quota("<html>502</html>".into())
                .unwrap_err()
                .is_transient()
        );
    }

    #[test]
    fn an_ack_needs_errcode_zero() {
        assert_eq!(parse_ack(r#"{"errcode":0,"errmsg":"ok"}"#.into()), Ok(()));
        assert!(matches!(
            parse_ack(r#"{"errcode":48006,"errmsg":"forbid to clear quota"}"#.into()),
            Err(Failure::WeChat { errcode: 48006, .. })
        ));
        assert!(matches!(parse_ack("{}".into()), Err(Failure::Invalid(_))));
    }
}
