//! Quota awareness, end to end: wxtoken's own fetch count in `status`, `quota` against the
//! stand-in's getApiQuota (the foreign-fetcher diagnosis, skipped accounts, errors), and
//! `quota reset` against its clearQuotaByAppSecret (confirmation, the monthly count, the
//! 45009 hold, redaction).

mod support;

use std::process::{Command, Stdio};

use serde_json::Value;
use support::standin::{CLEAR_QUOTA, QUOTA_GET, Reply, Request, STABLE_TOKEN, TOKEN, WORK_TOKEN};
use support::{TestEnv, add, assert_has, assert_no_secret, json, now, run};

const APPID: &str = "wx1234567890abcdef";
/// Distinctive enough that any 8-character piece of it in an output is a leak, not chance.
const SECRET: &str = "Qx7vSecretK9mWp2LzR4tYh8NbJ3cFdG";
const STABLE: &str = "wxfedcba9876543210";
const CORP: &str = "ww7a3c5e9b1d2f4a6c";

// ---- helpers ------------------------------------------------------------------------------

/// An environment with APPID (classic token) and a fresh token fetched by `refresh`.
fn with_token() -> TestEnv {
    let env = TestEnv::new();
    add(&env, &format!("--appid {APPID}"), SECRET);
    run(&env, "refresh", 0);
    env
}

fn account_id(env: &TestEnv, appid: &str) -> i64 {
    env.query_i64(&format!("SELECT id FROM accounts WHERE appid = '{appid}'"))
}

/// A request's JSON body.
#[track_caller]
fn body(request: &Request) -> Value {
    serde_json::from_str(&request.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", request.body))
}

/// The one entry of `quota --json` for `appid`.
#[track_caller]
fn entry(doc: &Value, appid: &str) -> Value {
    let accounts = doc["accounts"].as_array().expect("accounts");
    let found = accounts.iter().find(|a| a["appid"] == appid);
    found
        .unwrap_or_else(|| panic!("no {appid} in {doc}"))
        .clone()
}

/// The date in Beijing (UTC+8) at `unix`: `YYYY-MM-DD`.
fn china_date(unix: i64) -> String {
    let beijing = chrono::FixedOffset::east_opt(8 * 3600).expect("UTC+8");
    let at = chrono::DateTime::from_timestamp(unix, 0).expect("a valid instant");
    at.with_timezone(&beijing).format("%Y-%m-%d").to_string()
}

/// Unix seconds of 00:00 in Beijing on `date` (`YYYY-MM-DD`).
fn china_midnight_on(date: &str) -> i64 {
    let midnight = format!("{date}T00:00:00+08:00");
    chrono::DateTime::parse_from_rfc3339(&midnight)
        .unwrap_or_else(|e| panic!("{midnight}: {e}"))
        .timestamp()
}

/// Midnight China time of the day `unix` falls in there: where WeChat's quota day starts.
/// Written the way a person reads it (the date in Beijing, at 00:00 +08:00), not the way
/// wxtoken computes it.
fn china_midnight_of(unix: i64) -> i64 {
    china_midnight_on(&china_date(unix))
}

/// Midnight China time today.
fn china_midnight() -> i64 {
    china_midnight_of(now())
}

/// Runs `wxtoken ARGS` on a pseudo-terminal (util-linux `script`), typing `answer`.
/// Returns the exit code and everything the terminal showed.
fn run_on_tty(env: &TestEnv, args: &str, answer: &str) -> (i32, String) {
    let wxtoken = env.command(&[]);
    let line = format!("{} {args}", env!("CARGO_BIN_EXE_wxtoken"));
    let mut cmd = Command::new("script");
    cmd.args(["-q", "-e", "-c", &line, "/dev/null"])
        .current_dir(&env.dir)
        .env_clear();
    for (k, v) in wxtoken.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run script(1) from util-linux (bsdutils)");
    let mut stdin = child.stdin.take().expect("stdin");
    std::io::Write::write_all(&mut stdin, answer.as_bytes()).expect("type the answer");
    let out = child.wait_with_output().expect("wait for script");
    drop(stdin);
    let shown =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), shown)
}

// ---- counting -----------------------------------------------------------------------------

#[test]
fn status_counts_todays_fetches_from_the_attempts() {
    // The quota day of fixed instants: 2024-03-01 00:00 in Beijing is 2024-02-29 16:00 UTC.
    for (unix, midnight) in [
        (1_709_222_399, 1_709_136_000), // 2024-02-29 23:59:59 +08:00
        (1_709_222_400, 1_709_222_400), // 2024-03-01 00:00:00 +08:00
        (1_709_308_799, 1_709_222_400), // 2024-03-01 23:59:59 +08:00
        (0, -28_800),                   // 1970-01-01 08:00:00 +08:00
    ] {
        assert_eq!(china_midnight_of(unix), midnight, "{unix}");
    }
    let env = with_token();
    // A busy reply then a token: one attempt of two tries, both sent to WeChat.
    env.api.push(TOKEN, Reply::errcode(-1, "system error"));
    run(&env, "refresh --force", 0);
    // Yesterday's fetches (China time) do not count; a ticket is another API's quota.
    let id = account_id(&env, APPID);
    let yesterday = china_midnight() - 1;
    env.execute(&format!(
        "INSERT INTO attempts (account_id, kind, started_at, duration_ms, tries, outcome)
         VALUES ({id}, 'access_token', {yesterday}, 5, 7, 'ok'), ({id}, 'jsapi', {}, 5, 1, 'ok')",
        now()
    ));

    let out = run(&env, "status", 0);
    let block = support::status_block(&out.stdout, APPID);
    assert_has(
        &block,
        &["fetches today: 3 (wxtoken's own token requests since midnight China time)"],
    );
    let doc = json(&run(&env, "status --json", 0).stdout);
    assert_eq!(doc["accounts"][0]["fetches_today"], 3, "{doc}");

    // A fetch at the first second of the quota day counts.
    env.execute(&format!(
        "INSERT INTO attempts (account_id, kind, started_at, duration_ms, tries, outcome)
         VALUES ({id}, 'access_token', {}, 5, 1, 'ok')",
        china_midnight()
    ));
    let doc = json(&run(&env, "status --json", 0).stdout);
    assert_eq!(doc["accounts"][0]["fetches_today"], 4, "{doc}");
}

#[test]
fn a_forced_stable_refresh_counts_the_call_before_it() {
    let env = TestEnv::new();
    add(&env, &format!("--appid {STABLE} --api stable"), SECRET);
    run(&env, "refresh", 0);
    let token = env.run(&format!("get --appid {STABLE}")).stdout.clone();
    // WeChat hands the rejected token back in normal mode; wxtoken then forces a new one:
    // two calls, of which only the forced one is an attempt.
    let renewed = run(
        &env,
        &format!("get --appid {STABLE} --reject {}", token.trim()),
        0,
    )
    .stdout;
    assert_ne!(renewed, token);
    assert_eq!(env.api.hits(STABLE_TOKEN), 3);
    let doc = json(&run(&env, "status --json", 0).stdout);
    assert_eq!(doc["accounts"][0]["fetches_today"], 3, "{doc}");
    let out = run(&env, "quota", 0);
    assert_has(&out.stdout, &["used 3,", "own fetches today: 3"]);
    assert!(!out.stdout.contains("ANOTHER FETCHER"), "{}", out.stdout);
}

// ---- quota --------------------------------------------------------------------------------

#[test]
fn quota_asks_wechat_with_the_stored_token_and_fetches_none() {
    let env = with_token();
    let token = env.run(&format!("get --appid {APPID}")).stdout.clone();
    let out = run(&env, "quota", 0);
    assert_eq!(
        out.stdout,
        format!(
            "{APPID}  /cgi-bin/token\n    WeChat today: limit 2000, used 1, remaining 1999\n    \
             wxtoken's own fetches today: 1\n"
        )
    );
    assert_eq!(env.api.hits(TOKEN), 1, "the check fetched a token");
    let sent = env.requests_to(QUOTA_GET);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].method, "POST");
    assert_eq!(
        sent[0].query.get("access_token"),
        Some(&token.trim().to_string())
    );
    assert_eq!(body(&sent[0])["cgi_path"], "/cgi-bin/token");

    let doc = json(&run(&env, &format!("quota --appid {APPID} --json"), 0).stdout);
    let e = entry(&doc, APPID);
    assert_eq!(e["cgi_path"], "/cgi-bin/token");
    assert_eq!(e["quota"]["daily_limit"], 2000);
    assert_eq!(e["quota"]["used"], 1);
    assert_eq!(e["quota"]["remain"], 1999);
    assert_eq!(e["own_fetches_today"], 1);
    assert_eq!(e["foreign_fetches"], Value::Null);
    assert_eq!(e["diagnosis"], Value::Null);
}

#[test]
fn another_fetcher_is_named_once_wechat_counts_clearly_more() {
    let env = with_token();
    // Four calls wxtoken did not make: under the threshold of five.
    env.api.add_used(APPID, TOKEN, 4);
    let out = run(&env, "quota", 0);
    assert_has(&out.stdout, &["used 5,", "own fetches today: 1"]);
    assert!(!out.stdout.contains("ANOTHER FETCHER"), "{}", out.stdout);

    env.api.add_used(APPID, TOKEN, 1);
    let out = run(&env, "quota", 0);
    assert_has(
        &out.stdout,
        &[
            "used 6,",
            "ANOTHER FETCHER: WeChat counted 5 more token fetches today than wxtoken made",
            "40001",
            "wxtoken get",
        ],
    );
    assert!(!out.stdout.contains("WARNING"), "{}", out.stdout);
    let doc = json(&run(&env, "quota --json", 0).stdout);
    let e = entry(&doc, APPID);
    assert_eq!(e["near_limit"], false);
    assert_eq!(e["foreign_fetches"], 5);
    assert!(
        e["diagnosis"].as_str().unwrap().contains("another program"),
        "{e}"
    );
}

#[test]
fn quota_warns_near_the_daily_limit() {
    let env = with_token();
    env.api.set_daily_limit(APPID, TOKEN, 10);
    env.api.add_used(APPID, TOKEN, 6);
    let out = run(&env, "quota", 0);
    assert_has(&out.stdout, &["limit 10, used 7, remaining 3"]);
    assert!(!out.stdout.contains("WARNING"), "{}", out.stdout);
    env.api.add_used(APPID, TOKEN, 1);
    let out = run(&env, "quota", 0);
    assert_has(
        &out.stdout,
        &[
            "used 8,",
            "WARNING: 80% of the daily limit used or more",
            "45009",
        ],
    );
    let doc = json(&run(&env, "quota --json", 0).stdout);
    assert_eq!(entry(&doc, APPID)["near_limit"], true);
}

#[test]
fn a_stable_account_is_checked_on_the_stable_path() {
    let env = TestEnv::new();
    add(&env, &format!("--appid {STABLE} --api stable"), SECRET);
    run(&env, "refresh", 0);
    let out = run(&env, "quota", 0);
    assert_has(
        &out.stdout,
        &["/cgi-bin/stable_token", "limit 500000, used 1,"],
    );
    let sent = env.requests_to(QUOTA_GET);
    assert_eq!(body(&sent[0])["cgi_path"], "/cgi-bin/stable_token");
    assert_eq!(env.api.hits(STABLE_TOKEN), 1);
}

#[test]
fn an_account_without_a_valid_token_is_skipped_without_a_fetch() {
    let env = with_token();
    add(&env, "--appid wxnotokenyet000000", SECRET);
    // APPID's token has expired.
    env.execute("UPDATE tokens SET expires_at = fetched_at");
    let out = run(&env, "quota", 3);
    assert_eq!(out.stdout, "");
    for appid in [APPID, "wxnotokenyet000000"] {
        assert_has(
            &out.stderr,
            &[&format!("wxtoken: {appid}: skipped: no valid token stored")],
        );
    }
    assert_has(&out.stderr, &["never fetches one"]);
    assert_eq!(env.api.hits(QUOTA_GET), 0);
    assert_eq!(env.api.hits(TOKEN), 1, "only the first refresh fetched");
    let doc = json(&run(&env, "quota --json", 3).stdout);
    assert_has(
        entry(&doc, APPID)["skipped"].as_str().unwrap(),
        &["no valid token"],
    );
}

#[test]
fn wecom_apps_are_skipped_and_cannot_be_reset() {
    let env = with_token();
    add(&env, &format!("--corpid {CORP} --agentid 1000002"), SECRET);
    run(&env, "refresh", 0);
    assert_eq!(env.api.hits(WORK_TOKEN), 1);

    let out = run(&env, "quota", 0);
    let note = "quota tools are for Official Accounts and Mini Programs";
    assert_has(
        &out.stderr,
        &[&format!("wxtoken: {CORP}/1000002: skipped: "), note],
    );
    assert!(!out.stdout.contains(CORP), "{}", out.stdout);
    assert_eq!(
        env.api.hits(QUOTA_GET),
        1,
        "only the Official Account was checked"
    );
    let doc = json(&run(&env, "quota --json", 0).stdout);
    let e = entry(&doc, CORP);
    assert_eq!(e["agentid"], "1000002");
    assert_has(e["skipped"].as_str().unwrap(), &[note]);

    let out = run(
        &env,
        &format!("quota reset --appid {CORP}/1000002 --yes"),
        2,
    )
    .clone();
    assert_has(&out.stderr, &[note]);
    let out = run(&env, &format!("quota reset --appid {CORP} --yes"), 6);
    assert_has(&out.stderr, &["is a WeCom corp", note]);
    assert_eq!(env.api.hits(CLEAR_QUOTA), 0);
}

/// WeChat says the stored token is dead (another fetcher replaced it): `quota` explains
/// it and records it as `get --reject` would, so `get` stops serving the token (exit 3)
/// and the next refresh fetches the account, although the row said it had time left.
#[test]
fn a_token_quota_finds_dead_is_no_longer_served_and_is_due() {
    let env = with_token();
    let dead = env.get(&["--appid", APPID]).value();
    env.api.push(
        QUOTA_GET,
        Reply::errcode(
            40001,
            "invalid credential, access_token is invalid or not latest",
        ),
    );
    let out = run(&env, "quota", 4);
    assert_has(
        &out.stderr,
        &["errcode 40001", "something else fetched a newer token"],
    );
    env.get(&["--appid", APPID]).assert_no_value(&[APPID]);
    let fetched = env.api.hits(TOKEN);
    run(&env, "refresh", 0);
    assert_eq!(
        env.api.hits(TOKEN),
        fetched + 1,
        "the next refresh fetches it"
    );
    assert_ne!(env.get(&["--appid", APPID]).value(), dead);
    // Another failure of the check says nothing about the token.
    env.api.push(
        QUOTA_GET,
        Reply::errcode(76021, "cgi_path not found, please check"),
    );
    run(&env, "quota", 4);
    env.get(&["--appid", APPID]).value();
}

#[test]
fn quota_errors_are_explained() {
    let env = with_token();
    // (reply, how many tries it takes: a 502 is retried like a busy WeChat, what to say)
    // (40001, which retires the token, has a test of its own.)
    let cases: [(Reply, usize, &[&str]); 3] = [
        (
            Reply::errcode(76021, "cgi_path not found, please check"),
            1,
            &["errcode 76021", "does not know the cgi_path /cgi-bin/token"],
        ),
        (
            Reply::errcode(76022, "could not use this cgi_path, no permission"),
            1,
            &["errcode 76022", "another kind of account"],
        ),
        (
            Reply::Status(502, "<html>bad gateway</html>".into()),
            3,
            &["HTTP status 502"],
        ),
    ];
    for (reply, tries, words) in cases {
        let script = || (0..tries).for_each(|_| env.api.push(QUOTA_GET, reply.clone()));
        script();
        let out = run(&env, "quota", 4);
        assert_eq!(out.stdout, "");
        assert_has(
            &out.stderr,
            &[&format!("wxtoken: {APPID}: quota check failed: ")],
        );
        assert_has(&out.stderr, words);
        script();
        let doc = json(&run(&env, "quota --json", 4).stdout);
        let message = entry(&doc, APPID)["error"]["message"].clone();
        assert_has(message.as_str().unwrap_or_default(), words);
    }
    // -1 is retried with backoff within the run.
    let before = env.api.hits(QUOTA_GET);
    env.api.push(QUOTA_GET, Reply::errcode(-1, "system error"));
    run(&env, "quota", 0);
    assert_eq!(env.api.hits(QUOTA_GET), before + 2);
}

// ---- quota reset --------------------------------------------------------------------------

#[test]
fn a_reset_needs_yes_when_stdin_is_not_a_terminal() {
    let env = with_token();
    let out = env
        .run_with_stdin(&["quota", "reset", "--appid", APPID], "y\n")
        .assert_code(2)
        .clone();
    assert_eq!(out.stdout, "");
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert_has(&out.stderr, &["wxtoken: error: ", "--yes", "10 resets"]);
    assert_eq!(env.api.hits(CLEAR_QUOTA), 0);
    assert_eq!(env.query_i64("SELECT count(*) FROM quota_resets"), 0);
}

#[test]
fn a_reset_asks_on_a_terminal() {
    let env = with_token();
    let (code, shown) = run_on_tty(&env, &format!("quota reset --appid {APPID}"), "n\n");
    assert_eq!(code, 2, "{shown}");
    assert_has(
        &shown,
        &["Reset today's API call counts of", "[y/N]", "not confirmed"],
    );
    assert_eq!(env.api.hits(CLEAR_QUOTA), 0);

    let (code, shown) = run_on_tty(&env, &format!("quota reset --appid {APPID}"), "y\n");
    assert_eq!(code, 0, "{shown}");
    assert_has(
        &shown,
        &["used 0 of this month's 10", "now used 1 of this month's 10"],
    );
    assert_eq!(env.api.hits(CLEAR_QUOTA), 1);
    assert_eq!(env.api.resets(APPID), 1);
}

#[test]
fn a_reset_posts_the_secret_in_the_body_and_counts_the_month() {
    let env = with_token();
    env.api.add_used(APPID, TOKEN, 40);
    let out = run(&env, &format!("quota reset --appid {APPID} --yes"), 0);
    assert_eq!(out.stdout, "");
    assert_has(
        &out.stderr,
        &[
            "reset the API call quota of",
            "now used 1 of this month's 10",
        ],
    );
    assert_eq!(
        env.api.used(APPID, TOKEN),
        0,
        "WeChat's counters were cleared"
    );

    let sent = env.requests_to(CLEAR_QUOTA);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].method, "POST");
    assert!(
        sent[0].query.is_empty(),
        "parameters in the URL: {:?}",
        sent[0].query
    );
    assert_eq!(sent[0].header("content-type"), Some("application/json"));
    let body = body(&sent[0]);
    assert_eq!(body["appid"], APPID);
    assert_eq!(body["appsecret"], SECRET);

    // Last month's resets (China time) and failed ones do not count.
    let month_start = china_midnight_on(&format!("{}-01", &china_date(now())[..7]));
    let id = account_id(&env, APPID);
    env.execute(&format!(
        "INSERT INTO quota_resets (account_id, at, ok, errcode, detail)
         VALUES ({id}, {}, TRUE, NULL, NULL), ({id}, {month_start}, FALSE, 48006, 'refused'),
                ({id}, {month_start}, TRUE, NULL, NULL)",
        month_start - 1
    ));
    let out = run(&env, &format!("quota reset --appid {APPID} --yes"), 0);
    assert_has(&out.stderr, &["now used 3 of this month's 10"]);
    assert_eq!(
        env.query_i64("SELECT count(*) FROM quota_resets WHERE ok = TRUE"),
        4
    );
}

#[test]
fn a_reset_beyond_the_monthly_limit_gets_48006() {
    let env = with_token();
    env.api.set_reset_limit(1);
    run(&env, &format!("quota reset --appid {APPID} --yes"), 0);
    let out = run(&env, &format!("quota reset --appid {APPID} --yes"), 4);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert_has(
        &out.stderr,
        &[
            "wxtoken: error: could not reset the quota of",
            "errcode 48006",
            "this month's 10 quota resets are spent",
            "wxtoken has used 1 of this month's 10 resets",
        ],
    );
    assert_eq!(
        env.query_i64("SELECT count(*) FROM quota_resets WHERE ok = FALSE AND errcode = 48006"),
        1
    );
    // The failed one is not counted: the next message still says 1.
    let out = run(&env, &format!("quota reset --appid {APPID} --yes"), 4);
    assert_has(
        &out.stderr,
        &["wxtoken has used 1 of this month's 10 resets"],
    );
}

#[test]
fn a_reset_releases_the_45009_hold_and_only_that() {
    let env = with_token();
    let other = "wxother00000000000";
    add(&env, &format!("--appid {other}"), SECRET);
    env.api.set_daily_limit(APPID, TOKEN, 1);
    // APPID hits its daily limit; `other` is blocked for an hour after a rejected IP.
    env.api
        .push_for(TOKEN, other, Reply::errcode(89507, "ip blocked for 1 hour"));
    run(&env, "refresh --force", 4);
    let out = run(&env, "refresh", 4);
    assert_has(
        &out.stderr,
        &[&format!("wxtoken: {APPID}: skipped until"), "45009"],
    );
    let fetched = env.api.hits(TOKEN);

    let out = run(&env, &format!("quota reset --appid {APPID} --yes"), 0);
    assert_has(
        &out.stderr,
        &[&format!(
            "released {APPID} from its hold after errcode 45009"
        )],
    );
    let out = run(&env, &format!("quota reset --appid {other} --yes"), 0);
    assert!(!out.stderr.contains("released"), "{}", out.stderr);

    // An hour later (the token is no longer fresh), refresh fetches APPID again.
    env.execute("UPDATE tokens SET fetched_at = fetched_at - 3600");
    let out = run(&env, "refresh", 4);
    assert!(
        !out.stderr.contains(&format!("{APPID}: skipped")),
        "{}",
        out.stderr
    );
    assert_has(
        &out.stderr,
        &[&format!("wxtoken: {other}: skipped until"), "89507"],
    );
    assert_eq!(
        env.api.hits_for(TOKEN, APPID),
        3,
        "APPID fetched again after the reset"
    );
    assert_eq!(env.api.hits(TOKEN), fetched + 1);
    let doc = json(&run(&env, "status --json", 0).stdout);
    let accounts = doc["accounts"].as_array().unwrap();
    let appid = accounts.iter().find(|a| a["appid"] == APPID).unwrap();
    assert_eq!(appid["held"], Value::Null);
    assert_eq!(appid["last_attempt"]["outcome"], "ok");
}

#[test]
fn reset_errors_are_explained_and_never_show_the_secret() {
    let env = with_token();
    let cases: [(Vec<Reply>, &[&str]); 5] = [
        (
            vec![Reply::errcode(
                40125,
                &format!("invalid appsecret {SECRET}"),
            )],
            &["errcode 40125", "set-secret"],
        ),
        (
            vec![Reply::errcode(40001, "invalid credential")],
            &["errcode 40001", "set-secret"],
        ),
        (
            vec![Reply::errcode(40013, "invalid appid")],
            &["errcode 40013", "the appid is invalid"],
        ),
        (
            vec![Reply::Status(502, format!("<html>{SECRET}</html>")); 3],
            &["HTTP status 502"],
        ),
        (
            vec![Reply::Body(format!("<html>appsecret={SECRET}</html>")); 3],
            &["reply is not a WeChat answer"],
        ),
    ];
    for (replies, words) in cases {
        for reply in replies {
            env.api.push(CLEAR_QUOTA, reply);
        }
        let out = run(&env, &format!("-vvv quota reset --appid {APPID} --yes"), 4);
        assert_has(&out.stderr, words);
        assert_no_secret("quota reset", &out, &[SECRET]);
    }
    let details = env.query("SELECT detail FROM quota_resets");
    assert_eq!(details.lines().count(), 5, "{details}");
    assert!(!details.contains(&SECRET[..8]), "{details}");
    assert_eq!(env.api.resets(APPID), 0);

    // WeChat busy: retried with backoff, then reset.
    env.api
        .push(CLEAR_QUOTA, Reply::errcode(-1, "system error"));
    let before = env.api.hits(CLEAR_QUOTA);
    let out = run(&env, &format!("-vvv quota reset --appid {APPID} --yes"), 0);
    assert_eq!(env.api.hits(CLEAR_QUOTA), before + 2);
    assert_no_secret("quota reset", &out, &[SECRET]);
}

// Every behaviour here applies to a shared server; none is left SQLite-only.
also_on_postgres!(
    status_counts_todays_fetches_from_the_attempts,
    a_forced_stable_refresh_counts_the_call_before_it,
    quota_asks_wechat_with_the_stored_token_and_fetches_none,
    another_fetcher_is_named_once_wechat_counts_clearly_more,
    quota_warns_near_the_daily_limit,
    a_stable_account_is_checked_on_the_stable_path,
    an_account_without_a_valid_token_is_skipped_without_a_fetch,
    wecom_apps_are_skipped_and_cannot_be_reset,
    quota_errors_are_explained,
    a_token_quota_finds_dead_is_no_longer_served_and_is_due,
    a_reset_needs_yes_when_stdin_is_not_a_terminal,
    a_reset_asks_on_a_terminal,
    a_reset_posts_the_secret_in_the_body_and_counts_the_month,
    a_reset_beyond_the_monthly_limit_gets_48006,
    a_reset_releases_the_45009_hold_and_only_that,
    reset_errors_are_explained_and_never_show_the_secret,
);
