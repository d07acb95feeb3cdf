//! WeCom apps addressed by (corpid, agentid), their errors, and JS-SDK tickets: the real
//! binary against a real SQLite file and the loopback stand-in.

mod support;

use serde_json::Value;
use support::standin::{self, Reply, Request};
use support::{Out, TestEnv, add, assert_has, json, now, run, unix_of};

const CORP: &str = "ww7a3c5e9b1d2f4a6c";
/// `--corpid CORP --agentid 1000002`: a self-built app.
const APP: &str = "--corpid ww7a3c5e9b1d2f4a6c --agentid 1000002";
const APP_KEY: &str = "ww7a3c5e9b1d2f4a6c/1000002";
/// `--corpid CORP --agentid contacts`: the contacts module, which has no agentid.
const CONTACTS: &str = "--corpid ww7a3c5e9b1d2f4a6c --agentid contacts";
const CONTACTS_KEY: &str = "ww7a3c5e9b1d2f4a6c/contacts";
const APP_SECRET: &str = "AppSecret1000002-q8Zr4LmW2xTn7VbKc9PdYs3Hf";
const CONTACTS_SECRET: &str = "ContactsSecret-u5Jk2NwQ8eRt1YbXm6GzLp4Va";

const APPID: &str = "wx1234567890abcdef";
/// `--appid APPID`: an Official Account.
const OA: &str = "--appid wx1234567890abcdef";
const OA_SECRET: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f9";

// ---- helpers ----

/// `status --json`, the entry of the account whose appid/corpid and agentid these are.
#[track_caller]
fn status_of(env: &TestEnv, appid: &str, agent: Option<&str>) -> Value {
    let doc = json(&run(env, "status --json", 0).stdout);
    let accounts = doc["accounts"].as_array().expect("accounts array").clone();
    accounts
        .into_iter()
        .find(|a| a["appid"] == appid && a["agentid"].as_str() == agent)
        .unwrap_or_else(|| panic!("{appid} {agent:?} not in status: {doc}"))
}

fn q<'r>(req: &'r Request, key: &str) -> &'r str {
    req.query.get(key).map_or("", String::as_str)
}

/// Asks the stand-in directly (not through wxtoken) and parses its JSON reply.
fn ask_standin(env: &TestEnv, path_and_query: &str) -> Value {
    let url = format!("{}{path_and_query}", env.url());
    let mut resp = ureq::get(&url).call().expect("stand-in answers");
    let body = resp.body_mut().read_to_string().expect("a body");
    serde_json::from_str(&body).expect("a JSON body")
}

/// The status line of one credential (`token`, `jsapi ticket`, ...) and its last-attempt line.
fn status_lines(block: &str, label: &str) -> (String, String) {
    let mut lines = block.lines();
    let head = lines
        .find(|l| l.trim_start().starts_with(&format!("{label} ")))
        .unwrap_or_else(|| panic!("no {label} line in:\n{block}"))
        .to_string();
    let attempt = lines.next().unwrap_or_default().to_string();
    (head, attempt)
}

// ---- WeCom apps: one token per app ----

#[test]
fn two_apps_of_one_corp_get_their_own_tokens() {
    let env = TestEnv::new();
    env.api.register(CORP, APP_SECRET);
    env.api.register(CORP, CONTACTS_SECRET);
    add(&env, APP, APP_SECRET);
    add(&env, CONTACTS, CONTACTS_SECRET);

    let out = env.run("refresh");
    out.assert_code(0);
    assert_has(&out.stderr, &["refreshed 2 of 2 accounts"]);

    let sent = env.requests_to(standin::WORK_TOKEN);
    assert_eq!(sent.len(), 2);
    let mut secrets: Vec<&str> = sent.iter().map(|r| q(r, "corpsecret")).collect();
    secrets.sort_unstable();
    let mut expected = vec![APP_SECRET, CONTACTS_SECRET];
    expected.sort_unstable();
    assert_eq!(
        secrets, expected,
        "one fetch per app, each with its own secret"
    );
    assert!(sent.iter().all(|r| q(r, "corpid") == CORP));

    let app = env.get(APP).value();
    let contacts = env.get(CONTACTS).value();
    assert_ne!(app, contacts, "two apps of one corp must not share a token");
    // WeCom hands back the current token of a secret while it is valid: ask it which one
    // belongs to which secret.
    for (secret, token) in [(APP_SECRET, &app), (CONTACTS_SECRET, &contacts)] {
        let reply = ask_standin(
            &env,
            &format!("{}?corpid={CORP}&corpsecret={secret}", standin::WORK_TOKEN),
        );
        assert_eq!(reply["access_token"].as_str(), Some(token.as_str()));
    }

    let doc = json(&run(&env, &format!("get {CONTACTS} --json"), 0).stdout);
    assert_eq!(doc["appid"], CORP);
    assert_eq!(doc["agentid"], "contacts");
    assert_eq!(doc["access_token"].as_str(), Some(contacts.as_str()));
}

#[test]
fn account_commands_address_a_wecom_app_by_corpid_and_agentid() {
    let env = TestEnv::new();
    let out = add(&env, APP, APP_SECRET);
    assert_has(&out.stderr, &[&format!("added {APP_KEY} (api work)")]);

    let dup = env.run_with_stdin(&format!("account add {APP}"), "another-secret\n");
    dup.assert_code(6);
    assert_has(&dup.stderr, &[APP_KEY, "already exists"]);
    // Same corp, another app: a separate account.
    add(&env, CONTACTS, CONTACTS_SECRET);

    let list = run(&env, "account list", 0).stdout.clone();
    let mask = format!("encrypted:{}", env.kid());
    let row =
        |key: &str, enabled: &str| format!("{key:<40} {:<7} {enabled:<8} {mask:<19} -\n", "work");
    let header =
        "ACCOUNT                                  API     ENABLED  SECRET              TICKETS\n";
    let both_enabled = format!(
        "{header}{}{}",
        row(APP_KEY, "yes"),
        row(CONTACTS_KEY, "yes")
    );
    assert_eq!(list, both_enabled);
    let listed = json(&run(&env, "account list --json", 0).stdout);
    let agents: Vec<(&str, &str, &str)> = listed["accounts"]
        .as_array()
        .expect("accounts")
        .iter()
        .map(|a| {
            let s = |k: &str| a[k].as_str().unwrap_or("?");
            (s("appid"), s("agentid"), s("api"))
        })
        .collect();
    assert_eq!(
        agents,
        [(CORP, "1000002", "work"), (CORP, "contacts", "work")]
    );

    // disable: refresh leaves the app alone, and list says so.
    let out = env.run(&format!("account disable {CONTACTS}"));
    out.assert_code(0);
    assert_has(&out.stderr, &[&format!("disabled {CONTACTS_KEY}")]);
    let list = run(&env, "account list", 0).stdout.clone();
    assert!(list.contains(&row(CONTACTS_KEY, "no")), "{list}");
    let out = env.run("refresh");
    out.assert_code(0);
    assert_has(&out.stderr, &["refreshed 1 of 1 accounts"]);
    let sent = env.requests_to(standin::WORK_TOKEN);
    assert_eq!(sent.len(), 1);
    assert_eq!(q(&sent[0], "corpsecret"), APP_SECRET);
    env.get(APP).value();
    env.get(CONTACTS).assert_no_value(&[]);

    // enable: refreshed again.
    let out = env.run(&format!("account enable {CONTACTS}"));
    out.assert_code(0);
    assert_has(&out.stderr, &[&format!("enabled {CONTACTS_KEY}")]);
    run(&env, &format!("refresh --appid {CONTACTS_KEY}"), 0);
    let sent = env.requests_to(standin::WORK_TOKEN);
    assert_eq!(sent.len(), 2);
    assert_eq!(q(&sent[1], "corpsecret"), CONTACTS_SECRET);
    let contacts = env.get(CONTACTS).value();

    // set-secret: the next fetch of that app uses the new secret; the other app keeps its own.
    let new_secret = "ContactsSecretRotated-7hG3kQ9zXw2Lm5Rt8Yp";
    let out = env.run_with_stdin(
        &format!("account set-secret {CONTACTS}"),
        &format!("{new_secret}\n"),
    );
    out.assert_code(0);
    assert_has(
        &out.stderr,
        &[&format!("updated the secret of {CONTACTS_KEY}")],
    );
    run(&env, &format!("refresh --force --appid {CONTACTS_KEY}"), 0);
    let sent = env.requests_to(standin::WORK_TOKEN);
    assert_eq!(sent.len(), 3);
    assert_eq!(q(&sent[2], "corpsecret"), new_secret);
    assert_ne!(env.get(CONTACTS).value(), contacts);

    // status shows each app under its own key.
    let status = run(&env, "status", 0).stdout.clone();
    assert_has(
        &status,
        &[
            &format!("{APP_KEY}  api=work enabled\n"),
            &format!("{CONTACTS_KEY}  api=work enabled\n"),
        ],
    );
    let entry = status_of(&env, CORP, Some("contacts"));
    assert_eq!(entry["api"], "work");
    assert_eq!(entry["last_attempt"]["outcome"], "ok");

    // remove: only that app goes, with its tokens.
    let out = env.run(&format!("account remove {CONTACTS}"));
    out.assert_code(0);
    assert_has(&out.stderr, &[&format!("removed {CONTACTS_KEY}")]);
    let list = run(&env, "account list", 0).stdout.clone();
    assert_eq!(list, format!("{header}{}", row(APP_KEY, "yes")));
    assert_has(
        &env.get(CONTACTS).assert_no_value(&[]).stderr.clone(),
        &["no such account"],
    );
    run(&env, &format!("account remove {CONTACTS}"), 6);
    run(&env, &format!("refresh --appid {CONTACTS_KEY}"), 6);
    env.get(APP).value();
}

#[test]
fn agentid_without_corpid_is_a_usage_error() {
    let env = TestEnv::new();
    add(&env, APP, APP_SECRET);
    for cmd in [
        "account add",
        "account remove",
        "account enable",
        "account disable",
        "account set-secret",
        "account set-tickets",
        "get",
    ] {
        let out = env.run_with_stdin(&format!("{cmd} --agentid 1000002"), "s\n");
        out.assert_code(2);
        assert_eq!(out.stdout, "", "{cmd}");
        // --appid names an Official Account; it cannot be combined with an agentid either.
        let out = env.run_with_stdin(&format!("{cmd} {OA} --agentid 1000002"), "s\n");
        out.assert_code(2);
        assert_has(&out.stderr, &["--appid", "--agentid"]);
    }
    // Nothing changed: the one app is still there, enabled, with its secret.
    let listed = json(&run(&env, "account list --json", 0).stdout);
    assert_eq!(listed["accounts"].as_array().map(Vec::len), Some(1));
    assert_eq!(listed["accounts"][0]["enabled"], true);
    let mask = format!("encrypted:{}", env.kid());
    assert_eq!(listed["accounts"][0]["secret"], mask.as_str());
}

#[test]
fn agentid_without_corpid_names_the_missing_corpid() {
    let env = TestEnv::new();
    let out = env.run("get --agentid 1000002");
    out.assert_code(2);
    // The one-line usage error must still say what is missing.
    assert_has(&out.stderr, &["--corpid"]);
}

// ---- secrets ----

#[test]
fn the_corpsecret_never_appears_in_any_output() {
    let env = TestEnv::new();
    env.set_env("RUST_LOG", "trace");
    let mut outs = Vec::new();
    let mut record = |out: Out| {
        outs.push(out.clone());
        out
    };

    record(env.run_with_stdin(
        &format!("-vvv account add {APP} --ticket jsapi"),
        &format!("{APP_SECRET}\n"),
    ))
    .assert_code(0);
    let ok = record(env.run("-vvv refresh"));
    ok.assert_code(0);
    // The logging is really on, so the check below can fail.
    assert_has(&ok.stderr, &["INFO", "valid for"]);
    for line in [
        "account list",
        "account list --json",
        "status",
        "status --json",
        &format!("get {APP}"),
        &format!("get {APP} --json"),
        &format!("get {APP} --ticket jsapi --json"),
    ] {
        record(env.run(&format!("-vvv {line}"))).assert_code(0);
    }

    // HTTP 500 from a proxy, three times: retried, then reported.
    for _ in 0..3 {
        env.api.push(
            standin::WORK_TOKEN,
            Reply::Status(500, "<html>500 Internal Server Error</html>".into()),
        );
    }
    let failed = record(env.run("-vvv refresh --force"));
    failed.assert_code(4);
    assert_has(&failed.stderr, &["HTTP status 500", "retrying in"]);
    // A dropped connection, three times.
    for _ in 0..3 {
        env.api.push(standin::WORK_TOKEN, Reply::Drop);
    }
    let dropped = record(env.run("-vvv refresh --force"));
    dropped.assert_code(4);
    assert_has(&dropped.stderr, &["network error"]);
    // A connection refused: nothing listens on the base URL.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let refused = record(env.run(&format!("-vvv refresh --force --work-api-base {dead}")));
    refused.assert_code(4);
    assert_has(&refused.stderr, &["network error"]);
    // A reply that echoes the secret back.
    env.api.push(
        standin::WORK_TOKEN,
        Reply::errcode(40091, &format!("invalid corpsecret {APP_SECRET}")),
    );
    record(env.run("-vvv refresh --force")).assert_code(4);
    for line in ["status", "status --json", "account list --json"] {
        record(env.run(&format!("-vvv {line}"))).assert_code(0);
    }

    assert_eq!(env.requests_to(standin::WORK_TOKEN).len(), 8);
    for out in &outs {
        for (name, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            assert!(
                !text.contains(APP_SECRET) && !text.contains(&APP_SECRET[..12]),
                "the secret leaked on {name}:\n{text}"
            );
        }
    }
}

// ---- WeCom errors ----

/// Adds the app, scripts one errcode on the token route and refreshes, which must fail
/// naming the code and the errmsg; returns the environment and stderr.
fn wecom_error(code: i64, errmsg: &str) -> (TestEnv, String) {
    let env = TestEnv::new();
    add(&env, APP, APP_SECRET);
    env.api
        .push(standin::WORK_TOKEN, Reply::errcode(code, errmsg));
    let out = env.run("refresh");
    out.assert_code(4);
    assert_eq!(out.stdout, "");
    assert_has(
        &out.stderr,
        &[
            &format!("{APP_KEY}: WeChat errcode {code} ({errmsg})"),
            &format!("1 failed: {APP_KEY}({code})"),
        ],
    );
    (env, out.stderr.clone())
}

#[test]
fn every_wecom_error_gets_its_own_message() {
    let cases: [(i64, &str, &[&str]); 6] = [
        (
            40091,
            "invalid corpsecret",
            &["secret is invalid", "set-secret"],
        ),
        (
            60020,
            "not allow to access from your ip, hint: [1700000000], from ip: 1.2.3.4, more info at https://open.work.weixin.qq.com/devtool/query?e=60020",
            &["the IP 1.2.3.4 is not among the WeCom app's trusted IPs"],
        ),
        (
            60020,
            "not allow to access from your ip",
            &["the IP of this server is not among the WeCom app's trusted IPs"],
        ),
        (
            301002,
            "not allow operate another agent with this accesstoken",
            &["another WeCom app", "agentid"],
        ),
        (42009, "access_token expired", &["expired"]),
        (40013, "invalid corpid", &["corpid", "invalid"]),
    ];
    let mut hints = Vec::new();
    for (code, errmsg, words) in cases {
        let (env, stderr) = wecom_error(code, errmsg);
        assert_has(&stderr, words);
        let hint = status_of(&env, CORP, Some("1000002"))["last_attempt"]["hint"]
            .as_str()
            .unwrap_or_else(|| panic!("{code}: no hint in status"))
            .to_string();
        assert!(
            stderr.contains(&hint),
            "{code}: stderr lacks the hint {hint:?}"
        );
        assert!(!hints.contains(&hint), "{code} shares its hint: {hint}");
        hints.push(hint);
    }
}

#[test]
fn an_invalid_wecom_secret_holds_the_app_until_set_secret() {
    let env = TestEnv::new();
    env.api.register(CORP, APP_SECRET);
    let wrong = "StaleSecretFromLastYear-xxxxxxxxxxxxxxxxx";
    add(&env, APP, wrong);

    // The stand-in answers an unknown corpsecret with 40091, as WeCom does.
    let out = env.run("refresh");
    out.assert_code(4);
    assert_has(&out.stderr, &["errcode 40091", "set-secret"]);
    assert_eq!(env.api.hits(standin::WORK_TOKEN), 1);

    // Held: the next run sends nothing and says why.
    let out = env.run("refresh");
    out.assert_code(4);
    assert_has(&out.stderr, &[APP_KEY, "skipped", "40091", "set-secret"]);
    assert_eq!(
        env.api.hits(standin::WORK_TOKEN),
        1,
        "a held app sends no request"
    );
    assert_has(&env.status_block(APP_KEY), &["SKIPPED by refresh", "40091"]);
    env.get(APP).assert_no_value(&[]);

    let out = env.run_with_stdin(
        &format!("account set-secret {APP}"),
        &format!("{APP_SECRET}\n"),
    );
    out.assert_code(0);
    run(&env, "refresh", 0);
    let sent = env.requests_to(standin::WORK_TOKEN);
    assert_eq!(sent.len(), 2);
    assert_eq!(q(&sent[1], "corpsecret"), APP_SECRET);
    let token = env.get(APP).value();
    assert!(env.api.is_valid(&token));
}

// ---- tickets ----

#[test]
fn tickets_are_fetched_right_after_their_token_with_it() {
    let env = TestEnv::new();
    let out = add(
        &env,
        &format!("{OA} --ticket jsapi --ticket wx_card"),
        OA_SECRET,
    );
    assert_has(&out.stderr, &[&format!("added {APPID}")]);
    env.api.push(
        standin::TICKET,
        Reply::token("jsapi-ticket-kgt8ON7yVITDhtdwci0qe", 7200),
    );
    env.api.push(
        standin::TICKET,
        Reply::token("card-ticket-HoagFKDcsGMVCIY2vOjf9", 7200),
    );

    run(&env, "refresh", 0);
    let token = env.get(OA).value();
    let sent = env.api.requests();
    let shape: Vec<(&str, &str)> = sent
        .iter()
        .map(|r| (r.path.as_str(), q(r, "type")))
        .collect();
    assert_eq!(
        shape,
        [
            (standin::TOKEN, ""),
            (standin::TICKET, "jsapi"),
            (standin::TICKET, "wx_card"),
        ],
        "the token first, then each ticket"
    );
    assert_eq!(q(&sent[0], "appid"), APPID);
    for ticket_request in &sent[1..] {
        assert_eq!(
            q(ticket_request, "access_token"),
            token,
            "tickets use the new token"
        );
    }

    assert_eq!(
        run(&env, &format!("get {OA} --ticket jsapi"), 0).stdout,
        "jsapi-ticket-kgt8ON7yVITDhtdwci0qe\n"
    );
    assert_eq!(
        run(&env, &format!("get {OA} --ticket wx_card"), 0).stdout,
        "card-ticket-HoagFKDcsGMVCIY2vOjf9\n"
    );
    let block = env.status_block(APPID);
    for label in ["token", "jsapi ticket", "wx_card ticket"] {
        let (head, attempt) = status_lines(&block, label);
        assert_has(&head, &[&format!("{label} fetched")]);
        assert_has(&attempt, &["last attempt", ": ok"]);
    }
    let list = json(&run(&env, "account list --json", 0).stdout);
    assert_eq!(
        list["accounts"][0]["tickets"],
        serde_json::json!(["jsapi", "wx_card"])
    );
}

#[test]
fn get_ticket_json_names_the_ticket_and_its_times() {
    let env = TestEnv::new();
    add(&env, &format!("{OA} --ticket jsapi"), OA_SECRET);
    env.api
        .push(standin::TICKET, Reply::token("jsapi-ticket-json-1", 7200));
    let before = now();
    run(&env, "refresh", 0);

    let doc = json(&run(&env, &format!("get {OA} --ticket jsapi --json"), 0).stdout);
    let after = now();
    assert_eq!(doc["ticket"], "jsapi-ticket-json-1");
    assert_eq!(doc["type"], "jsapi");
    assert_eq!(doc["appid"], APPID);
    assert!(
        doc.get("access_token").is_none(),
        "a ticket is not a token: {doc}"
    );
    let fetched_at = unix_of(&doc["fetched_at"]);
    let expires_at = unix_of(&doc["expires_at"]);
    assert!((before..=after).contains(&fetched_at), "{doc}");
    assert_eq!(expires_at - fetched_at, 7200);
    let expires_in = doc["expires_in"].as_i64().expect("expires_in is a number");
    assert!(
        (expires_at - after..=expires_at - before).contains(&expires_in),
        "{doc}"
    );
}

#[test]
fn min_ttl_applies_to_tickets() {
    let env = TestEnv::new();
    add(&env, &format!("{OA} --ticket jsapi"), OA_SECRET);
    env.api
        .push(standin::TICKET, Reply::token("short-lived-ticket", 200));
    run(&env, "refresh", 0);

    let stderr = env
        .get(&format!("{OA} --ticket jsapi --min-ttl 5m"))
        .assert_no_value(&[])
        .stderr
        .clone();
    assert_has(&stderr, &["jsapi ticket", APPID, "--min-ttl"]);
    assert_eq!(
        run(&env, &format!("get {OA} --ticket jsapi --min-ttl 1m"), 0).stdout,
        "short-lived-ticket\n"
    );
    // The token itself has its full lifetime.
    env.get(&format!("{OA} --min-ttl 5m")).value();
}

#[test]
fn a_ticket_expiring_soon_is_renewed_with_the_current_token() {
    let env = TestEnv::new();
    add(&env, &format!("{OA} --ticket jsapi"), OA_SECRET);
    env.api
        .push(standin::TICKET, Reply::token("short-lived-ticket", 200));
    run(&env, "refresh", 0);
    let token = env.get(OA).value();

    // The token has two hours left, the ticket under five minutes: only the ticket is due.
    env.api
        .push(standin::TICKET, Reply::token("renewed-ticket", 7200));
    run(&env, "refresh --if-expiring-within 5m", 0);
    assert_eq!(env.api.hits(standin::TOKEN), 1);
    let sent = env.requests_to(standin::TICKET);
    assert_eq!(sent.len(), 2);
    assert_eq!(q(&sent[1], "access_token"), token);
    assert_eq!(
        run(&env, &format!("get {OA} --ticket jsapi --min-ttl 5m"), 0).stdout,
        "renewed-ticket\n"
    );
}

#[test]
fn wecom_tickets_use_the_wecom_paths() {
    let env = TestEnv::new();
    add(
        &env,
        &format!("{APP} --ticket jsapi --ticket agent_config"),
        APP_SECRET,
    );
    env.api.push(
        standin::WORK_CORP_TICKET,
        Reply::token("corp-jsapi-ticket-1", 7200),
    );
    env.api.push(
        standin::WORK_AGENT_TICKET,
        Reply::token("agent-config-ticket-1", 7200),
    );

    run(&env, "refresh", 0);
    let token = env.get(APP).value();
    let sent = env.api.requests();
    let paths: Vec<&str> = sent.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            standin::WORK_TOKEN,
            standin::WORK_CORP_TICKET,
            standin::WORK_AGENT_TICKET
        ]
    );
    assert_eq!(q(&sent[0], "corpsecret"), APP_SECRET);
    assert_eq!(q(&sent[1], "access_token"), token);
    assert!(!sent[1].query.contains_key("type"), "{:?}", sent[1].query);
    assert_eq!(q(&sent[2], "access_token"), token);
    assert_eq!(q(&sent[2], "type"), "agent_config");
    assert_eq!(env.api.hits(standin::TICKET), 0);

    assert_eq!(
        run(&env, &format!("get {APP} --ticket jsapi"), 0).stdout,
        "corp-jsapi-ticket-1\n"
    );
    assert_eq!(
        run(&env, &format!("get {APP} --ticket agent_config"), 0).stdout,
        "agent-config-ticket-1\n"
    );
    let doc = json(&run(&env, &format!("get {APP} --ticket agent_config --json"), 0).stdout);
    assert_eq!(doc["ticket"], "agent-config-ticket-1");
    assert_eq!(doc["type"], "agent_config");
    assert_eq!(doc["appid"], CORP);
    assert_eq!(doc["agentid"], "1000002");
}

#[test]
fn wecom_tickets_from_the_standin_defaults_are_accepted() {
    // Unscripted: the stand-in checks that each ticket request carries a live token.
    let env = TestEnv::new();
    add(
        &env,
        &format!("{APP} --ticket jsapi --ticket agent_config"),
        APP_SECRET,
    );
    run(&env, "refresh", 0);
    let token = env.get(APP).value();
    let corp = env.get(&format!("{APP} --ticket jsapi")).value();
    let agent = env.get(&format!("{APP} --ticket agent_config")).value();
    assert!(env.api.is_valid(&token));
    assert!(corp != agent && corp != token && agent != token);
}

#[test]
fn ticket_kinds_that_do_not_fit_the_account_are_usage_errors() {
    let env = TestEnv::new();
    let cases = [
        (
            format!("account add {OA} --ticket agent_config"),
            "agent_config",
        ),
        (format!("account add {APP} --ticket wx_card"), "wx_card"),
        (
            format!("account add {OA} --ticket jsapi --ticket bogus"),
            "bogus",
        ),
        (format!("account add {APP} --ticket JSAPI"), "JSAPI"),
    ];
    for (line, word) in &cases {
        let out = env.run_with_stdin(line, "some-secret\n");
        out.assert_code(2);
        assert_eq!(out.stdout, "");
        assert_has(&out.stderr, &[word]);
    }
    let listed = json(&run(&env, "account list --json", 0).stdout);
    assert_eq!(
        listed["accounts"],
        serde_json::json!([]),
        "nothing was added"
    );

    add(&env, OA, OA_SECRET);
    add(&env, APP, APP_SECRET);
    for (line, word) in [
        (
            format!("account set-tickets {OA} --ticket agent_config"),
            "agent_config",
        ),
        (
            format!("account set-tickets {APP} --ticket wx_card"),
            "wx_card",
        ),
        (format!("account set-tickets {APP} --ticket nope"), "nope"),
        (format!("get {OA} --ticket nope"), "nope"),
    ] {
        let out = env.run(&line);
        out.assert_code(2);
        assert_eq!(out.stdout, "");
        assert_has(&out.stderr, &[word]);
    }
    let listed = json(&run(&env, "account list --json", 0).stdout);
    for account in listed["accounts"].as_array().expect("accounts") {
        assert_eq!(account["tickets"], serde_json::json!([]), "{account}");
    }
}

#[test]
fn set_tickets_turns_tickets_on_and_off() {
    let env = TestEnv::new();
    add(&env, &format!("{OA} --ticket jsapi"), OA_SECRET);
    run(&env, "refresh", 0);
    assert_eq!(env.api.hits(standin::TICKET), 1);

    let out = env.run(&format!("account set-tickets {OA}"));
    out.assert_code(0);
    assert_has(&out.stderr, &[&format!("{APPID} tickets: none")]);
    let listed = json(&run(&env, "account list --json", 0).stdout);
    assert_eq!(listed["accounts"][0]["tickets"], serde_json::json!([]));
    run(&env, "refresh --force", 0);
    assert_eq!(env.api.hits(standin::TOKEN), 2);
    assert_eq!(
        env.api.hits(standin::TICKET),
        1,
        "no ticket request once they are off"
    );

    // On again, with one more: the fresh token is reused, each new ticket fetched with it.
    let out = env.run(&format!("account set-tickets {OA} --ticket wx_card"));
    out.assert_code(0);
    assert_has(&out.stderr, &[&format!("{APPID} tickets: wx_card")]);
    run(&env, "refresh --if-expiring-within 5m", 0);
    let token = env.get(OA).value();
    assert_eq!(
        env.api.hits(standin::TOKEN),
        2,
        "the token has long to live"
    );
    let sent = env.requests_to(standin::TICKET);
    assert_eq!(sent.len(), 2);
    assert_eq!(q(&sent[1], "type"), "wx_card");
    assert_eq!(q(&sent[1], "access_token"), token);
    env.get(&format!("{OA} --ticket wx_card")).value();

    run(
        &env,
        &format!("account set-tickets {OA} --ticket jsapi --ticket wx_card"),
        0,
    );
    run(&env, "refresh --force", 0);
    let token = env.get(OA).value();
    let sent = env.requests_to(standin::TICKET);
    let types: Vec<&str> = sent[2..].iter().map(|r| q(r, "type")).collect();
    assert_eq!(types, ["jsapi", "wx_card"]);
    assert!(sent[2..].iter().all(|r| q(r, "access_token") == token));
}

#[test]
fn a_failed_ticket_is_reported_and_keeps_the_new_token_and_the_old_ticket() {
    let env = TestEnv::new();
    add(&env, &format!("{OA} --ticket jsapi"), OA_SECRET);
    env.api
        .push(standin::TICKET, Reply::token("first-jsapi-ticket", 7200));
    run(&env, "refresh", 0);
    let first = env.get(OA).value();

    let errmsg = "invalid credential, access_token is invalid or not latest";
    env.api.push(standin::TICKET, Reply::errcode(40001, errmsg));
    let out = env.run("refresh --force");
    out.assert_code(4);
    assert_eq!(out.stdout, "");
    assert_has(
        &out.stderr,
        &[
            &format!("{APPID}: jsapi ticket: WeChat errcode 40001 ({errmsg})"),
            &format!("refreshed 1 of 1 accounts; failed tickets: {APPID}(jsapi 40001)"),
        ],
    );

    // The token fetched in that run is served; the earlier ticket, still valid, too.
    let second = env.get(OA).value();
    assert_ne!(second, first);
    let last = env.api.requests().pop().expect("a request");
    assert_eq!(last.path, standin::TICKET);
    assert_eq!(q(&last, "access_token"), second);
    assert_eq!(
        run(&env, &format!("get {OA} --ticket jsapi"), 0).stdout,
        "first-jsapi-ticket\n"
    );

    let entry = status_of(&env, APPID, None);
    assert_eq!(entry["last_attempt"]["outcome"], "ok");
    assert_eq!(
        entry["held"],
        Value::Null,
        "a ticket failure does not hold the account"
    );
    let ticket = &entry["tickets"]["jsapi"]["last_attempt"];
    assert_eq!(ticket["outcome"], "errcode");
    assert_eq!(ticket["errcode"], 40001);
    assert_eq!(ticket["errmsg"], errmsg);
    let (_, attempt) = status_lines(&env.status_block(APPID), "jsapi ticket");
    assert_has(&attempt, &["last attempt", "errcode 40001"]);
    let (_, attempt) = status_lines(&env.status_block(APPID), "token");
    assert_has(&attempt, &[": ok"]);
}

#[test]
fn a_ticket_that_hits_its_quota_is_fetched_on_the_next_run_with_the_same_token() {
    let env = TestEnv::new();
    add(&env, &format!("{APP} --ticket agent_config"), APP_SECRET);
    let errmsg = "api freq out of limit";
    env.api
        .push(standin::WORK_AGENT_TICKET, Reply::errcode(45009, errmsg));
    let out = env.run("refresh");
    out.assert_code(4);
    assert_has(
        &out.stderr,
        &[
            &format!("{APP_KEY}: agent_config ticket: WeChat errcode 45009 ({errmsg})"),
            &format!("refreshed 1 of 1 accounts; failed tickets: {APP_KEY}(agent_config 45009)"),
        ],
    );
    let token = env.get(APP).value();
    assert_has(
        &env.get(&format!("{APP} --ticket agent_config"))
            .assert_no_value(&[])
            .stderr
            .clone(),
        &["agent_config ticket"],
    );
    let entry = status_of(&env, CORP, Some("1000002"));
    assert_eq!(
        entry["tickets"]["agent_config"]["last_attempt"]["errcode"],
        45009
    );
    assert_eq!(entry["tickets"]["agent_config"]["newest"], Value::Null);

    // The token has long to live: a refresh-ahead run fetches only the missing ticket, with it.
    run(&env, "refresh --if-expiring-within 5m", 0);
    assert_eq!(env.api.hits(standin::WORK_TOKEN), 1);
    let sent = env.requests_to(standin::WORK_AGENT_TICKET);
    assert_eq!(sent.len(), 2);
    assert_eq!(q(&sent[1], "access_token"), token);
    env.get(&format!("{APP} --ticket agent_config")).value();
}

#[test]
fn a_ticket_40001_is_not_blamed_on_the_secret() {
    // On a ticket fetch, 40001 means the access token was invalid or not the latest (see
    // wechat-api.md, "Tickets derived from a token"); the secret is fine, since the token
    // was just fetched with it. Telling the operator to replace it sends them the wrong way.
    let env = TestEnv::new();
    add(&env, &format!("{OA} --ticket jsapi"), OA_SECRET);
    env.api.push(
        standin::TICKET,
        Reply::errcode(
            40001,
            "invalid credential, access_token is invalid or not latest",
        ),
    );
    let out = env.run("refresh");
    out.assert_code(4);
    assert_has(&out.stderr, &["jsapi ticket", "40001"]);
    assert!(
        !out.stderr.contains("set-secret"),
        "a ticket's 40001 is about the token, not the secret:\n{}",
        out.stderr
    );
}

#[test]
fn no_ticket_is_requested_when_the_token_fetch_fails() {
    let env = TestEnv::new();
    add(
        &env,
        &format!("{OA} --ticket jsapi --ticket wx_card"),
        OA_SECRET,
    );
    add(
        &env,
        &format!("{APP} --ticket jsapi --ticket agent_config"),
        APP_SECRET,
    );
    env.api
        .push(standin::TOKEN, Reply::errcode(40125, "invalid appsecret"));
    for _ in 0..3 {
        env.api.push(
            standin::WORK_TOKEN,
            Reply::Status(502, "<html>Bad Gateway</html>".into()),
        );
    }
    let out = env.run("refresh");
    out.assert_code(4);
    assert_has(
        &out.stderr,
        &[&format!("{APPID}(40125)"), &format!("{APP_KEY}(http 502)")],
    );
    assert!(!out.stderr.contains("ticket:"), "{}", out.stderr);
    assert_eq!(env.api.hits(standin::TOKEN), 1);
    assert_eq!(env.api.hits(standin::WORK_TOKEN), 3);
    for route in [
        standin::TICKET,
        standin::WORK_CORP_TICKET,
        standin::WORK_AGENT_TICKET,
    ] {
        assert_eq!(env.api.hits(route), 0, "{route}");
    }
    env.get(&format!("{OA} --ticket jsapi"))
        .assert_no_value(&[]);
    env.get(&format!("{APP} --ticket agent_config"))
        .assert_no_value(&[]);
}

#[test]
fn wecom_hands_back_the_same_token_and_no_row_is_added() {
    let env = TestEnv::new();
    add(&env, APP, APP_SECRET);
    run(&env, "refresh", 0);
    let first = env.get(APP).value();
    run(&env, "refresh --force", 0);
    assert_eq!(env.api.hits(standin::WORK_TOKEN), 2);
    assert_eq!(
        env.get(APP).value(),
        first,
        "WeCom returns the same token while it is valid"
    );

    let rows = "SELECT count(*) FROM tokens WHERE kind = 'access_token'";
    assert_eq!(env.query_i64(rows), 1, "an unchanged token adds no row");
    let outcomes =
        env.query("SELECT outcome FROM attempts WHERE kind = 'access_token' ORDER BY id");
    assert_eq!(outcomes, "ok\nunchanged");
    let (_, attempt) = status_lines(&env.status_block(APP_KEY), "token");
    assert_has(&attempt, &["unchanged"]);

    // WeCom may still invalidate a token early; then the next fetch brings a new one.
    env.api.revoke(&first);
    run(&env, "refresh --force", 0);
    let second = env.get(APP).value();
    assert_ne!(second, first);
    assert!(env.api.is_valid(&second));
    assert_eq!(env.query_i64(rows), 2);
}

#[test]
fn get_ticket_without_one_exits_3_and_names_it() {
    let env = TestEnv::new();
    add(&env, OA, OA_SECRET);
    add(&env, &format!("{APP} --ticket agent_config"), APP_SECRET);

    // Configured, not fetched yet.
    let stderr = env
        .get(&format!("{APP} --ticket agent_config"))
        .assert_no_value(&[])
        .stderr
        .clone();
    assert_has(&stderr, &["agent_config ticket", APP_KEY]);

    run(&env, &format!("refresh --appid {APPID}"), 0);
    env.get(OA).value();
    // Never turned on: the message says how.
    let stderr = env
        .get(&format!("{OA} --ticket jsapi"))
        .assert_no_value(&[])
        .stderr
        .clone();
    assert_has(
        &stderr,
        &["jsapi ticket", APPID, "set-tickets", "--ticket jsapi"],
    );
    let stderr = env
        .get(&format!("{OA} --ticket wx_card --json"))
        .assert_no_value(&[])
        .stderr
        .clone();
    assert_has(&stderr, &["wx_card ticket"]);
    // An unknown account says so.
    let stderr = env
        .get("--appid wx0000000000000000 --ticket jsapi")
        .assert_no_value(&[])
        .stderr
        .clone();
    assert_has(&stderr, &["no such account"]);
}

#[test]
fn prune_applies_the_same_retention_to_ticket_rows() {
    let env = TestEnv::new();
    add(&env, &format!("{OA} --ticket jsapi"), OA_SECRET);
    // Older history, inserted before the refresh so that its rows are the older ones.
    let t = now();
    {
        let id = env.query_i64(&format!("SELECT id FROM accounts WHERE appid = '{APPID}'"));
        let insert = |kind: &str, token: &str, fetched_at: i64| {
            env.execute(&format!(
                "INSERT INTO tokens (account_id, kind, token, expires_in, fetched_at, expires_at)
                 VALUES ({id}, '{kind}', '{token}', 7200, {fetched_at}, {fetched_at} + 7200)"
            ));
        };
        for (i, days) in [3, 2, 1].into_iter().enumerate() {
            insert("jsapi", &format!("expired-ticket-{i}"), t - days * 86_400);
            insert(
                "access_token",
                &format!("expired-token-{i}"),
                t - days * 86_400,
            );
        }
        // Older than the newest, but still valid: kept whatever --keep says.
        insert("jsapi", "older-but-valid-ticket", t - 3600);
    }
    env.api
        .push(standin::TICKET, Reply::token("newest-ticket", 7200));
    run(&env, "refresh", 0);
    let tickets = "SELECT count(*) FROM tokens WHERE kind = 'jsapi'";
    assert_eq!(
        env.query_i64(tickets),
        5,
        "refresh's own prune keeps 48 rows"
    );

    let out = env.run("prune --keep 1");
    out.assert_code(0);
    assert_has(&out.stderr, &["pruned 6 token rows"]);
    let left = env.query("SELECT token FROM tokens WHERE kind = 'jsapi' ORDER BY id");
    assert_eq!(left, "older-but-valid-ticket\nnewest-ticket");
    assert_eq!(
        env.query_i64("SELECT count(*) FROM tokens WHERE kind = 'access_token'"),
        1
    );
    assert_eq!(
        run(&env, &format!("get {OA} --ticket jsapi"), 0).stdout,
        "newest-ticket\n"
    );
    env.get(OA).value();
}

// Every test again on PostgreSQL: none is about the SQLite file.
also_on_postgres!(
    two_apps_of_one_corp_get_their_own_tokens,
    account_commands_address_a_wecom_app_by_corpid_and_agentid,
    agentid_without_corpid_is_a_usage_error,
    agentid_without_corpid_names_the_missing_corpid,
    the_corpsecret_never_appears_in_any_output,
    every_wecom_error_gets_its_own_message,
    an_invalid_wecom_secret_holds_the_app_until_set_secret,
    tickets_are_fetched_right_after_their_token_with_it,
    get_ticket_json_names_the_ticket_and_its_times,
    min_ttl_applies_to_tickets,
    a_ticket_expiring_soon_is_renewed_with_the_current_token,
    wecom_tickets_use_the_wecom_paths,
    wecom_tickets_from_the_standin_defaults_are_accepted,
    ticket_kinds_that_do_not_fit_the_account_are_usage_errors,
    set_tickets_turns_tickets_on_and_off,
    a_failed_ticket_is_reported_and_keeps_the_new_token_and_the_old_ticket,
    a_ticket_that_hits_its_quota_is_fetched_on_the_next_run_with_the_same_token,
    a_ticket_40001_is_not_blamed_on_the_secret,
    no_ticket_is_requested_when_the_token_fetch_fails,
    wecom_hands_back_the_same_token_and_no_row_is_added,
    get_ticket_without_one_exits_3_and_names_it,
    prune_applies_the_same_retention_to_ticket_rows,
);
