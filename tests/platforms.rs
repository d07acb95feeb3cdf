//! Open Platform third-party platforms (issue 20): the component token fetched by refresh
//! only, once per expiry and never without a valid ticket; every authorizer refreshed on
//! schedule; refresh tokens never lost; the errcodes of platforms.md §3; onboarding and
//! `authorizer sync`; `get --component`. The real binary against the stand-in, on SQLite
//! and (`also_on_postgres!`) on PostgreSQL.

mod support;

use std::process::Child;
use std::time::Duration;

use serde_json::Value;
use support::standin::{
    self, AUTHORIZER_LIST, AUTHORIZER_TOKEN, COMPONENT_TOKEN, QUERY_AUTH, Reply, Request,
};
use support::{Out, TestEnv, assert_has, assert_no_secret, finish_within, json, now, run};

const CID: &str = "wxc0ffee0123456789";
const COMPONENT_SECRET: &str = "c5Gh2Kq9LmX4Tz8Wr1Vb5Nc3pQ7";
const TICKET: &str = "tkt@@@Vq8Lz3Xm1Rk7Tb2Wn9Hc5Jd4Fg6";
/// Long enough for anything that should happen; only a failing test waits this long.
const PATIENCE: Duration = Duration::from_secs(30);
/// How long a spawned refresh may run before it counts as stuck.
const RUN_LIMIT: Duration = Duration::from_secs(60);

// ---- helpers ----

fn appid(i: usize) -> String {
    format!("wxa{i:015}")
}

fn refresh_token(i: usize) -> String {
    format!("rt@@@{i:04}Qz7Lm2Xk9Vb4Nw8Rt1Yc")
}

/// A component known to the stand-in and to wxtoken, with no ticket yet.
fn component() -> TestEnv {
    component_in(TestEnv::new())
}

fn component_in(env: TestEnv) -> TestEnv {
    env.api.add_component(CID, COMPONENT_SECRET);
    let out = env.run_with_stdin(
        &format!("platform add --component {CID}"),
        &format!("{COMPONENT_SECRET}\n"),
    );
    out.assert_code(0);
    assert_no_secret("platform add", &out, &[COMPONENT_SECRET]);
    env
}

/// Pushes `ticket` to the stand-in and stores it with `platform set-ticket`, created
/// `age` seconds ago.
#[track_caller]
fn set_ticket(env: &TestEnv, ticket: &str, age: i64) -> Out {
    env.api.push_component_ticket(CID, ticket);
    let created = now() - age;
    let out = env.run_with_stdin(
        &format!("platform set-ticket --component {CID} --create-time {created}"),
        &format!("{ticket}\n"),
    );
    out.assert_code(0);
    assert_no_secret("set-ticket", &out, &[ticket, COMPONENT_SECRET]);
    out
}

/// A component with a fresh ticket.
fn ticketed() -> TestEnv {
    let env = component();
    set_ticket(&env, TICKET, 60);
    env
}

/// Authorizer `i` known to the stand-in and imported into wxtoken with its refresh token.
#[track_caller]
fn import(env: &TestEnv, i: usize) {
    let (a, rt) = (appid(i), refresh_token(i));
    env.api.add_authorizer(CID, &a, &rt);
    let out = env.run_with_stdin(
        &format!("authorizer import --component {CID} --appid {a}"),
        &format!("{rt}\n"),
    );
    out.assert_code(0);
    assert_no_secret("authorizer import", &out, &[&rt]);
}

/// The next token the stand-in issues to authorizer `i` lives 1200 s: a plain `refresh`
/// finds it due (tenants are refreshed when less than 3900 s are left).
fn short_lived(env: &TestEnv, i: usize) {
    let token = format!("AT-short-{i}-{}", env.api.hits(AUTHORIZER_TOKEN));
    env.api
        .push_for(AUTHORIZER_TOKEN, &appid(i), Reply::token(&token, 1200));
}

/// `refresh --force` of authorizer `a` alone (a fresh tenant is not due otherwise).
fn force(env: &TestEnv, a: &str, extra: &str) -> Out {
    env.run(&format!("refresh --force --appid {a}/{CID} {extra}"))
}

fn refresh(env: &TestEnv, extra: &str) -> Out {
    env.run(&format!("refresh {extra}"))
}

/// The body of a request, parsed.
fn body(req: &Request) -> Value {
    serde_json::from_str(&req.body).unwrap_or_else(|e| panic!("{e}: {}", req.body))
}

/// The refresh tokens sent for authorizer `a`, in order.
fn sent_refresh_tokens(env: &TestEnv, a: &str) -> Vec<String> {
    env.requests_to(AUTHORIZER_TOKEN)
        .iter()
        .map(body)
        .filter(|b| b["authorizer_appid"] == a)
        .map(|b| {
            b["authorizer_refresh_token"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

fn get_component(env: &TestEnv) -> Out {
    env.get(&format!("--component {CID}"))
}

fn get_authorizer(env: &TestEnv, a: &str) -> Out {
    env.get(&format!("--component {CID} --appid {a}"))
}

/// Token calls the stand-in saw: (component, authorizer).
fn token_hits(env: &TestEnv) -> (usize, usize) {
    (
        env.api.hits(COMPONENT_TOKEN),
        env.api.hits(AUTHORIZER_TOKEN),
    )
}

fn status_json(env: &TestEnv) -> Value {
    json(&run(env, "status --json", 0).stdout)
}

// ---- 1. no ticket, no request ----

#[test]
fn no_ticket_no_request() {
    let env = component();
    import(&env, 1);
    let out = refresh(&env, "");
    out.assert_code(4);
    assert_has(&out.stderr, &[CID, "waiting for a ticket"]);
    assert_eq!(token_hits(&env), (0, 0), "nothing is sent without a ticket");
    get_component(&env).assert_no_value(&[]);
    get_authorizer(&env, &appid(1)).assert_no_value(&[]);
}

#[test]
fn a_ticket_older_than_12_hours_sends_nothing() {
    let env = component();
    set_ticket(&env, TICKET, 12 * 3600 + 60);
    let out = refresh(&env, "");
    out.assert_code(4);
    assert_has(&out.stderr, &[CID, "waiting for a ticket"]);
    assert_eq!(token_hits(&env), (0, 0));
    // A fresh one, and the next run fetches with it.
    set_ticket(&env, "tkt@@@fresh-Hk3Lm8Qz1Xw5", 30);
    run(&env, "refresh", 0);
    let sent = env.requests_to(COMPONENT_TOKEN);
    assert_eq!(sent.len(), 1);
    assert_eq!(
        body(&sent[0])["component_verify_ticket"],
        "tkt@@@fresh-Hk3Lm8Qz1Xw5"
    );
    get_component(&env).value();
}

#[test]
fn set_ticket_never_fetches_and_an_older_ticket_never_replaces_a_newer_one() {
    let env = component();
    import(&env, 1);
    set_ticket(&env, TICKET, 60);
    // Older by create time, stored later: ignored.
    set_ticket(&env, "tkt@@@older-Pq2Wn7Zx4Lk9", 600);
    assert_eq!(
        token_hits(&env),
        (0, 0),
        "storing a ticket fetched something"
    );
    assert_eq!(
        env.api.requests().len(),
        0,
        "storing a ticket sent a request"
    );
    run(&env, "refresh", 0);
    let sent = env.requests_to(COMPONENT_TOKEN);
    assert_eq!(sent.len(), 1);
    assert_eq!(
        body(&sent[0])["component_verify_ticket"],
        TICKET,
        "the component token must be fetched with the newest ticket"
    );
    assert_eq!(token_hits(&env), (1, 1));
}

// ---- 2. the component token once per expiry ----

#[test]
fn the_component_token_is_fetched_once_per_expiry() {
    let env = ticketed();
    import(&env, 1);
    import(&env, 2);
    run(&env, "refresh", 0);
    assert_eq!(token_hits(&env), (1, 2));
    // --dry-run says what a plain run does: nothing is due.
    let dry = run(&env, "refresh --dry-run", 0).stdout.clone();
    for key in [CID.to_string(), format!("{}/{CID}", appid(1))] {
        assert_has(&dry, &[&format!("{key}  not due")]);
    }
    // A second plain run: platform and tenant tokens are due only with < 3900 s left.
    run(&env, "refresh", 0);
    assert_eq!(token_hits(&env), (1, 2), "a fresh token was fetched again");
    // Refresh-ahead with nothing due sends nothing at all.
    let before = env.api.requests().len();
    let out = refresh(&env, "--if-expiring-within 20m");
    out.assert_code(0);
    assert_eq!(
        env.api.requests().len(),
        before,
        "a refresh-ahead run with nothing due sent a request"
    );
    // Every authorizer token serves, and the component token too.
    let c = get_component(&env).value();
    assert_eq!(env.api.live_component_tokens(CID), [c]);
    for i in [1, 2] {
        let t = get_authorizer(&env, &appid(i)).value();
        assert!(env.api.is_valid(&t), "authorizer {i}'s token is not valid");
    }
}

/// Waits until one of `children` has exited; its index.
fn first_to_exit(children: &mut [Child]) -> usize {
    let deadline = std::time::Instant::now() + RUN_LIMIT;
    loop {
        for (i, c) in children.iter_mut().enumerate() {
            if c.try_wait().expect("poll wxtoken").is_some() {
                return i;
            }
        }
        assert!(std::time::Instant::now() < deadline, "no refresher ended");
        std::thread::park_timeout(Duration::from_millis(5));
    }
}

/// `refresh ARGS` as a process, on its own host name (PostgreSQL cannot probe another
/// host's pid; on SQLite the name changes nothing that matters here).
fn spawn_refresh(env: &TestEnv, host: &str, args: &str) -> Child {
    let mut cmd = env.command(
        &format!("refresh {args}")
            .split_whitespace()
            .collect::<Vec<_>>(),
    );
    cmd.env("WXTOKEN_HOST", host)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd.spawn().expect("spawn wxtoken")
}

#[test]
fn two_concurrent_refreshers_fetch_the_component_token_and_each_authorizer_once() {
    const N: usize = 6;
    let env = ticketed();
    for i in 0..N {
        import(&env, i);
        short_lived(&env, i);
    }
    // The component token: host-a's request is held at WeChat while host-b runs whole.
    env.api.gate(COMPONENT_TOKEN);
    let mut both = vec![spawn_refresh(&env, "host-a", "-j 3")];
    assert!(env.api.wait_for_hits(COMPONENT_TOKEN, 1, PATIENCE));
    both.push(spawn_refresh(&env, "host-b", "-j 3"));
    let b = both.pop().expect("host-b");
    let b = finish_within(b, RUN_LIMIT);
    // host-b found the component claimed, and its authorizers waiting for a token.
    assert_eq!(env.api.hits(COMPONENT_TOKEN), 1, "{}", b.stderr);
    assert_eq!(env.api.hits(AUTHORIZER_TOKEN), 0, "{}", b.stderr);
    env.api.open_gate(COMPONENT_TOKEN);
    let a = finish_within(both.pop().expect("host-a"), RUN_LIMIT);
    a.assert_code(0);
    assert_eq!(token_hits(&env), (1, N));

    // The authorizers, due again (1200 s left): both hosts at once, with requests held at
    // WeChat until both have three in flight.
    env.api.gate(AUTHORIZER_TOKEN);
    let mut both = vec![
        spawn_refresh(&env, "host-a", "-j 3"),
        spawn_refresh(&env, "host-b", "-j 3"),
    ];
    assert!(
        env.api.wait_for_hits(AUTHORIZER_TOKEN, N + 6, PATIENCE),
        "both hosts never got going: {}",
        env.api.hits(AUTHORIZER_TOKEN)
    );
    env.api.open_gate(AUTHORIZER_TOKEN);
    let i = first_to_exit(&mut both);
    let first = both.remove(i);
    for out in [
        finish_within(first, RUN_LIMIT),
        finish_within(both.pop().expect("the other"), RUN_LIMIT),
    ] {
        out.assert_code(0);
    }
    assert_eq!(
        env.api.hits(COMPONENT_TOKEN),
        1,
        "component token fetched again"
    );
    for i in 0..N {
        assert_eq!(
            env.api.hits_for(AUTHORIZER_TOKEN, &appid(i)),
            2,
            "authorizer {i}: once in each round"
        );
    }
    assert_eq!(env.query_i64("SELECT count(*) FROM claims"), 0);
}

// ---- 3. every authorizer on schedule ----

#[test]
fn fifty_authorizers_are_refreshed_in_one_run_platform_first() {
    const N: usize = 50;
    let env = ticketed();
    for i in 0..N {
        import(&env, i);
    }
    let out = refresh(&env, "--jobs 8");
    out.assert_code(0);
    assert_eq!(token_hits(&env), (1, N));
    let log = env.api.requests();
    let first_tenant = log.iter().position(|r| r.path == AUTHORIZER_TOKEN);
    let component_at = log.iter().position(|r| r.path == COMPONENT_TOKEN);
    assert!(component_at < first_tenant, "the platform is fetched first");
    let component = get_component(&env).value();
    for r in env.requests_to(AUTHORIZER_TOKEN) {
        assert_eq!(r.query.get("component_access_token"), Some(&component));
    }
    for i in 0..N {
        assert_eq!(env.api.hits_for(AUTHORIZER_TOKEN, &appid(i)), 1, "{i}");
        let t = get_authorizer(&env, &appid(i)).value();
        assert_eq!(env.api.live_authorizer_tokens(CID, &appid(i)), [t]);
    }
    // Refresh-ahead: nothing due, nothing sent.
    let before = env.api.requests().len();
    run(&env, "refresh --jobs 8 --if-expiring-within 30m", 0);
    assert_eq!(env.api.requests().len(), before);
}

// ---- 4. refresh tokens are never lost ----

/// Whether the authorizer keeps a previous refresh token, as `authorizer list --json` says.
fn rotated(env: &TestEnv, a: &str) -> bool {
    let out = run(env, &format!("authorizer list --component {CID} --json"), 0);
    let line = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("a JSON line"))
        .find(|v| v["appid"] == a)
        .unwrap_or_else(|| panic!("{a} not listed: {}", out.stdout));
    line["credential_rotated"]
        .as_bool()
        .expect("credential_rotated")
}

/// The `authorizer list --json` line of `a`.
fn listed(env: &TestEnv, a: &str) -> Value {
    let out = run(env, &format!("authorizer list --component {CID} --json"), 0);
    out.stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("a JSON line"))
        .find(|v| v["appid"] == a)
        .unwrap_or_else(|| panic!("{a} not listed: {}", out.stdout))
}

#[test]
fn a_rotated_refresh_token_is_stored_and_used_next_and_the_old_one_kept_until_it_worked() {
    let env = ticketed();
    import(&env, 1);
    let (a, rt1) = (appid(1), refresh_token(1));
    run(&env, "refresh", 0);
    env.api.rotate_refresh_token_on_next(CID, &a);
    force(&env, &a, "").assert_code(0);
    let rt2 = env.api.refresh_token_of(CID, &a).expect("known");
    assert_ne!(rt2, rt1);
    assert!(
        rotated(&env, &a),
        "the old refresh token is kept until the new one worked"
    );
    // The new one is refused once (a scripted 61023): the previous one still works.
    env.api.push_for(
        AUTHORIZER_TOKEN,
        &a,
        Reply::errcode(61023, "refresh_token is invalid"),
    );
    let out = force(&env, &a, "-v");
    out.assert_code(0);
    assert_eq!(
        sent_refresh_tokens(&env, &a),
        [&rt1, &rt1, &rt2, &rt1].map(String::clone)
    );
    assert!(rotated(&env, &a), "the new one has not worked yet");
    assert_eq!(env.api.hits(AUTHORIZER_LIST), 0, "no sync needed");
    // Now it works: the previous one is dropped.
    force(&env, &a, "").assert_code(0);
    assert_eq!(sent_refresh_tokens(&env, &a).last(), Some(&rt2));
    assert!(!rotated(&env, &a));
    force(&env, &a, "").assert_code(0);
    assert_eq!(sent_refresh_tokens(&env, &a).last(), Some(&rt2));
    assert_no_secret("refresh -v", &out, &[&rt1, &rt2]);
}

#[test]
fn an_empty_or_missing_refresh_token_in_a_reply_or_a_failure_never_blanks_the_stored_one() {
    let env = ticketed();
    import(&env, 1);
    let (a, rt1) = (appid(1), refresh_token(1));
    run(&env, "refresh", 0);
    let replies = [
        r#"{"authorizer_access_token":"AT-empty-rt","expires_in":7200,"authorizer_refresh_token":""}"#,
        r#"{"authorizer_access_token":"AT-null-rt","expires_in":7200,"authorizer_refresh_token":null}"#,
        r#"{"authorizer_access_token":"AT-no-rt","expires_in":7200}"#,
    ];
    for reply in replies {
        env.api
            .push_for(AUTHORIZER_TOKEN, &a, Reply::Body(reply.to_string()));
        force(&env, &a, "").assert_code(0);
        assert_eq!(sent_refresh_tokens(&env, &a).last(), Some(&rt1), "{reply}");
    }
    // Failures: a system error that persists, a transport error, a user limit.
    for _ in 0..3 {
        env.api
            .push_for(AUTHORIZER_TOKEN, &a, Reply::errcode(-1, "system error"));
    }
    force(&env, &a, "").assert_code(4);
    env.api.push_for(AUTHORIZER_TOKEN, &a, Reply::Drop);
    env.api.push_for(AUTHORIZER_TOKEN, &a, Reply::Drop);
    env.api.push_for(AUTHORIZER_TOKEN, &a, Reply::Drop);
    force(&env, &a, "").assert_code(4);
    env.api
        .push_for(AUTHORIZER_TOKEN, &a, Reply::errcode(50002, "user limited"));
    force(&env, &a, "").assert_code(4);
    // The stored refresh token still works, and is still the one sent.
    force(&env, &a, "").assert_code(0);
    let sent = sent_refresh_tokens(&env, &a);
    assert!(sent.iter().all(|s| *s == rt1), "{sent:?}");
    assert!(!rotated(&env, &a));
    let t = get_authorizer(&env, &a).value();
    assert!(env.api.is_valid(&t));
}

#[test]
fn sync_with_an_empty_refresh_token_never_blanks_one() {
    let env = ticketed();
    import(&env, 1);
    import(&env, 2);
    let (a1, a2) = (appid(1), appid(2));
    run(&env, "refresh", 0);
    let list = format!(
        r#"{{"total_count":2,"list":[{{"authorizer_appid":"{a1}","refresh_token":"","auth_time":1}},{{"authorizer_appid":"{a2}","auth_time":1}}]}}"#
    );
    env.api.push_for(AUTHORIZER_LIST, CID, Reply::Body(list));
    let out = run(&env, &format!("authorizer sync --component {CID}"), 0);
    assert_has(&out.stderr, &[&a1, "without a refresh token"]);
    assert_no_secret("sync", &out, &[&refresh_token(1), &refresh_token(2)]);
    run(&env, &format!("refresh --force --component {CID}"), 0);
    assert_eq!(
        sent_refresh_tokens(&env, &a1).last(),
        Some(&refresh_token(1))
    );
    assert_eq!(
        sent_refresh_tokens(&env, &a2).last(),
        Some(&refresh_token(2))
    );
    assert_eq!(token_hits(&env), (2, 4));
}

#[test]
fn refresh_tokens_never_show_in_any_output() {
    let env = ticketed();
    import(&env, 1);
    let a = appid(1);
    env.api.rotate_refresh_token_on_next(CID, &a);
    let mut outs = vec![("refresh -vvv", refresh(&env, "-vvv"))];
    let rt2 = env.api.refresh_token_of(CID, &a).expect("known");
    env.api.push_for(
        AUTHORIZER_TOKEN,
        &a,
        Reply::errcode(61023, "refresh_token is invalid"),
    );
    outs.push(("refresh -vvv 61023", force(&env, &a, "-vvv")));
    let commands = [
        "status",
        "status --json",
        "authorizer list",
        "authorizer list --json",
        "platform list",
        "platform list --json",
        "refresh --dry-run",
        "refresh --json -vvv",
    ];
    for c in commands {
        outs.push((c, env.run(c)));
    }
    outs.push((
        "authorizer sync -vvv",
        env.run(&format!("authorizer sync -vvv --component {CID}")),
    ));
    outs.push((
        "get --json -vvv",
        env.get(&format!("-vvv --json --component {CID} --appid {a}")),
    ));
    for (label, out) in &outs {
        assert_no_secret(
            label,
            out,
            &[&refresh_token(1), &rt2, TICKET, COMPONENT_SECRET],
        );
    }
}

// ---- 6. onboarding ----

#[test]
fn authorizer_add_stores_the_refresh_token_and_the_first_token() {
    let env = running(0);
    let a = appid(77);
    let code = "queryauthcode@@@Hx7Lq2Mz9Wk4";
    env.api.add_auth_code(CID, code, &a);
    let out = env.run_with_stdin(
        &format!("authorizer add --component {CID} --auth-code -"),
        &format!("{code}\n"),
    );
    out.assert_code(0);
    assert_has(&out.stderr, &[&a]);
    let rt = env.api.refresh_token_of(CID, &a).expect("added");
    assert_no_secret("authorizer add", &out, &[code, &rt]);
    assert_eq!(env.api.hits(QUERY_AUTH), 1);
    // The first token serves at once; no api_authorizer_token call was made.
    let t = get_authorizer(&env, &a).value();
    assert_eq!(env.api.live_authorizer_tokens(CID, &a), [t]);
    assert_eq!(token_hits(&env), (1, 0));
    // The refresh token it stored is the one the next refresh sends.
    force(&env, &a, "").assert_code(0);
    assert_eq!(sent_refresh_tokens(&env, &a), [rt]);
    // A used code is refused, and nothing changes.
    let again = env.run_with_stdin(
        &format!("authorizer add --component {CID} --auth-code -"),
        &format!("{code}\n"),
    );
    assert_ne!(again.code, 0);
    assert_no_secret("authorizer add again", &again, &[code]);
}

#[test]
fn authorizer_sync_walks_every_page_adds_updates_and_reports_unlisted() {
    const LISTED: usize = 1_050;
    let env = running(0);
    for i in 0..LISTED {
        env.api.add_authorizer(CID, &appid(i), &refresh_token(i));
    }
    // Known here: two listed ones with stale refresh tokens, one WeChat no longer lists.
    for i in [3, 1_049] {
        let out = env.run_with_stdin(
            &format!("authorizer import --component {CID} --appid {}", appid(i)),
            "rt@@@stale-Qm3Kz8Lw1Xn5\n",
        );
        out.assert_code(0);
    }
    let gone = appid(5_000);
    env.run_with_stdin(
        &format!("authorizer import --component {CID} --appid {gone}"),
        "rt@@@gone-Vb6Hn2Jk9Lp4\n",
    )
    .assert_code(0);
    let out = run(&env, &format!("authorizer sync --component {CID}"), 0);
    assert_eq!(
        env.api.hits(AUTHORIZER_LIST),
        3,
        "1,050 authorizers are 3 pages"
    );
    let offsets: Vec<i64> = env
        .requests_to(AUTHORIZER_LIST)
        .iter()
        .map(|r| body(r)["offset"].as_i64().expect("offset"))
        .collect();
    assert_eq!(offsets, [0, 500, 1000]);
    assert_has(
        &out.stderr,
        &[
            "1050 authorizers listed",
            "1048 added",
            "2 refresh tokens updated",
            "1 known here but no longer listed",
            &gone,
        ],
    );
    let listed = run(
        &env,
        &format!("authorizer list --component {CID} --json"),
        0,
    );
    assert_eq!(listed.stdout.lines().count(), LISTED + 1);
    // The updated ones are refreshed with the listed refresh tokens; the unlisted one is
    // kept as it was.
    for i in [3, 1_049] {
        force(&env, &appid(i), "").assert_code(0);
        assert_eq!(sent_refresh_tokens(&env, &appid(i)), [refresh_token(i)]);
    }
    let out = force(&env, &gone, "");
    out.assert_code(4);
    assert_eq!(
        sent_refresh_tokens(&env, &gone)[0],
        "rt@@@gone-Vb6Hn2Jk9Lp4"
    );
}

#[test]
fn platform_remove_refuses_while_authorizers_exist() {
    let env = running(2);
    let out = env.run(&format!("platform remove --component {CID}"));
    out.assert_one_line_error(2);
    assert_has(&out.stderr, &["--with-authorizers"]);
    assert_eq!(listed(&env, &appid(0))["platform"], CID);
    get_component(&env).value();
    let out = env.run(&format!(
        "platform remove --component {CID} --with-authorizers"
    ));
    out.assert_code(0);
    let list = run(&env, "authorizer list --json", 0);
    assert_eq!(list.stdout, "");
    get_component(&env).assert_no_value(&[]);
    get_authorizer(&env, &appid(0)).assert_no_value(&[]);
}

// ---- 7. get ----

#[test]
fn get_prints_the_component_and_authorizer_tokens() {
    let env = component();
    import(&env, 1);
    let a = appid(1);
    get_component(&env).assert_no_value(&[]);
    set_ticket(&env, TICKET, 60);
    run(&env, "refresh", 0);
    let c = get_component(&env).value();
    assert_eq!(env.api.live_component_tokens(CID), std::slice::from_ref(&c));
    let t = get_authorizer(&env, &a).value();
    assert_eq!(
        env.api.live_authorizer_tokens(CID, &a),
        std::slice::from_ref(&t)
    );
    assert_ne!(c, t);

    let doc = json(&run(&env, &format!("get --component {CID} --json"), 0).stdout);
    assert_eq!(doc["access_token"], c.as_str());
    assert_eq!(doc["component"], CID);
    assert!(
        (7100..=7200).contains(&doc["expires_in"].as_i64().expect("expires_in")),
        "{doc}"
    );
    let doc = json(
        &run(
            &env,
            &format!("get --component {CID} --appid {a} --json"),
            0,
        )
        .stdout,
    );
    assert_eq!(doc["access_token"], t.as_str());
    assert_eq!(doc["component"], CID);
    assert_eq!(doc["appid"], a.as_str());
    // --min-ttl, an unknown authorizer: exit 3.
    env.get(&format!("--component {CID} --min-ttl 3h"))
        .assert_no_value(&[]);
    env.get(&format!("--component {CID} --appid {a} --min-ttl 3h"))
        .assert_no_value(&[]);
    env.get(&format!("--component {CID} --min-ttl 1h")).value();
    get_authorizer(&env, &appid(2)).assert_no_value(&[]);

    // --reject: the engine fetches a new authorizer token, once.
    let out = env.run_with_stdin(
        &format!("get --component {CID} --appid {a} --reject -"),
        &format!("{t}\n"),
    );
    let new = out.value();
    assert_ne!(new, t);
    assert!(env.api.is_valid(&new));
    assert_eq!(token_hits(&env), (1, 2));
    let out = env.run_with_stdin(
        &format!("get --component {CID} --appid {a} --reject -"),
        &format!("{t}\n"),
    );
    assert_eq!(
        out.value(),
        new,
        "a second caller gets the new one without a fetch"
    );
    assert_eq!(token_hits(&env), (1, 2));
    assert_eq!(get_authorizer(&env, &a).value(), new);
    assert_eq!(
        get_component(&env).value(),
        c,
        "the component token is untouched"
    );
}

#[test]
fn an_authorizer_with_tickets_gets_its_jsapi_ticket() {
    let env = ticketed();
    import(&env, 1);
    let a = appid(1);
    let out = env.run(&format!(
        "account set-tickets --corpid {a} --agentid {CID} --ticket jsapi"
    ));
    out.assert_code(0);
    run(&env, "refresh", 0);
    let ticket = env
        .get(&format!("--component {CID} --appid {a} --ticket jsapi"))
        .value();
    let token = get_authorizer(&env, &a).value();
    let sent = env.requests_to(standin::TICKET);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].query["access_token"], token);
    assert!(!ticket.is_empty());
}

// ---- 8. PostgreSQL: a host killed mid-fetch of an authorizer ----

#[test]
fn a_host_killed_mid_fetch_of_an_authorizer_loses_no_refresh_token() {
    let Some(env) = TestEnv::on_postgres() else {
        return;
    };
    let env = component_in(env);
    set_ticket(&env, TICKET, 60);
    import(&env, 1);
    let (a, rt1) = (appid(1), refresh_token(1));
    run(&env, "refresh", 0);
    // WeChat rotates the refresh token in the reply host-a never reads.
    env.api.rotate_refresh_token_on_next(CID, &a);
    env.api.gate(AUTHORIZER_TOKEN);
    let one = ["--force", "--appid"];
    let target = format!("{a}/{CID}");
    let mut host_a = spawn_refresh(
        &env,
        "host-a",
        &format!("{} {target} --claim-ttl 3", one.join(" ")),
    );
    assert!(env.api.wait_for_hits(AUTHORIZER_TOKEN, 2, PATIENCE));
    host_a.kill().expect("SIGKILL host-a");
    let _ = host_a.wait();
    env.api.open_gate(AUTHORIZER_TOKEN);
    // While host-a's lease lives, host-b leaves the authorizer alone...
    let blocked = finish_within(
        spawn_refresh(&env, "host-b", &format!("{} {target}", one.join(" "))),
        RUN_LIMIT,
    );
    assert_has(&blocked.stderr, &["being refreshed by another run"]);
    assert_eq!(env.api.hits(AUTHORIZER_TOKEN), 2);
    // ...and takes it over once the lease has expired, with one fetch.
    let deadline = std::time::Instant::now() + PATIENCE;
    while env.api.hits(AUTHORIZER_TOKEN) < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "host-b never took over"
        );
        std::thread::park_timeout(Duration::from_millis(200));
        let out = finish_within(
            spawn_refresh(&env, "host-b", &format!("{} {target}", one.join(" "))),
            RUN_LIMIT,
        );
        if env.api.hits(AUTHORIZER_TOKEN) == 3 {
            out.assert_code(0);
        }
    }
    assert_eq!(env.api.hits(AUTHORIZER_TOKEN), 3);
    let rt2 = env.api.refresh_token_of(CID, &a).expect("known");
    assert_ne!(rt1, rt2, "the gated request rotated the refresh token");
    // host-b sent the one it had (still accepted) and stored the rotated one it got back.
    assert_eq!(
        sent_refresh_tokens(&env, &a),
        [&rt1, &rt1, &rt1].map(String::clone)
    );
    let t = get_authorizer(&env, &a).value();
    assert!(env.api.is_valid(&t));
    force(&env, &a, "").assert_code(0);
    assert_eq!(sent_refresh_tokens(&env, &a).last(), Some(&rt2));
    assert_eq!(env.query_i64("SELECT count(*) FROM claims"), 0);
}

also_on_postgres!(
    authorizer_add_stores_the_refresh_token_and_the_first_token,
    authorizer_sync_walks_every_page_adds_updates_and_reports_unlisted,
    platform_remove_refuses_while_authorizers_exist,
    get_prints_the_component_and_authorizer_tokens,
    an_authorizer_with_tickets_gets_its_jsapi_ticket,
    a_rejected_component_token_is_refetched_once_per_run_then_each_authorizer_retried_once,
    a_persistent_40001_ends_the_run_after_exactly_one_component_refetch,
    a_persistent_40001_with_more_authorizers_than_workers_still_refetches_once,
    a_refused_refresh_token_is_resynced_once_per_run_and_retried,
    a_61023_that_persists_holds_the_authorizer_which_keeps_serving_its_last_token,
    a_revoked_authorizer_is_held_and_never_called_again,
    a_61004_on_the_component_token_holds_the_platform_and_calls_no_tenant,
    a_61004_on_an_authorizer_call_stops_the_platforms_other_tenants_in_the_run,
    a_system_error_is_retried_with_backoff_within_the_run,
    a_45009_holds_the_authorizer_until_midnight_china_time,
    no_ticket_no_request,
    a_ticket_older_than_12_hours_sends_nothing,
    set_ticket_never_fetches_and_an_older_ticket_never_replaces_a_newer_one,
    the_component_token_is_fetched_once_per_expiry,
    two_concurrent_refreshers_fetch_the_component_token_and_each_authorizer_once,
    fifty_authorizers_are_refreshed_in_one_run_platform_first,
    a_rotated_refresh_token_is_stored_and_used_next_and_the_old_one_kept_until_it_worked,
    an_empty_or_missing_refresh_token_in_a_reply_or_a_failure_never_blanks_the_stored_one,
    sync_with_an_empty_refresh_token_never_blanks_one,
    refresh_tokens_never_show_in_any_output,
);

// ---- 5. errcodes ----

/// A component with a token (7200 s) and `n` authorizers whose tokens have 1200 s left:
/// the next plain `refresh` finds every authorizer due, and not the component.
fn running(n: usize) -> TestEnv {
    let env = ticketed();
    for i in 0..n {
        import(&env, i);
        short_lived(&env, i);
    }
    run(&env, "refresh", 0);
    assert_eq!(token_hits(&env), (1, n));
    env
}

/// A plain `refresh --jobs N` whose first `n` authorizer calls are all held at WeChat
/// until every one of them is in flight: all are made with the token the run started with.
fn with_first_calls_held(env: &TestEnv, n: usize) -> Out {
    let before = env.api.hits(AUTHORIZER_TOKEN);
    env.api.gate(AUTHORIZER_TOKEN);
    let child = env.spawn(&["refresh", "--jobs", &n.to_string()]);
    let all_in = env
        .api
        .wait_for_hits(AUTHORIZER_TOKEN, before + n, PATIENCE);
    env.api.open_gate(AUTHORIZER_TOKEN);
    let out = finish_within(child, RUN_LIMIT);
    assert!(all_in, "the calls never were all in flight: {}", out.stderr);
    out
}

#[test]
fn a_rejected_component_token_is_refetched_once_per_run_then_each_authorizer_retried_once() {
    const N: usize = 5;
    let env = running(N);
    // Another fetcher replaced the component token: WeChat refuses ours with 40001.
    let old = get_component(&env).value();
    env.api.revoke(&old);
    let out = with_first_calls_held(&env, N);
    out.assert_code(0);
    assert_eq!(token_hits(&env), (2, N + 2 * N), "{}", out.stderr);
    let new = get_component(&env).value();
    assert_eq!(
        env.api.live_component_tokens(CID),
        std::slice::from_ref(&new)
    );
    // Each authorizer: one call with the old token, one retry with the new one.
    for i in 0..N {
        let sent: Vec<String> = env
            .requests_to(AUTHORIZER_TOKEN)
            .iter()
            .filter(|r| body(r)["authorizer_appid"] == appid(i))
            .map(|r| r.query["component_access_token"].clone())
            .collect();
        assert_eq!(sent[1..], [old.clone(), new.clone()], "authorizer {i}");
        let t = get_authorizer(&env, &appid(i)).value();
        assert!(env.api.is_valid(&t));
    }
}

#[test]
fn a_persistent_40001_ends_the_run_after_exactly_one_component_refetch() {
    const N: usize = 5;
    let env = running(N);
    let old = get_component(&env).value();
    for i in 0..N {
        // The first call and the one retry after the refetch.
        for _ in 0..2 {
            env.api.push_for(
                AUTHORIZER_TOKEN,
                &appid(i),
                Reply::errcode(
                    40001,
                    "invalid credential, access_token is invalid or not latest",
                ),
            );
        }
    }
    let out = with_first_calls_held(&env, N);
    out.assert_code(4);
    assert_eq!(
        token_hits(&env),
        (2, N + 2 * N),
        "exactly one refetch, one retry each: {}",
        out.stderr
    );
    assert_ne!(get_component(&env).value(), old);
}

#[test]
fn a_persistent_40001_with_more_authorizers_than_workers_still_refetches_once() {
    const N: usize = 8;
    let env = running(N);
    // Every call fails, whichever component token it carries: workers that start after
    // the refetch are refused with the new token, and must not refetch again.
    for _ in 0..2 * N {
        env.api.push(
            AUTHORIZER_TOKEN,
            Reply::errcode(
                40001,
                "invalid credential, access_token is invalid or not latest",
            ),
        );
    }
    let out = refresh(&env, "--jobs 2");
    out.assert_code(4);
    assert_eq!(
        env.api.hits(COMPONENT_TOKEN),
        2,
        "one refetch per run: {}",
        out.stderr
    );
    let calls = env.api.hits(AUTHORIZER_TOKEN) - N;
    assert!(
        (N + 1..=2 * N).contains(&calls),
        "at most one retry each: {calls}"
    );
    env.api.discard_scripts();
}

#[test]
fn a_refused_refresh_token_is_resynced_once_per_run_and_retried() {
    let env = running(3);
    // Authorizers 0 and 1 re-authorized elsewhere: their refresh tokens changed at WeChat.
    let fresh = [
        "rt@@@resynced-0-Kd8Lm3Qz7Xw2",
        "rt@@@resynced-1-Pj4Nc9Vb2Hs6",
    ];
    for (i, rt) in fresh.iter().enumerate() {
        env.api.add_authorizer(CID, &appid(i), rt);
    }
    let out = refresh(&env, "--jobs 4 -vv");
    out.assert_code(0);
    assert_eq!(env.api.hits(AUTHORIZER_LIST), 1, "one sync per run");
    for (i, rt) in fresh.iter().enumerate() {
        let sent = sent_refresh_tokens(&env, &appid(i));
        assert_eq!(
            sent[1..],
            [refresh_token(i), rt.to_string()],
            "authorizer {i}"
        );
        let t = get_authorizer(&env, &appid(i)).value();
        assert!(env.api.is_valid(&t));
    }
    assert_eq!(env.api.hits_for(AUTHORIZER_TOKEN, &appid(2)), 2);
    assert_no_secret(
        "refresh -vv",
        &out,
        &[fresh[0], fresh[1], &refresh_token(0)],
    );
    // The next run uses the synced ones at once.
    for (i, rt) in fresh.iter().enumerate() {
        force(&env, &appid(i), "").assert_code(0);
        let sent = sent_refresh_tokens(&env, &appid(i));
        assert_eq!(sent.last().map(String::as_str), Some(*rt));
    }
    assert_eq!(env.api.hits(AUTHORIZER_LIST), 1);
}

#[test]
fn a_61023_that_persists_holds_the_authorizer_which_keeps_serving_its_last_token() {
    let env = running(2);
    let a = appid(0);
    let last = get_authorizer(&env, &a).value();
    env.api.push_for(
        AUTHORIZER_TOKEN,
        &a,
        Reply::errcode(61023, "refresh_token is invalid"),
    );
    let out = refresh(&env, "");
    out.assert_code(4);
    assert_eq!(
        env.api.hits(AUTHORIZER_LIST),
        1,
        "sync once before giving up"
    );
    assert_eq!(
        env.api.hits_for(AUTHORIZER_TOKEN, &a),
        2,
        "no retry with the same token"
    );
    let line = listed(&env, &a);
    assert_eq!(line["held"], true, "{line}");
    assert_has(line["held_reason"].as_str().unwrap_or(""), &["authoriz"]);
    let status = run(&env, "status", 0);
    assert_has(&status.stdout, &[&a]);
    // The next run skips it: no request at all for it.
    let out = refresh(&env, "");
    out.assert_code(4);
    assert_eq!(env.api.hits_for(AUTHORIZER_TOKEN, &a), 2);
    assert_eq!(env.api.hits(AUTHORIZER_LIST), 1);
    // Its last valid token serves until it expires.
    assert_eq!(get_authorizer(&env, &a).value(), last);
    assert!(env.api.is_valid(&last));
}

#[test]
fn a_revoked_authorizer_is_held_and_never_called_again() {
    let env = running(2);
    let a = appid(0);
    env.api.revoke_authorizer(CID, &a);
    let out = refresh(&env, "");
    out.assert_code(4);
    assert_eq!(env.api.hits_for(AUTHORIZER_TOKEN, &a), 2);
    let line = listed(&env, &a);
    assert_eq!(line["held"], true, "{line}");
    for _ in 0..2 {
        refresh(&env, "").assert_code(4);
    }
    assert_eq!(
        env.api.hits_for(AUTHORIZER_TOKEN, &a),
        2,
        "a revoked authorizer was called"
    );
    // The other one is unaffected.
    assert_eq!(env.api.hits_for(AUTHORIZER_TOKEN, &appid(1)), 2);
    get_authorizer(&env, &appid(1)).value();
}

#[test]
fn a_61004_on_the_component_token_holds_the_platform_and_calls_no_tenant() {
    let env = component();
    for i in 0..5 {
        import(&env, i);
    }
    set_ticket(&env, TICKET, 60);
    env.api.push_for(
        COMPONENT_TOKEN,
        CID,
        Reply::errcode(
            61004,
            "access clientip is not registered, invalid ip 203.0.113.7",
        ),
    );
    let out = refresh(&env, "");
    out.assert_code(4);
    assert_has(&out.stderr, &[CID, "203.0.113.7"]);
    assert_eq!(token_hits(&env), (1, 0), "tenants were called one by one");
    // Held: the next run sends nothing for the platform or its tenants.
    let out = refresh(&env, "");
    out.assert_code(4);
    assert_eq!(token_hits(&env), (1, 0));
    let doc = status_json(&env);
    let held = doc["accounts"]
        .as_array()
        .expect("accounts")
        .iter()
        .find(|a| a["appid"] == CID)
        .map(|a| a["held"].clone());
    assert!(held.is_some_and(|h| !h.is_null()), "{doc}");
}

#[test]
fn a_61004_on_an_authorizer_call_stops_the_platforms_other_tenants_in_the_run() {
    let env = running(5);
    env.api.push(
        AUTHORIZER_TOKEN,
        Reply::errcode(61004, "access clientip is not registered"),
    );
    let out = refresh(&env, "--jobs 1");
    out.assert_code(4);
    assert_eq!(token_hits(&env), (1, 5 + 1), "{}", out.stderr);
}

#[test]
fn a_system_error_is_retried_with_backoff_within_the_run() {
    let env = running(1);
    let a = appid(0);
    env.api
        .push_for(AUTHORIZER_TOKEN, &a, Reply::errcode(-1, "system error"));
    let out = refresh(&env, "");
    out.assert_code(0);
    assert_eq!(env.api.hits_for(AUTHORIZER_TOKEN, &a), 3);
    let t = get_authorizer(&env, &a).value();
    assert!(env.api.is_valid(&t));
}

#[test]
fn a_45009_holds_the_authorizer_until_midnight_china_time() {
    let env = running(1);
    let a = appid(0);
    env.api.push_for(
        AUTHORIZER_TOKEN,
        &a,
        Reply::errcode(45009, "reach max api daily quota limit"),
    );
    refresh(&env, "").assert_code(4);
    let doc = status_json(&env);
    let entry = doc["accounts"]
        .as_array()
        .expect("accounts")
        .iter()
        .find(|x| x["appid"] == a)
        .cloned()
        .unwrap_or_else(|| panic!("{a} not in {doc}"));
    let china = now() + 8 * 3600;
    let midnight = china - china.rem_euclid(86_400) + 86_400 - 8 * 3600;
    let midnight = chrono::DateTime::from_timestamp(midnight, 0).expect("a time");
    let midnight = midnight.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert_eq!(
        entry["held"]["until"],
        format!("until {midnight}"),
        "{entry}"
    );
    refresh(&env, "").assert_code(4);
    assert_eq!(
        env.api.hits_for(AUTHORIZER_TOKEN, &a),
        2,
        "called while held"
    );
}
