//! WeCom third-party apps (issue 22): suite tokens only with a fresh suite_ticket, corp
//! tokens from permanent codes on schedule, 代开发 apps, the provider token, and how
//! status, the check, the metrics and `refresh --json` show them. The real binary
//! against the stand-in, on SQLite and (`also_on_postgres!`) on PostgreSQL.

mod support;

use serde_json::Value;
use support::standin::{self, Reply};
use support::{TestEnv, add, assert_has, assert_no_secret, json, now, run};

const SUITE: &str = "wwsuite7a3c5e9b1d2f";
const SUITE_SECRET: &str = "q8Zr4LmW2xTn7VbKc9PdYs3Hfz0Xq";
const TICKET: &str = "u5Jk2NwQ8eRt1YbXm6GzLp4Vaq1w";
const CORP: &str = "wwcorpA1b2c3d4e5f6";
const CORP2: &str = "wwcorpB7g8h9i0j1k2";
const CODE: &str = "k4Jw9Qx2Lm7Rt5Vb8Nc3Hy6PdA0";
const CODE2: &str = "z1Xc4Vb7Nm2As5Df8Gh3Jk6LqB0";
const AUTH_CODE: &str = "Ac0q1w2e3r4t5y6u7i8o9p0a1s2d3f4g5h6j7k8l9z0x1c2v3b4n5m6Q7W8E9R0T";
const DK: &str = "dktemplate5e9b1d2f";
const DK_SECRET: &str = "p3Lk8Jh2Gf5Ds7Aq1Wz4Xc9VbD0";
const PROVIDER: &str = "wwprovider0c1d2e3f";
const PROVIDER_SECRET: &str = "m6Nb3Vc8Xz1Lk4Jh7Gf2DsP0o9";

// ---- helpers ----

/// `platform add --suite SID` with its secret on stdin.
#[track_caller]
fn add_suite(env: &TestEnv, sid: &str, secret: &str) {
    env.api.add_suite(sid, secret);
    let out = env.run_with_stdin(&["platform", "add", "--suite", sid], &format!("{secret}\n"));
    out.assert_code(0);
}

/// Pushes a suite_ticket to the stand-in and stores it with `platform set-ticket`, created
/// `age` seconds ago (wxtoken's clock).
#[track_caller]
fn set_ticket(env: &TestEnv, sid: &str, ticket: &str, age: i64) -> support::Out {
    env.api.push_suite_ticket(sid, ticket);
    let created = (now() - age).to_string();
    let args = [
        "platform",
        "set-ticket",
        "--suite",
        sid,
        "--create-time",
        &created,
    ];
    let out = env.run_with_stdin(&args, &format!("{ticket}\n"));
    out.assert_code(0);
    out
}

/// A suite with a fresh ticket and its token fetched.
#[track_caller]
fn ready_suite(env: &TestEnv, sid: &str, secret: &str) {
    add_suite(env, sid, secret);
    set_ticket(env, sid, TICKET, 0);
    run(env, &format!("refresh --suite {sid}"), 0);
}

/// `authorizer add --suite SID --auth-code -`, the code on stdin (never in argv).
fn onboard(env: &TestEnv, sid: &str, auth_code: &str, extra: &[&str]) -> support::Out {
    let args = [
        &["authorizer", "add", "--suite", sid, "--auth-code", "-"][..],
        extra,
    ]
    .concat();
    env.run_with_stdin(&args, &format!("{auth_code}\n"))
}

/// The entry of `status --json` for this account key (appid, agentid).
#[track_caller]
fn status_of(env: &TestEnv, appid: &str, agent: Option<&str>) -> Value {
    let doc = json(&run(env, "status --json", 0).stdout);
    let accounts = doc["accounts"].as_array().expect("accounts").clone();
    accounts
        .into_iter()
        .find(|a| a["appid"] == appid && a["agentid"].as_str() == agent)
        .unwrap_or_else(|| panic!("{appid} {agent:?} not in status: {doc}"))
}

/// `status --check` with extra arguments: its exit code and line.
fn check(env: &TestEnv, extra: &str) -> (i32, String) {
    let out = env.run(&format!("status --check {extra}"));
    (out.code, out.stdout)
}

/// The `refresh --json` line of an account.
#[track_caller]
fn json_line(stdout: &str, account: &str) -> Value {
    stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON line"))
        .find(|v| v["account"] == account)
        .unwrap_or_else(|| panic!("no line for {account} in:\n{stdout}"))
}

/// A corp's stored permanent code, as the store holds it (sealed).
fn stored_code(env: &TestEnv, corpid: &str) -> String {
    let sql = if env.is_postgres() {
        format!(
            "SELECT s.secret FROM account_secrets s JOIN accounts a ON a.id = s.account_id \
             WHERE a.appid = '{corpid}'"
        )
    } else {
        format!("SELECT secret FROM accounts WHERE appid = '{corpid}'")
    };
    env.query(&sql)
}

/// Every output of a command, for the leak checks.
const SECRETS: [&str; 8] = [
    SUITE_SECRET,
    TICKET,
    CODE,
    CODE2,
    AUTH_CODE,
    DK_SECRET,
    PROVIDER_SECRET,
    "Ac0q1w2e3r4t5y6u7i8o9p0a1s2d3f4g5h6j7k8l9z0x1c2v3b4n5m6Q7W8E9R0T",
];

// ---- 1. the suite ticket ----

/// No valid ticket, no request: the suite waits (status, check, metrics, refresh --json),
/// a ticket past 30 minutes is not used, an older ticket never replaces a newer one, and
/// the current suite token keeps serving while the suite waits.
#[test]
fn suite_token_only_with_a_fresh_ticket() {
    let env = TestEnv::new();
    add_suite(&env, SUITE, SUITE_SECRET);

    // No ticket at all.
    let out = env.run("refresh --json");
    assert_ne!(out.code, 0, "a waiting platform fails the run: {out:?}");
    assert_eq!(env.api.hits(standin::SUITE_TOKEN), 0);
    let line = json_line(&out.stdout, SUITE);
    assert_eq!(line["outcome"], "waiting", "{line}");
    assert_eq!(line["platform_kind"], "suite", "{line}");
    assert_eq!(line["platform"], SUITE, "{line}");
    assert_has(line["error"].as_str().unwrap(), &["suite_ticket"]);
    let s = status_of(&env, SUITE, None);
    assert_eq!(s["state"], "waiting", "{s}");
    assert_eq!(s["platform"]["waiting_for_ticket"], true, "{s}");
    let (code, line) = check(&env, "");
    assert_eq!(code, 2, "{line}");
    assert_has(
        &line,
        &["no suite_ticket yet", "'waiting_for_ticket'=1;;;0"],
    );
    let metrics = run(&env, "metrics", 0).stdout;
    let waiting =
        format!("wxtoken_platform_waiting_for_ticket{{platform=\"{SUITE}\",kind=\"suite\"}} 1\n");
    assert_has(&metrics, &[&waiting]);

    // A ticket created 31 minutes ago is past its validity: still no request.
    set_ticket(&env, SUITE, "Ot1d5u1t3T1ck3tq9w8e7r6t5y", 31 * 60);
    assert_ne!(env.run("refresh").code, 0);
    assert_eq!(env.api.hits(standin::SUITE_TOKEN), 0);
    assert_has(
        &env.status_block(SUITE),
        &["WAITING for a ticket", "31m old"],
    );

    // A fresh one: one request, and the token serves.
    set_ticket(&env, SUITE, TICKET, 60);
    run(&env, "refresh", 0);
    assert_eq!(env.api.hits(standin::SUITE_TOKEN), 1);
    let sent = &env.requests_to(standin::SUITE_TOKEN)[0];
    assert!(sent.body.contains(TICKET), "sent with the newest ticket");
    let token = env.get(&format!("--suite {SUITE}")).value();
    assert_eq!(env.api.live_suite_tokens(SUITE), vec![token.clone()]);
    let (code, line) = check(&env, "");
    assert_eq!(code, 0, "{line}");
    assert_eq!(status_of(&env, SUITE, None)["state"], "ok");

    // An older ticket arriving later is kept out.
    let created = env.query_i64("SELECT create_time FROM platform_tickets");
    let old = (now() - 600).to_string();
    let args = [
        "platform",
        "set-ticket",
        "--suite",
        SUITE,
        "--create-time",
        &old,
    ];
    let out = env.run_with_stdin(&args, "Ol9d3rT1ck3tp0o9i8u7y6t5r\n");
    out.assert_code(0);
    assert_has(&out.stderr, &["kept the stored ticket"]);
    assert_eq!(
        env.query_i64("SELECT create_time FROM platform_tickets"),
        created
    );

    // The ticket turns 25 minutes old: the check warns before any token fails, and is
    // critical past 30, with the thresholds it is given.
    env.execute(&format!(
        "UPDATE platform_tickets SET create_time = {}",
        now() - 25 * 60
    ));
    let (code, line) = check(&env, "");
    assert_eq!(code, 1, "{line}");
    assert_has(&line, &[&format!("{SUITE}: suite_ticket 25m old")]);
    let (code, line) = check(&env, "--ticket-warn 10m --ticket-crit 24m");
    assert_eq!(code, 2, "{line}");
    let (code, line) = check(&env, "--ticket-warn 26m --ticket-crit 40m");
    assert_eq!(code, 0, "{line}");
    let (code, line) = check(&env, "--ticket-warn 30m --ticket-crit 20m");
    assert_eq!(
        code, 3,
        "a --ticket-warn beyond --ticket-crit is a usage error: {line}"
    );

    // Past 30 minutes: the suite waits, sends nothing even when forced, and its current
    // token keeps serving.
    env.execute(&format!(
        "UPDATE platform_tickets SET create_time = {}",
        now() - 31 * 60
    ));
    let out = env.run(&format!("refresh --force --json --suite {SUITE}"));
    assert_ne!(out.code, 0, "{out:?}");
    assert_eq!(json_line(&out.stdout, SUITE)["outcome"], "waiting");
    assert_eq!(
        env.api.hits(standin::SUITE_TOKEN),
        1,
        "no request without a valid ticket"
    );
    assert_eq!(env.get(&format!("--suite {SUITE}")).value(), token);
    let (code, line) = check(&env, "");
    assert_eq!(code, 2, "{line}");
    assert_has(&line, &["waiting for a ticket: suite_ticket 31m old"]);
    let s = status_of(&env, SUITE, None);
    assert_eq!(s["state"], "waiting", "{s}");
    assert_eq!(
        s["platform"]["ticket_age"].as_i64().unwrap() / 60,
        31,
        "{s}"
    );
}

/// 40085 on get_suite_token (WeCom refuses the stored ticket): the suite waits for a newer
/// ticket, sends nothing with the refused one, and fetches as soon as a newer one arrives.
#[test]
fn a_refused_ticket_waits_for_the_next() {
    let env = TestEnv::new();
    add_suite(&env, SUITE, SUITE_SECRET);
    // Stored, young, but never pushed by WeCom: refused.
    let created = (now() - 120).to_string();
    let args = [
        "platform",
        "set-ticket",
        "--suite",
        SUITE,
        "--create-time",
        &created,
    ];
    let out = env.run_with_stdin(&args, "Fo9r3i1g7nT1ck3tz8x7c6v5b4n\n");
    out.assert_code(0);
    assert_ne!(env.run("refresh").code, 0);
    assert_eq!(env.api.hits(standin::SUITE_TOKEN), 1);
    // Stored a while before the refusal (wxtoken's clock has whole seconds).
    env.execute("UPDATE platform_tickets SET received_at = received_at - 60");
    assert_ne!(env.run("refresh").code, 0);
    assert_eq!(
        env.api.hits(standin::SUITE_TOKEN),
        1,
        "not again with the refused ticket"
    );
    assert_eq!(status_of(&env, SUITE, None)["state"], "waiting");
    // WeCom pushes the next one: the next run fetches.
    set_ticket(&env, SUITE, TICKET, 0);
    run(&env, "refresh", 0);
    assert_eq!(env.api.hits(standin::SUITE_TOKEN), 2);
    env.get(&format!("--suite {SUITE}")).value();
    assert_eq!(status_of(&env, SUITE, None)["state"], "ok");
}

/// Storing a ticket never fetches anything.
#[test]
fn set_ticket_never_fetches() {
    let env = TestEnv::new();
    add_suite(&env, SUITE, SUITE_SECRET);
    let out = set_ticket(&env, SUITE, TICKET, 0);
    assert_has(&out.stderr, &["stored the ticket of suite"]);
    assert_no_secret("set-ticket", &out, &SECRETS);
    assert!(env.api.requests().is_empty(), "{:?}", env.api.requests());
}

// ---- 2. corp tokens ----

/// Corp tokens come from get_corp_token with the suite token, on schedule: every corp once
/// per expiry, even with two refreshers at once; nothing when nothing is due; their JS-SDK
/// tickets with `set-tickets`.
#[test]
fn corp_tokens_on_schedule() {
    let env = TestEnv::new();
    ready_suite(&env, SUITE, SUITE_SECRET);
    for (corp, code) in [(CORP, CODE), (CORP2, CODE2)] {
        env.api.add_corp(SUITE, corp, code);
        let args = ["authorizer", "import", "--suite", SUITE, "--corpid", corp];
        env.run_with_stdin(&args, &format!("{code}\n"))
            .assert_code(0);
    }
    // Two refreshers at once, with slow replies: each corp is fetched once.
    env.api.set_latency(std::time::Duration::from_millis(150));
    let a = env.spawn(&["refresh", "--jobs", "4"]);
    let b = env.spawn(&["refresh", "--jobs", "4"]);
    let patience = std::time::Duration::from_secs(60);
    support::finish_within(a, patience).assert_code(0);
    support::finish_within(b, patience).assert_code(0);
    env.api.set_latency(std::time::Duration::ZERO);
    assert_eq!(env.api.hits_for(standin::CORP_TOKEN, CORP), 1);
    assert_eq!(env.api.hits_for(standin::CORP_TOKEN, CORP2), 1);
    assert_eq!(env.api.hits(standin::SUITE_TOKEN), 1);
    let suite_token = env.api.live_suite_tokens(SUITE)[0].clone();
    for req in env.requests_to(standin::CORP_TOKEN) {
        assert_eq!(req.query["suite_access_token"], suite_token);
    }
    let token = env.get(&format!("--suite {SUITE} --corpid {CORP}")).value();
    assert_eq!(env.api.live_corp_tokens(SUITE, CORP), vec![token]);

    // Nothing due: nothing sent.
    let before = env.api.requests().len();
    run(&env, "refresh", 0);
    assert_eq!(env.api.requests().len(), before);

    // The corp's JS-SDK tickets.
    let key = ["--corpid", CORP, "--agentid", SUITE];
    let args = [
        &["account", "set-tickets"][..],
        &key,
        &["--ticket", "jsapi", "--ticket", "agent_config"],
    ]
    .concat();
    run(&env, &args, 0);
    run(&env, "refresh --force", 0);
    let jsapi = env
        .get(&format!("--suite {SUITE} --corpid {CORP} --ticket jsapi"))
        .value();
    let agent = env
        .get(&format!(
            "--suite {SUITE} --corpid {CORP} --ticket agent_config"
        ))
        .value();
    assert_ne!(jsapi, agent);
    let status = status_of(&env, CORP, Some(SUITE));
    assert_eq!(status["of_platform"]["id"], SUITE, "{status}");
    assert_eq!(status["state"], "ok", "{status}");
}

// ---- 3. permanent codes ----

/// `authorizer add --suite` (v2) stores the permanent code sealed, never prints it (not at
/// -vvv either), never blanks it, and `authorizer remove` needs --yes off a terminal.
#[test]
fn permanent_codes_are_kept_and_never_shown() {
    let env = TestEnv::new();
    ready_suite(&env, SUITE, SUITE_SECRET);
    env.api.add_suite_auth_code(SUITE, AUTH_CODE, CORP, CODE);
    let out = onboard(&env, SUITE, AUTH_CODE, &["-vvv"]);
    out.assert_code(0);
    assert_no_secret("authorizer add -vvv", &out, &SECRETS);
    assert_has(&out.stderr, &["added corp", CORP]);
    assert_eq!(env.api.hits(standin::PERMANENT_CODE), 1, "v2");
    assert_eq!(env.api.hits(standin::PERMANENT_CODE_V1), 0);
    let sealed = stored_code(&env, CORP);
    assert!(
        !sealed.is_empty() && !sealed.contains(&CODE[..12]),
        "sealed: {sealed}"
    );

    let out = env.run("refresh -vvv");
    out.assert_code(0);
    assert_no_secret("refresh -vvv", &out, &SECRETS);
    let sent = &env.requests_to(standin::CORP_TOKEN)[0];
    assert!(sent.body.contains(CODE), "the stored code is the one sent");
    let token = env.get(&format!("--suite {SUITE} --corpid {CORP}")).value();
    assert!(env.api.is_valid(&token));
    for cmd in [
        "status",
        "status --json",
        "authorizer list --json",
        "platform list --json",
        "metrics",
        "account list --json",
    ] {
        let out = env.run(cmd);
        out.assert_code(0);
        assert_no_secret(cmd, &out, &SECRETS);
    }

    // An empty code is refused; a failed fetch blanks nothing.
    let args = ["authorizer", "import", "--suite", SUITE, "--corpid", CORP];
    assert_ne!(env.run_with_stdin(&args, "\n").code, 0);
    env.api
        .push_for(standin::CORP_TOKEN, CORP, Reply::errcode(-1, "system busy"));
    env.api
        .push_for(standin::CORP_TOKEN, CORP, Reply::errcode(-1, "system busy"));
    env.api
        .push_for(standin::CORP_TOKEN, CORP, Reply::errcode(-1, "system busy"));
    env.run("refresh --force");
    env.api.discard_scripts();
    let after = stored_code(&env, CORP);
    assert_eq!(after, sealed, "the stored code is untouched");

    // Removing the corp drops a code that cannot be recovered: --yes off a terminal.
    let rm = format!("authorizer remove --suite {SUITE} --corpid {CORP}");
    let out = env.run(&rm);
    out.assert_one_line_error(2);
    assert_has(&out.stderr, &["--yes", "cannot be recovered"]);
    assert_eq!(
        env.query_i64(&format!(
            "SELECT COUNT(*) FROM accounts WHERE appid = '{CORP}'"
        )),
        1
    );
    run(&env, &format!("{rm} --yes"), 0);
    assert_eq!(
        env.query_i64(&format!(
            "SELECT COUNT(*) FROM accounts WHERE appid = '{CORP}'"
        )),
        0
    );
}

/// A failed auth-code exchange is recorded and shown by status (and the metrics), never
/// dropped in silence.
#[test]
fn a_failed_install_is_shown() {
    let env = TestEnv::new();
    ready_suite(&env, SUITE, SUITE_SECRET);
    let out = onboard(&env, SUITE, AUTH_CODE, &[]);
    assert_eq!(out.code, 4, "{out:?}");
    assert_no_secret("a failed add", &out, &SECRETS);
    let block = env.status_block(SUITE);
    assert_has(&block, &["last failed event", "create_auth", "40078"]);
    let s = status_of(&env, SUITE, None);
    assert_eq!(
        s["platform"]["last_failed_event"]["event"], "create_auth",
        "{s}"
    );
    let metrics = run(&env, "metrics", 0).stdout;
    assert_has(
        &metrics,
        &["wxtoken_platform_last_failed_event_timestamp_seconds{platform=\""],
    );
}

// ---- 4. errcodes ----

/// 42009 and 40082 on get_corp_token: one refetch of the suite token for the run (shared by
/// the corps), then one retry each.
#[test]
fn a_rejected_suite_token_is_refetched_once() {
    let env = TestEnv::new();
    ready_suite(&env, SUITE, SUITE_SECRET);
    for (corp, code) in [(CORP, CODE), (CORP2, CODE2)] {
        env.api.add_corp(SUITE, corp, code);
        let args = ["authorizer", "import", "--suite", SUITE, "--corpid", corp];
        env.run_with_stdin(&args, &format!("{code}\n"))
            .assert_code(0);
    }
    env.api.push_for(
        standin::CORP_TOKEN,
        CORP,
        Reply::errcode(42009, "suite_access_token expired"),
    );
    env.api.push_for(
        standin::CORP_TOKEN,
        CORP2,
        Reply::errcode(40082, "invalid suite_token"),
    );
    env.api.push_for(
        standin::SUITE_TOKEN,
        SUITE,
        Reply::token("SUITE-TOKEN-REFETCHED", 7200),
    );
    // Both corps' first calls are made with the old suite token: held until both arrive.
    env.api.gate(standin::CORP_TOKEN);
    let child = env.spawn(&["refresh", "--jobs", "2"]);
    let patience = std::time::Duration::from_secs(30);
    assert!(env.api.wait_for_hits(standin::CORP_TOKEN, 2, patience));
    env.api.open_gate(standin::CORP_TOKEN);
    support::finish_within(child, patience).assert_code(0);
    assert_eq!(
        env.api.hits(standin::SUITE_TOKEN),
        2,
        "one refetch for both corps"
    );
    assert_eq!(env.api.hits_for(standin::CORP_TOKEN, CORP), 2);
    assert_eq!(env.api.hits_for(standin::CORP_TOKEN, CORP2), 2);
    let retried: Vec<String> = (env.requests_to(standin::CORP_TOKEN).iter())
        .map(|r| r.query["suite_access_token"].clone())
        .collect();
    assert_eq!(
        retried
            .iter()
            .filter(|t| *t == "SUITE-TOKEN-REFETCHED")
            .count(),
        2,
        "{retried:?}"
    );
    assert_eq!(
        env.get(&format!("--suite {SUITE}")).value(),
        "SUITE-TOKEN-REFETCHED"
    );
    env.get(&format!("--suite {SUITE} --corpid {CORP}")).value();
}

/// 40085 on get_corp_token: the suite's ticket is bad, so its other corps wait; -1 is
/// retried within the run.
#[test]
fn a_bad_ticket_makes_corps_wait_and_busy_is_retried() {
    let env = TestEnv::new();
    ready_suite(&env, SUITE, SUITE_SECRET);
    for (corp, code) in [(CORP, CODE), (CORP2, CODE2)] {
        env.api.add_corp(SUITE, corp, code);
        let args = ["authorizer", "import", "--suite", SUITE, "--corpid", corp];
        env.run_with_stdin(&args, &format!("{code}\n"))
            .assert_code(0);
    }
    env.api.push(
        standin::CORP_TOKEN,
        Reply::errcode(40085, "invalid suite_ticket"),
    );
    let out = env.run("refresh --jobs 1 --json");
    assert_ne!(out.code, 0);
    assert_eq!(
        env.api.hits(standin::CORP_TOKEN),
        1,
        "the other corp is not called"
    );
    let outcomes: Vec<String> = [CORP, CORP2]
        .iter()
        .map(|c| json_line(&out.stdout, &format!("{c}/{SUITE}"))["outcome"].to_string())
        .collect();
    assert!(
        outcomes.contains(&"\"waiting\"".to_string()),
        "{outcomes:?}"
    );

    // -1: retried in the same run.
    env.api
        .push_for(standin::CORP_TOKEN, CORP, Reply::errcode(-1, "system busy"));
    run(&env, "refresh", 0);
    env.get(&format!("--suite {SUITE} --corpid {CORP}")).value();
    env.get(&format!("--suite {SUITE} --corpid {CORP2}"))
        .value();
}

/// 40084 (a refused permanent code) and 48004 (the corp cancelled): the corp is held as
/// needs-reauth or revoked, skipped by later runs, and shown as such.
#[test]
fn refused_and_cancelled_corps_are_held() {
    let env = TestEnv::new();
    ready_suite(&env, SUITE, SUITE_SECRET);
    for (corp, code) in [(CORP, CODE), (CORP2, CODE2)] {
        env.api.add_corp(SUITE, corp, code);
        let args = ["authorizer", "import", "--suite", SUITE, "--corpid", corp];
        env.run_with_stdin(&args, &format!("{code}\n"))
            .assert_code(0);
    }
    env.api.push_for(
        standin::CORP_TOKEN,
        CORP,
        Reply::errcode(40084, "invalid permanent_code"),
    );
    env.api.cancel_corp(SUITE, CORP2);
    let out = env.run("refresh");
    assert_ne!(out.code, 0);
    let hits = env.api.hits(standin::CORP_TOKEN);
    assert_eq!(hits, 2);
    // Later runs skip both.
    env.run("refresh");
    assert_eq!(
        env.api.hits(standin::CORP_TOKEN),
        hits,
        "held corps are not called"
    );

    let a = status_of(&env, CORP, Some(SUITE));
    assert_eq!(a["state"], "needs_reauth", "{a}");
    let b = status_of(&env, CORP2, Some(SUITE));
    assert_eq!(b["state"], "revoked", "{b}");
    assert_has(
        &env.status_block(&format!("{CORP}/{SUITE}")),
        &["NEEDS RE-AUTHORIZATION"],
    );
    assert_has(&env.status_block(&format!("{CORP2}/{SUITE}")), &["REVOKED"]);
    assert_has(
        &env.status_block(SUITE),
        &["tenants: 2 (2 held: 1 revoked, 1 need re-authorization)"],
    );
    // The refused corp never had a token: critical; the cancelled one only warns.
    let (code, line) = check(&env, &format!("--appid {CORP2}/{SUITE}"));
    assert_eq!(code, 1, "{line}");
    assert_has(&line, &["revoked"]);
    let (code, line) = check(&env, &format!("--appid {CORP}/{SUITE}"));
    assert_eq!(code, 2, "{line}");
    assert_has(&line, &["needs re-authorization"]);
    let metrics = run(&env, "metrics", 0).stdout;
    let label = format!("{{platform=\"{SUITE}\",kind=\"suite\"}}");
    for line in [
        format!("wxtoken_platform_tenants{label} 2\n"),
        format!("wxtoken_platform_tenants_held{label} 2\n"),
        format!("wxtoken_platform_tenants_revoked{label} 1\n"),
        format!("wxtoken_platform_tenants_needs_reauth{label} 1\n"),
        "wxtoken_accounts 3\n".to_string(),
    ] {
        assert_has(&metrics, &[&line]);
    }
    // Tenants have no series of their own.
    assert!(
        !metrics.contains(&format!("account=\"{CORP}/")),
        "{metrics}"
    );
}

// ---- 5. 代开发 ----

/// A 代开发 install stores a WeCom app (corpid, agentid) whose secret is the code, fetched
/// through gettoken; `authorizer reset` replaces that secret.
#[test]
fn customized_apps_are_wecom_apps() {
    let env = TestEnv::new();
    ready_suite(&env, DK, DK_SECRET);
    env.api.add_suite_auth_code(DK, AUTH_CODE, CORP, CODE);
    let out = onboard(&env, DK, AUTH_CODE, &[]);
    out.assert_code(0);
    assert_no_secret("代开发 add", &out, &SECRETS);
    let agent = env.api.agentid_of(DK, CORP).expect("installed").to_string();
    let s = status_of(&env, CORP, Some(&agent));
    assert_eq!(s["api"], "work", "{s}");
    assert_eq!(s["of_platform"]["id"], DK, "{s}");

    run(&env, "refresh", 0);
    assert_eq!(env.api.hits(standin::CORP_TOKEN), 0);
    let sent = &env.requests_to(standin::WORK_TOKEN)[0];
    assert_eq!(sent.query["corpid"], CORP);
    assert_eq!(sent.query["corpsecret"], CODE);
    let token = env
        .get(&format!("--corpid {CORP} --agentid {agent}"))
        .value();
    assert!(env.api.is_valid(&token));

    // reset_permanent_code: a new code; the stand-in retires the old one.
    let reset_code = "Rz9x8c7v6b5n4m3l2k1j0h9g8f7d6s5a4p3o2i1u0y9t8r7e6w5q4Z3X2C1V0B";
    env.api.add_suite_auth_code(DK, reset_code, CORP, CODE2);
    let args = ["authorizer", "reset", "--suite", DK, "--auth-code", "-"];
    let out = env.run_with_stdin(&args, &format!("{reset_code}\n"));
    out.assert_code(0);
    assert_no_secret("reset", &out, &SECRETS);
    assert_no_secret("reset", &out, &[reset_code]);
    run(&env, "refresh", 0);
    let sent = env.requests_to(standin::WORK_TOKEN);
    assert_eq!(sent.len(), 2, "the new secret makes the app due");
    assert_eq!(sent[1].query["corpsecret"], CODE2);
    env.get(&format!("--corpid {CORP} --agentid {agent}"))
        .value();
}

// ---- 6. the provider token ----

#[test]
fn provider_token() {
    let env = TestEnv::new();
    env.api.add_provider(PROVIDER, PROVIDER_SECRET);
    let out = add(
        &env,
        &format!("--provider-corpid {PROVIDER}"),
        PROVIDER_SECRET,
    );
    assert_no_secret("account add", &out, &SECRETS);
    run(&env, "refresh", 0);
    assert_eq!(env.api.hits(standin::PROVIDER_TOKEN), 1);
    let token = env.get(&format!("--provider-corpid {PROVIDER}")).value();
    assert!(env.api.is_valid(&token));
    run(&env, "refresh", 0);
    assert_eq!(env.api.hits(standin::PROVIDER_TOKEN), 1, "nothing due");
    assert_eq!(status_of(&env, PROVIDER, None)["state"], "ok");
}

also_on_postgres!(
    suite_token_only_with_a_fresh_ticket,
    set_ticket_never_fetches,
    a_refused_ticket_waits_for_the_next,
    corp_tokens_on_schedule,
    permanent_codes_are_kept_and_never_shown,
    a_failed_install_is_shown,
    a_rejected_suite_token_is_refetched_once,
    a_bad_ticket_makes_corps_wait_and_busy_is_retried,
    refused_and_cancelled_corps_are_held,
    customized_apps_are_wecom_apps,
    provider_token,
);
