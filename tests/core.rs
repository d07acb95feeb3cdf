//! The core behaviour, end to end: the real binary, a real SQLite file in a temp directory
//! and the loopback stand-in for WeChat. Accounts, fetching with retries, `get`, `status`,
//! the database's safety rails, argument handling, and keeping the secret out of every output.

mod support;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use support::standin::{Reply, TOKEN};
use support::{Out, TestEnv, add, add_with, assert_no_secret, json, now, run};

const APPID: &str = "wx1234567890abcdef";
/// Distinctive enough that any 8-character piece of it in an output is a leak, not chance.
const SECRET: &str = "Qx7vSecretK9mWp2LzR4tYh8NbJ3cFdG";
const OTHER_SECRET: &str = "Hj5TnewSecretB6rVc1XkM0wPq3sZe7Y";
/// A 40164 errmsg as WeChat words it.
const IP_ERRMSG: &str = "invalid ip 203.0.113.7 ipv6 ::ffff:203.0.113.7, not in whitelist rid: 1";

// ---- helpers ------------------------------------------------------------------------------

/// `refresh` with extra arguments; the caller checks the outcome.
fn refresh(env: &TestEnv, extra: &[&str]) -> Out {
    env.run(&[&["refresh"], extra].concat())
}

/// `get --appid APPID EXTRA`, through the harness's `get`.
fn get(env: &TestEnv, appid: &str, extra: &[&str]) -> Out {
    env.get(&[&["--appid", appid], extra].concat())
}

/// A fresh environment with one account (APPID, SECRET) and no token yet.
fn with_account() -> TestEnv {
    let env = TestEnv::new();
    add(&env, &["--appid", APPID], SECRET);
    env
}

/// A fresh environment with one account whose newest token is `token`, fetched by `refresh`.
fn with_token(token: &str, expires_in: u64) -> TestEnv {
    let env = with_account();
    env.api.push(TOKEN, Reply::token(token, expires_in));
    refresh(&env, &[]).assert_code(0);
    env
}

/// Queues `replies` for every account, runs `refresh --force`, and returns what it printed.
fn refresh_after(env: &TestEnv, replies: &[Reply]) -> Out {
    for reply in replies {
        env.api.push(TOKEN, reply.clone());
    }
    refresh(env, &["--force"])
}

/// The schema as the store keeps it: every object's definition, in a stable order.
fn schema(env: &TestEnv) -> String {
    if env.is_postgres() {
        return env.query(
            "SELECT line FROM (
                 SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type
                        || ' ' || is_nullable || ' ' || coalesce(column_default, '') AS line
                 FROM information_schema.columns WHERE table_schema = current_schema()
                 UNION ALL SELECT 'index ' || indexname || ': ' || indexdef
                 FROM pg_indexes WHERE schemaname = current_schema()
                 UNION ALL SELECT 'view ' || viewname || ': ' || definition
                 FROM pg_views WHERE schemaname = current_schema()
             ) s ORDER BY line",
        );
    }
    env.query(
        "SELECT type || ' ' || name || ': ' || ifnull(sql, '')
         FROM sqlite_master ORDER BY type, name",
    )
}

/// The schema version: SQLite's `user_version`, PostgreSQL's newest `schema_migrations` row.
fn schema_version(env: &TestEnv) -> i64 {
    if env.is_postgres() {
        env.query_i64("SELECT coalesce(max(version), 0) FROM schema_migrations")
    } else {
        env.query_i64("PRAGMA user_version")
    }
}

/// Whether the store has any table: whether a command created (or migrated) it.
fn store_created(env: &TestEnv) -> bool {
    if env.is_postgres() {
        let sql = "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()";
        env.query_i64(sql) > 0
    } else {
        env.db().exists()
    }
}

/// How `status` and the warnings name the store: the SQLite path, or the PostgreSQL URL in
/// wxtoken's own spelling (user, database, socket directory and port; never a password).
fn store_shown(env: &TestEnv) -> String {
    let Some(pg) = &env.pg else {
        return env.db().display().to_string();
    };
    let dir = pg.server.dir.display().to_string();
    let encoded: String = dir
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!(
        "postgresql://postgres@/{}?host={encoded}&port=5432",
        pg.name
    )
}

/// A usage error: exit 2, nothing on stdout, exactly one line on stderr.
#[track_caller]
fn assert_usage_error(out: &Out, words: &[&str]) {
    out.assert_one_line_error(2).assert_stderr_has(words);
}

fn rfc3339_z(v: &Value) -> DateTime<Utc> {
    let s = v.as_str().unwrap_or_else(|| panic!("not a string: {v}"));
    assert!(s.ends_with('Z'), "not UTC with Z: {s}");
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("not RFC 3339 ({e}): {s}"))
        .with_timezone(&Utc)
}

/// An http:// base on loopback where nothing listens.
fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

// ---- accounts -----------------------------------------------------------------------------

#[test]
fn add_reads_the_secret_from_one_line_of_stdin() {
    let env = TestEnv::new();
    env.api.register(APPID, SECRET);
    let out = add_with(
        &env,
        &["--appid", APPID],
        &format!("  {SECRET}\r\nsecond line\n"),
        0,
    );
    assert_eq!(out.stdout, "");
    out.assert_stderr_has(&["added", APPID, "api token"]);
    // The stand-in knows only SECRET: the fetch proves the stored secret is exactly it.
    refresh(&env, &[]).assert_code(0);
    let requests = env.api.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].query["secret"], SECRET);
    assert_eq!(requests[0].query["appid"], APPID);
}

#[test]
fn add_reads_the_secret_from_a_named_environment_variable() {
    let env = TestEnv::new();
    env.api.register(APPID, SECRET);
    env.set_env("WX_SECRET", SECRET);
    let out = add_with(
        &env,
        &["--appid", APPID, "--secret-env", "WX_SECRET"],
        "",
        0,
    );
    out.assert_stderr_has(&["added", APPID]);
    refresh(&env, &[]).assert_code(0);
    assert_eq!(env.api.requests()[0].query["secret"], SECRET);

    let missing = add_with(&env, &["--appid", "wxother", "--secret-env", "NOPE"], "", 2);
    missing.assert_stderr_has(&["NOPE"]);
}

#[test]
fn the_secret_is_never_an_argument() {
    let env = TestEnv::new();
    let out = env.run(&["account", "add", "--appid", APPID, "--secret", SECRET]);
    assert_usage_error(&out, &["--secret"]);
    let list = run(&env, &["account", "list", "--json"], 0);
    assert_eq!(json(&list.stdout)["accounts"], serde_json::json!([]));
}

#[test]
fn list_shows_accounts_with_masked_secrets() {
    let env = TestEnv::new();
    add(&env, &["--appid", "wxbbb"], SECRET);
    add(&env, &["--appid", "wxaaa"], "short1");
    run(&env, &["account", "disable", "--appid", "wxbbb"], 0);

    let doc = json(&run(&env, &["account", "list", "--json"], 0).stdout);
    let accounts = doc["accounts"].as_array().expect("accounts array");
    let summary: Vec<_> = accounts
        .iter()
        .map(|a| {
            (
                a["appid"].as_str().unwrap(),
                a["api"].as_str().unwrap(),
                a["enabled"].as_bool().unwrap(),
                a["secret"].as_str().unwrap(),
            )
        })
        .collect();
    // Without the key: only that it is encrypted, and with which key.
    let sealed = format!("encrypted:{}", env.kid());
    assert_eq!(
        summary,
        [
            ("wxaaa", "token", true, sealed.as_str()),
            ("wxbbb", "token", false, sealed.as_str()),
        ]
    );

    rfc3339_z(&accounts[0]["updated_at"]);
    let expected = format!(
        "\
ACCOUNT                                  API     ENABLED  SECRET              TICKETS
wxaaa                                    token   yes      {sealed}  -
wxbbb                                    token   no       {sealed}  -
"
    );
    // account list never reads the key file.
    std::fs::remove_file(env.key_file()).expect("remove the key file");
    assert_eq!(run(&env, &["account", "list"], 0).stdout, expected);
}

#[test]
fn adding_an_existing_account_fails_before_reading_the_secret() {
    let env = with_account();
    // Keep stdin open: a binary that waited for a secret would block until the watchdog
    // closes it, then see an empty secret and exit 2, not 6.
    let mut child = env.spawn(&["account", "add", "--appid", APPID]);
    let stdin = child.stdin.take().expect("stdin");
    let (done, watchdog) = mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let _ = watchdog.recv_timeout(Duration::from_secs(20));
        drop(stdin);
    });
    let out = support::wait(child);
    let _ = done.send(());
    holder.join().expect("watchdog");

    out.assert_code(6);
    assert_eq!(out.stdout, "");
    out.assert_stderr_has(&[APPID, "already exists", "set-secret"]);
    assert!(
        !out.stderr.contains("secret for"),
        "prompted for a secret: {}",
        out.stderr
    );
    assert_eq!(env.query_i64("SELECT count(*) FROM accounts"), 1);
}

#[test]
fn an_existing_account_keeps_its_secret_when_added_again() {
    let env = with_account();
    env.api.register(APPID, SECRET);
    add_with(&env, &["--appid", APPID], &format!("{OTHER_SECRET}\n"), 6);
    refresh(&env, &[]).assert_code(0);
    assert_eq!(env.api.requests()[0].query["secret"], SECRET);
}

#[test]
fn an_empty_secret_is_refused() {
    let env = TestEnv::new();
    for stdin in ["", "\n", "   \n"] {
        let out = add_with(&env, &["--appid", APPID], stdin, 2);
        assert_usage_error(&out, &["secret is empty"]);
    }
    env.set_env("EMPTY", "");
    let out = add_with(&env, &["--appid", APPID, "--secret-env", "EMPTY"], "", 2);
    assert_usage_error(&out, &["secret is empty"]);
    let list = run(&env, &["account", "list", "--json"], 0);
    assert_eq!(json(&list.stdout)["accounts"], serde_json::json!([]));
}

#[test]
fn an_empty_or_invalid_appid_is_refused() {
    let env = TestEnv::new();
    let stdin = format!("{SECRET}\n");
    assert_usage_error(&add_with(&env, &["--appid", ""], &stdin, 2), &["empty"]);
    for bad in ["wx 1", "wx/1", "wx\u{e9}1"] {
        let out = add_with(&env, &["--appid", bad], &stdin, 2);
        assert_usage_error(&out, &["not valid"]);
    }
    let long = "w".repeat(129);
    assert_usage_error(&add_with(&env, &["--appid", &long], &stdin, 2), &["appid"]);
    assert_usage_error(&get(&env, "wx 1", &[]), &["not valid"]);
    let list = run(&env, &["account", "list", "--json"], 0);
    assert_eq!(json(&list.stdout)["accounts"], serde_json::json!([]));
}

#[test]
fn disabled_accounts_are_not_refreshed_until_enabled() {
    let env = with_account();
    let out = run(&env, &["account", "disable", "--appid", APPID], 0);
    out.assert_stderr_has(&["disabled", APPID]);

    let all = refresh(&env, &[]);
    all.assert_code(0);
    all.assert_stderr_has(&["refreshed 0 of 0 accounts", "warning: no enabled accounts"]);
    let named = refresh(&env, &["--appid", APPID, "--force"]);
    named.assert_code(6);
    named.assert_stderr_has(&[APPID, "is disabled", "account enable"]);
    assert_eq!(env.api.hits(TOKEN), 0, "a disabled account was fetched");
    let status = run(&env, &["status"], 0);
    assert!(status.stdout.contains("DISABLED"), "{}", status.stdout);

    run(&env, &["account", "enable", "--appid", APPID], 0);
    let out = refresh(&env, &[]);
    out.assert_code(0);
    out.assert_stderr_has(&["refreshed 1 of 1 accounts"]);
    assert_eq!(env.api.hits(TOKEN), 1);
}

#[test]
fn account_commands_on_an_unknown_account_exit_6() {
    let env = with_account();
    for cmd in ["enable", "disable", "remove"] {
        let out = run(&env, &["account", cmd, "--appid", "wxnobody"], 6);
        out.assert_stderr_has(&["no such account", "wxnobody"]);
    }
    let out = env.run_with_stdin(
        &["account", "set-secret", "--appid", "wxnobody"],
        &format!("{SECRET}\n"),
    );
    out.assert_code(6);
    out.assert_stderr_has(&["no such account", "wxnobody"]);
    let out = refresh(&env, &["--appid", "wxnobody"]);
    out.assert_code(6);
    assert_eq!(env.api.hits(TOKEN), 0);
}

#[test]
fn remove_deletes_the_account_and_its_tokens() {
    let env = with_token("TOKEN_to_be_removed", 7200);
    assert_eq!(env.query_i64("SELECT count(*) FROM tokens"), 1);
    let out = run(&env, &["account", "remove", "--appid", APPID], 0);
    out.assert_stderr_has(&["removed", APPID]);

    get(&env, APPID, &[]).assert_no_value(&["no such account"]);
    assert_eq!(env.query_i64("SELECT count(*) FROM tokens"), 0);
    assert_eq!(env.query_i64("SELECT count(*) FROM attempts"), 0);
    run(&env, &["account", "remove", "--appid", APPID], 6);
    // The appid is free again.
    add(&env, &["--appid", APPID], SECRET);
    get(&env, APPID, &[]).assert_no_value(&["no token fetched yet"]);
}

// ---- the secret stays inside ----------------------------------------------------------------

#[test]
fn the_secret_never_appears_in_any_output() {
    let env = TestEnv::new();
    env.set_env("RUST_LOG", "trace");
    env.set_env("WX_SECRET", OTHER_SECRET);
    env.api.register(APPID, SECRET);
    env.api.register("wxsecond", OTHER_SECRET);
    let stdin = format!("{SECRET}\n");
    let echo = format!("<html>GET /cgi-bin/token?appid={APPID}&secret={SECRET}</html>");
    let three = |r: Reply| vec![r.clone(), r.clone(), r];
    let force = ["refresh", "--force"];
    let closed = closed_port_url();
    // (replies queued for APPID, arguments after -vvv, stdin)
    let add_by_env = [
        "account",
        "add",
        "--appid",
        "wxsecond",
        "--secret-env",
        "WX_SECRET",
    ];
    let set_by_env = [
        "account",
        "set-secret",
        "--appid",
        APPID,
        "--secret-env",
        "WX_SECRET",
    ];
    let quoting = Reply::errcode(40125, &format!("invalid appsecret {SECRET}"));
    let slow = Reply::delay(Duration::from_secs(3), Reply::token("late", 7200));
    let no_token = Reply::Body(r#"{"expires_in":7200}"#.into());
    let reject = ["get", "--appid", APPID, "--reject", "NOT_THE_TOKEN"];
    let steps: Vec<(Vec<Reply>, Vec<&str>, &str)> = vec![
        (vec![], vec!["account", "add", "--appid", APPID], &stdin),
        (vec![], add_by_env.to_vec(), ""),
        (vec![], vec!["account", "add", "--appid", APPID], &stdin),
        (vec![], vec!["account", "list"], ""),
        (vec![], vec!["account", "list", "--json"], ""),
        (vec![], vec!["refresh"], ""),
        (vec![], vec!["get", "--appid", APPID], ""),
        (vec![], vec!["get", "--appid", APPID, "--json"], ""),
        (three(Reply::Drop), force.to_vec(), ""),
        (three(Reply::Status(500, echo.clone())), force.to_vec(), ""),
        (three(Reply::Body(echo.clone())), force.to_vec(), ""),
        (vec![Reply::errcode(40164, IP_ERRMSG)], force.to_vec(), ""),
        (vec![quoting], force.to_vec(), ""),
        (vec![no_token], force.to_vec(), ""),
        (vec![slow], vec!["refresh", "--force", "--timeout", "1"], ""),
        (
            vec![],
            vec!["refresh", "--force", "--api-base", &closed],
            "",
        ),
        (vec![], vec!["status"], ""),
        (vec![], vec!["status", "--json"], ""),
        (vec![], reject.to_vec(), ""),
        (
            vec![],
            vec!["account", "set-secret", "--appid", APPID],
            &stdin,
        ),
        (vec![], set_by_env.to_vec(), ""),
        (vec![], vec!["prune"], ""),
        (vec![], vec!["account", "remove", "--appid", APPID], ""),
    ];
    let mut outs = Vec::new();
    for (replies, args, stdin) in steps {
        for reply in replies {
            env.api.push_for(TOKEN, APPID, reply);
        }
        let args = [&["-vvv"], &args[..]].concat();
        outs.push((args.join(" "), env.run_with_stdin(&args, stdin)));
    }

    assert!(
        outs.iter().any(|(_, o)| o.code == 4) && outs.iter().any(|(_, o)| o.code == 0),
        "the scenario should include successes and failures"
    );
    let sent: Vec<_> = env.api.requests().into_iter().map(|r| r.query).collect();
    assert!(
        sent.iter()
            .any(|q| q.get("secret").map(String::as_str) == Some(SECRET)),
        "the secret was never used, so its absence proves nothing"
    );
    for (label, out) in &outs {
        assert_no_secret(label, out, &[SECRET, OTHER_SECRET]);
    }
}

/// A proxy's error page or an errmsg that quotes the secret is shown cut to a bounded length;
/// the cut must not leave a piece of the secret behind.
#[test]
fn a_reply_quoting_the_secret_is_not_shown_in_pieces() {
    // A page that is not JSON is retried (three tries); an errcode is final (one).
    let cases = [
        (
            Reply::Body(format!("<html>{} {SECRET} </html>", "x".repeat(43))),
            3,
        ),
        (
            Reply::errcode(40125, &format!("{}{SECRET} rid: 3", "y".repeat(190))),
            1,
        ),
    ];
    for (reply, tries) in cases {
        let env = with_account();
        let replies = vec![reply.clone(); tries];
        let out = refresh_after(&env, &replies);
        out.assert_code(4);
        assert_no_secret(&format!("{reply:?}"), &out, &[SECRET, OTHER_SECRET]);
        assert_no_secret(
            "status",
            &run(&env, &["status"], 0),
            &[SECRET, OTHER_SECRET],
        );
    }
}

// ---- fetching and get -----------------------------------------------------------------------

#[test]
fn get_prints_exactly_the_fetched_token() {
    let token = "TOKEN_9f8e7d6c5b4a_".repeat(10);
    let env = with_token(&token, 7200);
    let out = get(&env, APPID, &[]);
    out.assert_code(0);
    assert_eq!(out.stdout, format!("{token}\n"));
    assert_eq!(out.stderr, "");
    // Logs go to stderr, however verbose.
    for flags in [&["-v"][..], &["-vvv"]] {
        let out = get(&env, APPID, flags);
        out.assert_code(0);
        assert_eq!(out.stdout, format!("{token}\n"), "with {flags:?}");
    }
    env.set_env("RUST_LOG", "trace");
    assert_eq!(get(&env, APPID, &["-vv"]).stdout, format!("{token}\n"));
}

#[test]
fn refresh_fetches_with_the_stored_credentials_and_reports() {
    let env = with_account();
    let out = refresh(&env, &[]);
    out.assert_code(0);
    assert_eq!(out.stdout, "");
    out.assert_stderr_has(&["refreshed 1 of 1 accounts"]);
    let requests = env.api.requests();
    assert_eq!(requests.len(), 1);
    let q = &requests[0].query;
    assert_eq!(requests[0].method, "GET");
    assert_eq!(q["grant_type"], "client_credential");
    assert_eq!((q["appid"].as_str(), q["secret"].as_str()), (APPID, SECRET));

    // A refresh does what it is told: a token fetched before it started, however young, is
    // fetched again.
    let again = refresh(&env, &[]);
    again.assert_code(0);
    again.assert_stderr_has(&["refreshed 1 of 1 accounts"]);
    assert_eq!(env.api.hits(TOKEN), 2);
    env.api.push(TOKEN, Reply::token("TOKEN_forced", 7200));
    refresh(&env, &["--force"]).assert_code(0);
    assert_eq!(env.api.hits(TOKEN), 3);
    assert_eq!(get(&env, APPID, &[]).stdout, "TOKEN_forced\n");

    // -q: silence on success.
    let quiet = run(&env, &["-q", "refresh", "--force"], 0);
    assert_eq!((quiet.stdout.as_str(), quiet.stderr.as_str()), ("", ""));
}

#[test]
fn get_json_has_every_field() {
    let before = now();
    let env = with_token("TOKEN_json", 7200);
    let out = get(&env, APPID, &["--json"]);
    out.assert_code(0);
    assert_eq!(
        out.stdout.lines().count(),
        1,
        "one JSON object: {}",
        out.stdout
    );
    let doc = json(&out.stdout);
    assert_eq!(doc["appid"], APPID);
    assert_eq!(doc["access_token"], "TOKEN_json");
    let fetched = rfc3339_z(&doc["fetched_at"]).timestamp();
    let expires = rfc3339_z(&doc["expires_at"]).timestamp();
    assert!(
        (before - 1..=now()).contains(&fetched),
        "fetched_at {fetched}"
    );
    assert_eq!(expires - fetched, 7200);
    let left = doc["expires_in"].as_i64().expect("expires_in is a number");
    assert!(
        (7100..=7200).contains(&left),
        "expires_in {left} is what is left now"
    );
}

#[test]
fn min_ttl_refuses_a_token_with_too_little_left() {
    let env = with_token("TOKEN_short", 7200);
    assert_eq!(
        get(&env, APPID, &["--min-ttl", "1h"]).stdout,
        "TOKEN_short\n"
    );
    get(&env, APPID, &["--min-ttl", "3h"]).assert_no_value(&["--min-ttl"]);
    get(&env, APPID, &["--min-ttl", "7201"]).assert_no_value(&["--min-ttl"]);

    let env = with_token("TOKEN_brief", 120);
    assert_eq!(get(&env, APPID, &[]).stdout, "TOKEN_brief\n");
    get(&env, APPID, &["--min-ttl", "5m", "--json"]).assert_no_value(&["--min-ttl"]);
}

#[test]
fn a_bad_duration_is_a_usage_error_naming_it() {
    let env = with_token("TOKEN_x", 7200);
    for bad in ["5x", "-5m", "1.5h", ""] {
        let out = get(&env, APPID, &[&format!("--min-ttl={bad}")]);
        assert_usage_error(&out, &[&format!("'{bad}'")]);
    }
    let out = refresh(&env, &["--if-expiring-within", "soon"]);
    assert_usage_error(&out, &["'soon'"]);
}

#[test]
fn get_without_a_valid_token_exits_3() {
    let env = with_account();
    get(&env, "wxunknown", &[]).assert_no_value(&["no such account"]);
    get(&env, APPID, &[]).assert_no_value(&["no token fetched yet", "refresh"]);
    get(&env, APPID, &["--json"]).assert_no_value(&["no token fetched yet"]);
}

#[test]
fn an_expired_token_is_not_handed_out() {
    let env = with_account();
    let now = now();
    env.execute(&format!(
        "INSERT INTO tokens (account_id, kind, token, expires_in, fetched_at, expires_at)
         SELECT id, 'access_token', 'TOKEN_stale', 7200, {} - 7300, {} - 100
         FROM accounts WHERE appid = '{APPID}'",
        now, now
    ));
    get(&env, APPID, &[]).assert_no_value(&["expired"]);
    let status = run(&env, &["status"], 0);
    assert!(status.stdout.contains("EXPIRED"), "{}", status.stdout);
    // refresh replaces it, and get serves the new one.
    env.api.push(TOKEN, Reply::token("TOKEN_new", 7200));
    refresh(&env, &[]).assert_code(0);
    assert_eq!(get(&env, APPID, &[]).stdout, "TOKEN_new\n");
}

#[test]
fn get_never_writes_to_the_database() {
    let env = with_token("TOKEN_ro", 7200);
    let before = env.written_state();
    for args in [&[][..], &["--json"], &["--min-ttl", "3h"], &["-vvv"]] {
        get(&env, APPID, args);
    }
    get(&env, "wxunknown", &[]).assert_code(3);
    assert!(before == env.written_state(), "get changed the database");

    // Without a database (on PostgreSQL: an empty one), get says so and creates none.
    let fresh = TestEnv::new();
    let missing = if fresh.is_postgres() {
        "schema version 0"
    } else {
        "does not exist"
    };
    let out = get(&fresh, APPID, &[]);
    out.assert_code(5);
    out.assert_stderr_has(&[missing]);
    assert!(!store_created(&fresh), "get created {}", fresh.store());

    // Nor does get --reject, which may write: a mistyped WXTOKEN_DB is refused alike.
    let out = get(&fresh, APPID, &["--reject", "OLD"]);
    out.assert_code(5);
    out.assert_stderr_has(&[missing]);
    assert!(
        !store_created(&fresh),
        "get --reject created {}",
        fresh.store()
    );
    assert_eq!(
        fresh.api.hits(TOKEN),
        0,
        "nothing is fetched without an account"
    );
}

// ---- retries and failures -------------------------------------------------------------------

/// Answers worth retrying, with a word stderr should show once all tries failed.
fn transient_replies() -> Vec<(Reply, &'static str)> {
    vec![
        (
            Reply::Status(502, "<html>502 Bad Gateway</html>".into()),
            "502",
        ),
        (
            Reply::Body("<html>proxy error</html>".into()),
            "not a WeChat answer",
        ),
        (Reply::Empty, "empty body"),
        (Reply::Drop, "network"),
        (Reply::errcode(-1, "system error"), "-1"),
    ]
}

#[test]
fn transient_failures_are_retried_until_one_succeeds() {
    for (reply, _) in transient_replies() {
        let env = with_account();
        let replies = [
            reply.clone(),
            reply.clone(),
            Reply::token("TOKEN_third", 7200),
        ];
        let out = refresh_after(&env, &replies);
        assert_eq!(out.code, 0, "{reply:?}: {}", out.stderr);
        assert_eq!(env.api.hits(TOKEN), 3, "{reply:?}");
        assert_eq!(get(&env, APPID, &[]).stdout, "TOKEN_third\n", "{reply:?}");
    }
}

#[test]
fn transient_failures_give_up_after_three_tries() {
    for (reply, word) in transient_replies() {
        let env = with_account();
        let out = refresh_after(&env, &[reply.clone(), reply.clone(), reply.clone()]);
        assert_eq!(out.code, 4, "{reply:?}: {}", out.stderr);
        assert_eq!(env.api.hits(TOKEN), 3, "{reply:?}");
        out.assert_stderr_has(&[word, APPID, "refreshed 0 of 1 accounts; 1 failed"]);
        get(&env, APPID, &[]).assert_no_value(&["no token fetched yet"]);
    }
}

#[test]
fn permanent_errcodes_fail_at_once_with_a_hint() {
    let cases: [(i64, &str, &[&str]); 6] = [
        (40013, "invalid appid rid: 1", &["appid"]),
        (40125, "invalid appsecret rid: 1", &["set-secret"]),
        (40164, IP_ERRMSG, &["203.0.113.7", "whitelist"]),
        (45009, "reach max api daily quota limit rid: 1", &["quota"]),
        (41002, "appid missing rid: 1", &["missing"]),
        (
            40001,
            "invalid credential, access_token is invalid",
            &["set-secret"],
        ),
    ];
    for (code, errmsg, words) in cases {
        let env = with_account();
        let out = refresh_after(&env, &[Reply::errcode(code, errmsg)]);
        assert_eq!(out.code, 4, "errcode {code}: {}", out.stderr);
        assert_eq!(out.stdout, "");
        assert_eq!(env.api.hits(TOKEN), 1, "errcode {code} was retried");
        let summary = format!("refreshed 0 of 1 accounts; 1 failed: {APPID}({code})");
        out.assert_stderr_has(&[&format!("errcode {code}"), &summary]);
        out.assert_stderr_has(words);
    }
}

#[test]
fn an_unknown_errcode_is_shown_verbatim() {
    let env = with_account();
    let errmsg = "the moon is in the wrong phase rid: 42";
    let out = refresh_after(&env, &[Reply::errcode(12345, errmsg)]);
    out.assert_code(4);
    out.assert_stderr_has(&[&format!("errcode 12345 ({errmsg})")]);
    assert_eq!(env.api.hits(TOKEN), 1);
}

#[test]
fn a_reply_without_access_token_is_invalid_and_not_retried() {
    let env = with_account();
    let out = refresh_after(&env, &[Reply::Body(r#"{"expires_in":7200}"#.into())]);
    out.assert_code(4);
    out.assert_stderr_has(&["invalid reply", "access_token"]);
    assert_eq!(env.api.hits(TOKEN), 1);
}

#[test]
fn a_slow_answer_times_out() {
    let env = with_account();
    let slow = Reply::delay(Duration::from_secs(5), Reply::token("TOKEN_late", 7200));
    for _ in 0..3 {
        env.api.push(TOKEN, slow.clone());
    }
    let out = refresh(&env, &["--timeout", "1"]);
    out.assert_code(4);
    out.assert_stderr_has(&["timed out", APPID]);
    assert_eq!(env.api.hits(TOKEN), 3, "timeouts are retried");
    get(&env, APPID, &[]).assert_no_value(&["no token fetched yet"]);
}

#[test]
fn an_oversized_body_is_refused() {
    let env = with_account();
    for _ in 0..3 {
        env.api.push(TOKEN, Reply::Oversized(64 << 20));
    }
    let out = refresh(&env, &[]);
    out.assert_code(4);
    out.assert_stderr_has(&["larger than", APPID]);
    get(&env, APPID, &[]).assert_no_value(&["no token fetched yet"]);
}

/// With WeChat down or the whitelist changed, every account fails at once: the summary
/// line (what cron mails) names the first ten and counts the rest; each failure keeps its
/// own line, and `--json` lists every account.
#[test]
fn the_summary_line_names_ten_failed_accounts_and_counts_the_rest() {
    let env = TestEnv::new();
    let appids: Vec<String> = (0..12).map(|i| format!("wxfail{i:02}")).collect();
    for appid in &appids {
        add(&env, &["--appid", appid], SECRET);
        env.api
            .push_for(TOKEN, appid, Reply::errcode(40164, IP_ERRMSG));
    }
    let out = refresh(&env, &["--json"]);
    out.assert_code(4);
    let named: Vec<String> = appids[..10].iter().map(|a| format!("{a}(40164)")).collect();
    let summary = format!(
        "refreshed 0 of 12 accounts; 12 failed: {} and 2 more",
        named.join(", ")
    );
    let last = out.stderr.lines().last().unwrap_or_default();
    assert_eq!(last, summary, "{}", out.stderr);
    for appid in &appids {
        out.assert_stderr_has(&[&format!("wxtoken: {appid}: ")]);
    }
    let failed: Vec<String> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("a JSON line"))
        .filter(|l| l["type"] == "account" && l["outcome"] == "failed")
        .map(|l| l["account"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(failed, appids);
}

#[test]
fn one_failing_account_does_not_stop_the_others_nor_lose_its_token() {
    let env = TestEnv::new();
    for appid in ["wxa", "wxb", "wxc"] {
        add(&env, &["--appid", appid], SECRET);
        env.api.push_for(
            TOKEN,
            appid,
            Reply::token(&format!("TOKEN_{appid}_1"), 7200),
        );
    }
    refresh(&env, &[]).assert_code(0);

    for appid in ["wxa", "wxc"] {
        env.api.push_for(
            TOKEN,
            appid,
            Reply::token(&format!("TOKEN_{appid}_2"), 7200),
        );
    }
    env.api
        .push_for(TOKEN, "wxb", Reply::errcode(40164, IP_ERRMSG));
    let out = refresh(&env, &["--force"]);
    out.assert_code(4);
    out.assert_stderr_has(&["refreshed 2 of 3 accounts; 1 failed: wxb(40164)"]);
    assert_eq!(env.api.hits_for(TOKEN, "wxb"), 2);

    assert_eq!(get(&env, "wxa", &[]).stdout, "TOKEN_wxa_2\n");
    assert_eq!(get(&env, "wxb", &[]).stdout, "TOKEN_wxb_1\n");
    assert_eq!(get(&env, "wxc", &[]).stdout, "TOKEN_wxc_2\n");
}

// ---- status -----------------------------------------------------------------------------------

#[test]
fn status_shows_the_database_and_each_accounts_last_attempt() {
    let env = TestEnv::new();
    add(&env, &["--appid", "wxgood"], SECRET);
    add(&env, &["--appid", "wxbad"], SECRET);
    env.api
        .push_for(TOKEN, "wxbad", Reply::errcode(40164, IP_ERRMSG));
    refresh(&env, &[]).assert_code(4);

    let out = run(&env, &["status"], 0);
    let db = store_shown(&env);
    assert!(
        out.stdout.starts_with(&format!("database {db}\n")),
        "{}",
        out.stdout
    );
    let block = |appid: &str| support::status_block(&out.stdout, appid);
    let good = block("wxgood");
    assert!(good.contains("api=token enabled"), "{good}");
    assert!(good.contains("left") && good.contains(": ok"), "{good}");
    let bad = block("wxbad");
    for word in [
        "api=token enabled",
        "no token yet",
        "errcode 40164",
        "203.0.113.7",
        "whitelist",
    ] {
        assert!(bad.contains(word), "{word:?} not in\n{bad}");
    }

    let doc = json(&run(&env, &["status", "--json"], 0).stdout);
    assert_eq!(doc["database"], db.as_str());
    let accounts = doc["accounts"].as_array().expect("accounts");
    let find = |appid: &str| {
        accounts
            .iter()
            .find(|a| a["appid"] == appid)
            .unwrap_or_else(|| panic!("{appid} in {doc}"))
    };
    let (good, bad) = (find("wxgood"), find("wxbad"));
    assert_eq!(
        (good["api"].as_str(), good["enabled"].as_bool()),
        (Some("token"), Some(true))
    );
    assert_eq!(good["last_attempt"]["outcome"], "ok");
    assert_eq!(good["token"]["valid"], true);
    assert_eq!(bad["last_attempt"]["outcome"], "errcode");
    assert_eq!(bad["last_attempt"]["errcode"], 40164);
    assert_eq!(bad["last_attempt"]["errmsg"], IP_ERRMSG);
    let hint = bad["last_attempt"]["hint"].as_str().expect("a hint");
    assert!(
        hint.contains("203.0.113.7") && hint.contains("whitelist"),
        "{hint}"
    );
    assert!(bad["token"].is_null());
}

#[test]
fn status_without_accounts_says_how_to_add_one() {
    let env = TestEnv::new();
    let out = run(&env, &["status"], 0);
    let db = store_shown(&env);
    assert_eq!(
        out.stdout,
        format!("database {db}\nno accounts; add one with `wxtoken account add`\n")
    );
}

// ---- the database -----------------------------------------------------------------------------

#[test]
fn the_database_is_created_private() {
    let env = with_account();
    let mode = std::fs::metadata(env.db())
        .expect("db")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
}

#[test]
fn migrations_run_once() {
    let env = with_account();
    let version = schema_version(&env);
    assert!(version > 0);
    let before = schema(&env);
    let commands: [&[&str]; 6] = [
        &["status"],
        &["account", "list"],
        &["refresh"],
        &["get", "--appid", APPID],
        &["prune"],
        &["status", "--json"],
    ];
    for args in commands {
        run(&env, args, 0);
    }
    assert_eq!(schema_version(&env), version);
    assert_eq!(schema(&env), before);
}

#[test]
fn a_newer_schema_is_refused() {
    let env = with_token("TOKEN_v99", 7200);
    env.execute(if env.is_postgres() {
        "INSERT INTO schema_migrations (version) VALUES (99)"
    } else {
        "PRAGMA user_version = 99"
    });
    let before = schema(&env);
    let attempts: [&[&str]; 4] = [
        &["status"],
        &["get", "--appid", APPID],
        &["refresh", "--force"],
        &["account", "list"],
    ];
    for args in attempts {
        let out = run(&env, args, 5);
        assert_eq!(out.stdout, "", "{args:?}");
        out.assert_stderr_has(&["99", "upgrade wxtoken"]);
    }
    assert_eq!(env.api.hits(TOKEN), 1, "a fetch against a newer schema");
    assert_eq!(schema_version(&env), 99);
    assert_eq!(schema(&env), before);
}

/// A store of another program is refused and left as it was. SQLite: a file with any other
/// table. PostgreSQL, where one database often serves several programs: one whose
/// `accounts` table wxtoken did not make.
#[test]
fn a_store_of_another_program_is_left_untouched() {
    let env = TestEnv::new();
    let (table, refusal) = if env.is_postgres() {
        ("accounts", "did not create")
    } else {
        let conn = rusqlite::Connection::open(env.db()).expect("create");
        drop(conn);
        // Private, as it should be: what is refused here is the content.
        std::fs::set_permissions(env.db(), std::fs::Permissions::from_mode(0o600)).expect("chmod");
        ("notes", "not a wxtoken one")
    };
    env.execute(&format!(
        "CREATE TABLE {table} (body TEXT); INSERT INTO {table} VALUES ('mine');"
    ));
    let before = schema(&env);
    for args in [&["status"][..], &["refresh"], &["account", "list"]] {
        let out = run(&env, args, 5);
        assert_eq!(out.stdout, "", "{args:?}");
        out.assert_stderr_has(&[refusal, &store_shown(&env)]);
    }
    add_with(&env, &["--appid", APPID], &format!("{SECRET}\n"), 5).assert_stderr_has(&[refusal]);
    assert_eq!(schema(&env), before);
    if !env.is_postgres() {
        assert_eq!(env.query_i64("PRAGMA user_version"), 0);
    }
    assert_eq!(env.query(&format!("SELECT body FROM {table}")), "mine");
}

/// A database of an older wxtoken: plain `get` refuses it without touching it, any writing
/// command upgrades it, keeping its accounts and tokens.
#[test]
fn an_older_schema_is_refused_by_get_and_upgraded_by_a_writing_command() {
    let env = with_token("TOKEN_from_v1", 7200);
    // Back to schema version 2. SQLite: what migrations 3 to 9 add, undone (0005's runs
    // table is created IF NOT EXISTS, so it may stay). PostgreSQL: migrations 3 to 7, with
    // the reader view as migration 1 made it.
    env.execute(if env.is_postgres() {
        "DROP INDEX accounts_due; DROP INDEX accounts_asked; DROP INDEX tokens_fetched;
         ALTER TABLE accounts DROP COLUMN due_at;
         DROP TABLE platform_events; DROP TABLE platform_crypto; DROP TABLE platform_tickets;
         DROP INDEX accounts_platform;
         ALTER TABLE accounts DROP COLUMN role; ALTER TABLE accounts DROP COLUMN platform_id;
         ALTER TABLE accounts DROP COLUMN receiver;
         ALTER TABLE account_secrets DROP COLUMN previous;
         DROP VIEW latest_tokens; DROP TABLE intents;
         CREATE VIEW latest_tokens AS
         SELECT a.appid, a.agent, t.kind, t.token, t.expires_in, t.fetched_at, t.expires_at
         FROM accounts a JOIN tokens t ON t.account_id = a.id
         WHERE t.id = (SELECT max(n.id) FROM tokens n
                       WHERE n.account_id = t.account_id AND n.kind = t.kind);
         ALTER TABLE accounts DROP COLUMN fetch_due;
         ALTER TABLE attempts DROP COLUMN clock_offset;
         DROP TABLE sink_published; DROP TABLE sinks; DROP TABLE runs;
         DELETE FROM schema_migrations WHERE version > 2;"
    } else {
        "DROP INDEX accounts_due; DROP INDEX accounts_asked; DROP INDEX tokens_fetched;
         ALTER TABLE accounts DROP COLUMN due_at;
         DROP TABLE platform_events; DROP TABLE platform_crypto; DROP TABLE platform_tickets;
         DROP INDEX accounts_platform;
         ALTER TABLE accounts DROP COLUMN role; ALTER TABLE accounts DROP COLUMN platform_id;
         ALTER TABLE accounts DROP COLUMN previous_secret; ALTER TABLE accounts DROP COLUMN receiver;
         DROP TABLE intents; ALTER TABLE accounts DROP COLUMN fetch_due;
         ALTER TABLE attempts DROP COLUMN clock_offset;
         DROP TABLE sink_published; DROP TABLE sinks; DROP TABLE quota_resets;
         ALTER TABLE accounts DROP COLUMN tickets; PRAGMA user_version = 2;"
    });
    let before = schema(&env);
    let out = get(&env, APPID, &[]);
    out.assert_code(5);
    assert_eq!(out.stdout, "");
    out.assert_stderr_has(&["schema version 2", "run any writing command"]);
    assert_eq!(schema(&env), before, "get changed an older database");

    run(&env, &["status"], 0);
    assert!(schema_version(&env) > 2);
    assert_eq!(get(&env, APPID, &[]).value(), "TOKEN_from_v1");
}

#[test]
fn a_file_that_is_not_sqlite_is_left_untouched() {
    let long: Vec<u8> = b"# my notes, not a database\n".repeat(200);
    for content in [&b"hello, world\n"[..], &long] {
        let env = TestEnv::new();
        std::fs::write(env.db(), content).expect("write");
        // Private, as it should be: what is refused here is the content.
        std::fs::set_permissions(env.db(), std::fs::Permissions::from_mode(0o600)).expect("chmod");
        for args in [&["status"][..], &["get", "--appid", APPID], &["refresh"]] {
            let out = run(&env, args, 5);
            out.assert_stderr_has(&["not an SQLite database", &env.db().display().to_string()]);
        }
        let out = add_with(&env, &["--appid", APPID], &format!("{SECRET}\n"), 5);
        out.assert_stderr_has(&["not an SQLite database"]);
        assert_eq!(std::fs::read(env.db()).expect("read"), content);
    }
}

#[test]
fn a_missing_database_directory_is_named() {
    let env = TestEnv::new();
    let dir = env.dir.join("no-such-dir");
    let db = dir.join("wxtoken.db");
    let db = db.to_str().expect("utf-8 path");
    for args in [&["status"][..], &["account", "list"], &["refresh"]] {
        let out = run(&env, &[&["--db", db], args].concat(), 5);
        out.assert_stderr_has(&[&dir.display().to_string(), "does not exist"]);
    }
    let out = run(&env, &["--db", db, "get", "--appid", APPID], 5);
    out.assert_stderr_has(&[&dir.display().to_string()]);
    assert!(!dir.exists(), "created {}", dir.display());
}

#[test]
fn the_db_flag_beats_the_environment() {
    let env = TestEnv::new();
    // On PostgreSQL the flag names the test's database and the environment an SQLite file
    // (the flag's URL has no password, so it may be on the command line).
    let (flagged, shown, unused) = if env.is_postgres() {
        let unused = env.db();
        env.set_env("WXTOKEN_DB", &unused.display().to_string());
        (env.store(), store_shown(&env), unused)
    } else {
        let flagged = env.dir.join("flagged.db").display().to_string();
        (flagged.clone(), flagged, env.db())
    };
    add(&env, &["--db", &flagged, "--appid", APPID], SECRET);
    if env.is_postgres() {
        assert_eq!(env.query_i64("SELECT count(*) FROM accounts"), 1);
    } else {
        assert!(Path::new(&flagged).exists());
    }
    assert!(!unused.exists(), "WXTOKEN_DB was used despite --db");
    let status = run(&env, &["--db", &flagged, "status"], 0);
    assert!(
        status.stdout.starts_with(&format!("database {shown}\n")),
        "{}",
        status.stdout
    );
    assert!(status.stdout.contains(APPID));
}

// ---- arguments and help -------------------------------------------------------------------------

#[test]
fn bad_arguments_exit_2_with_one_line() {
    let env = with_account();
    let cases: [&[&str]; 10] = [
        &["frobnicate"],
        &[],
        &["get"],
        &["get", "--appid"],
        &["get", "--appid", APPID, "--corpid", "ww1", "--agentid", "1"],
        &["refresh", "--jobs", "0"],
        &["refresh", "--timeout", "0"],
        &["refresh", "--force", "--if-expiring-within", "5m"],
        &["prune", "--keep", "0"],
        &["-q", "-v", "status"],
    ];
    for args in cases {
        assert_usage_error(&env.run(args), &["wxtoken"]);
    }
    assert_eq!(env.api.hits(TOKEN), 0);
}

/// clap words this error over two lines; the one line printed must still say what is missing.
#[test]
fn a_missing_argument_is_named() {
    let env = with_account();
    let cases: [&[&str]; 4] = [
        &["get"],
        &["account", "add"],
        &["account", "remove"],
        &["get", "--corpid", "ww1"],
    ];
    for args in cases {
        let out = env.run(args);
        let missing = if args.contains(&"--corpid") {
            "--agentid"
        } else {
            "--appid"
        };
        assert_usage_error(&out, &[missing]);
    }
}

#[test]
fn every_subcommand_has_help_with_an_example() {
    let env = TestEnv::new();
    let commands: [&[&str]; 13] = [
        &[],
        &["account"],
        &["account", "add"],
        &["account", "list"],
        &["account", "remove"],
        &["account", "enable"],
        &["account", "disable"],
        &["account", "set-secret"],
        &["account", "set-tickets"],
        &["refresh"],
        &["get"],
        &["status"],
        &["prune"],
    ];
    for args in commands {
        if args == ["account"] {
            // A group of subcommands: its help lists them; the examples are one level down.
            let out = env.run(&["account", "--help"]);
            out.assert_code(0);
            assert!(out.stdout.contains("set-secret"), "{}", out.stdout);
            continue;
        }
        let out = env.run(&[args, &["--help"]].concat());
        assert_eq!(out.code, 0, "{args:?}");
        assert!(
            out.stdout.contains("Example"),
            "{args:?} --help:\n{}",
            out.stdout
        );
        assert_eq!(out.stderr, "", "{args:?}");
    }
    assert!(!store_created(&env), "--help touched the database");
}

#[test]
fn the_api_base_flag_beats_the_environment() {
    let env = with_account();
    env.set_env("WXTOKEN_API_BASE", &closed_port_url());
    let out = refresh(&env, &["--api-base", &env.url()]);
    out.assert_code(0);
    assert_eq!(env.api.hits(TOKEN), 1);

    let out = refresh(&env, &["--force"]);
    out.assert_code(4);
    out.assert_stderr_has(&["network error"]);
    assert_eq!(env.api.hits(TOKEN), 1);
}

#[test]
fn an_api_base_that_is_not_a_url_is_a_usage_error() {
    let env = with_account();
    for bad in [
        "api.weixin.qq.com",
        "ftp://example.com",
        "http://",
        "http:// x",
    ] {
        let out = refresh(&env, &["--api-base", bad]);
        assert_usage_error(&out, &["--api-base", "not an http"]);
    }
    env.set_env("WXTOKEN_API_BASE", "localhost:8080");
    assert_usage_error(&refresh(&env, &[]), &["localhost:8080"]);
    assert_eq!(env.api.hits(TOKEN), 0);
}

#[test]
fn a_refresh_with_no_accounts_warns_even_when_quiet() {
    // A cron line with a mistyped WXTOKEN_DB refreshes an empty database: that must show.
    let env = TestEnv::new();
    let out = run(&env, &["-q", "refresh"], 0);
    let db = store_shown(&env);
    out.assert_stderr_has(&["warning: no enabled accounts in", &db, "WXTOKEN_DB"]);
    assert_eq!(env.api.hits(TOKEN), 0);
}

#[test]
fn an_empty_rejected_token_is_a_usage_error() {
    let env = with_account();
    for (args, stdin) in [(&["--reject", ""][..], ""), (&["--reject", "-"][..], "\n")] {
        let out = env.run_with_stdin(&[&["get", "--appid", APPID][..], args].concat(), stdin);
        out.assert_code(2);
        assert_eq!(out.stdout, "");
        out.assert_stderr_has(&["--reject"]);
    }
    assert_eq!(
        env.api.hits(TOKEN),
        0,
        "nothing is fetched for an empty token"
    );
}

#[test]
fn the_default_database_is_under_home_and_get_creates_nothing() {
    let env = TestEnv::new();
    env.unset_env("WXTOKEN_DB");
    let home = env.dir.join("home");
    std::fs::create_dir(&home).expect("home");
    env.set_env("HOME", &home.display().to_string());
    let db = home.join(".local/share/wxtoken/wxtoken.db");

    let out = get(&env, APPID, &[]);
    out.assert_code(5);
    out.assert_stderr_has(&[&db.display().to_string(), "does not exist"]);
    assert!(!home.join(".local").exists(), "get created a directory");

    add(&env, &["--appid", APPID], SECRET);
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(db.parent().unwrap()), 0o700);
    assert_eq!(mode(&db), 0o600);
    let status = run(&env, &["status"], 0);
    assert!(
        status
            .stdout
            .starts_with(&format!("database {}\n", db.display())),
        "{}",
        status.stdout
    );
}

// Every test again on PostgreSQL, but those about the SQLite file itself: its mode, a file
// that is not SQLite, a missing directory, and the default path under HOME.
also_on_postgres!(
    the_summary_line_names_ten_failed_accounts_and_counts_the_rest,
    add_reads_the_secret_from_one_line_of_stdin,
    add_reads_the_secret_from_a_named_environment_variable,
    the_secret_is_never_an_argument,
    list_shows_accounts_with_masked_secrets,
    adding_an_existing_account_fails_before_reading_the_secret,
    an_existing_account_keeps_its_secret_when_added_again,
    an_empty_secret_is_refused,
    an_empty_or_invalid_appid_is_refused,
    disabled_accounts_are_not_refreshed_until_enabled,
    account_commands_on_an_unknown_account_exit_6,
    remove_deletes_the_account_and_its_tokens,
    the_secret_never_appears_in_any_output,
    a_reply_quoting_the_secret_is_not_shown_in_pieces,
    get_prints_exactly_the_fetched_token,
    refresh_fetches_with_the_stored_credentials_and_reports,
    get_json_has_every_field,
    min_ttl_refuses_a_token_with_too_little_left,
    a_bad_duration_is_a_usage_error_naming_it,
    get_without_a_valid_token_exits_3,
    an_expired_token_is_not_handed_out,
    get_never_writes_to_the_database,
    transient_failures_are_retried_until_one_succeeds,
    transient_failures_give_up_after_three_tries,
    permanent_errcodes_fail_at_once_with_a_hint,
    an_unknown_errcode_is_shown_verbatim,
    a_reply_without_access_token_is_invalid_and_not_retried,
    a_slow_answer_times_out,
    an_oversized_body_is_refused,
    one_failing_account_does_not_stop_the_others_nor_lose_its_token,
    status_shows_the_database_and_each_accounts_last_attempt,
    status_without_accounts_says_how_to_add_one,
    migrations_run_once,
    a_newer_schema_is_refused,
    a_store_of_another_program_is_left_untouched,
    an_older_schema_is_refused_by_get_and_upgraded_by_a_writing_command,
    the_db_flag_beats_the_environment,
    bad_arguments_exit_2_with_one_line,
    a_missing_argument_is_named,
    every_subcommand_has_help_with_an_example,
    the_api_base_flag_beats_the_environment,
    an_api_base_that_is_not_a_url_is_a_usage_error,
    a_refresh_with_no_accounts_warns_even_when_quiet,
    an_empty_rejected_token_is_a_usage_error,
);
