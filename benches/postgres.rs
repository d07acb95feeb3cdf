//! What PostgreSQL costs and gives, measured with the real release binary as separate
//! processes (`cargo bench --bench postgres`; not run by CI):
//!
//! 1. `wxtoken get` on PostgreSQL against `psql -c 'select 1'` on the same server, over its
//!    Unix socket (goal: no slower).
//! 2. `wxtoken get` on SQLite, with and without the `postgres` feature, against
//!    `sqlite3 DB 'select 1'`, and both binaries' sizes. Needs the feature-less binary:
//!    `cargo build --release --no-default-features && cp target/release/wxtoken /tmp/wxtoken-nopg`
//!    then `WXTOKEN_NOPG_BIN=/tmp/wxtoken-nopg cargo bench --bench postgres`.
//! 3. Two refreshers (two hosts, `--jobs 16` each) sharing 1,000 due accounts on one
//!    database, against one refresher with `--jobs 32`; 50 ms per WeChat reply. Each run
//!    must make exactly 1,000 fetches between them. `WXTOKEN_PG_OTHER_BIN=/path/to/wxtoken`
//!    runs another build's refreshers too, interleaved with this one's (before/after).
//!
//! Every account's secret is encrypted with a key file in the scratch directory, as a
//! real store's are, so `refresh` opens each one as it would in production.
//!
//! 4. `refresh --if-expiring-within 600` with nothing due, 1,000 accounts, on PostgreSQL
//!    and on SQLite: this build against an earlier one (`WXTOKEN_BEFORE_BIN`), to show what
//!    the pre-filter (one read of every newest row, no claim per account) saves.
//!    `cargo bench --bench postgres -- ahead` runs only this section.
//!
//! Rounds are interleaved (each round runs every side once, the order rotating) and the
//! figures are medians; trust the ratios, not the absolute milliseconds.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wxtoken_standin::{StandIn, TOKEN, pg};

const WXTOKEN: &str = env!("CARGO_BIN_EXE_wxtoken");
const ACCOUNTS: usize = 1000;
const ROUNDS: usize = 200;

/// One side of a comparison: its name and how to start one run of it.
type Side<'a> = (&'a str, Box<dyn Fn() -> Command + 'a>);

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let only_ahead = std::env::args().any(|a| a == "ahead");
    let rounds = if quick { 40 } else { ROUNDS };
    let Some(server) = pg::server() else {
        eprintln!("no PostgreSQL: nothing to measure");
        return;
    };
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("pgbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    KEY_FILE.set(dir.join("wxtoken.key")).unwrap();
    // Run installed copies, as users do (see benches/wxtoken.rs on why that matters).
    let bin = install(&dir, Path::new(WXTOKEN), "wxtoken");
    let nopg =
        std::env::var_os("WXTOKEN_NOPG_BIN").map(|p| install(&dir, Path::new(&p), "wxtoken-nopg"));
    let before = std::env::var_os("WXTOKEN_BEFORE_BIN")
        .map(|p| install(&dir, Path::new(&p), "wxtoken-before"));
    let other = std::env::var_os("WXTOKEN_PG_OTHER_BIN")
        .map(|p| install(&dir, Path::new(&p), "wxtoken-other"));
    let key = dir.join("wxtoken.key");
    let api = StandIn::start();

    let db = server.create_db();
    let t = Instant::now();
    fill(&bin, &db.url, &api, &key);
    println!(
        "PostgreSQL database with {ACCOUNTS} accounts x 100 tokens in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    if only_ahead {
        let lite = dir.join("lite.db");
        copy_to_sqlite(&bin, &db.url, &lite);
        ahead(&bin, before.as_deref(), &db.url, &lite, &api, quick);
        api.shutdown();
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }

    section("1. get on PostgreSQL vs psql -c 'select 1' (same server, Unix socket)");
    let psql = server.bindir.join("psql");
    let appid = appid_of(ACCOUNTS / 2);
    let sides: Vec<Side> = vec![
        (
            "psql -X -c 'select 1' (baseline)",
            Box::new(|| {
                let mut c = Command::new(&psql);
                c.args(["-X", "-A", "-t", "-q", "-h"])
                    .arg(&server.dir)
                    .args(["-U", "postgres", "-d", &db.name, "-c", "select 1"]);
                c
            }),
        ),
        (
            "wxtoken get (PostgreSQL)",
            Box::new(|| {
                let mut c = Command::new(&bin);
                c.env_clear()
                    .env("WXTOKEN_KEY_FILE", key_file())
                    .env("WXTOKEN_DB", &db.url)
                    .args(["get", "--appid", &appid]);
                c
            }),
        ),
    ];
    report(&interleave(&sides, rounds));

    section("2. get on SQLite, with and without the postgres feature");
    let lite = dir.join("lite.db");
    copy_to_sqlite(&bin, &db.url, &lite);
    println!("binary size: with postgres {} bytes", size(&bin));
    let mut sides: Vec<Side> = vec![
        (
            "sqlite3 DB 'select 1' (baseline)",
            Box::new(|| {
                let mut c = Command::new("sqlite3");
                c.arg(&lite).arg("select 1");
                c
            }),
        ),
        (
            "wxtoken get, with postgres",
            Box::new(|| sqlite_get(&bin, &lite, &appid)),
        ),
    ];
    if let Some(nopg) = &nopg {
        println!(
            "binary size: without postgres {} bytes ({:+} bytes with it)",
            size(nopg),
            size(&bin) as i64 - size(nopg) as i64
        );
        sides.push((
            "wxtoken get, without postgres",
            Box::new(|| sqlite_get(nopg, &lite, &appid)),
        ));
    } else {
        println!("(set WXTOKEN_NOPG_BIN to compare with a --no-default-features build)");
    }
    report(&interleave(&sides, rounds));

    section("3. two refreshers sharing 1,000 accounts, 50 ms per reply");
    api.set_latency(Duration::from_millis(50));
    let runs = if quick { 2 } else { 5 };
    let mut builds = vec![("this build", &bin)];
    if let Some(other) = &other {
        builds.push(("WXTOKEN_PG_OTHER_BIN", other));
    }
    // Each side: (build, hosts); one refresher with --jobs 32, or two with --jobs 16.
    let sides: Vec<(usize, usize)> = (0..builds.len()).flat_map(|b| [(b, 1), (b, 2)]).collect();
    let mut times = vec![Vec::new(); sides.len()];
    for round in 0..runs {
        for k in 0..sides.len() {
            let i = (round + k) % sides.len();
            let (b, hosts) = sides[i];
            let exe = builds[b].1;
            // Every refresh fetches every account, unless another run recorded its newest
            // token after this one started (no --force, which would fetch it regardless).
            // Both hosts must have started before either records anything, as two cron
            // runs on one schedule do: the first 32 requests wait at a gate on both sides.
            let before = api.hits(TOKEN);
            api.gate(TOKEN);
            let t = Instant::now();
            let children: Vec<_> = match hosts {
                1 => vec![refresher(exe, &db.url, &api, &key, "host-a", "32")],
                _ => vec![
                    refresher(exe, &db.url, &api, &key, "host-a", "16"),
                    refresher(exe, &db.url, &api, &key, "host-b", "16"),
                ],
            };
            assert!(
                api.wait_for_hits(TOKEN, before + 32, Duration::from_secs(60)),
                "side {i}: the refreshers never got going"
            );
            api.open_gate(TOKEN);
            let ok = children
                .into_iter()
                .all(|mut c| c.wait().is_ok_and(|s| s.success()));
            let took = t.elapsed().as_secs_f64();
            let fetched = api.hits(TOKEN) - before;
            assert!(
                ok && fetched == ACCOUNTS,
                "side {i}: ok {ok}, {fetched} fetches"
            );
            times[i].push(took);
        }
    }
    let ideal = ACCOUNTS as f64 * 0.050 / 32.0;
    let base = median(&times[0]);
    println!(
        "| build | side | median | vs ideal ({ideal:.3} s) | vs this build's one refresher | fetches per run |"
    );
    println!("|---|---|---|---|---|---|");
    for (i, &(b, hosts)) in sides.iter().enumerate() {
        let (side, fetches) = match hosts {
            1 => ("one refresher, --jobs 32", format!("{ACCOUNTS}")),
            _ => (
                "two refreshers (2 hosts), --jobs 16 each",
                format!("{ACCOUNTS} between them"),
            ),
        };
        let m = median(&times[i]);
        println!(
            "| {} | {side} | {m:.3} s | {:.3}x | {:.3}x | {fetches} |",
            builds[b].0,
            m / ideal,
            m / base
        );
    }

    ahead(&bin, before.as_deref(), &db.url, &lite, &api, quick);

    api.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Section 4: a refresh-ahead run that finds nothing due (every newest token has an hour
/// or more left), before and after the pre-filter, on both backends.
fn ahead(bin: &Path, before: Option<&Path>, url: &str, lite: &Path, api: &StandIn, quick: bool) {
    section("4. refresh --if-expiring-within 600, nothing due, 1,000 accounts");
    let Some(before) = before else {
        println!("(set WXTOKEN_BEFORE_BIN to an earlier build to compare)");
        return;
    };
    api.set_latency(Duration::ZERO);
    let fetches = api.hits(TOKEN);
    let rounds = if quick { 4 } else { 15 };
    let lite = lite.display().to_string();
    for (backend, store) in [("PostgreSQL", url), ("SQLite", lite.as_str())] {
        let run = |bin: &Path| {
            let mut c = Command::new(bin);
            c.env_clear()
                .env("WXTOKEN_KEY_FILE", key_file())
                .env("WXTOKEN_DB", store)
                .env("WXTOKEN_API_BASE", api.url())
                .args(["-q", "refresh", "--if-expiring-within", "600"]);
            c
        };
        // Once each first: the first run prunes the history down to what refresh keeps.
        for b in [before, bin] {
            assert!(run(b).status().unwrap().success(), "{backend}: warm-up run");
        }
        let sides: Vec<Side> = vec![
            ("before (claims every account)", Box::new(|| run(before))),
            ("after (one read, no claims)", Box::new(|| run(bin))),
        ];
        println!("\n{backend}:\n");
        report(&interleave(&sides, rounds));
    }
    assert_eq!(
        api.hits(TOKEN),
        fetches,
        "nothing was due, yet something was fetched"
    );
}

fn copy_to_sqlite(bin: &Path, url: &str, lite: &Path) {
    let mut copy = Command::new(bin);
    copy.env_clear()
        .env("WXTOKEN_KEY_FILE", key_file())
        .env("WXTOKEN_DB", url)
        .env("WXTOKEN_COPY_TO", lite)
        .args(["store", "copy"]);
    assert!(copy.status().unwrap().success(), "store copy to SQLite");
}

/// The key file every run of wxtoken uses (created by the first `account add`).
static KEY_FILE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

fn key_file() -> &'static Path {
    KEY_FILE.get().expect("set at the start of main")
}

fn section(title: &str) {
    println!("\n## {title}\n");
}

fn install(dir: &Path, from: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    std::fs::copy(from, &to).expect("copy a binary");
    to
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

fn appid_of(n: usize) -> String {
    format!("wx{n:016}")
}

fn sqlite_get(bin: &Path, db: &Path, appid: &str) -> Command {
    let mut c = Command::new(bin);
    c.env_clear()
        .env("WXTOKEN_KEY_FILE", key_file())
        .env("WXTOKEN_DB", db)
        .args(["get", "--appid", appid]);
    c
}

/// Creates the schema with the binary, then 1,000 accounts with 100 hourly tokens each
/// (the newest valid) in SQL, and has the binary encrypt every secret (`key rotate`), so
/// the store is what a real one is: no secret in plain text.
fn fill(bin: &Path, url: &str, api: &StandIn, key: &Path) {
    let mut add = Command::new(bin);
    add.env_clear()
        .env("WXTOKEN_KEY_FILE", key_file())
        .env("WXTOKEN_DB", url)
        .env("WXTOKEN_KEY_FILE", key)
        .env("WXTOKEN_API_BASE", api.url())
        .args([
            "account",
            "add",
            "--appid",
            &appid_of(0),
            "--secret-env",
            "S",
        ])
        .env("S", "0123456789abcdef0123456789abcdef");
    assert!(add.status().unwrap().success(), "account add");
    let sql = format!(
        "INSERT INTO accounts (appid, created_at, updated_at)
           SELECT 'wx' || lpad(n::text, 16, '0'), 0, 0 FROM generate_series(1, {last}) n;
         INSERT INTO account_secrets (account_id, secret)
           SELECT id, '0123456789abcdef0123456789abcdef' FROM accounts WHERE id NOT IN (SELECT account_id FROM account_secrets);
         INSERT INTO tokens (account_id, token, expires_in, fetched_at, expires_at)
           SELECT a.id, md5(a.id::text || h::text) || md5(h::text), 7200,
                  extract(epoch from now())::bigint - (100 - h) * 3600,
                  extract(epoch from now())::bigint - (100 - h) * 3600 + 7200
           FROM accounts a, generate_series(1, 100) h ORDER BY h, a.id;
         ANALYZE;",
        last = ACCOUNTS - 1
    );
    let server = pg::server().unwrap();
    let name = url.split("///").nth(1).unwrap().split('?').next().unwrap();
    server.psql(name, &sql);
    let mut rotate = Command::new(bin);
    rotate
        .env_clear()
        .env("WXTOKEN_DB", url)
        .env("WXTOKEN_KEY_FILE", key)
        .args(["-q", "key", "rotate"]);
    assert!(rotate.status().unwrap().success(), "key rotate");
    let plain = server.psql(
        name,
        "SELECT count(*) FROM account_secrets WHERE secret NOT LIKE 'wxs1:%'",
    );
    assert_eq!(plain, "0", "every secret is encrypted");
}

fn refresher(
    bin: &Path,
    url: &str,
    api: &StandIn,
    key: &Path,
    host: &str,
    jobs: &str,
) -> std::process::Child {
    Command::new(bin)
        .env_clear()
        .env("WXTOKEN_KEY_FILE", key_file())
        .env("WXTOKEN_DB", url)
        .env("WXTOKEN_KEY_FILE", key)
        .env("WXTOKEN_API_BASE", api.url())
        .env("WXTOKEN_HOST", host)
        .args(["-q", "refresh", "--jobs", jobs])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn refresh")
}

/// Runs every side once per round, rotating the order; returns each side's timings.
fn interleave(sides: &[Side], rounds: usize) -> Vec<(String, Vec<f64>)> {
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); sides.len()];
    for round in 0..rounds {
        for k in 0..sides.len() {
            let i = (round + k) % sides.len();
            let mut cmd = (sides[i].1)();
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let t = Instant::now();
            let out = cmd.output().expect("spawn");
            let took = t.elapsed().as_secs_f64();
            assert!(
                out.status.success(),
                "{}: {}",
                sides[i].0,
                String::from_utf8_lossy(&out.stderr)
            );
            times[i].push(took);
        }
    }
    sides
        .iter()
        .map(|(n, _)| n.to_string())
        .zip(times)
        .collect()
}

fn report(results: &[(String, Vec<f64>)]) {
    let base = median(&results[0].1);
    println!("| side | median | p90 | vs baseline |");
    println!("|---|---|---|---|");
    for (name, t) in results {
        println!(
            "| {name} | {:.2} ms | {:.2} ms | {:.3}x |",
            median(t) * 1e3,
            pct(t, 90.0) * 1e3,
            median(t) / base
        );
    }
}

fn pct(xs: &[f64], p: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = p / 100.0 * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

fn median(xs: &[f64]) -> f64 {
    pct(xs, 50.0)
}
