//! The reports and prune at scale: one Open Platform component with 1,000 and with N
//! authorizers (each with its newest token and its last attempt), on SQLite, run as
//! separate processes of the real release binary.
//!
//! ```text
//! cargo bench --bench reports                    # N = 100,000
//! WXTOKEN_BENCH_TENANTS=10000 cargo bench --bench reports
//! ```
//!
//! A benchmark, not a test: it asserts nothing and prints a table. Each figure is a ratio
//! against a baseline computed in the same run:
//! - `status --json`, `metrics` and `status --check` at N against the same command at
//!   1,000 authorizers (median of 3 runs each), with the peak RSS at N (GNU time);
//! - `prune --keep 1` of a day's rows at N (14 per authorizer: 7 expired token rows and 7
//!   attempts past their retention), with the longest time a concurrent writer waited
//!   for the write lock meanwhile (what a `refresh` or `get --reject` would wait).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, params};

const WXTOKEN: &str = env!("CARGO_BIN_EXE_wxtoken");
const GNU_TIME: &str = "/usr/bin/time";
const COMPONENT: &str = "wxbenchcomponent0";
/// Rows a day adds per authorizer in the prune measurement.
const DAY_ROWS: usize = 14;

fn main() {
    let n: usize = std::env::var("WXTOKEN_BENCH_TENANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = scratch();
    let bin = dir.join("wxtoken");
    std::fs::copy(WXTOKEN, &bin).expect("copy the binary");
    println!("reports bench: 1,000 and {n} authorizers of one component, SQLite");
    println!("machine: {}", machine());

    let small = setup(&dir, &bin, "small", 1_000);
    let large = setup(&dir, &bin, "large", n);

    let commands: [(&str, &[&str]); 3] = [
        ("status --json", &["status", "--json"]),
        ("metrics", &["metrics"]),
        ("status --check", &["status", "--check"]),
    ];
    let mut rows = Vec::new();
    for (name, args) in commands {
        let (mut at_small, mut at_large, mut rss) = (Vec::new(), Vec::new(), None);
        for _ in 0..3 {
            let (t, _, out) = timed(wx(&bin, &small).args(args));
            check(&out, name);
            at_small.push(t.as_secs_f64());
            let (t, r, out) = timed(wx(&bin, &large).args(args));
            check(&out, name);
            at_large.push(t.as_secs_f64());
            rss = rss.max(r);
        }
        rows.push((name, median(&mut at_small), median(&mut at_large), rss));
    }

    let added = add_a_day(&large, n);
    let (prune, longest, waits, out) = prune_with_a_writer(&bin, &large);
    check(&out, "prune");

    println!();
    println!("| measure | at {n} | at 1,000 | ratio | peak RSS at {n} | goal |");
    println!("|---|---|---|---|---|---|");
    for (name, small, large, rss) in rows {
        println!(
            "| `{name}` | {large:.3} s | {small:.3} s | {:.1}x | {} | streaming, RSS <= 32 MiB{} |",
            large / small,
            rss.map_or("not measured".into(), mib),
            if name == "status --check" {
                ", <= 2x"
            } else {
                ""
            }
        );
    }
    println!(
        "| `prune --keep 1` of {added} rows at {n} | {:.2} s ({}) | | | | bounded batches |",
        prune.as_secs_f64(),
        String::from_utf8_lossy(&[out.stdout.as_slice(), out.stderr.as_slice()].concat()).trim()
    );
    println!(
        "| longest wait of a concurrent writer for the write lock during that prune | {:.1} ms (max of {waits} BEGIN IMMEDIATE) | | | | short |",
        longest.as_secs_f64() * 1000.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A database with the component (its secret sealed, its ticket stored, a valid token)
/// and `n` authorizers, each with a valid token and a successful attempt, written
/// directly to keep setting up fast.
fn setup(dir: &Path, bin: &Path, name: &str, n: usize) -> PathBuf {
    let db = dir.join(format!("{name}.db"));
    let mut add = wx(bin, &db);
    add.args(["platform", "add", "--component", COMPONENT]);
    run_with_stdin(&mut add, "bench-component-secret\n");
    let mut ticket = wx(bin, &db);
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
        let mut account = tx
            .prepare(
                "INSERT INTO accounts (appid, agent, api, secret, enabled, created_at, updated_at,
                                       role, platform_id)
                 VALUES (?1, ?2, 'token', ?3, 1, ?4, ?4, 'authorizer', ?5)",
            )
            .expect("prepare");
        let mut token = tx
            .prepare(
                "INSERT INTO tokens (account_id, kind, token, expires_in, fetched_at, expires_at)
                 VALUES (?1, 'access_token', ?2, 7200, ?3, ?3 + 7200)",
            )
            .expect("prepare");
        let mut attempt = tx
            .prepare(
                "INSERT INTO attempts (account_id, kind, started_at, duration_ms, tries, outcome)
                 VALUES (?1, 'access_token', ?2, 50, 1, 'ok')",
            )
            .expect("prepare");
        token
            .execute(params![component, "component-token", now - 60])
            .expect("the component's token");
        for i in 0..n {
            let appid = format!("wxa{name}{i:08}");
            account
                .execute(params![
                    appid,
                    COMPONENT,
                    format!("refresh-{appid}"),
                    now,
                    component
                ])
                .expect("insert an authorizer");
            let id = tx.last_insert_rowid();
            // Spread over the last hour, so that the least time left is one account's.
            let fetched = now - 3600 + (i % 3000) as i64;
            token
                .execute(params![id, format!("token-{i}"), fetched])
                .expect("insert a token");
            attempt
                .execute(params![id, fetched])
                .expect("insert an attempt");
        }
    }
    tx.commit().expect("commit");
    db
}

/// A day's rows for every authorizer, older than what it has: `DAY_ROWS / 2` expired
/// token rows and as many attempts past the 30 days attempts are kept. Returns how many.
fn add_a_day(db: &Path, n: usize) -> usize {
    let now = unix_now();
    let mut conn = Connection::open(db).expect("open the database");
    let tx = conn.transaction().expect("begin");
    let ids: Vec<i64> = {
        let mut stmt = tx
            .prepare("SELECT id FROM accounts WHERE platform_id IS NOT NULL")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let mut added = 0;
    {
        let mut token = tx
            .prepare(
                "INSERT INTO tokens (account_id, kind, token, expires_in, fetched_at, expires_at)
                 VALUES (?1, 'access_token', 'old', 7200, ?2, ?2 + 7200)",
            )
            .unwrap();
        let mut attempt = tx
            .prepare(
                "INSERT INTO attempts (account_id, kind, started_at, duration_ms, tries, outcome)
                 VALUES (?1, 'access_token', ?2, 50, 1, 'ok')",
            )
            .unwrap();
        for id in ids.iter().take(n) {
            for k in 0..DAY_ROWS / 2 {
                token
                    .execute(params![id, now - 86_400 + 7_200 * k as i64 - 20_000])
                    .unwrap();
                attempt
                    .execute(params![id, now - 40 * 86_400 + k as i64])
                    .unwrap();
                added += 2;
            }
        }
    }
    tx.commit().expect("commit");
    added
}

/// Runs `prune --keep 1` while another connection takes and releases the write lock over
/// and over (as refresh's transactions would): how long the prune took, the longest one
/// of those waits, how many there were, and the prune's output.
fn prune_with_a_writer(bin: &Path, db: &Path) -> (Duration, Duration, usize, Output) {
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, db) = (stop.clone(), db.to_path_buf());
        std::thread::spawn(move || {
            let conn = Connection::open(&db).expect("open");
            conn.busy_timeout(Duration::from_secs(600)).unwrap();
            let (mut longest, mut count) = (Duration::ZERO, 0);
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                conn.execute_batch("BEGIN IMMEDIATE; COMMIT")
                    .expect("write lock");
                longest = longest.max(start.elapsed());
                count += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            (longest, count)
        })
    };
    let start = Instant::now();
    let mut cmd = wx(bin, db);
    let out = cmd
        .args(["prune", "--keep", "1"])
        .stdin(Stdio::null())
        .output()
        .expect("spawn");
    let took = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (longest, count) = writer.join().unwrap();
    (took, longest, count, out)
}

fn wx(bin: &Path, db: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .env("HOME", db.parent().unwrap())
        .env("WXTOKEN_DB", db)
        .env("WXTOKEN_KEY_FILE", db.with_extension("key"));
    cmd.stdin(Stdio::null());
    cmd
}

fn run_with_stdin(cmd: &mut Command, input: &str) {
    cmd.arg("-q");
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

/// `status --check` exits 0 to 3 by design; anything else is a failure.
fn check(out: &Output, what: &str) {
    if !matches!(out.status.code(), Some(0..=3)) {
        eprintln!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        std::process::exit(1);
    }
}

/// Wall time, peak RSS in KiB (GNU time, when installed) and the output (stdout dropped:
/// its size is not what is measured).
fn timed(cmd: &mut Command) -> (Duration, Option<u64>, Output) {
    let gnu = Path::new(GNU_TIME).exists();
    let mut run = if gnu {
        let mut t = Command::new(GNU_TIME);
        t.args(["-f", "%M"])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        t
    } else {
        let mut c = Command::new(cmd.get_program());
        c.args(cmd.get_args());
        c
    };
    run.env_clear();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            run.env(k, v);
        }
    }
    run.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let out = run.output().expect("spawn");
    let elapsed = start.elapsed();
    let rss = gnu
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
    let dir = std::env::temp_dir().join(format!("wxtoken-reports-bench-{}", std::process::id()));
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
