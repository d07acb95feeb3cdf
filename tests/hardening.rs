//! Never serve a dead token (issue 9): what `refresh` fetches, fetches that were never
//! recorded, the clock, set-secret during a fetch, and hostile input. The real binary, a real
//! SQLite file and the loopback stand-in; processes are synchronised through the stand-in's
//! hit counts and gates, never through sleeps.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::standin::{Reply, STABLE_TOKEN, TOKEN};
use support::{Out, TestEnv, add, add_with, json, now, run, status_block};

const SECRET: &str = "Hz3kSecretQ8vLm1NpR7tWx5YcBd2FgJ";
const NEW_SECRET: &str = "Pw4nNewSecretA9sDf6GhJk2LzXc8VbM";
/// Long enough for anything that should happen; only a failing test waits this long.
const PATIENCE: Duration = Duration::from_secs(20);

// ---- helpers ------------------------------------------------------------------------------

/// A fresh environment with these classic-API accounts, each with SECRET.
fn setup(appids: &[&str]) -> TestEnv {
    let env = TestEnv::new();
    for appid in appids {
        add(&env, &["--appid", appid, "--api", "token"], SECRET);
    }
    env
}

/// `get --json` of a token that must be there.
#[track_caller]
fn get_json(env: &TestEnv, appid: &str) -> Value {
    json(&run(env, &["get", "--appid", appid, "--json"], 0).stdout)
}

/// Seconds left by `get --json`.
#[track_caller]
fn left(env: &TestEnv, appid: &str) -> i64 {
    let doc = get_json(env, appid);
    doc["expires_in"]
        .as_i64()
        .unwrap_or_else(|| panic!("no expires_in: {doc}"))
}

/// Waits for a spawned process; kills it and fails if it outlives PATIENCE.
#[track_caller]
fn finish(child: Child) -> Out {
    support::finish_within(child, PATIENCE)
}

/// Starts `refresh` with `args` against a gated token route and waits until `n` requests
/// are held at the gate.
#[track_caller]
fn refresh_held_at_gate(env: &TestEnv, args: &[&str], n: usize) -> Child {
    env.api.gate(TOKEN);
    let child = env.spawn(&[&["refresh"], args].concat());
    assert!(
        env.api.wait_for_hits(TOKEN, n, PATIENCE),
        "{n} requests never arrived"
    );
    child
}

// ---- refresh does what it is told ---------------------------------------------------------

#[test]
fn a_manual_refresh_after_another_run_fetches_again() {
    let env = setup(&["wxagain"]);
    run(&env, &["refresh"], 0);
    let out = run(&env, &["refresh"], 0);
    out.assert_stderr_has(&["refreshed 1 of 1 accounts"]);
    assert_eq!(env.api.hits(TOKEN), 2, "the second run fetched");
}

#[test]
fn an_account_named_twice_is_fetched_once() {
    let env = setup(&["wxtwice1", "wxtwice2"]);
    let args = [
        "refresh", "--force", "--appid", "wxtwice1", "--appid", "wxtwice2",
    ];
    let out = run(&env, &[&args[..], &["--appid", "wxtwice1"]].concat(), 0);
    out.assert_stderr_has(&["refreshed 2 of 2 accounts"]);
    assert_eq!(env.api.hits_for(TOKEN, "wxtwice1"), 1);
    assert_eq!(env.api.hits(TOKEN), 2);
}

#[test]
fn a_refresh_against_a_dead_server_fails() {
    let env = setup(&["wxdead"]);
    run(&env, &["refresh"], 0);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let out = run(&env, &["refresh", "--api-base", &url], 4);
    out.assert_stderr_has(&["wxdead", "network error", "1 failed"]);
    // Refused before sending: nothing can have been issued, so the token stays served.
    assert!(left(&env, "wxdead") > 7000);
}

/// A name that does not resolve (`.invalid` never does, and no network is reached) and a
/// TLS handshake that fails (https to a server that speaks plain HTTP) both end before
/// the request leaves: nothing can have been issued, so the stored classic token keeps
/// its time and `get` serves it.
#[test]
fn a_failure_before_the_request_leaves_keeps_the_token_served() {
    let env = setup(&["wxnosend"]);
    run(&env, &["refresh"], 0);
    let plain = env.api.url();
    let https = plain.replacen("http://", "https://", 1);
    for base in [&https[..], "http://wxtoken-test.invalid"] {
        let out = run(
            &env,
            &["refresh", "--force", "--timeout", "2", "--api-base", base],
            4,
        );
        out.assert_stderr_has(&["wxnosend", "network error", "1 failed"]);
        let secs = left(&env, "wxnosend");
        assert!(secs > 7000, "{base}: capped at {secs}");
        run(&env, &["get", "--appid", "wxnosend"], 0);
    }
}

#[test]
fn set_secret_and_enable_make_the_account_due_for_either_kind_of_run() {
    let env = setup(&["wxsecret", "wxenable"]);
    env.api.register("wxsecret", SECRET);
    env.api.register("wxsecret", NEW_SECRET);
    env.api.register("wxenable", SECRET);
    run(&env, &["refresh"], 0);
    env.run_with_stdin(
        &["account", "set-secret", "--appid", "wxsecret"],
        &format!("{NEW_SECRET}\n"),
    )
    .assert_code(0);
    run(&env, &["account", "disable", "--appid", "wxenable"], 0);
    run(&env, &["account", "enable", "--appid", "wxenable"], 0);
    // Both tokens have two hours left: only the changes make them due.
    let out = run(&env, &["refresh", "--if-expiring-within", "5m"], 0);
    out.assert_stderr_has(&["refreshed 2 of 2 accounts"]);
    let secrets: Vec<String> = env.requests_to(TOKEN)[2..]
        .iter()
        .map(|r| r.query["secret"].clone())
        .collect();
    assert!(secrets.contains(&NEW_SECRET.to_string()), "{secrets:?}");
    // Done: the next refresh-ahead run leaves them alone.
    let out = run(&env, &["refresh", "--if-expiring-within", "5m"], 0);
    out.assert_stderr_has(&["refreshed 0 of 2 accounts; 2 already fresh"]);
    assert_eq!(env.api.hits(TOKEN), 4);
}

// ---- fetches that were never recorded -----------------------------------------------------

/// An account whose stored token is fresh, and a refresh killed (-9) while its next fetch
/// of that account was at WeChat.
fn killed_mid_fetch(api: &str) -> TestEnv {
    let env = TestEnv::new();
    add(&env, &["--appid", "wxkilled", "--api", api], SECRET);
    run(&env, &["refresh"], 0);
    let route = if api == "stable" { STABLE_TOKEN } else { TOKEN };
    env.api.gate(route);
    let mut child = env.spawn(&["refresh", "--force"]);
    assert!(env.api.wait_for_hits(route, 2, PATIENCE), "fetch arrived");
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    env.api.open_gate(route);
    env
}

#[test]
fn an_unrecorded_classic_fetch_caps_the_old_token_at_five_minutes() {
    let env = killed_mid_fetch("token");
    let doc = get_json(&env, "wxkilled");
    let secs = doc["expires_in"].as_i64().expect("expires_in");
    assert!((1..=300).contains(&secs), "capped at 300 s: {doc}");
    let out = run(&env, &["get", "--appid", "wxkilled", "--min-ttl", "301"], 3);
    out.assert_stderr_has(&["less than --min-ttl", "unrecorded fetch"]);
    let status = run(&env, &["status"], 0).stdout;
    let block = status_block(&status, "wxkilled");
    assert!(block.contains("never recorded"), "{block}");
    let entry = &json(&run(&env, &["status", "--json"], 0).stdout)["accounts"][0];
    assert!(
        entry["token"]["expires_in"].as_i64().unwrap() <= 300,
        "{entry}"
    );
    // The next refresh of either kind fetches it, and the new token is served in full.
    run(&env, &["refresh", "--if-expiring-within", "1m"], 0);
    assert_eq!(env.api.hits(TOKEN), 3);
    assert!(left(&env, "wxkilled") > 7000);
}

#[test]
fn an_unrecorded_stable_fetch_leaves_the_old_token_alone() {
    let env = killed_mid_fetch("stable");
    assert!(left(&env, "wxkilled") > 7000);
}

#[test]
fn a_lost_answer_caps_the_classic_token_but_a_wechat_error_does_not() {
    let env = setup(&["wxlost"]);
    run(&env, &["refresh"], 0);
    // WeChat answered with an errcode: it issued nothing.
    env.api
        .push(TOKEN, Reply::errcode(45011, "api minute-quota reach limit"));
    run(&env, &["refresh"], 4);
    assert!(left(&env, "wxlost") > 7000);
    // The request got there, the answer did not: a token may have been issued.
    for _ in 0..3 {
        env.api.push(TOKEN, Reply::Drop);
    }
    run(&env, &["refresh"], 4);
    let secs = left(&env, "wxlost");
    assert!(secs <= 300, "capped: {secs}");
}

// ---- the clock ----------------------------------------------------------------------------

/// One account with a token whose row says it was fetched `ahead` seconds from now, as a
/// clock stepped back since the fetch would have it.
fn fetched_ahead(appid: &str, ahead: i64) -> TestEnv {
    let env = setup(&[appid]);
    run(&env, &["refresh"], 0);
    let t = now() + ahead;
    env.execute(&format!(
        "UPDATE tokens SET fetched_at = {t}, expires_at = {}
         WHERE id = (SELECT max(id) FROM tokens)",
        t + 7200
    ));
    env
}

#[test]
fn time_left_is_never_more_than_the_tokens_lifetime() {
    // Fetched 50 s "from now" (within the slack): the clock stepped back a little.
    let env = fetched_ahead("wxclock", 50);
    let secs = left(&env, "wxclock");
    assert!(secs <= 7200, "{secs}");
    run(&env, &["get", "--appid", "wxclock", "--min-ttl", "7201"], 3);
}

#[test]
fn a_token_fetched_in_the_future_is_not_served_and_is_due() {
    let env = fetched_ahead("wxfuture", 3600);
    env.get(&["--appid", "wxfuture"])
        .assert_no_value(&["in the future", "clock stepped back"]);
    let status = run(&env, &["status"], 0).stdout;
    assert!(status.contains("IN THE FUTURE"), "{status}");
    run(&env, &["refresh", "--if-expiring-within", "5m"], 0);
    assert_eq!(env.api.hits(TOKEN), 2, "due even for the refresh-ahead run");
    env.get(&["--appid", "wxfuture"]).value();
}

#[test]
fn a_skewed_date_header_warns_on_stderr_and_in_status() {
    let env = setup(&["wxskew"]);
    env.api.set_date_skew(-600);
    let out = run(&env, &["-q", "refresh"], 0);
    out.assert_stderr_has(&["warning", "clock is 600 s ahead of WeChat's"]);
    let status = run(&env, &["status"], 0).stdout;
    assert!(
        status.contains("CLOCK: this machine's clock is 600 s ahead"),
        "{status}"
    );
    let entry = &json(&run(&env, &["status", "--json"], 0).stdout)["accounts"][0];
    let offset = entry["last_attempt"]["clock_offset"].as_i64().unwrap();
    assert!((-602..=-598).contains(&offset), "{entry}");
    // Within a minute: silence.
    env.api.set_date_skew(30);
    let out = run(&env, &["-q", "refresh"], 0);
    assert_eq!(out.stderr, "");
}

// ---- set-secret during a fetch ------------------------------------------------------------

#[test]
fn an_outcome_of_a_replaced_secret_never_holds_the_new_one() {
    let env = setup(&["wxrace"]);
    env.api
        .push(TOKEN, Reply::errcode(40125, "invalid appsecret"));
    let child = refresh_held_at_gate(&env, &[], 1);
    env.run_with_stdin(
        &["account", "set-secret", "--appid", "wxrace"],
        &format!("{NEW_SECRET}\n"),
    )
    .assert_code(0);
    env.api.open_gate(TOKEN);
    finish(child).assert_code(4).assert_stderr_has(&["40125"]);
    let status = run(&env, &["status"], 0).stdout;
    assert!(!status.contains("SKIPPED"), "{status}");
    run(&env, &["refresh", "--if-expiring-within", "5m"], 0);
    let last = env.requests_to(TOKEN).pop().expect("a request");
    assert_eq!(last.query["secret"], NEW_SECRET);
}

// ---- bad input ----------------------------------------------------------------------------

/// A usage error: exit 2, one line on stderr, nothing on stdout.
#[track_caller]
fn usage_error(env: &TestEnv, args: &[&str], words: &[&str]) -> Out {
    let out = run(env, args, 2);
    assert_eq!(out.stdout, "");
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    out.assert_stderr_has(words);
    out
}

#[test]
fn durations_that_do_not_fit_are_usage_errors() {
    let env = setup(&["wxttl"]);
    run(&env, &["refresh"], 0);
    for big in ["9223372036854775808", "106751991167301d"] {
        usage_error(
            &env,
            &["get", "--appid", "wxttl", "--min-ttl", big],
            &["too large"],
        );
        usage_error(
            &env,
            &["refresh", "--if-expiring-within", big],
            &["too large"],
        );
    }
    assert_eq!(env.api.hits(TOKEN), 1);
}

#[test]
fn refresh_appid_is_validated_and_never_echoed_raw() {
    let env = setup(&["wxvalid"]);
    for bad in ["wx\nINJECTED", "wx\u{1b}[31mred", "corp/agent/x", "a b"] {
        let out = run(&env, &["refresh", "--appid", bad], 2);
        assert_eq!(out.stderr.lines().count(), 1, "{:?}", out.stderr);
        assert!(!out.stderr.contains('\u{1b}'), "{:?}", out.stderr);
    }
    assert_eq!(env.api.hits(TOKEN), 0);
}

/// Control characters in a sink name, a `--key` template or a database path: refused in
/// one line that shows them escaped, never raw (they would reach terminals and logs).
#[test]
fn control_characters_in_names_templates_and_paths_are_shown_escaped() {
    let env = setup(&["wxctl"]);
    let red = "a\u{1b}[31mb";
    let db = format!("{}/x\u{1b}[2J.db", env.dir.display());
    let cases: Vec<Vec<&str>> = vec![
        vec!["sink", "add", red, "--exec", "true"],
        vec!["sink", "test", red],
        vec!["sink", "remove", "x\u{7}"],
        vec![
            "sink",
            "add",
            "s1",
            "--redis",
            "redis://127.0.0.1:1/0",
            "--format",
            "plain",
            "--key",
            "wx:\u{1b}[2J{appid}",
        ],
        vec!["--db", &db, "get", "--appid", "wxctl"],
        vec!["store", "copy", "--to", &db],
    ];
    for args in cases {
        let out = run(&env, &args, 2);
        assert_eq!(out.stdout, "", "{args:?}");
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {:?}", out.stderr);
        assert!(
            !out.stderr.trim_end().contains(char::is_control),
            "{args:?}: {:?}",
            out.stderr
        );
        assert!(
            out.stderr.contains("control characters"),
            "{args:?}: {:?}",
            out.stderr
        );
    }
    env.set_env("WXTOKEN_DB", &db);
    let out = run(&env, &["status"], 2);
    assert!(out.stderr.contains("x\\u{1b}[2J.db"), "{:?}", out.stderr);
    assert!(!std::path::Path::new(&db).exists());
}

#[test]
fn an_absurd_lifetime_is_an_invalid_reply() {
    let env = setup(&["wxyear"]);
    env.api
        .push(TOKEN, Reply::token("A_YEAR_LONG_TOKEN", 365 * 86_400));
    let out = run(&env, &["refresh"], 4);
    out.assert_stderr_has(&["invalid reply", "expires_in"]);
    env.get(&["--appid", "wxyear"])
        .assert_no_value(&["no token"]);
}

// ---- a locked database --------------------------------------------------------------------

#[test]
fn a_locked_database_fails_the_run_after_one_busy_timeout() {
    let ids: Vec<String> = (0..20).map(|i| format!("wxlock{i:02}")).collect();
    let env = setup(&ids.iter().map(String::as_str).collect::<Vec<_>>());
    let lock = env.open_db();
    lock.execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");
    let started = Instant::now();
    let out = run(&env, &["-q", "refresh"], 5);
    let took = started.elapsed();
    lock.execute_batch("ROLLBACK").expect("release");
    out.assert_stderr_has(&["is locked by another process", "20 not tried"]);
    assert_eq!(out.stderr.lines().count(), 2, "{}", out.stderr);
    assert_eq!(env.api.hits(TOKEN), 0);
    // Serially, one busy timeout (10 s) per account would be 200 s.
    assert!(took < Duration::from_secs(40), "took {took:?}");
}

/// A process that may only read the database (a reader in the group) holds a shared lock
/// on one byte of the `-shm`, SQLite's recovery lock: every write fails with "locking
/// protocol" after SQLite's retries. The one line names the likely cause and how to find
/// the process.
#[test]
fn a_reader_holding_a_shm_lock_is_named_as_the_likely_cause() {
    let env = setup(&["wxshm"]);
    run(&env, &["refresh"], 0);
    let shm = companion(&env.db(), "-shm");
    let file = std::fs::File::open(&shm).expect("open the -shm read-only");
    // SQLite's WAL_RECOVER_LOCK: byte 120 + 2 of the -shm.
    // SAFETY: a plain flock struct for fcntl on a descriptor this test owns.
    let locked = unsafe {
        let mut lock: libc::flock = std::mem::zeroed();
        lock.l_type = libc::F_RDLCK as libc::c_short;
        lock.l_whence = libc::SEEK_SET as libc::c_short;
        lock.l_start = 122;
        lock.l_len = 1;
        libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&file), libc::F_SETLK, &lock)
    };
    assert_eq!(locked, 0, "lock the -shm byte");
    let out = env.run(&["-q", "refresh", "--force"]);
    drop(file);
    out.assert_code(5);
    let shm = shm.display().to_string();
    out.assert_stderr_has(&[
        "locking protocol",
        &format!("another process holds locks on {shm}"),
        &format!("fuser -v {shm}"),
        "lsof",
    ]);
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("wxtoken:"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", out.stderr);
    // Once the reader lets go, the refresh works.
    run(&env, &["refresh", "--force"], 0);
}

// ---- signals ------------------------------------------------------------------------------

/// Sends a signal to a spawned process and waits until it has been delivered: `kill`
/// returns while the signal may still be pending, and a busy machine could let the run
/// get its answer and start another fetch before its handler ran (or merge two signals).
#[track_caller]
fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig}");
    let deadline = Instant::now() + PATIENCE;
    while signal_pending(child.id()) {
        assert!(Instant::now() < deadline, "SIG{sig} never delivered");
        std::thread::yield_now();
    }
}

/// Whether a signal is pending for the process `pid` or any of its threads (a process
/// that has exited has none).
fn signal_pending(pid: u32) -> bool {
    let pending = |status: &str, field: &str| {
        status.lines().any(|l| {
            l.strip_prefix(field)
                .is_some_and(|mask| !mask.trim().trim_start_matches('0').is_empty())
        })
    };
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let shared = std::fs::read_to_string(proc.join("status")).unwrap_or_default();
    let Ok(tasks) = std::fs::read_dir(proc.join("task")) else {
        return false;
    };
    pending(&shared, "ShdPnd:")
        || tasks.flatten().any(|task| {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            pending(&status, "SigPnd:")
        })
}

#[test]
fn sigterm_finishes_the_fetch_in_flight_and_starts_no_other() {
    for sig in ["TERM", "INT", "HUP"] {
        let env = setup(&["wxsig1", "wxsig2", "wxsig3"]);
        let child = refresh_held_at_gate(&env, &["--jobs", "1"], 1);
        signal(&child, sig);
        env.api.open_gate(TOKEN);
        let out = finish(child);
        out.assert_code(8).assert_stderr_has(&[
            "refreshed 1 of 3",
            &format!("stopped by SIG{sig}"),
            "2 not tried",
        ]);
        assert_eq!(env.api.hits(TOKEN), 1, "{sig}: no new fetch");
        env.get(&["--appid", "wxsig1"]).value();
        let claims = env.query_i64("SELECT count(*) FROM claims");
        assert_eq!(claims, 0, "claims released");
        assert_eq!(env.query_i64("SELECT count(*) FROM intents"), 0);
    }
}

/// A fetch in flight when the signal came that then times out is not tried again: no new
/// request after the signal.
#[test]
fn after_a_stop_signal_a_fetch_that_times_out_is_not_retried() {
    let env = setup(&["wxnoretry"]);
    let child = refresh_held_at_gate(&env, &["--timeout", "2"], 1);
    signal(&child, "TERM");
    let out = finish(child);
    env.api.open_gate(TOKEN);
    out.assert_code(8)
        .assert_stderr_has(&["wxnoretry", "timed out", "stopped by SIGTERM"]);
    assert_eq!(env.api.hits(TOKEN), 1, "a request after the signal");
}

#[test]
fn a_second_signal_ends_the_run_at_once() {
    let env = setup(&["wxtwice"]);
    let child = refresh_held_at_gate(&env, &[], 1);
    signal(&child, "TERM");
    signal(&child, "TERM");
    // The gate stays closed: only the second signal can end it.
    let out = finish(child);
    env.api.open_gate(TOKEN);
    out.assert_code(8);
}

// ---- the secret -------------------------------------------------------------------------

#[test]
fn a_secret_over_64_kib_is_refused_not_cut() {
    let env = TestEnv::new();
    let long = "s".repeat(64 * 1024 + 1);
    add_with(&env, &["--appid", "wxlong"], &format!("{long}\n"), 2)
        .assert_stderr_has(&["longer than 64 KiB"]);
    let listed = run(&env, &["account", "list"], 0).stdout;
    assert!(!listed.contains("wxlong"), "{listed}");
}

#[test]
fn ctrl_c_at_the_secret_prompt_restores_echo() {
    let env = TestEnv::new();
    // In a pseudo-terminal: the prompt, Ctrl-C, then the terminal's settings as left. The
    // shell ignores SIGINT to live on and show them; wxtoken gets the default back.
    let inner = format!(
        "trap '' INT; (trap - INT; exec {} account add --appid wxprompt); stty -a",
        env!("CARGO_BIN_EXE_wxtoken")
    );
    let mut child = Command::new("script")
        .args(["-qfec", &format!("sh -c \"{inner}\""), "/dev/null"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("WXTOKEN_DB", env.store())
        .env("WXTOKEN_KEY_FILE", env.key_file())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run script(1) from util-linux (bsdutils)");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = child.stdout.take().expect("stdout");
    let (chunks, seen) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        while let Ok(n @ 1..) = std::io::Read::read(&mut stdout, &mut buf) {
            if chunks.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    // wxtoken turns echo off before it shows the prompt: Ctrl-C after the prompt comes while
    // echo is off, as when a user presses it while typing.
    let mut text = String::new();
    while !text.contains("secret for wxprompt") {
        let chunk = seen.recv_timeout(PATIENCE).expect("the prompt appears");
        text += &String::from_utf8_lossy(&chunk);
    }
    std::io::Write::write_all(&mut stdin, b"\x03").expect("send Ctrl-C");
    while let Ok(chunk) = seen.recv_timeout(PATIENCE) {
        text += &String::from_utf8_lossy(&chunk);
    }
    let _ = child.wait();
    assert!(text.contains(" echo "), "echo restored:\n{text}");
    assert!(!text.contains("-echo "), "echo left off:\n{text}");
}

// ---- root-only cases ----------------------------------------------------------------------

/// Another user, by number: nobody needs to exist with it.
const STRANGER: u32 = 54_321;

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Whether a root-only case can run; says so visibly when it cannot.
fn root_or_skip(what: &str) -> bool {
    let root = is_root();
    if !root {
        eprintln!("SKIPPED (needs root): {what}");
    }
    root
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).expect("chown");
}

fn companion(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

// ---- a failed record ----------------------------------------------------------------------

/// A small tmpfs, unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(env: &TestEnv) -> SmallDisk {
        let dir = env.dir.join("small");
        std::fs::create_dir(&dir).expect("mkdir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
            .arg(&dir)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount a tmpfs");
        SmallDisk(dir)
    }

    /// Writes a file until the disk is full.
    fn fill(&self) {
        let mut filler = std::fs::File::create(self.0.join("filler")).expect("filler");
        let chunk = vec![0u8; 4096];
        while std::io::Write::write_all(&mut filler, &chunk).is_ok() {}
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_at_record_time_says_the_stored_token_dies_and_caps_it() {
    if !root_or_skip("full-disk test on a small tmpfs") {
        return;
    }
    let env = TestEnv::new();
    let disk = SmallDisk::mount(&env);
    env.set_env(
        "WXTOKEN_DB",
        &disk.0.join("wxtoken.db").display().to_string(),
    );
    add(&env, &["--appid", "wxfull", "--api", "token"], SECRET);
    run(&env, &["refresh"], 0);
    let child = refresh_held_at_gate(&env, &[], 2);
    disk.fill();
    env.api.open_gate(TOKEN);
    finish(child).assert_code(5).assert_stderr_has(&[
        "wxfull",
        "could not record",
        "dies within 5 minutes",
        "refresh --appid wxfull",
    ]);
    std::fs::remove_file(disk.0.join("filler")).expect("make room");
    let secs = left(&env, "wxfull");
    assert!(secs <= 300, "capped: {secs}");
}

/// A disk with a few KiB left, at the moment a new database is made: "disk full", with
/// what to do, whichever error SQLite met (SQLITE_FULL, or "disk I/O error" for a write
/// that found no room).
#[test]
fn a_nearly_full_disk_says_disk_full() {
    if !root_or_skip("full-disk test on a small tmpfs") {
        return;
    }
    let env = TestEnv::new();
    let disk = SmallDisk::mount(&env);
    let db = disk.0.join("wxtoken.db");
    env.set_env("WXTOKEN_DB", &db.display().to_string());
    let mut refused = 0;
    for kib in [0u64, 4, 8, 16, 24, 40, 60] {
        // A new database each time: the moment that met "disk I/O error".
        for file in std::fs::read_dir(&disk.0).expect("list") {
            std::fs::remove_file(file.expect("entry").path()).expect("clear");
        }
        disk.fill();
        // Give back `kib` KiB: the filler's tail.
        let filler = disk.0.join("filler");
        let len = std::fs::metadata(&filler).expect("filler").len();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&filler)
            .expect("open");
        file.set_len(len.saturating_sub(kib * 1024))
            .expect("truncate");
        drop(file);
        let out = env.run_with_stdin(
            &["account", "add", "--appid", "wxnearlyfull"],
            &format!("{SECRET}\n"),
        );
        std::fs::remove_file(&filler).expect("make room");
        if out.code == 0 {
            continue;
        }
        refused += 1;
        assert!(
            out.stderr.contains("disk full") && !out.stderr.contains("disk I/O error"),
            "{kib} KiB free: {out:?}"
        );
        assert_eq!(out.stderr.lines().count(), 1, "{kib} KiB free: {out:?}");
    }
    assert!(refused >= 3, "the disk was never full enough: {refused}");
}

/// "unable to open database file" says whose the files and the directory are, and their
/// modes, and who is asking: here a reader in the group, whose -wal and -shm are the
/// owner's alone.
#[test]
fn a_database_that_will_not_open_names_owners_and_modes() {
    if !root_or_skip("another user's database") {
        return;
    }
    let env = TestEnv::new_in(&std::env::temp_dir());
    add(&env, &["--appid", "wxmodes", "--api", "token"], SECRET);
    run(&env, &["refresh"], 0);
    let bin = env.dir.join("bin/wxtoken");
    std::fs::create_dir_all(bin.parent().unwrap()).expect("mkdir bin");
    std::fs::copy(env!("CARGO_BIN_EXE_wxtoken"), &bin).expect("copy the binary");
    let db = env.db();
    std::os::unix::fs::chown(&db, None, Some(STRANGER)).expect("chgrp");
    chmod(&db, 0o640);
    for suffix in ["-wal", "-shm"] {
        chmod(&companion(&db, suffix), 0o600);
    }
    let reader = (STRANGER + 1).to_string();
    let out = Command::new("setpriv")
        .args(["--reuid", &reader, "--regid", &reader])
        .args(["--groups", &STRANGER.to_string()])
        .arg(&bin)
        .args(["get", "--appid", "wxmodes"])
        .env_clear()
        .env("WXTOKEN_DB", &db)
        .stdin(Stdio::null())
        .output()
        .expect("run setpriv (util-linux)");
    let out = Out::from_output(out);
    out.assert_one_line_error(5).assert_stderr_has(&[
        "unable to open database file",
        &format!("{}: owner uid 0, mode 0640", db.display()),
        &format!("{}-shm: owner uid 0, mode 0600", db.display()),
        &format!("this user is uid {reader}"),
    ]);
}

// ---- the database file is ours alone ------------------------------------------------------

#[test]
fn a_file_planted_by_another_user_is_refused() {
    if !root_or_skip("another user's file") {
        return;
    }
    let env = TestEnv::new();
    let db = env.db();
    std::fs::write(&db, b"").expect("plant");
    chmod(&db, 0o666);
    chown(&db, STRANGER);
    let out = add_with(&env, &["--appid", "wxplant"], &format!("{SECRET}\n"), 5);
    out.assert_stderr_has(&[
        &db.display().to_string(),
        &format!("owner uid {STRANGER}"),
        "mode 0666",
        "another user",
    ]);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert_eq!(std::fs::metadata(&db).unwrap().len(), 0, "left untouched");
}

#[test]
fn an_empty_file_or_a_symlink_is_never_migrated() {
    let env = TestEnv::new();
    let db = env.db();
    // An empty file of our own that wxtoken did not create.
    std::fs::write(&db, b"").expect("touch");
    chmod(&db, 0o600);
    run(&env, &["status"], 5).assert_stderr_has(&["empty file that wxtoken did not create"]);
    std::fs::remove_file(&db).expect("rm");
    // A symlink to an existing empty file.
    let target = env.dir.join("victim");
    std::fs::write(&target, b"").expect("victim");
    chmod(&target, 0o600);
    std::os::unix::fs::symlink(&target, &db).expect("symlink");
    run(&env, &["status"], 5).assert_stderr_has(&[&db.display().to_string()]);
    let size = std::fs::metadata(&target).unwrap().len();
    assert_eq!(size, 0, "target untouched");
    std::fs::remove_file(&db).expect("rm");
    // A symlink to a file that is not there yet is not followed to create it either.
    std::os::unix::fs::symlink(env.dir.join("elsewhere"), &db).expect("symlink");
    run(&env, &["status"], 5);
    assert!(!env.dir.join("elsewhere").exists());
}

#[test]
fn modes_that_let_others_in_are_refused_and_0640_is_allowed() {
    let env = setup(&["wxmode"]);
    run(&env, &["refresh"], 0);
    let db = env.db();
    chmod(&db, 0o640);
    run(&env, &["status"], 0);
    env.get(&["--appid", "wxmode"]).value();
    for mode in [0o644, 0o660, 0o602] {
        chmod(&db, mode);
        for args in [&["status"][..], &["get", "--appid", "wxmode"]] {
            run(&env, args, 5).assert_stderr_has(&[
                &db.display().to_string(),
                &format!("mode {mode:04o}"),
                "chmod 600",
            ]);
        }
    }
    chmod(&db, 0o600);
    // A leftover -wal of the wrong mode is named, not "readonly database".
    let wal = companion(&db, "-wal");
    std::fs::write(&wal, b"").expect("wal");
    chmod(&wal, 0o666);
    run(&env, &["status"], 5).assert_stderr_has(&[&wal.display().to_string(), "mode 0666"]);
}

#[test]
fn a_leftover_shm_of_another_user_is_named() {
    if !root_or_skip("another user's -shm") {
        return;
    }
    let env = setup(&["wxshm"]);
    let shm = companion(&env.db(), "-shm");
    std::fs::write(&shm, b"").expect("shm");
    chmod(&shm, 0o600);
    chown(&shm, STRANGER);
    run(&env, &["refresh"], 5)
        .assert_stderr_has(&[&shm.display().to_string(), &format!("owner uid {STRANGER}")]);
}

#[test]
fn get_works_in_a_read_only_directory_of_another_user() {
    if !root_or_skip("get as another user in a read-only directory") {
        return;
    }
    // In the shared temporary directory, with a copy of the binary: the checkout, and the
    // build in it, may sit where other users cannot go (a clone under /root, mode 0700).
    let env = TestEnv::new_in(&std::env::temp_dir());
    add(&env, &["--appid", "wxro", "--api", "token"], SECRET);
    let bin = env.dir.join("bin/wxtoken");
    std::fs::create_dir_all(bin.parent().unwrap()).expect("mkdir bin");
    std::fs::copy(env!("CARGO_BIN_EXE_wxtoken"), &bin).expect("copy the binary");
    env.api.push(TOKEN, Reply::token("READONLY_TOKEN", 7200));
    run(&env, &["refresh"], 0);
    let dir = env.dir.join("ro");
    std::fs::create_dir(&dir).expect("mkdir");
    let db = dir.join("wxtoken.db");
    std::fs::rename(env.db(), &db).expect("move the database");
    chown(&db, STRANGER);
    chown(&dir, STRANGER);
    chmod(&dir, 0o555);
    // As the owner, and as a reader in the owner's group (the database 0640).
    let as_user = |uid: u32, args: &[&str]| {
        let (uid, gid) = (uid.to_string(), STRANGER.to_string());
        let out = Command::new("setpriv")
            .args(["--reuid", &uid, "--regid", &uid, "--groups", &gid])
            .arg(&bin)
            .args(args)
            .env_clear()
            .env("WXTOKEN_DB", &db)
            .stdin(Stdio::null())
            .output()
            .expect("run setpriv (util-linux)");
        Out::from_output(out)
    };
    let out = as_user(STRANGER, &["get", "--appid", "wxro"]);
    assert_eq!(out.value(), "READONLY_TOKEN");
    chmod(&db, 0o640);
    for uid in [STRANGER, STRANGER + 1] {
        // What only reads works without write access, as on PostgreSQL with a reader role.
        let list = as_user(uid, &["account", "list"]);
        list.assert_code(0);
        assert!(list.stdout.contains("wxro"), "{uid}: {list:?}");
        let dry = as_user(uid, &["refresh", "--dry-run"]);
        dry.assert_code(0);
        assert!(dry.stdout.starts_with("wxro  "), "{uid}: {dry:?}");
        as_user(uid, &["refresh"]).assert_one_line_error(5);
    }
    chmod(&dir, 0o755);
    let shm = companion(&db, "-shm");
    assert!(!shm.exists(), "nothing written beside it");
}

#[test]
fn corruption_found_after_opening_exits_5_with_the_path() {
    let env = setup(&["wxcorrupt"]);
    run(&env, &["refresh"], 0);
    let db = env.db();
    // Keep the header (page 1), wreck the pages of the tables.
    let mut bytes = std::fs::read(&db).expect("read");
    assert!(bytes.len() > 8192, "more than one page");
    for b in &mut bytes[4096..] {
        *b = 0xA5;
    }
    std::fs::write(&db, &bytes).expect("write");
    for args in [&["status"][..], &["get", "--appid", "wxcorrupt"]] {
        run(&env, args, 5).assert_stderr_has(&[&db.display().to_string()]);
    }
}

// ---- the API base ---------------------------------------------------------------------------

/// The secret in disguises an echoing upstream might use.
fn disguises(secret: &str) -> Vec<String> {
    let reversed: String = secret.chars().rev().collect();
    let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
    let b64 = {
        // Standard base64, written out so that the test depends on no crate.
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for c in secret.as_bytes().chunks(3) {
            let n = c
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
            for i in 0..=c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    };
    vec![
        secret.to_lowercase(),
        secret.to_uppercase(),
        reversed,
        format!("{} {}", &secret[..16], &secret[16..]),
        hex.to_uppercase(),
        b64,
    ]
}

/// An upstream that echoes the secret changed or encoded (in a page that is not JSON, or
/// in an errmsg): neither stderr, nor `status --json`, nor the attempts table show any of
/// it. A page that is not WeChat's JSON is described, never quoted.
#[test]
fn a_secret_echoed_in_disguise_is_never_shown_nor_stored() {
    let env = setup(&["wxecho"]);
    let words = disguises(SECRET);
    let page = format!("<html>{}</html>", words.join(" | "));
    let mut outs = Vec::new();
    for _ in 0..3 {
        env.api.push(TOKEN, Reply::Body(page.clone()));
    }
    outs.push(run(&env, &["refresh"], 4));
    for word in &words {
        env.api.push(
            TOKEN,
            Reply::errcode(40013, &format!("invalid appid {word}")),
        );
        outs.push(run(&env, &["refresh", "--force"], 4));
    }
    env.api.push(
        TOKEN,
        Reply::Body(format!("{{\"errcode\": \"{SECRET}x\"}}")),
    );
    outs.push(run(&env, &["refresh", "--force"], 4));
    outs.push(run(&env, &["status", "--json"], 0));
    outs.push(run(&env, &["status"], 0));
    assert!(outs[0].stderr.contains("an HTML page of"), "{:?}", outs[0]);
    let attempts =
        env.query("SELECT coalesce(errmsg, '') || ' ' || coalesce(detail, '') FROM attempts");
    for word in words.iter().chain([&SECRET.to_string()]) {
        let piece = &word[..12];
        for out in &outs {
            assert!(
                !out.stderr.contains(piece) && !out.stdout.contains(piece),
                "{word} shown: {out:?}"
            );
        }
        assert!(!attempts.contains(piece), "{word} stored: {attempts}");
    }
}

/// A percent-escape in the host resolves nowhere: a usage error before any request, not a
/// network error tried three times.
#[test]
fn a_percent_escape_in_the_api_base_host_is_refused() {
    let env = setup(&["wxpct"]);
    for base in [
        "http://api%2eweixin.qq.com",
        "https://user:pw@wx%41.invalid:443/x",
    ] {
        let out = env.run(&["refresh", "--api-base", base]);
        out.assert_one_line_error(2)
            .assert_stderr_has(&["--api-base", "percent-escape"]);
        assert!(!out.stderr.contains("pw@"), "{}", out.stderr);
    }
    assert_eq!(env.api.hits(TOKEN), 0);
}

#[test]
fn credentials_in_the_api_base_are_never_shown_or_stored() {
    let env = setup(&["wxcreds"]);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!(
        "http://ops:hunter2secret@{}",
        closed.local_addr().expect("addr")
    );
    drop(closed);
    let out = run(&env, &["refresh", "--api-base", &url], 4);
    let status = run(&env, &["status", "--json"], 0);
    let stored = env.query("SELECT coalesce(detail, '') || coalesce(errmsg, '') FROM attempts");
    for text in [&out.stderr, &out.stdout, &status.stdout, &stored] {
        assert!(!text.contains("hunter2"), "{text}");
    }
    let out = usage_error(
        &env,
        &["refresh", "--api-base", "http://ops:hunter2secret@[::1"],
        &["IPv6"],
    );
    assert!(!out.stderr.contains("hunter2"), "{}", out.stderr);
}

#[test]
fn a_malformed_api_base_fails_before_any_request() {
    let env = setup(&["wxurl"]);
    for bad in [
        "http://[::1",
        "http://127.0.0.1:70000",
        "http://127.0.0.1:",
        "http://:80",
    ] {
        usage_error(&env, &["refresh", "--api-base", bad], &["--api-base"]);
    }
    let attempts = env.query_i64("SELECT count(*) FROM attempts");
    assert_eq!(attempts, 0, "nothing was tried");
}

// Every test again on PostgreSQL, but the eight about the SQLite file itself: a locked
// database, a full disk under it, its owner and mode (and its -wal's and -shm's), an empty
// file or a symlink in its place, a read-only directory, and a corrupted file.
also_on_postgres!(
    a_manual_refresh_after_another_run_fetches_again,
    a_refresh_against_a_dead_server_fails,
    a_secret_echoed_in_disguise_is_never_shown_nor_stored,
    an_account_named_twice_is_fetched_once,
    a_failure_before_the_request_leaves_keeps_the_token_served,
    set_secret_and_enable_make_the_account_due_for_either_kind_of_run,
    an_unrecorded_classic_fetch_caps_the_old_token_at_five_minutes,
    an_unrecorded_stable_fetch_leaves_the_old_token_alone,
    a_lost_answer_caps_the_classic_token_but_a_wechat_error_does_not,
    time_left_is_never_more_than_the_tokens_lifetime,
    a_token_fetched_in_the_future_is_not_served_and_is_due,
    a_skewed_date_header_warns_on_stderr_and_in_status,
    an_outcome_of_a_replaced_secret_never_holds_the_new_one,
    durations_that_do_not_fit_are_usage_errors,
    refresh_appid_is_validated_and_never_echoed_raw,
    an_absurd_lifetime_is_an_invalid_reply,
    sigterm_finishes_the_fetch_in_flight_and_starts_no_other,
    a_second_signal_ends_the_run_at_once,
    a_secret_over_64_kib_is_refused_not_cut,
    ctrl_c_at_the_secret_prompt_restores_echo,
    credentials_in_the_api_base_are_never_shown_or_stored,
    a_malformed_api_base_fails_before_any_request,
);
