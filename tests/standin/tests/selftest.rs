//! The stand-in's own tests: raw HTTP over TcpStream, no wxtoken binary involved.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wxtoken_standin::{self as standin, Reply, StandIn};

/// One parsed HTTP response.
struct Resp {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

fn connect(s: &StandIn) -> TcpStream {
    let c = TcpStream::connect(s.addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c
}

fn send(c: &mut TcpStream, method: &str, target: &str, body: &str) {
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    c.write_all(req.as_bytes()).unwrap();
}

/// Reads the status line and headers; `None` if the server closed without answering.
fn read_head(r: &mut impl BufRead) -> Option<(u16, HashMap<String, String>)> {
    let mut line = String::new();
    if r.read_line(&mut line).unwrap_or(0) == 0 {
        return None;
    }
    let status = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut headers = HashMap::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let Some((k, v)) = line.trim_end().split_once(':') else {
            break;
        };
        headers.insert(k.to_ascii_lowercase(), v.trim().to_string());
    }
    Some((status, headers))
}

fn read_resp(r: &mut impl BufRead) -> Option<Resp> {
    let (status, headers) = read_head(r)?;
    let len: usize = headers["content-length"].parse().unwrap();
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    Some(Resp {
        status,
        headers,
        body: String::from_utf8(body).unwrap(),
    })
}

fn call(s: &StandIn, method: &str, target: &str, body: &str) -> Resp {
    let mut c = connect(s);
    send(&mut c, method, target, body);
    read_resp(&mut BufReader::new(c)).expect("an answer")
}

fn get(s: &StandIn, target: &str) -> Resp {
    call(s, "GET", target, "")
}

/// The string value of `"key":"..."` in a flat JSON reply.
fn field(body: &str, key: &str) -> String {
    standin::parse_flat_json(body)
        .unwrap_or_default()
        .remove(key)
        .unwrap_or_default()
}

const TOKEN_URL: &str = "/cgi-bin/token?grant_type=client_credential&appid=wx1&secret=s1";

fn stable_body(appid: &str, force: bool) -> String {
    format!(
        r#"{{"grant_type":"client_credential","appid":"{appid}","secret":"s","force_refresh":{force}}}"#
    )
}

#[test]
fn classic_token_is_new_long_and_plain_every_time() {
    let s = StandIn::start();
    let a = get(&s, TOKEN_URL);
    assert_eq!(a.status, 200);
    assert_eq!(field(&a.body, "expires_in"), "7200");
    let b = field(&get(&s, TOKEN_URL).body, "access_token");
    let a = field(&a.body, "access_token");
    assert_ne!(a, b);
    for t in [&a, &b] {
        assert!(t.len() >= 100, "{t}");
        assert!(
            t.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-'),
            "{t}"
        );
    }
    assert_eq!(s.hits(standin::TOKEN), 2);
    assert_eq!(s.hits_for(standin::TOKEN, "wx1"), 2);
    let log = s.requests();
    assert_eq!(log[0].method, "GET");
    assert_eq!(log[0].query["appid"], "wx1");
}

#[test]
fn classic_token_argument_errors() {
    let s = StandIn::start();
    let code = |t: &str| field(&get(&s, t).body, "errcode");
    assert_eq!(
        code("/cgi-bin/token?grant_type=client_credential&secret=x"),
        "41002"
    );
    assert_eq!(
        code("/cgi-bin/token?grant_type=client_credential&appid=wx1"),
        "41004"
    );
    assert_eq!(
        code("/cgi-bin/token?grant_type=password&appid=wx1&secret=x"),
        "40002"
    );
    s.register("wx1", "s1");
    assert_eq!(
        code("/cgi-bin/token?grant_type=client_credential&appid=wx1&secret=no"),
        "40125"
    );
    assert_eq!(
        code("/cgi-bin/token?grant_type=client_credential&appid=wx9&secret=s1"),
        "40013"
    );
    assert!(field(&get(&s, TOKEN_URL).body, "access_token").len() >= 100);
    let msg = field(
        &get(
            &s,
            "/cgi-bin/token?grant_type=client_credential&appid=wx2&secret=s1",
        )
        .body,
        "errmsg",
    );
    assert!(msg.starts_with("invalid appid rid: "), "{msg}");
}

#[test]
fn scripted_replies_come_first_then_defaults() {
    let s = StandIn::start();
    s.push(standin::TOKEN, Reply::errcode(-1, "system error"));
    s.push(
        standin::TOKEN,
        Reply::Status(502, "<html>bad gateway</html>".into()),
    );
    s.push(standin::TOKEN, Reply::token("scripted", 60));
    let r = get(&s, TOKEN_URL);
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, r#"{"errcode":-1,"errmsg":"system error"}"#)
    );
    assert_eq!(
        s.hits(standin::TOKEN),
        1,
        "counted before the reply was written"
    );
    let r = get(&s, TOKEN_URL);
    assert_eq!(
        (r.status, r.body.as_str()),
        (502, "<html>bad gateway</html>")
    );
    assert_eq!(r.headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(
        get(&s, TOKEN_URL).body,
        r#"{"access_token":"scripted","expires_in":60}"#
    );
    assert!(s.is_valid("scripted"));
    assert!(field(&get(&s, TOKEN_URL).body, "access_token").len() >= 100);
    assert_eq!(s.hits(standin::TOKEN), 4);
}

#[test]
fn keyed_script_fails_one_account_only() {
    let s = StandIn::start();
    s.push_for(
        standin::TOKEN,
        "wx2",
        Reply::errcode(40164, "invalid ip 203.0.113.7"),
    );
    let ok = get(&s, TOKEN_URL);
    let bad = get(
        &s,
        "/cgi-bin/token?grant_type=client_credential&appid=wx2&secret=s",
    );
    assert!(ok.body.contains("access_token"));
    assert_eq!(field(&bad.body, "errcode"), "40164");
    assert_eq!(s.hits_for(standin::TOKEN, "wx2"), 1);
}

#[test]
fn drop_closes_without_an_answer() {
    let s = StandIn::start();
    s.push(standin::TOKEN, Reply::Drop);
    let mut c = connect(&s);
    send(&mut c, "GET", TOKEN_URL, "");
    assert!(read_resp(&mut BufReader::new(c)).is_none());
    assert_eq!(s.hits(standin::TOKEN), 1);
    assert_eq!(get(&s, TOKEN_URL).status, 200);
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let s = StandIn::start();
    let mut c = connect(&s);
    let mut r = BufReader::new(c.try_clone().unwrap());
    send(&mut c, "GET", TOKEN_URL, "");
    let first = read_resp(&mut r).unwrap();
    assert_eq!(first.headers["connection"], "keep-alive");
    send(
        &mut c,
        "POST",
        "/cgi-bin/stable_token",
        &stable_body("wx1", false),
    );
    let second = read_resp(&mut r).unwrap();
    assert!(second.body.contains("access_token"), "{}", second.body);
    // `Connection: close` is honoured.
    c.write_all(b"GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let third = read_resp(&mut r).unwrap();
    assert_eq!(third.status, 404);
    assert_eq!(
        r.read(&mut [0; 1]).unwrap(),
        0,
        "closed after Connection: close"
    );
    assert_eq!(s.requests().len(), 3);
}

#[test]
fn oversized_body_streams_and_survives_a_hang_up() {
    let s = StandIn::start();
    s.push(standin::TOKEN, Reply::Oversized(64 << 20));
    let mut c = connect(&s);
    send(&mut c, "GET", TOKEN_URL, "");
    let mut r = BufReader::new(c);
    let (status, headers) = read_head(&mut r).unwrap();
    assert_eq!(
        (status, headers["content-length"].as_str()),
        (200, "67108864")
    );
    let mut part = vec![0; 1 << 20];
    r.read_exact(&mut part).unwrap();
    assert!(part.starts_with(br#"{"access_token":"AAAA"#));
    drop(r);
    assert_eq!(get(&s, TOKEN_URL).status, 200);
}

#[test]
fn stable_token_follows_the_virtual_clock() {
    let s = StandIn::start();
    let post = |force| {
        call(
            &s,
            "POST",
            "/cgi-bin/stable_token",
            &stable_body("wx1", force),
        )
        .body
    };
    let first = post(false);
    let t1 = field(&first, "access_token");
    assert_eq!(field(&first, "expires_in"), "7200");
    s.advance(Duration::from_secs(1000));
    let again = post(false);
    assert_eq!(field(&again, "access_token"), t1);
    assert_eq!(field(&again, "expires_in"), "6200");
    s.advance(Duration::from_secs(6000));
    let renewed = post(false);
    let t2 = field(&renewed, "access_token");
    assert_ne!(t2, t1, "new token in the last 300 s");
    assert!(s.is_valid(&t1), "old and new overlap");
    let forced = field(&post(true), "access_token");
    assert_ne!(forced, t2);
    assert!(
        !s.is_valid(&t2) && !s.is_valid(&t1),
        "force_refresh invalidates at once"
    );
    assert_eq!(
        field(&get(&s, "/cgi-bin/stable_token").body, "errcode"),
        "43002"
    );
    let garbage = call(&s, "POST", "/cgi-bin/stable_token", "appid=wx1").body;
    assert_eq!(field(&garbage, "errcode"), "47001");
    assert_eq!(s.hits_for(standin::STABLE_TOKEN, "wx1"), 4);
}

#[test]
fn work_token_is_per_secret_and_stable_while_valid() {
    let s = StandIn::start();
    let tok = |secret: &str| {
        let r = get(
            &s,
            &format!("/cgi-bin/gettoken?corpid=ww1&corpsecret={secret}"),
        )
        .body;
        assert_eq!(field(&r, "errcode"), "0", "{r}");
        field(&r, "access_token")
    };
    let a = tok("app-a");
    assert_eq!(tok("app-a"), a);
    assert_ne!(tok("app-b"), a);
    s.advance(Duration::from_secs(7200));
    assert_ne!(tok("app-a"), a);
    let code = |t: &str| field(&get(&s, t).body, "errcode");
    assert_eq!(code("/cgi-bin/gettoken?corpsecret=x"), "41002");
    assert_eq!(code("/cgi-bin/gettoken?corpid=ww1"), "41004");
}

#[test]
fn tickets_need_a_token_that_is_still_valid() {
    let s = StandIn::start();
    let token = || field(&get(&s, TOKEN_URL).body, "access_token");
    let (t1, t2) = (token(), token());
    let ticket = get(
        &s,
        &format!("/cgi-bin/ticket/getticket?access_token={t1}&type=jsapi"),
    )
    .body;
    assert_eq!(field(&ticket, "errcode"), "0");
    assert!(field(&ticket, "ticket").len() >= 100);
    assert_eq!(s.hits_for(standin::TICKET, "wx1"), 1);
    let _t3 = token();
    let stale = get(
        &s,
        &format!("/cgi-bin/ticket/getticket?access_token={t1}&type=jsapi"),
    )
    .body;
    assert_eq!(
        field(&stale, "errcode"),
        "40001",
        "the third fetch retired the first token"
    );
    assert!(field(&stale, "errmsg").contains("not latest"));
    let card = get(
        &s,
        &format!("/cgi-bin/ticket/getticket?access_token={t2}&type=wx_card"),
    )
    .body;
    assert_eq!(field(&card, "errcode"), "0");
    let w = field(
        &get(&s, "/cgi-bin/gettoken?corpid=ww1&corpsecret=x").body,
        "access_token",
    );
    let corp = get(&s, &format!("/cgi-bin/get_jsapi_ticket?access_token={w}")).body;
    assert_eq!(field(&corp, "errcode"), "0");
    let agent = get(
        &s,
        &format!("/cgi-bin/ticket/get?access_token={w}&type=agent_config"),
    )
    .body;
    assert_eq!(field(&agent, "errcode"), "0");
    let bogus = get(&s, "/cgi-bin/get_jsapi_ticket?access_token=never-issued").body;
    assert_eq!(field(&bogus, "errcode"), "40001");
}

#[test]
fn unknown_path_is_404() {
    let s = StandIn::start();
    let r = get(&s, "/cgi-bin/nope?x=1");
    assert_eq!(r.status, 404);
    assert!(r.body.contains("/cgi-bin/nope"));
    assert_eq!(s.hits("/cgi-bin/nope"), 1);
}

#[test]
fn gate_holds_requests_until_opened() {
    let s = Arc::new(StandIn::start());
    s.gate(standin::TOKEN);
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || get(&s, TOKEN_URL).status)
        })
        .collect();
    assert!(s.wait_for_hits(standin::TOKEN, 3, Duration::from_secs(10)));
    assert!(!s.wait_for_hits(standin::TOKEN, 4, Duration::from_millis(50)));
    s.open_gate(standin::TOKEN);
    for c in clients {
        assert_eq!(c.join().unwrap(), 200);
    }
}

#[test]
fn serves_64_connections_at_once() {
    let s = Arc::new(StandIn::start());
    s.set_latency(Duration::from_millis(300));
    let started = Instant::now();
    let clients: Vec<_> = (0..64)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || get(&s, TOKEN_URL).status)
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), 200);
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(s.hits(standin::TOKEN), 64);
}

#[test]
fn delay_then_reply_and_shutdown_does_not_hang() {
    let s = StandIn::start();
    s.push(
        standin::TOKEN,
        Reply::delay(Duration::from_millis(200), Reply::Empty),
    );
    let started = Instant::now();
    let r = get(&s, TOKEN_URL);
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!((r.status, r.body.as_str()), (200, ""));

    s.push(standin::TOKEN, Reply::Hang);
    let mut c = connect(&s);
    send(&mut c, "GET", TOKEN_URL, "");
    assert!(s.wait_for_hits(standin::TOKEN, 2, Duration::from_secs(10)));
    let started = Instant::now();
    drop(s);
    assert!(read_resp(&mut BufReader::new(c)).is_none());
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn query_and_json_parsing() {
    let q = standin::parse_query("a=1+2&b=%E4%BD%A0%3D&c&a=again&bad=%zz%4");
    assert_eq!(q["a"], "1 2");
    assert_eq!(q["b"], "你=");
    assert_eq!(q["c"], "");
    assert_eq!(q["bad"], "%zz%4");
    let j = standin::parse_flat_json(r#" {"s":"a\"b\u00e9", "n": 7200, "f":false} "#).unwrap();
    assert_eq!(
        (j["s"].as_str(), j["n"].as_str(), j["f"].as_str()),
        ("a\"bé", "7200", "false")
    );
    assert!(standin::parse_flat_json(r#"{"a":{"b":1}}"#).is_none());
    assert!(standin::parse_flat_json(r#"{"a":1} x"#).is_none());
    assert!(standin::parse_flat_json("{}").unwrap().is_empty());
}

#[test]
fn registered_work_secret_and_revocation() {
    let s = StandIn::start();
    s.register("ww1", "app-a");
    let code = |t: &str| field(&get(&s, t).body, "errcode");
    assert_eq!(
        code("/cgi-bin/gettoken?corpid=ww1&corpsecret=wrong"),
        "40091"
    );
    assert_eq!(
        code("/cgi-bin/gettoken?corpid=ww2&corpsecret=app-a"),
        "40013"
    );
    let tok = || {
        field(
            &get(&s, "/cgi-bin/gettoken?corpid=ww1&corpsecret=app-a").body,
            "access_token",
        )
    };
    let t = tok();
    s.push_for(standin::WORK_CORP_TICKET, "ww1", Reply::errcode(-1, "busy"));
    let busy = get(&s, &format!("/cgi-bin/get_jsapi_ticket?access_token={t}")).body;
    assert_eq!(field(&busy, "errcode"), "-1", "keyed by the token's owner");
    s.revoke(&t);
    assert!(!s.is_valid(&t));
    let revoked = get(&s, &format!("/cgi-bin/get_jsapi_ticket?access_token={t}")).body;
    assert_eq!(field(&revoked, "errcode"), "40001");
    assert_ne!(tok(), t, "a revoked token is not handed out again");
}

#[test]
fn an_unused_scripted_reply_fails_the_test_on_drop() {
    let s = StandIn::start();
    s.push(standin::TOKEN, Reply::errcode(40013, "invalid appid"));
    assert_eq!(s.unused_scripts().len(), 1);
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(s)));
    let message = dropped.expect_err("drop must panic");
    let text = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(text.contains("never consumed"), "{text}");
    assert!(text.contains(standin::TOKEN), "{text}");

    // Consumed, or discarded on purpose: a quiet drop.
    let s = StandIn::start();
    s.push(standin::TOKEN, Reply::errcode(40013, "invalid appid"));
    s.discard_scripts();
    drop(s);
}
