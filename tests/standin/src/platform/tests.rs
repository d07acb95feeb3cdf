//! The platform routes, through a real loopback connection.

use super::*;
use crate::{MENU_GET, TICKET, WORK_TOKEN, WORK_USER_GET};
use std::io::{Read, Write};
use std::net::TcpStream;

const HOUR: Duration = Duration::from_secs(3600);

fn call(s: &StandIn, method: &str, target: &str, body: &str) -> String {
    let mut c = TcpStream::connect(s.addr()).expect("connect");
    let len = body.len();
    write!(
        c,
        "{method} {target} HTTP/1.1\r\nHost: standin\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n{body}"
    )
    .expect("write");
    let mut reply = String::new();
    c.read_to_string(&mut reply).expect("read");
    let (head, body) = reply.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

fn post(s: &StandIn, target: &str, body: &str) -> String {
    call(s, "POST", target, body)
}

/// The first value of `"name":` in a JSON text (string or scalar), without a JSON library.
fn field(json: &str, name: &str) -> Option<String> {
    let at = json.find(&format!("\"{name}\":"))? + name.len() + 3;
    let rest = &json[at..];
    Some(match rest.strip_prefix('"') {
        Some(s) => s[..s.find('"')?].to_string(),
        None => rest[..rest.find([',', '}', ']'])?].to_string(),
    })
}

fn errcode(json: &str) -> i64 {
    field(json, "errcode").map_or(0, |c| c.parse().expect("a number"))
}

fn component_token_body(cid: &str, secret: &str, ticket: &str) -> String {
    format!(
        r#"{{"component_appid":"{cid}","component_appsecret":"{secret}","component_verify_ticket":"{ticket}"}}"#
    )
}

/// A stand-in with component `wxc` (secret `cs`, ticket `tk`) and its first token.
fn component() -> (StandIn, String) {
    let s = StandIn::start();
    s.add_component("wxc", "cs");
    s.push_component_ticket("wxc", "tk");
    let reply = post(
        &s,
        COMPONENT_TOKEN,
        &component_token_body("wxc", "cs", "tk"),
    );
    let token = field(&reply, "component_access_token").expect(&reply);
    (s, token)
}

fn authorizer_token(s: &StandIn, ct: &str, appid: &str, refresh: &str) -> String {
    let body = format!(
        r#"{{"component_appid":"wxc","authorizer_appid":"{appid}","authorizer_refresh_token":"{refresh}"}}"#
    );
    post(
        s,
        &format!("{AUTHORIZER_TOKEN}?component_access_token={ct}"),
        &body,
    )
}

fn menu_get(s: &StandIn, token: &str) -> i64 {
    errcode(&call(
        s,
        "GET",
        &format!("{MENU_GET}?access_token={token}"),
        "",
    ))
}

fn user_get(s: &StandIn, token: &str) -> i64 {
    let target = format!("{WORK_USER_GET}?access_token={token}&userid=u");
    errcode(&call(s, "GET", &target, ""))
}

#[test]
fn component_token_checks_secret_and_ticket() {
    let (s, token) = component();
    assert_eq!(token.len(), 128);
    let reply = post(
        &s,
        COMPONENT_TOKEN,
        &component_token_body("wxc", "cs", "tk"),
    );
    assert_eq!(field(&reply, "expires_in").as_deref(), Some("7200"));
    assert_eq!(errcode(&reply), 0, "no errcode on success: {reply}");
    let code = |cid: &str, secret: &str, ticket: &str| {
        errcode(&post(
            &s,
            COMPONENT_TOKEN,
            &component_token_body(cid, secret, ticket),
        ))
    };
    assert_eq!(code("wxother", "cs", "tk"), 40013);
    assert_eq!(code("wxc", "wrong", "tk"), 40125);
    assert_eq!(code("wxc", "", "tk"), 41004);
    assert_eq!(code("wxc", "cs", "foreign"), 61006);
    assert_eq!(code("wxc", "cs", ""), 61006);
    s.advance(Duration::from_secs(12 * 3600 - 1));
    assert_eq!(code("wxc", "cs", "tk"), 0);
    s.advance(Duration::from_secs(1));
    assert_eq!(code("wxc", "cs", "tk"), 61005);
    s.push_component_ticket("wxc", "tk2");
    assert_eq!(code("wxc", "cs", "tk2"), 0);
    let get = call(&s, "GET", COMPONENT_TOKEN, "");
    assert_eq!(errcode(&get), 43002);
    assert_eq!(s.hits(COMPONENT_TOKEN), 11);
    assert_eq!(s.hits_for(COMPONENT_TOKEN, "wxc"), 9);
    assert_eq!(s.hits_for(COMPONENT_TOKEN, "wxother"), 1);
}

#[test]
fn a_replaced_component_token_lives_the_grace_period_then_gets_40001() {
    let (s, first) = component();
    s.add_authorizer("wxc", "wxa", "rt");
    let second = field(
        &post(
            &s,
            COMPONENT_TOKEN,
            &component_token_body("wxc", "cs", "tk"),
        ),
        "component_access_token",
    )
    .unwrap();
    assert_ne!(first, second);
    assert_eq!(
        s.live_component_tokens("wxc"),
        [first.clone(), second.clone()]
    );
    s.advance(Duration::from_secs(299));
    assert_eq!(errcode(&authorizer_token(&s, &first, "wxa", "rt")), 0);
    s.advance(Duration::from_secs(1));
    assert_eq!(errcode(&authorizer_token(&s, &first, "wxa", "rt")), 40001);
    assert_eq!(s.live_component_tokens("wxc"), [second.as_str()]);
    // One that simply runs out is 42001.
    s.advance(Duration::from_secs(7200));
    assert_eq!(errcode(&authorizer_token(&s, &second, "wxa", "rt")), 42001);

    // With no grace, the old one dies at once.
    s.set_replaced_token_grace(Duration::ZERO);
    let body = component_token_body("wxc", "cs", "tk");
    s.push_component_ticket("wxc", "tk");
    let third = field(&post(&s, COMPONENT_TOKEN, &body), "component_access_token").unwrap();
    let fourth = field(&post(&s, COMPONENT_TOKEN, &body), "component_access_token").unwrap();
    assert_eq!(errcode(&authorizer_token(&s, &third, "wxa", "rt")), 40001);
    assert_eq!(errcode(&authorizer_token(&s, &fourth, "wxa", "rt")), 0);
}

#[test]
fn authorizer_tokens_work_for_business_calls_and_component_tokens_do_not() {
    let (s, ct) = component();
    s.add_authorizer("wxc", "wxa", "rt");
    let reply = authorizer_token(&s, &ct, "wxa", "rt");
    let at = field(&reply, "authorizer_access_token").expect(&reply);
    assert_eq!(
        field(&reply, "authorizer_refresh_token").as_deref(),
        Some("rt")
    );
    assert_eq!(field(&reply, "expires_in").as_deref(), Some("7200"));
    assert_eq!(menu_get(&s, &at), 0);
    let ticket = call(
        &s,
        "GET",
        &format!("{TICKET}?access_token={at}&type=jsapi"),
        "",
    );
    assert_eq!(errcode(&ticket), 0);
    assert_eq!(menu_get(&s, &ct), 40001);
    let ticket = call(
        &s,
        "GET",
        &format!("{TICKET}?access_token={ct}&type=jsapi"),
        "",
    );
    assert_eq!(errcode(&ticket), 40001);
    assert!(s.is_valid(&ct), "still a valid component token");
    assert_eq!(s.hits_for(AUTHORIZER_TOKEN, "wxa"), 1);
    assert_eq!(s.hits_for(MENU_GET, "wxa"), 1);

    assert_eq!(errcode(&authorizer_token(&s, &ct, "wxa", "wrong")), 61023);
    assert_eq!(errcode(&authorizer_token(&s, &ct, "wxa", "")), 61023);
    assert_eq!(
        errcode(&authorizer_token(&s, &ct, "wxunknown", "rt")),
        61003
    );
    assert_eq!(
        errcode(&authorizer_token(&s, "nonsense", "wxa", "rt")),
        40001
    );
    assert_eq!(errcode(&authorizer_token(&s, &at, "wxa", "rt")), 40001);
    let no_token = post(&s, AUTHORIZER_TOKEN, "{}");
    assert_eq!(errcode(&no_token), 41001);
    // The token of another component does not serve this one.
    s.add_component("wxc2", "cs2");
    s.push_component_ticket("wxc2", "tk2");
    let other = post(
        &s,
        COMPONENT_TOKEN,
        &component_token_body("wxc2", "cs2", "tk2"),
    );
    let other = field(&other, "component_access_token").unwrap();
    assert_eq!(errcode(&authorizer_token(&s, &other, "wxa", "rt")), 40001);
    // The newer doc's `access_token` query name works too.
    let body =
        r#"{"component_appid":"wxc","authorizer_appid":"wxa","authorizer_refresh_token":"rt"}"#;
    let reply = post(&s, &format!("{AUTHORIZER_TOKEN}?access_token={ct}"), body);
    assert_eq!(errcode(&reply), 0, "{reply}");

    s.revoke_authorizer("wxc", "wxa");
    assert_eq!(menu_get(&s, &at), 40001);
    assert!(s.live_authorizer_tokens("wxc", "wxa").is_empty());
    assert_eq!(errcode(&authorizer_token(&s, &ct, "wxa", "rt")), 61003);
}

#[test]
fn a_new_authorizer_token_leaves_the_old_one_the_grace_period() {
    let (s, ct) = component();
    s.add_authorizer("wxc", "wxa", "rt");
    let first = field(
        &authorizer_token(&s, &ct, "wxa", "rt"),
        "authorizer_access_token",
    )
    .unwrap();
    let second = field(
        &authorizer_token(&s, &ct, "wxa", "rt"),
        "authorizer_access_token",
    )
    .unwrap();
    assert_eq!(
        s.live_authorizer_tokens("wxc", "wxa"),
        [first.clone(), second.clone()]
    );
    s.advance(Duration::from_secs(300));
    assert_eq!(menu_get(&s, &first), 40001);
    assert_eq!(menu_get(&s, &second), 0);
}

#[test]
fn a_rotated_refresh_token_retires_the_old_one_once_the_new_one_is_used() {
    let (s, ct) = component();
    s.add_authorizer("wxc", "wxa", "rt1");
    s.rotate_refresh_token_on_next("wxc", "wxa");
    let reply = authorizer_token(&s, &ct, "wxa", "rt1");
    let rt2 = field(&reply, "authorizer_refresh_token").unwrap();
    assert_ne!(rt2, "rt1");
    assert_eq!(s.refresh_token_of("wxc", "wxa"), Some(rt2.clone()));
    // The old one still works (and the reply names the new one) until the new one is used.
    let reply = authorizer_token(&s, &ct, "wxa", "rt1");
    assert_eq!(errcode(&reply), 0);
    assert_eq!(field(&reply, "authorizer_refresh_token"), Some(rt2.clone()));
    assert_eq!(errcode(&authorizer_token(&s, &ct, "wxa", &rt2)), 0);
    assert_eq!(errcode(&authorizer_token(&s, &ct, "wxa", "rt1")), 61023);
    // No rotation without asking.
    let reply = authorizer_token(&s, &ct, "wxa", &rt2);
    assert_eq!(field(&reply, "authorizer_refresh_token"), Some(rt2));
}

fn query_auth(s: &StandIn, ct: &str, code: &str) -> String {
    let body = format!(r#"{{"component_appid":"wxc","authorization_code":"{code}"}}"#);
    post(
        s,
        &format!("{QUERY_AUTH}?component_access_token={ct}"),
        &body,
    )
}

#[test]
fn query_auth_exchanges_a_code_once() {
    let (s, ct) = component();
    s.add_auth_code("wxc", "code1", "wxa");
    let rt = s
        .refresh_token_of("wxc", "wxa")
        .expect("created with the code");
    let reply = query_auth(&s, &ct, "code1");
    assert!(reply.starts_with(r#"{"authorization_info":{"#), "{reply}");
    assert_eq!(field(&reply, "authorizer_appid").as_deref(), Some("wxa"));
    assert_eq!(field(&reply, "authorizer_refresh_token"), Some(rt.clone()));
    assert_eq!(field(&reply, "expires_in").as_deref(), Some("7200"));
    assert!(reply.contains(r#""func_info":[]"#));
    let at = field(&reply, "authorizer_access_token").unwrap();
    assert_eq!(menu_get(&s, &at), 0);
    assert_eq!(errcode(&query_auth(&s, &ct, "code1")), 61010);
    assert_eq!(errcode(&query_auth(&s, &ct, "nope")), 61009);
    assert_eq!(errcode(&query_auth(&s, "bad", "code1")), 40001);
    s.add_auth_code("wxc", "late", "wxb");
    s.advance(HOUR);
    let ct = field(
        &post(
            &s,
            COMPONENT_TOKEN,
            &component_token_body("wxc", "cs", "tk"),
        ),
        "component_access_token",
    )
    .unwrap();
    assert_eq!(errcode(&query_auth(&s, &ct, "late")), 61010);
    assert_eq!(s.hits_for(QUERY_AUTH, "wxc"), 5);

    // Re-authorizing: a new refresh token, the old one and the live token dead at once.
    s.add_auth_code("wxc", "again", "wxa");
    assert_eq!(s.refresh_token_of("wxc", "wxa"), Some(rt.clone()));
    let reply = query_auth(&s, &ct, "again");
    let rt2 = field(&reply, "authorizer_refresh_token").unwrap();
    assert_ne!(rt2, rt);
    assert_eq!(menu_get(&s, &at), 40001);
    assert_eq!(errcode(&authorizer_token(&s, &ct, "wxa", &rt)), 61023);
    assert_eq!(errcode(&authorizer_token(&s, &ct, "wxa", &rt2)), 0);
}

#[test]
fn the_authorizer_list_pages_in_a_stable_order() {
    let (s, ct) = component();
    for i in 0..5 {
        s.add_authorizer("wxc", &format!("wxa{i}"), &format!("rt{i}"));
    }
    s.revoke_authorizer("wxc", "wxa2");
    let page = |offset: u64, count: u64| {
        let body = format!(r#"{{"component_appid":"wxc","offset":{offset},"count":{count}}}"#);
        post(&s, &format!("{AUTHORIZER_LIST}?access_token={ct}"), &body)
    };
    let first = page(0, 2);
    assert_eq!(field(&first, "total_count").as_deref(), Some("4"));
    assert!(
        first.contains(r#""authorizer_appid":"wxa0","refresh_token":"rt0""#),
        "{first}"
    );
    assert!(
        first.contains(r#""authorizer_appid":"wxa1","refresh_token":"rt1""#),
        "{first}"
    );
    assert!(first.contains(r#""auth_time":"#));
    let second = page(2, 2);
    assert!(second.contains("wxa3") && second.contains("wxa4") && !second.contains("wxa2"));
    assert!(page(4, 500).ends_with(r#""list":[]}"#));
    assert_eq!(errcode(&page(0, 501)), 40097);
    assert_eq!(errcode(&page(0, 0)), 40097);
    assert_eq!(s.hits_for(AUTHORIZER_LIST, "wxc"), 5);
}

#[test]
fn start_push_ticket_is_counted() {
    let (s, _) = component();
    let body =
        |secret: &str| format!(r#"{{"component_appid":"wxc","component_secret":"{secret}"}}"#);
    let reply = post(&s, START_PUSH_TICKET, &body("cs"));
    assert_eq!(reply, r#"{"errcode":0,"errmsg":"ok"}"#);
    assert_eq!(errcode(&post(&s, START_PUSH_TICKET, &body("bad"))), 40125);
    assert_eq!(s.push_ticket_starts("wxc"), 1);
    assert_eq!(s.hits(START_PUSH_TICKET), 2);
}

#[test]
fn scripted_replies_come_first_then_the_default() {
    let (s, ct) = component();
    s.add_authorizer("wxc", "wxa", "rt");
    s.push_for(COMPONENT_TOKEN, "wxc", Reply::errcode(-1, "system error"));
    let body = component_token_body("wxc", "cs", "tk");
    assert_eq!(errcode(&post(&s, COMPONENT_TOKEN, &body)), -1);
    assert_eq!(errcode(&post(&s, COMPONENT_TOKEN, &body)), 0);

    s.push_for(AUTHORIZER_TOKEN, "wxother", Reply::errcode(45009, "quota"));
    s.push(AUTHORIZER_TOKEN, Reply::token("scripted-authorizer", 60));
    let reply = authorizer_token(&s, &ct, "wxa", "rt");
    assert_eq!(
        reply,
        r#"{"authorizer_access_token":"scripted-authorizer","expires_in":60,"authorizer_refresh_token":"rt"}"#
    );
    assert_eq!(menu_get(&s, "scripted-authorizer"), 0);
    assert_eq!(
        s.live_authorizer_tokens("wxc", "wxa"),
        ["scripted-authorizer"]
    );
    s.discard_scripts();

    s.push(COMPONENT_TOKEN, Reply::token("scripted-component", 100));
    let reply = post(&s, COMPONENT_TOKEN, &body);
    assert_eq!(
        reply,
        r#"{"component_access_token":"scripted-component","expires_in":100}"#
    );
    assert_eq!(
        errcode(&authorizer_token(&s, "scripted-component", "wxa", "rt")),
        0
    );
    assert_eq!(menu_get(&s, "scripted-component"), 40001);
}

fn suite_body(sid: &str, secret: &str, ticket: &str) -> String {
    format!(r#"{{"suite_id":"{sid}","suite_secret":"{secret}","suite_ticket":"{ticket}"}}"#)
}

/// A stand-in with suite `sid` (secret `ss`, ticket `st`) and its token.
fn suite(sid: &str) -> (StandIn, String) {
    let s = StandIn::start();
    s.add_suite(sid, "ss");
    s.push_suite_ticket(sid, "st");
    let reply = post(&s, SUITE_TOKEN, &suite_body(sid, "ss", "st"));
    let token = field(&reply, "suite_access_token").expect(&reply);
    (s, token)
}

#[test]
fn suite_token_checks_id_secret_and_ticket_and_repeats_itself() {
    let (s, token) = suite("ww1");
    let reply = post(&s, SUITE_TOKEN, &suite_body("ww1", "ss", "st"));
    assert!(!reply.contains("errcode"), "no errcode on success: {reply}");
    assert_eq!(field(&reply, "suite_access_token"), Some(token.clone()));
    assert_eq!(field(&reply, "expires_in").as_deref(), Some("7200"));
    let code = |sid: &str, secret: &str, ticket: &str| {
        errcode(&post(&s, SUITE_TOKEN, &suite_body(sid, secret, ticket)))
    };
    assert_eq!(code("wwx", "ss", "st"), 40083);
    assert_eq!(code("ww1", "bad", "st"), 40080);
    assert_eq!(code("ww1", "ss", "foreign"), 40085);
    s.advance(Duration::from_secs(60));
    let reply = post(&s, SUITE_TOKEN, &suite_body("ww1", "ss", "st"));
    assert_eq!(field(&reply, "expires_in").as_deref(), Some("7140"));
    s.advance(Duration::from_secs(30 * 60 - 60));
    assert_eq!(code("ww1", "ss", "st"), 40085);
    assert_eq!(s.hits_for(SUITE_TOKEN, "ww1"), 6);
    assert_eq!(s.live_suite_tokens("ww1"), [token.as_str()]);
    assert_eq!(
        user_get(&s, &token),
        40001,
        "a suite token is no corp token"
    );
}

#[test]
fn provider_token_repeats_itself_and_is_no_business_token() {
    let s = StandIn::start();
    s.add_provider("wwp", "ps");
    let body = |secret: &str| format!(r#"{{"corpid":"wwp","provider_secret":"{secret}"}}"#);
    let reply = post(&s, PROVIDER_TOKEN, &body("ps"));
    let token = field(&reply, "provider_access_token").expect(&reply);
    s.advance(Duration::from_secs(100));
    let again = post(&s, PROVIDER_TOKEN, &body("ps"));
    assert_eq!(field(&again, "provider_access_token"), Some(token.clone()));
    assert_eq!(field(&again, "expires_in").as_deref(), Some("7100"));
    assert_eq!(errcode(&post(&s, PROVIDER_TOKEN, &body("bad"))), 40091);
    let unknown = r#"{"corpid":"wwq","provider_secret":"ps"}"#;
    assert_eq!(errcode(&post(&s, PROVIDER_TOKEN, unknown)), 40013);
    assert_eq!(s.hits_for(PROVIDER_TOKEN, "wwp"), 3);
    assert_eq!(user_get(&s, &token), 40001);
}

fn permanent(s: &StandIn, path: &str, st: &str, code: &str) -> String {
    let body = format!(r#"{{"auth_code":"{code}"}}"#);
    post(s, &format!("{path}?suite_access_token={st}"), &body)
}

fn corp_call(s: &StandIn, path: &str, st: &str, corpid: &str, code: &str) -> String {
    let body = format!(r#"{{"auth_corpid":"{corpid}","permanent_code":"{code}"}}"#);
    post(s, &format!("{path}?suite_access_token={st}"), &body)
}

#[test]
fn permanent_code_v2_exchanges_an_auth_code_once() {
    let (s, st) = suite("ww1");
    s.add_suite_auth_code("ww1", "ac1", "wwcorp", "pc1");
    let reply = permanent(&s, PERMANENT_CODE, &st, "ac1");
    assert_eq!(
        field(&reply, "permanent_code").as_deref(),
        Some("pc1"),
        "{reply}"
    );
    assert!(reply.contains(r#""auth_corp_info":{"corpid":"wwcorp","corp_name":"#));
    assert!(reply.contains(r#""auth_user_info":{"#) && reply.contains(r#""state":"""#));
    assert!(
        !reply.contains("access_token") && !reply.contains("agent"),
        "{reply}"
    );
    assert_eq!(s.permanent_code_of("ww1", "wwcorp").as_deref(), Some("pc1"));
    assert_eq!(errcode(&permanent(&s, PERMANENT_CODE, &st, "ac1")), 40078);
    assert_eq!(errcode(&permanent(&s, PERMANENT_CODE, &st, "nope")), 40078);
    assert_eq!(errcode(&permanent(&s, PERMANENT_CODE, "bad", "ac1")), 40082);
    s.add_suite_auth_code("ww1", "ac2", "wwcorp2", "pc2");
    s.advance(Duration::from_secs(600));
    let st2 = field(
        &post(&s, SUITE_TOKEN, &suite_body("ww1", "ss", "st")),
        "suite_access_token",
    )
    .unwrap();
    assert_eq!(st, st2, "the same token within its life");
    assert_eq!(errcode(&permanent(&s, PERMANENT_CODE, &st, "ac2")), 40078);
    s.advance(Duration::from_secs(7200));
    assert_eq!(errcode(&permanent(&s, PERMANENT_CODE, &st, "ac2")), 42009);
    assert_eq!(s.hits(PERMANENT_CODE), 6);
    assert_eq!(
        s.hits_for(PERMANENT_CODE, "ww1"),
        5,
        "an unknown token names no suite"
    );
}

#[test]
fn permanent_code_v1_adds_the_agents_and_the_first_corp_token() {
    let (s, st) = suite("ww1");
    s.add_suite_auth_code("ww1", "ac1", "wwcorp", "pc1");
    let reply = permanent(&s, PERMANENT_CODE_V1, &st, "ac1");
    let token = field(&reply, "access_token").expect(&reply);
    assert_eq!(field(&reply, "agentid").as_deref(), Some("1000002"));
    assert_eq!(field(&reply, "is_customized_app").as_deref(), Some("false"));
    assert_eq!(field(&reply, "permanent_code").as_deref(), Some("pc1"));
    assert_eq!(user_get(&s, &token), 0);
    assert_eq!(s.agentid_of("ww1", "wwcorp"), Some(1_000_002));
}

#[test]
fn corp_token_needs_the_right_code_and_a_live_install() {
    let (s, st) = suite("ww1");
    s.add_corp("ww1", "wwcorp", "pc1");
    let reply = corp_call(&s, CORP_TOKEN, &st, "wwcorp", "pc1");
    assert!(!reply.contains("errcode"), "{reply}");
    let token = field(&reply, "access_token").expect(&reply);
    assert_eq!(field(&reply, "expires_in").as_deref(), Some("7200"));
    assert_eq!(user_get(&s, &token), 0);
    assert_eq!(s.hits_for(WORK_USER_GET, "wwcorp"), 1);
    let again = corp_call(&s, CORP_TOKEN, &st, "wwcorp", "pc1");
    assert_eq!(field(&again, "access_token"), Some(token.clone()));
    assert_eq!(s.live_corp_tokens("ww1", "wwcorp"), [token.as_str()]);
    assert_eq!(s.hits_for(CORP_TOKEN, "wwcorp"), 2);

    let code =
        |st: &str, corpid: &str, pc: &str| errcode(&corp_call(&s, CORP_TOKEN, st, corpid, pc));
    assert_eq!(code(&st, "wwcorp", "wrong"), 40084);
    assert_eq!(code(&st, "wwcorp", ""), 41025);
    assert_eq!(code(&st, "wwother", "pc1"), 40082);
    assert_eq!(code("bad", "wwcorp", "pc1"), 40082);
    assert_eq!(
        code(&token, "wwcorp", "pc1"),
        40082,
        "a corp token is no suite token"
    );

    // A reinstall with a new code retires the old one.
    s.add_corp("ww1", "wwcorp", "pc2");
    assert_eq!(code(&st, "wwcorp", "pc1"), 40084);
    assert_eq!(code(&st, "wwcorp", "pc2"), 0);

    s.cancel_corp("ww1", "wwcorp");
    assert_eq!(code(&st, "wwcorp", "pc2"), 48004);
    assert_eq!(user_get(&s, &token), 40001);
    let info = corp_call(&s, AUTH_INFO, &st, "wwcorp", "pc2");
    assert_eq!(errcode(&info), 48004);
    s.advance(Duration::from_secs(7200));
    assert_eq!(code(&st, "wwcorp", "pc2"), 42009);
}

#[test]
fn auth_info_lists_the_agent() {
    let (s, st) = suite("ww1");
    s.add_corp("ww1", "wwa", "pca");
    s.add_corp("ww1", "wwb", "pcb");
    let reply = corp_call(&s, AUTH_INFO, &st, "wwb", "pcb");
    assert_eq!(errcode(&reply), 0);
    assert!(
        reply.contains(r#""auth_corp_info":{"corpid":"wwb""#),
        "{reply}"
    );
    assert_eq!(field(&reply, "agentid").as_deref(), Some("1000003"));
    assert_eq!(errcode(&corp_call(&s, AUTH_INFO, &st, "wwb", "pca")), 40084);
    assert_eq!(errcode(&corp_call(&s, AUTH_INFO_V1, &st, "wwa", "pca")), 0);
    assert_eq!(s.hits_for(AUTH_INFO, "wwb"), 2);
}

fn gettoken(s: &StandIn, corpid: &str, secret: &str) -> String {
    let target = format!("{WORK_TOKEN}?corpid={corpid}&corpsecret={secret}");
    call(s, "GET", &target, "")
}

#[test]
fn a_customized_app_code_is_its_secret_on_gettoken() {
    let (s, st) = suite("dk1");
    s.register("wwdirect", "direct-secret");
    s.add_suite_auth_code("dk1", "ac1", "wwcorp", "secret1");
    let reply = permanent(&s, PERMANENT_CODE_V1, &st, "ac1");
    assert_eq!(field(&reply, "permanent_code").as_deref(), Some("secret1"));
    assert_eq!(field(&reply, "is_customized_app").as_deref(), Some("true"));
    assert!(
        !reply.contains("access_token"),
        "no corp token for 代开发: {reply}"
    );
    // gettoken accepts it though other accounts are registered, and repeats itself.
    let first = gettoken(&s, "wwcorp", "secret1");
    let token = field(&first, "access_token").expect(&first);
    assert_eq!(
        field(&gettoken(&s, "wwcorp", "secret1"), "access_token"),
        Some(token.clone())
    );
    assert_eq!(user_get(&s, &token), 0);
    assert_eq!(errcode(&gettoken(&s, "wwcorp", "other")), 40013);
    // get_corp_token refuses a 代开发 code.
    assert_eq!(
        errcode(&corp_call(&s, CORP_TOKEN, &st, "wwcorp", "secret1")),
        40084
    );
    let info = corp_call(&s, AUTH_INFO, &st, "wwcorp", "secret1");
    assert_eq!(field(&info, "is_customized_app").as_deref(), Some("true"));

    // A secret reset: the new code works, the old one gets 40091.
    s.add_suite_auth_code("dk1", "reset", "wwcorp", "secret2");
    let reply = permanent(&s, PERMANENT_CODE, &st, "reset");
    assert_eq!(field(&reply, "permanent_code").as_deref(), Some("secret2"));
    assert_eq!(errcode(&gettoken(&s, "wwcorp", "secret1")), 40091);
    let fresh = gettoken(&s, "wwcorp", "secret2");
    let fresh = field(&fresh, "access_token").expect(&fresh);
    assert_ne!(fresh, token);

    s.cancel_corp("dk1", "wwcorp");
    assert_eq!(errcode(&gettoken(&s, "wwcorp", "secret2")), 48004);
    assert_eq!(user_get(&s, &fresh), 40001);
}

#[test]
fn the_permissive_gettoken_stays_permissive() {
    // With nothing registered, gettoken takes any pair, a 代开发 template or not.
    let (s, _) = suite("dk1");
    s.add_corp("dk1", "wwcorp", "secret1");
    assert_eq!(errcode(&gettoken(&s, "wwanything", "whatever")), 0);
    assert_eq!(errcode(&gettoken(&s, "wwcorp", "secret1")), 0);
    s.add_corp("dk1", "wwcorp", "secret2");
    assert_eq!(errcode(&gettoken(&s, "wwcorp", "secret1")), 40091);
}
