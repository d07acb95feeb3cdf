//! Platforms at scale: one Open Platform component with N authorizers, refreshed through
//! the stand-in with every reply delayed 50 ms, run as separate processes of the real
//! release binary on SQLite.
//!
//! ```text
//! cargo bench --bench platforms                  # N = 100,000 (about 3 minutes)
//! WXTOKEN_BENCH_TENANTS=10000 cargo bench --bench platforms
//! WXTOKEN_BENCH_NO_PG=1 cargo bench --bench platforms    # SQLite only
//! ```
//!
//! A benchmark, not a test: it asserts nothing and prints a table. Each figure is a ratio
//! against a baseline named beside it and computed in the same run:
//! - the full refresh (`--jobs 64`) against the ideal N × 50 ms / 64 (plus the one
//!   component token fetch, 50 ms, which goes first), with its peak RSS;
//! - a refresh-ahead run with nothing due (`--if-expiring-within 20m`) at N against the same
//!   run at 1,000 authorizers, with its peak RSS;
//! - publishing every valid token to one Redis sink (`--format wxjava --component C`, a
//!   real redis-server on loopback): the same nothing-due run with the sink, minus without
//!   it, against the full refresh's time;
//! - the full refresh and the nothing-due run again on PostgreSQL (a server the bench
//!   starts, as the tests do), when one is installed.

use wxtoken_standin as standin;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, params};

use standin::StandIn;

const WXTOKEN: &str = env!("CARGO_BIN_EXE_wxtoken");
const GNU_TIME: &str = "/usr/bin/time";
const LATENCY: Duration = Duration::from_millis(50);
const JOBS: usize = 64;
const COMPONENT: &str = "wxbenchcomponent0";

fn main() {
    let n: usize = std::env::var("WXTOKEN_BENCH_TENANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = scratch();
    let bin = dir.join("wxtoken");
    std::fs::copy(WXTOKEN, &bin).expect("copy the binary");
    println!("platforms bench: {n} authorizers of one component, {LATENCY:?} per reply");
    println!("machine: {}", machine());

    let standin = StandIn::start();
    standin.set_latency(LATENCY);
    standin.add_component(COMPONENT, "bench-component-secret");
    standin.push_component_ticket(COMPONENT, "bench-ticket");

    let small = setup(&dir, &bin, &standin, "small", 1_000);
    let large = setup(&dir, &bin, &standin, "large", n);

    // The full run: the component token, then every authorizer.
    let before = standin.hits(standin::platform::AUTHORIZER_TOKEN);
    let (elapsed, rss, out) =
        timed(wx(&bin, &large, &standin).args(["refresh", "--jobs", &JOBS.to_string()]));
    let fetched = standin.hits(standin::platform::AUTHORIZER_TOKEN) - before;
    check(&out, "refresh");
    let ideal = LATENCY.as_secs_f64() * (n as f64 / JOBS as f64).ceil() + LATENCY.as_secs_f64();
    let ratio = elapsed.as_secs_f64() / ideal;

    // Refresh-ahead with nothing due: the baseline at 1,000, then N.
    let (_, _, out) = timed(wx(&bin, &small, &standin).args(["refresh", "--jobs", "64"]));
    check(&out, "refresh (1,000)");
    let ahead = ["refresh", "--if-expiring-within", "20m", "--jobs", "64"];
    let mut small_runs = Vec::new();
    let mut large_runs = Vec::new();
    let mut large_rss = None;
    let hits_before = standin.requests().len();
    for _ in 0..3 {
        let (t, _, out) = timed(wx(&bin, &small, &standin).args(ahead));
        check(&out, "refresh-ahead (1,000)");
        small_runs.push(t.as_secs_f64());
        let (t, r, out) = timed(wx(&bin, &large, &standin).args(ahead));
        check(&out, "refresh-ahead");
        large_runs.push(t.as_secs_f64());
        large_rss = large_rss.max(r);
    }
    let sent = standin.requests().len() - hits_before;
    let (small_ahead, large_ahead) = (median(&mut small_runs), median(&mut large_runs));

    println!();
    println!("| measure | figure | baseline | ratio | goal |");
    println!("|---|---|---|---|---|");
    println!(
        "| refresh of {n} authorizers, --jobs {JOBS} | {:.1} s ({fetched} fetched) | ideal {:.1} s | {:.3}x | <= 1.15x |",
        elapsed.as_secs_f64(),
        ideal,
        ratio
    );
    println!(
        "| peak RSS of that run | {} | | | <= 32 MiB |",
        rss.map_or("not measured".into(), mib)
    );
    println!(
        "| refresh-ahead, nothing due, {n} | {:.3} s ({sent} requests sent) | {:.3} s at 1,000 | {:.2}x | <= 2x |",
        large_ahead,
        small_ahead,
        large_ahead / small_ahead
    );
    println!(
        "| peak RSS of that run | {} | | | <= 32 MiB |",
        large_rss.map_or("not measured".into(), mib)
    );

    // Publishing: every valid token of the N authorizers to one Redis sink, in a run that
    // fetches nothing.
    if let Some((mut redis, port)) = start_redis(&dir) {
        let url = format!("redis://127.0.0.1:{port}/0");
        let (_, _, out) = timed(wx(&bin, &large, &standin).args([
            "sink",
            "add",
            "cache",
            "--redis",
            &url,
            "--format",
            "wxjava",
            "--component",
            COMPONENT,
        ]));
        check(&out, "sink add");
        let mut with_sink = Vec::new();
        let mut sink_rss = None;
        for _ in 0..3 {
            let (t, r, out) = timed(wx(&bin, &large, &standin).args(ahead));
            check(&out, "refresh-ahead with a sink");
            with_sink.push(t.as_secs_f64());
            sink_rss = sink_rss.max(r);
        }
        let publish = median(&mut with_sink) - large_ahead;
        println!(
            "| publishing {n} valid tokens to one Redis sink | {:.2} s ({:.2} s with, {:.3} s without) | the full refresh, {:.1} s | {:.1} % | <= 5 % |",
            publish,
            median(&mut with_sink),
            large_ahead,
            elapsed.as_secs_f64(),
            100.0 * publish / elapsed.as_secs_f64()
        );
        println!(
            "| peak RSS of that run | {} | | | <= 32 MiB |",
            sink_rss.map_or("not measured".into(), mib)
        );
        let _ = redis.kill();
        let _ = redis.wait();
    } else {
        println!("| publishing to Redis | not measured: no /usr/bin/redis-server | | | |");
    }

    postgres(&dir, &bin, &standin, n);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The full refresh and the nothing-due run on PostgreSQL.
fn postgres(dir: &Path, bin: &Path, standin: &StandIn, n: usize) {
    if std::env::var_os("WXTOKEN_BENCH_NO_PG").is_some() {
        println!("| PostgreSQL | not measured: WXTOKEN_BENCH_NO_PG is set | | | |");
        return;
    }
    let Some(server) = standin::pg::server() else {
        println!("| PostgreSQL | not measured: no PostgreSQL installed | | | |");
        return;
    };
    let small = server.create_db();
    let large = server.create_db();
    let small_url = small.url.clone();
    let large_url = large.url.clone();
    setup_pg(dir, bin, standin, &small, "psmall", 1_000);
    setup_pg(dir, bin, standin, &large, "plarge", n);
    let db = |url: &str| PathBuf::from(url);
    let key = |name: &str| dir.join(format!("{name}.key"));
    let run = |url: &str, name: &str, args: &[&str]| {
        let mut cmd = wx(bin, &db(url), standin);
        cmd.env("WXTOKEN_KEY_FILE", key(name)).args(args);
        timed(&mut cmd)
    };
    let (elapsed, rss, out) = run(
        &large_url,
        "plarge",
        &["refresh", "--jobs", &JOBS.to_string()],
    );
    check(&out, "refresh on PostgreSQL");
    let ideal = LATENCY.as_secs_f64() * (n as f64 / JOBS as f64).ceil() + LATENCY.as_secs_f64();
    let (_, _, out) = run(&small_url, "psmall", &["refresh", "--jobs", "64"]);
    check(&out, "refresh on PostgreSQL (1,000)");
    let ahead = ["refresh", "--if-expiring-within", "20m", "--jobs", "64"];
    let (mut small_runs, mut large_runs, mut large_rss) = (Vec::new(), Vec::new(), None);
    for _ in 0..3 {
        let (t, _, out) = run(&small_url, "psmall", &ahead);
        check(&out, "refresh-ahead on PostgreSQL (1,000)");
        small_runs.push(t.as_secs_f64());
        let (t, r, out) = run(&large_url, "plarge", &ahead);
        check(&out, "refresh-ahead on PostgreSQL");
        large_runs.push(t.as_secs_f64());
        large_rss = large_rss.max(r);
    }
    let (small_ahead, large_ahead) = (median(&mut small_runs), median(&mut large_runs));
    println!(
        "| PostgreSQL: refresh of {n} authorizers, --jobs {JOBS} | {:.1} s | ideal {:.1} s | {:.3}x | <= 1.15x |",
        elapsed.as_secs_f64(),
        ideal,
        elapsed.as_secs_f64() / ideal
    );
    println!(
        "| PostgreSQL: peak RSS of that run | {} | | | <= 32 MiB |",
        rss.map_or("not measured".into(), mib)
    );
    println!(
        "| PostgreSQL: refresh-ahead, nothing due, {n} | {:.3} s | {:.3} s at 1,000 | {:.2}x | <= 2x |",
        large_ahead,
        small_ahead,
        large_ahead / small_ahead
    );
    println!(
        "| PostgreSQL: peak RSS of that run | {} | | | <= 32 MiB |",
        large_rss.map_or("not measured".into(), mib)
    );
}

/// `setup` on PostgreSQL: the component by the binary, the authorizers by SQL, then
/// `key rotate` encrypts their refresh tokens.
fn setup_pg(
    dir: &Path,
    bin: &Path,
    standin: &StandIn,
    db: &standin::pg::PgDb,
    name: &str,
    n: usize,
) {
    let key = dir.join(format!("{name}.key"));
    let with_key = |cmd: &mut Command| {
        cmd.env("WXTOKEN_KEY_FILE", &key);
    };
    let url = PathBuf::from(&db.url);
    let mut add = wx(bin, &url, standin);
    with_key(&mut add);
    add.args(["platform", "add", "--component", COMPONENT]);
    run_with_stdin(&mut add, "bench-component-secret\n");
    let mut ticket = wx(bin, &url, standin);
    with_key(&mut ticket);
    ticket.args(["platform", "set-ticket", "--component", COMPONENT]);
    run_with_stdin(&mut ticket, "bench-ticket\n");
    for i in 0..n {
        let appid = format!("wxa{name}{i:08}");
        standin.add_authorizer(COMPONENT, &appid, &format!("refresh-{appid}"));
    }
    db.query(&format!(
        "INSERT INTO accounts (appid, agent, api, created_at, updated_at, role, platform_id)
           SELECT 'wxa{name}' || lpad(i::text, 8, '0'), '{COMPONENT}', 'token', 0, 0,
                  'authorizer', (SELECT id FROM accounts WHERE appid = '{COMPONENT}')
           FROM generate_series(0, {last}) i;
         INSERT INTO account_secrets (account_id, secret)
           SELECT id, 'refresh-' || appid FROM accounts WHERE role = 'authorizer';
         ANALYZE;",
        last = n - 1
    ));
    let mut rotate = wx(bin, &url, standin);
    with_key(&mut rotate);
    rotate.args(["key", "rotate"]);
    run_with_stdin(&mut rotate, "");
}

/// A redis-server on a free loopback port, in `dir`, and its port.
fn start_redis(dir: &Path) -> Option<(std::process::Child, u16)> {
    let server = Path::new("/usr/bin/redis-server");
    if !server.exists() {
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new(server)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
        ])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((child, port));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    None
}

/// A database with the component (its secret sealed, its ticket stored) and `n`
/// authorizers, written directly with their refresh tokens in plain text (as a database from
/// before encryption holds them), then encrypted by `key rotate`: faster than `n` commands.
fn setup(dir: &Path, bin: &Path, standin: &StandIn, name: &str, n: usize) -> PathBuf {
    let db = dir.join(format!("{name}.db"));
    let mut add = wx(bin, &db, standin);
    add.args(["platform", "add", "--component", COMPONENT]);
    run_with_stdin(&mut add, "bench-component-secret\n");
    let mut ticket = wx(bin, &db, standin);
    ticket.args(["platform", "set-ticket", "--component", COMPONENT]);
    run_with_stdin(&mut ticket, "bench-ticket\n");
    let now = unix_now();
    let mut conn = Connection::open(&db).expect("open the database");
    let component: i64 = conn
        .query_row(
            "SELECT id FROM accounts WHERE appid = ?1",
            [COMPONENT],
            |r| r.get(0),
        )
        .expect("the component");
    let tx = conn.transaction().expect("begin");
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO accounts (appid, agent, api, secret, enabled, created_at, updated_at,
                                       role, platform_id)
                 VALUES (?1, ?2, 'token', ?3, 1, ?4, ?4, 'authorizer', ?5)",
            )
            .expect("prepare");
        for i in 0..n {
            let appid = format!("wxa{name}{i:08}");
            let refresh = format!("refresh-{appid}");
            standin.add_authorizer(COMPONENT, &appid, &refresh);
            insert
                .execute(params![appid, COMPONENT, refresh, now, component])
                .expect("insert an authorizer");
        }
    }
    tx.commit().expect("commit");
    // Encrypt the refresh tokens now, as `account add` would have, so that the measured
    // runs do not do it.
    let mut rotate = wx(bin, &db, standin);
    rotate.args(["key", "rotate"]);
    run_with_stdin(&mut rotate, "");
    db
}

fn wx(bin: &Path, db: &Path, standin: &StandIn) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .env("HOME", db.parent().unwrap())
        .env("WXTOKEN_DB", db)
        .env("WXTOKEN_KEY_FILE", db.with_extension("key"))
        .env("WXTOKEN_API_BASE", standin.url())
        .env("WXTOKEN_WORK_API_BASE", standin.url())
        .arg("-q");
    cmd.stdin(Stdio::null());
    cmd
}

fn run_with_stdin(cmd: &mut Command, input: &str) {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn wxtoken");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    check(&out, "set-up");
}

fn check(out: &Output, what: &str) {
    if !out.status.success() {
        eprintln!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        std::process::exit(1);
    }
}

/// Wall time, peak RSS in KiB (GNU time, when installed) and the output.
fn timed(cmd: &mut Command) -> (Duration, Option<u64>, Output) {
    let mut run = if Path::new(GNU_TIME).exists() {
        let mut t = Command::new(GNU_TIME);
        t.args(["-f", "%M"])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        t.env_clear();
        for (k, v) in cmd.get_envs() {
            if let Some(v) = v {
                t.env(k, v);
            }
        }
        t
    } else {
        let mut c = Command::new(cmd.get_program());
        c.args(cmd.get_args()).env_clear();
        for (k, v) in cmd.get_envs() {
            if let Some(v) = v {
                c.env(k, v);
            }
        }
        c
    };
    run.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let out = run.output().expect("spawn");
    let elapsed = start.elapsed();
    let rss = Path::new(GNU_TIME)
        .exists()
        .then(|| {
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()?
                .trim()
                .parse()
                .ok()
        })
        .flatten();
    (elapsed, rss, out)
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wxtoken-platforms-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or(String::from("unknown CPU"), |(_, m)| m.trim().to_string());
    format!("{model}, {cpus} CPUs")
}
