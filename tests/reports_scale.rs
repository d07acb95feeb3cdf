//! The reports read accounts a page at a time (1,000 per page) and prune deletes in
//! batches (10,000 rows per transaction): what they show and delete across those
//! boundaries is what one pass over everything would, on both backends.

mod support;

use support::{TestEnv, add, now, run};

/// `WITH` a sequence `s(i)` of 1..=n, in the store's dialect.
fn series(env: &TestEnv, n: i64) -> String {
    if env.is_postgres() {
        format!("WITH s(i) AS (SELECT generate_series(1, {n})::bigint)")
    } else {
        format!("WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n})")
    }
}

/// `'wxp'` and `i` in five digits, in the store's dialect.
fn name_of_i(env: &TestEnv) -> &'static str {
    if env.is_postgres() {
        "'wxp' || lpad(i::text, 5, '0')"
    } else {
        "printf('wxp%05d', i)"
    }
}

const MANY: i64 = 2_500;

fn many_accounts() -> TestEnv {
    let env = TestEnv::new();
    add(&env, &["--appid", "wxfirst"], "first-secret");
    let t = now();
    let (seq, name) = (series(&env, MANY), name_of_i(&env));
    env.execute(&format!(
        "{seq} INSERT INTO accounts (appid, agent, api, enabled, created_at, updated_at{secret})
         SELECT {name}, '', 'token', {enabled}, {t}, {t}{plain} FROM s",
        enabled = if env.is_postgres() { "true" } else { "1" },
        // PostgreSQL keeps secrets in a table of their own; none is needed here.
        secret = if env.is_postgres() { "" } else { ", secret" },
        plain = if env.is_postgres() {
            ""
        } else {
            ", 'plain-secret'"
        },
    ));
    // Every account a valid token (two hours), except two in the second and third page.
    env.execute(&format!(
        "INSERT INTO tokens (account_id, kind, token, expires_in, fetched_at, expires_at)
         SELECT id, 'access_token', 'tok', 7200, {t},
                {t} + CASE appid WHEN 'wxp01700' THEN 100 WHEN 'wxp02400' THEN 1000
                                 ELSE 7200 END
         FROM accounts"
    ));
    env
}

#[test]
fn reports_cover_every_page() {
    let env = many_accounts();
    let n = MANY as usize + 1;
    let json = support::json(&run(&env, &["status", "--json"], 0).stdout);
    let accounts = json["accounts"].as_array().unwrap();
    assert_eq!(accounts.len(), n);
    let names: Vec<&str> = accounts
        .iter()
        .map(|a| a["appid"].as_str().unwrap())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(names, sorted, "every account once, in appid order");
    assert!(accounts.iter().all(|a| a["token"]["valid"] == true));
    assert_eq!(json["sinks"], serde_json::json!([]));

    let text = run(&env, &["status"], 0).stdout;
    assert_eq!(text.matches(" api=token ").count(), n, "{}", &text[..300]);

    let check = env.run(&["status", "--check"]);
    check.assert_code(2);
    let line = check.stdout.trim();
    assert!(
        line.starts_with("WXTOKEN CRITICAL - 1 critical, 1 warning of 2501: wxp01700: token "),
        "{line}"
    );
    assert!(line.contains("left; wxp02400: token 16m"), "{line}");
    assert!(line.contains("'accounts'=2501;;;0"), "{line}");

    let metrics = run(&env, &["metrics"], 0).stdout;
    assert!(metrics.contains("wxtoken_accounts 2501\n"), "{metrics}");
    assert_eq!(
        metrics
            .lines()
            .filter(|l| l.starts_with("wxtoken_token_expiry_timestamp_seconds{"))
            .count(),
        n
    );
}

#[test]
fn prune_in_batches_keeps_the_newest_and_every_valid_token() {
    let env = TestEnv::new();
    add(&env, &["--appid", "wxprune"], "prune-secret");
    add(&env, &["--appid", "wxprune2"], "prune-secret");
    let t = now();
    let seq = series(&env, 12_000);
    for appid in ["wxprune", "wxprune2"] {
        let id = env.query_i64(&format!("SELECT id FROM accounts WHERE appid = '{appid}'"));
        // The oldest row still valid (a long-lived one), then 12,000 expired ones.
        env.execute(&format!(
            "INSERT INTO tokens (account_id, kind, token, expires_in, fetched_at, expires_at)
             VALUES ({id}, 'access_token', 'valid', 7200, {t}, {t} + 7200)"
        ));
        env.execute(&format!(
            "{seq} INSERT INTO tokens (account_id, kind, token, expires_in, fetched_at, expires_at)
             SELECT {id}, 'access_token', 'old', 7200, {t} - 90000 + i, {t} - 80000 + i FROM s"
        ));
        env.execute(&format!(
            "{seq} INSERT INTO attempts (account_id, kind, started_at, duration_ms, tries, outcome)
             SELECT {id}, 'access_token', {t} - 40 * 86400 + i, 50, 1, 'ok' FROM s"
        ));
        env.execute(&format!(
            "INSERT INTO attempts (account_id, kind, started_at, duration_ms, tries, outcome)
             VALUES ({id}, 'access_token', {t} - 60, 50, 1, 'ok')"
        ));
    }
    let out = env.run(&["prune", "--keep", "2"]);
    out.assert_code(0);
    assert!(
        out.stderr
            .contains("pruned 23996 token rows and 24000 attempts"),
        "{}",
        out.stderr
    );
    for appid in ["wxprune", "wxprune2"] {
        let rows = env.query(&format!(
            "SELECT t.token, t.expires_at - {t} FROM tokens t JOIN accounts a ON a.id = t.account_id
             WHERE a.appid = '{appid}' ORDER BY t.id"
        ));
        assert_eq!(
            rows, "valid|7200\nold|-68001\nold|-68000",
            "the valid one and the newest two"
        );
    }
    assert_eq!(env.query_i64("SELECT count(*) FROM attempts"), 2);
}

also_on_postgres!(
    reports_cover_every_page,
    prune_in_batches_keeps_the_newest_and_every_valid_token
);
