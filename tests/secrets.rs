//! Secrets at rest: the key file, what needs it, migrating plaintext databases, and key
//! rotation.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{Out, TestEnv, wait};

const APPID: &str = "wx1111111111111111";
const OTHER: &str = "wx2222222222222222";
const SECRET: &str = "f1e2d3c4b5a6978800112233445566aa";
const OTHER_SECRET: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f9";

fn add(env: &TestEnv, appid: &str, secret: &str) -> Out {
    let out = env.run_with_stdin(
        &["account", "add", "--appid", appid],
        &format!("{secret}\n"),
    );
    out.assert_code(0);
    out
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

/// Which of `needles` occur in the database, its -wal or its -shm, byte for byte.
fn found_in_files(db: &Path, needles: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for file in files(db) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        for needle in needles {
            if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                found.push(format!("{needle} in {}", file.display()));
            }
        }
    }
    found
}

#[track_caller]
fn assert_nowhere(db: &Path, needles: &[&str]) {
    let found = found_in_files(db, needles);
    assert!(found.is_empty(), "left behind in the files: {found:?}");
}

#[track_caller]
fn assert_one_error_line(out: &Out, code: i32, parts: &[&str]) {
    out.assert_code(code);
    assert_eq!(out.stdout, "", "stdout must stay empty");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr:\n{}", out.stderr);
    assert!(lines[0].starts_with("wxtoken: error: "), "{}", lines[0]);
    for part in parts {
        assert!(
            lines[0].contains(part),
            "stderr lacks {part:?}: {}",
            lines[0]
        );
    }
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
    let out = add(&env, APPID, SECRET);
    // The first secret creates the key file, and says so once, with a backup reminder.
    assert!(
        out.stderr.contains("created the key file"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("Back it up"), "{}", out.stderr);
    assert_eq!(mode(&env.key_file()), 0o600);
    let again = add(&env, OTHER, OTHER_SECRET);
    assert!(!again.stderr.contains("key file"), "{}", again.stderr);
    assert_nowhere(&env.db(), &[SECRET, OTHER_SECRET]);
    let stored: String = env
        .open_db()
        .query_row(
            "SELECT secret FROM accounts WHERE appid = ?1",
            [APPID],
            |r| r.get(0),
        )
        .expect("stored secret");
    assert!(
        stored.starts_with(&format!("wxs1:{}:", env.kid())),
        "{stored}"
    );

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
    assert_nowhere(&env.db(), &[SECRET, OTHER_SECRET, replaced]);
    // The replaced ciphertext is zeroed too, not left in its page's free space.
    assert_nowhere(&env.db(), &[&stored[stored.len() - 48..]]);
    env.run(&["refresh", "--force", "--appid", APPID])
        .assert_code(0);
    assert_eq!(env.api.requests().last().unwrap().query["secret"], replaced);
    // So is the one of a removed account.
    let other: String = env
        .open_db()
        .query_row(
            "SELECT secret FROM accounts WHERE appid = ?1",
            [OTHER],
            |r| r.get(0),
        )
        .expect("stored secret");
    env.run(&["account", "remove", "--appid", OTHER])
        .assert_code(0);
    assert_nowhere(&env.db(), &[&other[other.len() - 48..]]);
}

#[test]
fn plaintext_secrets_of_an_older_version_are_encrypted_and_scrubbed() {
    let env = TestEnv::new();
    add(&env, APPID, SECRET);
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
    assert!(!found_in_files(&env.db(), &[SECRET, old, gone]).is_empty());

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
    assert_nowhere(&env.db(), &[SECRET, OTHER_SECRET, old, gone]);
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
    assert_nowhere(&env.db(), &[SECRET, OTHER_SECRET, old, gone]);
    // Once encrypted, the next run has nothing to migrate.
    let out = env.run(&["refresh", "--force"]);
    out.assert_code(0);
    assert!(!out.stderr.contains("encrypted"), "{}", out.stderr);
}

#[test]
fn a_ciphertext_moved_to_another_account_does_not_open() {
    let env = TestEnv::new();
    add(&env, APPID, SECRET);
    add(&env, OTHER, OTHER_SECRET);
    env.open_db()
        .execute(
            "UPDATE accounts SET secret = (SELECT secret FROM accounts WHERE appid = ?1)
             WHERE appid = ?2",
            [APPID, OTHER],
        )
        .expect("copy a ciphertext");
    let key_file = env.key_file().display().to_string();
    let out = env.run(&["refresh"]);
    assert_one_error_line(&out, 7, &[&key_file, OTHER, "does not open the secret"]);
    assert_eq!(env.api.requests().len(), 0, "nothing may be fetched");
    assert_eq!(token_rows(&env), 0);
    assert_eq!(env.query_i64("SELECT count(*) FROM attempts"), 0);
    let out = env.run(&["get", "--appid", OTHER, "--reject", "old"]);
    assert_one_error_line(&out, 7, &[&key_file, OTHER]);
    // Adding another account refuses to seal with a key file that fails one.
    let out = env.run_with_stdin(&["account", "add", "--appid", "wx3"], "s3\n");
    assert_one_error_line(&out, 7, &[OTHER]);
    // The account itself is mended by setting its secret again.
    env.run_with_stdin(
        &["account", "set-secret", "--appid", OTHER],
        &format!("{OTHER_SECRET}\n"),
    )
    .assert_code(0);
    env.run(&["refresh"]).assert_code(0);
    assert_eq!(token_rows(&env), 2);
}

#[test]
fn without_the_key_refresh_fails_and_changes_nothing_while_get_works() {
    let env = TestEnv::new();
    add(&env, APPID, SECRET);
    env.run(&["refresh"]).assert_code(0);
    let key = std::fs::read(env.key_file()).expect("key");
    std::fs::remove_file(env.key_file()).expect("lose the key");
    let before = (
        token_rows(&env),
        env.query_i64("SELECT count(*) FROM attempts"),
    );

    let key_file = env.key_file().display().to_string();
    let out = env.run(&["refresh", "--force"]);
    assert_one_error_line(&out, 7, &[&key_file, APPID, "does not exist", "backup"]);
    assert!(
        !env.key_file().exists(),
        "never a new key once a secret is encrypted"
    );
    let out = env.run_with_stdin(&["account", "add", "--appid", OTHER], "s\n");
    assert_one_error_line(&out, 7, &[&key_file]);
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
    add(&other, APPID, SECRET);
    std::fs::copy(other.key_file(), env.key_file()).expect("wrong key");
    let out = env.run(&["refresh", "--force"]);
    assert_one_error_line(&out, 7, &[&key_file, APPID, "does not open"]);

    std::fs::write(env.key_file(), key).expect("restore the key");
    env.run(&["refresh", "--force"]).assert_code(0);
}

#[test]
fn unsafe_key_files_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new();
    add(&env, APPID, SECRET);
    let key_file = env.key_file();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = env.run(&["refresh"]);
    assert_one_error_line(&out, 7, &[&key_file.display().to_string(), "mode 0640"]);
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    env.run(&["refresh"]).assert_code(0);

    if support_uid() == 0 {
        std::os::unix::fs::chown(&key_file, Some(64_321), None).unwrap();
        let out = env.run(&["refresh", "--force"]);
        assert_one_error_line(&out, 7, &["belongs to uid 64321"]);
    } else {
        eprintln!("note: not root; the key-owner check is not exercised");
    }
    std::fs::write(&key_file, "not a key\n").unwrap();
    std::os::unix::fs::chown(&key_file, Some(support_uid()), None).unwrap();
    let out = env.run(&["refresh", "--force"]);
    assert_one_error_line(&out, 7, &["not a wxtoken key file"]);
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
    add(&env, APPID, SECRET);
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
    let out = fresh.run_with_stdin(&["account", "add", "--appid", APPID], "s\n");
    assert_one_error_line(&out, 7, &["LoadCredential"]);
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
    add(&env, APPID, SECRET);
    add(&env, OTHER, OTHER_SECRET);
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
        "SELECT count(*) FROM accounts WHERE secret LIKE 'wxs1:{second}:%'"
    ));
    assert_eq!(under_new, 2);
    assert_nowhere(&env.db(), &[SECRET, OTHER_SECRET]);
    env.run(&["refresh"]).assert_code(0);
    assert_eq!(token_rows(&env), 2);
    // The old key alone no longer opens the database.
    let old = old_key_file(&env);
    let out = env.run(&["--key-file", old.to_str().unwrap(), "refresh", "--force"]);
    assert_one_error_line(&out, 7, &["does not open", &second]);
}

#[test]
fn an_interrupted_rotation_leaves_a_database_the_key_file_opens() {
    let env = TestEnv::new();
    env.api.register(APPID, SECRET);
    add(&env, APPID, SECRET);
    let first = env.kid();
    // Hold the write lock, so that rotate stops after writing the new key beside the old
    // one and before re-encrypting; then kill it there.
    let conn = env.open_db();
    conn.execute_batch("BEGIN IMMEDIATE").expect("write lock");
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
    conn.execute_batch("ROLLBACK").expect("release");
    drop(conn);
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
    add(&env, APPID, SECRET);
    env.run(&["refresh"]).assert_code(0);
    let out = env.run(&["key", "reset"]);
    assert_one_error_line(&out, 2, &["--yes"]);
    let out = env.run(&["key", "reset", "--yes"]);
    assert_one_error_line(&out, 7, &["exists"]);
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
    assert_one_error_line(&out, 7, &[APPID, "set-secret"]);
    let out = env.run(&["refresh", "--force"]);
    assert_one_error_line(&out, 7, &[APPID, "set-secret"]);
    let out = env.run(&["refresh"]);
    out.assert_code(4);
    assert!(out.stderr.contains("set-secret"), "{}", out.stderr);
    assert_eq!(env.api.requests().len(), 1);
    let out = env.run_with_stdin(
        &["account", "set-secret", "--appid", APPID],
        &format!("{SECRET}\n"),
    );
    out.assert_code(0);
    assert!(
        out.stderr.contains("created the key file"),
        "{}",
        out.stderr
    );
    env.run(&["refresh", "--force"]).assert_code(0);
    assert_eq!(env.api.requests().len(), 2);
}
