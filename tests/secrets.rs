//! Secrets at rest and readers in a group: the key file, what needs it, migrating
//! plaintext databases, key rotation, and a reader running as another user.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::standin::TOKEN;
use support::{Out, TestEnv, add, add_with, assert_has, wait};

const APPID: &str = "wx1111111111111111";
const OTHER: &str = "wx2222222222222222";
const SECRET: &str = "f1e2d3c4b5a6978800112233445566aa";
const OTHER_SECRET: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f9";

/// The stored (sealed) secret of an account. PostgreSQL keeps secrets in a table of their
/// own, which a reader role is never granted.
fn stored_secret(env: &TestEnv, appid: &str) -> String {
    env.query(&format!(
        "SELECT s.secret FROM {} WHERE a.appid = '{appid}'",
        secrets_from(env)
    ))
}

/// A FROM clause with the accounts as `a` and their secrets in `s.secret`.
fn secrets_from(env: &TestEnv) -> &'static str {
    if env.is_postgres() {
        "accounts a JOIN account_secrets s ON s.account_id = a.id"
    } else {
        "accounts a JOIN accounts s ON s.id = a.id"
    }
}

fn account_id(env: &TestEnv, appid: &str) -> i64 {
    env.query_i64(&format!("SELECT id FROM accounts WHERE appid = '{appid}'"))
}

fn token_rows(env: &TestEnv) -> i64 {
    env.query_i64("SELECT count(*) FROM tokens")
}

/// The database and its -wal and -shm, as they are on disk now.
fn files(db: &Path) -> Vec<PathBuf> {
    ["", "-wal", "-shm"]
        .iter()
        .map(|s| PathBuf::from(format!("{}{s}", db.display())))
        .collect()
}

/// The files the store keeps on disk: the SQLite database, its -wal and its -shm; on
/// PostgreSQL, after a checkpoint, the directory of the test's database and the
/// write-ahead log (which the other tests' databases on the server share).
fn store_files(env: &TestEnv) -> Vec<PathBuf> {
    let Some(db) = &env.pg else {
        return files(&env.db());
    };
    db.query("CHECKPOINT");
    let oid = db.query("SELECT oid FROM pg_database WHERE datname = current_database()");
    let data = db.server.dir.join("data");
    let mut found = Vec::new();
    for dir in [data.join("base").join(oid), data.join("pg_wal")] {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_file() {
                found.push(path);
            }
        }
    }
    assert!(found.len() > 2, "no files of the database: {found:?}");
    found
}

/// Which of `needles` occur in the store's files, byte for byte. grep(1) reads the tens of
/// MB of a PostgreSQL database and its log in a blink; a debug build of a byte loop would not.
fn found_in_files(env: &TestEnv, needles: &[&str]) -> Vec<String> {
    let files: Vec<PathBuf> = store_files(env)
        .into_iter()
        .filter(|f| f.exists())
        .collect();
    let mut found = Vec::new();
    for needle in needles {
        let out = Command::new("grep")
            .args(["-l", "-a", "-F", "-e", needle, "--"])
            .args(&files)
            .output()
            .expect("run grep");
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "grep failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for file in String::from_utf8_lossy(&out.stdout).lines() {
            found.push(format!("{needle} in {file}"));
        }
    }
    found
}

#[track_caller]
fn assert_nowhere(env: &TestEnv, needles: &[&str]) {
    let found = found_in_files(env, needles);
    assert!(found.is_empty(), "left behind in the files: {found:?}");
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn stored_secrets_never_reach_the_files_in_plain_text() {
    let env = TestEnv::new();
    env.api.register(APPID, SECRET);
    env.api.register(OTHER, OTHER_SECRET);
    let out = add(&env, &["--appid", APPID], SECRET);
    // The first secret creates the key file, and says so once, with a backup reminder.
    assert!(
        out.stderr.contains("created the key file"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("Back it up"), "{}", out.stderr);
    assert_eq!(mode(&env.key_file()), 0o600);
    let again = add(&env, &["--appid", OTHER], OTHER_SECRET);
    assert!(!again.stderr.contains("key file"), "{}", again.stderr);
    assert_nowhere(&env, &[SECRET, OTHER_SECRET]);
    let stored = stored_secret(&env, APPID);
    assert!(
        stored.starts_with(&format!("wxs1:{}:", env.kid())),
        "{stored}"
    );
    // The search can fail: it finds what is stored.
    assert!(!found_in_files(&env, &[&stored[stored.len() - 48..]]).is_empty());

    // The stand-in accepts only the real secret: refresh opened it.
    env.run(&["refresh", "--appid", APPID]).assert_code(0);
    assert_eq!(env.api.requests()[0].query["secret"], SECRET);

    let replaced = "99887766554433221100ffeeddccbbaa";
    env.api.register(APPID, replaced);
    env.run_with_stdin(
        &["account", "set-secret", "--appid", APPID],
        &format!("{replaced}\n"),
    )
    .assert_code(0);
    assert_nowhere(&env, &[SECRET, OTHER_SECRET, replaced]);
    // SQLite: the replaced ciphertext is zeroed too, not left in its page's free space.
    // PostgreSQL keeps it in the write-ahead log whatever wxtoken does (a server's
    // business, and only ciphertext).
    let scrubbed = !env.is_postgres();
    if scrubbed {
        assert_nowhere(&env, &[&stored[stored.len() - 48..]]);
    }
    env.run(&["refresh", "--force", "--appid", APPID])
        .assert_code(0);
    assert_eq!(env.api.requests().last().unwrap().query["secret"], replaced);
    // So is the one of a removed account.
    let other = stored_secret(&env, OTHER);
    env.run(&["account", "remove", "--appid", OTHER])
        .assert_code(0);
    if scrubbed {
        assert_nowhere(&env, &[&other[other.len() - 48..]]);
    }
}

#[test]
fn plaintext_secrets_of_an_older_version_are_encrypted_and_scrubbed() {
    let env = TestEnv::new();
    add(&env, &["--appid", APPID], SECRET);
    let gone = "5555aaaa5555aaaa5555aaaa5555aaaa";
    let old = "6666bbbb6666bbbb6666bbbb6666bbbb";
    // What an earlier version leaves: plaintext secrets, a replaced one in a page's free
    // space, removed accounts' ones on free pages, and pages in the -wal. Keep this connection open
    // so that its -wal stays.
    let conn = env.open_db();
    conn.execute_batch(&format!(
        "PRAGMA secure_delete = OFF;
         PRAGMA wal_autocheckpoint = 0;
         UPDATE accounts SET secret = '{old}';
         UPDATE accounts SET secret = '{SECRET}';
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
         INSERT INTO accounts (appid, secret, created_at, updated_at)
         SELECT 'wxgone' || i, '{gone}', 0, 0 FROM n;
         DELETE FROM accounts WHERE appid LIKE 'wxgone%';
         INSERT INTO accounts (appid, secret, created_at, updated_at) VALUES ('{OTHER}', '{OTHER_SECRET}', 0, 0);"
    ))
    .expect("write plaintext like an older version");
    std::fs::remove_file(env.key_file()).expect("no key yet, as before the upgrade");
    // The test can fail: the plaintext is there before the upgrade.
    assert!(!found_in_files(&env, &[SECRET, old, gone]).is_empty());

    // status, list and prune do not need the key, and leave the secrets alone.
    for args in [&["status"][..], &["account", "list"], &["prune"]] {
        env.run(args).assert_code(0);
    }
    assert!(!env.key_file().exists());

    env.api.register(APPID, SECRET);
    env.api.register(OTHER, OTHER_SECRET);
    let out = env.run(&["refresh"]);
    out.assert_code(0);
    assert!(
        out.stderr.contains("created the key file"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("encrypted 2 secret(s)"),
        "{}",
        out.stderr
    );
    assert_nowhere(&env, &[SECRET, OTHER_SECRET, old, gone]);
    let plain = env.query_i64("SELECT count(*) FROM accounts WHERE secret NOT LIKE 'wxs1:%'");
    assert_eq!(plain, 0);
    let mut sent: Vec<String> = env
        .api
        .requests()
        .iter()
        .map(|r| r.query["secret"].clone())
        .collect();
    sent.sort();
    assert_eq!(sent, [OTHER_SECRET, SECRET]);
    drop(conn);
    assert_nowhere(&env, &[SECRET, OTHER_SECRET, old, gone]);
    // Once encrypted, the next run has nothing to migrate.
    let out = env.run(&["refresh", "--force"]);
    out.assert_code(0);
    assert!(!out.stderr.contains("encrypted"), "{}", out.stderr);
}

#[test]
fn a_ciphertext_moved_to_another_account_does_not_open() {
    let env = TestEnv::new();
    add(&env, &["--appid", APPID], SECRET);
    add(&env, &["--appid", OTHER], OTHER_SECRET);
    let copied = stored_secret(&env, APPID);
    let other = account_id(&env, OTHER);
    env.execute(&if env.is_postgres() {
        format!("UPDATE account_secrets SET secret = '{copied}' WHERE account_id = {other}")
    } else {
        format!("UPDATE accounts SET secret = '{copied}' WHERE id = {other}")
    });
    env.api.register(APPID, SECRET);
    env.api.register(OTHER, OTHER_SECRET);
    let key_file = env.key_file().display().to_string();
    // The secret that does not open holds its own account, not the others.
    let out = env.run(&["refresh"]);
    out.assert_code(7);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.stderr);
    assert_has(
        lines[0],
        &[OTHER, &key_file, "does not open", "account set-secret"],
    );
    assert_has(lines[1], &["refreshed 1 of 2", &format!("{OTHER}(key)")]);
    let fetched: Vec<String> = env
        .api
        .requests()
        .iter()
        .map(|r| format!("{:?} {}", r.query, r.body))
        .collect();
    assert_eq!(fetched.len(), 1, "{fetched:?}");
    assert!(fetched[0].contains(APPID), "{fetched:?}");
    assert_eq!(token_rows(&env), 1);
    let other_attempts = format!(
        "SELECT count(*) FROM attempts WHERE account_id = {}",
        account_id(&env, OTHER)
    );
    assert_eq!(env.query_i64(&other_attempts), 0);
    let out = env.run(&["refresh", "--force", "--json"]);
    out.assert_code(7);
    let lines: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let outcome = |i: usize, field: &str| lines[i][field].as_str().unwrap_or_default().to_string();
    assert_eq!(
        (
            outcome(0, "outcome"),
            outcome(1, "appid"),
            outcome(1, "outcome")
        ),
        ("refreshed".into(), OTHER.into(), "held".into()),
        "{}",
        out.stdout
    );
    assert_has(&outcome(1, "error"), &["does not open", "set-secret"]);
    assert_eq!(lines[2]["exit_code"], 7, "{}", out.stdout);
    let out = env.run(&["get", "--appid", OTHER, "--reject", "old"]);
    out.assert_one_line_error(7)
        .assert_stderr_has(&[&key_file, OTHER]);
    // A key file that is not the one that encrypted the stored secrets seals nothing.
    let stranger = TestEnv::new();
    add(&stranger, &["--appid", APPID], SECRET);
    let wrong = stranger.key_file().display().to_string();
    let out = env.run_with_stdin(
        &[
            "--key-file",
            &wrong,
            "account",
            "add",
            "--appid",
            "wx3333333333333333",
        ],
        "s3\n",
    );
    out.assert_one_line_error(7)
        .assert_stderr_has(&[&wrong, "does not open"]);
    // The key file that opens the others seals a new one.
    env.api.register("wx3333333333333333", "s3");
    add(&env, &["--appid", "wx3333333333333333"], "s3");
    // The account itself is mended by setting its secret again.
    env.run_with_stdin(
        &["account", "set-secret", "--appid", OTHER],
        &format!("{OTHER_SECRET}\n"),
    )
    .assert_code(0);
    let out = env.run(&["refresh"]);
    out.assert_code(0);
    assert!(!out.stderr.contains("failed"), "{}", out.stderr);
}

#[test]
fn without_the_key_refresh_fails_and_changes_nothing_while_get_works() {
    let env = TestEnv::new();
    add(&env, &["--appid", APPID], SECRET);
    env.run(&["refresh"]).assert_code(0);
    let key = std::fs::read(env.key_file()).expect("key");
    std::fs::remove_file(env.key_file()).expect("lose the key");
    let before = (
        token_rows(&env),
        env.query_i64("SELECT count(*) FROM attempts"),
    );

    let key_file = env.key_file().display().to_string();
    let out = env.run(&["refresh", "--force"]);
    out.assert_one_line_error(7)
        .assert_stderr_has(&[&key_file, APPID, "does not exist", "backup"]);
    assert!(
        !env.key_file().exists(),
        "never a new key once a secret is encrypted"
    );
    let out = add_with(&env, &["--appid", OTHER], "s\n", 7);
    out.assert_one_line_error(7).assert_stderr_has(&[&key_file]);
    assert!(!env.key_file().exists());
    assert_eq!(
        (
            token_rows(&env),
            env.query_i64("SELECT count(*) FROM attempts")
        ),
        before
    );
    assert_eq!(env.api.requests().len(), 1);

    // Plain get, status, list and prune never read the key.
    let got = env.run(&["get", "--appid", APPID]);
    got.assert_code(0);
    assert!(!got.stdout.trim().is_empty());
    for args in [&["status"][..], &["account", "list"], &["prune"]] {
        env.run(args).assert_code(0);
    }

    // A wrong key file (another key): the same exit code, and it names the key id.
    let other = TestEnv::new();
    add(&other, &["--appid", APPID], SECRET);
    std::fs::copy(other.key_file(), env.key_file()).expect("wrong key");
    let out = env.run(&["refresh", "--force"]);
    out.assert_one_line_error(7)
        .assert_stderr_has(&[&key_file, APPID, "does not open"]);

    std::fs::write(env.key_file(), key).expect("restore the key");
    env.run(&["refresh", "--force"]).assert_code(0);
}

#[test]
fn unsafe_key_files_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new();
    add(&env, &["--appid", APPID], SECRET);
    let key_file = env.key_file();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = env.run(&["refresh"]);
    out.assert_one_line_error(7)
        .assert_stderr_has(&[&key_file.display().to_string(), "mode 0640"]);
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    env.run(&["refresh"]).assert_code(0);

    if support_uid() == 0 {
        std::os::unix::fs::chown(&key_file, Some(64_321), None).unwrap();
        let out = env.run(&["refresh", "--force"]);
        out.assert_one_line_error(7)
            .assert_stderr_has(&["belongs to uid 64321"]);
    } else {
        eprintln!("note: not root; the key-owner check is not exercised");
    }
    std::fs::write(&key_file, "not a key\n").unwrap();
    std::os::unix::fs::chown(&key_file, Some(support_uid()), None).unwrap();
    let out = env.run(&["refresh", "--force"]);
    out.assert_one_line_error(7)
        .assert_stderr_has(&["not a wxtoken key file"]);
}

fn support_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid())
}

#[test]
fn the_key_file_is_found_in_the_documented_order() {
    let env = TestEnv::new();
    let home = env.dir.join("home");
    std::fs::create_dir(&home).unwrap();
    env.unset_env("WXTOKEN_KEY_FILE");
    env.set_env("HOME", home.to_str().unwrap());
    add(&env, &["--appid", APPID], SECRET);
    let home_key = home.join(".config/wxtoken/key");
    assert_eq!(mode(&home_key), 0o600);
    assert_eq!(mode(home_key.parent().unwrap()), 0o700);

    // $CREDENTIALS_DIRECTORY/wxtoken.key comes before HOME's.
    let creds = env.dir.join("creds");
    std::fs::create_dir(&creds).unwrap();
    std::fs::rename(&home_key, creds.join("wxtoken.key")).unwrap();
    env.set_env("CREDENTIALS_DIRECTORY", creds.to_str().unwrap());
    env.run(&["refresh"]).assert_code(0);
    assert!(!home_key.exists(), "no new key in HOME");
    // WXTOKEN_KEY_FILE before that, and --key-file before the variable.
    let named = env.dir.join("named.key");
    std::fs::rename(creds.join("wxtoken.key"), &named).unwrap();
    env.set_env("WXTOKEN_KEY_FILE", named.to_str().unwrap());
    env.run(&["refresh", "--force"]).assert_code(0);
    env.set_env("WXTOKEN_KEY_FILE", "/nonexistent/key");
    let flag = named.to_str().unwrap();
    env.run(&["--key-file", flag, "refresh", "--force"])
        .assert_code(0);
    // A key in $CREDENTIALS_DIRECTORY is never created by wxtoken.
    env.unset_env("WXTOKEN_KEY_FILE");
    let fresh = TestEnv::new();
    fresh.unset_env("WXTOKEN_KEY_FILE");
    fresh.set_env("CREDENTIALS_DIRECTORY", creds.to_str().unwrap());
    let out = add_with(&fresh, &["--appid", APPID], "s\n", 7);
    out.assert_one_line_error(7)
        .assert_stderr_has(&["LoadCredential"]);
}

/// The ids of the keys in a key file, in order.
fn kids(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

fn old_key_file(env: &TestEnv) -> PathBuf {
    PathBuf::from(format!("{}.old", env.key_file().display()))
}

#[test]
fn key_rotate_reencrypts_every_secret_and_keeps_the_old_key() {
    let env = TestEnv::new();
    env.api.register(APPID, SECRET);
    env.api.register(OTHER, OTHER_SECRET);
    add(&env, &["--appid", APPID], SECRET);
    add(&env, &["--appid", OTHER], OTHER_SECRET);
    let first = env.kid();
    let out = env.run(&["key", "rotate"]);
    out.assert_code(0);
    let second = env.kid();
    assert_ne!(first, second);
    assert!(out.stderr.contains(&second), "{}", out.stderr);
    assert_eq!(kids(&env.key_file()), vec![second.clone()]);
    assert_eq!(kids(&old_key_file(&env)), vec![first.clone()]);
    assert_eq!(mode(&old_key_file(&env)), 0o600);
    assert_eq!(mode(&env.key_file()), 0o600);
    let under_new = env.query_i64(&format!(
        "SELECT count(*) FROM {} WHERE s.secret LIKE 'wxs1:{second}:%'",
        secrets_from(&env)
    ));
    assert_eq!(under_new, 2);
    assert_nowhere(&env, &[SECRET, OTHER_SECRET]);
    env.run(&["refresh"]).assert_code(0);
    assert_eq!(token_rows(&env), 2);
    // The old key alone no longer opens the database.
    let old = old_key_file(&env);
    let out = env.run(&["--key-file", old.to_str().unwrap(), "refresh", "--force"]);
    out.assert_one_line_error(7)
        .assert_stderr_has(&["does not open", &second]);
}

#[test]
fn an_interrupted_rotation_leaves_a_database_the_key_file_opens() {
    let env = TestEnv::new();
    env.api.register(APPID, SECRET);
    add(&env, &["--appid", APPID], SECRET);
    let first = env.kid();
    // Hold what rotate needs after it wrote the new key beside the old one, and kill it
    // there. PostgreSQL: the rows of the secrets, before re-encrypting them. SQLite:
    // rotate holds the write lock from before it reads the key file until it has
    // re-encrypted every secret, then waits for the readers to let it truncate the -wal
    // (so that no old copy stays there); a reader's snapshot holds it at that point.
    let mut session = env.pg.as_ref().map(|db| db.session());
    let conn = match &mut session {
        Some(session) => {
            session.run("BEGIN; SELECT account_id FROM account_secrets FOR UPDATE;");
            None
        }
        None => {
            let conn = env.open_db();
            conn.execute_batch("BEGIN; SELECT count(*) FROM accounts;")
                .expect("a read snapshot");
            Some(conn)
        }
    };
    let mut child = env.spawn(&["key", "rotate"]);
    let key_file = env.key_file();
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    while kids(&key_file).len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "rotate never wrote the new key"
        );
        std::thread::yield_now();
    }
    child.kill().expect("kill rotate");
    let killed = wait(child);
    assert_eq!(killed.code, -1, "{killed:?}");
    match (conn, &mut session) {
        (Some(conn), _) => conn.execute_batch("ROLLBACK").expect("release"),
        (None, Some(session)) => {
            session.run("ROLLBACK;");
        }
        (None, None) => unreachable!(),
    }
    let both = kids(&key_file);
    assert_eq!(both.len(), 2);
    assert_eq!(both[1], first);
    // The database is still under the old key, which the key file still holds.
    env.run(&["refresh"]).assert_code(0);
    // Rotating again finishes the job.
    env.run(&["key", "rotate"]).assert_code(0);
    assert_eq!(kids(&key_file).len(), 1);
    env.run(&["refresh", "--force"]).assert_code(0);
    assert_eq!(env.api.requests().len(), 2);
}
#[test]
fn key_reset_after_losing_the_key_keeps_tokens_and_takes_new_secrets() {
    let env = TestEnv::new();
    add(&env, &["--appid", APPID], SECRET);
    env.run(&["refresh"]).assert_code(0);
    let out = env.run(&["key", "reset"]);
    out.assert_one_line_error(2).assert_stderr_has(&["--yes"]);
    let out = env.run(&["key", "reset", "--yes"]);
    out.assert_one_line_error(7).assert_stderr_has(&["exists"]);
    std::fs::remove_file(env.key_file()).unwrap();
    let out = env.run(&["key", "reset", "--yes"]);
    out.assert_code(0);
    assert!(
        out.stderr
            .contains("forgot the encrypted secrets of 1 account(s)"),
        "{}",
        out.stderr
    );
    // The token is still served; refresh holds the account until its secret is set again.
    env.run(&["get", "--appid", APPID]).assert_code(0);
    let list = env.run(&["account", "list", "--json"]);
    assert!(list.stdout.contains("\"LOST\""), "{}", list.stdout);
    let out = env.run(&["get", "--appid", APPID, "--reject", "old"]);
    out.assert_one_line_error(7)
        .assert_stderr_has(&[APPID, "set-secret"]);
    let out = env.run(&["refresh", "--force"]);
    out.assert_code(7);
    assert_has(&out.stderr, &[APPID, "set-secret", "refreshed 0 of 1"]);
    // The hint names only what lifts the hold: a new secret.
    let out = env.run(&["refresh"]);
    out.assert_code(4);
    assert!(out.stderr.contains("set-secret"), "{}", out.stderr);
    for lie in ["account enable", "--force"] {
        assert!(!out.stderr.contains(lie), "{}", out.stderr);
        assert!(!env.status_block(APPID).contains(lie));
    }
    let out = env.run(&["account", "enable", "--appid", APPID]);
    out.assert_one_line_error(7)
        .assert_stderr_has(&[APPID, "account set-secret"]);
    assert_eq!(env.api.requests().len(), 1);
    // A lost secret whose hold was lifted (`account enable` did, before it refused) holds
    // its own account in each refresh, and the others are fetched.
    env.execute("UPDATE accounts SET held_until = NULL, held_reason = NULL");
    let out = add(&env, &["--appid", OTHER], OTHER_SECRET);
    assert!(
        out.stderr.contains("created the key file"),
        "{}",
        out.stderr
    );
    let out = env.run(&["refresh"]);
    out.assert_code(7);
    assert_has(&out.stderr, &[APPID, "set-secret", "refreshed 1 of 2"]);
    assert_eq!(env.api.requests().len(), 2);
    env.run_with_stdin(
        &["account", "set-secret", "--appid", APPID],
        &format!("{SECRET}\n"),
    )
    .assert_code(0);
    env.run(&["refresh", "--force"]).assert_code(0);
    assert_eq!(env.api.requests().len(), 4);
}

/// The pid of a process that has exited and been reaped.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().expect("spawn true");
    let pid = child.id();
    child.wait().expect("wait true");
    pid
}

#[test]
fn key_file_writes_follow_no_planted_link_and_leave_no_key_behind() {
    let env = TestEnv::new();
    env.api.register(APPID, SECRET);
    add(&env, &["--appid", APPID], SECRET);
    let first = env.kid();
    let key = env.key_file();
    let dir = key
        .parent()
        .expect("the key file's directory")
        .to_path_buf();
    let name = key.file_name().unwrap().to_str().unwrap().to_string();
    let victim = dir.join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    // Links planted where the key goes on its way (`KEYFILE.old`, and the temporary names
    // of this and older versions), and the temporary file a rotation killed while writing
    // left behind, key material inside.
    let (dead, other_dead) = (dead_pid(), dead_pid());
    let planted = [
        ".old".to_string(),
        ".old.tmp".to_string(),
        format!(".tmp.{dead}"),
        format!(".tmp.{other_dead}.0011223344556677"),
    ];
    for suffix in &planted {
        std::os::unix::fs::symlink(&victim, dir.join(format!("{name}{suffix}"))).unwrap();
    }
    let left = dir.join(format!("{name}.tmp.{dead}.8899aabbccddeeff"));
    std::fs::copy(&key, &left).unwrap();
    env.run(&["key", "rotate"]).assert_code(0);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    let old = old_key_file(&env);
    assert!(
        !std::fs::symlink_metadata(&old)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(mode(&old), 0o600);
    assert_eq!(kids(&old), vec![first]);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(&name))
        .collect();
    names.sort();
    assert_eq!(names, [name.clone(), format!("{name}.old")]);
    env.run(&["refresh"]).assert_code(0);
}

/// Issue 19's loops, bounded: rotations beside adds and set-secrets. Every secret written
/// meanwhile must open with the key file left at the end, so that the next refresh fetches
/// every account.
#[test]
fn key_rotate_beside_secret_writers_loses_no_secret() {
    let env = TestEnv::new();
    let appid = |i: usize| format!("wx{i:016x}");
    let secret = |i: usize| format!("s{i:031x}");
    const ADDS: usize = 24;
    for i in 0..=ADDS {
        env.api.register(&appid(i), &secret(i));
    }
    // Account 0 is the one whose secret is set again and again.
    add(&env, &["--appid", &appid(0)], &secret(0));
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..8 {
                env.run(&["-q", "key", "rotate"]).assert_code(0);
            }
        });
        s.spawn(|| {
            for i in 1..=ADDS {
                let out = env.run_with_stdin(
                    &["-q", "account", "add", "--appid", &appid(i)],
                    &format!("{}\n", secret(i)),
                );
                out.assert_code(0);
            }
        });
        s.spawn(|| {
            for _ in 0..ADDS {
                let out = env.run_with_stdin(
                    &["-q", "account", "set-secret", "--appid", &appid(0)],
                    &format!("{}\n", secret(0)),
                );
                out.assert_code(0);
            }
        });
    });
    let out = env.run(&["refresh"]);
    out.assert_code(0);
    assert_eq!(token_rows(&env), ADDS as i64 + 1, "{}", out.stderr);
}

// ---- readers in a group ----

const WRITER: u32 = 61_017;
const READER: u32 = 61_018;
const GROUP: u32 = 61_019;

/// The copy of the binary that the other users run: the build directory may be out of
/// their reach (a checkout under /root, say).
fn shared_binary(env: &TestEnv) -> PathBuf {
    env.dir.join("bin/wxtoken")
}

/// Runs `program` as `uid` with `GROUP` as a supplementary group, in the sealed environment.
fn as_user(env: &TestEnv, uid: u32, program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", &uid.to_string(), "--regid", &uid.to_string()])
        .args(["--groups", &GROUP.to_string(), "--"])
        .arg(program)
        .args(args)
        .current_dir(&env.dir)
        .env_clear()
        .env("WXTOKEN_DB", env.db())
        .env("WXTOKEN_API_BASE", env.url())
        .env("NO_PROXY", "127.0.0.1");
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd
}

fn wxtoken_as(env: &TestEnv, uid: u32, args: &[&str], stdin: &str) -> Out {
    use std::io::Write;
    let bin = shared_binary(env);
    let mut cmd = as_user(env, uid, bin.to_str().unwrap(), args);
    if uid == WRITER {
        cmd.env("WXTOKEN_KEY_FILE", env.key_file());
    }
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn setpriv");
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    Out::from_output(child.wait_with_output().expect("wait"))
}

/// Whether this test can switch users: root, with setpriv, and a binary every user can
/// reach. Prints why not, so that a skip is visible.
fn can_switch_users(env: &TestEnv) -> bool {
    if support_uid() != 0 {
        eprintln!("SKIPPED: readers-in-a-group test needs root to switch users (setpriv)");
        return false;
    }
    let bin = shared_binary(env);
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_wxtoken"), &bin).expect("copy the binary");
    let probe = as_user(env, READER, bin.to_str().unwrap(), &["--version"]).output();
    match probe {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            eprintln!(
                "SKIPPED: another user cannot run the test binary: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            false
        }
        Err(e) => {
            eprintln!("SKIPPED: setpriv is not available: {e}");
            false
        }
    }
}

#[test]
fn a_reader_in_the_group_gets_tokens_but_never_secrets_nor_writes() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // Under the system temp directory, which every user can reach.
    let env = TestEnv::new_in(&std::env::temp_dir());
    if !can_switch_users(&env) {
        return;
    }
    // The host setup from the README: a directory of the writer's, setgid to the readers'
    // group, the database 0640 in that group, the key 0600 with the writer.
    std::os::unix::fs::chown(&env.dir, Some(WRITER), Some(GROUP)).unwrap();
    std::fs::set_permissions(&env.dir, std::fs::Permissions::from_mode(0o2750)).unwrap();
    env.api.register(APPID, SECRET);
    let out = wxtoken_as(
        &env,
        WRITER,
        &["account", "add", "--appid", APPID],
        &format!("{SECRET}\n"),
    );
    out.assert_code(0);
    std::fs::set_permissions(env.db(), std::fs::Permissions::from_mode(0o640)).unwrap();
    wxtoken_as(&env, WRITER, &["refresh"], "").assert_code(0);
    // The -wal and -shm stay after the writer exits, with the database's group and mode.
    for file in files(&env.db()) {
        let meta = std::fs::metadata(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert_eq!(
            (meta.uid(), meta.gid()),
            (WRITER, GROUP),
            "{}",
            file.display()
        );
        assert_eq!(meta.mode() & 0o777, 0o640, "{}", file.display());
    }
    // The writer left the -wal empty: a reader has no stale frames to replay.
    assert_eq!(std::fs::metadata(&files(&env.db())[1]).unwrap().len(), 0);
    assert_eq!(mode(&env.key_file()), 0o600);
    let token = wxtoken_as(&env, READER, &["get", "--appid", APPID], "");
    token.assert_code(0);
    let token = token.stdout.trim().to_string();
    assert!(!token.is_empty());

    // While a refresh is under way (its request held at the stand-in's gate), and while
    // a write transaction is open, the reader still gets the committed token.
    env.api.gate(TOKEN);
    let refresh = as_user(
        &env,
        WRITER,
        shared_binary(&env).to_str().unwrap(),
        &["refresh", "--force"],
    )
    .env("WXTOKEN_KEY_FILE", env.key_file())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("spawn refresh");
    assert!(env.api.wait_for_hits(TOKEN, 1, Duration::from_secs(10)));
    let during = wxtoken_as(&env, READER, &["get", "--appid", APPID], "");
    during.assert_code(0);
    assert_eq!(during.stdout.trim(), token);
    env.api.open_gate(TOKEN);
    let done = Out::from_output(refresh.wait_with_output().unwrap());
    done.assert_code(0);
    let newest = wxtoken_as(&env, READER, &["get", "--appid", APPID], "");
    newest.assert_code(0);
    assert_ne!(newest.stdout.trim(), token, "the reader sees the new token");
    let token = newest.stdout.trim().to_string();

    let writer = env.open_db();
    writer
        .execute_batch(
            "BEGIN IMMEDIATE;
             INSERT INTO tokens (account_id, kind, token, expires_in, fetched_at, expires_at)
             SELECT id, 'access_token', 'UNCOMMITTED', 7200, 0, 4102444800 FROM accounts;",
        )
        .unwrap();
    let during = wxtoken_as(&env, READER, &["get", "--appid", APPID], "");
    during.assert_code(0);
    assert_eq!(during.stdout.trim(), token);
    writer.execute_batch("ROLLBACK").unwrap();

    // The reader can neither write through wxtoken, nor open the key, nor the files.
    let rows = token_rows(&env);
    let out = wxtoken_as(&env, READER, &["refresh", "--force"], "");
    out.assert_one_line_error(5)
        .assert_stderr_has(&["read-only for this user"]);
    let out = wxtoken_as(
        &env,
        READER,
        &["get", "--appid", APPID, "--reject", &token],
        "",
    );
    out.assert_one_line_error(5)
        .assert_stderr_has(&["read-only for this user"]);
    let key = env.key_file();
    let out = wxtoken_as(
        &env,
        READER,
        &["--key-file", key.to_str().unwrap(), "refresh"],
        "",
    );
    out.assert_code(5);
    let cat = as_user(&env, READER, "cat", &[key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!cat.status.success(), "the reader read the key file");
    for file in files(&env.db()) {
        let w = as_user(
            &env,
            READER,
            "sh",
            &["-c", &format!("echo x >> '{}'", file.display())],
        )
        .output()
        .unwrap();
        assert!(
            !w.status.success(),
            "the reader could write {}",
            file.display()
        );
    }
    let touch = as_user(
        &env,
        READER,
        "touch",
        &[env.dir.join("planted").to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert!(
        !touch.status.success(),
        "the reader could create files beside the database"
    );

    // The README's read-only SQL works for the reader; a write through SQLite fails, and
    // the secret column holds only ciphertext.
    if Command::new("sqlite3").arg("--version").output().is_ok() {
        let uri = format!("file:{}?mode=ro", env.db().display());
        let sql = format!(
            "SELECT t.token FROM accounts a JOIN tokens t ON t.account_id = a.id AND t.kind = 'access_token' \
             WHERE a.appid = '{APPID}' AND a.agent = '' ORDER BY t.id DESC LIMIT 1;"
        );
        let read = as_user(&env, READER, "sqlite3", &["-bail", &uri, &sql])
            .output()
            .unwrap();
        assert!(
            read.status.success(),
            "{}",
            String::from_utf8_lossy(&read.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&read.stdout).trim(), token);
        let secret = as_user(
            &env,
            READER,
            "sqlite3",
            &[&uri, "SELECT secret FROM accounts"],
        )
        .output()
        .unwrap();
        let secret = String::from_utf8_lossy(&secret.stdout).to_string();
        assert!(
            secret.starts_with("wxs1:") && !secret.contains(SECRET),
            "{secret}"
        );
        let path = env.db().display().to_string();
        let insert = "INSERT INTO tokens (account_id, kind, token, expires_in, fetched_at, expires_at) \
                      SELECT id, 'access_token', 'PLANTED', 7200, 0, 4102444800 FROM accounts;";
        let write = as_user(&env, READER, "sqlite3", &["-bail", &path, insert])
            .output()
            .unwrap();
        assert!(!write.status.success(), "the reader inserted a token");
    } else {
        eprintln!("note: no sqlite3 command; the reader's SQL checks are skipped");
    }
    assert_eq!(
        token_rows(&env),
        rows,
        "the reader changed the token history"
    );
    let still = wxtoken_as(&env, READER, &["get", "--appid", APPID], "");
    assert_eq!(still.stdout.trim(), token);
    assert_nowhere(&env, &[SECRET]);

    // Another tool that deleted the -wal and -shm: with no -wal, every committed write is
    // in the file, and the reader, who cannot create a -shm here, reads it in place (issue
    // 9's read-only rule); the next wxtoken write puts them back.
    drop(writer);
    for file in &files(&env.db())[1..] {
        let _ = std::fs::remove_file(file);
    }
    let out = wxtoken_as(&env, READER, &["get", "--appid", APPID], "");
    out.assert_code(0);
    assert_eq!(out.stdout.trim(), token);
    wxtoken_as(&env, WRITER, &["status"], "").assert_code(0);
    let back = wxtoken_as(&env, READER, &["get", "--appid", APPID], "");
    back.assert_code(0);
    assert_eq!(back.stdout.trim(), token);
    // Give the directory back to the test's own user, so that it can be cleaned up.
    std::os::unix::fs::chown(&env.dir, Some(0), Some(0)).unwrap();
}

// Left SQLite-only: the plaintext an older version left in SQLite's files and pages, and
// readers in a group (file modes and users on one host; PostgreSQL has reader roles,
// tested in backends.rs).
also_on_postgres!(
    stored_secrets_never_reach_the_files_in_plain_text,
    a_ciphertext_moved_to_another_account_does_not_open,
    without_the_key_refresh_fails_and_changes_nothing_while_get_works,
    unsafe_key_files_are_refused,
    the_key_file_is_found_in_the_documented_order,
    key_rotate_reencrypts_every_secret_and_keeps_the_old_key,
    an_interrupted_rotation_leaves_a_database_the_key_file_opens,
    key_reset_after_losing_the_key_keeps_tokens_and_takes_new_secrets,
    key_rotate_beside_secret_writers_loses_no_secret,
);
