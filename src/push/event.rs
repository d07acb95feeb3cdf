//! The decrypted fields of a push as a typed event, by `InfoType` (platforms.md §5): the
//! ticket and authorization events of Open Platform (`AppId`, `CreateTime`) and WeCom
//! (`SuiteId`, `TimeStamp`). Any other `InfoType` is `Other`, to be answered and ignored.

use std::fmt;

use super::Hidden;
use super::xml::Fields;

/// Fields whose values must not reach a log or a hook (see `xml::redact`): tickets and
/// codes that can be exchanged for tokens.
pub const SECRET_FIELDS: &[&str] = &[
    "ComponentVerifyTicket",
    "AuthorizationCode",
    "PreAuthCode",
    "SuiteTicket",
    "AuthCode",
    "PermanentCode",
    "AuthorizerRefreshToken",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Open Platform `component_verify_ticket`: a new ticket for component `appid`.
    ComponentTicket {
        appid: String,
        create_time: i64,
        ticket: Hidden,
    },
    /// Open Platform `authorized` (`update: false`) or `updateauthorized` (`update: true`):
    /// `code` is to be exchanged with `api_query_auth` before `code_expires` (Unix seconds).
    Authorized {
        appid: String,
        authorizer_appid: String,
        code: Hidden,
        code_expires: i64,
        update: bool,
    },
    /// Open Platform `unauthorized`: `authorizer_appid` revoked the component.
    Unauthorized {
        appid: String,
        authorizer_appid: String,
    },
    /// WeCom `suite_ticket`: a new ticket for suite `suite_id`.
    SuiteTicket {
        suite_id: String,
        timestamp: i64,
        ticket: Hidden,
    },
    /// WeCom `create_auth` (app-market installs only): `auth_code` is valid 10 minutes.
    /// `state` is empty when the push has none.
    CreateAuth {
        suite_id: String,
        auth_code: Hidden,
        timestamp: i64,
        state: String,
    },
    /// WeCom `change_auth`: call `get_auth_info` for `auth_corpid` again.
    ChangeAuth {
        suite_id: String,
        auth_corpid: String,
    },
    /// WeCom `cancel_auth`: `auth_corpid` removed the suite.
    CancelAuth {
        suite_id: String,
        auth_corpid: String,
    },
    /// WeCom `reset_permanent_code` (代开发 apps): exchange `auth_code` for the new secret.
    ResetPermanentCode { suite_id: String, auth_code: Hidden },
    /// Any other `InfoType` (`change_contact`, `share_agent_change`, …): not token related.
    Other { info_type: String },
}

impl Event {
    /// The component appid or suite_id the push is for, to drop a push meant for another
    /// platform sharing the URL. `None` for `Other`.
    pub fn receiver(&self) -> Option<&str> {
        match self {
            Event::ComponentTicket { appid, .. }
            | Event::Authorized { appid, .. }
            | Event::Unauthorized { appid, .. } => Some(appid),
            Event::SuiteTicket { suite_id, .. }
            | Event::CreateAuth { suite_id, .. }
            | Event::ChangeAuth { suite_id, .. }
            | Event::CancelAuth { suite_id, .. }
            | Event::ResetPermanentCode { suite_id, .. } => Some(suite_id),
            Event::Other { .. } => None,
        }
    }
}

/// Why the fields are not an event. Names the field, never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventError {
    /// The field is absent or empty.
    Missing(&'static str),
    /// The field should be a whole number (a Unix time) and is not.
    NotNumber(&'static str),
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventError::Missing(name) => write!(f, "the push has no {name} field"),
            EventError::NotNumber(name) => write!(f, "the push's {name} field is not a number"),
        }
    }
}

impl std::error::Error for EventError {}

/// A required field, trimmed: WeChat puts none of these in whitespace, but a hand-made
/// push in a test or a replay might.
fn text(fields: &Fields, name: &'static str) -> Result<String, EventError> {
    match fields.get(name).map(str::trim) {
        Some(v) if !v.is_empty() => Ok(v.to_string()),
        _ => Err(EventError::Missing(name)),
    }
}

fn secret(fields: &Fields, name: &'static str) -> Result<Hidden, EventError> {
    text(fields, name).map(Hidden::new)
}

fn number(fields: &Fields, name: &'static str) -> Result<i64, EventError> {
    text(fields, name)?
        .parse()
        .map_err(|_| EventError::NotNumber(name))
}

/// The event in the decrypted fields of a push. `InfoType` is matched without regard to
/// case, as wechatpy does.
pub fn parse_event(fields: &Fields) -> Result<Event, EventError> {
    let info_type = text(fields, "InfoType")?;
    let event = match info_type.to_ascii_lowercase().as_str() {
        "component_verify_ticket" => Event::ComponentTicket {
            appid: text(fields, "AppId")?,
            create_time: number(fields, "CreateTime")?,
            ticket: secret(fields, "ComponentVerifyTicket")?,
        },
        kind @ ("authorized" | "updateauthorized") => Event::Authorized {
            appid: text(fields, "AppId")?,
            authorizer_appid: text(fields, "AuthorizerAppid")?,
            code: secret(fields, "AuthorizationCode")?,
            code_expires: number(fields, "AuthorizationCodeExpiredTime")?,
            update: kind == "updateauthorized",
        },
        "unauthorized" => Event::Unauthorized {
            appid: text(fields, "AppId")?,
            authorizer_appid: text(fields, "AuthorizerAppid")?,
        },
        "suite_ticket" => Event::SuiteTicket {
            suite_id: text(fields, "SuiteId")?,
            timestamp: number(fields, "TimeStamp")?,
            ticket: secret(fields, "SuiteTicket")?,
        },
        "create_auth" => Event::CreateAuth {
            suite_id: text(fields, "SuiteId")?,
            auth_code: secret(fields, "AuthCode")?,
            timestamp: number(fields, "TimeStamp")?,
            state: fields.get("State").unwrap_or("").trim().to_string(),
        },
        "change_auth" => Event::ChangeAuth {
            suite_id: text(fields, "SuiteId")?,
            auth_corpid: text(fields, "AuthCorpId")?,
        },
        "cancel_auth" => Event::CancelAuth {
            suite_id: text(fields, "SuiteId")?,
            auth_corpid: text(fields, "AuthCorpId")?,
        },
        "reset_permanent_code" => Event::ResetPermanentCode {
            suite_id: text(fields, "SuiteId")?,
            auth_code: secret(fields, "AuthCode")?,
        },
        _ => Event::Other { info_type },
    };
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::xml::{parse_fields, redact};

    fn event(xml: &str) -> Result<Event, EventError> {
        parse_event(&parse_fields(xml.as_bytes()).unwrap())
    }

    fn hidden(s: &str) -> Hidden {
        Hidden::new(s.into())
    }

    #[test]
    fn open_platform_events() {
        assert_eq!(
            event(
                "<xml><AppId>wxc</AppId><CreateTime>1413192605</CreateTime>\
                 <InfoType><![CDATA[component_verify_ticket]]></InfoType>\
                 <ComponentVerifyTicket><![CDATA[ticket@@@x]]></ComponentVerifyTicket></xml>"
            )
            .unwrap(),
            Event::ComponentTicket {
                appid: "wxc".into(),
                create_time: 1413192605,
                ticket: hidden("ticket@@@x"),
            }
        );
        let auth = |kind: &str| {
            event(&format!(
                "<xml><AppId>wxc</AppId><CreateTime>1413192760</CreateTime><InfoType>{kind}</InfoType>\
                 <AuthorizerAppid>wxa</AuthorizerAppid><AuthorizationCode>code</AuthorizationCode>\
                 <AuthorizationCodeExpiredTime>1413196360</AuthorizationCodeExpiredTime>\
                 <PreAuthCode>pre</PreAuthCode></xml>"
            ))
            .unwrap()
        };
        for (kind, update) in [
            ("authorized", false),
            ("updateauthorized", true),
            ("Authorized", false),
        ] {
            assert_eq!(
                auth(kind),
                Event::Authorized {
                    appid: "wxc".into(),
                    authorizer_appid: "wxa".into(),
                    code: hidden("code"),
                    code_expires: 1413196360,
                    update,
                }
            );
        }
        let e = event(
            "<xml><AppId>wxc</AppId><CreateTime>1</CreateTime><InfoType>unauthorized</InfoType>\
             <AuthorizerAppid>wxa</AuthorizerAppid></xml>",
        )
        .unwrap();
        assert_eq!(
            e,
            Event::Unauthorized {
                appid: "wxc".into(),
                authorizer_appid: "wxa".into()
            }
        );
        assert_eq!(e.receiver(), Some("wxc"));
    }

    #[test]
    fn wecom_events() {
        let e = event(
            "<xml><SuiteId><![CDATA[ww4asffe99e54c0f4c]]></SuiteId><InfoType><![CDATA[suite_ticket]]></InfoType>\
             <TimeStamp>1403610513</TimeStamp><SuiteTicket><![CDATA[asdfasfdasdfasdf]]></SuiteTicket></xml>",
        )
        .unwrap();
        assert_eq!(
            e,
            Event::SuiteTicket {
                suite_id: "ww4asffe99e54c0f4c".into(),
                timestamp: 1403610513,
                ticket: hidden("asdfasfdasdfasdf"),
            }
        );
        assert_eq!(e.receiver(), Some("ww4asffe99e54c0f4c"));
        assert_eq!(
            event(
                "<xml><SuiteId>s</SuiteId><AuthCode>ac</AuthCode><InfoType>create_auth</InfoType>\
                 <TimeStamp>1403610513</TimeStamp><State>st</State><ExtraInfo></ExtraInfo></xml>"
            )
            .unwrap(),
            Event::CreateAuth {
                suite_id: "s".into(),
                auth_code: hidden("ac"),
                timestamp: 1403610513,
                state: "st".into(),
            }
        );
        let no_state = event(
            "<xml><SuiteId>s</SuiteId><AuthCode>ac</AuthCode><InfoType>create_auth</InfoType>\
             <TimeStamp>1</TimeStamp></xml>",
        )
        .unwrap();
        assert!(matches!(no_state, Event::CreateAuth { state, .. } if state.is_empty()));
        for (kind, want) in [
            (
                "change_auth",
                Event::ChangeAuth {
                    suite_id: "s".into(),
                    auth_corpid: "wxcorp".into(),
                },
            ),
            (
                "cancel_auth",
                Event::CancelAuth {
                    suite_id: "s".into(),
                    auth_corpid: "wxcorp".into(),
                },
            ),
        ] {
            let xml = format!(
                "<xml><SuiteId>s</SuiteId><InfoType>{kind}</InfoType><TimeStamp>1</TimeStamp>\
                 <AuthCorpId>wxcorp</AuthCorpId></xml>"
            );
            assert_eq!(event(&xml).unwrap(), want);
        }
        assert_eq!(
            event(
                "<xml><SuiteId>dk123</SuiteId><AuthCode>ac</AuthCode>\
                 <InfoType>reset_permanent_code</InfoType><TimeStamp>1</TimeStamp></xml>"
            )
            .unwrap(),
            Event::ResetPermanentCode {
                suite_id: "dk123".into(),
                auth_code: hidden("ac"),
            }
        );
    }

    #[test]
    fn other_info_types_are_kept_by_name() {
        let e = event(
            "<xml><SuiteId>s</SuiteId><InfoType>change_contact</InfoType><ChangeType>create_user</ChangeType>\
             <ExtAttr><Item><Name>n</Name></Item></ExtAttr></xml>",
        )
        .unwrap();
        assert_eq!(
            e,
            Event::Other {
                info_type: "change_contact".into()
            }
        );
        assert_eq!(e.receiver(), None);
    }

    #[test]
    fn missing_and_bad_fields_name_the_field_not_the_value() {
        assert_eq!(
            event("<xml><AppId>a</AppId></xml>").unwrap_err(),
            EventError::Missing("InfoType")
        );
        assert_eq!(
            event(
                "<xml><AppId>a</AppId><CreateTime>1</CreateTime><InfoType>component_verify_ticket</InfoType></xml>"
            )
            .unwrap_err(),
            EventError::Missing("ComponentVerifyTicket")
        );
        assert_eq!(
            event(
                "<xml><AppId>a</AppId><CreateTime>1</CreateTime><InfoType>component_verify_ticket</InfoType>\
                 <ComponentVerifyTicket>  </ComponentVerifyTicket></xml>"
            )
            .unwrap_err(),
            EventError::Missing("ComponentVerifyTicket")
        );
        let err = event(
            "<xml><SuiteId>s</SuiteId><InfoType>suite_ticket</InfoType><TimeStamp>soon-secret</TimeStamp>\
             <SuiteTicket>t</SuiteTicket></xml>",
        )
        .unwrap_err();
        assert_eq!(err, EventError::NotNumber("TimeStamp"));
        assert_eq!(
            err.to_string(),
            "the push's TimeStamp field is not a number"
        );
        assert!(!err.to_string().contains("soon-secret"));
    }

    #[test]
    fn secrets_stay_hidden() {
        let xml = "<xml><SuiteId>s</SuiteId><InfoType>suite_ticket</InfoType><TimeStamp>1</TimeStamp>\
                   <SuiteTicket>ticket-value</SuiteTicket></xml>";
        let e = event(xml).unwrap();
        assert!(!format!("{e:?}").contains("ticket-value"));
        let shown = redact(&parse_fields(xml.as_bytes()).unwrap(), SECRET_FIELDS);
        assert!(!shown.contains("ticket-value"), "{shown}");
        assert!(
            shown.contains("<SuiteId><![CDATA[s]]></SuiteId>"),
            "{shown}"
        );
    }
}
