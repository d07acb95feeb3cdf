//! Integration-test harness: a sealed environment that runs the real `wxtoken` binary against a
//! loopback stand-in for WeChat's API and a SQLite file in its own temp directory, or, for a
//! test run through [`on_postgres`], a database of its own on a real PostgreSQL server
//! (the stand-in crate's `pg` module).
//!
//! A test file runs its shared-server behaviours on both backends from one body each:
//! `also_on_postgres!(test_a, test_b);` adds `on_postgres::test_a` and so on, which run the
//! same function with `WXTOKEN_DB` set to a fresh PostgreSQL database.
#![allow(dead_code)]

pub mod redis_server;
pub mod relay;
pub use wxtoken_standin as standin;
pub use wxtoken_standin::pg;

use std::cell::Cell;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use standin::StandIn;

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Set by [`on_postgres`] for the test running on this thread.
    static ON_POSTGRES: Cell<bool> = const { Cell::new(false) };
}

/// Runs `test` with every [`TestEnv`] it makes on a new database of the shared PostgreSQL
/// server. Without PostgreSQL installed this prints a note and passes; under CI=true it
/// fails (`pg::server`).
pub fn on_postgres(test: fn()) {
    if pg::server().is_none() {
        return;
    }
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            ON_POSTGRES.with(|c| c.set(false));
        }
    }
    ON_POSTGRES.with(|c| c.set(true));
    let _reset = Reset;
    test();
}

/// `also_on_postgres!(a, b)` defines `on_postgres::a` and `on_postgres::b`: the tests `a` and
/// `b` of this file, run again on PostgreSQL.
#[macro_export]
macro_rules! also_on_postgres {
    ($($name:ident),* $(,)?) => {
        mod on_postgres {
            $(
                #[test]
                fn $name() {
                    $crate::support::on_postgres(super::$name);
                }
            )*
        }
    };
}

/// The arguments of a run: a slice of words, or a line whose words (split at whitespace,
/// none of them containing a space) are the arguments.
pub trait Args {
    fn words(&self) -> Vec<&str>;
}

impl Args for str {
    fn words(&self) -> Vec<&str> {
        self.split_whitespace().collect()
    }
}

impl Args for String {
    fn words(&self) -> Vec<&str> {
        self.split_whitespace().collect()
    }
}

impl Args for [&str] {
    fn words(&self) -> Vec<&str> {
        self.to_vec()
    }
}

impl<const N: usize> Args for [&str; N] {
    fn words(&self) -> Vec<&str> {
        self.to_vec()
    }
}

impl Args for Vec<&str> {
    fn words(&self) -> Vec<&str> {
        self.clone()
    }
}

/// Runs `wxtoken ARGS` and checks the exit code.
#[track_caller]
pub fn run(env: &TestEnv, args: &(impl Args + ?Sized), code: i32) -> Out {
    let out = env.run(args);
    out.assert_code(code);
    out
}

/// `account add ARGS` with `secret` on stdin as one line; must succeed.
#[track_caller]
pub fn add(env: &TestEnv, args: &(impl Args + ?Sized), secret: &str) -> Out {
    add_with(env, args, &format!("{secret}\n"), 0)
}

/// `account add ARGS` with `stdin` as it is, exiting with `code`.
#[track_caller]
pub fn add_with(env: &TestEnv, args: &(impl Args + ?Sized), stdin: &str, code: i32) -> Out {
    let args = [&["account", "add"][..], &args.words()].concat();
    let out = env.run_with_stdin(&args, stdin);
    out.assert_code(code);
    out
}

/// The secret, or any 8-character piece of it, in either stream of `out`.
pub fn leaked_piece<'a>(out: &Out, secret: &'a str) -> Option<&'a str> {
    (0..=secret.len().saturating_sub(8))
        .map(|i| &secret[i..(i + 8).min(secret.len())])
        .find(|piece| out.stdout.contains(piece) || out.stderr.contains(piece))
}

/// Panics, naming `label` and showing both streams, if any 8-character piece of one of
/// `secrets` shows in either stream of `out`.
#[track_caller]
pub fn assert_no_secret(label: &str, out: &Out, secrets: &[&str]) {
    for secret in secrets {
        if let Some(piece) = leaked_piece(out, secret) {
            panic!(
                "{label}: shows {piece:?} of a secret\n--- stdout ---\n{}\n--- stderr ---\n{}",
                out.stdout, out.stderr
            );
        }
    }
}

/// What one run of the binary produced.
#[derive(Debug, Clone)]
pub struct Out {
    /// The exit code, or -1 if a signal ended the process.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn from_output(o: Output) -> Out {
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// Panics, showing both streams, unless the exit code is `code`.
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Out {
        assert_eq!(
            self.code, code,
            "unexpected exit code\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// A refusal as users see it: exit `code`, nothing on stdout, exactly one line on
    /// stderr, and that line is `wxtoken: error: ...`.
    #[track_caller]
    pub fn assert_one_line_error(&self, code: i32) -> &Out {
        self.assert_code(code);
        assert_eq!(self.stdout, "", "stdout of an error");
        assert_eq!(
            self.stderr.lines().count(),
            1,
            "an error is one line:\n{}",
            self.stderr
        );
        assert!(
            self.stderr.starts_with("wxtoken: error: "),
            "not an error line: {}",
            self.stderr
        );
        self
    }

    /// The one value a successful `get` printed: exit 0, one line, no spaces.
    #[track_caller]
    pub fn value(&self) -> String {
        self.assert_code(0);
        let value = self
            .stdout
            .strip_suffix('\n')
            .unwrap_or_else(|| panic!("no newline after the value: {:?}", self.stdout));
        assert!(
            !value.is_empty() && !value.contains(['\n', ' ']),
            "stdout is not one value: {:?}",
            self.stdout
        );
        value.to_string()
    }

    /// Panics unless stderr has every one of `words`.
    #[track_caller]
    pub fn assert_stderr_has(&self, words: &[&str]) -> &Out {
        assert_has(&self.stderr, words);
        self
    }

    /// `get` found nothing to print: exit 3, empty stdout, and `words` in the reason.
    #[track_caller]
    pub fn assert_no_value(&self, words: &[&str]) -> &Out {
        self.assert_code(3);
        assert_eq!(self.stdout, "", "nothing on stdout when there is no value");
        self.assert_stderr_has(words)
    }
}

/// Panics, showing `text`, unless it has every one of `words`.
#[track_caller]
pub fn assert_has(text: &str, words: &[&str]) {
    for word in words {
        assert!(text.contains(word), "{word:?} missing from:\n{text}");
    }
}

/// One JSON document on one line, as `--json` prints it.
#[track_caller]
pub fn json(text: &str) -> serde_json::Value {
    assert!(
        text.ends_with('\n') && text.trim_end().lines().count() == 1,
        "not one line: {text:?}"
    );
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The wall clock in Unix seconds, as the binary reads it.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Unix seconds from an RFC 3339 string in a JSON document.
#[track_caller]
pub fn unix_of(value: &serde_json::Value) -> i64 {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value}"));
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .timestamp()
}

/// A temp directory, a stand-in API and the environment the binary runs with.
pub struct TestEnv {
    pub dir: PathBuf,
    pub api: StandIn,
    /// Extra variables; `None` removes one the harness sets by default.
    extra: Mutex<Vec<(String, Option<String>)>>,
    /// The PostgreSQL database this environment's runs use, under [`on_postgres`].
    pub pg: Option<pg::PgDb<'static>>,
}

impl TestEnv {
    pub fn new() -> TestEnv {
        TestEnv::new_in(Path::new(env!("CARGO_TARGET_TMPDIR")))
    }

    /// A test environment whose directory is created under `base`.
    pub fn new_in(base: &Path) -> TestEnv {
        let pg = if ON_POSTGRES.with(Cell::get) {
            let server = pg::server().expect("on_postgres checked the server");
            Some(server.create_db())
        } else {
            None
        };
        TestEnv::with_store(base, pg)
    }

    /// A test environment on a new database of the shared PostgreSQL server, whichever
    /// backend the test runs on: for what only a shared server has. `None`, after a note,
    /// when PostgreSQL is not installed; under CI=true that fails instead.
    pub fn on_postgres() -> Option<TestEnv> {
        Some(TestEnv::on_server(pg::server()?))
    }

    /// A test environment on a new database of `server`.
    pub fn on_server(server: &'static pg::PgServer) -> TestEnv {
        let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
        TestEnv::with_store(base, Some(server.create_db()))
    }

    fn with_store(base: &Path, pg: Option<pg::PgDb<'static>>) -> TestEnv {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let name = format!("wxtoken-{}-{n}-{nanos}", std::process::id());
        let dir = base.join(name);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        TestEnv {
            dir,
            api: StandIn::start(),
            extra: Mutex::default(),
            pg,
        }
    }

    pub fn db(&self) -> PathBuf {
        self.dir.join("wxtoken.db")
    }

    /// The key file every run uses unless a test unsets `WXTOKEN_KEY_FILE`.
    pub fn key_file(&self) -> PathBuf {
        self.dir.join("wxtoken.key")
    }

    /// The id of the key that seals new secrets: the first key line of the key file.
    #[track_caller]
    pub fn kid(&self) -> String {
        let text = std::fs::read_to_string(self.key_file()).expect("read the key file");
        text.lines()
            .find(|l| !l.starts_with('#') && !l.trim().is_empty())
            .and_then(|l| l.split_whitespace().next())
            .expect("a key line")
            .to_string()
    }

    pub fn is_postgres(&self) -> bool {
        self.pg.is_some()
    }

    /// What the binary's `WXTOKEN_DB` is: the SQLite path, or the PostgreSQL URL.
    pub fn store(&self) -> String {
        match &self.pg {
            Some(db) => db.url.clone(),
            None => self.db().display().to_string(),
        }
    }

    /// A connection to the SQLite test database, for checks the CLI does not show; it waits
    /// for a writer like the binary does. Backend-neutral tests use [`TestEnv::query_i64`],
    /// [`TestEnv::query`] and [`TestEnv::execute`] instead.
    #[track_caller]
    pub fn open_db(&self) -> rusqlite::Connection {
        assert!(
            self.pg.is_none(),
            "open_db reads the SQLite file; this test runs on PostgreSQL"
        );
        let conn = rusqlite::Connection::open(self.db()).expect("open the test database");
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .expect("busy timeout");
        conn
    }

    /// One integer from the test store, by SQL both dialects understand.
    #[track_caller]
    pub fn query_i64(&self, sql: &str) -> i64 {
        if let Some(db) = &self.pg {
            return db.query_i64(sql);
        }
        self.open_db()
            .query_row(sql, [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The rows of a query, one line each, columns joined by `|` (as psql prints them),
    /// NULL as an empty string.
    #[track_caller]
    pub fn query(&self, sql: &str) -> String {
        if let Some(db) = &self.pg {
            return db.query(sql);
        }
        let conn = self.open_db();
        let mut stmt = conn.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        let n = stmt.column_count();
        let rows = stmt
            .query_map([], |r| {
                (0..n)
                    .map(|i| {
                        Ok(match r.get_ref(i)? {
                            rusqlite::types::ValueRef::Null => String::new(),
                            rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                            rusqlite::types::ValueRef::Real(v) => v.to_string(),
                            rusqlite::types::ValueRef::Text(t)
                            | rusqlite::types::ValueRef::Blob(t) => {
                                String::from_utf8_lossy(t).into_owned()
                            }
                        })
                    })
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map(|v| v.join("|"))
            })
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        rows.map(|r| r.unwrap_or_else(|e| panic!("{sql}: {e}")))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Runs SQL statements that return no rows on the test store.
    #[track_caller]
    pub fn execute(&self, sql: &str) {
        match &self.pg {
            Some(db) => {
                db.query(sql);
            }
            None => self
                .open_db()
                .execute_batch(sql)
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
        }
    }

    /// What `get` must not change. SQLite: the database's bytes and mtime, and the size of
    /// its WAL (0 when absent); the shared-memory index is left out, since every WAL reader
    /// maps it. PostgreSQL: every row of every table with its xmin and ctid, which any
    /// insert, update or delete changes, even one that writes back the same values.
    #[track_caller]
    pub fn written_state(&self) -> Vec<u8> {
        if self.is_postgres() {
            let rows = self.query(
                "SELECT tablename, query_to_xml(format('SELECT xmin, ctid, * FROM %I ORDER BY ctid',
                                                       tablename), true, false, '')
                 FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename",
            );
            return rows.into_bytes();
        }
        let db = self.db();
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        let meta = std::fs::metadata(&db).expect("database metadata");
        let mut state = std::fs::read(&db).expect("read database");
        let wal_len = std::fs::metadata(wal).map_or(0, |m| m.len());
        let mtime = meta.modified().expect("mtime");
        state.extend(format!("{mtime:?} {wal_len}").bytes());
        state
    }

    /// Base URL of the stand-in.
    pub fn url(&self) -> String {
        self.api.url()
    }

    /// Sets a variable for every later run, overriding the harness's defaults.
    pub fn set_env(&self, key: &str, value: &str) {
        self.extra_vars()
            .push((key.to_string(), Some(value.to_string())));
    }

    /// Removes a variable (including one of the defaults) from every later run.
    pub fn unset_env(&self, key: &str) {
        self.extra_vars().push((key.to_string(), None));
    }

    fn extra_vars(&self) -> std::sync::MutexGuard<'_, Vec<(String, Option<String>)>> {
        self.extra.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The sealed command: cleared environment plus the database, API bases, PATH and extras.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wxtoken"));
        cmd.args(args).current_dir(&self.dir).env_clear();
        cmd.env("WXTOKEN_DB", self.store());
        cmd.env("WXTOKEN_KEY_FILE", self.key_file());
        cmd.env("WXTOKEN_API_BASE", self.url());
        cmd.env("WXTOKEN_WORK_API_BASE", self.url());
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        for (k, v) in self.extra_vars().iter() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd
    }

    /// Runs `wxtoken ARGS`; the caller checks the outcome (or use [`run`]).
    pub fn run(&self, args: &(impl Args + ?Sized)) -> Out {
        self.run_with_stdin(args, "")
    }

    /// `wxtoken get ARGS`; the caller checks the outcome (`value`, `assert_no_value`).
    pub fn get(&self, args: &(impl Args + ?Sized)) -> Out {
        self.run(&[&["get"][..], &args.words()].concat())
    }

    /// Requests the stand-in received on `route`, in arrival order.
    pub fn requests_to(&self, route: &str) -> Vec<standin::Request> {
        let all = self.api.requests().into_iter();
        all.filter(|r| r.path == route).collect()
    }

    /// The lines `wxtoken status` prints about one account (`APPID` or `CORPID/AGENTID`):
    /// its own line and the indented ones below it.
    #[track_caller]
    pub fn status_block(&self, account: &str) -> String {
        let out = self.run(&["status"]);
        out.assert_code(0);
        status_block(&out.stdout, account)
    }

    pub fn run_with_stdin(&self, args: &(impl Args + ?Sized), stdin: &str) -> Out {
        let mut child = self.spawn(&args.words());
        let mut pipe = child.stdin.take().expect("child stdin");
        // Write from a thread so a child that never reads stdin cannot deadlock the test.
        let input = stdin.to_string();
        let writer = std::thread::spawn(move || {
            let _ = pipe.write_all(input.as_bytes());
        });
        let out = child.wait_with_output().expect("wait for wxtoken");
        let _ = writer.join();
        Out::from_output(out)
    }

    /// Starts the binary with piped stdin, stdout and stderr; finish it with [`wait`].
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wxtoken")
    }
}

impl Default for TestEnv {
    fn default() -> TestEnv {
        TestEnv::new()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test failed; keeping {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Waits for a spawned process, as [`wait`] does; kills it and fails the test if it outlives
/// `patience` (a hung run fails instead of hanging the suite).
#[track_caller]
pub fn finish_within(mut child: Child, patience: std::time::Duration) -> Out {
    let deadline = std::time::Instant::now() + patience;
    while child.try_wait().expect("poll wxtoken").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("wxtoken still ran after {patience:?}: {:?}", wait(child));
        }
        std::thread::park_timeout(std::time::Duration::from_millis(5));
    }
    wait(child)
}

/// Waits for a child started with [`TestEnv::spawn`], closing its stdin first.
pub fn wait(mut child: Child) -> Out {
    drop(child.stdin.take());
    Out::from_output(child.wait_with_output().expect("wait for wxtoken"))
}

/// The lines of `status` output about one account. Panics, showing the whole output, if the
/// account is not there.
#[track_caller]
pub fn status_block(stdout: &str, account: &str) -> String {
    let mut lines = stdout
        .lines()
        .skip_while(|l| !l.starts_with(&format!("{account}  ")));
    let head = lines
        .next()
        .unwrap_or_else(|| panic!("no {account} in status:\n{stdout}"));
    let rest = lines.take_while(|l| l.starts_with(' '));
    std::iter::once(head)
        .chain(rest)
        .collect::<Vec<_>>()
        .join("\n")
}

/// libfaketime's preload library, which shifts a process's wall clock: how a test plays a
/// host whose clock is off, with no clock override in wxtoken itself. `None`, after a
/// note, when the `faketime` package is missing; under CI=true that fails instead
/// (.ci/run installs it).
pub fn faketime_lib() -> Option<PathBuf> {
    let found = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "libfaketime is not installed, and CI must not skip its tests (.ci/run installs faketime)"
        );
        eprintln!("note: libfaketime is not installed (apt-get install faketime); skipping");
    }
    found
}

/// Runs `command` as on a host whose wall clock is `offset` off (libfaketime's syntax:
/// "+2h", "-2h"); monotonic clocks, which time-outs use, are left alone.
pub fn skew_clock(command: &mut Command, lib: &Path, offset: &str) {
    command
        .env("LD_PRELOAD", lib)
        .env("FAKETIME", offset)
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
}

/// The text of the manual page `page` ("docs/postgres.md", or "README.md") under the heading
/// that starts with `heading` ("## PostgreSQL"), up to the next heading of that level: what a
/// test takes the manual's recipes from, so that the manual and the tests cannot drift apart.
pub fn manual_section(page: &str, heading: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(page);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {page}: {e}"));
    let level = heading.split(' ').next().unwrap_or("##").to_string() + " ";
    let mut lines = text.lines().skip_while(|l| !l.starts_with(heading));
    let first = lines
        .next()
        .unwrap_or_else(|| panic!("{page} has no heading '{heading}'"));
    let rest: Vec<&str> = lines.take_while(|l| !l.starts_with(&level)).collect();
    format!("{first}\n{}\n", rest.join("\n"))
}

/// The fenced blocks of `text` whose info string is `lang` ("sql", or "" for a bare
/// fence), in order.
pub fn fenced_blocks(text: &str, lang: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    // Inside a block: whether it is one of ours, and its lines so far.
    let mut open: Option<(bool, Vec<&str>)> = None;
    for line in text.lines() {
        let fence = line.trim_start().strip_prefix("```");
        match (open.take(), fence) {
            (None, Some(info)) => open = Some((info.trim() == lang, Vec::new())),
            (None, None) => {}
            (Some((ours, lines)), Some(_)) => {
                if ours {
                    blocks.push(lines.join("\n"));
                }
            }
            (Some((ours, mut lines)), None) => {
                lines.push(line);
                open = Some((ours, lines));
            }
        }
    }
    blocks
}
