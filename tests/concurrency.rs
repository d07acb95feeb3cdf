//! Concurrency and crash safety: several real `wxtoken` processes against one store (a
//! SQLite file, and under `on_postgres` a PostgreSQL database) and the loopback stand-in.
//! Processes are synchronised through the stand-in (hit counts, gates, `wait_for_hits`),
//! never through sleeps. The only timed waits are bounded negative checks, a watchdog that
//! turns a stuck process into a failure, and, on PostgreSQL, one poll of the server's
//! activity for a process that waits on a lock the test holds.

mod support;

use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use support::standin::{self, Reply, STABLE_TOKEN, TICKET, TOKEN};
use support::{Out, TestEnv, add, now, wait};

/// Long enough for anything that should happen; only a failing test waits this long.
const PATIENCE: Duration = Duration::from_secs(20);
/// How long a spawned process may run before it counts as stuck.
const RUN_LIMIT: Duration = Duration::from_secs(15);
/// How long a negative check ("no further request arrives") watches.
const GLIMPSE: Duration = Duration::from_millis(400);
/// `held_until` of a hold that lasts until the configuration changes.
const DAY: i64 = 86_400;

// ---- helpers ----

fn rfc3339(t: i64) -> String {
    let at = chrono::DateTime::from_timestamp(t, 0).unwrap();
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:02}")).collect()
}

/// A fresh environment with these classic (`/cgi-bin/token`) accounts.
fn setup<S: AsRef<str>>(appids: &[S]) -> TestEnv {
    let env = TestEnv::new();
    for appid in appids {
        add(
            &env,
            &["--appid", appid.as_ref(), "--api", "token"],
            &format!("secret-{}", appid.as_ref()),
        );
    }
    env
}

fn refresh(env: &TestEnv, extra: &[&str]) -> Out {
    let mut args = vec!["refresh"];
    args.extend_from_slice(extra);
    env.run(&args)
}

fn reject(env: &TestEnv, appid: &str, token: &str) -> Out {
    env.run(&["get", "--appid", appid, "--reject", token])
}

/// Waits for a child started with `TestEnv::spawn`. One that is still running after
/// `RUN_LIMIT` (a deadlock, say) is killed and fails the test instead of hanging it.
#[track_caller]
fn finish(child: Child) -> Out {
    let pid = child.id();
    let (finished, watch) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let stuck = watch.recv_timeout(RUN_LIMIT) == Err(RecvTimeoutError::Timeout);
        if stuck {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        stuck
    });
    let out = wait(child);
    drop(finished);
    let stuck = watchdog.join().unwrap();
    assert!(
        !stuck,
        "wxtoken (pid {pid}) still ran after {RUN_LIMIT:?} and was killed\n--- stderr ---\n{}",
        out.stderr
    );
    out
}

/// Waits for every child, in order.
#[track_caller]
fn wait_all(children: Vec<Child>) -> Vec<Out> {
    let mut outs = Vec::new();
    for child in children {
        outs.push(finish(child));
    }
    outs
}

/// SIGKILL, then reap, so that the pid is really gone.
fn kill(mut child: Child) {
    child.kill().expect("kill wxtoken");
    child.wait().expect("reap wxtoken");
}

/// Exactly `n` requests reach `route` while it is gated: `n` arrive, and no more follow.
#[track_caller]
fn assert_in_flight(env: &TestEnv, route: &str, n: usize) {
    assert!(
        env.api.wait_for_hits(route, n, PATIENCE),
        "expected {n} requests on {route}, got {}",
        env.api.hits(route)
    );
    assert!(
        !env.api.wait_for_hits(route, n + 1, GLIMPSE),
        "more than {n} requests in flight on {route}: {}",
        env.api.hits(route)
    );
}

/// The numbers of `refresh`'s summary line on stderr.
#[derive(Debug, Default, PartialEq)]
struct Summary {
    refreshed: usize,
    fresh: usize,
    busy: usize,
}

#[track_caller]
fn summary(out: &Out) -> Summary {
    let line = out.stderr.lines().find(|l| l.starts_with("refreshed "));
    let line = line.unwrap_or_else(|| panic!("no summary line on stderr:\n{}", out.stderr));
    let first = |part: &str| part.split_whitespace().next().unwrap().parse().unwrap();
    let mut s = Summary::default();
    for part in line.split("; ") {
        if let Some(rest) = part.strip_prefix("refreshed ") {
            s.refreshed = first(rest);
        } else if part.ends_with(" already fresh") {
            s.fresh = first(part);
        } else if part.ends_with(" being refreshed by another run") {
            s.busy = first(part);
        }
    }
    s
}

/// The default a subcommand's `--help` documents for `flag`.
fn documented_default(subcommand: &str, flag: &str) -> usize {
    let help = TestEnv::new().run(&[subcommand, "--help"]);
    let line = help.stdout.lines().find(|l| l.contains(flag));
    let line = line.unwrap_or_else(|| panic!("no {flag} in {subcommand} --help"));
    let (_, rest) = line.split_once("[default: ").expect("a documented default");
    rest.split(']').next().unwrap().parse().unwrap()
}

fn account_id(env: &TestEnv, appid: &str) -> i64 {
    env.query_i64(&format!("SELECT id FROM accounts WHERE appid = '{appid}'"))
}

/// The lines of a query's result; none for no rows.
fn lines(text: String) -> Vec<String> {
    text.lines().map(str::to_string).collect()
}

/// Every stored token of an account, oldest first.
fn token_rows(env: &TestEnv, appid: &str) -> Vec<String> {
    lines(env.query(&format!(
        "SELECT t.token FROM tokens t JOIN accounts a ON a.id = t.account_id
         WHERE a.appid = '{appid}' AND t.kind = 'access_token' ORDER BY t.id"
    )))
}

fn held_until(env: &TestEnv, appid: &str) -> Option<i64> {
    let sql = format!("SELECT held_until FROM accounts WHERE appid = '{appid}'");
    let value = env.query(&sql);
    (!value.is_empty()).then(|| value.parse().unwrap_or_else(|_| panic!("{sql}: {value}")))
}

fn count(env: &TestEnv, sql: &str) -> i64 {
    env.query_i64(sql)
}

/// The newest attempt's outcome of an account.
fn last_outcome(env: &TestEnv, appid: &str) -> String {
    let id = account_id(env, appid);
    env.query(&format!(
        "SELECT outcome FROM attempts WHERE account_id = {id} AND kind = 'access_token'
         ORDER BY id DESC LIMIT 1"
    ))
}

fn insert_token_sql(account: i64, token: &str, fetched_at: i64, expires_in: i64) -> String {
    format!(
        "INSERT INTO tokens (account_id, token, expires_in, fetched_at, expires_at)
         VALUES ({account}, '{token}', {expires_in}, {fetched_at}, {});",
        fetched_at + expires_in
    )
}

fn insert_token(env: &TestEnv, account: i64, token: &str, fetched_at: i64, expires_in: i64) {
    env.execute(&insert_token_sql(account, token, fetched_at, expires_in));
}

fn insert_attempt(env: &TestEnv, account: i64, started_at: i64) {
    env.execute(&format!(
        "INSERT INTO attempts (account_id, started_at, duration_ms, tries, outcome)
         VALUES ({account}, {started_at}, 5, 1, 'ok')"
    ));
}

/// Puts a claim on the account as if `pid` on `host` held it until `expires_at`.
fn insert_claim(env: &TestEnv, account: i64, host: &str, pid: i64, expires_at: i64) {
    env.execute(&format!(
        "DELETE FROM claims WHERE account_id = {account};
         INSERT INTO claims (account_id, holder, host, pid, claimed_at, expires_at)
         VALUES ({account}, '{host}:{pid}:test', '{host}', {pid}, {}, {expires_at});",
        now() - 100
    ));
}

/// Who holds an account's claim: (host, pid).
fn claim_of(env: &TestEnv, appid: &str) -> Option<(String, i64)> {
    let id = account_id(env, appid);
    let row = env.query(&format!(
        "SELECT host, pid FROM claims WHERE account_id = {id}"
    ));
    let (host, pid) = row.split_once('|')?;
    Some((host.to_string(), pid.parse().unwrap()))
}

/// `force_refresh` of every stable-token request for `appid` since request number `since`.
fn stable_requests(env: &TestEnv, appid: &str, since: usize) -> Vec<String> {
    let log = env.api.requests();
    let bodies = log[since..].iter().filter(|r| r.path == STABLE_TOKEN);
    let bodies = bodies.map(|r| standin::parse_flat_json(&r.body).expect("a flat JSON body"));
    bodies
        .filter(|b| b["appid"] == appid)
        .map(|b| b["force_refresh"].clone())
        .collect()
}

/// What must hold after any crash: the store's own checks, and no row that is half there.
#[track_caller]
fn assert_db_sane(env: &TestEnv) {
    if env.is_postgres() {
        // PostgreSQL enforces the foreign keys itself, and a killed client cannot tear a
        // page of the server's; what is left is wxtoken's own consistency below.
    } else {
        let check = env.query("PRAGMA integrity_check");
        assert_eq!(check, "ok");
        let orphans = count(env, "SELECT count(*) FROM pragma_foreign_key_check");
        assert_eq!(orphans, 0, "rows pointing at no account");
    }
    let bad_tokens = count(
        env,
        "SELECT count(*) FROM tokens WHERE token IS NULL OR token = '' OR expires_in IS NULL
         OR expires_in <= 0 OR fetched_at IS NULL OR expires_at IS NULL
         OR expires_at <> fetched_at + expires_in",
    );
    assert_eq!(bad_tokens, 0, "malformed token rows");
    let bad_attempts = count(
        env,
        "SELECT count(*) FROM attempts WHERE outcome IS NULL
         OR outcome NOT IN ('ok', 'unchanged', 'errcode', 'http', 'transport', 'not_json',
                            'invalid', 'skipped')
         OR tries IS NULL OR tries < 1 OR duration_ms IS NULL OR duration_ms < 0
         OR started_at IS NULL OR started_at <= 0
         OR (outcome = 'errcode') <> (errcode IS NOT NULL)
         OR (outcome = 'http') <> (http_status IS NOT NULL)",
    );
    assert_eq!(bad_attempts, 0, "malformed attempt rows");
    // A token row and its attempt are written in one transaction: both or neither.
    let unmatched = count(
        env,
        "SELECT count(*) FROM accounts a
         WHERE (SELECT count(*) FROM tokens t
                WHERE t.account_id = a.id AND kind = 'access_token')
            <> (SELECT count(*) FROM attempts t
                WHERE t.account_id = a.id AND kind = 'access_token' AND outcome = 'ok')",
    );
    assert_eq!(
        unmatched, 0,
        "token rows without their attempt, or the reverse"
    );
}

// ---- refresh --jobs ----

/// Gates the token route, starts one refresh over `accounts` accounts and checks that
/// exactly `in_flight` fetches run at once, then that it finishes all of them.
fn refresh_runs_at_most(accounts: usize, jobs: &[&str], in_flight: usize) {
    let ids = names("wxjobs", accounts);
    let env = setup(&ids);
    env.api.gate(TOKEN);
    let child = env.spawn(&[&["refresh"], jobs].concat());
    assert_in_flight(&env, TOKEN, in_flight);
    env.api.open_gate(TOKEN);
    let out = finish(child);
    out.assert_code(0);
    assert!(
        out.stderr
            .contains(&format!("refreshed {accounts} of {accounts} accounts")),
        "{}",
        out.stderr
    );
    assert_eq!(env.api.hits(TOKEN), accounts);
    for id in &ids {
        assert_eq!(env.api.hits_for(TOKEN, id), 1, "{id}");
        assert_eq!(token_rows(&env, id), [env.get(&["--appid", id]).value()]);
    }
}

#[test]
fn refresh_jobs_bounds_the_fetches_in_flight() {
    refresh_runs_at_most(10, &["--jobs", "3"], 3);
}

#[test]
fn refresh_default_jobs_is_the_documented_one() {
    let jobs = documented_default("refresh", "--jobs");
    assert!(jobs > 1, "the default runs fetches in parallel");
    refresh_runs_at_most(jobs + 4, &[], jobs);
}

// ---- overlapping runs ----

/// Four refreshes started at once over the same five accounts fetch each account once.
/// `gated`: the fetches wait at a gate until all of them are in flight; else, latency.
fn overlapping_refreshes_fetch_each_account_once(gated: bool) {
    let ids = names("wxoverlap", 5);
    let env = setup(&ids);
    if gated {
        env.api.gate(TOKEN);
    } else {
        env.api.set_latency(Duration::from_millis(150));
    }
    let children: Vec<Child> = (0..4).map(|_| env.spawn(&["refresh"])).collect();
    if gated {
        assert_in_flight(&env, TOKEN, ids.len());
        env.api.open_gate(TOKEN);
    }
    let outs = wait_all(children);
    let mut total = Summary::default();
    for out in &outs {
        out.assert_code(0);
        let s = summary(out);
        assert_eq!(s.refreshed + s.fresh + s.busy, ids.len(), "{}", out.stderr);
        total.refreshed += s.refreshed;
        total.fresh += s.fresh;
        total.busy += s.busy;
    }
    assert_eq!(total.refreshed, ids.len(), "{outs:#?}");
    assert_eq!(total.fresh + total.busy, 3 * ids.len(), "{outs:#?}");
    assert_eq!(env.api.hits(TOKEN), ids.len());
    for id in &ids {
        assert_eq!(env.api.hits_for(TOKEN, id), 1, "{id}");
        assert_eq!(
            token_rows(&env, id),
            [env.get(&["--appid", id]).value()],
            "{id}"
        );
    }
}

#[test]
fn overlapping_gated_refreshes_fetch_each_account_once() {
    overlapping_refreshes_fetch_each_account_once(true);
}

#[test]
fn overlapping_slow_refreshes_fetch_each_account_once() {
    overlapping_refreshes_fetch_each_account_once(false);
}

#[test]
fn a_run_arriving_while_another_fetches_skips_its_accounts() {
    let ids = names("wxbusy", 3);
    let env = setup(&ids);
    env.api.gate(TOKEN);
    let first = env.spawn(&["refresh"]);
    assert_in_flight(&env, TOKEN, ids.len());
    // The first run holds every claim and cannot finish: the second must not wait for it.
    let second = refresh(&env, &[]);
    second.assert_code(0);
    assert!(
        second.stderr.contains("3 being refreshed by another run"),
        "{}",
        second.stderr
    );
    assert_eq!(env.api.hits(TOKEN), ids.len());
    env.api.open_gate(TOKEN);
    finish(first).assert_code(0);
    // A run that starts after the first one finished fetches again: it does what it is told.
    let third = refresh(&env, &[]);
    third.assert_code(0);
    assert!(
        third.stderr.contains("refreshed 3 of 3"),
        "{}",
        third.stderr
    );
    assert_eq!(env.api.hits(TOKEN), 2 * ids.len());
}

// ---- dead and foreign claim holders ----

#[test]
fn a_killed_holder_does_not_block_the_next_run() {
    let env = setup(&["wxdead"]);
    env.api.gate(TOKEN);
    let child = env.spawn(&["refresh"]);
    let pid = i64::from(child.id());
    assert!(env.api.wait_for_hits(TOKEN, 1, PATIENCE));
    let (host, holder) = claim_of(&env, "wxdead").expect("a claim while it fetches");
    assert_eq!(holder, pid);
    assert!(!host.is_empty());
    kill(child);
    env.api.open_gate(TOKEN);
    assert_next_run_takes_over(&env, "wxdead", 2);
}

/// The next plain refresh takes the stale claim over at once: it fetches the account (the
/// stand-in has then seen `hits` requests for it), keeps one token row, releases the claim.
#[track_caller]
fn assert_next_run_takes_over(env: &TestEnv, appid: &str, hits: usize) {
    let out = refresh(env, &[]);
    out.assert_code(0);
    assert!(
        out.stderr.contains("refreshed 1 of 1 accounts"),
        "{}",
        out.stderr
    );
    assert_eq!(env.api.hits_for(TOKEN, appid), hits);
    assert_eq!(
        token_rows(env, appid),
        [env.get(&["--appid", appid]).value()]
    );
    assert_eq!(claim_of(env, appid), None);
}

/// The host name wxtoken records in its claims, read from a claim of a real run (the test
/// does not repeat how wxtoken finds it).
fn host_in_claims() -> String {
    let env = setup(&["wxhost"]);
    env.api.gate(TOKEN);
    let child = env.spawn(&["refresh"]);
    assert!(env.api.wait_for_hits(TOKEN, 1, PATIENCE));
    let (host, _) = claim_of(&env, "wxhost").expect("a claim while it fetches");
    kill(child);
    env.api.open_gate(TOKEN);
    host
}

#[test]
fn live_claims_are_respected_and_expired_foreign_ones_taken_over() {
    let this_host = host_in_claims();
    let env = setup(&["wxclaim"]);
    let id = account_id(&env, "wxclaim");
    let busy = |host: &str, pid: i64| {
        insert_claim(&env, id, host, pid, now() + 3600);
        let out = refresh(&env, &[]);
        out.assert_code(0);
        assert!(
            out.stderr.contains("1 being refreshed by another run"),
            "{host}:{pid}: {}",
            out.stderr
        );
        assert_eq!(env.api.hits(TOKEN), 0);
    };
    // A live process on this host (this test), and an unexpired claim of another host.
    busy(&this_host, i64::from(std::process::id()));
    busy("other-host.invalid", 1);

    insert_claim(&env, id, "other-host.invalid", 1, now() - 1);
    assert_next_run_takes_over(&env, "wxclaim", 1);
}

// ---- kill -9 ----

#[test]
fn kill_9_at_any_moment_leaves_a_consistent_database() {
    const N: usize = 3;
    // 0: before any request; 1..=N: while fetch number k hangs, the ones before it recorded;
    // N + 1: right after the last request arrived.
    for point in 0..=N + 1 {
        let ids = names("wxkill", N);
        let env = setup(&ids);
        let hangs = (1..=N).contains(&point);
        if hangs {
            for i in 1..point {
                env.api
                    .push(TOKEN, Reply::token(&format!("before-kill-{i}"), 7200));
            }
            env.api.push(TOKEN, Reply::Hang);
        }
        let child = env.spawn(&["refresh", "--jobs", "1"]);
        let arrived = point.min(N);
        assert!(
            env.api.wait_for_hits(TOKEN, arrived, PATIENCE),
            "kill point {point}"
        );
        kill(child);
        assert_db_sane(&env);
        let rows: usize = ids.iter().map(|id| token_rows(&env, id).len()).sum();
        if hangs {
            assert_eq!(rows, point - 1, "kill point {point}");
        }

        let out = refresh(&env, &["--jobs", "1"]);
        out.assert_code(0);
        assert_db_sane(&env);
        for id in &ids {
            let token = env.get(&["--appid", id]).value();
            assert_eq!(token_rows(&env, id).last(), Some(&token), "{id}");
        }
        if hangs {
            // The next run fetches every account again, the cut-off one first: its fetch
            // was never recorded, so its stored token may be doomed.
            assert_eq!(env.api.hits(TOKEN), point + N, "kill point {point}");
            let first = &env.requests_to(TOKEN)[point];
            assert_eq!(first.query["appid"], ids[point - 1], "kill point {point}");
        }
    }
}

// ---- readers ----

#[test]
fn readers_never_fail_while_refreshes_write() {
    let ids = names("wxread", 3);
    let env = setup(&ids);
    refresh(&env, &[]).assert_code(0);
    env.api.set_latency(Duration::from_millis(20));

    let done = AtomicBool::new(false);
    let (writers, seen) = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut outs = Vec::new();
            for _ in 0..4 {
                let children = (0..3).map(|_| env.spawn(&["refresh", "--force"]));
                outs.extend(wait_all(children.collect()));
            }
            done.store(true, Ordering::SeqCst);
            outs
        });
        let mut seen = Vec::new();
        loop {
            let finished = done.load(Ordering::SeqCst);
            for id in &ids {
                let token = env.get(&["--appid", id]).value();
                seen.push((id, token));
            }
            if finished {
                break;
            }
        }
        (writer.join().unwrap(), seen)
    });
    for out in &writers {
        out.assert_code(0);
    }
    let fetches = env.api.hits(TOKEN);
    assert!(fetches > ids.len(), "the writers fetched: {fetches}");
    for (id, token) in &seen {
        // Whole tokens only: one the stand-in issued and wxtoken stored, no torn write.
        let rows = token_rows(&env, id);
        assert!(rows.contains(token), "{id} printed {token}");
        // Valid when printed: still valid now, or retired since by a newer fetch (the
        // stand-in retires a classic token at the second fetch after it, as WeChat does
        // after 5 minutes). Checked once every fetch is recorded: asked right after each
        // `get`, a fetch in flight meanwhile made a served token look unknown.
        assert!(
            env.api.is_valid(token) || rows.last() != Some(token),
            "{id}: printed {token:?}, which is the newest and yet not valid"
        );
    }
}

// ---- get --reject ----

#[test]
fn reject_fetches_only_while_the_token_is_newest() {
    let a = "wxreject";
    let env = setup(&[a]);
    refresh(&env, &[]).assert_code(0);
    let first = env.get(&["--appid", a]).value();

    // The newest token is rejected: one fetch, a new token.
    let second = reject(&env, a, &first).value();
    assert_ne!(second, first);
    assert_eq!(env.api.hits_for(TOKEN, a), 2);

    // Someone already replaced it: the newer token, no fetch. Likewise for a stranger.
    assert_eq!(reject(&env, a, &first).value(), second);
    assert_eq!(reject(&env, a, "not-a-token-of-ours").value(), second);
    assert_eq!(env.api.hits_for(TOKEN, a), 2);

    // `-` reads the token from stdin.
    let args = ["get", "--appid", a, "--reject", "-"];
    let third = env.run_with_stdin(&args, &format!("{second}\n")).value();
    assert!(third != first && third != second);
    assert_eq!(env.api.hits_for(TOKEN, a), 3);

    // A rejected token is never handed out again.
    assert_eq!(env.get(&["--appid", a]).value(), third);
    for old in [&first, &second] {
        assert_eq!(reject(&env, a, old).value(), third);
    }
    assert_eq!(env.api.hits_for(TOKEN, a), 3);
    assert_eq!(token_rows(&env, a), [first, second, third]);
}

/// A test's own open write transaction on the store.
enum Writer {
    Sqlite(rusqlite::Connection),
    Postgres(support::pg::PgSession),
}

#[test]
fn reject_hands_out_a_token_recorded_while_it_waited_for_the_claim() {
    let a = "wxrace";
    let env = setup(&[a]);
    refresh(&env, &[]).assert_code(0);
    let old = env.get(&["--appid", a]).value();
    // Another fetcher is committing a newer token: `get --reject` still reads `old` as the
    // newest, then waits for that commit to claim the account. On SQLite the commit holds
    // the write lock; on PostgreSQL, the other holder's claim row, which its transaction
    // locks, records into and releases.
    let id = account_id(&env, a);
    let newer = insert_token_sql(id, "newer-token", now(), 7200);
    let mut other = match &env.pg {
        Some(db) => {
            insert_claim(&env, id, "other-host.invalid", 1, now() + 3600);
            let mut session = db.session();
            session.run(&format!(
                "BEGIN; SELECT holder FROM claims WHERE account_id = {id} FOR UPDATE; {newer}"
            ));
            Writer::Postgres(session)
        }
        None => {
            let conn = env.open_db();
            conn.execute_batch(&format!("BEGIN IMMEDIATE; {newer}"))
                .unwrap();
            Writer::Sqlite(conn)
        }
    };
    let mut child = env.spawn(&["-vv", "get", "--appid", a, "--reject", &old]);
    // Synchronise on what the child says: once it has found `old` still the newest, it
    // goes for the claim, which waits for the other writer.
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = std::io::BufReader::new(stderr);
    let mut said = String::new();
    while !said.contains("still the newest") {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut lines, &mut line).expect("read stderr");
        assert!(n > 0, "the child ended without claiming:\n{said}");
        said += &line;
    }
    child.stderr = Some(lines.into_inner());
    match &mut other {
        Writer::Sqlite(conn) => conn.execute_batch("COMMIT").unwrap(),
        Writer::Postgres(session) => {
            // The server shows the wait: the child's claim queues behind the row lock.
            let waiting = "SELECT count(*) FROM pg_stat_activity
                           WHERE datname = current_database() AND wait_event_type = 'Lock'";
            let deadline = std::time::Instant::now() + PATIENCE;
            while env.query_i64(waiting) == 0 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the claim never waited"
                );
            }
            session.run(&format!(
                "DELETE FROM claims WHERE account_id = {id}; COMMIT;"
            ));
        }
    }
    // Under the claim it finds the newer token: it hands that out without a fetch.
    assert_eq!(finish(child).value(), "newer-token");
    assert_eq!(env.api.hits(TOKEN), 1);
}

#[test]
fn twelve_concurrent_rejects_cause_one_fetch() {
    let a = "wxpile";
    let env = setup(&[a]);
    refresh(&env, &[]).assert_code(0);
    let old = env.get(&["--appid", a]).value();
    env.api.gate(TOKEN);
    let args = ["get", "--appid", a, "--reject", &old];
    let children: Vec<Child> = (0..12).map(|_| env.spawn(&args)).collect();
    assert_in_flight(&env, TOKEN, 2);
    env.api.open_gate(TOKEN);
    let outs = wait_all(children);
    let new = (outs[0]).value();
    assert_ne!(new, old);
    for out in &outs {
        assert_eq!(out.value(), new);
    }
    assert_eq!(env.api.hits(TOKEN), 2);
    assert_eq!(env.get(&["--appid", a]).value(), new);
    assert_eq!(token_rows(&env, a), [old, new]);
}

// ---- stable tokens ----

#[test]
fn stable_reject_falls_back_to_a_forced_refresh() {
    let a = "wxstable";
    let env = TestEnv::new();
    add(
        &env,
        &format!("--appid {a} --api stable"),
        &format!("secret-{a}"),
    );
    refresh(&env, &[]).assert_code(0);
    let current = env.get(&["--appid", a]).value();

    // Normal mode hands back the current token: nothing new is stored.
    refresh(&env, &["--force"]).assert_code(0);
    assert_eq!(stable_requests(&env, a, 0), ["false", "false"]);
    assert_eq!(last_outcome(&env, a), "unchanged");
    assert_eq!(token_rows(&env, a), [env.get(&["--appid", a]).value()]);
    assert_eq!(env.get(&["--appid", a]).value(), current);

    let before = env.api.requests().len();
    let new = reject(&env, a, &current).value();
    assert_ne!(new, current);
    assert_eq!(stable_requests(&env, a, before), ["false", "true"]);
    assert!(
        !env.api.is_valid(&current),
        "the forced refresh replaced it"
    );
    assert_eq!(env.get(&["--appid", a]).value(), new);
    assert_eq!(token_rows(&env, a), [current, new]);
    let forced = count(&env, "SELECT count(*) FROM forced_refreshes");
    assert_eq!(forced, 1);
}

#[test]
fn forced_refreshes_stay_within_wechats_budget() {
    let (spent, recent) = ("wxspent", "wxrecent");
    let env = TestEnv::new();
    add(
        &env,
        &format!("--appid {spent} --api stable"),
        &format!("secret-{spent}"),
    );
    add(
        &env,
        &format!("--appid {recent} --api stable"),
        &format!("secret-{recent}"),
    );
    refresh(&env, &[]).assert_code(0);

    // Twenty forced refreshes a second ago: today's budget is spent (unless this very
    // second is midnight in China, one run in 86,400); another one five seconds ago is too
    // recent for the 30 s gap.
    let t = now();
    let force = |appid: &str, at: i64| {
        let id = account_id(&env, appid);
        format!("INSERT INTO forced_refreshes (account_id, at) VALUES ({id}, {at});")
    };
    env.execute(&(force(spent, t - 1).repeat(20) + &force(recent, t - 5)));

    for (appid, words) in [
        (spent, &["20 forced refreshes", "per day"][..]),
        (recent, &["30s between"][..]),
    ] {
        let current = env.get(&["--appid", appid]).value();
        let before = env.api.requests().len();
        let out = reject(&env, appid, &current);
        out.assert_code(4);
        assert_eq!(out.stdout, "");
        for word in words.iter().chain(&[appid]) {
            assert!(out.stderr.contains(word), "{word:?} in {}", out.stderr);
        }
        assert_eq!(stable_requests(&env, appid, before), ["false"]);
        assert_eq!(env.get(&["--appid", appid]).value(), current);
    }
}

// ---- refresh ahead ----

#[test]
fn refresh_ahead_fetches_only_what_expires_soon() {
    let (soon, later, none) = ("wxsoon", "wxlater", "wxnone");
    let env = setup(&[soon, later, none]);
    env.api.push_for(TOKEN, soon, Reply::token("soon-1", 200));
    env.api
        .push_for(TOKEN, later, Reply::token("later-1", 7200));
    refresh(&env, &["--appid", soon, "--appid", later]).assert_code(0);

    let out = refresh(&env, &["--if-expiring-within", "5m"]);
    out.assert_code(0);
    let s = summary(&out);
    assert_eq!((s.refreshed, s.fresh), (2, 1), "{}", out.stderr);
    assert_eq!(env.api.hits_for(TOKEN, soon), 2);
    assert_eq!(env.api.hits_for(TOKEN, later), 1);
    assert_eq!(env.api.hits_for(TOKEN, none), 1);
    assert_ne!(env.get(&["--appid", soon]).value(), "soon-1");
    assert_eq!(env.get(&["--appid", later]).value(), "later-1");
}

#[test]
fn refresh_ahead_of_a_stable_token_that_is_still_current_adds_no_row() {
    let a = "wxstableahead";
    let env = TestEnv::new();
    add(
        &env,
        &format!("--appid {a} --api stable"),
        &format!("secret-{a}"),
    );
    env.api
        .push_for(STABLE_TOKEN, a, Reply::token("stable-1", 400));
    refresh(&env, &[]).assert_code(0);

    // 400 s left is within 10 minutes, but WeChat renews only in the last 5.
    refresh(&env, &["--if-expiring-within", "10m"]).assert_code(0);
    assert_eq!(env.api.hits_for(STABLE_TOKEN, a), 2);
    assert_eq!(token_rows(&env, a), ["stable-1"]);
    assert_eq!(last_outcome(&env, a), "unchanged");
    assert_eq!(count(&env, "SELECT count(*) FROM attempts"), 2);
}

/// A refresh-ahead run claims no account that is clearly not due: it reads every newest
/// row at once first. Live claims of another host on the fresh accounts would show as
/// "being refreshed by another run" if it tried. What is due is still fetched, under its
/// claim, by the same rules: a short-lived token or ticket, a fetch asked for (set-secret,
/// enable), an unfinished fetch; and a due account whose claim another host holds is left
/// to it.
#[test]
fn refresh_ahead_claims_only_what_is_due() {
    let (fresh, soon, asked, unfinished, taken) =
        ("wxfresh", "wxsoon", "wxasked", "wxunfinished", "wxtaken");
    let env = setup(&[fresh, soon, asked, unfinished, taken]);
    let ticket = "wxticket";
    add(
        &env,
        &["--appid", ticket, "--ticket", "jsapi"],
        "secret-wxticket",
    );
    for appid in [soon, taken] {
        env.api
            .push_for(TOKEN, appid, Reply::token(&format!("{appid}-1"), 200));
    }
    refresh(&env, &[]).assert_code(0);
    for appid in [fresh, taken] {
        insert_claim(
            &env,
            account_id(&env, appid),
            "other-host.invalid",
            1,
            now() + 3600,
        );
    }
    env.execute(&format!(
        "UPDATE accounts SET fetch_due = true WHERE appid = '{asked}';
         UPDATE tokens SET expires_at = {0} WHERE kind = 'jsapi';
         UPDATE accounts SET due_at = {0} WHERE tickets <> '';
         INSERT INTO intents (account_id, holder, started_at)
         VALUES ({1}, 'other-host.invalid:1:test', {2});",
        now() + 100,
        account_id(&env, unfinished),
        now() - 10
    ));

    let out = refresh(&env, &["--if-expiring-within", "5m"]);
    out.assert_code(0);
    let s = summary(&out);
    assert_eq!((s.refreshed, s.fresh, s.busy), (4, 1, 1), "{}", out.stderr);
    for (appid, fetches) in [
        (fresh, 1),
        (soon, 2),
        (asked, 2),
        (unfinished, 2),
        (taken, 1),
    ] {
        assert_eq!(env.api.hits_for(TOKEN, appid), fetches, "{appid}");
    }
    // The token is fresh and only the ticket due: the ticket alone is fetched again.
    assert_eq!(env.api.hits_for(TOKEN, ticket), 1);
    assert_eq!(env.api.hits(TICKET), 2);
    // The other host's claims are as they were; this run left none behind.
    assert_eq!(
        lines(env.query("SELECT host FROM claims ORDER BY account_id")),
        ["other-host.invalid", "other-host.invalid"]
    );

    // Nothing due now but the account another host holds: no claim is tried but its.
    let out = refresh(&env, &["--if-expiring-within", "5m"]);
    out.assert_code(0);
    let s = summary(&out);
    assert_eq!((s.refreshed, s.fresh, s.busy), (0, 5, 1), "{}", out.stderr);
    assert_eq!(env.api.hits(TICKET), 2);
}

// ---- holds ----

/// One refresh of `appid` that WeChat answers with `errcode`; returns its output.
fn refresh_failing_with(env: &TestEnv, appid: &str, errcode: i64, errmsg: &str) -> Out {
    env.api
        .push_for(TOKEN, appid, Reply::errcode(errcode, errmsg));
    let out = refresh(env, &["--appid", appid]);
    out.assert_code(4);
    assert!(out.stderr.contains(&errcode.to_string()), "{}", out.stderr);
    out
}

/// A later run skips a held account without a request, saying until when.
#[track_caller]
fn assert_skipped(env: &TestEnv, appid: &str, until: &str) {
    let hits = env.api.hits_for(TOKEN, appid);
    let out = refresh(env, &["--appid", appid]);
    out.assert_code(4);
    let skipped = format!("{appid}: skipped {until}");
    assert!(
        out.stderr.contains(&skipped),
        "{skipped:?} in {}",
        out.stderr
    );
    // `get --reject` does not fetch for a held account either, and says why.
    let out = reject(env, appid, "some-token");
    out.assert_code(4);
    for word in [appid, until] {
        assert!(out.stderr.contains(word), "{word:?} in {}", out.stderr);
    }
    assert_eq!(
        env.api.hits_for(TOKEN, appid),
        hits,
        "no request while held"
    );
}

#[test]
fn configuration_errors_hold_until_the_configuration_changes() {
    let lifts: [(i64, &[&str]); 5] = [
        (40125, &["account", "set-secret"]),
        (40013, &["account", "enable"]),
        (40001, &["refresh", "--force"]),
        (41002, &["account", "set-secret"]),
        (41004, &["account", "enable"]),
    ];
    let ids: Vec<String> = lifts.iter().map(|(c, _)| format!("wxhold{c}")).collect();
    let env = setup(&ids);
    for ((errcode, lift), a) in lifts.iter().zip(&ids) {
        refresh_failing_with(&env, a, *errcode, "invalid credential");
        assert!(held_until(&env, a).is_some(), "{errcode}: held");
        assert_skipped(&env, a, "until its secret is updated");
        let status = env.status_block(a);
        for word in [
            "SKIPPED",
            "until its secret is updated",
            &errcode.to_string(),
        ] {
            assert!(status.contains(word), "{word:?} in {status}");
        }

        let mut args = lift.to_vec();
        args.extend(["--appid", a.as_str()]);
        env.run_with_stdin(&args, "a-new-secret\n").assert_code(0);
        assert_eq!(held_until(&env, a), None, "{lift:?} lifts the hold");
        refresh(&env, &["--appid", a]).assert_code(0);
        // `refresh --force` fetched once itself.
        let fetches = if lift[0] == "refresh" { 3 } else { 2 };
        assert_eq!(
            env.api.hits_for(TOKEN, a),
            fetches,
            "{errcode}: fetched again"
        );
        if lift[1] == "set-secret" {
            let sent = env.api.requests().into_iter().rfind(|r| r.path == TOKEN);
            assert_eq!(sent.expect("a fetch").query["secret"], "a-new-secret");
        }
        assert!(!env.status_block(a).contains("SKIPPED"));
        env.get(&["--appid", a]).value();
    }
}

#[test]
fn quota_and_ip_rejections_hold_for_a_while() {
    let holds: [(i64, i64); 3] = [(45009, 0), (89506, DAY), (89507, 3600)];
    let ids: Vec<String> = holds.iter().map(|(c, _)| format!("wxwait{c}")).collect();
    let env = setup(&ids);
    for ((errcode, lasts), a) in holds.iter().zip(&ids) {
        let before = now();
        refresh_failing_with(&env, a, *errcode, "blocked");
        let after = now();
        let until = held_until(&env, a).expect("held");
        if *errcode == 45009 {
            // Midnight in China is 16:00 UTC; the next one is at most a day away.
            assert!(rfc3339(until).ends_with("T16:00:00Z"), "{}", rfc3339(until));
            assert!((before + 1..=after + DAY).contains(&until), "{until}");
        } else {
            assert!(
                (before + lasts..=after + lasts).contains(&until),
                "{errcode}: held until {until}, now {before}"
            );
        }
        let until = format!("until {}", rfc3339(until));
        assert_skipped(&env, a, &until);
        let status = env.status_block(a);
        for word in ["SKIPPED", &until, &errcode.to_string()] {
            assert!(status.contains(word), "{word:?} in {status}");
        }
    }
}

#[test]
fn whitelist_and_per_minute_errors_do_not_hold() {
    let ip_msg = "invalid ip 203.0.113.7 ipv6 ::ffff:203.0.113.7, not in whitelist rid: 1";
    let cases = [(40164, ip_msg), (45011, "api minute-quota reach limit")];
    let ids: Vec<String> = cases.iter().map(|(c, _)| format!("wxretry{c}")).collect();
    let env = setup(&ids);
    for ((errcode, errmsg), a) in cases.iter().zip(&ids) {
        let out = refresh_failing_with(&env, a, *errcode, errmsg);
        if *errcode == 40164 {
            assert!(out.stderr.contains("203.0.113.7"), "{}", out.stderr);
        }
        assert_eq!(held_until(&env, a), None, "{errcode}");
        assert!(!env.status_block(a).contains("SKIPPED"));
        refresh(&env, &["--appid", a]).assert_code(0);
        assert_eq!(env.api.hits_for(TOKEN, a), 2, "{errcode}: tried again");
        env.get(&["--appid", a]).value();
    }
}

// ---- retention ----

#[test]
fn prune_keeps_the_newest_and_every_valid_token() {
    let a = "wxprune";
    let env = setup(&[a]);
    let t = now();
    let id = account_id(&env, a);
    insert_token(&env, id, "still-valid", t - 3000, 7200);
    for k in (1..=3).rev() {
        insert_token(&env, id, &format!("expired-{k}"), t - k * DAY, 7200);
    }
    refresh(&env, &[]).assert_code(0);
    let fetched = env.get(&["--appid", a]).value();

    insert_attempt(&env, id, t - 31 * DAY);
    insert_attempt(&env, id, t - 29 * DAY);
    let out = env.run(&["prune", "--keep", "2"]);
    out.assert_code(0);
    for word in ["2 token rows", "1 attempt"] {
        assert!(out.stderr.contains(word), "{word:?} in {}", out.stderr);
    }
    assert_eq!(token_rows(&env, a), ["still-valid", "expired-1", &fetched]);
    let old = format!(
        "SELECT count(*) FROM attempts WHERE started_at < {}",
        t - 30 * DAY
    );
    assert_eq!(count(&env, &old), 0);
    assert_eq!(count(&env, "SELECT count(*) FROM attempts"), 2);
}

#[test]
fn refresh_prunes_automatically() {
    let a = "wxautoprune";
    let keep = documented_default("prune", "--keep");
    let env = setup(&[a]);
    let t = now();
    let id = account_id(&env, a);
    let expired: String = (1..=keep as i64 + 10)
        .rev()
        .map(|k| insert_token_sql(id, &format!("expired-{k}"), t - DAY - k * 3600, 7200))
        .collect();
    env.execute(&expired);
    insert_attempt(&env, id, t - 31 * DAY);
    insert_attempt(&env, id, t - 29 * DAY);

    refresh(&env, &[]).assert_code(0);
    let rows = token_rows(&env, a);
    assert_eq!(rows.len(), keep);
    assert_eq!(rows.last(), Some(&env.get(&["--appid", a]).value()));
    assert_eq!(
        rows[0],
        format!("expired-{}", keep - 1),
        "the newest ones stay"
    );
    assert_eq!(count(&env, "SELECT count(*) FROM attempts"), 2);
}

#[test]
fn the_refresh_ahead_run_leaves_holds_to_the_hourly_run() {
    // With both cron lines, a hold would otherwise be mailed every four minutes.
    let env = setup(&["wxheld", "wxfine"]);
    refresh_failing_with(&env, "wxheld", 40125, "invalid appsecret");
    let hits = env.api.hits(TOKEN);

    let ahead = env.run(&["-q", "refresh", "--if-expiring-within", "5m"]);
    ahead.assert_code(0);
    assert_eq!(ahead.stderr, "", "the refresh-ahead run stays quiet");
    assert_eq!(
        env.api.hits_for(TOKEN, "wxheld"),
        1,
        "the held account is not fetched"
    );
    assert_eq!(
        env.api.hits(TOKEN),
        hits + 1,
        "only the account without a token is"
    );

    let verbose = refresh(&env, &["--if-expiring-within", "5m"]);
    verbose.assert_code(0);
    assert!(
        verbose.stderr.contains("1 held after an error"),
        "{}",
        verbose.stderr
    );

    let hourly = env.run(&["-q", "refresh"]);
    hourly.assert_code(4);
    assert!(
        hourly
            .stderr
            .contains("wxheld: skipped until its secret is updated"),
        "{}",
        hourly.stderr
    );
}

// Every behaviour here applies to a shared server; none is left SQLite-only.
also_on_postgres!(
    refresh_jobs_bounds_the_fetches_in_flight,
    refresh_default_jobs_is_the_documented_one,
    overlapping_gated_refreshes_fetch_each_account_once,
    overlapping_slow_refreshes_fetch_each_account_once,
    a_run_arriving_while_another_fetches_skips_its_accounts,
    a_killed_holder_does_not_block_the_next_run,
    live_claims_are_respected_and_expired_foreign_ones_taken_over,
    kill_9_at_any_moment_leaves_a_consistent_database,
    readers_never_fail_while_refreshes_write,
    reject_fetches_only_while_the_token_is_newest,
    reject_hands_out_a_token_recorded_while_it_waited_for_the_claim,
    twelve_concurrent_rejects_cause_one_fetch,
    stable_reject_falls_back_to_a_forced_refresh,
    forced_refreshes_stay_within_wechats_budget,
    refresh_ahead_fetches_only_what_expires_soon,
    refresh_ahead_of_a_stable_token_that_is_still_current_adds_no_row,
    refresh_ahead_claims_only_what_is_due,
    configuration_errors_hold_until_the_configuration_changes,
    quota_and_ip_rejections_hold_for_a_while,
    whitelist_and_per_minute_errors_do_not_hold,
    prune_keeps_the_newest_and_every_valid_token,
    refresh_prunes_automatically,
    the_refresh_ahead_run_leaves_holds_to_the_hourly_run,
);
