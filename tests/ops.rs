//! The ops kit, end to end with the real binary: `status --check` as a monitoring plugin, the
//! metrics textfile, `refresh --json`, `--dry-run` and progress, completions and the man page.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::standin::{Reply, TOKEN};
use support::{Out, TestEnv, add};

const APPID: &str = "wx1234567890abcdef";
const OTHER: &str = "wxfedcba0987654321";
const SECRET: &str = "Qx7vSecretK9mWp2LzR4tYh8NbJ3cFdG";

/// One account whose newest token lives `expires_in` seconds, fetched by a refresh.
fn with_token(expires_in: u64) -> TestEnv {
    let env = TestEnv::new();
    add(&env, &["--appid", APPID], SECRET);
    env.api.push(TOKEN, Reply::token("TOKEN-A", expires_in));
    env.run(&["-q", "refresh"]).assert_code(0);
    env
}

/// Runs `status --check` with extra arguments and checks the plugin contract: the exit code,
/// exactly one line on stdout, that line's state word, and perfdata after a `|`.
#[track_caller]
fn check(env: &TestEnv, extra: &[&str], code: i32, state: &str) -> String {
    let out = env.run(&[&["status", "--check"], extra].concat());
    out.assert_code(code);
    assert_eq!(out.stdout.lines().count(), 1, "one line: {out:?}");
    let line = out.stdout.trim_end().to_string();
    assert!(
        line.starts_with(&format!("WXTOKEN {state} - ")),
        "expected {state}: {line}"
    );
    if state != "UNKNOWN" {
        assert!(line.contains(" | '"), "perfdata: {line}");
    }
    assert!(
        !line.contains(SECRET) && !line.contains("TOKEN-A"),
        "{line}"
    );
    line
}

// ---- status --check ---------------------------------------------------------------------

#[test]
fn check_ok_warning_critical_by_time_left() {
    let env = with_token(7200);
    let line = check(&env, &[], 0, "OK");
    // 7200 s, or 7199 if a second ticked since the refresh; defaults 30m and 10m.
    assert!(
        line.contains("'min_ttl'=7200s;1800:;600:;0")
            || line.contains("'min_ttl'=7199s;1800:;600:;0"),
        "{line}"
    );
    check(&env, &["--warn", "3h", "--crit", "1h"], 1, "WARNING");
    let line = check(&env, &["--warn", "4h", "--crit", "3h"], 2, "CRITICAL");
    assert!(line.contains(APPID), "names the account: {line}");

    let short = with_token(300);
    let line = check(&short, &[], 2, "CRITICAL");
    assert!(
        line.contains("token 4m left") || line.contains("token 5m left"),
        "{line}"
    );
    let mid = with_token(1200);
    check(&mid, &[], 1, "WARNING");
}

#[test]
fn check_without_a_valid_token_is_critical() {
    let env = TestEnv::new();
    add(&env, &["--appid", APPID], SECRET);
    let line = check(&env, &[], 2, "CRITICAL");
    assert!(line.contains(&format!("{APPID}: no valid token")), "{line}");
    assert!(line.contains("'min_ttl'=0s;"), "{line}");
}

#[test]
fn check_held_account_is_at_least_warning() {
    let env = with_token(7200);
    // A wrong secret holds the account; its token is still valid for two hours.
    env.api
        .push(TOKEN, Reply::errcode(40125, "invalid appsecret"));
    env.run(&["refresh", "--force"]).assert_code(4);
    let line = check(&env, &[], 1, "WARNING");
    assert!(line.contains("held"), "{line}");
    assert!(line.contains("40125"), "{line}");
}

#[test]
fn check_warns_near_the_daily_token_quota() {
    let env = with_token(7200);
    check(&env, &[], 0, "OK");
    // Another 1,599 token requests today (as a long run of retries would have made them):
    // with the hourly run's own, 1,600 of the 2,000 a day WeChat documents.
    env.execute(&format!(
        "INSERT INTO attempts (account_id, started_at, duration_ms, tries, outcome)
         SELECT id, {}, 1, 1599, 'ok' FROM accounts",
        support::now()
    ));
    let line = check(&env, &[], 1, "WARNING");
    assert!(
        line.contains("1600 of 2000 daily token fetches used"),
        "{line}"
    );
}

#[test]
fn check_unknown_when_the_database_cannot_be_opened_or_arguments_are_bad() {
    let env = TestEnv::new();
    let line = check(&env, &[], 3, "UNKNOWN");
    if let Some(db) = &env.pg {
        // An empty database: the check says what it lacks and leaves it empty. A missing
        // one: it says so.
        assert!(line.contains("schema version 0"), "{line}");
        let tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'";
        assert_eq!(env.query_i64(tables), 0, "the check created tables");
        let missing = db.url.replace(&db.name, &format!("{}_missing", db.name));
        env.set_env("WXTOKEN_DB", &missing);
        let line = check(&env, &[], 3, "UNKNOWN");
        assert!(line.contains("does not exist"), "{line}");
    } else {
        assert!(line.contains("does not exist"), "{line}");
        assert!(!env.db().exists(), "the check created the database");
        std::fs::write(env.db(), "not a database at all, just text").unwrap();
        check(&env, &[], 3, "UNKNOWN");
    }

    let env = with_token(7200);
    for bad in [
        &["--warn", "soon"][..],
        &["--crit", "-5m"],
        &["--no-such-flag"],
        &["--appid", "wxnosuchaccount"],
        // Too large for a time: refused, not wrapped to a negative one.
        &["--warn", "18446744073709551615s"],
        &["--crit", "18446744073709551615s"],
        // A warning that could never come before the critical state.
        &["--warn", "5m", "--crit", "10m"],
    ] {
        let out = env.run(&[&["status", "--check"], bad].concat());
        out.assert_code(3);
        assert!(
            out.stdout.starts_with("WXTOKEN UNKNOWN - "),
            "{bad:?}: {out:?}"
        );
        assert_eq!(out.stdout.lines().count(), 1, "{out:?}");
        if bad.len() == 2 && bad[1].starts_with("1844") {
            assert!(out.stdout.contains("too large"), "{out:?}");
        }
    }
    let below = env.run(&["status", "--check", "--warn", "5m", "--crit", "10m"]);
    assert!(
        below.stdout.contains("--warn (5m) is below --crit (10m)"),
        "{below:?}"
    );
    // No accounts at all: most likely a wrong WXTOKEN_DB, which is not OK.
    let empty = TestEnv::new();
    add(&empty, &["--appid", APPID], SECRET);
    empty
        .run(&["account", "disable", "--appid", APPID])
        .assert_code(0);
    let line = check(&empty, &[], 3, "UNKNOWN");
    assert!(line.contains("no enabled accounts"), "{line}");
}

#[test]
fn check_appid_selects_accounts() {
    let env = with_token(7200);
    add(&env, &["--appid", OTHER], SECRET); // no token: critical
    check(&env, &[], 2, "CRITICAL");
    let line = check(&env, &["--appid", APPID], 0, "OK");
    assert!(line.contains("'accounts'=1;"), "{line}");
    check(&env, &["--appid", OTHER], 2, "CRITICAL");
    // Plain status takes --appid the same way.
    let out = env
        .run(&["status", "--appid", OTHER])
        .assert_code(0)
        .clone();
    assert!(
        out.stdout.contains(OTHER) && !out.stdout.contains(APPID),
        "{out:?}"
    );
}

// ---- metrics ----------------------------------------------------------------------------

/// The value of one sample line (`name{labels} value`) in a metrics text.
#[track_caller]
fn sample(text: &str, series: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn refresh_writes_the_metrics_textfile_atomically() {
    let env = TestEnv::new();
    add(&env, &["--appid", APPID], SECRET);
    let dir = env.dir.join("textfile");
    std::fs::create_dir(&dir).unwrap();
    let prom = dir.join("wxtoken.prom");
    let before = chrono::Utc::now().timestamp();
    env.run(&["-q", "refresh", "--metrics-file", prom.to_str().unwrap()])
        .assert_code(0);
    let text = std::fs::read_to_string(&prom).unwrap();
    let mode = std::fs::metadata(&prom).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "node_exporter runs as another user");
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["wxtoken.prom"], "no temp file left behind");
    assert!(!text.contains(SECRET), "{text}");

    let success = sample(&text, "wxtoken_last_success_timestamp_seconds");
    assert!(success >= before as f64, "{text}");
    assert_eq!(sample(&text, "wxtoken_last_run_success"), 1.0);
    assert_eq!(
        sample(&text, "wxtoken_last_run_accounts{outcome=\"refreshed\"}"),
        1.0
    );
    let expiry = sample(
        &text,
        &format!("wxtoken_token_expiry_timestamp_seconds{{account=\"{APPID}\"}}"),
    );
    assert!(expiry >= (before + 7200) as f64, "{text}");
    assert!(text.contains("wxtoken_build_info{version=\""), "{text}");
    assert!(
        text.contains("wxtoken_last_run_duration_seconds "),
        "{text}"
    );
    // `wxtoken metrics` prints the same text.
    let out = env.run(&["metrics"]).assert_code(0).clone();
    assert_eq!(out.stdout, text);

    // A failed run: the last success stays where it was, the run counts the failure, and
    // the account shows the errcode. The file comes from WXTOKEN_METRICS_FILE this time.
    env.set_env("WXTOKEN_METRICS_FILE", prom.to_str().unwrap());
    env.api
        .push(TOKEN, Reply::errcode(40164, "invalid ip 203.0.113.7"));
    env.run(&["refresh", "--force"]).assert_code(4);
    let text = std::fs::read_to_string(&prom).unwrap();
    assert_eq!(
        sample(&text, "wxtoken_last_success_timestamp_seconds"),
        success
    );
    assert_eq!(sample(&text, "wxtoken_last_run_success"), 0.0);
    assert_eq!(
        sample(&text, "wxtoken_last_run_accounts{outcome=\"failed\"}"),
        1.0
    );
    let errcode = format!("wxtoken_account_last_attempt_errcode{{account=\"{APPID}\"}}");
    assert_eq!(sample(&text, &errcode), 40164.0);
    let ok =
        format!("wxtoken_account_last_attempt_success{{account=\"{APPID}\",outcome=\"errcode\"}}");
    assert_eq!(sample(&text, &ok), 0.0);
}

#[test]
fn metrics_show_a_held_account_and_an_unwritable_file_fails() {
    let env = with_token(7200);
    env.api
        .push(TOKEN, Reply::errcode(40125, "invalid appsecret"));
    let prom = env.dir.join("wxtoken.prom");
    env.run(&[
        "refresh",
        "--force",
        "--metrics-file",
        prom.to_str().unwrap(),
    ])
    .assert_code(4);
    let text = std::fs::read_to_string(&prom).unwrap();
    assert_eq!(
        sample(
            &text,
            &format!("wxtoken_account_held{{account=\"{APPID}\"}}")
        ),
        1.0
    );

    let env = with_token(7200);
    let missing = env.dir.join("no-such-dir/wxtoken.prom");
    let out = env.run(&["-q", "refresh", "--metrics-file", missing.to_str().unwrap()]);
    out.assert_code(1);
    assert!(
        out.stderr
            .starts_with("wxtoken: error: could not write metrics file"),
        "{out:?}"
    );
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
}

// ---- refresh --json, --dry-run, progress --------------------------------------------------

fn json_lines(out: &Out) -> Vec<Value> {
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn refresh_json_prints_a_line_per_account_and_a_summary() {
    let env = TestEnv::new();
    add(&env, &["--appid", APPID], SECRET);
    add(&env, &["--appid", OTHER], SECRET);
    env.api.push_for(
        TOKEN,
        OTHER,
        Reply::errcode(40164, "invalid ip 203.0.113.7, not in whitelist"),
    );
    let out = env.run(&["refresh", "--json"]);
    out.assert_code(4);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 3, "{out:?}");
    let by = |id: &str| lines.iter().find(|l| l["account"] == id).unwrap().clone();
    let good = by(APPID);
    assert_eq!(good["type"], "account");
    assert_eq!(good["outcome"], "refreshed");
    assert!(good["errcode"].is_null());
    assert!(good["expires_in"].as_i64().unwrap() > 7000, "{good}");
    assert!(
        good["expires_at"].as_str().unwrap().ends_with('Z'),
        "{good}"
    );
    let bad = by(OTHER);
    assert_eq!(bad["outcome"], "failed");
    assert_eq!(bad["errcode"], 40164);
    assert!(
        bad["hint"].as_str().unwrap().contains("203.0.113.7"),
        "{bad}"
    );
    assert!(bad["expires_at"].is_null());
    let summary = &lines[2];
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["accounts"], 2);
    assert_eq!(summary["refreshed"], 1);
    assert_eq!(summary["failed"], 1);
    assert_eq!(summary["exit_code"], 4);
    assert!(!out.stdout.contains(SECRET), "{out:?}");
    // The token itself is not in the JSON: only `get` prints tokens.
    let token = env
        .run(&["get", "--appid", APPID])
        .assert_code(0)
        .stdout
        .clone();
    assert!(!out.stdout.contains(token.trim()), "{out:?}");
}

#[test]
fn dry_run_lists_what_is_due_and_never_calls_wechat() {
    let env = TestEnv::new();
    add(&env, &["--appid", APPID], SECRET);
    let out = env.run(&["refresh", "--dry-run"]);
    out.assert_code(0);
    assert_eq!(out.stdout, format!("{APPID}  due: no token yet\n"));
    assert_eq!(env.api.hits(TOKEN), 0, "a dry run fetched");
    assert_eq!(env.query_i64("SELECT count(*) FROM attempts"), 0);
    assert_eq!(env.query_i64("SELECT count(*) FROM runs"), 0);

    env.run(&["-q", "refresh"]).assert_code(0);
    assert_eq!(env.api.hits(TOKEN), 1);
    // A refresh does what it is told: a token fetched before it started is due again.
    let out = env.run(&["refresh", "--dry-run", "--json"]);
    out.assert_code(0);
    let lines = json_lines(&out);
    assert_eq!(lines[0]["due"], true);
    let reason = lines[0]["reason"].as_str().unwrap();
    assert!(reason.contains("newest token fetched"), "{out:?}");
    let ahead = [
        "refresh",
        "--dry-run",
        "--json",
        "--if-expiring-within",
        "5m",
    ];
    let out = env.run(&ahead);
    out.assert_code(0);
    let lines = json_lines(&out);
    assert_eq!(lines[0]["due"], false);
    assert!(
        lines[0]["reason"]
            .as_str()
            .unwrap()
            .contains("more than 5m"),
        "{out:?}"
    );
    assert_eq!(lines[1]["type"], "summary");
    assert_eq!(lines[1]["due"], 0);
    // With the metrics file set in the environment, as /etc/default/wxtoken may do: a dry
    // run still works, and writes no file.
    let prom = env.dir.join("wxtoken.prom");
    env.set_env("WXTOKEN_METRICS_FILE", prom.to_str().unwrap());
    let out = env.run(&["refresh", "--dry-run", "--force"]);
    out.assert_code(0);
    assert!(!prom.exists(), "a dry run wrote the metrics file");
    assert!(out.stdout.contains("due: --force"), "{out:?}");
    let out = env.run(&["refresh", "--dry-run", "--if-expiring-within", "5m"]);
    assert!(
        out.stdout
            .starts_with(&format!("{APPID}  not due: newest token ")),
        "{out:?}"
    );
    assert!(out.stdout.ends_with(" left, more than 5m\n"), "{out:?}");
    assert_eq!(env.api.hits(TOKEN), 1, "a dry run fetched");
}

#[test]
fn allow_empty_silences_the_no_accounts_warning() {
    let env = TestEnv::new();
    let out = env.run(&["-q", "refresh", "--allow-empty"]);
    out.assert_code(0);
    assert_eq!((out.stdout.as_str(), out.stderr.as_str()), ("", ""));
    let out = env.run(&["-q", "refresh"]);
    assert!(out.stderr.contains("no enabled accounts"), "{out:?}");
}

/// Runs `wxtoken ARGS` on a pseudo-terminal with `script`, and returns what it showed.
fn on_terminal(env: &TestEnv, args: &str) -> String {
    let bin = env!("CARGO_BIN_EXE_wxtoken");
    let out = Command::new("script")
        .args(["-qec", &format!("{bin} {args}"), "/dev/null"])
        .env("WXTOKEN_DB", env.store())
        .env("WXTOKEN_KEY_FILE", env.key_file())
        .env("WXTOKEN_API_BASE", env.url())
        .env("TERM", "xterm")
        .output()
        .expect("run script (util-linux)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn progress_shows_on_a_terminal_only() {
    let env = TestEnv::new();
    add(&env, &["--appid", APPID], SECRET);
    add(&env, &["--appid", OTHER], SECRET);
    let shown = on_terminal(&env, "refresh --force");
    assert!(shown.contains("refreshing [2/2] 0 failed"), "{shown:?}");
    assert!(
        shown.contains("\r\x1b[K"),
        "the counter is erased: {shown:?}"
    );
    let quiet = on_terminal(&env, "-q refresh --force");
    assert!(!quiet.contains("refreshing ["), "{quiet:?}");
    // Off a terminal (cron, systemd): nothing on success.
    let out = env.run(&["-q", "refresh", "--force"]);
    out.assert_code(0);
    assert_eq!((out.stdout.as_str(), out.stderr.as_str()), ("", ""));
}

// ---- completions and the man page ---------------------------------------------------------

/// Runs a generator and saves its output in the environment's directory; returns the path.
fn generated(env: &TestEnv, args: &[&str]) -> String {
    let out = env.run(args).assert_code(0).clone();
    assert!(!out.stdout.is_empty());
    let path = env.dir.join(args.join("-"));
    std::fs::write(&path, &out.stdout).unwrap();
    path.to_string_lossy().into_owned()
}

fn installed(shell: &str) -> bool {
    Command::new(shell)
        .args(["-c", "exit 0"])
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a shell script and returns its stdout, failing the test on a non-zero exit.
#[track_caller]
fn shell(shell: &str, args: &[&str]) -> String {
    let out = Command::new(shell).args(args).output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{shell} {args:?}\n{stdout}\n{stderr}");
    stdout
}

#[test]
fn bash_completion_loads_and_completes() {
    let env = TestEnv::new();
    let file = generated(&env, &["completions", "bash"]);
    let script = format!(
        "source {file} && complete -p wxtoken && \
         COMP_WORDS=(wxtoken ref) COMP_CWORD=1 && _wxtoken wxtoken ref wxtoken && \
         echo \"${{COMPREPLY[@]}}\""
    );
    let out = shell("bash", &["-c", &script]);
    assert!(out.contains("-F _wxtoken wxtoken"), "{out}");
    assert!(out.lines().last().unwrap().contains("refresh"), "{out}");
}

#[test]
fn zsh_and_fish_completions_load_where_installed() {
    let env = TestEnv::new();
    if installed("zsh") {
        let file = generated(&env, &["completions", "zsh"]);
        let script = format!(
            "autoload -Uz compinit && compinit -u -D && source {file} && \
             (( $+functions[_wxtoken] )) && echo loaded"
        );
        assert_eq!(shell("zsh", &["-f", "-c", &script]).trim(), "loaded");
    } else {
        eprintln!("zsh is not installed; skipping its completion check");
    }
    if installed("fish") {
        let file = generated(&env, &["completions", "fish"]);
        let script = format!("source {file}; complete -C 'wxtoken ref'");
        let out = shell("fish", &["--no-config", "-c", &script]);
        assert!(out.contains("refresh"), "{out}");
    } else {
        eprintln!("fish is not installed; skipping its completion check");
    }
}

#[test]
fn generators_are_hidden_and_the_man_page_renders() {
    let env = TestEnv::new();
    let help = env.run(&["--help"]).assert_code(0).stdout.clone();
    assert!(
        !help.contains("completions") && !help.contains("manpage"),
        "{help}"
    );
    assert!(help.contains("metrics"), "{help}");

    let file = generated(&env, &["manpage"]);
    let roff = std::fs::read_to_string(&file).unwrap();
    assert!(roff.contains(".TH wxtoken 1"), "{roff}");
    // wxtoken(1) refers to a page per subcommand; each of those exists and documents its
    // own options.
    let list = env
        .run(&["manpage", "--list"])
        .assert_code(0)
        .stdout
        .clone();
    let pages: Vec<&str> = list.lines().collect();
    for sub in ["refresh", "status", "metrics", "account"] {
        let page = format!("wxtoken-{sub}");
        let listed = format!("wxtoken\\-{sub}(1)"); // roff escapes the hyphen
        assert!(roff.contains(&listed), "{page} not listed in wxtoken(1)");
        assert!(pages.contains(&page.as_str()), "no page {page}: {list}");
    }
    assert!(pages.contains(&"wxtoken-account-add"), "{list}");
    let refresh = generated(&env, &["manpage", "wxtoken-refresh"]);
    let refresh_roff = std::fs::read_to_string(&refresh).unwrap();
    assert!(
        refresh_roff.contains(".TH wxtoken-refresh 1"),
        "{refresh_roff}"
    );
    assert!(refresh_roff.contains("dry\\-run"), "{refresh_roff}");
    env.run(&["manpage", "wxtoken-nosuch"]).assert_code(2);
    if Path::new("/usr/bin/groff").exists() {
        for file in [&file, &refresh] {
            let out = Command::new("groff")
                .args(["-man", "-Tutf8", "-ww", file])
                .output()
                .unwrap();
            assert!(out.status.success());
            assert!(String::from_utf8_lossy(&out.stdout).contains("wxtoken"));
            assert_eq!(String::from_utf8_lossy(&out.stderr), "", "groff warnings");
        }
    }
}

// ---- packaging ------------------------------------------------------------------------------

/// The wxtoken arguments of every command the packaged units and cron.d file run.
fn packaged_commands() -> Vec<(String, Vec<String>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging");
    let mut found = Vec::new();
    for unit in [
        "systemd/wxtoken.service",
        "systemd/ahead/wxtoken-ahead.service",
    ] {
        let text = std::fs::read_to_string(root.join(unit)).unwrap();
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart=/usr/bin/wxtoken "))
            .unwrap_or_else(|| panic!("no ExecStart in {unit}"));
        found.push((
            unit.to_string(),
            line.split_whitespace().map(String::from).collect(),
        ));
    }
    let cron = std::fs::read_to_string(root.join("cron.d/wxtoken")).unwrap();
    for line in cron
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit() || c == '*'))
    {
        let args = line
            .split("exec wxtoken ")
            .nth(1)
            .and_then(|rest| rest.strip_suffix('\''))
            .unwrap_or_else(|| panic!("unexpected cron.d line: {line}"));
        assert!(
            line.contains("[ ! -d /run/systemd/system ]"),
            "no systemd guard: {line}"
        );
        assert!(line.contains("flock -n "), "no flock: {line}");
        found.push((
            "cron.d".to_string(),
            args.split_whitespace().map(String::from).collect(),
        ));
    }
    found
}

#[test]
fn packaged_commands_run_quietly_on_an_empty_database_and_refresh_when_there_are_accounts() {
    let commands = packaged_commands();
    assert_eq!(commands.len(), 4, "{commands:?}");
    for (origin, args) in &commands {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // wxtoken.service is not --quiet: its summary line goes to the journal, so each
        // hourly run shows there. cron mails what is printed, and the 4-minute run would
        // flood the journal: they print nothing on success.
        let summary = |n: usize| match origin.as_str() {
            "systemd/wxtoken.service" => format!("refreshed {n} of {n} accounts\n"),
            _ => String::new(),
        };
        // What the package's first start does: no accounts yet, no warning, exit 0.
        let env = TestEnv::new();
        let out = env.run(&args);
        out.assert_code(0);
        assert_eq!(
            (out.stdout.as_str(), out.stderr.as_str()),
            ("", summary(0).as_str()),
            "{origin}"
        );
        // With an account, the same command fetches its token (refresh-ahead: none yet).
        add(&env, &["--appid", APPID], SECRET);
        let out = env.run(&args);
        out.assert_code(0);
        assert_eq!(env.api.hits(TOKEN), 1, "{origin}: {args:?}");
        if origin == "systemd/wxtoken.service" {
            assert_eq!(out.stderr, summary(1), "{origin}");
        }
    }
}

// Left SQLite-only: completions and the man page, which never open a store.
/// Each refresh run is recorded for monitoring: `metrics` shows no last run before the
/// first, then its success, from one `runs` row.
#[test]
fn metrics_show_the_last_run_once_a_refresh_recorded_one() {
    let env = TestEnv::new();
    add(&env, &["--appid", APPID], SECRET);
    let before = env.run(&["metrics"]).assert_code(0).clone();
    assert!(
        !before.stdout.contains("wxtoken_last_run_success"),
        "{}",
        before.stdout
    );
    env.run(&["refresh"]).assert_code(0);
    let after = env.run(&["metrics"]).assert_code(0).clone();
    assert_eq!(sample(&after.stdout, "wxtoken_last_run_success"), 1.0);
    assert!(
        after
            .stdout
            .contains("wxtoken_last_success_timestamp_seconds")
    );
    assert_eq!(env.query_i64("SELECT count(*) FROM runs"), 1);
}

also_on_postgres!(
    check_ok_warning_critical_by_time_left,
    check_without_a_valid_token_is_critical,
    check_held_account_is_at_least_warning,
    check_warns_near_the_daily_token_quota,
    check_unknown_when_the_database_cannot_be_opened_or_arguments_are_bad,
    check_appid_selects_accounts,
    refresh_writes_the_metrics_textfile_atomically,
    metrics_show_the_last_run_once_a_refresh_recorded_one,
    metrics_show_a_held_account_and_an_unwritable_file_fails,
    refresh_json_prints_a_line_per_account_and_a_summary,
    dry_run_lists_what_is_due_and_never_calls_wechat,
    allow_empty_silences_the_no_accounts_warning,
    progress_shows_on_a_terminal_only,
    packaged_commands_run_quietly_on_an_empty_database_and_refresh_when_there_are_accounts,
);
