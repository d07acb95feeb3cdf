//! Benchmarks for wxtoken, run as separate processes of the real release binary:
//!
//! ```text
//! cargo bench --bench wxtoken             # the full run (a few minutes)
//! cargo bench --bench wxtoken -- quick    # fewer repetitions, for a first look
//! cargo bench --bench wxtoken -- get      # section 1 only
//! WXTOKEN_BENCH_OTHER=/path/to/wxtoken cargo bench --bench wxtoken -- get
//!                                         # and another build's get, in the same run
//! ```
//!
//! A benchmark, not a test: it asserts nothing and prints tables. Machines are shared and
//! noisy, so every figure is a ratio against a baseline measured in the same run, with the
//! two sides interleaved (ABAB...) and medians taken. BENCHMARKS.md records the figures.
//!
//! 1. `get` against the C floor: `wxtoken get` vs `sqlite3 DB 'select 1'` on a database of
//!    1,000 accounts x 1,000 token rows, and `get` on 1 row per account vs 1,000.
//! 2. `refresh` against the network's limit: 1,000 accounts, every reply delayed 50 ms,
//!    vs the ideal accounts x 50 ms / jobs, and vs a minimal keep-alive HTTP client run
//!    from this process against the same stand-in.
//! 3. Memory and size: peak RSS of a refresh over 10,000 accounts (GNU time), and the
//!    database after a simulated year of hourly refreshes of 100 accounts with pruning.
//! 4. What a user would write instead: a bash loop of curl + sqlite3 over 100 accounts.

use wxtoken_standin as standin;

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, params};

use standin::StandIn;

/// The release binary as cargo linked it. The bench runs an installed copy of it.
const WXTOKEN: &str = env!("CARGO_BIN_EXE_wxtoken");
/// The copy every measurement runs: see `install`.
static INSTALLED: OnceLock<PathBuf> = OnceLock::new();
const SQLITE3: &str = "/usr/bin/sqlite3";
const GNU_TIME: &str = "/usr/bin/time";
/// Every simulated token: as long as a real one (WeChat's are 130-160 characters).
const TOKEN_LEN: usize = 136;
const LIFETIME: i64 = 7200;
/// The stand-in's delay per reply in sections 2 and 4.
const LATENCY: Duration = Duration::from_millis(50);

/// How many repetitions each section does.
struct Plan {
    quick: bool,
    /// Section 1 only.
    get_only: bool,
    /// Iterations of the interleaved `get` comparison (each runs every side once).
    get_runs: usize,
    /// Interleaved pairs for refresh --jobs 16 and --jobs 64 over 1,000 accounts.
    refresh_runs: usize,
    /// Interleaved rounds of bash loop / --jobs 1 / --jobs 16 over 100 accounts.
    loop_runs: usize,
}

impl Plan {
    fn from_args() -> Plan {
        let quick = std::env::args().skip(1).any(|a| a == "quick");
        Plan {
            quick,
            get_only: std::env::args().skip(1).any(|a| a == "get"),
            get_runs: if quick { 30 } else { 200 },
            refresh_runs: if quick { 3 } else { 7 },
            loop_runs: if quick { 2 } else { 5 },
        }
    }
}

fn main() {
    let plan = Plan::from_args();
    let started = Instant::now();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the bench directory");

    println!(
        "wxtoken benchmarks ({} run)",
        if plan.quick { "quick" } else { "full" }
    );
    install(&dir);
    println!("binary:  {WXTOKEN}, run as an installed copy");
    println!("machine: {}", machine());
    println!("scratch: {}", dir.display());

    let api = StandIn::start();
    get_vs_floor(&plan, &dir);
    if !plan.get_only {
        refresh_vs_ideal(&plan, &dir, &api);
        memory_and_size(&dir, &api);
        user_loop(&plan, &dir, &api);
    }

    api.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "\ntotal bench time: {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------
// 1. get against the C floor

fn get_vs_floor(plan: &Plan, dir: &Path) {
    const ACCOUNTS: usize = 1000;
    section("1. `get` against the C floor");
    let t = Instant::now();
    let big = build_db(dir, "get-1000.db", ACCOUNTS, 1000);
    let small = build_db(dir, "get-1.db", ACCOUNTS, 1);
    println!(
        "databases built in {:.1} s: {} ({}), {} ({})",
        t.elapsed().as_secs_f64(),
        big.file_name().unwrap().to_string_lossy(),
        mib(file_size(&big)),
        small.file_name().unwrap().to_string_lossy(),
        mib(file_size(&small)),
    );

    let query = "SELECT t.id, t.token, t.expires_in, t.fetched_at, t.expires_at, i.started_at, \
                 a.api = 'token' \
                 FROM accounts a JOIN tokens t ON t.account_id = a.id AND t.kind = 'access_token' \
                 LEFT JOIN intents i ON i.account_id = a.id \
                 WHERE a.appid = '{APPID}' AND a.agent = '' ORDER BY t.id DESC LIMIT 1;";
    // Another build (say, the main branch's), copied in like this one, to compare two
    // versions of `get` in one run.
    let other = std::env::var_os("WXTOKEN_BENCH_OTHER").map(|from| {
        let to = dir.join("bin").join("wxtoken-other");
        std::fs::copy(&from, &to).expect("copy WXTOKEN_BENCH_OTHER");
        to
    });
    let mut sides: Vec<(&str, GetSide)> = vec![
        (
            "sqlite3 DB 'select 1' (baseline)",
            Box::new(|_: &str| sqlite3(&big, "select 1")),
        ),
        (
            "wxtoken get, 1,000 rows/account",
            Box::new(|appid: &str| wx_get(&big, appid)),
        ),
        (
            "wxtoken get, 1 row/account",
            Box::new(|appid: &str| wx_get(&small, appid)),
        ),
        (
            "sqlite3 DB <get's query> (reference)",
            Box::new(|appid: &str| sqlite3(&big, &query.replace("{APPID}", appid))),
        ),
        (
            "wxtoken get, 1,000 rows, binary as linked",
            // The same bytes, run from where cargo wrote them (see `install`).
            Box::new(|appid: &str| wx_get_at(Path::new(WXTOKEN), &big, appid)),
        ),
    ];
    if let Some(other) = &other {
        sides.push((
            "WXTOKEN_BENCH_OTHER get, 1,000 rows/account",
            Box::new(|appid: &str| wx_get_at(other, &big, appid)),
        ));
    }

    let warmup = 5;
    let mut times = vec![Vec::new(); sides.len()];
    let mut bad = vec![0usize; sides.len()];
    for i in 0..warmup + plan.get_runs {
        // A different account each round; every side gets the same one.
        let appid = appid_of(1 + (i * 7919) % ACCOUNTS);
        // Rotate the order so that no side always runs first.
        for k in 0..sides.len() {
            let s = (i + k) % sides.len();
            let (elapsed, out) = time_output(&mut (sides[s].1)(&appid));
            if !out.status.success() || out.stdout.is_empty() {
                bad[s] += 1;
            }
            if i >= warmup {
                times[s].push(elapsed);
            }
        }
    }
    let base = median(&times[0]);
    let mut table = Table::new(&["case", "runs", "median", "p25..p75", "ratio", "target"]);
    let targets = ["", "<= 1.0x", "", "", "", ""];
    for (s, (name, _)) in sides.iter().enumerate() {
        let m = median(&times[s]);
        table.row(vec![
            name.to_string(),
            times[s].len().to_string(),
            ms(m),
            format!("{}..{}", ms(pct(&times[s], 25.0)), ms(pct(&times[s], 75.0))),
            ratio(m, base),
            verdict(targets[s], m / base, 1.0),
        ]);
    }
    table.print();
    let flat = median(&times[1]) / median(&times[2]);
    println!(
        "flatness: get with 1,000 rows/account vs 1 row/account = {flat:.3}x (target <= 1.1x: {})",
        met(flat <= 1.1)
    );
    if bad.iter().any(|&b| b > 0) {
        println!("runs that failed or printed no token, per case: {bad:?}");
    }

    // Peak RSS of the one-shot commands, for section 3's table.
    if let Some(kib) = peak_rss(&mut wx_get(&big, &appid_of(500))) {
        println!("peak RSS: wxtoken get {}", kib_mib(kib));
    }
    if let Some(kib) = peak_rss(&mut sqlite3(&big, "select 1")) {
        println!("peak RSS: sqlite3 'select 1' {}", kib_mib(kib));
    }
}

/// Builds the command of one side of the `get` comparison for an appid.
type GetSide<'a> = Box<dyn Fn(&str) -> Command + 'a>;

fn wx_get(db: &Path, appid: &str) -> Command {
    wx_get_at(installed(), db, appid)
}

fn wx_get_at(bin: &Path, db: &Path, appid: &str) -> Command {
    let mut cmd = wx_at(bin, db);
    cmd.args(["get", "--appid", appid]);
    cmd
}

fn sqlite3(db: &Path, sql: &str) -> Command {
    let mut cmd = Command::new(SQLITE3);
    // No ~/.sqliterc, same environment as wxtoken gets.
    cmd.env_clear()
        .env("HOME", db.parent().unwrap())
        .arg(db)
        .arg(sql);
    cmd.stdin(Stdio::null());
    cmd
}

// ---------------------------------------------------------------------------------------
// 2. refresh against the network's limit

fn refresh_vs_ideal(plan: &Plan, dir: &Path, api: &StandIn) {
    const ACCOUNTS: usize = 1000;
    section("2. `refresh` against the network's limit (50 ms per reply)");
    let db = build_db(dir, "refresh.db", ACCOUNTS, 0);
    let appids: Vec<String> = (1..=ACCOUNTS).map(appid_of).collect();
    standin_self_check(api, &appids[..50]);
    api.set_latency(LATENCY);

    let mut table = Table::new(&[
        "case",
        "runs",
        "median",
        "ideal",
        "vs ideal",
        "target",
        "floor client",
        "vs floor",
        "hits ok",
    ]);
    for (jobs, target) in [(16usize, "<= 1.15x"), (64, "")] {
        let mut wx_times = Vec::new();
        let mut floor_times = Vec::new();
        let mut hits_ok = 0;
        // One untimed warm-up of each side: page cache, stand-in threads.
        let _ = run_refresh(&db, api, jobs);
        let _ = floor_fetch(api, &appids, jobs);
        for i in 0..plan.refresh_runs {
            let mut wx_side = || {
                let (t, hits, code) = run_refresh(&db, api, jobs);
                hits_ok += usize::from(hits == ACCOUNTS && code == Some(0));
                wx_times.push(t);
            };
            let mut floor_side = || floor_times.push(floor_fetch(api, &appids, jobs).0);
            if i % 2 == 0 {
                wx_side();
                floor_side();
            } else {
                floor_side();
                wx_side();
            }
        }
        let ideal = ACCOUNTS as f64 * LATENCY.as_secs_f64() / jobs as f64;
        let m = median(&wx_times);
        let f = median(&floor_times);
        table.row(vec![
            format!("refresh --jobs {jobs} --force, {ACCOUNTS} accounts"),
            wx_times.len().to_string(),
            secs(m),
            secs(ideal),
            ratio(m, ideal),
            verdict(target, m / ideal, 1.15),
            secs(f),
            ratio(m, f),
            format!("{hits_ok}/{}", wx_times.len()),
        ]);
    }
    table.print();
    println!(
        "floor client: as many threads as --jobs, in this process, each with one keep-alive \
         connection sending raw HTTP/1.1 GETs of the same URL. \"hits ok\": runs where the \
         stand-in counted exactly one /cgi-bin/token request per account and refresh exited 0."
    );
    println!("refresh --jobs 1 is measured over 100 accounts in section 4.");
}

/// How long the stand-in takes per request on a reused connection with no latency set.
/// Anything above a fraction of a millisecond is added to every figure of sections 2-4.
fn standin_self_check(api: &StandIn, appids: &[String]) {
    api.set_latency(Duration::ZERO);
    let (t, ok) = floor_fetch(api, appids, 1);
    let per = t / appids.len() as f64;
    println!(
        "stand-in self-check: {} per request on one keep-alive connection with latency 0 \
         ({ok}/{} answered)",
        ms(per),
        appids.len()
    );
    if per > 0.005 {
        println!(
            "WARNING: the stand-in adds ~{:.0} ms to every reply on a reused connection, so \
             every keep-alive client pays {:.0} + 50 ms per fetch below. The likely cause: it \
             writes the head and the body of a reply in two writes on a socket without \
             TCP_NODELAY, and Nagle holds the body until the client's delayed ACK (~40 ms). \
             Figures against the 50 ms ideal include it; the floor client shows what any \
             client gets from this stand-in.",
            per * 1000.0,
            per * 1000.0
        );
    }
}

/// One timed `wxtoken -q refresh --jobs N --force`: wall time, stand-in hits, exit code.
fn run_refresh(db: &Path, api: &StandIn, jobs: usize) -> (f64, usize, Option<i32>) {
    let before = api.hits(standin::TOKEN);
    let mut cmd = wx(db);
    cmd.env("WXTOKEN_API_BASE", api.url());
    cmd.args(["-q", "refresh", "--force", "--jobs", &jobs.to_string()]);
    let (t, out) = time_output(&mut cmd);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        println!(
            "refresh exited {:?}: {}",
            out.status.code(),
            first_lines(&err, 3)
        );
    }
    let hits = api.hits(standin::TOKEN) - before;
    (t.as_secs_f64(), hits, out.status.code())
}

/// The floor: fetches one token per appid with `jobs` threads, each on its own keep-alive
/// connection, with the least work an HTTP client can do. Returns (seconds, successes).
fn floor_fetch(api: &StandIn, appids: &[String], jobs: usize) -> (f64, usize) {
    let addr = api.addr();
    let next = AtomicUsize::new(0);
    let ok = AtomicUsize::new(0);
    let t = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(appids.len()) {
            scope.spawn(|| {
                let mut conn: Option<BufReader<TcpStream>> = None;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(appid) = appids.get(i) else { break };
                    // A dropped keep-alive connection gets one reconnect.
                    for _ in 0..2 {
                        if conn.is_none() {
                            conn = connect(addr);
                        }
                        let Some(c) = conn.as_mut() else { break };
                        match get_token_once(c, appid) {
                            Ok(good) => {
                                ok.fetch_add(usize::from(good), Ordering::Relaxed);
                                break;
                            }
                            Err(_) => conn = None,
                        }
                    }
                }
            });
        }
    });
    (t.elapsed().as_secs_f64(), ok.load(Ordering::Relaxed))
}

fn connect(addr: SocketAddr) -> Option<BufReader<TcpStream>> {
    let s = TcpStream::connect(addr).ok()?;
    s.set_nodelay(true).ok()?;
    Some(BufReader::new(s))
}

fn get_token_once(c: &mut BufReader<TcpStream>, appid: &str) -> std::io::Result<bool> {
    let req = format!(
        "GET {}?grant_type=client_credential&appid={appid}&secret={} HTTP/1.1\r\n\
         Host: 127.0.0.1\r\n\r\n",
        standin::TOKEN,
        secret_of(appid)
    );
    c.get_mut().write_all(req.as_bytes())?;
    let mut line = String::new();
    c.read_line(&mut line)?;
    let ok = line.split_whitespace().nth(1) == Some("200");
    let mut len = 0;
    loop {
        line.clear();
        if c.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; len];
    c.read_exact(&mut body)?;
    Ok(ok && body.windows(12).any(|w| w == b"access_token"))
}

// ---------------------------------------------------------------------------------------
// 3. Memory and size

fn memory_and_size(dir: &Path, api: &StandIn) {
    const ACCOUNTS: usize = 10_000;
    section("3. Memory and size");
    if !Path::new(GNU_TIME).exists() {
        println!("{GNU_TIME} is missing (apt-get install -y time): peak RSS not measured");
    } else {
        let db = build_db(dir, "rss.db", ACCOUNTS, 0);
        api.set_latency(Duration::ZERO);
        let mut table = Table::new(&["case", "peak RSS", "wall", "target"]);
        // One run each: peak RSS hardly varies between runs. --jobs 8 is the default.
        for jobs in [8usize, 16, 64] {
            let before = api.hits(standin::TOKEN);
            let mut cmd = wx(&db);
            cmd.env("WXTOKEN_API_BASE", api.url());
            cmd.args(["-q", "refresh", "--force", "--jobs", &jobs.to_string()]);
            let t = Instant::now();
            let kib = peak_rss(&mut cmd).unwrap_or(0);
            let wall = t.elapsed().as_secs_f64();
            let hits = api.hits(standin::TOKEN) - before;
            if hits != ACCOUNTS {
                println!("--jobs {jobs}: the stand-in saw {hits} fetches, not {ACCOUNTS}");
            }
            table.row(vec![
                format!("refresh --jobs {jobs} --force, {ACCOUNTS} accounts, no latency"),
                kib_mib(kib),
                secs(wall),
                verdict("<= 16 MiB", kib as f64 / 1024.0, 16.0),
            ]);
        }
        table.print();
        println!(
            "database after these runs: {}",
            mib(file_size(&db) + file_size(&wal_of(&db)))
        );
    }
    simulated_year(dir);
}

/// A year of hourly refreshes of 100 accounts, a month at a time, with `wxtoken prune`
/// after each month.
fn simulated_year(dir: &Path) {
    const ACCOUNTS: usize = 100;
    const HOURS: i64 = 8760;
    const MONTHS: i64 = 12;
    println!(
        "\nsimulated year: {ACCOUNTS} accounts, one token row and one attempt row per account per hour"
    );
    let db = build_db(dir, "year.db", ACCOUNTS, 0);
    let now = unix_now();
    let mut table = Table::new(&[
        "month",
        "inserted",
        "pruned (tokens, attempts)",
        "prune took",
        "file",
        "+ wal",
    ]);
    let mut id = 0i64;
    for month in 0..MONTHS {
        let (from, to) = (month * HOURS / MONTHS, (month + 1) * HOURS / MONTHS);
        let mut conn = Connection::open(&db).expect("open the year database");
        let tx = conn.transaction().expect("begin");
        {
            let mut token = tx
                .prepare(
                    "INSERT INTO tokens (id, account_id, kind, token, expires_in, fetched_at, expires_at)
                     VALUES (?1, ?2, 'access_token', ?3, ?4, ?5, ?6)",
                )
                .expect("prepare");
            let mut attempt = tx
                .prepare(
                    "INSERT INTO attempts (account_id, kind, started_at, duration_ms, tries, outcome)
                     VALUES (?1, 'access_token', ?2, 52, 1, 'ok')",
                )
                .expect("prepare");
            for hour in from..to {
                // Ending at now: the last hour of the year is the current one.
                let at = now - (HOURS - 1 - hour) * 3600;
                for a in 1..=ACCOUNTS as i64 {
                    id += 1;
                    token
                        .execute(params![id, a, token_text(id), LIFETIME, at, at + LIFETIME])
                        .expect("insert a token");
                    attempt.execute(params![a, at]).expect("insert an attempt");
                }
            }
        }
        tx.commit().expect("commit");
        let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
        drop(conn);
        let mut cmd = wx(&db);
        cmd.arg("prune");
        let (took, out) = time_output(&mut cmd);
        let said = String::from_utf8_lossy(&out.stderr);
        let pruned = said
            .trim()
            .strip_prefix("pruned ")
            .map(|s| s.replace(" token rows and ", ", ").replace(" attempts", ""))
            .unwrap_or_else(|| format!("exit {:?}: {}", out.status.code(), said.trim()));
        table.row(vec![
            (month + 1).to_string(),
            format!(
                "{} + {}",
                (to - from) * ACCOUNTS as i64,
                (to - from) * ACCOUNTS as i64
            ),
            pruned,
            ms(took.as_secs_f64()),
            mib(file_size(&db)),
            mib(file_size(&wal_of(&db))),
        ]);
    }
    table.print();
    let conn = Connection::open(&db).expect("open the year database");
    let one = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap_or(-1) };
    let (tokens, attempts) = (
        one("SELECT count(*) FROM tokens"),
        one("SELECT count(*) FROM attempts"),
    );
    let (pages, free, page_size) = (
        one("PRAGMA page_count"),
        one("PRAGMA freelist_count"),
        one("PRAGMA page_size"),
    );
    let vacuumed = dir.join("year-vacuumed.db");
    let _ = std::fs::remove_file(&vacuumed);
    let _ = conn.execute("VACUUM INTO ?1", params![vacuumed.to_string_lossy()]);
    drop(conn);
    println!(
        "after a year: file {} + wal {} ({} pages of {} B, {} free); {} token rows, {} attempt rows; \
         the same data VACUUMed: {}",
        mib(file_size(&db)),
        mib(file_size(&wal_of(&db))),
        pages,
        page_size,
        free,
        tokens,
        attempts,
        mib(file_size(&vacuumed)),
    );
}

// ---------------------------------------------------------------------------------------
// 4. What a user would write instead

/// The loop a user would write without wxtoken: read the accounts, curl each token,
/// pull it out of the JSON, insert it. Sequential; no attempts, no retries, no claims.
/// It sends the secret as stored (encrypted here; the stand-in checks no secret, since
/// the bench registers none), which costs it the same as a plaintext one would.
const USER_LOOP: &str = r#"#!/usr/bin/env bash
set -u
db=$1 base=$2
sqlite3 -separator ' ' "$db" 'SELECT id, appid, secret FROM accounts WHERE enabled = 1' |
while read -r id appid secret; do
    body=$(curl -fsS "$base/cgi-bin/token?grant_type=client_credential&appid=$appid&secret=$secret") || continue
    if [[ $body =~ \"access_token\":\"([^\"]+)\".*\"expires_in\":([0-9]+) ]]; then
        now=$(date +%s)
        sqlite3 "$db" "INSERT INTO tokens (account_id, token, expires_in, fetched_at, expires_at)
                       VALUES ($id, '${BASH_REMATCH[1]}', ${BASH_REMATCH[2]}, $now, $now + ${BASH_REMATCH[2]})"
    fi
done
"#;

fn user_loop(plan: &Plan, dir: &Path, api: &StandIn) {
    const ACCOUNTS: usize = 100;
    section(
        "4. What a user would write instead: bash + curl + sqlite3, 100 accounts, 50 ms per reply",
    );
    let db = build_db(dir, "loop.db", ACCOUNTS, 0);
    let script = dir.join("user-loop.sh");
    std::fs::write(&script, USER_LOOP).expect("write the user loop");
    api.set_latency(LATENCY);

    let bash = || {
        let mut cmd = Command::new("bash");
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", dir)
            .arg(&script)
            .arg(&db)
            .arg(api.url());
        cmd.stdin(Stdio::null());
        cmd
    };
    let refresh = |jobs: usize| {
        let mut cmd = wx(&db);
        cmd.env("WXTOKEN_API_BASE", api.url());
        cmd.args(["-q", "refresh", "--force", "--jobs", &jobs.to_string()]);
        cmd
    };
    let sides: Vec<(String, Box<dyn Fn() -> Command>)> = vec![
        (
            "bash loop: curl + sqlite3 (baseline)".into(),
            Box::new(bash),
        ),
        (
            "wxtoken refresh --jobs 1 --force".into(),
            Box::new(move || refresh(1)),
        ),
        (
            "wxtoken refresh --jobs 16 --force".into(),
            Box::new(move || refresh(16)),
        ),
    ];
    let ideals = [None, Some(1usize), Some(16)];
    let mut times = vec![Vec::new(); sides.len()];
    let mut hits_ok = vec![0usize; sides.len()];
    for i in 0..plan.loop_runs {
        for k in 0..sides.len() {
            let s = (i + k) % sides.len();
            let before = api.hits(standin::TOKEN);
            let (t, out) = time_output(&mut (sides[s].1)());
            let hits = api.hits(standin::TOKEN) - before;
            hits_ok[s] += usize::from(hits == ACCOUNTS && out.status.success());
            times[s].push(t);
        }
    }
    let base = median(&times[0]);
    let mut table = Table::new(&[
        "case",
        "runs",
        "median",
        "vs bash loop",
        "ideal",
        "vs ideal",
        "hits ok",
    ]);
    for (s, (name, _)) in sides.iter().enumerate() {
        let m = median(&times[s]);
        let (ideal, vs_ideal) = match ideals[s] {
            Some(jobs) => {
                let ideal = ACCOUNTS as f64 * LATENCY.as_secs_f64() / jobs as f64;
                (secs(ideal), ratio(m, ideal))
            }
            None => (String::new(), String::new()),
        };
        table.row(vec![
            name.clone(),
            times[s].len().to_string(),
            secs(m),
            ratio(m, base),
            ideal,
            vs_ideal,
            format!("{}/{}", hits_ok[s], times[s].len()),
        ]);
    }
    table.print();
    println!(
        "speed-up of wxtoken over the bash loop: --jobs 1 {:.2}x, --jobs 16 {:.2}x",
        base / median(&times[1]),
        base / median(&times[2])
    );
}

// ---------------------------------------------------------------------------------------
// Databases

fn appid_of(n: usize) -> String {
    format!("wxbench{n:010}")
}

fn secret_of(appid: &str) -> String {
    format!("secret-{appid}")
}

/// A token-like string of TOKEN_LEN characters, unique per `n`.
fn token_text(n: i64) -> String {
    const FILL: &str = "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC2eF4hJ6kL8nP0rS2uV4xY6zA8cD0fG2iM4oR6tU8wX0";
    let mut s = format!("{n:012}_AT_");
    while s.len() < TOKEN_LEN {
        let take = (TOKEN_LEN - s.len()).min(FILL.len());
        s.push_str(&FILL[..take]);
    }
    s
}

/// Builds a database the way wxtoken would have it: the binary creates it and applies its
/// migrations (adding the first account, secret on stdin), then the other accounts and
/// `tokens_per` token rows per account are inserted in one transaction, hour by hour and
/// account by account as hourly refreshes would have, the newest fetched now; finally
/// `wxtoken key rotate` encrypts every secret, as they are in a real store.
fn build_db(dir: &Path, name: &str, accounts: usize, tokens_per: usize) -> PathBuf {
    let db = dir.join(name);
    for f in [db.clone(), wal_of(&db), dir.join(format!("{name}-shm"))] {
        let _ = std::fs::remove_file(f);
    }
    let first = appid_of(1);
    let mut add = wx(&db);
    add.args(["account", "add", "--appid", &first]);
    add.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = add.spawn().expect("run wxtoken account add");
    let secret = format!("{}\n", secret_of(&first));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(secret.as_bytes())
        .expect("write the secret");
    let out = child
        .wait_with_output()
        .expect("wait for wxtoken account add");
    if !out.status.success() {
        eprintln!(
            "wxtoken account add failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::process::exit(1);
    }

    let now = unix_now();
    let mut conn = Connection::open(&db).expect("open the database");
    conn.execute_batch("PRAGMA cache_size = -262144")
        .expect("cache_size");
    let tx = conn.transaction().expect("begin");
    {
        let mut account = tx
            .prepare(
                "INSERT INTO accounts (id, appid, agent, api, secret, enabled, created_at, updated_at)
                 VALUES (?1, ?2, '', 'token', ?3, 1, ?4, ?4)",
            )
            .expect("prepare");
        for n in 2..=accounts {
            let appid = appid_of(n);
            account
                .execute(params![n as i64, appid, secret_of(&appid), now])
                .expect("insert an account");
        }
        let mut token = tx
            .prepare(
                "INSERT INTO tokens (id, account_id, kind, token, expires_in, fetched_at, expires_at)
                 VALUES (?1, ?2, 'access_token', ?3, ?4, ?5, ?6)",
            )
            .expect("prepare");
        let mut id = 0i64;
        for hour in 0..tokens_per {
            let at = now - (tokens_per - 1 - hour) as i64 * 3600;
            for a in 1..=accounts as i64 {
                id += 1;
                token
                    .execute(params![id, a, token_text(id), LIFETIME, at, at + LIFETIME])
                    .expect("insert a token");
            }
        }
    }
    tx.commit().expect("commit");
    // Real stores hold no secret in plain text: the binary encrypts every one with the
    // key file the first `account add` created (in HOME, which every run here shares).
    let mut rotate = wx(&db);
    rotate.args(["-q", "key", "rotate"]);
    let out = rotate.output().expect("run wxtoken key rotate");
    let plain: i64 = conn
        .query_row(
            "SELECT count(*) FROM accounts WHERE secret NOT LIKE 'wxs1:%'",
            [],
            |r| r.get(0),
        )
        .expect("count plaintext secrets");
    if !out.status.success() || plain != 0 {
        eprintln!(
            "wxtoken key rotate left {plain} secret(s) in plain text: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::process::exit(1);
    }
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .expect("checkpoint");
    db
}

fn wal_of(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

// ---------------------------------------------------------------------------------------
// Processes and measurement

/// The binary with a clean environment and the database named by WXTOKEN_DB.
fn wx(db: &Path) -> Command {
    wx_at(installed(), db)
}

fn installed() -> &'static Path {
    INSTALLED.get().map_or(Path::new(WXTOKEN), PathBuf::as_path)
}

fn wx_at(bin: &Path, db: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .env("HOME", db.parent().unwrap())
        .env("WXTOKEN_DB", db);
    cmd.stdin(Stdio::null());
    cmd
}

/// Copies the binary into the scratch directory, as `install -m 755` or `cargo install`
/// would, and runs that copy from then on. A file fresh from the linker can be measurably
/// slower to start than the same bytes copied (on this machine's kernel, ~0.3 ms per exec:
/// the linker's page-cache pages map less efficiently), and users run an installed copy;
/// /usr/bin/sqlite3, the baseline, is an installed file too. Section 1 shows both.
fn install(dir: &Path) {
    let to = dir.join("bin").join("wxtoken");
    std::fs::create_dir_all(to.parent().unwrap()).expect("create the bin directory");
    std::fs::copy(WXTOKEN, &to).expect("copy the wxtoken binary");
    let _ = INSTALLED.set(to);
}

/// Runs to completion, collecting stdout and stderr; the wall time includes spawning.
fn time_output(cmd: &mut Command) -> (Duration, Output) {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let t = Instant::now();
    let out = cmd.output().expect("spawn a benchmark process");
    (t.elapsed(), out)
}

/// Peak RSS in KiB of `cmd`, measured by GNU time (`-f %M`, the last line of stderr).
fn peak_rss(cmd: &mut Command) -> Option<u64> {
    if !Path::new(GNU_TIME).exists() {
        return None;
    }
    let mut timed = Command::new(GNU_TIME);
    timed
        .args(["-f", "%M"])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    timed.env_clear();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            timed.env(k, v);
        }
    }
    let (_, out) = time_output(&mut timed);
    let err = String::from_utf8_lossy(&out.stderr);
    err.lines().last()?.trim().parse().ok()
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU".to_string(), |(_, m)| m.trim().to_string());
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let sqlite = Command::new(SQLITE3)
        .arg("--version")
        .output()
        .map(|o| {
            let v = String::from_utf8_lossy(&o.stdout);
            v.split_whitespace().next().unwrap_or("?").to_string()
        })
        .unwrap_or_else(|_| "missing".to_string());
    format!(
        "nproc {nproc}, {:.1} GiB memory, CPU {model}; sqlite3 CLI {sqlite}",
        mem_kib as f64 / 1024.0 / 1024.0
    )
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

// ---------------------------------------------------------------------------------------
// Statistics and output

trait Seconds {
    fn seconds(&self) -> f64;
}

impl Seconds for Duration {
    fn seconds(&self) -> f64 {
        self.as_secs_f64()
    }
}

impl Seconds for f64 {
    fn seconds(&self) -> f64 {
        *self
    }
}

/// The p-th percentile (nearest rank on the sorted values, interpolated), in seconds.
fn pct<T: Seconds>(xs: &[T], p: f64) -> f64 {
    let mut v: Vec<f64> = xs.iter().map(Seconds::seconds).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let pos = p / 100.0 * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

fn median<T: Seconds>(xs: &[T]) -> f64 {
    pct(xs, 50.0)
}

fn ms(s: f64) -> String {
    format!("{:.2} ms", s * 1000.0)
}

fn secs(s: f64) -> String {
    format!("{s:.3} s")
}

fn ratio(a: f64, b: f64) -> String {
    format!("{:.3}x", a / b)
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / 1024.0 / 1024.0)
}

fn kib_mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

/// "<= 1.0x met" when there is a target, else nothing.
fn verdict(target: &str, value: f64, limit: f64) -> String {
    if target.is_empty() {
        String::new()
    } else {
        format!("{target} {}", met(value <= limit))
    }
}

fn first_lines(text: &str, n: usize) -> String {
    text.lines().take(n).collect::<Vec<_>>().join(" | ")
}

fn section(title: &str) {
    println!("\n== {title} ==");
}

/// A plain-text table that is also valid Markdown.
struct Table {
    head: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(head: &[&str]) -> Table {
        Table {
            head: head.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn print(&self) {
        let mut width: Vec<usize> = self.head.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (w, c) in width.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::from("|");
            for (c, w) in cells.iter().zip(&width) {
                let _ = write!(s, " {c}{} |", " ".repeat(w - c.chars().count()));
            }
            s
        };
        println!("{}", line(&self.head));
        let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
        println!("{}", line(&rule));
        for row in &self.rows {
            println!("{}", line(row));
        }
    }
}
