//! Behaviours run against both backends from one body each (`also_on_postgres!`), on an
//! SQLite file and on a PostgreSQL database of a real server that the harness starts (the
//! stand-in crate's `pg`). Accounts, refresh and get, errors and holds, retention, tickets,
//! WeCom and status run on both from tests/core.rs and tests/wecom_tickets.rs, and so do the
//! concurrency, quota, ops and sinks suites. Then what only a shared server has, on
//! PostgreSQL only: refreshers on two hosts, one of them killed mid-fetch or cut off from
//! the database (support/relay.rs), a server restarted mid-run, reader roles, and
//! `store copy` between the backends.
//!
//! Without PostgreSQL installed the PostgreSQL tests print a note and pass; under CI=true
//! they fail instead.

mod support;

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use support::pg::{self, PgDb};
use support::standin::{self, Reply, TOKEN};
use support::{Out, TestEnv, add, assert_no_secret, run, status_block, wait};

const APPID: &str = "wx1234567890abcdef";
const SECRET: &str = "Qx7vSecretK9mWp2LzR4tYh8NbJ3cFdG";
/// Long enough for anything that should happen; only a failing test waits this long.
const PATIENCE: Duration = Duration::from_secs(30);

/// `get --appid APPID ARGS`; the caller checks the outcome.
fn get(env: &TestEnv, args: &[&str]) -> Out {
    env.get(&[&["--appid", APPID], args].concat())
}

#[track_caller]
fn assert_has(out: &Out, words: &[&str]) {
    for w in words {
        assert!(
            out.stderr.contains(w) || out.stdout.contains(w),
            "{w:?} missing\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.stdout,
            out.stderr
        );
    }
}

// ---- the shared behaviours ---------------------------------------------------------------

// Claims, twelve rejecting callers, refresh-ahead and quota run on both backends in
// concurrency.rs and quota.rs; the monitoring runs in ops.rs. What sinks.rs does not check
// yet stays here: a token WeChat hands back unchanged is not published again.

/// An exec sink gets each new token once, after the refresh that fetched it.
#[test]
fn exec_sink() {
    let f = TestEnv::new();
    add(&f, &["--appid", APPID], SECRET);
    let out = f.dir.join("hook.out");
    let hook = format!("cat >> '{}'", out.display());
    run(&f, &["sink", "add", "hook", "--exec", &hook], 0);
    f.api.push(TOKEN, Reply::token("SUNK-1", 7200));
    run(&f, &["refresh"], 0);
    // The second run fetches again and WeChat hands back the same token: nothing new.
    f.api.push(TOKEN, Reply::token("SUNK-1", 7200));
    run(&f, &["refresh"], 0);
    assert_eq!(f.api.hits(TOKEN), 2);
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "SUNK-1\n",
        "once per new token"
    );
    assert_eq!(f.query_i64("SELECT count(*) FROM sink_published"), 1);
    run(&f, &["sink", "remove", "hook"], 0);
    assert_eq!(f.query_i64("SELECT count(*) FROM sinks"), 0);
}
/// The manual's query for reading the SQLite file directly ("Using the token from other
/// languages"), run as written on the file opened read-only, judged by the manual's rules:
/// it agrees with `get --json` (token, and expires_in ±1 s) for a fresh token and for one
/// an unfinished classic fetch caps at 300 s, and finds it unusable past that cap.
#[test]
fn the_readmes_sqlite_query_agrees_with_get() {
    let f = TestEnv::new();
    add(&f, &["--appid", APPID], SECRET);
    f.api.push(TOKEN, Reply::token("FROM-FILE", 7200));
    run(&f, &["refresh"], 0);
    let section =
        support::manual_section("docs/reading.md", "## Using the token from other languages");
    let blocks = support::fenced_blocks(&section, "sql");
    assert_eq!(blocks.len(), 1, "{section}");
    let read = || -> Option<(String, i64)> {
        let uri = format!("file:{}?mode=ro", f.db().display());
        let flags =
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI;
        let conn = rusqlite::Connection::open_with_flags(uri, flags).unwrap();
        let row = conn
            .query_row(
                &blocks[0],
                rusqlite::named_params! {":appid": APPID, ":agent": ""},
                |r| {
                    Ok((
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, Option<i64>>(5)?,
                        r.get::<_, bool>(6)?,
                    ))
                },
            )
            .expect("the manual's query found the newest token");
        let (token, expires_in, fetched_at, expires_at, started_at, classic) = row;
        // The manual's rules, one by one.
        let now = support::now();
        if fetched_at > now + 60 {
            return None;
        }
        let mut end = expires_at.min(fetched_at + expires_in);
        if let (true, Some(started)) = (classic, started_at) {
            end = end.min(started + 300);
        }
        let left = (end - now).min(expires_in);
        (left > 0).then_some((token, left))
    };
    let agree = |what: &str| {
        let (token, left) = read().unwrap_or_else(|| panic!("{what}: no valid token"));
        let doc = support::json(&get(&f, &["--json"]).assert_code(0).stdout);
        assert_eq!(doc["access_token"], token.as_str(), "{what}");
        let want = doc["expires_in"].as_i64().unwrap();
        assert!(
            (left - want).abs() <= 1,
            "{what}: the manual's query {left} s, get {want} s"
        );
        left
    };
    assert!((7190..=7200).contains(&agree("a fresh token")));
    let intent = |ago: i64| {
        f.execute(&format!(
            "DELETE FROM intents;
             INSERT INTO intents (account_id, holder, started_at)
             SELECT id, 'gone-host:1', CAST(strftime('%s', 'now') AS INTEGER) - {ago} FROM accounts"
        ));
    };
    intent(100);
    let left = agree("an unfinished fetch 100 s ago");
    assert!((195..=200).contains(&left), "{left}");
    intent(400);
    assert_eq!(read(), None);
    get(&f, &["--json"]).assert_code(3);
}

// ---- PostgreSQL only ---------------------------------------------------------------------

fn postgres() -> Option<TestEnv> {
    TestEnv::on_postgres()
}

/// Runs `refresh` as a process on `host` (WXTOKEN_HOST), with a claim TTL of `ttl` s.
fn refresher(f: &TestEnv, host: &str, ttl: u32, extra: &[&str]) -> Child {
    let ttl = ttl.to_string();
    let mut cmd = f.command(&[&["refresh", "--claim-ttl", &ttl], extra].concat());
    cmd.env("WXTOKEN_HOST", host)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd.spawn().expect("spawn wxtoken")
}

/// N from refresh's "refreshed N of M accounts".
fn refreshed(out: &Out) -> usize {
    let rest = out
        .stderr
        .split("refreshed ")
        .nth(1)
        .unwrap_or_else(|| panic!("no summary: {}", out.stderr));
    rest.split(' ').next().unwrap().parse().unwrap()
}

#[test]
fn two_hosts_on_one_schedule_make_one_fetch_per_account() {
    let Some(f) = postgres() else { return };
    let appids: Vec<String> = (0..40).map(|i| format!("wx{i:016}")).collect();
    for appid in &appids {
        add(&f, &["--appid", appid], SECRET);
    }
    // Hold the first requests until both hosts have four fetches in flight, so that both
    // are certainly working at once.
    f.api.gate(TOKEN);
    let a = refresher(&f, "host-a", 60, &["-j", "4"]);
    let b = refresher(&f, "host-b", 60, &["-j", "4"]);
    assert!(
        f.api.wait_for_hits(TOKEN, 8, PATIENCE),
        "both hosts never got going"
    );
    f.api.open_gate(TOKEN);
    let (a, b) = (wait(a), wait(b));
    a.assert_code(0);
    b.assert_code(0);
    assert!(
        refreshed(&a) >= 4 && refreshed(&b) >= 4,
        "{}\n{}",
        a.stderr,
        b.stderr
    );
    assert_eq!(refreshed(&a) + refreshed(&b), appids.len());
    assert_eq!(f.api.hits(TOKEN), appids.len(), "one fetch per account");
    for appid in &appids {
        assert_eq!(f.api.hits_for(TOKEN, appid), 1, "{appid}");
    }
    assert_eq!(
        f.query_i64("SELECT count(*) FROM tokens"),
        appids.len() as i64
    );
    assert_eq!(
        f.query_i64("SELECT count(*) FROM claims"),
        0,
        "a claim was left behind"
    );
}

#[test]
fn a_host_killed_mid_fetch_blocks_the_account_only_until_its_claim_expires() {
    let Some(f) = postgres() else { return };
    add(&f, &["--appid", APPID], SECRET);
    f.api.gate(TOKEN);
    let mut a = refresher(&f, "host-a", 6, &[]);
    assert!(
        f.api.wait_for_hits(TOKEN, 1, PATIENCE),
        "host-a never fetched"
    );
    a.kill().expect("SIGKILL host-a");
    let _ = a.wait();
    f.api.open_gate(TOKEN);
    // host-b cannot probe host-a's pid: while the lease lives, the account is busy...
    assert_eq!(
        f.pg.as_ref().unwrap().query("SELECT host FROM claims"),
        "host-a"
    );
    let blocked = wait(refresher(&f, "host-b", 60, &[]));
    assert_has(&blocked, &["being refreshed by another run"]);
    assert_eq!(f.api.hits(TOKEN), 1);
    // ...and host-b fetches it once the lease has expired on the server's clock.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let out = wait(refresher(&f, "host-b", 60, &[]));
        if f.api.hits(TOKEN) == 2 {
            out.assert_code(0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "host-b never took the account over"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(f.query_i64("SELECT count(*) FROM tokens"), 1);
    get(&f, &[]).assert_code(0);
}

/// The intent rule on PostgreSQL: a host killed (-9) while its classic fetch is held at
/// WeChat leaves an intent on the server. Every reader (`get`, `--min-ttl`, `status`, the
/// manual's plain SQL) caps the older token at 300 s after that fetch started, and the next
/// refresh, even one with `--if-expiring-within`, fetches the account first.
#[test]
fn a_host_killed_mid_fetch_caps_the_old_token_at_five_minutes_for_every_reader() {
    let Some(f) = postgres() else { return };
    let db = f.pg.as_ref().unwrap();
    add(&f, &["--appid", APPID], SECRET);
    run(&f, &["refresh"], 0);
    assert!(get_left(&f) > 7000);
    f.api.gate(TOKEN);
    let mut a = refresher(&f, "host-a", 60, &[]);
    assert!(
        f.api.wait_for_hits(TOKEN, 2, PATIENCE),
        "host-a never fetched"
    );
    a.kill().expect("SIGKILL host-a");
    let _ = a.wait();
    f.api.open_gate(TOKEN);
    assert_eq!(f.query_i64("SELECT count(*) FROM intents"), 1);
    let left = get_left(&f);
    assert!((1..=300).contains(&left), "capped at 300 s: {left}");
    let short = get(&f, &["--min-ttl", "301"]);
    short.assert_code(3);
    assert_has(&short, &["less than --min-ttl", "unrecorded fetch"]);
    let block = f.status_block(APPID);
    assert!(block.contains("never recorded"), "{block}");
    let doc = support::json(&run(&f, &["status", "--json"], 0).stdout);
    let listed = doc["accounts"][0]["token"]["expires_in"].as_i64().unwrap();
    assert!(listed <= 300, "{doc}");
    // The manual's SQL for services that read PostgreSQL directly agrees.
    let (_, plain) = readme_read(db, "postgres", &db.name, APPID).expect("a valid token");
    assert!((1..=300).contains(&plain), "plain SQL: {plain}");
    // host-a's own pid is gone, so its next run takes the claim over at once, and fetches
    // the account although its token is not expiring within the minute.
    let next = wait(refresher(&f, "host-a", 60, &["--if-expiring-within", "1m"]));
    next.assert_code(0);
    assert_eq!(f.api.hits(TOKEN), 3);
    assert!(get_left(&f) > 7000);
    assert_eq!(f.query_i64("SELECT count(*) FROM intents"), 0);
}

/// Seconds left by `get --json`.
#[track_caller]
fn get_left(f: &TestEnv) -> i64 {
    let doc = support::json(&get(f, &["--json"]).assert_code(0).stdout);
    doc["expires_in"].as_i64().unwrap()
}

#[test]
fn a_reader_role_gets_tokens_and_nothing_else() {
    let Some(f) = postgres() else { return };
    let db = f.pg.as_ref().unwrap();
    add(&f, &["--appid", APPID], SECRET);
    f.api.push(TOKEN, Reply::token("READ-ME", 7200));
    run(&f, &["refresh"], 0);
    let role = format!("{}_app", db.name);
    db.query(&format!("CREATE ROLE {role} LOGIN"));
    let granted = run(&f, &["store", "grant-reader", &role], 0);
    assert!(
        granted.stdout.contains("GRANT SELECT"),
        "{}",
        granted.stdout
    );
    assert!(!granted.stdout.contains("secret"), "{}", granted.stdout);
    run(&f, &["store", "grant-reader", "no_such_role"], 2);

    let reader_url = db.url.replace("user=postgres", &format!("user={role}"));
    f.set_env("WXTOKEN_DB", &reader_url);
    assert_eq!(get(&f, &[]).assert_code(0).stdout, "READ-ME\n");
    // What the grant allows besides `get`: the accounts, without their secrets, and which
    // of them a refresh would fetch.
    let list = run(&f, &["account", "list"], 0);
    assert!(
        list.stdout.contains(APPID) && list.stdout.contains("(no access)"),
        "{}",
        list.stdout
    );
    assert_no_secret("output", &list, &[SECRET]);
    let dry = run(&f, &["refresh", "--dry-run"], 0);
    assert!(
        dry.stdout.starts_with(&format!("{APPID}  ")),
        "{}",
        dry.stdout
    );
    let json = run(&f, &["refresh", "--dry-run", "--json"], 0);
    let summary = support::json(
        json.stdout
            .lines()
            .last()
            .map(|l| format!("{l}\n"))
            .as_deref()
            .unwrap(),
    );
    assert_eq!(
        (summary["dry_run"].as_bool(), summary["accounts"].as_i64()),
        (Some(true), Some(1))
    );
    // The rest needs a refresher's role: one line that says so and names the missing grant.
    let reject: &[&str] = &["get", "--appid", APPID, "--reject", "READ-ME"];
    for args in [
        &["refresh", "--force"][..],
        &["status"],
        &["status", "--json"],
        &["prune"],
        &["account", "disable", "--appid", APPID],
        reject,
    ] {
        let refused = f.run(args);
        refused.assert_one_line_error(5);
        assert_has(
            &refused,
            &["may only read tokens", "no INSERT on tokens", &role],
        );
    }
    // A command that reads beyond the grant names the table it may not read.
    let metrics = f.run(&["metrics"]);
    metrics.assert_one_line_error(5);
    assert_has(
        &metrics,
        &["permission denied for table runs", "store grant-reader"],
    );
    assert_eq!(f.api.hits(TOKEN), 1, "a reader fetched");
    for sql in [
        "SELECT secret FROM account_secrets",
        "INSERT INTO tokens (account_id, token, expires_in, fetched_at, expires_at) VALUES (1, 'x', 1, 1, 1)",
    ] {
        let (ok, _, err) = db.server.psql_as(&role, &db.name, sql);
        assert!(!ok && err.contains("permission denied"), "{sql}: {err}");
    }
    assert_eq!(db.query("SELECT count(*) FROM tokens"), "1");
}

/// The manual's PostgreSQL section, and its statements and commands outside SQL blocks.
fn readme_pg() -> String {
    support::manual_section("docs/postgres.md", "## PostgreSQL")
}

/// The SQL of `psql -c "..."` in a line of the README.
fn psql_statements(line: &str) -> Vec<String> {
    line.split("-c \"")
        .skip(1)
        .map(|part| part.split('"').next().unwrap().to_string())
        .collect()
}

/// Runs the manual's plain SQL for services that read PostgreSQL directly, exactly as
/// written (a prepared statement binds its `$1`), as `role` on `dbname`: the token and its
/// seconds left, or `None` for no row (no valid token).
#[track_caller]
fn readme_read(db: &PgDb, role: &str, dbname: &str, appid: &str) -> Option<(String, i64)> {
    let blocks = support::fenced_blocks(&readme_pg(), "sql");
    assert_eq!(
        blocks.len(),
        1,
        "the manual's PostgreSQL section has one SQL block"
    );
    let sql = blocks[0].trim().trim_end_matches(';');
    let run = format!("PREPARE readme(text) AS {sql}; EXECUTE readme('{appid}');");
    let (ok, out, err) = db.server.psql_as(role, dbname, &run);
    assert!(ok, "the manual's SQL failed as {role}: {err}");
    assert!(out.lines().count() <= 1, "{out}");
    let (token, left) = out.split_once('|')?;
    Some((token.to_string(), left.parse().expect("expires_in")))
}

/// The manual's PostgreSQL recipes run as written, with only the names changed: the
/// superuser's `psql` lines make the refresher's role and database, the `ALTER ROLE`
/// limits apply to it, wxtoken refreshes as that role, the reader's `psql` and
/// `store grant-reader` lines make a reader, and the manual's plain SQL, run by that reader,
/// returns the token and expires_in (±1 s) that `get --json` gives, also when an
/// unrecorded classic fetch caps the token at 300 s, and no row once that cap has passed.
#[test]
fn the_readmes_postgres_recipes_work_as_written() {
    let Some(f) = postgres() else { return };
    let db = f.pg.as_ref().unwrap();
    let readme = readme_pg();
    // Roles are the server's, not a database's: names of this test's own.
    let writer = format!("{}_wxtoken", db.name);
    let reader = format!("{}_app_reader", db.name);

    // "once, as a PostgreSQL superuser: a database and the roles"
    let setup = &support::fenced_blocks(&readme, "")[0];
    let made: Vec<String> = setup.lines().flat_map(psql_statements).collect();
    assert_eq!(made.len(), 2, "{setup}");
    for sql in made {
        db.server.psql("postgres", &sql.replace("wxtoken", &writer));
    }
    // The server-side limits the manual gives the refresher's role.
    let limits: Vec<&str> = readme
        .split('`')
        .filter(|s| s.starts_with("ALTER ROLE wxtoken SET"))
        .collect();
    assert_eq!(limits.len(), 2, "the manual's ALTER ROLE limits");
    for sql in &limits {
        db.server.psql("postgres", &sql.replace("wxtoken", &writer));
    }
    let (_, shown, _) = db.server.psql_as(
        &writer,
        &writer,
        "SELECT current_setting('statement_timeout') || ' ' || current_setting('idle_in_transaction_session_timeout')",
    );
    assert_eq!(shown, "30s 1min");
    let url = |role: &str| {
        db.server
            .socket_url(&writer)
            .replace("user=postgres", &format!("user={role}"))
    };
    f.set_env("WXTOKEN_DB", &url(&writer));
    add(&f, &["--appid", APPID], SECRET);
    f.api.push(TOKEN, Reply::token("FROM-README", 7200));
    run(&f, &["refresh"], 0);

    // "Readers.": the psql line and the grant-reader command, as written.
    let readers = &readme[readme.find("**Readers.**").expect("a Readers paragraph")..];
    let block = &support::fenced_blocks(readers, "")[0];
    let mut steps = 0;
    for line in block.lines() {
        let line = line.replace("app_reader", &reader);
        for sql in psql_statements(&line) {
            db.server.psql("postgres", &sql);
            steps += 1;
        }
        if let Some((_, args)) = line.split_once(" wxtoken ") {
            let args: Vec<&str> = args.split_whitespace().collect();
            run(&f, &args, 0);
            steps += 1;
        }
    }
    assert_eq!(steps, 2, "{block}");

    let read = |db: &PgDb| readme_read(db, &reader, &writer, APPID);
    f.set_env("WXTOKEN_DB", &url(&reader));
    let get = |code: i32| {
        let out = get(&f, &["--json"]).assert_code(code).clone();
        (code == 0).then(|| {
            let doc = support::json(&out.stdout);
            let token = doc["access_token"].as_str().unwrap().to_string();
            (token, doc["expires_in"].as_i64().unwrap())
        })
    };
    let agree = |what: &str| {
        let (token, left) =
            read(db).unwrap_or_else(|| panic!("{what}: the manual's SQL found no token"));
        let (want, want_left) = get(0).unwrap();
        assert_eq!(token, want, "{what}");
        assert!(
            (left - want_left).abs() <= 1,
            "{what}: the manual's SQL {left} s, get {want_left} s"
        );
        left
    };
    let left = agree("a fresh token");
    assert!((7190..=7200).contains(&left), "{left}");
    // A host died with its classic fetch at WeChat 100 s ago: 200 s left, for both.
    let intent = |ago: i64| {
        db.server.psql(
            &writer,
            &format!(
                "DELETE FROM intents;
                 INSERT INTO intents (account_id, holder, started_at)
                 SELECT id, 'gone-host:1', floor(extract(epoch from now()))::bigint - {ago}
                 FROM accounts"
            ),
        );
    };
    intent(100);
    let left = agree("an unfinished fetch 100 s ago");
    assert!(
        (195..=200).contains(&left),
        "capped at 300 s after the fetch: {left}"
    );
    // 400 s ago: WeChat retired the token 100 s ago; no row, and get has none either.
    intent(400);
    assert_eq!(read(db), None, "the manual's SQL returned a retired token");
    get(3);
}

#[test]
fn a_password_in_a_url_on_the_command_line_is_refused() {
    let Some(f) = postgres() else { return };
    let db = f.pg.as_ref().unwrap();
    let url = db
        .url
        .replace("user=postgres", "user=postgres&password=hunter2secret");
    let out = f.run(&["--db", &url, "status"]);
    out.assert_code(2);
    assert_has(&out, &["ps", "WXTOKEN_DB"]);
    assert!(!out.stderr.contains("hunter2secret"), "{}", out.stderr);
    // The same URL in WXTOKEN_DB works (trust authentication ignores the password), and
    // status shows it without the password.
    f.set_env("WXTOKEN_DB", &url);
    let status = run(&f, &["status"], 0);
    assert!(!status.stdout.contains("hunter2secret") && !status.stderr.contains("hunter2secret"));
}

#[test]
fn store_copy_moves_everything_between_backends_and_refuses_a_full_target() {
    let Some(pg) = postgres() else { return };
    let db = pg.pg.as_ref().unwrap();
    // Build the source on SQLite.
    let lite = TestEnv::new();
    add(&lite, &["--appid", APPID, "--ticket", "jsapi"], SECRET);
    add(&lite, &["--appid", "wxheld00000000000"], SECRET);
    lite.api.push(TOKEN, Reply::token("COPIED", 7200));
    lite.api
        .push(standin::TICKET, Reply::token("COPIED-TICKET", 7200));
    lite.api.push_for(
        TOKEN,
        "wxheld00000000000",
        Reply::errcode(40013, "invalid appid"),
    );
    lite.run(&["refresh"]).assert_code(4);

    let mut copy = lite.command(&["store", "copy"]);
    copy.env("WXTOKEN_COPY_TO", &db.url);
    let out = Out::from_output(copy.output().unwrap());
    out.assert_code(0);
    assert_has(&out, &["copied 2 account(s)"]);
    assert_no_secret("output", &out, &[SECRET]);

    // The PostgreSQL store now serves the same tokens, the hold and the secret.
    assert_eq!(get(&pg, &[]).assert_code(0).stdout, "COPIED\n");
    assert_eq!(
        get(&pg, &["--ticket", "jsapi"]).assert_code(0).stdout,
        "COPIED-TICKET\n"
    );
    let status = run(&pg, &["status"], 0);
    assert!(
        status_block(&status.stdout, "wxheld00000000000").contains("SKIPPED"),
        "{}",
        status.stdout
    );
    // Sealed again with the source's key on the way, never stored in plain text.
    let stored = db.query("SELECT secret FROM account_secrets ORDER BY account_id LIMIT 1");
    assert!(
        stored.starts_with(&format!("wxs1:{}:", lite.kid())) && !stored.contains(SECRET),
        "{stored}"
    );

    // A second copy into the now full target is refused, and changes nothing.
    let mut again = lite.command(&["store", "copy"]);
    again.env("WXTOKEN_COPY_TO", &db.url);
    let refused = Out::from_output(again.output().unwrap());
    refused.assert_code(5);
    assert_has(&refused, &["already has 2 account(s)"]);
    assert_eq!(db.query("SELECT count(*) FROM accounts"), "2");

    // And back: PostgreSQL to a new SQLite file, with the key that sealed the secrets.
    pg.set_env("WXTOKEN_KEY_FILE", lite.key_file().to_str().unwrap());
    let back = pg.dir.join("back.db");
    run(&pg, &["store", "copy", "--to", back.to_str().unwrap()], 0);
    let out = pg.run(&["--db", back.to_str().unwrap(), "get", "--appid", APPID]);
    assert_eq!(out.assert_code(0).stdout, "COPIED\n");
}

#[test]
fn a_bad_postgres_url_is_a_usage_error_that_names_the_setting_but_not_the_password() {
    let env = TestEnv::new();
    for (url, words) in [
        ("postgres://u:pw5ecret@h/d?sslmode=bogus", "sslmode 'bogus'"),
        (
            "postgres://u:pw5ecret@h/d?sslcrl=/x",
            "'sslcrl' is not supported",
        ),
        ("postgresql://u:pw5ecret@h1,h2/d", "several hosts"),
    ] {
        env.set_env("WXTOKEN_DB", url);
        let out = env.run(&["get", "--appid", APPID]);
        out.assert_code(2);
        assert_has(&out, &["--db / WXTOKEN_DB", words]);
        assert!(!out.stderr.contains("pw5ecret"), "{}", out.stderr);
    }
}

/// A server that logs users in by client certificate (pg_hba `cert`, CN = the role):
/// wxtoken presents the one that `sslcert`/`sslkey`, `PGSSLCERT`/`PGSSLKEY` or libpq's
/// default files name. Without one, with another role's, or with a key that others can
/// read, it is refused in one line, exit 5, and the key never shows.
#[test]
fn a_client_certificate_logs_in_where_the_server_demands_one() {
    use std::os::unix::fs::PermissionsExt;
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI needs openssl"
        );
        eprintln!("NOTE: openssl missing: skipping the client certificate test");
        return;
    }
    let env = TestEnv::new();
    let certs = pg::make_certs(&env.dir.join("certs"), "wxtoken-test-ca");
    let (cert, key) = certs.client("postgres");
    let (other_cert, other_key) = certs.client("someone");
    let Some(server) = pg::PgServer::start(&pg::Options {
        tcp: true,
        tls: Some((certs.server_cert.clone(), certs.server_key.clone())),
        client_ca: Some(certs.ca.clone()),
    }) else {
        return;
    };
    let url = format!(
        "postgresql://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        server.port.unwrap(),
        certs.ca.display()
    );
    let with = |cert: &Path, key: &Path| {
        format!("{url}&sslcert={}&sslkey={}", cert.display(), key.display())
    };
    let key_text = std::fs::read_to_string(&key).unwrap();
    let key_body = key_text.lines().nth(1).expect("a PEM body line");
    let refused = |out: &Out, words: &[&str]| {
        out.assert_code(5);
        assert_eq!(out.stdout, "");
        assert_eq!(out.stderr.lines().count(), 1, "one line: {}", out.stderr);
        assert_has(out, words);
        assert!(!out.stderr.contains(key_body), "{}", out.stderr);
    };

    env.set_env("WXTOKEN_DB", &url);
    let out = env.run(&["account", "list"]);
    refused(
        &out,
        &["client certificate", "sslcert and sslkey", "PGSSLCERT"],
    );
    env.set_env("WXTOKEN_DB", &with(&other_cert, &other_key));
    let out = env.run(&["account", "list"]);
    refused(&out, &["certificate authentication failed", "postgres"]);

    // In the URL.
    env.set_env("WXTOKEN_DB", &with(&cert, &key));
    add(&env, &["--appid", APPID], SECRET);
    env.run(&["refresh"]).assert_code(0);
    let token = env.get(&["--appid", APPID]).value();
    // In the environment.
    env.set_env("WXTOKEN_DB", &url);
    env.set_env("PGSSLCERT", cert.to_str().unwrap());
    env.set_env("PGSSLKEY", key.to_str().unwrap());
    assert_eq!(env.get(&["--appid", APPID]).value(), token);
    // libpq's defaults in the home directory.
    env.unset_env("PGSSLCERT");
    env.unset_env("PGSSLKEY");
    let home = env.dir.join("home");
    let dot = home.join(".postgresql");
    std::fs::create_dir_all(&dot).unwrap();
    std::fs::copy(&cert, dot.join("postgresql.crt")).unwrap();
    std::fs::copy(&key, dot.join("postgresql.key")).unwrap();
    env.set_env("HOME", home.to_str().unwrap());
    assert_eq!(env.get(&["--appid", APPID]).value(), token);

    // A key that group or others can read is refused, as libpq refuses it.
    let default_key = dot.join("postgresql.key");
    std::fs::set_permissions(&default_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = env.get(&["--appid", APPID]);
    refused(
        &out,
        &[
            default_key.to_str().unwrap(),
            "group or world access",
            "0600",
        ],
    );
    // A certificate named but missing is an error, not a login without one.
    env.set_env("PGSSLCERT", "/nonexistent/client.crt");
    let out = env.get(&["--appid", APPID]);
    refused(&out, &["sslcert /nonexistent/client.crt"]);
}

/// Runs wxtoken as on a host whose clock is `offset` off (libfaketime: "+2h", "-2h").
fn on_skewed_host(f: &TestEnv, lib: &Path, offset: &str, args: &[&str]) -> Out {
    let mut cmd = f.command(args);
    support::skew_clock(&mut cmd, lib, offset);
    Out::from_output(cmd.output().expect("run wxtoken"))
}

/// Holds are stored and judged on the server's clock: a host two hours behind cannot
/// write a hold that has already ended, and one two hours ahead does not see a fresh hold
/// as over.
#[test]
fn a_host_with_a_wrong_clock_can_neither_shorten_nor_escape_a_hold() {
    let Some(f) = postgres() else { return };
    let Some(lib) = support::faketime_lib() else {
        return;
    };
    let db = f.pg.as_ref().unwrap();
    add(&f, &["--appid", APPID], SECRET);
    f.api.push(
        TOKEN,
        Reply::errcode(89507, "risk control, retry in an hour"),
    );
    let behind = on_skewed_host(&f, &lib, "-2h", &["refresh"]);
    behind.assert_code(4);
    assert_has(&behind, &["89507", "behind WeChat's"]);
    let left = db.query_i64("SELECT held_until - extract(epoch from now())::bigint FROM accounts");
    assert!(
        (3590..=3600).contains(&left),
        "held for {left} s of server time"
    );
    // Neither a host with the right clock nor one two hours ahead fetches it meanwhile.
    let right = f.run(&["refresh"]);
    let ahead = on_skewed_host(&f, &lib, "+2h", &["refresh"]);
    for out in [&right, &ahead] {
        out.assert_code(4);
        assert_has(out, &["skipped until", "89507"]);
    }
    assert_eq!(f.api.hits(TOKEN), 1, "a held account was fetched");
    let status = on_skewed_host(&f, &lib, "+2h", &["status"]);
    let block = status_block(&status.assert_code(0).stdout, APPID);
    assert!(block.contains("SKIPPED"), "{block}");
}

/// Every time a command prints is in the clock of the host that prints it: the server
/// stamps attempts, runs, sinks and accounts (as it stamps tokens and holds), and each is
/// read back converted into the host's clock, as token times are. A host two hours off
/// shows the attempt, the run, the publish and the account as made just now, at the
/// token's own fetch time, whichever host made them.
#[test]
fn a_host_with_a_wrong_clock_shows_every_time_in_its_own_clock() {
    let Some(f) = postgres() else { return };
    let Some(lib) = support::faketime_lib() else {
        return;
    };
    f.set_env("APP_SECRET", SECRET);
    let add = [
        "account",
        "add",
        "--appid",
        APPID,
        "--secret-env",
        "APP_SECRET",
    ];
    on_skewed_host(&f, &lib, "-2h", &add).assert_code(0);
    let hook = format!("cat > '{}'", f.dir.join("hook.out").display());
    on_skewed_host(&f, &lib, "+2h", &["sink", "add", "hook", "--exec", &hook]).assert_code(0);
    on_skewed_host(&f, &lib, "-2h", &["refresh"]).assert_code(0);
    for (offset, ahead) in [("+2h", 7200), ("-2h", -7200), ("+0", 0)] {
        let host_now = support::now() + ahead;
        let near = |what: &str, t: i64| {
            assert!(
                (t - host_now).abs() <= 10,
                "{offset}: {what} {t} is not this host's now {host_now}"
            );
        };
        let doc = support::json(
            &on_skewed_host(&f, &lib, offset, &["status", "--json"])
                .assert_code(0)
                .stdout,
        );
        let account = &doc["accounts"][0];
        let fetched = support::unix_of(&account["token"]["fetched_at"]);
        let attempted = support::unix_of(&account["last_attempt"]["at"]);
        near("the token's fetch", fetched);
        assert!(
            (attempted - fetched).abs() <= 1,
            "{offset}: attempt {attempted}, token {fetched}"
        );
        let sink = &doc["sinks"][0]["last_publish"];
        near("the sink's publish", support::unix_of(&sink["at"]));
        let age = sink["age"].as_i64().unwrap();
        assert!((0..=10).contains(&age), "{offset}: published {age} s ago");

        // Plain status: "last attempt 0s ago", "last publish 1s ago", not two hours.
        let text = on_skewed_host(&f, &lib, offset, &["status"]);
        let text = &text.assert_code(0).stdout;
        for what in ["last attempt ", "last publish "] {
            let secs = text
                .lines()
                .find_map(|l| l.trim().strip_prefix(what)?.split_once("s ago"))
                .and_then(|(secs, _)| secs.parse::<i64>().ok())
                .unwrap_or_else(|| panic!("{offset}: no '{what}Ns ago' in {text}"));
            assert!((0..=10).contains(&secs), "{offset}: {what}{secs}s ago");
        }

        let metrics = on_skewed_host(&f, &lib, offset, &["metrics"])
            .assert_code(0)
            .stdout
            .clone();
        let metric = |name: &str| -> i64 {
            let line = metrics
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("{offset}: no {name} in {metrics}"));
            line.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as i64
        };
        near(
            "the last attempt (metrics)",
            metric("wxtoken_account_last_attempt_timestamp_seconds"),
        );
        near(
            "the last run (metrics)",
            metric("wxtoken_last_run_start_timestamp_seconds"),
        );

        let list = support::json(
            &on_skewed_host(&f, &lib, offset, &["account", "list", "--json"])
                .assert_code(0)
                .stdout,
        );
        near(
            "the account's creation",
            support::unix_of(&list["accounts"][0]["created_at"]),
        );
    }
}

/// WeChat's quota day and month are China time on the server's clock, which stamps the
/// attempts and resets: a host a day ahead still counts this morning's fetch, and resets
/// made from hosts 40 days behind and ahead fall in one month.
#[test]
fn a_host_with_a_wrong_clock_counts_todays_fetches_and_this_months_resets_by_the_server() {
    let Some(f) = postgres() else { return };
    let Some(lib) = support::faketime_lib() else {
        return;
    };
    add(&f, &["--appid", APPID], SECRET);
    run(&f, &["refresh"], 0);
    let status = on_skewed_host(&f, &lib, "+1d", &["status", "--json"]);
    let doc = support::json(&status.assert_code(0).stdout);
    assert_eq!(doc["accounts"][0]["fetches_today"], 1, "{doc}");

    for (offset, used) in [("-40d", 1), ("+40d", 2)] {
        let out = on_skewed_host(
            &f,
            &lib,
            offset,
            &["quota", "reset", "--appid", APPID, "--yes"],
        );
        out.assert_code(0);
        assert_has(&out, &[&format!("now used {used} of this month's 10")]);
    }
    let apart = f.query_i64("SELECT max(at) - min(at) FROM quota_resets");
    assert!(apart <= 5, "stamped {apart} s apart");
}

/// `store copy` moves token times between the server's clock and the copying host's, as
/// it moves holds: a token copied out of PostgreSQL onto a host whose clock is off has the
/// same time left there as on the server, and one copied in from such a host has the
/// same time left on the server as it had there.
#[test]
fn store_copy_keeps_a_tokens_time_left_on_a_host_with_a_wrong_clock() {
    let Some(f) = postgres() else { return };
    let Some(lib) = support::faketime_lib() else {
        return;
    };
    let left = |out: &Out, token: &str| {
        let doc = support::json(&out.assert_code(0).stdout);
        assert_eq!(doc["access_token"], token, "{doc}");
        doc["expires_in"].as_i64().expect("expires_in")
    };
    add(&f, &["--appid", APPID], SECRET);
    f.api.push(TOKEN, Reply::token("ON-PG", 7200));
    run(&f, &["refresh"], 0);
    for offset in ["-3h", "+3h"] {
        let file = f.dir.join(format!("copy{offset}.db"));
        let file = file.to_str().unwrap();
        on_skewed_host(&f, &lib, offset, &["store", "copy", "--to", file]).assert_code(0);
        let args = ["--db", file, "get", "--appid", APPID, "--json"];
        let secs = left(&on_skewed_host(&f, &lib, offset, &args), "ON-PG");
        assert!((7190..=7200).contains(&secs), "{offset}: {secs} s left");
    }

    let lite = TestEnv::new();
    add(&lite, &["--appid", APPID], SECRET);
    lite.api.push(TOKEN, Reply::token("ON-LITE", 7200));
    on_skewed_host(&lite, &lib, "-3h", &["refresh"]).assert_code(0);
    let target = TestEnv::on_postgres().unwrap();
    let to = target.pg.as_ref().unwrap().url.clone();
    on_skewed_host(&lite, &lib, "-3h", &["store", "copy", "--to", &to]).assert_code(0);
    target.set_env("WXTOKEN_KEY_FILE", lite.key_file().to_str().unwrap());
    let secs = left(&get(&target, &["--json"]), "ON-LITE");
    assert!((7190..=7200).contains(&secs), "{secs} s left on the server");
}

/// WeChat's budget of forced stable-token refreshes (30 s apart, 20 a day) is noted and
/// judged on the server's clock: a host two hours ahead cannot force again seconds after
/// one two hours behind did.
#[test]
fn a_host_with_a_wrong_clock_cannot_overspend_the_forced_refresh_budget() {
    let Some(f) = postgres() else { return };
    let Some(lib) = support::faketime_lib() else {
        return;
    };
    add(&f, &["--appid", APPID, "--api", "stable"], SECRET);
    run(&f, &["refresh"], 0);
    let first = get(&f, &[]).value();
    let reject = |token: &str, offset: &str| {
        on_skewed_host(
            &f,
            &lib,
            offset,
            &["get", "--appid", APPID, "--reject", token],
        )
    };
    let second = reject(&first, "-2h").value();
    assert_ne!(second, first, "a forced refresh replaces the token");
    assert_eq!(f.query_i64("SELECT count(*) FROM forced_refreshes"), 1);
    let before = f.api.hits(standin::STABLE_TOKEN);
    let refused = reject(&second, "+2h");
    refused.assert_code(4);
    assert_eq!(refused.stdout, "");
    assert_has(&refused, &["cannot force", "30s between"]);
    assert_eq!(
        f.api.hits(standin::STABLE_TOKEN),
        before + 1,
        "only the normal request went out, no forced one"
    );
    assert_eq!(f.query_i64("SELECT count(*) FROM forced_refreshes"), 1);
    assert_eq!(get(&f, &[]).value(), second);
}

/// The processes of a server this test started: the postmaster and its children.
fn server_processes(server: &pg::PgServer) -> Vec<String> {
    let pidfile = std::fs::read_to_string(server.dir.join("data/postmaster.pid"))
        .expect("read postmaster.pid");
    let postmaster = pidfile.lines().next().expect("a pid").trim().to_string();
    let mut pids = vec![postmaster.clone()];
    for entry in std::fs::read_dir("/proc").expect("list /proc").flatten() {
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid ...: the ppid is the second field after the ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1));
        if ppid == Some(postmaster.as_str()) {
            pids.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    pids
}

/// Server processes stopped with SIGSTOP, resumed when dropped (a failing test included).
struct Frozen(Vec<String>);

impl Frozen {
    fn stop(pids: Vec<String>) -> Frozen {
        signal_all(&pids, "STOP");
        Frozen(pids)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal_all(&self.0, "CONT");
    }
}

fn signal_all(pids: &[String], sig: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .args(pids)
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} {pids:?}");
}

/// A server that takes the statements and never answers (every process of it stopped,
/// while the kernel still acknowledges): the run ends on its own with exit 5 and one line
/// that says so, after the role's statement_timeout and the grace for a cancel, instead
/// of waiting for ever. The intent it wrote before the fetch caps the old token.
#[test]
fn a_server_that_stops_answering_ends_the_run_with_exit_5() {
    let Some(server) = dedicated(false) else {
        return;
    };
    let f = TestEnv::on_server(server);
    let db = f.pg.as_ref().unwrap();
    db.query(&format!(
        "ALTER DATABASE {} SET statement_timeout = '1s'",
        db.name
    ));
    add(&f, &["--appid", APPID], SECRET);
    run(&f, &["refresh"], 0);
    f.api.gate(TOKEN);
    let child = f.spawn(&["refresh", "--force"]);
    assert!(f.api.wait_for_hits(TOKEN, 2, PATIENCE), "never fetched");
    let frozen = Frozen::stop(server_processes(server));
    f.api.open_gate(TOKEN);
    let started = Instant::now();
    let out = wait_unhung(child, "refresh against a server that stopped answering");
    drop(frozen);
    out.assert_code(5);
    let errors = error_lines(&out);
    assert_eq!(errors.len(), 1, "{out:?}");
    assert!(errors[0].contains("did not answer for 16 s"), "{out:?}");
    assert!(started.elapsed() < PATIENCE, "{:?}", started.elapsed());
    assert!(
        get_left(&f) <= 300,
        "the unrecorded fetch caps the old token"
    );
}

/// A fetch that outlives its claim, which another host then took over: its token is
/// dropped, recorded once as lost (no retries), and `get --reject` and `refresh` exit 4,
/// the fetch gave them nothing to hand out, not 5: the database is fine.
#[test]
fn a_claim_lost_mid_fetch_is_a_failed_fetch_not_a_database_error() {
    let Some(f) = postgres() else { return };
    let db = f.pg.as_ref().unwrap();
    add(&f, &["--appid", APPID], SECRET);
    f.api.push(TOKEN, Reply::token("OLD", 7200));
    run(&f, &["refresh"], 0);
    let reject: &[&str] = &["get", "--appid", APPID, "--reject", "OLD"];
    for (i, args) in [reject, &["refresh"]].into_iter().enumerate() {
        f.api.gate(TOKEN);
        let child = f.spawn(args);
        assert!(
            f.api.wait_for_hits(TOKEN, 2 + i, PATIENCE),
            "{args:?} never fetched"
        );
        // Its claim expired and another host took the account over.
        db.query("UPDATE claims SET holder = 'host-b:1:x', host = 'host-b', pid = 1");
        f.api.open_gate(TOKEN);
        let out = wait(child);
        out.assert_code(4);
        assert_eq!(out.stdout, "", "{args:?}");
        assert_has(&out, &["expired and was taken over", "--claim-ttl"]);
        db.query("DELETE FROM claims");
    }
    assert_eq!(
        f.query_i64("SELECT count(*) FROM attempts WHERE outcome = 'lost_claim'"),
        2,
        "one lost attempt each, no retries"
    );
    assert_eq!(
        f.query_i64("SELECT count(*) FROM tokens"),
        1,
        "the late tokens are dropped"
    );
}

// ---- locks -------------------------------------------------------------------------------

/// The lock wxtoken used to serialise recording with a run's start, as a 64-bit advisory
/// key: any role that can connect could take it, and every refresher then waited for ever.
const OLD_RECORD_LOCK: &str = "x'7778746f6b656e01'::bigint";

/// Waits until some session of `db` waits for a lock (the run under test is blocked).
#[track_caller]
fn wait_for_a_lock_wait(db: &PgDb) {
    let deadline = Instant::now() + PATIENCE;
    while db.query_i64("SELECT count(*) FROM pg_locks WHERE NOT granted") == 0 {
        assert!(
            Instant::now() < deadline,
            "nothing ever waited for the lock"
        );
        std::thread::yield_now();
    }
}

/// A reader role holds every lock it can take, for as long as it likes: refresh and
/// `get --reject` go on regardless (they used to wait for ever on an advisory lock the
/// reader held), and the row wxtoken locks instead is out of the reader's reach.
#[test]
fn a_reader_role_holding_locks_cannot_stop_the_refreshers() {
    let Some(f) = postgres() else { return };
    let db = f.pg.as_ref().unwrap();
    add(&f, &["--appid", APPID], SECRET);
    f.api.push(TOKEN, Reply::token("FIRST", 7200));
    run(&f, &["refresh"], 0);
    let role = format!("{}_app", db.name);
    db.query(&format!("CREATE ROLE {role} LOGIN"));
    run(&f, &["store", "grant-reader", &role], 0);
    let mut reader = db.session_as(&role);
    reader.run(&format!(
        "SELECT pg_advisory_lock({OLD_RECORD_LOCK}); \
         SELECT pg_advisory_lock(x'7778746f6b656e00'::bigint); \
         BEGIN; SELECT count(*) FROM accounts; SELECT count(*) FROM schema_migrations;"
    ));
    for lock in ["FOR UPDATE", "FOR SHARE", "FOR KEY SHARE"] {
        let sql = format!("SELECT 1 FROM schema_migrations WHERE version = 1 {lock}");
        let (ok, _, err) = db.server.psql_as(&role, &db.name, &sql);
        assert!(!ok && err.contains("permission denied"), "{sql}: {err}");
    }
    f.api.push(TOKEN, Reply::token("SECOND", 7200));
    let refresh = f.spawn(&["refresh", "--force"]);
    wait_unhung(refresh, "refresh beside a reader's locks").assert_code(0);
    f.api.push(TOKEN, Reply::token("THIRD", 7200));
    let reject = f.spawn(&["get", "--appid", APPID, "--reject", "SECOND"]);
    let out = wait_unhung(reject, "get --reject beside a reader's locks");
    assert_eq!(out.assert_code(0).stdout, "THIRD\n");
    drop(reader);
}

/// A session of the refresher's role (or a superuser) that keeps wxtoken's lock: the run
/// gives up after the lock timeout (10 s unless the database sets its own) with exit 5 and
/// one line naming the holder's pid, role and application; nothing is fetched. A stop
/// signal ends a run blocked at its start at once.
#[test]
fn a_lock_held_too_long_is_bounded_and_its_holder_named() {
    let Some(f) = postgres() else { return };
    let db = f.pg.as_ref().unwrap();
    add(&f, &["--appid", APPID], SECRET);
    f.api.push(TOKEN, Reply::token("FIRST", 7200));
    run(&f, &["refresh"], 0);
    let mut holder = db.session();
    holder.run(
        "SET application_name = 'holdout'; BEGIN; \
         SELECT 1 FROM schema_migrations WHERE version = 1 FOR UPDATE;",
    );
    let started = Instant::now();
    let out = wait_unhung(f.spawn(&["-q", "refresh"]), "refresh");
    out.assert_code(5);
    assert_eq!(error_lines(&out).len(), 1, "{out:?}");
    assert_has(
        &out,
        &[
            "lock timeout",
            "waited 10s",
            "held by pid",
            "role postgres",
            "application holdout",
        ],
    );
    assert!(started.elapsed() >= Duration::from_secs(10), "{out:?}");
    assert_eq!(f.api.hits(TOKEN), 1, "a blocked run fetched");

    // The database's own bound wins over wxtoken's.
    db.query(&format!(
        "ALTER DATABASE {} SET lock_timeout = '1s'",
        db.name
    ));
    let reject = f.spawn(&["get", "--appid", APPID, "--reject", "FIRST"]);
    let out = wait_unhung(reject, "get --reject");
    out.assert_code(5);
    assert_eq!(out.stdout, "");
    assert_has(&out, &["lock timeout", "waited 1s", "application holdout"]);

    // SIGTERM while blocked: the run stops at once, long before any lock timeout.
    db.query(&format!(
        "ALTER DATABASE {} SET lock_timeout = '60s'",
        db.name
    ));
    let refresh = f.spawn(&["refresh"]);
    wait_for_a_lock_wait(db);
    let signalled = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &refresh.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let out = wait_unhung(refresh, "refresh after SIGTERM");
    out.assert_code(8);
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "SIGTERM took {:?}: {out:?}",
        signalled.elapsed()
    );
    drop(holder);
    assert_eq!(f.api.hits(TOKEN), 2, "only get --reject fetched");
}

// ---- network loss and server restarts ------------------------------------------------------

/// A server of this test's own, which it may cut off or restart without disturbing the
/// others; stopped when the test binary exits.
fn dedicated(tcp: bool) -> Option<&'static pg::PgServer> {
    let server = pg::PgServer::start(&pg::Options {
        tcp,
        ..Default::default()
    })?;
    server.stop_when_process_exits();
    Some(Box::leak(Box::new(server)))
}

/// Waits for `child`, killing it and failing if it has not ended within PATIENCE: a
/// process that loses its database must end on its own, not hang.
#[track_caller]
fn wait_unhung(mut child: Child, what: &str) -> Out {
    drop(child.stdin.take());
    let deadline = Instant::now() + PATIENCE;
    while child.try_wait().expect("poll the child").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} still runs {PATIENCE:?} after losing its database");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Out::from_output(child.wait_with_output().expect("collect the output"))
}

/// The error lines of stderr: not the summary, nor the warnings logged on the way.
fn error_lines(out: &Out) -> Vec<&str> {
    out.stderr
        .lines()
        .filter(|l| l.starts_with("wxtoken:"))
        .collect()
}

/// Host A loses its network to the database while WeChat holds its classic fetch: the
/// token it fetched is lost with the connection, so A ends (no hang) with exit 5 and one
/// line naming the cause, never the password. The intent it wrote before the request
/// caps the old token at 300 s for readers, and host B fetches the account once A's lease
/// has expired on the server's clock: three fetches in all, each recorded at most once.
#[test]
fn a_host_that_loses_its_database_mid_fetch_exits_5_and_the_account_waits_only_for_its_claim() {
    let Some(server) = dedicated(true) else {
        return;
    };
    let f = TestEnv::on_server(server);
    let db = f.pg.as_ref().unwrap();
    add(&f, &["--appid", APPID], SECRET);
    f.api.push(TOKEN, Reply::token("OLD", 7200));
    run(&f, &["refresh"], 0);

    let relay = support::relay::Relay::start(([127, 0, 0, 1], server.port.unwrap()).into());
    let via_relay = format!(
        "postgresql://postgres@127.0.0.1:{}/{}?sslmode=disable",
        relay.port(),
        db.name
    );
    f.api.push(TOKEN, Reply::token("LOST-WITH-A", 7200));
    f.api.gate(TOKEN);
    let a = f
        .command(&["refresh", "--claim-ttl", "3"])
        .env("WXTOKEN_DB", &via_relay)
        .env("WXTOKEN_HOST", "host-a")
        .env("PGPASSWORD", "pw-N0t-For-Logs")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn host-a");
    assert!(
        f.api.wait_for_hits(TOKEN, 2, PATIENCE),
        "host-a never fetched"
    );
    assert!(relay.accepted() >= 1);
    relay.cut();
    f.api.open_gate(TOKEN);
    let a = wait_unhung(a, "host-a");
    a.assert_code(5);
    let lines = error_lines(&a);
    assert_eq!(lines.len(), 1, "one line:\n{}", a.stderr);
    assert_has(
        &a,
        &[
            "could not record the fetch after 3 tries",
            "connection closed, and connecting again failed",
            "Connection refused",
            "127.0.0.1",
        ],
    );
    assert!(!a.stderr.contains("pw-N0t-For-Logs") && !a.stdout.contains("pw-N0t"));
    assert_no_secret("output", &a, &[SECRET]);

    // Nothing of A's fetch was recorded; its intent caps the old token for every reader.
    assert_eq!(f.query_i64("SELECT count(*) FROM tokens"), 1);
    assert_eq!(f.query_i64("SELECT count(*) FROM attempts"), 1);
    assert_eq!(f.query_i64("SELECT count(*) FROM intents"), 1);
    assert_eq!(db.query("SELECT host FROM claims"), "host-a");
    let left = get_left(&f);
    assert!((1..=300).contains(&left), "capped at 300 s: {left}");

    // Host B waits for the lease to expire on the server's clock, then fetches.
    let deadline = Instant::now() + PATIENCE;
    while f.query_i64(
        "SELECT count(*) FROM claims WHERE expires_at > floor(extract(epoch from now()))",
    ) > 0
    {
        assert!(Instant::now() < deadline, "host-a's claim never expired");
        std::thread::sleep(Duration::from_millis(100));
    }
    f.api.push(TOKEN, Reply::token("FROM-B", 7200));
    let b = wait(refresher(&f, "host-b", 60, &[]));
    b.assert_code(0);
    assert_eq!(refreshed(&b), 1);
    assert_eq!(f.api.hits(TOKEN), 3, "the first, A's lost one, B's");
    assert_eq!(get(&f, &[]).assert_code(0).stdout, "FROM-B\n");
    assert!(get_left(&f) > 7000);
    assert_eq!(f.query_i64("SELECT count(*) FROM tokens"), 2);
    assert_eq!(f.query_i64("SELECT count(*) FROM attempts"), 2);
    assert_eq!(f.query_i64("SELECT count(*) FROM intents"), 0);
    assert_eq!(f.query_i64("SELECT count(*) FROM claims"), 0);
}

/// The server restarts (`pg_ctl restart -m fast`, every session ended) while WeChat holds
/// the first of two accounts' fetches on a one-worker run: the run reconnects, records
/// that fetch (its transaction had not begun, so nothing is unsure) and refreshes the
/// second account; each fetch recorded once, no claim or intent left. With the server
/// down, `get` and `refresh` each exit 5 with one line.
#[test]
fn a_server_restart_mid_run_is_reconnected_and_nothing_is_recorded_twice() {
    let Some(server) = dedicated(false) else {
        return;
    };
    let f = TestEnv::on_server(server);
    let second = "wx00000000000000b2";
    add(&f, &["--appid", APPID], SECRET);
    add(&f, &["--appid", second], SECRET);
    f.api.gate(TOKEN);
    let run = f.spawn(&["refresh", "-j", "1"]);
    assert!(
        f.api.wait_for_hits(TOKEN, 1, PATIENCE),
        "the run never fetched"
    );
    server.restart();
    f.api.open_gate(TOKEN);
    let out = wait_unhung(run, "refresh");
    out.assert_code(0);
    assert_eq!(refreshed(&out), 2, "{}", out.stderr);
    assert_eq!(f.api.hits(TOKEN), 2);
    assert_eq!(f.query_i64("SELECT count(*) FROM tokens"), 2);
    assert_eq!(f.query_i64("SELECT count(*) FROM attempts"), 2);
    assert_eq!(f.query_i64("SELECT count(*) FROM runs"), 1);
    assert_eq!(f.query_i64("SELECT count(*) FROM claims"), 0);
    assert_eq!(f.query_i64("SELECT count(*) FROM intents"), 0);
    get(&f, &[]).assert_code(0);

    server.stop();
    for args in [&["get", "--appid", APPID][..], &["refresh"][..]] {
        let down = f.run(args);
        down.assert_code(5);
        assert_eq!(error_lines(&down).len(), 1, "one line:\n{}", down.stderr);
        assert_has(&down, &["could not connect to", "postgres"]);
        assert_eq!(down.stdout, "");
    }
    server.restart();
    get(&f, &[]).assert_code(0);
}

/// A hold reads back as the second the server stored on a host whose clock is a fraction
/// of a second off: the offset comes from exact readings of both clocks. (From whole-second
/// readings, a host 0.3 s ahead saw it one second late whenever its own second had begun
/// before the server's: about one run in three.)
#[test]
fn a_hold_reads_back_to_the_second_on_a_host_a_fraction_of_a_second_off() {
    let Some(f) = postgres() else { return };
    let Some(lib) = support::faketime_lib() else {
        return;
    };
    let db = f.pg.as_ref().unwrap();
    add(&f, &["--appid", APPID], SECRET);
    let until = db.query_i64("SELECT floor(extract(epoch from now()))::bigint + 3600");
    db.query(&format!(
        "UPDATE accounts SET held_until = {until}, held_reason = 'held by the test'"
    ));
    let want = chrono::DateTime::from_timestamp(until, 0)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for _ in 0..12 {
        let status = on_skewed_host(&f, &lib, "+0.3", &["status", "--json"]);
        let doc = support::json(&status.assert_code(0).stdout);
        assert_eq!(
            doc["accounts"][0]["held"]["until"],
            format!("until {want}"),
            "{doc}"
        );
    }
}

also_on_postgres!(exec_sink);
