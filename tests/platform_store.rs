//! The store's whole-database operations cover the platform model (issues 20 and 22):
//! `store copy` between SQLite and PostgreSQL with platforms, tenants, previous refresh
//! tokens, tickets, push settings and events; `key rotate` with all of those sealed; a
//! PostgreSQL reader that may not read any of them; `account remove` of a platform with
//! tenants. The store-level rules (sealed_kids, reseal, forget, the ticket's keep-newer
//! rule, the events' bound, renewals racing a re-authorization) are unit-tested on both
//! backends in src/store/platform_tests.rs.

mod support;

use support::standin::platform::{AUTHORIZER_TOKEN, COMPONENT_TOKEN};
use support::{TestEnv, run};

const C: &str = "wxcomponent00001";
const A: &str = "wxauthorizer0001";
const C_SECRET: &str = "component-secret-0123456789abcdef";
const TICKET: &str = "ticket@@@component-verify-ticket-0001";
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const MSG_TOKEN: &str = "pushtoken0001";

/// Runs `args` with `stdin`, expecting `code`.
#[track_caller]
fn run_in(env: &TestEnv, args: &str, stdin: &str, code: i32) -> support::Out {
    let out = env.run_with_stdin(args, stdin);
    out.assert_code(code);
    out
}

/// A component with a ticket, push settings and a hook, and an authorizer whose refresh
/// token WeChat rotated once (so a previous one is stored), both tokens fetched. Returns
/// the component token and the authorizer token.
fn platform_with_everything(env: &TestEnv) -> (String, String) {
    env.api.add_component(C, C_SECRET);
    env.api.push_component_ticket(C, TICKET);
    env.api.add_authorizer(C, A, "refresh-token-0001");
    run_in(
        env,
        &format!("platform add --component {C}"),
        &format!("{C_SECRET}\n"),
        0,
    );
    run_in(
        env,
        &format!("platform set-ticket --component {C}"),
        &format!("{TICKET}\n"),
        0,
    );
    run_in(
        env,
        &format!("platform set-crypto --component {C}"),
        &format!("{MSG_TOKEN}\n{AES_KEY}\n"),
        0,
    );
    run(
        env,
        &["platform", "set-hook", "--component", C, "--exec", "true"],
        0,
    );
    run_in(
        env,
        &format!("authorizer import --component {C} --appid {A}"),
        "refresh-token-0001\n",
        0,
    );
    env.api.rotate_refresh_token_on_next(C, A);
    run(env, "refresh", 0);
    // The stand-in rotated it; wxtoken keeps the one it replaced until the new one worked.
    let rotated = env.api.refresh_token_of(C, A).unwrap();
    assert_ne!(rotated, "refresh-token-0001");
    let component = env.get(&format!("--component {C}"));
    component.assert_code(0);
    let authorizer = env.get(&format!("--component {C} --appid {A}"));
    authorizer.assert_code(0);
    (component.value(), authorizer.value())
}

/// Every token row deleted (and with them what each account's due time says): the next
/// `refresh` must fetch everything again, with what the store holds (the ticket, the
/// platform link, the refresh token).
fn forget_tokens(env: &TestEnv) {
    env.execute("DELETE FROM tokens; UPDATE accounts SET due_at = NULL");
}

/// The sealed platform columns of this store, one value a line.
fn sealed_values(env: &TestEnv) -> String {
    let previous = if env.is_postgres() {
        "SELECT previous FROM account_secrets WHERE previous IS NOT NULL"
    } else {
        "SELECT previous_secret FROM accounts WHERE previous_secret IS NOT NULL"
    };
    env.query(&format!(
        "{previous} UNION ALL SELECT ticket FROM platform_tickets
         UNION ALL SELECT token FROM platform_crypto UNION ALL SELECT aes_key FROM platform_crypto"
    ))
}

fn copy(from: &TestEnv, to: &TestEnv) {
    let (component, authorizer) = platform_with_everything(from);
    // An event: an auth code WeChat does not know is a failed onboarding, recorded.
    let failed = from.run(&format!(
        "authorizer add --component {C} --auth-code nosuchcode"
    ));
    assert_ne!(failed.code, 0);
    let events = from.query_i64("SELECT count(*) FROM platform_events");
    let out = from.run(&["store", "copy", "--to", &to.store()]);
    out.assert_code(0);
    assert!(
        out.stderr.contains("1 platform(s), 1 tenant(s)"),
        "{}",
        out.stderr
    );
    support::assert_no_secret(
        "store copy",
        &out,
        &[C_SECRET, TICKET, AES_KEY, MSG_TOKEN, "refresh-token-0001"],
    );
    // The target uses the same WeChat and the same key file.
    to.set_env("WXTOKEN_API_BASE", &from.url());
    to.set_env("WXTOKEN_KEY_FILE", &from.key_file().display().to_string());

    // The copied tokens are served as they were.
    assert_eq!(to.get(&format!("--component {C}")).value(), component);
    assert_eq!(
        to.get(&format!("--component {C} --appid {A}")).value(),
        authorizer
    );
    // Roles, the platform link by key (ids may differ), the hook, the events.
    assert_eq!(
        to.query(
            "SELECT t.appid, t.role, p.appid, p.role FROM accounts t
             JOIN accounts p ON p.id = t.platform_id"
        ),
        format!("{A}|authorizer|{C}|component")
    );
    assert_eq!(
        to.query("SELECT hook, hook_timeout FROM platform_crypto"),
        from.query("SELECT hook, hook_timeout FROM platform_crypto")
    );
    assert_eq!(
        to.query_i64("SELECT count(*) FROM platform_events"),
        events.min(100)
    );
    assert!(events >= 1);
    assert_eq!(
        to.query("SELECT create_time, received_at FROM platform_tickets"),
        from.query("SELECT create_time, received_at FROM platform_tickets")
    );
    // Everything sealed stays sealed, sealed again (a new nonce), under the same key.
    let sealed = sealed_values(to);
    assert_eq!(sealed.lines().count(), 4, "{sealed}");
    let kid = from.kid();
    for line in sealed.lines() {
        assert!(line.starts_with(&format!("wxs1:{kid}:")), "{line}");
        assert!(!sealed_values(from).contains(line));
    }

    // Refresh on the target: the component finds its ticket, the authorizer its platform
    // and its refresh token; both are fetched once.
    forget_tokens(to);
    let (components, authorizers) = (
        from.api.hits(COMPONENT_TOKEN),
        from.api.hits(AUTHORIZER_TOKEN),
    );
    run(to, "refresh", 0);
    assert_eq!(from.api.hits(COMPONENT_TOKEN), components + 1);
    assert_eq!(from.api.hits(AUTHORIZER_TOKEN), authorizers + 1);
    let fresh = to.get(&format!("--component {C} --appid {A}")).value();
    assert_ne!(fresh, authorizer);
    assert!(from.api.is_valid(&fresh));
    // The push settings open on the target: a bad push is refused (10), not a key error (7).
    run_in(
        to,
        &format!("platform ingest --component {C} --msg-signature x --timestamp 1 --nonce n"),
        "<xml><Encrypt>AAAA</Encrypt></xml>",
        10,
    );
}

#[test]
fn store_copy_moves_platforms_from_sqlite_to_postgres() {
    let Some(to) = TestEnv::on_postgres() else {
        return;
    };
    copy(&TestEnv::new(), &to);
}

#[test]
fn store_copy_moves_platforms_from_postgres_to_sqlite() {
    let Some(from) = TestEnv::on_postgres() else {
        return;
    };
    copy(&from, &TestEnv::new());
}

/// `key rotate` re-seals the previous refresh token, the ticket and the push settings; the
/// old key leaves the key file; refresh and ingest still open everything.
fn key_rotate_reseals_platform_secrets() {
    let env = TestEnv::new();
    let (_, authorizer) = platform_with_everything(&env);
    let old = env.kid();
    let before = sealed_values(&env);
    assert!(
        before
            .lines()
            .all(|l| l.starts_with(&format!("wxs1:{old}:")))
    );
    run(&env, "key rotate", 0);
    let new = env.kid();
    assert_ne!(new, old);
    let keys = std::fs::read_to_string(env.key_file()).unwrap();
    assert!(!keys.contains(&old), "the old key is dropped once unused");
    let after = sealed_values(&env);
    assert_eq!(after.lines().count(), 4, "{after}");
    assert!(
        after
            .lines()
            .all(|l| l.starts_with(&format!("wxs1:{new}:"))),
        "{after}"
    );
    forget_tokens(&env);
    let hits = env.api.hits(COMPONENT_TOKEN);
    run(&env, "refresh", 0);
    assert_eq!(env.api.hits(COMPONENT_TOKEN), hits + 1);
    let fresh = env.get(&format!("--component {C} --appid {A}")).value();
    assert_ne!(fresh, authorizer);
    run_in(
        &env,
        &format!("platform ingest --component {C} --msg-signature x --timestamp 1 --nonce n"),
        "<xml><Encrypt>AAAA</Encrypt></xml>",
        10,
    );
}

/// `account remove` of a platform with tenants: one line naming the command to use, exit
/// 2, nothing removed; `platform remove --with-authorizers` removes both.
fn account_remove_of_a_platform_with_tenants_says_what_to_do() {
    let env = TestEnv::new();
    platform_with_everything(&env);
    let out = run(&env, &format!("account remove --appid {C}"), 2);
    out.assert_one_line_error(2);
    assert!(
        out.stderr
            .contains("platform remove --component wxcomponent00001 --with-authorizers"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.to_lowercase().contains("foreign key"));
    assert_eq!(env.query_i64("SELECT count(*) FROM accounts"), 2);
    run(
        &env,
        &format!("platform remove --component {C} --with-authorizers"),
        0,
    );
    assert_eq!(env.query_i64("SELECT count(*) FROM accounts"), 0);
    for table in [
        "platform_tickets",
        "platform_crypto",
        "platform_events",
        "tokens",
    ] {
        assert_eq!(
            env.query_i64(&format!("SELECT count(*) FROM {table}")),
            0,
            "{table}"
        );
    }
}

also_on_postgres!(
    key_rotate_reseals_platform_secrets,
    account_remove_of_a_platform_with_tenants_says_what_to_do
);

#[test]
fn key_rotate_reseals_platform_secrets_on_sqlite() {
    key_rotate_reseals_platform_secrets();
}

#[test]
fn account_remove_of_a_platform_with_tenants_on_sqlite() {
    account_remove_of_a_platform_with_tenants_says_what_to_do();
}

/// A reader role may not read the tables with sealed values, and still gets a component's
/// and an authorizer's tokens.
#[test]
fn a_postgres_reader_reads_platform_tokens_but_no_platform_secret() {
    let Some(env) = TestEnv::on_postgres() else {
        return;
    };
    let (component, authorizer) = platform_with_everything(&env);
    let db = env.pg.as_ref().unwrap();
    let role = format!("reader_{}", db.name);
    db.server
        .psql(&db.name, &format!("CREATE ROLE {role} LOGIN"));
    run(&env, &["store", "grant-reader", &role], 0);
    for table in [
        "platform_tickets",
        "platform_crypto",
        "account_secrets",
        "platform_events",
        "tokens",
    ] {
        let (ok, _, err) = db
            .server
            .psql_as(&role, &db.name, &format!("SELECT * FROM {table}"));
        assert!(!ok && err.contains("permission denied"), "{table}: {err}");
    }
    let url = db.url.replace("user=postgres", &format!("user={role}"));
    let reader = |args: &str| {
        let words: Vec<&str> = args.split_whitespace().collect();
        let mut cmd = env.command(&[&["get"][..], &words].concat());
        cmd.env("WXTOKEN_DB", &url);
        support::Out::from_output(cmd.output().unwrap())
    };
    let out = reader(&format!("--component {C}"));
    out.assert_code(0);
    assert_eq!(out.value(), component);
    let out = reader(&format!("--component {C} --appid {A}"));
    out.assert_code(0);
    assert_eq!(out.value(), authorizer);
    // A platform with no token yet: the reader is told so, not a permission error.
    env.execute("DELETE FROM tokens");
    let out = reader(&format!("--component {C}"));
    assert_ne!(out.code, 0);
    assert!(!out.stderr.contains("permission denied"), "{}", out.stderr);
}
