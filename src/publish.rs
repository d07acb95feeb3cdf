//! Publishing committed tokens to sinks: Redis keys in each SDK's format, and exec hooks.
//! Runs only after the rows are committed, and never touches them: a failed publish is
//! recorded on the sink, reported, and retried by the next run.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Result;
use redis::IntoConnectionInfo;

use crate::domain::{Account, Api, Credential, Secret};
use crate::secret::fingerprint;
use crate::sink::{self, Entry, Format, Item, Layout};
use crate::store::{NewestRow, SinkResult, SinkRow, Sinks};

/// What one publish to one sink did.
#[derive(Debug)]
pub struct Report {
    pub name: String,
    pub result: SinkResult,
    /// Per key (Redis) or per token (exec), for `sink test`; keys that embed a secret are
    /// described, never shown.
    pub lines: Vec<String>,
}

/// Which tokens a publish sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// After a refresh or `get --reject`: every valid token to Redis (a flushed Redis is
    /// whole again after one run), and to hooks only the tokens they have not received.
    Run,
    /// `sink test`: every valid token, key by key.
    Test,
}

/// A valid row of one account, ready to publish.
struct Valid<'a> {
    account: &'a Account,
    kind: Credential,
    row: NewestRow,
}

/// Publishes to every sink that selects any of `accounts` and records each outcome. The
/// accounts' rows are read once for all the sinks, and only if a sink selects any of them:
/// in batches (`newest_rows`), never one account at a time, however many tenants a
/// platform has.
pub fn publish_all(store: &dyn Sinks, accounts: &[Account], now: i64) -> Result<Vec<Report>> {
    let sinks = store.sinks()?;
    let platforms = Platforms::of(accounts);
    let selections: Vec<Selection> = sinks
        .iter()
        .map(|s| Selection::new(s, accounts, &platforms))
        .collect();
    let mut valid = None;
    let mut reports = Vec::new();
    for (sink, selection) in sinks.iter().zip(&selections) {
        if !accounts.iter().any(|a| selection.selects(a)) {
            continue;
        }
        // A stop signal during publishing: the sinks not reached yet get the tokens from
        // the next run, as after a failed publish.
        if crate::signals::caught().is_some() {
            break;
        }
        let valid = match &mut valid {
            Some(valid) => valid,
            None => {
                let selected = accounts
                    .iter()
                    .filter(|a| selections.iter().any(|s| s.selects(a)));
                valid.insert(valid_rows(store, selected, now)?)
            }
        };
        reports.push(publish_to(
            store,
            sink,
            selection,
            &platforms,
            valid,
            Mode::Run,
            now,
        )?);
    }
    Ok(reports)
}

/// Publishes to one sink and records the outcome on it.
pub fn publish_sink(
    store: &dyn Sinks,
    sink: &SinkRow,
    accounts: &[Account],
    mode: Mode,
    now: i64,
) -> Result<Report> {
    let platforms = Platforms::of(accounts);
    let selection = Selection::new(sink, accounts, &platforms);
    let selected = accounts.iter().filter(|a| selection.selects(a));
    let valid = valid_rows(store, selected, now)?;
    publish_to(store, sink, &selection, &platforms, &valid, mode, now)
}

/// The platform accounts among those published, by id: a 代开发 account names its
/// template suite by id only.
struct Platforms<'a>(HashMap<i64, &'a Account>);

impl<'a> Platforms<'a> {
    fn of(accounts: &'a [Account]) -> Self {
        Platforms(
            accounts
                .iter()
                .filter(|a| matches!(a.api, Api::Component | Api::Suite))
                .map(|a| (a.id, a))
                .collect(),
        )
    }

    /// A tenant's platform: the component appid or suite id its key holds, or for a
    /// 代开发 account, its template suite's id (when that suite is among the accounts).
    fn of_tenant(&self, account: &'a Account) -> Option<&'a str> {
        match account.api {
            Api::Authorizer | Api::Corp => Some(account.key.agent.as_str()),
            Api::Work => account
                .platform
                .and_then(|id| self.0.get(&id))
                .map(|p| p.key.appid.as_str()),
            _ => None,
        }
    }
}

/// What one sink selects, resolved once per publish against the accounts published.
pub struct Selection {
    every: bool,
    accounts: HashSet<String>,
    components: HashSet<String>,
    suites: HashSet<String>,
    /// The providers named by the selected suites.
    providers: HashSet<String>,
    /// The 代开发 accounts of the selected suites, by id.
    custom: HashSet<i64>,
}

impl Selection {
    fn new(sink: &SinkRow, accounts: &[Account], platforms: &Platforms) -> Selection {
        let mut s = Selection {
            every: sink.accounts.is_empty(),
            accounts: HashSet::new(),
            components: HashSet::new(),
            suites: HashSet::new(),
            providers: HashSet::new(),
            custom: HashSet::new(),
        };
        for selector in &sink.accounts {
            match sink::Selector::parse(selector) {
                sink::Selector::Account(key) => s.accounts.insert(key),
                sink::Selector::Component(id) => s.components.insert(id),
                sink::Selector::Suite(id) => s.suites.insert(id),
            };
        }
        if !s.suites.is_empty() {
            for a in accounts {
                match a.api {
                    Api::Suite if s.suites.contains(&a.key.appid) => {
                        s.providers.extend(a.receiver.clone());
                    }
                    Api::Work if platforms.of_tenant(a).is_some_and(|p| s.suites.contains(p)) => {
                        s.custom.insert(a.id);
                    }
                    _ => {}
                }
            }
        }
        s
    }

    /// Whether the sink publishes this account's tokens. With no selector: every account
    /// that is neither a platform nor a tenant (a sink added before platforms existed
    /// publishes what it did), and providers, which are ordinary accounts.
    pub fn selects(&self, account: &Account) -> bool {
        if self.every {
            return match account.api {
                Api::Token | Api::Stable | Api::Work | Api::Provider => true,
                Api::Component | Api::Authorizer | Api::Suite | Api::Corp => false,
            };
        }
        let (id, platform) = (&account.key.appid, &account.key.agent);
        self.accounts.contains(&account.key.to_string())
            || match account.api {
                Api::Component => self.components.contains(id),
                Api::Authorizer => self.components.contains(platform),
                Api::Suite => self.suites.contains(id),
                Api::Corp => self.suites.contains(platform),
                Api::Provider => self.providers.contains(id),
                Api::Work => self.custom.contains(&account.id),
                Api::Token | Api::Stable => false,
            }
    }
}

/// How many accounts' newest rows one store read asks for: one query per batch, each with a
/// bounded result, however many accounts a run publishes.
const NEWEST_BATCH: usize = 500;

/// The newest row of each credential of `accounts`, where it is still valid at `now`, in the
/// order of `accounts` and of each account's credentials.
fn valid_rows<'a>(
    store: &dyn Sinks,
    accounts: impl Iterator<Item = &'a Account>,
    now: i64,
) -> Result<Vec<Valid<'a>>> {
    let accounts: Vec<&Account> = accounts.collect();
    let mut newest = HashMap::new();
    for batch in accounts.chunks(NEWEST_BATCH) {
        let ids: Vec<i64> = batch.iter().map(|a| a.id).collect();
        for (account_id, kind, row) in store.newest_rows(&ids)? {
            newest.insert((account_id, kind.as_str()), row);
        }
    }
    let mut valid = Vec::new();
    for account in accounts {
        for kind in account.credentials() {
            if let Some(row) = newest.get(&(account.id, kind.as_str())).cloned()
                && row.expires_at > now
            {
                valid.push(Valid { account, kind, row });
            }
        }
    }
    Ok(valid)
}

/// Publishes the rows of `valid` that the sink selects, and records the outcome on it.
fn publish_to(
    store: &dyn Sinks,
    sink: &SinkRow,
    selection: &Selection,
    platforms: &Platforms,
    valid: &[Valid],
    mode: Mode,
    now: i64,
) -> Result<Report> {
    let valid: Vec<&Valid> = valid
        .iter()
        .filter(|v| selection.selects(v.account))
        .collect();
    let timeout = Duration::from_secs(sink.timeout.clamp(1, 120) as u64);
    let report = if sink.kind == "exec" {
        publish_exec(store, sink, platforms, &valid, mode, timeout, now)?
    } else {
        publish_redis(sink, platforms, &valid, mode, timeout, now)
    };
    store.record_sink_result(sink.id, &report.result)?;
    Ok(report)
}

pub fn layout(sink: &SinkRow) -> Layout {
    Layout {
        format: sink
            .format
            .as_deref()
            .and_then(Format::parse)
            .unwrap_or(Format::Plain),
        prefix: sink.prefix.clone(),
        key_template: sink.key_template.clone(),
    }
}

/// What one valid row publishes: with an authorizer's refresh token on its access token
/// when the sink asked for refresh tokens.
fn item<'a>(sink: &SinkRow, platforms: &Platforms<'a>, v: &'a Valid) -> Item<'a> {
    let refresh_token = (sink.refresh_tokens
        && v.account.api == Api::Authorizer
        && v.kind == Credential::AccessToken)
        .then(|| v.account.secret.expose())
        .filter(|t| !t.is_empty());
    Item {
        key: &v.account.key,
        api: v.account.api,
        secret: &v.account.secret,
        kind: v.kind,
        value: &v.row.token,
        expires_at: v.row.expires_at,
        platform: platforms.of_tenant(v.account),
        refresh_token,
    }
}

fn publish_redis(
    sink: &SinkRow,
    platforms: &Platforms,
    valid: &[&Valid],
    mode: Mode,
    timeout: Duration,
    now: i64,
) -> Report {
    let layout = layout(sink);
    let mut writes: Vec<(Entry, String)> = Vec::new();
    let mut secrets: Vec<&str> = Vec::new();
    for v in valid {
        let it = item(sink, platforms, v);
        for entry in sink::entries(&layout, &it, now) {
            let shown = entry.shown(&it);
            // A refresh token is a value, never part of a message either.
            if entry.secret_key || it.refresh_token.is_some() {
                secrets.push(v.account.secret.expose());
            }
            writes.push((entry, shown));
        }
    }
    let total = writes.len() as i64;
    let scrub = |text: String| -> String {
        let mut text = text;
        for (entry, shown) in &writes {
            if entry.secret_key {
                text = text.replace(&entry.key, shown);
            }
        }
        let (user, password) =
            sink::credentials(&sink.target, sink.password.as_ref().map(Secret::expose));
        for s in secrets
            .iter()
            .copied()
            .chain(user.as_deref())
            .chain(password.as_deref())
        {
            if !s.is_empty() {
                text = text.replace(s, "***");
            }
        }
        text
    };
    let report = |published: i64, error: Option<String>, lines: Vec<String>| Report {
        name: sink.name.clone(),
        result: SinkResult {
            at: now,
            ok: error.is_none(),
            published,
            failed: total - published,
            error,
        },
        lines,
    };
    if writes.is_empty() {
        return report(0, None, Vec::new());
    }
    let results = match write_with_deadline(sink, &writes, timeout) {
        Ok(results) => results,
        Err(why) => return report(0, Some(scrub(why)), Vec::new()),
    };
    let mut lines = Vec::new();
    let mut published = 0;
    let mut first_error = None;
    for ((entry, shown), outcome) in writes.iter().zip(results) {
        match outcome {
            Ok(()) => {
                published += 1;
                lines.push(match entry.ttl {
                    Some(ttl) => format!("{shown}  ok, expires in {ttl}s"),
                    None => format!("{shown}  ok, no expiry"),
                });
            }
            Err(e) => {
                let error = scrub(format!("Redis refused a write: {e}"));
                lines.push(format!("{shown}  FAILED: {error}"));
                first_error.get_or_insert(error);
            }
        }
    }
    log::info!("sink {}: {published} of {total} keys written", sink.name);
    if mode == Mode::Run {
        lines.clear();
    }
    report(published, first_error, lines)
}

/// Connects and sends every write in one pipeline, all within `timeout`: the connection,
/// the login and the replies share one deadline, so a Redis that never answers, or answers
/// a byte at a time, costs at most `timeout` per sink. The I/O runs on a thread of its own,
/// which is left behind at the deadline (its socket times out on its own, and the process
/// ends after the run); its late writes are still valid tokens. The error is not scrubbed.
fn write_with_deadline(
    sink: &SinkRow,
    writes: &[(Entry, String)],
    timeout: Duration,
) -> Result<Vec<redis::RedisResult<()>>, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = sink.clone();
    let entries: Vec<Entry> = writes.iter().map(|(e, _)| e.clone()).collect();
    let spawned = std::thread::Builder::new()
        .name("redis-publish".into())
        .spawn(move || {
            let outcome = (|| {
                let mut con = connect(&sink, timeout)
                    .map_err(|e| format!("could not connect to Redis: {e}"))?;
                // One round trip for every key (this runs at the end of every refresh), with
                // one result per key, so that a refused key does not hide the others.
                let mut pipe = redis::pipe();
                pipe.ignore_errors();
                for e in &entries {
                    let set = pipe.cmd("SET").arg(&e.key).arg(&e.value);
                    if let Some(ttl) = e.ttl {
                        set.arg("EX").arg(ttl);
                    }
                }
                pipe.query::<Vec<redis::RedisResult<()>>>(&mut con)
                    .map_err(|e| format!("Redis refused the writes: {e}"))
            })();
            let _ = tx.send(outcome);
        });
    if let Err(e) = spawned {
        return Err(format!("could not start writing to Redis: {e}"));
    }
    match wait_until(&rx, Instant::now() + timeout) {
        Ok(outcome) => outcome,
        Err(Some(signal)) => Err(format!("stopped by {signal} while writing to Redis")),
        Err(None) => Err(format!(
            "Redis did not take the writes within {}s (the sink's --timeout); gave up",
            timeout.as_secs()
        )),
    }
}

/// The next message on `rx`, waiting until `deadline` at most, and not past a stop signal
/// (SIGTERM and the like): `Err(Some(signal))` then, `Err(None)` at the deadline.
fn wait_until<T>(
    rx: &std::sync::mpsc::Receiver<T>,
    deadline: Instant,
) -> Result<T, Option<&'static str>> {
    loop {
        if let Some(signal) = crate::signals::caught() {
            return Err(Some(signal));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(None);
        }
        match rx.recv_timeout(left.min(Duration::from_millis(50))) {
            Ok(message) => return Ok(message),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Err(None),
        }
    }
}

fn connect(sink: &SinkRow, timeout: Duration) -> redis::RedisResult<redis::Connection> {
    let info = sink.target.as_str().into_connection_info()?;
    // The credentials are stored apart from the URL (they are secrets); CLIENT SETINFO is
    // one round trip wxtoken does not need.
    let mut settings = info.redis_settings().clone().set_skip_set_lib_name();
    let (user, password) =
        sink::credentials(&sink.target, sink.password.as_ref().map(Secret::expose));
    if let Some(user) = user {
        settings = settings.set_username(user);
    }
    if let Some(password) = password {
        settings = settings.set_password(password);
    }
    let client = redis::Client::open(info.set_redis_settings(settings))?;
    let con = client.get_connection_with_timeout(timeout)?;
    con.set_read_timeout(Some(timeout))?;
    con.set_write_timeout(Some(timeout))?;
    Ok(con)
}

fn publish_exec(
    store: &dyn Sinks,
    sink: &SinkRow,
    platforms: &Platforms,
    valid: &[&Valid],
    mode: Mode,
    timeout: Duration,
    now: i64,
) -> Result<Report> {
    // What the hook has received, read once for the sink rather than once per row.
    let received: HashMap<(i64, &str), i64> = match mode {
        Mode::Run => store
            .published_rows(sink.id)?
            .into_iter()
            .map(|(account_id, kind, token_id)| ((account_id, kind.as_str()), token_id))
            .collect(),
        Mode::Test => HashMap::new(),
    };
    let mut lines = Vec::new();
    let (mut published, mut failed, mut first_error) = (0, 0, None);
    for v in valid {
        if let Some(signal) = crate::signals::caught() {
            failed += 1;
            first_error.get_or_insert(format!("stopped by {signal}; the next run delivers"));
            continue;
        }
        if received.get(&(v.account.id, v.kind.as_str())) == Some(&v.row.id) {
            continue;
        }
        let what = format!(
            "{} {}",
            v.account.key,
            sink::kind_name(v.account.api, v.kind)
        );
        match run_hook(sink, platforms.of_tenant(v.account), v, timeout, now) {
            Ok(()) => {
                store.note_published(sink.id, v.account.id, v.kind, v.row.id)?;
                published += 1;
                log::info!(
                    "sink {}: {what} {} delivered",
                    sink.name,
                    fingerprint(&v.row.token)
                );
                lines.push(format!("{what}  ok"));
            }
            Err(why) => {
                failed += 1;
                lines.push(format!("{what}  FAILED: {why}"));
                first_error.get_or_insert(format!("{what}: {why}"));
            }
        }
    }
    Ok(Report {
        name: sink.name.clone(),
        result: SinkResult {
            at: now,
            ok: failed == 0,
            published,
            failed,
            error: first_error,
        },
        lines,
    })
}

/// The variables a hook gets from wxtoken's own environment, when set (docs/sinks.md):
/// nothing else, so that `PGPASSWORD`, a `WXTOKEN_DB` URL with a password in it, or any
/// other secret of the refresher's environment never reaches a hook.
const HOOK_ENV: [&str; 8] = [
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR",
];

/// `PATH` for a hook when wxtoken has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Runs the hook for one token: the token on stdin (never in argv or the environment, where
/// `ps` and /proc show it), what it is in `WXTOKEN_*` variables (see `run_command`).
/// A tenant's platform goes in `WXTOKEN_PLATFORM`, set for tenants only (its key holds it
/// where a WeCom app's holds the agentid: `WXTOKEN_AGENTID` is then empty).
fn run_hook(
    sink: &SinkRow,
    platform: Option<&str>,
    v: &Valid,
    timeout: Duration,
    now: i64,
) -> Result<(), String> {
    let agent = match v.account.api {
        Api::Authorizer | Api::Corp => String::new(),
        _ => v.account.key.agent.clone(),
    };
    let mut env = vec![
        ("WXTOKEN_SINK", sink.name.clone()),
        ("WXTOKEN_APPID", v.account.key.appid.clone()),
        ("WXTOKEN_AGENTID", agent),
        (
            "WXTOKEN_KIND",
            sink::kind_name(v.account.api, v.kind).to_string(),
        ),
        ("WXTOKEN_EXPIRES_AT", v.row.expires_at.to_string()),
        ("WXTOKEN_EXPIRES_IN", (v.row.expires_at - now).to_string()),
    ];
    if let Some(platform) = platform {
        env.push(("WXTOKEN_PLATFORM", platform.to_string()));
    }
    let input = format!("{}\n", v.row.token).into_bytes();
    let hidden = [v.row.token.as_str(), v.account.secret.expose()];
    run_command(
        &sink.target,
        &env,
        input,
        timeout,
        &hidden,
        &format!("sink {}", sink.name),
    )
}

/// Runs a shell command line (a sink's hook, a platform's event hook): `input` on stdin,
/// `env` plus a few of wxtoken's own variables in a clean environment, with no descriptor
/// but stdin, stdout and stderr, in a process group of its own. At the deadline the whole
/// group is killed, whether the shell is still running or only what it left behind holds
/// its stderr open; nothing waits past it. Its last stderr line comes back in the error,
/// with each of `hidden` replaced by `***`.
pub fn run_command(
    line: &str,
    env: &[(&str, String)],
    input: Vec<u8>,
    timeout: Duration,
    hidden: &[&str],
    whose: &str,
) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let deadline = Instant::now() + timeout;
    let mut command = Command::new("/bin/sh");
    command.arg("-c").arg(line).env_clear();
    for name in HOOK_ENV {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    if std::env::var_os("PATH").is_none() {
        command.env("PATH", DEFAULT_PATH);
    }
    for (name, value) in env {
        command.env(name, value);
    }
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own process group, so that a timeout ends whatever the shell started too.
        .process_group(0);
    // SAFETY: runs in the child between fork and exec, and only calls close_range and
    // fcntl, which are async-signal-safe; it allocates nothing.
    unsafe {
        command.pre_exec(|| {
            close_inherited_descriptors();
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("could not start the command: {e}"))?;
    let group = child.id() as libc::pid_t;
    let mut stdin = child.stdin.take();
    // A hook that never reads stdin must not block us: write from a thread, never joined
    // (the pipe holds the bytes; it ends when the hook's group does).
    std::thread::spawn(move || {
        if let Some(pipe) = stdin.as_mut() {
            let _ = pipe.write_all(&input);
        }
    });
    // Stderr is read on a thread into a shared buffer, so that what arrived by the deadline
    // is there even when something the hook left behind keeps the pipe open.
    let text = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (eof_tx, eof_rx) = std::sync::mpsc::channel::<()>();
    let mut stderr = child.stderr.take();
    let buffer = text.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Some(pipe) = stderr.as_mut() {
            match pipe.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut b = buffer.lock().unwrap_or_else(|e| e.into_inner());
                    if b.len() < 64 * 1024 {
                        b.extend_from_slice(&chunk[..n]);
                    }
                }
            }
        }
        let _ = eof_tx.send(());
    });
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline || crate::signals::caught().is_some() => {
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                kill_group(group);
                return Err(format!("could not wait for the command: {e}"));
            }
        }
    };
    let Some(status) = status else {
        kill_group(group);
        let _ = child.kill();
        let _ = child.wait();
        if let Some(signal) = crate::signals::caught() {
            return Err(format!("stopped by {signal}: killed"));
        }
        return Err(format!(
            "timed out after {}s and was killed",
            timeout.as_secs()
        ));
    };
    // The shell is gone; whatever it started in the background may still hold stderr.
    // Wait for the end of it only until the deadline (or a stop signal), then end that too.
    if wait_until(&eof_rx, deadline).is_err() {
        kill_group(group);
        log::warn!(
            "{whose}: the command left processes behind that kept its stderr open past \
             {}s; they were killed",
            timeout.as_secs()
        );
    }
    if status.success() {
        return Ok(());
    }
    let stderr =
        String::from_utf8_lossy(&text.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| {
            let l = hidden
                .iter()
                .filter(|h| !h.is_empty())
                .fold(l.to_string(), |l, h| l.replace(h, "***"));
            format!(": {}", crate::policy::one_line(&l, 200))
        })
        .unwrap_or_default();
    Err(match status.code() {
        Some(code) => format!("the command exited with status {code}{last}"),
        None => format!("the command was killed by a signal{last}"),
    })
}

/// In a hook's child process, before exec: every descriptor above stderr is closed on
/// exec, whoever opened it (wxtoken's parent, a library), so a hook inherits none.
fn close_inherited_descriptors() {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range only changes descriptor flags.
    let done = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if done == 0 {
        return;
    }
    // Kernels before 5.11: one by one, up to a bound no process here reaches.
    for fd in 3..4096 {
        // SAFETY: fcntl on a descriptor that may not exist fails harmlessly with EBADF.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

fn kill_group(group: libc::pid_t) {
    // SAFETY: kill with a negative pid signals that process group; nothing else.
    unsafe {
        libc::kill(-group, libc::SIGKILL);
    }
}

/// One line per failed sink on stderr; returns the names of the sinks that failed.
pub fn report_failures(reports: &[Report], prefix: &str) -> Vec<String> {
    let mut failed = Vec::new();
    for r in reports.iter().filter(|r| !r.result.ok) {
        let total = r.result.published + r.result.failed;
        eprintln!(
            "wxtoken: {prefix}sink {}: publish failed ({} of {total} not published; the tokens \
             are stored, the next refresh retries): {}",
            r.name,
            r.result.failed,
            r.result.error.as_deref().unwrap_or("unknown error")
        );
        failed.push(r.name.clone());
    }
    failed
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use super::*;
    use crate::domain::{AccountKey, Ticket};
    use crate::store::Result as StoreResult;

    /// Sinks over memory that counts the calls publishing makes, by name.
    #[derive(Default)]
    struct Counted {
        sinks: Vec<SinkRow>,
        rows: BTreeMap<(i64, &'static str), NewestRow>,
        calls: RefCell<BTreeMap<&'static str, usize>>,
    }

    impl Counted {
        fn count(&self, name: &'static str) {
            *self.calls.borrow_mut().entry(name).or_default() += 1;
        }

        fn calls(&self) -> usize {
            self.calls.borrow().values().sum()
        }
    }

    impl Sinks for Counted {
        fn add_sink(&self, _: &SinkRow) -> StoreResult<bool> {
            unreachable!("publishing adds no sink")
        }
        fn sinks(&self) -> StoreResult<Vec<SinkRow>> {
            self.count("sinks");
            Ok(self.sinks.clone())
        }
        fn sink(&self, _: &str) -> StoreResult<Option<SinkRow>> {
            unreachable!("publishing reads the sinks all at once")
        }
        fn remove_sink(&self, _: &str) -> StoreResult<bool> {
            unreachable!("publishing removes no sink")
        }
        fn record_sink_result(&self, _: i64, _: &SinkResult) -> StoreResult<()> {
            self.count("record_sink_result");
            Ok(())
        }
        fn newest_rows(&self, ids: &[i64]) -> StoreResult<Vec<(i64, Credential, NewestRow)>> {
            self.count("newest_rows");
            let kinds = [Credential::AccessToken, Credential::Ticket(Ticket::Jsapi)];
            Ok(ids
                .iter()
                .flat_map(|id| kinds.map(|kind| (*id, kind)))
                .filter_map(|(id, kind)| {
                    let row = self.rows.get(&(id, kind.as_str()))?;
                    Some((id, kind, row.clone()))
                })
                .collect())
        }
        fn published_rows(&self, _: i64) -> StoreResult<Vec<(i64, Credential, i64)>> {
            self.count("published_rows");
            Ok(Vec::new())
        }
        fn note_published(&self, _: i64, _: i64, _: Credential, _: i64) -> StoreResult<()> {
            self.count("note_published");
            Ok(())
        }
    }

    fn account(id: i64) -> Account {
        Account {
            id,
            key: AccountKey {
                appid: format!("wx{id:04}"),
                agent: String::new(),
            },
            api: Api::Stable,
            secret: Secret::new(format!("secret{id}")),
            enabled: true,
            created_at: 0,
            updated_at: 0,
            held_until: None,
            held_reason: None,
            tickets: vec![Ticket::Jsapi],
            fetch_due: false,
            platform: None,
            previous_secret: None,
            receiver: None,
        }
    }

    fn sink(id: i64, kind: &str, target: &str, accounts: &[&str]) -> SinkRow {
        SinkRow {
            id,
            name: format!("s{id}"),
            kind: kind.to_string(),
            target: target.to_string(),
            password: None,
            format: Some("plain".to_string()),
            prefix: None,
            key_template: None,
            accounts: accounts.iter().map(|a| a.to_string()).collect(),
            refresh_tokens: false,
            timeout: 1,
            created_at: 0,
            last: None,
        }
    }

    /// `accounts` accounts with a valid token and ticket each, and two Redis sinks (nothing
    /// listens on their port: a refused connection costs no time) and one hook for one
    /// account: the shape of a fleet that publishes to two Redis servers.
    fn fleet(accounts: i64) -> (Counted, Vec<Account>) {
        let mut store = Counted {
            sinks: vec![
                sink(1, "redis", "redis://127.0.0.1:1/", &[]),
                sink(2, "redis", "redis://127.0.0.1:1/1", &[]),
                sink(3, "exec", "true", &["wx0001"]),
            ],
            ..Counted::default()
        };
        let all: Vec<Account> = (1..=accounts).map(account).collect();
        for a in &all {
            for kind in a.credentials() {
                let row = NewestRow {
                    id: a.id,
                    token: format!("token-{}-{}", a.id, kind.as_str()),
                    expires_at: 10_000,
                };
                store.rows.insert((a.id, kind.as_str()), row);
            }
        }
        (store, all)
    }

    #[test]
    fn a_run_reads_each_row_once_for_every_sink() {
        let (store, accounts) = fleet(1_000);
        let reports = publish_all(&store, &accounts, 1_000).unwrap();
        assert_eq!(reports.len(), 3);
        let calls = store.calls.borrow().clone();
        // Every account's token and ticket, in two batches of 500 accounts: not once per
        // account and kind (2,000 before), nor once per sink (4,002 before that).
        assert_eq!(calls["newest_rows"], 2);
        // The hook's one account: what it has received (one read for the sink, not one per
        // row), and that it got its two rows.
        assert_eq!((calls["published_rows"], calls["note_published"]), (1, 2));
        assert_eq!((calls["sinks"], calls["record_sink_result"]), (1, 3));
        assert_eq!(store.calls(), 9);
    }

    #[test]
    fn ten_thousand_accounts_are_read_in_twenty_batches() {
        let (store, accounts) = fleet(10_000);
        let reports = publish_all(&store, &accounts, 1_000).unwrap();
        assert_eq!(reports.len(), 3);
        assert_eq!(store.calls.borrow()["newest_rows"], 20);
        assert_eq!(store.calls(), 27);
    }

    #[test]
    fn every_valid_row_is_published_across_batches_and_expired_ones_are_not() {
        let (mut store, accounts) = fleet(1_001);
        // The last account of the first batch and the one of the second have expired.
        for id in [500, 1_001] {
            for kind in ["access_token", "jsapi"] {
                store.rows.get_mut(&(id, kind)).unwrap().expires_at = 1_000;
            }
        }
        store.sinks = vec![sink(1, "exec", "true", &[])];
        let valid = valid_rows(&store, accounts.iter(), 1_000).unwrap();
        assert_eq!(valid.len(), 2 * 999);
        assert!(
            valid
                .iter()
                .all(|v| v.account.id != 500 && v.account.id != 1_001)
        );
        // In the order of the accounts and of their credentials.
        let order: Vec<(i64, &str)> = valid
            .iter()
            .map(|v| (v.account.id, v.kind.as_str()))
            .collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted);
        assert_eq!(valid[1].row.token, "token-1-jsapi");
    }

    /// A component with `n` authorizers (ids 2..), each with a valid token.
    fn platform_fleet(n: i64) -> (Counted, Vec<Account>) {
        let mut store = Counted::default();
        let mut all = vec![account(1)];
        all[0].api = Api::Component;
        all[0].tickets.clear();
        for id in 2..n + 2 {
            let mut a = account(id);
            a.api = Api::Authorizer;
            a.key.agent = "wx0001".into();
            a.platform = Some(1);
            a.tickets.clear();
            all.push(a);
        }
        for a in &all {
            let row = NewestRow {
                id: a.id,
                token: format!("token-{}", a.id),
                expires_at: 10_000,
            };
            store.rows.insert((a.id, "access_token"), row);
        }
        (store, all)
    }

    #[test]
    fn a_component_with_its_authorizers_is_read_in_batches() {
        let (mut store, accounts) = platform_fleet(1_000);
        let mut s = sink(1, "exec", "true", &["component:wx0001"]);
        s.kind = "redis".into();
        s.target = "redis://127.0.0.1:1/".into();
        store.sinks = vec![s, sink(2, "redis", "redis://127.0.0.1:1/1", &[])];
        let reports = publish_all(&store, &accounts, 1_000).unwrap();
        // Only the component sink: the sink without selectors takes no platform or tenant.
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].name, "s1");
        // 1,001 accounts in batches of 500: three reads, not one per authorizer.
        assert_eq!(store.calls.borrow()["newest_rows"], 3);
        assert_eq!(reports[0].result.failed, 1_001);
    }

    #[test]
    fn selectors_take_a_platform_with_its_tenants_only() {
        let (_, accounts) = platform_fleet(2);
        let platforms = Platforms::of(&accounts);
        let picked = |selectors: &[&str]| {
            let s = sink(1, "redis", "redis://h/", selectors);
            let selection = Selection::new(&s, &accounts, &platforms);
            accounts
                .iter()
                .filter(|a| selection.selects(a))
                .map(|a| a.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(picked(&["component:wx0001"]), [1, 2, 3]);
        assert_eq!(picked(&["component:wx0009"]), Vec::<i64>::new());
        assert_eq!(picked(&["suite:wx0001"]), Vec::<i64>::new());
        assert_eq!(picked(&["wx0003/wx0001"]), [3]);
        assert_eq!(picked(&[]), Vec::<i64>::new());
    }

    #[test]
    fn no_row_is_read_when_no_sink_selects_the_accounts() {
        let (mut store, accounts) = fleet(10);
        store.sinks = vec![sink(1, "exec", "true", &["wx9999"])];
        assert!(publish_all(&store, &accounts, 1_000).unwrap().is_empty());
        assert_eq!(store.calls(), 1);
    }
}
